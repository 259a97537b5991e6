"""python -m minibridge.assignments {build, check, list, snapshot} (see --help)."""

import argparse
import sys

from .components import COMPONENTS

EXAMPLES = """examples:
  python -m minibridge.assignments build handout/                    # every component becomes a TODO
  python -m minibridge.assignments build week1/ --component layer_norm --component softmax
  python -m minibridge.assignments check --impl submissions/alice/   # PASS/FAIL per component, then the score
  python -m minibridge.assignments check --impl handout/ --component softmax
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minibridge.assignments", epilog=EXAMPLES,
                                     description="Course assignments generated from minibridge's source.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    names = [c.name for c in COMPONENTS]

    p = sub.add_parser("build", help="write the student copy, OUT_DIR/minibridge with TODOs")
    p.add_argument("out_dir")
    p.add_argument("--component", action="append", choices=names, metavar="NAME",
                   help="stub only this component (repeatable; default: all)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT_DIR/minibridge")

    p = sub.add_parser("check", help="grade a student copy against the snapshots (exit status 0 only at full marks)")
    p.add_argument("--impl", required=True, metavar="PATH", help="the student copy: a folder holding minibridge/")
    p.add_argument("--component", action="append", choices=names, metavar="NAME",
                   help="grade only this component (repeatable; default: all)")

    sub.add_parser("list", help="the components: what each covers, builds on, its tolerance and snapshot source")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (OSError, ValueError, RuntimeError) as e:  # a wrong path, stale snapshots, bad markers: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def build_command(args):
    from .build import build

    regions = build(args.out_dir, args.component, force=args.force)
    print(f"wrote {args.out_dir}/minibridge: {len(regions)} regions stubbed in "
          f"{len({r.path for r in regions})} files for {len(args.component or COMPONENTS)} components, "
          f"and {args.out_dir}/ASSIGNMENTS.md")
    return 0


def check_command(args):
    from .grade import grade, report

    results = grade(args.impl, args.component)
    print(report(results))
    return 0 if all(r.passed for r in results) else 1


def list_command(args):
    for c in COMPONENTS:
        print(f"{c.name}: {c.summary}")
        print(f"    writes {', '.join(c.covers)}; builds on {', '.join(c.needs) or 'nothing'}")
        print(f"    tolerance {c.tol:g}; snapshot from {c.source}" if c.tol else f"    exact; snapshot from {c.source}")
    return 0


COMMANDS = {"build": build_command, "check": check_command, "list": list_command}

if __name__ == "__main__":
    sys.exit(main())
