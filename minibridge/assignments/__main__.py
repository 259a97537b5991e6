"""python -m minibridge.assignments {build, check, release, grade, list} (see --help)."""

import argparse
import sys
import traceback
from pathlib import Path

from . import GRADED_MODULES  # the package's __init__ imports nothing: safe when grade.py is broken

# The minibridge running this: a handout's, when run inside one. Not build.PACKAGE: importing build
# imports the copy's config.py and weights.py, which may be what _broken_copy reports as broken.
PACKAGE = Path(__file__).resolve().parents[1]

EXAMPLES = """examples:
  python -m minibridge.assignments build handout/                    # every component becomes a TODO
  python -m minibridge.assignments build week2/ --week 2             # week 2 assigned, week 1 released, the rest withheld
  python -m minibridge.assignments build week1/ --component layer_norm --component softmax
  python -m minibridge.assignments check --impl submissions/alice/   # PASS/FAIL per assigned component, then the score
  python -m minibridge.assignments check --impl handout/ --component softmax --json -
  python -m minibridge.assignments release week1/ --week 1           # after the deadline: week 1's solutions
  python -m minibridge.assignments grade submissions/ --handout week1/ --csv grades.csv
"""


def main(argv=None):
    try:
        return _main(argv)
    except Exception as e:  # noqa: BLE001 (re-raised unless it is a handout's broken config.py or weights.py)
        message = _broken_copy(e)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def _broken_copy(error):
    """The paragraph for an error raised in a handout's own config.py, weights.py & co., or None.

    subtle: inside a handout, `python -m minibridge.assignments` is the handout's grader, built on
    the handout's config.py and weights.py (the tiny model's config and weights); students have no
    reason to edit them and they are not graded, but a slip there would stop the grader with a raw
    traceback. The graded modules (ops.py, ...) are imported on their own, never here.
    """
    if not (PACKAGE / "assignments" / "assignment.json").is_file():
        return None  # the reference: its developers want the traceback
    if isinstance(error, SyntaxError) and error.filename:
        frames = [(error.filename, error.lineno)]
    else:
        frames = [(f.filename, f.lineno) for f in traceback.extract_tb(error.__traceback__)]
    ours = [(Path(f).resolve(), n) for f, n in frames if Path(f).resolve().is_relative_to(PACKAGE)]
    if not ours or ours[-1][0].parent not in (PACKAGE, PACKAGE / "assignments") or ours[-1][0].stem in GRADED_MODULES:
        return None
    path, line = ours[-1]
    name = "minibridge/" + path.relative_to(PACKAGE).as_posix()
    what = error.msg if isinstance(error, SyntaxError) else error
    return (f"error: the grader cannot start: {name}, line {line}: {type(error).__name__}: {what}. This handout's "
            "grader runs on its own minibridge/config.py and minibridge/weights.py (the tiny model every component "
            "is graded on) and minibridge/assignments/; they are not graded and not yours to change. Put "
            f"{name} back as the handout had it (undo the edit, or copy the file from a fresh copy of the "
            "handout), then run check again.")


def _main(argv=None):
    from .components import COMPONENTS, WEEKS
    from .course import SUBMISSION_TIMEOUT_S
    from .grade import TIME_LIMIT_S

    parser = argparse.ArgumentParser(prog="python -m minibridge.assignments", epilog=EXAMPLES,
                                     description="Course assignments generated from minibridge's source.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    names = [c.name for c in COMPONENTS]
    weeks = sorted(WEEKS)

    p = sub.add_parser("build", help="write a handout: OUT_DIR/minibridge with TODOs, and OUT_DIR/ASSIGNMENTS.md")
    p.add_argument("out_dir")
    p.add_argument("--component", action="append", choices=names, metavar="NAME",
                   help="assign this component (repeatable; default: every component not released)")
    p.add_argument("--week", action="append", type=int, choices=weeks, metavar="N",
                   help=f"assign week N's components (repeatable; weeks {weeks}, see `list`)")
    p.add_argument("--release", action="append", choices=[*names, *map(str, weeks), "all"], metavar="NAME",
                   help="keep the reference code of this component, week number or all (repeatable; default with "
                        "--week N: the weeks before N); every other component not assigned is withheld")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR/minibridge")

    p = sub.add_parser("check", help="grade a student copy against the snapshots (exit status 0 only at full marks)")
    p.add_argument("--impl", default=".", metavar="PATH",
                   help="the student copy: a folder holding minibridge/ (default: the current folder)")
    p.add_argument("--component", action="append", choices=names, metavar="NAME",
                   help="grade only this component (repeatable; default: all the handout assigns)")
    p.add_argument("--assigned", action="append", choices=names, metavar="NAME",
                   help="grade as if the handout assigned these (repeatable; default: the copy's manifest)")
    p.add_argument("--json", metavar="PATH", help="also write one row per component as JSON to PATH (- for stdout)")
    p.add_argument("--csv", metavar="PATH", help="also write one row per component as CSV to PATH (- for stdout)")
    p.add_argument("--time-limit", type=float, metavar="S",
                   help=f"seconds one component may run (default {TIME_LIMIT_S:g}); one still running a tenth "
                        "more (at least 1 s) ends the check, exit status 3")
    p.add_argument("--progress", action="store_true",
                   help="for `grade`: write `check: running NAME` to stderr as each component starts, and the "
                        "Python stack there on SIGUSR1 or a crash")

    p = sub.add_parser("release", help="put the reference code of components back into a handout (after a deadline)")
    p.add_argument("handout", help="a folder written by `build`")
    p.add_argument("--component", action="append", default=[], choices=names, metavar="NAME", help="(repeatable)")
    p.add_argument("--week", action="append", default=[], type=int, choices=weeks, metavar="N", help="(repeatable)")
    p.add_argument("--all", action="store_true", help="every component: the handout becomes the reference")

    p = sub.add_parser("grade", help="grade every submission in a folder: one table, a CSV and JSON gradebook")
    p.add_argument("submissions", help="a folder with one subfolder per student, each holding minibridge/")
    p.add_argument("--handout", metavar="DIR", help="grade what this handout (from `build`) assigns")
    p.add_argument("--week", action="append", default=[], type=int, choices=weeks, metavar="N",
                   help="grade week N's components (repeatable)")
    p.add_argument("--component", action="append", default=[], choices=names, metavar="NAME",
                   help="grade this component (repeatable); without these three, each submission's own manifest")
    p.add_argument("--csv", metavar="PATH", help="write the gradebook: one row per student (- for stdout)")
    p.add_argument("--json", metavar="PATH", help="write one row per student and component as JSON (- for stdout)")
    p.add_argument("--reports", metavar="DIR", help="write each student's check output to DIR/<student>.txt")
    p.add_argument("--timeout", type=float, default=SUBMISSION_TIMEOUT_S, metavar="S",
                   help=f"seconds per submission (default {SUBMISSION_TIMEOUT_S:g})")
    p.add_argument("--time-limit", type=float, metavar="S", help=f"seconds per component (default {TIME_LIMIT_S:g})")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="submissions graded at once (default 1)")

    sub.add_parser("list", help="the components by week: what each covers, builds on, its tolerance and snapshot source")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (OSError, ValueError, RuntimeError) as e:  # a wrong path, stale snapshots, bad markers: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def build_command(args):
    from .build import build, component_names
    from .components import BY_NAME

    released = None
    if args.release:  # component names, week numbers and "all"
        named = [n for r in args.release if not r.isdigit() for n in (BY_NAME if r == "all" else [r])]
        released = component_names(named, [int(r) for r in args.release if r.isdigit()])
    regions = build(args.out_dir, args.component, force=args.force, released=released, weeks=args.week or ())
    out = Path(args.out_dir)
    print(f"wrote {out / 'minibridge'} and {out / 'ASSIGNMENTS.md'}: {len(regions)} regions stubbed in "
          f"{len({r.path for r in regions})} files")
    _print_plan(args.out_dir)
    return 0


def _print_plan(handout):
    """What a handout assigns, releases and withholds, as its manifest records it."""
    from .build import copy_root, read_manifest

    manifest = read_manifest(copy_root(handout))
    if manifest is None:
        print("  nothing is stubbed: the handout is the reference (it has no manifest)")
        return
    for key in ("assigned", "released", "withheld"):
        print(f"  {key} ({len(manifest[key])}): {', '.join(manifest[key]) or '-'}")


def check_command(args):
    import faulthandler
    import signal

    from . import grade as grader
    from .components import COMPONENTS
    from .course import FIELDS, rows, write_csv, write_json

    if args.progress:  # grade's child process: its parent reads where a crash or a hang happened on stderr
        faulthandler.enable(file=sys.stderr)
        if hasattr(signal, "SIGUSR1"):
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    out = sys.stderr if "-" in (args.json, args.csv) else sys.stdout
    width = max(len(c.name) for c in COMPONENTS if not args.component or c.name in args.component)

    def progress(name, result):
        # Each line as its component ends (the same lines as grader.report), so that a check that is
        # stopped, or that stops itself, has printed what it graded before.
        if result is None:
            if args.progress:
                print(grader.RUNNING + name, file=sys.stderr, flush=True)
            return
        print("\n".join(grader.report_lines(result, width)), file=out, flush=True)

    results = grader.grade(args.impl, args.component, assigned=args.assigned, progress=progress, hard_stop=True,
                           time_limit=args.time_limit)
    print(grader.score_line(results, args.component), file=out, flush=True)
    if args.json:
        write_json(rows(results), args.json)
    if args.csv:
        write_csv(rows(results), FIELDS, args.csv)
    return 0 if all(r.passed for r in grader.graded(results)) else 1


def release_command(args):
    from .build import release
    from .components import BY_NAME

    names = list(BY_NAME) if args.all else args.component
    if not names and not args.week:
        raise ValueError("release what? name --component NAME, --week N or --all")
    regions = release(args.handout, names, args.week)
    print(f"released into {args.handout}: {len(regions)} regions put back")
    _print_plan(args.handout)
    return 0


def grade_command(args):
    from .build import component_names, copy_root, read_manifest
    from .course import gradebook, grade_folder, long_rows, summary, write_csv, write_json

    assigned = None
    if args.handout:
        manifest = read_manifest(copy_root(args.handout))
        if manifest is None:
            raise FileNotFoundError(f"{args.handout} holds no manifest (minibridge/assignments/assignment.json): "
                                    "is it a handout written by `build`?")
        assigned = manifest["assigned"]
        if not assigned and not (args.week or args.component):
            released = ", ".join(manifest["released"]) or "-"
            raise ValueError(f"{args.handout} assigns nothing now (released: {released}), so there is nothing "
                             "to grade; grade what it assigned with --week N or --component NAME")
    if args.week or args.component:
        assigned = component_names([*(assigned or ()), *args.component], args.week)
    submissions = grade_folder(args.submissions, assigned, args.timeout, args.time_limit, args.jobs)
    if not submissions:
        raise FileNotFoundError(f"{args.submissions} has no subfolders (one per student)")
    to_stdout = "-" in (args.json, args.csv)
    print(summary(submissions), file=sys.stderr if to_stdout else sys.stdout)
    if args.csv:
        write_csv(*gradebook(submissions), args.csv)
    if args.json:
        write_json(long_rows(submissions), args.json)
    if args.reports:
        Path(args.reports).mkdir(parents=True, exist_ok=True)
        for s in submissions:
            Path(args.reports, f"{s.name}.txt").write_text(s.report + (f"\n{s.problem}\n" if s.problem else ""),
                                                          encoding="utf-8")
    return 0


def list_command(args):
    from .components import COMPONENTS, week_of

    for c in COMPONENTS:
        print(f"{c.name} (week {week_of(c.name)}): {c.summary}")
        print(f"    writes {', '.join(c.covers)}; builds on {', '.join(c.needs) or 'nothing'}")
        print(f"    tolerance {c.tol:g}; snapshot from {c.source}" if c.tol else f"    exact; snapshot from {c.source}")
    return 0


COMMANDS = {"build": build_command, "check": check_command, "release": release_command, "grade": grade_command,
            "list": list_command}

if __name__ == "__main__":
    sys.exit(main())
