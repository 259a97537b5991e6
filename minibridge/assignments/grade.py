"""The grader: run each component of a student copy on its stored inputs and compare with the snapshots.

    python -m minibridge.assignments check --impl handout/ [--component softmax]

The student copy is imported under a package name of its own, never as `minibridge` (which stays
the reference that is running the grader), and module by module as components need them: a syntax
error in tokenizer.py fails the BPE component and nothing else. Each component calls the student's
own versions of the components it builds on, so one mistake fails its component and those above it.
"""

import contextlib
import faulthandler
import importlib
import importlib.machinery
import importlib.util
import itertools
import os
import re
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..backend import to_numpy
from . import GRADED_MODULES
from .build import assigned_in, component_names, read_manifest
from .components import BY_NAME, Tiny, config_json, foundations, tiny_weights, weights_checksum

SNAPSHOTS = Path(__file__).with_name("snapshots.npz")
# Seconds one component may run (the full model takes well under one): a merge loop that never
# ends fails its component instead of hanging the grader.
TIME_LIMIT_S = 60
MODULES = GRADED_MODULES  # what components call (assignments/__init__.py)
# `check` ends itself, with this exit status, when a component is still running a grace period
# after its time limit (code that catches the TimeoutError and goes on); see _hard_stop.
HARD_STOP_EXIT = 3
RUNNING = "check: running "  # `check --progress` writes this and the component's name to stderr before each
STOPPED = "check stopped: "  # the last line `check` writes to stderr when _hard_stop ends it
RELEASED = "not assigned: given, its solution released"
NOT_ASSIGNED = "not assigned in this handout"

_counter = itertools.count()


class SnapshotError(RuntimeError):
    """snapshots.npz does not fit this version of the components."""


STATUSES = ("pass", "fail", "not implemented", "error", "not assigned")  # "error": the code raised


@dataclass
class Result:
    """One component's grade. Whoever makes it sets its status (one of STATUSES); passed is status == "pass"."""

    name: str
    passed: bool
    message: str  # one line: the worst error, or why it failed
    notes: list = field(default_factory=list)  # further lines: other failing outputs, failing dependencies
    status: str = None  # one of STATUSES
    ratio: float = None  # the worst error over the tolerance, where one was measured

    def __post_init__(self):
        if self.status not in STATUSES or self.passed != (self.status == "pass"):
            raise ValueError(f"Result {self.name}: status {self.status!r} (one of {STATUSES}) and passed={self.passed}")


# ---- the student copy ---------------------------------------------------------------------------------


def package_dir(impl):
    """The minibridge package folder of a student copy: IMPL/minibridge, or IMPL itself."""
    impl = Path(impl)
    for root in (impl / "minibridge", impl):
        if (root / "__init__.py").is_file() and (root / "ops.py").is_file():
            return root.resolve()
    raise FileNotFoundError(f"no minibridge package in {impl} (expected {impl / 'minibridge' / 'ops.py'})")


class Student:
    """The student copy's modules (student.ops, student.vision, student.backward.ops, ...), each imported on first use.

    The package's __init__ is not run, so a broken module fails only the components that use it.
    """

    def __init__(self, impl):
        self.root = package_dir(impl)
        self.package = f"_minibridge_student_{next(_counter)}"
        spec = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
        spec.submodule_search_locations = [str(self.root)]
        sys.modules[self.package] = importlib.util.module_from_spec(spec)

    def __getattr__(self, module):
        if any(m.startswith(module + ".") for m in MODULES):  # a subpackage (backward): its modules, lazily
            return _Subpackage(self, module)
        if module not in MODULES:
            raise AttributeError(module)
        keep, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave no __pycache__ in submissions
        try:
            return importlib.import_module(f"{self.package}.{module}")
        finally:
            sys.dont_write_bytecode = keep

    def close(self):
        for name in [n for n in sys.modules if n == self.package or n.startswith(self.package + ".")]:
            del sys.modules[name]

    def where(self, error):
        """ " (at minibridge/ops.py:120 in softmax)": where in this copy `error` was raised (_where), or ""."""
        return _where(error, self.root)


class _Subpackage:
    """student.backward: student.backward.ops imports the copy's backward/ops.py (and only it) on first use."""

    def __init__(self, student, name):
        self._student, self._name = student, name

    def __getattr__(self, module):
        return getattr(self._student, f"{self._name}.{module}")


# ---- snapshots ----------------------------------------------------------------------------------------


class Snapshot(NamedTuple):
    """One component's part of snapshots.npz (keys component/in/…, component/out/…, component/mistake/…)."""

    inputs: dict  # {name: read-only array}
    outputs: dict  # {name: read-only array}: what the reference computes from the inputs
    mistakes: dict  # {mistake: {output: read-only array}}: what a typical mistake computes (components.Symptom)


def load_snapshots(path=SNAPSHOTS):
    """{component: Snapshot}, every array read-only; checks they fit the components."""
    if not Path(path).is_file():
        raise SnapshotError(f"{path} is missing; make it with: python tests/make_snapshots.py (from a checkout, with the reference extra)")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    stale = "; regenerate them with: python tests/make_snapshots.py (from a checkout, with the reference extra)"
    if str(arrays.get("meta/config")) != config_json():
        raise SnapshotError(f"{path} was made for another tiny model config" + stale)
    expected, found = weights_checksum(tiny_weights()), float(arrays["meta/weights_checksum"])
    if abs(expected - found) > 1e-9 * expected:
        raise SnapshotError(f"{path} was made with other weights (checksum {found!r}, now {expected!r})" + stale)
    snaps = {}
    for key, value in arrays.items():
        if key.startswith("meta/"):
            continue
        component, kind, name = key.split("/", 2)
        value.flags.writeable = False  # a student's code must not write into its inputs
        snap = snaps.setdefault(component, Snapshot({}, {}, {}))
        if kind == "mistake":
            mistake, output = name.rsplit("/", 1)
            snap.mistakes.setdefault(mistake, {})[output] = value
        else:
            (snap.inputs if kind == "in" else snap.outputs)[name] = value
    if sorted(snaps) != sorted(BY_NAME):
        raise SnapshotError(f"{path} holds components {sorted(snaps)}, expected {sorted(BY_NAME)}" + stale)
    for name, snap in snaps.items():
        missing = sorted(set(BY_NAME[name].mistakes()) - set(snap.mistakes))
        if missing:
            raise SnapshotError(f"{path} lacks the stored mistakes {missing} of {name}" + stale)
    return snaps


# ---- comparing ----------------------------------------------------------------------------------------


class Check(NamedTuple):
    """How one output compares with the reference's (compare)."""

    ratio: float  # the worst error over its tolerance (inf: a wrong shape or dtype, or any difference if exact)
    message: str  # one line: where, the worst error or the first difference, mine vs reference
    tol: float  # the tolerance of the case it reports
    case: object = None  # that components.Case, or None

    @property
    def err(self):
        """The worst error itself."""
        return self.ratio * self.tol


def compare(name, mine, ref, tol, cases=()):
    """The worst element of `mine` against `ref`: a Check.

    error = max |mine - ref| / max(1, max |ref|), as the parity tests; for exact outputs (strings,
    integers, or a tolerance of 0), how many elements differ and the first of them.
    cases: the components.Case of this output; each is graded on its own elements with its own
    tolerance and scale, and the Check reports the case that is furthest beyond its tolerance
    (for exact outputs, the first case in order with a difference).
    """
    try:
        mine = np.asarray(to_numpy(mine))
    except Exception as e:  # noqa: BLE001 (a ragged list, an object that is no array)
        return Check(np.inf, f"{name}: returned {type(mine).__name__}, not an array ({e})", tol)
    if mine.shape != ref.shape:
        return Check(np.inf, f"{name}: shape mine {mine.shape} vs reference {ref.shape}", tol)
    if ref.dtype.kind not in "U" and mine.dtype.kind not in "biuf":
        return Check(np.inf, f"{name}: returned dtype {mine.dtype}, expected numbers like the reference's {ref.dtype}",
                     tol)
    if ref.dtype.kind in "Ubiu" or tol == 0:
        return _compare_exact(name, mine, ref, tol, cases)
    if ref.size == 0:
        return Check(0.0, f"{name}: empty, as the reference", tol)
    diff = np.abs(mine.astype(np.float64) - ref.astype(np.float64))
    diff[np.isnan(diff)] = np.inf
    best = None
    for label, inside, case_tol in _case_masks(ref.shape, cases, tol):
        if not inside.any():
            continue
        worst = np.unravel_index(int(np.where(inside, diff, -1.0).argmax()), diff.shape)
        err = float(diff[worst]) / max(1.0, float(np.abs(ref[inside]).max()))
        ratio = err / case_tol if case_tol else (np.inf if err else 0.0)
        if best is None or ratio > best[0]:
            best = (ratio, label, worst, err, case_tol)
    ratio, label, worst, err, case_tol = best
    index = tuple(int(i) for i in worst)
    where = f'{name}, case "{label}"' if label else name
    return Check(ratio, (f"{where}: worst error {err:.3g} {'>' if ratio > 1 else '<='} {case_tol:g} at index {index}: "
                         f"mine {mine[worst]:.7g} vs reference {ref[worst]:.7g}"), case_tol, _case(cases, label))


def _compare_exact(name, mine, ref, tol, cases):
    """compare for outputs that must match exactly (strings, integers): no worst error, the first difference.

    The first case (in the cases' order) with a difference is named, and its first differing element.
    """
    wrong = mine.astype(str) != ref if ref.dtype.kind == "U" else ~(mine == ref)
    if not wrong.any():
        return Check(0.0, f"{name}: exact match", tol)
    label, inside, _ = next(m for m in _case_masks(ref.shape, cases, tol) if (wrong & m[1]).any())
    i = int(np.flatnonzero(wrong & inside)[0])
    if ref.dtype.kind == "U":
        index, shown = str(i), lambda v: repr(str(v))
    else:  # numbers: the index as a tuple, integers without a decimal point
        index = str(tuple(int(j) for j in np.unravel_index(i, ref.shape)))
        shown = lambda v: str(int(v)) if np.isfinite(v) and float(v) == int(v) else f"{v:.7g}"  # noqa: E731
    where = f'{name}, case "{label}"' if label else name
    return Check(np.inf, (f"{where}: {int(wrong.sum())} of {ref.size} differ; the first, at index {index}: "
                          f"mine {shown(mine.flat[i])} vs reference {shown(ref.flat[i])}"), tol, _case(cases, label))


def _case(cases, label):
    return next((c for c in cases if c.label == label), None)


def _case_masks(shape, cases, tol):
    """[(label, boolean mask of `shape`, tolerance)]: one per case (a case with where=None takes the rest)."""
    if not cases:
        return [(None, np.ones(shape, dtype=bool), tol)]
    taken, out = np.zeros(shape, dtype=bool), []
    for case in cases:
        inside = np.zeros(shape, dtype=bool)
        if case.where is None:
            inside = ~taken
        else:
            for index in case.where:
                inside[index] = True
        taken |= inside
        out.append((case.label, inside, tol if case.tol is None else case.tol))
    return out


def _symptoms(component, snapshot, mine):
    """The hint lines of the component's typical mistakes (components.Symptom) that the failing outputs look like."""
    try:
        arrays = {k: np.asarray(to_numpy(v)) for k, v in mine.items()}
        shaped = all(arrays[k].shape == snapshot.outputs[k].shape for k in snapshot.outputs)
    except Exception:  # noqa: BLE001 (no arrays to look at: the FAIL line says why)
        return []
    hints = []
    for symptom in component.symptoms:
        if not shaped and not symptom.shapes:  # a wrong shape: only the symptoms that read shapes can judge
            continue
        try:
            with np.errstate(all="ignore"):
                if symptom.fits(snapshot, arrays) and "hint: " + symptom.hint not in hints:
                    hints.append("hint: " + symptom.hint)
        except Exception:  # noqa: BLE001 (a symptom that cannot be judged on these outputs says nothing)
            pass
    nan = [k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()
           and np.isfinite(snapshot.outputs[k]).all()]
    if nan and shaped and not hints:
        hints.append(f"hint: nan or inf in {', '.join(nan)} where the reference is finite: an exp that overflows, "
                     "or a division by zero?")
    return hints


def _case_hint(case, snapshot, mine):
    """The failing case's hint line (what the case tests), where the case has one and the failure fits it."""
    if case is None or not case.hint:
        return []
    if case.fits is not None:
        try:
            with np.errstate(all="ignore"):
                arrays = {k: np.asarray(to_numpy(v), dtype=np.float64) for k, v in mine.items()}
                if not case.fits(snapshot.inputs, arrays, snapshot.outputs):
                    return []
        except Exception:  # noqa: BLE001 (outputs the test cannot read: no hint)
            return []
    return ["hint: " + case.hint]


@contextlib.contextmanager
def _time_limit(seconds):
    """Raise TimeoutError in the code running inside after `seconds` (POSIX main thread; else no limit)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (a loop that never ends?)")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def grace_s(limit):
    """Seconds past a component's time limit before `check` gives up on it (_hard_stop)."""
    return max(1.0, 0.1 * limit)


@contextlib.contextmanager
def _hard_stop(name, time_limit, root, progress=None):
    """End the process if the code inside still runs grace_s after `time_limit`: the last resort behind _time_limit.

    _time_limit raises a TimeoutError in the student's code, which a loop with `except BaseException:`
    (or a bare `except:`) catches and ignores; nothing in-process can then take control back. A
    watchdog thread reports the component as an error at the student's line (through `progress`,
    as the other components' lines, else on stderr), writes a STOPPED line to stderr and ends the
    process with HARD_STOP_EXIT. subtle: a thread needs the GIL, which code stuck inside one C call
    (a regex that backtracks forever) never releases; faulthandler's own C watchdog then dumps the
    stack and exits (status 1) after a second grace period.
    """
    main = threading.main_thread().ident
    seconds = time_limit + grace_s(time_limit)

    def stop():
        frame = sys._current_frames().get(main)
        at = _at([(f.filename, f.lineno, f.name) for f in traceback.extract_stack(frame)], root) if frame else ""
        result = Result(name, False, f"error: still running {seconds:g} s after it started, past its time limit "
                        f"of {time_limit:g} s: the check stops here{at}",
                        ["hint: code that catches the TimeoutError and goes on (`except BaseException:` or a bare "
                         "`except:` inside a loop), or one computation that never returns to Python"], status="error")
        try:
            if progress:
                progress(name, result)
            else:
                print("\n".join(report_lines(result, len(name))), file=sys.stderr)
            print(f"{STOPPED}{name} would not stop{at}; the components after it were not graded "
                  f"(exit status {HARD_STOP_EXIT})", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(HARD_STOP_EXIT)

    watchdog = threading.Timer(seconds, stop)
    watchdog.daemon = True
    watchdog.start()
    try:
        faulthandler.dump_traceback_later(seconds + grace_s(seconds), exit=True, file=sys.stderr)
        backstop = True
    except (AttributeError, ValueError, OSError):  # a stderr with no file descriptor (captured in a test)
        backstop = False
    try:
        yield
    finally:
        watchdog.cancel()
        if backstop:
            faulthandler.cancel_dump_traceback_later()


def _where(error, root):
    """ " (at minibridge/ops.py:120 in softmax)" for the last traceback frame in the student's code.

    subtle: a student running the grader of their own copy has the grader's files inside the copy,
    under root/assignments; those frames (the time limit's handler, a component's call) are not theirs.
    A SyntaxError has no frame in the broken file: it carries that file and line itself (the innermost).
    """
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(error.__traceback__)]
    if isinstance(error, SyntaxError) and error.filename:
        frames.append((error.filename, error.lineno, None))
    return _at(frames, root)


def _at(frames, root):
    """ " (at minibridge/ops.py:120 in softmax)" for the last of `frames`, (file, line, function or None)
    oldest first, in the student's code; "" when none is."""
    frames = [f for f in frames if _is_students(f[0], root)]
    if not frames:
        return ""
    filename, line, function = frames[-1]
    where = f"minibridge/{Path(filename).resolve().relative_to(root).as_posix()}:{line}"
    return f" (at {where} in {function})" if function else f" (at {where})"


def where_in_dump(text, root):
    """_at for a stack that faulthandler wrote into `text`: its innermost frame in the student's code, or "".

    faulthandler lists each thread's frames innermost first (so reversed, they are oldest first, as _at
    reads them); the grader's threads hold no student frame.
    """
    return _at(re.findall(r'^  File "(.+)", line (\d+) in (\S+)', text, re.M)[::-1], root)


def _is_students(filename, root):
    path = Path(filename).resolve()
    return path.is_relative_to(root) and not path.is_relative_to(Path(root) / "assignments")


def run_component(component, student, snapshot, tiny, time_limit=TIME_LIMIT_S):
    """Run one component of the student's code on its Snapshot: a Result.

    student: a Student, or a notebook.NotebookStudent (the modules, and where(error) for an error line).
    time_limit: seconds the component may run before a TimeoutError stops it.
    """
    try:
        with _time_limit(time_limit):
            mine = component.run(student, snapshot.inputs, tiny)
    except NotImplementedError as e:
        return Result(component.name, False, f"not implemented: {e}", status="not implemented")
    except (Exception, SystemExit) as e:  # noqa: BLE001 (whatever the student's code raises fails this component)
        hint = " (inputs and weights are read-only, as a memory-mapped checkpoint is)" if "read-only" in str(e) else ""
        notes = ["hint: " + h.hint for h in component.on_error if any(s in str(e) for s in h.says)]
        return Result(component.name, False, f"error: {type(e).__name__}: {e}{hint}{student.where(e)}", notes,
                      status="error")
    reference = snapshot.outputs
    assert sorted(mine) == sorted(reference), f"{component.name}: run {sorted(mine)}, snapshot {sorted(reference)}"
    checks = {name: compare(name, mine[name], reference[name], component.tol, component.cases_of(name))
              for name in reference}
    # The failing output to report: the first in the order of the component's cases (they list the
    # earlier stage first: a block's attention probabilities before its output), else the worst.
    order = [c.output for c in component.cases]
    first, *rest = sorted(checks, key=lambda name: (checks[name].ratio <= 1,
                                                    order.index(name) if name in order else len(order),
                                                    -checks[name].ratio))
    failing = checks[first]
    if failing.ratio > 1:
        others = [name for name in rest if checks[name].ratio > 1]
        notes = ["also failing: " + _listed(others)] if others else []
        # A typical mistake recognised says more than what the failing case tests.
        hints = _symptoms(component, snapshot, mine) or _case_hint(failing.case, snapshot, mine)
        return Result(component.name, False, failing.message, notes + hints, status="fail", ratio=failing.ratio)
    if component.tol == 0:
        return Result(component.name, True, "exact match", status="pass", ratio=0.0)
    closest = max(checks.values(), key=lambda c: c.ratio)  # passing: the closest to its tolerance
    return Result(component.name, True, f"worst error {closest.err:.2g} (tolerance {closest.tol:.2g})", status="pass",
                  ratio=closest.ratio)


def _listed(names, most=6):
    """ "a, b, c" — or the first `most` and how many more (a layer's backward has dozens of gradients)."""
    if len(names) <= most:
        return ", ".join(names)
    return f"{', '.join(names[:most])} and {len(names) - most} more"


def grade(impl, names=None, snapshots=SNAPSHOTS, assigned=None, progress=None, hard_stop=False, time_limit=None):
    """Results of the student copy at `impl` on the named components (default: all), in teaching order.

    Only the components the handout assigns are graded: `assigned`, by default those its manifest
    lists (build.read_manifest), or all of them in a copy without one (the reference). The others
    come back unrun, passed False and status "not assigned".
    progress: called as progress(name, None) before a component is graded and progress(name, result)
    once it is (its notes complete), so a caller can print each line as it comes.
    hard_stop: end the process when a component is still running grace_s after its time limit
    (_hard_stop; for the `check` command, never for a caller that must go on).
    time_limit: seconds one component may run; None: TIME_LIMIT_S.
    """
    chosen = [BY_NAME[n] for n in component_names(BY_NAME if names is None else names)]
    component_names(assigned or ())  # refuses an unknown name before anything runs
    time_limit = TIME_LIMIT_S if time_limit is None else time_limit
    snaps = load_snapshots(snapshots)
    tiny = Tiny.make()
    student = Student(impl)
    results, failed = [], set()
    try:
        assigned = assigned_in(student.root) if assigned is None else assigned
        given = (read_manifest(student.root) or {}).get("released", ())
        for c in chosen:
            if c.name not in assigned:
                r = Result(c.name, False, RELEASED if c.name in given else NOT_ASSIGNED, status="not assigned")
            else:
                if progress:
                    progress(c.name, None)
                with _hard_stop(c.name, time_limit, student.root, progress) if hard_stop else contextlib.nullcontext():
                    r = run_component(c, student, snaps[c.name], tiny, time_limit=time_limit)
            # Foundations come earlier in teaching order (tests/test_assignments.py checks it): their
            # results are in by now.
            below = [n for n in foundations(r.name) if n in failed]
            if r.status not in ("pass", "not assigned"):
                failed.add(r.name)
                if below:
                    r.notes.append("builds on failing " + ", ".join(below) + ": fix those first")
            results.append(r)
            if progress:
                progress(c.name, r)
    finally:
        student.close()
    return results


def report(results, names=None):
    """The grader's output: one line per component (plus notes), then `score: P/N components`.

    The score counts the graded components; those not assigned are listed with `----` and not counted.
    With none graded, the last line says that nothing is assigned instead (score_line, `names` as there).
    """
    width = max((len(r.name) for r in results), default=0)
    return "\n".join([line for r in results for line in report_lines(r, width)] + [score_line(results, names)])


def report_lines(result, width):
    """The report's lines for one Result: its PASS, FAIL or ---- line and its notes (names padded to `width`)."""
    if result.status == "not assigned":
        return [f"----  {result.name:<{width}}  {result.message}"]
    return [f"{'PASS' if result.passed else 'FAIL'}  {result.name:<{width}}  {result.message}",
            *(f"      {'':<{width}}  {note}" for note in result.notes)]


def graded(results):
    """The results of the components graded: all but those not assigned."""
    return [r for r in results if r.status != "not assigned"]


def score_line(results, names=None):
    """`score: P/N components` over the graded results; with none graded, that nothing is assigned.

    names: the components asked for (None: every one), to say which are not assigned when none is graded.
    subtle: a handout whose work was all released (`release --week 1` on week 1's) assigns nothing;
    "score: 0/0" would read as a grade, so the line says what happened instead.
    """
    done = graded(results)
    if done:
        return f"score: {sum(r.passed for r in done)}/{len(done)} components"
    released = [r.name for r in results if r.message == RELEASED]
    if names is None:
        return ("nothing is assigned in this handout" + (f" (released: {', '.join(released)})" if released else "")
                + ": nothing to grade")
    listed = [r.name for r in results]
    return (f"nothing to grade: {', '.join(listed) or 'no component'} {'is' if len(listed) == 1 else 'are'} "
            "not assigned in this handout")
