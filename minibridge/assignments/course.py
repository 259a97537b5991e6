"""Running a course: gradebook rows, and grading a folder of submissions in one command.

    python -m minibridge.assignments check --impl . --json -            # one row per component, as JSON
    python -m minibridge.assignments grade submissions/ --week 1 --csv grades.csv

`grade_folder` grades each submission (a folder holding minibridge/) in a process of its own,
`python -m minibridge.assignments check --impl SUBMISSION --json FILE`, run with *this* minibridge
and under a wall-clock limit: a student's sys.exit, endless loop or crash stops their own grading,
never the batch. The check runs unbuffered with --progress, so a crash's report keeps the lines it
printed first and names the component it was running and, where Python could still say (a stack
dumped on SIGUSR1 before a timeout's kill, or on a fatal error), the student's line. The rows it
collects make one summary table, a CSV gradebook and a JSON file.
"""

import csv
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .build import PACKAGE, assigned_in
from .components import BY_NAME, COMPONENTS, week_of
from .grade import RUNNING, STOPPED, package_dir, where_in_dump

SUBMISSION_TIMEOUT_S = 600  # one whole submission (16 components take about a second when they end)
FIELDS = ("component", "week", "status", "passed", "ratio", "message")


def rows(results):
    """One gradebook row (a dict of FIELDS and notes) per grade.Result."""
    return [_row(r.name, r.status, r.passed, r.ratio, r.message, r.notes) for r in results]


def _row(name, status, passed, ratio, message, notes=()):
    ratio = ratio if ratio is not None and math.isfinite(ratio) else None  # JSON has no inf
    return {"component": name, "week": week_of(name), "status": status, "passed": bool(passed), "ratio": ratio,
            "message": message, "notes": list(notes)}


def write_json(data, dest):
    """Write `data` as JSON to the file `dest`, or to stdout when dest is "-"."""
    _write_text(json.dumps(data, indent=1) + "\n", dest)


def write_csv(records, columns, dest):
    """Write dicts as CSV (the given columns, in order) to the file `dest`, or to stdout when dest is "-"."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    _write_text(buffer.getvalue(), dest)


def _write_text(text, dest):
    if dest == "-":
        sys.stdout.write(text)
    else:
        Path(dest).write_text(text, encoding="utf-8")


# ---- a folder of submissions --------------------------------------------------------------------------


@dataclass
class Submission:
    name: str  # the folder's name: the student
    rows: list  # gradebook rows, one per component (as `rows`)
    problem: str = ""  # why grading stopped short (no package, a timeout, a crash), or ""
    report: str = ""  # what the check printed

    @property
    def graded(self):
        """The components graded (those the handout assigns)."""
        return [r["component"] for r in self.rows if r["status"] != "not assigned"]

    @property
    def passed(self):
        return sum(r["status"] == "pass" for r in self.rows)


def submissions_in(folder):
    """The submission folders in `folder`: its subfolders, sorted by name (hidden ones skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of submissions")
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith((".", "__"))]


def grade_folder(folder, assigned=None, timeout_s=SUBMISSION_TIMEOUT_S, time_limit_s=None, jobs=1):
    """A Submission per subfolder of `folder`, each graded in its own process.

    assigned: the components to grade (what the handout assigns); None: each submission's own
    manifest decides (a student could edit it, so pass the handout's when it counts).
    """
    paths = submissions_in(folder)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda p: grade_one(p, assigned, timeout_s, time_limit_s), paths))


def grade_one(path, assigned=None, timeout_s=SUBMISSION_TIMEOUT_S, time_limit_s=None):
    """Grade one submission folder in a subprocess; a Submission whatever the student's code does."""
    path = Path(path)
    try:
        root = package_dir(path)
    except FileNotFoundError as e:
        return _stopped(path.name, list(assigned or BY_NAME), str(e))
    try:
        expected = assigned_in(root) if assigned is None else list(assigned)
    except ValueError as e:  # a manifest naming components this grader does not know
        return _stopped(path.name, list(BY_NAME), str(e))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, "-u", "-m", "minibridge.assignments", "check", "--impl", str(path.resolve()),
                   "--json", str(out), "--progress"]
        command += [f"--assigned={n}" for n in assigned or ()]
        if time_limit_s:
            command += ["--time-limit", str(time_limit_s)]
        # subtle: the cwd is the grading package's parent, so `-m minibridge` is this minibridge,
        # never a copy in the current folder; a session of its own lets a timeout kill what it started.
        # Unbuffered (-u), the report lines printed before a crash reach us; --progress names each
        # component on stderr as it starts, and dumps the stack on SIGUSR1 or a fatal error.
        proc = subprocess.Popen(command, cwd=PACKAGE.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"},
                                start_new_session=hasattr(os, "killpg"))
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stdout, stderr = _stop(proc)
            where = f", in component {_running(stderr)}" if _running(stderr) else ""
            problem = f"still running after {timeout_s:g} s{where}{where_in_dump(stderr, root)}: grading stopped"
            return _stopped(path.name, expected, problem, _partial(stdout, stderr, problem))
        if proc.returncode in (0, 1) and out.is_file():
            found = json.loads(out.read_text(encoding="utf-8"))
            return Submission(path.name, found, "", stdout)
    problem = _crash(proc.returncode, stderr, root)
    return _stopped(path.name, expected, problem, _partial(stdout, stderr, problem))


DUMP_WAIT_S = 1  # after SIGUSR1, how long the child has to write its stack (faulthandler writes at once)


def _stop(proc):
    """Kill a check that ran past its time, after asking it for its stack (SIGUSR1, --progress): (stdout, stderr)."""
    if hasattr(signal, "SIGUSR1"):
        try:
            proc.send_signal(signal.SIGUSR1)
            proc.communicate(timeout=DUMP_WAIT_S)  # it goes on running: this times out, keeping what was written
        except (OSError, subprocess.TimeoutExpired):
            pass
    os.killpg(proc.pid, signal.SIGKILL) if hasattr(os, "killpg") else proc.kill()
    return proc.communicate()


DUMP_LINE = re.compile(r'\s+File "|(Current thread|Thread) 0x|Extension modules:|Timeout \(')  # faulthandler's


def _running(stderr):
    """The component a check --progress was running last (its last `check: running NAME`), or ""."""
    names = [line[len(RUNNING):].strip() for line in stderr.splitlines() if line.startswith(RUNNING)]
    return names[-1] if names else ""


def _crash(returncode, stderr, root):
    """Why a check ended without its rows: its exit status or signal, the component running, where, its last words."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(RUNNING)]
    if lines and lines[-1].startswith(STOPPED):  # it stopped itself (grade._hard_stop): that line says it all
        return lines[-1]
    how = f"exited with status {returncode}"
    if returncode < 0:  # POSIX: killed by a signal (a segfault in a C extension, the OOM killer)
        try:
            how = f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            how = f"was killed by signal {-returncode}"
    running = _running(stderr)
    # Its last words: a fatal error's name (faulthandler's dump follows it), else its last plain line.
    fatal = [line for line in lines if line.startswith("Fatal Python error")]
    plain = [line for line in lines if line.strip() and not DUMP_LINE.match(line)]
    last = (fatal or plain or [""])[-1].strip()
    return (f"the check {how}" + (f" while running {running}" if running else "") + where_in_dump(stderr, root)
            + (f": {last}" if last else ""))


def _partial(stdout, stderr, problem):
    """The report of a check that did not finish: the lines it printed, then its stderr (less the markers
    and `problem`, which the report's last line repeats)."""
    rest = "\n".join(line for line in stderr.splitlines() if not line.startswith(RUNNING) and line != problem).strip()
    return stdout + (f"\n--- the check's stderr ---\n{rest}\n" if rest else "")


def _stopped(name, expected, problem, report=""):
    """A Submission whose grading stopped short: every expected component an error with the reason."""
    return Submission(name, [_row(n, "error", False, None, problem) for n in expected], problem, report)


def columns(submissions):
    """The components graded in any submission, in teaching order (every one when none was graded)."""
    graded = {n for s in submissions for n in s.graded}
    return [c.name for c in COMPONENTS if c.name in graded] or [c.name for c in COMPONENTS]


def summary(submissions):
    """One table: a row per student, a column per component (PASS, FAIL or - when not graded), the score."""
    records, names = gradebook(submissions)[0], columns(submissions)
    header = ["student", *names, "score"]
    table = [[b["student"], *({"pass": "PASS", "not assigned": "-"}.get(b[n], "FAIL") for n in names), b["score"]]
             for b in records]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *table]]
    lines += [f"{b['student']}: {b['problem']}" for b in records if b["problem"]]
    return "\n".join(lines)


def gradebook(submissions):
    """(CSV records, their columns): one row per student, the score and each component's status."""
    names = columns(submissions)
    records = []
    for s in submissions:
        status = {r["component"]: r["status"] for r in s.rows}
        records.append({"student": s.name, "score": f"{s.passed}/{len(s.graded)}", "passed": s.passed,
                        "graded": len(s.graded), **{n: status.get(n, "not assigned") for n in names},
                        "problem": s.problem})
    return records, ["student", "score", "passed", "graded", *names, "problem"]


def long_rows(submissions):
    """Every row of every submission, with the student's name first (the JSON gradebook)."""
    return [{"student": s.name, **r} for s in submissions for r in s.rows]
