"""Running a course with minibridge.assignments: weekly handouts, release, gradebook rows, a folder of submissions.

Every test builds real handouts in a temporary folder and runs the real command line, from inside a
handout as a student does or from outside as an instructor does, and reads what it prints and writes.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import minibridge
from minibridge.assignments import build as builder
from minibridge.assignments.components import BY_NAME, COMPONENTS, WEEKS, foundations, week_of

PACKAGE = Path(minibridge.__file__).resolve().parent
NAMES = [c.name for c in COMPONENTS]
CLI_TIMEOUT_S = 120  # one command; each takes about a second


def cli(*args, cwd):
    """Run `python -m minibridge.assignments ARGS` in `cwd`: (exit status, stdout, stderr).

    The minibridge it runs is the one this test imported, unless `cwd` holds one (a handout).
    """
    path = os.pathsep.join([str(PACKAGE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "minibridge.assignments", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
                          env={**os.environ, "PYTHONPATH": path})
    return proc.returncode, proc.stdout, proc.stderr


def solve(handout, *names):
    """Write the reference bodies of these assigned components into a handout, as a student who got them right."""
    manifest = builder.copy_root(handout) / builder.MANIFEST
    keep = manifest.read_text(encoding="utf-8")
    builder.release(handout, names)
    manifest.write_text(keep, encoding="utf-8")  # still assigned: graded, not given


def plant(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path.name} no longer holds {old!r} exactly once; update this test"
    path.write_text(text.replace(old, new), encoding="utf-8")


def line_of(path, text):
    """The 1-based number of the line of `path` that is `text` (stripped)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()].index(text) + 1


def solution_texts():
    """{function: the lines of its solution region, stripped}, and the set of lines unique to solutions.

    A line counts as unique when it appears nowhere in the reference outside the solution regions.
    """
    regions = builder.package_regions()
    inside, outside = {}, set()
    for path in sorted({r.path for r in regions}):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        marked = set()
        for r in (r for r in regions if r.path == path):
            body = [line for line in lines[r.start : r.end - 1] if line]
            inside[r.function] = body
            marked |= set(range(r.start - 1, r.end))
        outside |= {line for i, line in enumerate(lines) if i not in marked}
    for path in PACKAGE.rglob("*.py"):
        if path not in {r.path for r in regions} and "__pycache__" not in path.parts:
            outside |= {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
    unique = {line for body in inside.values() for line in body if line not in outside and not line.startswith("#")}
    return inside, unique


def leaked(handout):
    """The solution regions whose text, or a line unique to them, appears in any file of the handout.

    subtle: a line may belong to two solutions (attention_backward splits heads as attention does); where
    the handout releases one of them, that line is the released code, no evidence of the other.
    """
    inside, unique = solution_texts()
    manifest = builder.read_manifest(builder.copy_root(handout)) or {"released": []}
    given = {line for n in manifest["released"] for f in BY_NAME[n].covers for line in inside[f]}
    files = [p for p in handout.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".json", ".txt")]
    texts = ["\n".join(line.strip() for line in p.read_text(encoding="utf-8").splitlines()) for p in files]
    lines = {line for t in texts for line in t.splitlines()}
    released = {f for n in manifest["released"] for f in BY_NAME[n].covers}
    found = {f for f, body in inside.items() if any("\n".join(body) in t for t in texts)}
    found |= {f for f, body in inside.items() if set(body) & (unique if f in released else unique - given) & lines}
    return found


# ---- weeks and handouts -------------------------------------------------------------------------------


def test_weeks_hold_every_component_once_and_build_only_on_earlier_weeks():
    assert sorted(n for names in WEEKS.values() for n in names) == sorted(NAMES)
    for name in NAMES:
        later = [f for f in foundations(name) if week_of(f) > week_of(name)]
        assert not later, f"{name} (week {week_of(name)}) builds on {later}, assigned later"


def test_a_week1_handout_holds_no_reference_solution(tmp_path):
    code, out, err = cli("build", tmp_path / "week1", "--week", 1, cwd=tmp_path)
    assert code == 0, err
    assert leaked(tmp_path / "week1") == set()
    manifest = json.loads((tmp_path / "week1" / "minibridge" / builder.MANIFEST).read_text(encoding="utf-8"))
    assert manifest["assigned"] == list(WEEKS[1]) and manifest["released"] == []
    assert sorted(manifest["withheld"]) == sorted(set(NAMES) - set(WEEKS[1]))
    assert manifest["built_from"]["minibridge"] == minibridge.__version__
    assert builder.INSTALL in (tmp_path / "week1" / "ASSIGNMENTS.md").read_text(encoding="utf-8")
    # The same check sees solutions where they are: week 2's handout releases week 1's.
    assert cli("build", tmp_path / "week2", "--week", 2, cwd=tmp_path)[0] == 0
    assert leaked(tmp_path / "week2") == {f for n in WEEKS[1] for f in BY_NAME[n].covers}


def test_the_backward_week_builds_on_the_forward_released_and_is_graded_alone(tmp_path):
    """Week 5 (the backward pass): weeks 1-4 released, so its handout holds their solutions and no other."""
    assert cli("build", tmp_path / "week5", "--week", 5, cwd=tmp_path)[0] == 0
    handout = tmp_path / "week5"
    assert leaked(handout) == {f for week in (1, 2, 3, 4) for n in WEEKS[week] for f in BY_NAME[n].covers}
    code, out, err = cli("check", cwd=handout)
    lines = out.strip().splitlines()
    assert code == 1 and lines[-1] == f"score: 0/{len(WEEKS[5])} components", out + err
    assert [line.split()[1] for line in lines if line.startswith("FAIL")] == list(WEEKS[5]), out
    assert all("not implemented" in v and "minibridge/backward/" in v for v in lines if v.startswith("FAIL")), out
    solve(handout, *WEEKS[5])
    code, out, err = cli("check", cwd=handout)
    assert code == 0 and out.strip().splitlines()[-1] == f"score: {len(WEEKS[5])}/{len(WEEKS[5])} components", out


def test_a_week1_check_grades_only_the_assigned_components_and_writes_rows(tmp_path):
    handout = tmp_path / "week1"
    builder.build(handout, weeks=[1])
    solve(handout, "gelu")
    code, out, err = cli("check", "--json", "rows.json", cwd=handout)  # as a student: from inside, --impl .
    assert code == 1, err
    lines = out.strip().splitlines()
    assert lines[-1] == "score: 1/6 components", out
    verdicts = {line.split()[1]: line.split()[0] for line in lines[:-1] if not line.startswith(" ")}
    assert verdicts == {n: ("PASS" if n == "gelu" else "FAIL" if n in WEEKS[1] else "----") for n in NAMES}, out
    rows = json.loads((handout / "rows.json").read_text(encoding="utf-8"))
    assert [r["component"] for r in rows] == NAMES
    status = {r["component"]: r["status"] for r in rows}
    assert status == {n: "pass" if n == "gelu" else "not implemented" if n in WEEKS[1] else "not assigned"
                      for n in NAMES}
    assert all(set(r) >= {"component", "week", "status", "passed", "ratio", "message"} for r in rows)
    ratio = {r["component"]: r["ratio"] for r in rows}
    assert 0 <= ratio["gelu"] <= 1, rows  # measured: the worst error over the tolerance
    assert all(ratio[n] is None for n in NAMES if n != "gelu"), rows  # nothing measured: unwritten or unassigned

    code, out, err = cli("check", "--component", "gelu", "--component", "bpe", "--json", "-", "--csv", "rows.csv",
                         cwd=handout)
    assert code == 0, err  # gelu passes; bpe is not assigned, so not counted
    assert [(r["component"], r["status"]) for r in json.loads(out)] == [("gelu", "pass"), ("bpe", "not assigned")]
    assert err.strip().splitlines()[-1] == "score: 1/1 components"  # the report moves to stderr
    table = list(csv.DictReader(io.StringIO((handout / "rows.csv").read_text(encoding="utf-8"))))
    assert [(r["component"], r["status"]) for r in table] == [("gelu", "pass"), ("bpe", "not assigned")]


def test_an_assigned_component_needs_its_foundations_assigned_or_released(tmp_path):
    code, out, err = cli("build", tmp_path / "h", "--component", "text_embed", cwd=tmp_path)
    assert code == 2 and "text_embed builds on layer_norm, position_ids" in err and "--release" in err, err
    with pytest.raises(ValueError, match="attention builds on softmax"):
        builder.build(tmp_path / "h2", ["attention"])
    with pytest.raises(ValueError, match="vision_block builds on"):
        builder.build(tmp_path / "h3", weeks=[3], released=[])  # week 3 without weeks 1 and 2
    assert not (tmp_path / "h").exists() and not (tmp_path / "h3").exists()


def test_an_unknown_component_or_week_is_refused_with_one_message(tmp_path):
    from minibridge.assignments import grade as grader

    builder.build(tmp_path / "h", ["softmax"])
    unknown = "unknown 'softmx', week 9; choose from the components"
    with pytest.raises(ValueError, match=unknown):
        builder.plan(["softmx"], [9])
    with pytest.raises(ValueError, match=unknown):
        builder.release(tmp_path / "h", ["softmx"], [9])
    with pytest.raises(ValueError, match="unknown 'softmx'; choose from the components"):
        grader.grade(tmp_path / "h", assigned=["softmx"])
    assert builder.component_names(["softmax", "linear"], [3]) == ["linear", "softmax", "vision_block", "bert_attention"]


def test_release_puts_back_what_a_handout_built_with_those_solutions_has(tmp_path):
    assert cli("build", tmp_path / "week1", "--week", 1, cwd=tmp_path)[0] == 0
    builder.build(tmp_path / "given", [], released=WEEKS[1])  # nothing assigned, week 1 given, the rest withheld
    code, out, err = cli("release", tmp_path / "week1", "--week", 1, cwd=tmp_path)
    assert code == 0, err
    for path in (tmp_path / "given" / "minibridge").rglob("*.py"):
        released = tmp_path / "week1" / "minibridge" / path.relative_to(tmp_path / "given" / "minibridge")
        assert released.read_bytes() == path.read_bytes(), path
    manifest = builder.read_manifest(tmp_path / "week1" / "minibridge")
    assert manifest["assigned"] == [] and manifest["released"] == [n for n in NAMES if n in WEEKS[1]]
    assert "released" in cli("release", tmp_path / "week1", "--week", 1, cwd=tmp_path)[1]  # again: nothing to do

    code, out, err = cli("release", tmp_path / "week1", "--all", cwd=tmp_path)
    assert code == 0 and "is the reference" in out, err
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" not in path.parts:
            assert (tmp_path / "week1" / "minibridge" / path.relative_to(PACKAGE)).read_bytes() == path.read_bytes()
    assert builder.read_manifest(tmp_path / "week1" / "minibridge") is None
    code, out, err = cli("check", "--impl", tmp_path / "week1", cwd=tmp_path)
    assert code == 0 and out.strip().splitlines()[-1] == f"score: {len(NAMES)}/{len(NAMES)} components", out + err


def test_release_refuses_a_stub_that_was_edited_and_a_run_from_inside_the_handout(tmp_path):
    handout = tmp_path / "handout"
    builder.build(handout, ["softmax"])
    plant(handout / "minibridge" / "ops.py", '    raise NotImplementedError("softmax in', '    raise ValueError("softmax in')
    code, out, err = cli("release", handout, "--component", "softmax", cwd=tmp_path)
    assert code == 2 and "ops.py" in err and "not as `build` wrote it" in err, err
    code, out, err = cli("release", ".", "--component", "softmax", cwd=handout)  # `-m minibridge` is the handout's
    assert code == 2 and "is itself a handout" in err, err


# ---- the student's check survives their mistakes -------------------------------------------------------


@pytest.fixture()
def two_part_handout(tmp_path):
    """A handout assigning softmax (ops.py) and bpe (tokenizer.py), the rest withheld."""
    handout = tmp_path / "handout"
    builder.build(handout, ["softmax", "bpe"])
    return handout


def test_a_syntax_error_fails_only_the_components_of_that_module(two_part_handout):
    handout = two_part_handout
    solve(handout, "bpe")
    ops = handout / "minibridge" / "ops.py"
    ops.write_text(ops.read_text(encoding="utf-8") + "\ndef broken(:\n", encoding="utf-8")
    code, out, err = cli("check", "--impl", ".", cwd=handout)
    assert code == 1 and "Traceback" not in err, err
    lines = out.strip().splitlines()
    assert lines[-1] == "score: 1/2 components", out
    assert any(line.startswith("PASS  bpe") for line in lines), out
    softmax = next(line for line in lines if line.startswith("FAIL  softmax"))
    assert "SyntaxError" in softmax and f"minibridge/ops.py:{line_of(ops, 'def broken(:')}" in softmax, softmax


def test_a_timeout_names_the_students_file_and_line(two_part_handout):
    handout = two_part_handout
    solve(handout, "softmax")
    tokenizer = handout / "minibridge" / "tokenizer.py"
    plant(tokenizer, '    raise NotImplementedError("bpe in', '    while True:\n        pass\n    raise NotImplementedError("bpe in')
    code, out, err = cli("check", "--time-limit", "0.5", cwd=handout)
    assert code == 1 and "Traceback" not in err, err
    bpe = next(line for line in out.splitlines() if line.startswith("FAIL  bpe"))
    where = re.search(r"\(at minibridge/(\S+):(\d+) in (\w+)\)$", bpe)
    assert "TimeoutError" in bpe and where, bpe
    assert where.group(1, 3) == ("tokenizer.py", "bpe"), bpe  # not the grader's own files inside the copy
    assert int(where.group(2)) in (line_of(tokenizer, "while True:"), line_of(tokenizer, "pass")), bpe
    assert "PASS  softmax" in out and out.strip().splitlines()[-1] == "score: 1/2 components", out


SWALLOW = ("    while True:  # a retry loop that swallows every exception, the TimeoutError too\n"
           "        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n")


def test_a_component_that_will_not_stop_ends_the_check_and_says_where(two_part_handout):
    handout = two_part_handout
    solve(handout, "softmax")
    tokenizer = handout / "minibridge" / "tokenizer.py"
    plant(tokenizer, '    raise NotImplementedError("bpe in', SWALLOW + '    raise NotImplementedError("bpe in')
    code, out, err = cli("check", "--time-limit", "0.5", cwd=handout)  # stops 1 s (the grace) after the limit
    assert code == 3 and "Traceback" not in err, out + err
    assert "PASS  softmax" in out, out  # printed as it was graded, before the stop
    bpe = next(line for line in out.splitlines() if line.startswith("FAIL  bpe"))
    where = re.search(r"the check stops here \(at minibridge/tokenizer.py:(\d+) in bpe\)$", bpe)
    assert where and "past its time limit of 0.5 s" in bpe, bpe
    assert int(where.group(1)) in [line_of(tokenizer, text) for text in ("while True:", "pass")], bpe
    assert err.strip().splitlines()[-1].startswith("check stopped: bpe would not stop (at minibridge/tokenizer.py:"), err


def test_grade_reports_a_submission_whose_check_stopped_itself(two_part_handout, tmp_path):
    subs = tmp_path / "submissions"
    shutil.copytree(two_part_handout, subs / "frank")
    solve(subs / "frank", "softmax")
    plant(subs / "frank" / "minibridge" / "tokenizer.py", '    raise NotImplementedError("bpe in',
          SWALLOW + '    raise NotImplementedError("bpe in')
    code, out, err = cli("grade", subs, "--component", "softmax", "--component", "bpe", "--time-limit", "0.5",
                         "--reports", "reports", cwd=tmp_path)
    assert code == 0, err
    assert re.search(r"^frank: check stopped: bpe would not stop \(at minibridge/tokenizer.py:\d+ in bpe\)", out, re.M), out
    report = (tmp_path / "reports" / "frank.txt").read_text(encoding="utf-8")
    assert "PASS  softmax" in report and "FAIL  bpe" in report and "past its time limit" in report, report


# ---- nothing assigned, the banner, what a handout holds ------------------------------------------------


def test_a_handout_whose_work_was_all_released_says_nothing_is_assigned(tmp_path):
    handout = tmp_path / "week1"
    builder.build(handout, weeks=[1])
    assert cli("release", handout, "--week", 1, cwd=tmp_path)[0] == 0
    text = (handout / "ASSIGNMENTS.md").read_text(encoding="utf-8")
    assert "Nothing is assigned in this handout now" in text and "| component |" not in text, text
    assert "TODO" not in text and ", ".join(WEEKS[1]) in text, text
    code, out, err = cli("check", cwd=handout)
    assert code == 0, out + err
    assert out.strip().splitlines()[-1] == (f"nothing is assigned in this handout (released: {', '.join(WEEKS[1])}): "
                                            "nothing to grade"), out
    assert "score:" not in out, out
    code, out, err = cli("grade", tmp_path, "--handout", handout, cwd=tmp_path)
    assert code == 2 and "assigns nothing now" in err and "--week N" in err, err


def test_the_banner_says_what_a_student_types_in_the_handout_folder(two_part_handout):
    ops = (two_part_handout / "minibridge" / "ops.py").read_text(encoding="utf-8")
    check = "python -m minibridge.assignments check --component softmax"
    assert f"#   Check it (from the handout folder): {check}" in ops
    code, out, err = cli(*check.split()[3:], cwd=two_part_handout)  # exactly that, from there
    assert code == 1 and out.startswith("FAIL  softmax  not implemented"), out + err
    # The instructor guide's example banner is the one build writes.
    guide = (PACKAGE.parent / "notebooks" / "assignments" / "README.md").read_text(encoding="utf-8")
    banner = builder.banner(next(r for r in builder.package_regions() if r.function == "ops.layer_norm"))
    assert banner[-2] in guide and banner[-1] in guide


def test_a_handout_holds_no_notebooks_and_no_notebook_solutions(tmp_path):
    builder.build(tmp_path / "handout")
    assert sorted(p.name for p in (tmp_path / "handout").iterdir()) == ["ASSIGNMENTS.md", "minibridge"]
    assert not [p for p in (tmp_path / "handout").rglob("*") if p.suffix == ".ipynb" or p.name == "solutions.py"]


@pytest.mark.parametrize("module, old, new", [
    ("weights.py", "import numpy as np", "import numpy as np\ndef broken(:"),
    ("config.py", "import json", "import json\n1 / 0"),
])
def test_a_broken_weights_or_config_file_is_one_clear_error(two_part_handout, module, old, new):
    path = two_part_handout / "minibridge" / module
    plant(path, old, new)
    code, out, err = cli("check", cwd=two_part_handout)
    assert code == 2 and "Traceback" not in err, err
    line = line_of(path, new.splitlines()[-1])
    assert err.startswith(f"error: the grader cannot start: minibridge/{module}, line {line}: "), err
    assert "not graded" in err and "back as the handout had it" in err and len(err.strip().splitlines()) == 1, err


# ---- a folder of submissions --------------------------------------------------------------------------


SUBMISSION_TIMEOUT_S = 6  # dave's loop ignores the per-component alarm: only the submission's limit stops it


def test_grading_a_folder_of_submissions_is_one_command(tmp_path):
    handout = tmp_path / "week1"
    builder.build(handout, weeks=[1])
    subs = tmp_path / "submissions"
    for student in ("alice", "bob", "carol", "dave"):
        shutil.copytree(handout, subs / student)
        solve(subs / student, *WEEKS[1])
    (subs / "erin").mkdir()  # handed in nothing
    softmax_body = "    e = array_module(x).exp(x - x.max(axis=-1, keepdims=True))"
    plant(subs / "bob" / "minibridge" / "ops.py", softmax_body, "    import sys\n    sys.exit(3)\n" + softmax_body)
    plant(subs / "carol" / "minibridge" / "ops.py", softmax_body,
          "    print('carol was here')\n    import os\n    os._exit(7)\n" + softmax_body)
    plant(subs / "dave" / "minibridge" / "ops.py", softmax_body,
          "    import signal\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    while True:\n        pass\n")
    (subs / "bob" / "minibridge" / builder.MANIFEST).write_text('{"assigned": [], "released": [], "withheld": []}')

    code, out, err = cli("grade", subs, "--handout", handout, "--csv", "grades.csv", "--json", "grades.json",
                         "--reports", "reports", "--timeout", SUBMISSION_TIMEOUT_S, "--jobs", 5, cwd=tmp_path)
    assert code == 0, err
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:] if not line.split()[0].endswith(":")}
    assert out.splitlines()[0].split() == ["student", *WEEKS[1], "score"]
    assert table["alice"] == ["PASS"] * 6 + ["6/6"], out
    # bob's sys.exit fails softmax and attention (which calls it); his edited manifest changes nothing
    assert table["bob"] == ["PASS"] * 4 + ["FAIL", "FAIL", "4/6"], out
    assert table["carol"][-1] == "0/6" and table["dave"][-1] == "0/6" and table["erin"][-1] == "0/6", out
    assert "carol: the check exited with status 7 while running softmax" in out, out
    # dave's stack, dumped before the kill, names his line
    dave_ops = subs / "dave" / "minibridge" / "ops.py"
    dave = re.search(rf"dave: still running after {SUBMISSION_TIMEOUT_S} s, in component softmax "
                     r"\(at minibridge/ops.py:(\d+) in softmax\): grading stopped", out)
    assert dave and int(dave.group(1)) in (line_of(dave_ops, "while True:"), line_of(dave_ops, "pass")), out
    # what carol's check printed before os._exit survives in her report (it runs unbuffered)
    carol = (tmp_path / "reports" / "carol.txt").read_text(encoding="utf-8")
    assert [line.split()[:2] for line in carol.splitlines()[:4]] == [["PASS", n] for n in WEEKS[1][:4]], carol
    assert "carol was here" in carol and "while running softmax" in carol.splitlines()[-1], carol
    assert "PASS  quick_gelu" in (tmp_path / "reports" / "dave.txt").read_text(encoding="utf-8")
    assert "erin: no minibridge package" in out, out

    book = {r["student"]: r for r in csv.DictReader(io.StringIO((tmp_path / "grades.csv").read_text(encoding="utf-8")))}
    assert list(book) == ["alice", "bob", "carol", "dave", "erin"]
    assert book["alice"]["score"] == "6/6" and book["bob"]["passed"] == "4" and book["bob"]["softmax"] == "error"
    rows = json.loads((tmp_path / "grades.json").read_text(encoding="utf-8"))
    bob = {r["component"]: r for r in rows if r["student"] == "bob"}
    assert "SystemExit: 3" in bob["softmax"]["message"] and "minibridge/ops.py:" in bob["softmax"]["message"]
    assert "score: 4/6 components" in (tmp_path / "reports" / "bob.txt").read_text(encoding="utf-8")
    assert not list(subs.rglob("__pycache__")), "grading leaves no bytecode in the submissions"
