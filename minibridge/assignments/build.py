"""The student copy: minibridge with each marked solution region replaced by a TODO banner.

In the reference source a solution region is a run of lines between two comment lines,

    def layer_norm(x, p, eps):
        \"\"\"LayerNorm over the last axis ...  [..., D] -> [..., D]\"\"\"
        # BEGIN SOLUTION
        ...
        # END SOLUTION

and the student copy keeps the signature and docstring but gets, at the region's indentation,

        # TODO (component layer_norm): write the body of layer_norm(x, p, eps).
        #   LayerNorm over the last axis ...  [..., D] -> [..., D]      <- the docstring, as comments
        raise NotImplementedError(...)

Markers are comments, so they change nothing the reference computes. The copy is only ever
generated (CONTRIBUTING.md habit 14); `build` refuses markers outside a function, unbalanced markers, and
marked functions that no component grades (they would be stubbed yet never checked).

A handout holds no reference solution it does not mean to: every component is either *assigned*
(a TODO the grader checks), *released* (the reference code, kept, markers and all) or *withheld*
(a stub that says it is not assigned in this handout). The copy records which is which in its
manifest, minibridge/assignments/assignment.json, which the grader reads; `release` later puts
the reference bodies of some components back into a handout.
"""

import ast
import datetime
import json
import shutil
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .components import BY_NAME, COMPONENTS, WEEKS, component_of, foundations

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
PACKAGE = Path(__file__).resolve().parents[1]  # the minibridge package this module belongs to
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
MANIFEST = Path("assignments") / "assignment.json"  # inside the copy's minibridge/, so it travels with it
INSTALL = "pip install numpy pillow safetensors huggingface_hub regex"  # minibridge's own dependencies


class MarkerError(ValueError):
    """Solution markers that cannot be turned into a student copy."""


@dataclass(frozen=True)
class Region:
    """One marked region: lines start..end (1-based, the marker lines included) of `path`."""

    path: Path
    start: int
    end: int
    indent: str
    function: str  # "module.function", module dotted below the package: "ops.layer_norm", "backward.ops.linear_backward"
    signature: str  # "layer_norm(x, p, eps)"
    docstring: str
    whole_body: bool  # the region runs to the end of the function
    keep_defined: tuple  # names the code after a partial region reads (it must leave them defined)


def find_regions(path, package=None):
    """The marked regions of one source file, in order (empty when it has none).

    package: the package folder the file belongs to, which names its module ("backward.ops" for
    package/backward/ops.py); None: the file's own name ("ops").
    """
    path = Path(path)
    module = ".".join(path.relative_to(package).with_suffix("").parts) if package else path.stem
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    spans, start = [], None
    for number, line in enumerate(lines, 1):
        if line.strip() == BEGIN:
            if start is not None:
                raise MarkerError(f"{path}:{number}: {BEGIN} inside the region opened at line {start}")
            start = number
        elif line.strip() == END:
            if start is None:
                raise MarkerError(f"{path}:{number}: {END} without a {BEGIN} before it")
            spans.append((start, number))
            start = None
    if start is not None:
        raise MarkerError(f"{path}:{start}: {BEGIN} is never closed by {END}")
    if not spans:
        return []
    tree = ast.parse(source, filename=str(path))
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [_region(path, module, lines, functions, s, e) for s, e in spans]


def _region(path, module, lines, functions, start, end):
    # subtle: a function's extent ends at its last statement, so a closing marker after a final
    # `return` lies outside it; the opening marker is what must be inside.
    around = [f for f in functions if f.lineno < start < f.end_lineno]
    if not around:
        raise MarkerError(f"{path}:{start}: a solution region must lie inside a function's body")
    fn = max(around, key=lambda f: f.lineno)  # the innermost
    inside = [n for stmt in fn.body for n in ast.walk(stmt)
              if hasattr(n, "lineno") and start < n.lineno < end]
    after = [n for stmt in fn.body for n in ast.walk(stmt) if hasattr(n, "lineno") and n.lineno > end]
    stored = {n.id for n in inside if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    read_later = {n.id for n in after if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    line = lines[start - 1]
    return Region(path=path, start=start, end=end, indent=line[: len(line) - len(line.lstrip())],
                  function=f"{module}.{fn.name}", signature=f"{fn.name}({ast.unparse(fn.args)})",
                  docstring=ast.get_docstring(fn) or "", whole_body=not after,
                  keep_defined=tuple(sorted(stored & read_later)))


def banner(region, assigned=True):
    """The lines that replace a region in the student copy (a TODO comment block and a raise).

    assigned=False: the stub of a withheld component (neither assigned nor released in this handout).
    """
    component = component_of(region.function)
    module, name = source_file(region.function), region.function.rsplit(".", 1)[1]
    if not assigned:
        text = _wrap(f"NOT ASSIGNED in this handout (component {component.name}): the body of "
                     f"{region.signature} comes with a later handout or the released solutions.", "    ")
        return [region.indent + "# " + t for t in text] + [
            f'{region.indent}raise NotImplementedError("{name} in minibridge/{module} '
            f'(component {component.name}) is not assigned in this handout")']
    what = (f"write the body of {region.signature}" if region.whole_body
            else f"write this part of {region.signature}")
    text = _wrap(f"TODO (component {component.name}): {what}.", "    ")
    text += ["  " + line if line else "" for line in region.docstring.splitlines()]
    if component.hints.get(region.function):
        text += [""] + _wrap("  Given: " + component.hints[region.function], "    ")
    if region.keep_defined:
        text += ["", "  The code below this part reads: " + ", ".join(region.keep_defined) + "."]
    text += ["", f"  Check it (from the handout folder): python -m minibridge.assignments check --component {component.name}"]
    out = [region.indent + ("# " + t if t else "#") for t in text]
    out.append(f'{region.indent}raise NotImplementedError("{name} in minibridge/{module} '
               f'(component {component.name}) is yours to write")')
    return out


def source_file(function):
    """The file of "module.function" below minibridge/: "ops.py", "backward/ops.py"."""
    return function.rsplit(".", 1)[0].replace(".", "/") + ".py"


def _wrap(line, indent):
    return textwrap.wrap(line, width=100, subsequent_indent=indent, break_on_hyphens=False)


def package_regions(package=PACKAGE):
    """Every marked region of the package's modules (the assignments package itself excluded)."""
    regions = []
    for path in sorted(Path(package).rglob("*.py")):
        if "assignments" in path.relative_to(package).parts[:-1] or "__pycache__" in path.parts:
            continue
        regions += find_regions(path, package)
    return regions


def reference_regions(package=PACKAGE):
    """package_regions of the reference, checked (check_markers); refused when `package` is a handout."""
    if read_manifest(package) is not None:
        raise ValueError(f"the minibridge running this ({package}) is itself a handout, without the solutions; "
                         "run this command with the reference minibridge, from outside the handout's folder")
    regions = package_regions(package)
    check_markers(regions)
    return regions


def check_markers(regions):
    """Every marked function is graded by a component, and every component's functions are marked."""
    marked = {r.function for r in regions}
    for r in regions:
        if component_of(r.function) is None:
            raise MarkerError(f"{r.path}:{r.start} marks {r.function}, which no component covers; "
                              "add it to a component in assignments/components.py or remove the markers")
    for c in COMPONENTS:
        missing = [f for f in c.covers if f not in marked]
        if missing:
            raise MarkerError(f"component {c.name} covers {', '.join(missing)}, which has no {BEGIN} region "
                              "(is this already a student copy?)")


@dataclass(frozen=True)
class Plan:
    """What one handout does with each component, in teaching order."""

    assigned: tuple  # TODOs the grader checks
    released: tuple  # the reference code, kept
    withheld: tuple  # the rest: stubs that say "not assigned in this handout"
    weeks: tuple = ()  # the weeks it was built for (components.WEEKS), if any

    @property
    def stubbed(self):
        return self.assigned + self.withheld


def component_names(components=(), weeks=()):
    """The named components and those of the named weeks (components.WEEKS), in teaching order.

    Refused (ValueError) when a component or a week is unknown.
    """
    unknown = [repr(n) for n in components if n not in BY_NAME] + [f"week {w!r}" for w in weeks if w not in WEEKS]
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}; choose from the components {list(BY_NAME)} "
                         f"and the weeks {sorted(WEEKS)}")
    chosen = {*components, *(n for w in weeks for n in WEEKS[w])}
    return [c.name for c in COMPONENTS if c.name in chosen]


def assigned_in(root):
    """The components a copy assigns: those its manifest lists, or every one without a manifest (the reference).

    root: the copy's minibridge/ folder.
    """
    manifest = read_manifest(root)
    return list(BY_NAME) if manifest is None else list(manifest["assigned"])


def plan(components=None, weeks=(), released=None):
    """The Plan of a handout, refused (ValueError) when an assigned component cannot run.

    components, weeks: what is assigned (their union); with neither, every component not released.
    released: the components whose reference code the handout keeps; by default the weeks before
    the first of `weeks` (none without weeks).
    """
    weeks = tuple(sorted(set(weeks)))
    assigned = component_names(components or (), weeks)
    before = [w for w in WEEKS if weeks and w < weeks[0]]
    released = component_names(weeks=before) if released is None else component_names(released)
    if components is None and not weeks:
        assigned = [c.name for c in COMPONENTS if c.name not in released]
    both = [n for n in assigned if n in released]
    if both:
        raise ValueError(f"{', '.join(both)} cannot be both assigned and released")
    for name in assigned:
        missing = [f for f in foundations(name) if f not in assigned and f not in released]
        if missing:
            fix = " ".join(f"--release {m}" for m in missing)
            raise ValueError(f"{name} builds on {', '.join(missing)}, neither assigned nor released in this "
                             f"handout (its code could not run); assign them too, release them ({fix}), "
                             f"or build a later --week, whose handout releases the weeks before it")
    withheld = [c.name for c in COMPONENTS if c.name not in assigned and c.name not in released]
    return Plan(tuple(assigned), tuple(released), tuple(withheld), weeks)


def build(out_dir, components=None, force=False, package=PACKAGE, *, released=None, weeks=()):
    """Write the student copy to out_dir/minibridge and out_dir/ASSIGNMENTS.md; returns the stubbed regions.

    components, weeks, released: as `plan` (default: every component assigned). Every component that
    is not released is stubbed: the assigned ones with their TODO banner, the others as withheld, so
    the copy holds no reference solution beyond the released ones. Unless nothing is stubbed (a
    copy of the reference), the copy records its Plan in minibridge/assignments/assignment.json.
    """
    chosen = plan(components, weeks, released)
    regions = reference_regions(package)
    target = Path(out_dir) / "minibridge"
    if target.exists():
        if not force:
            raise FileExistsError(f"{target} exists; remove it or pass --force to replace it")
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=IGNORED)

    stubbed = [r for r in regions if component_of(r.function).name in chosen.stubbed]
    for path in sorted({r.path for r in stubbed}):
        lines = path.read_text(encoding="utf-8").splitlines()
        for r in sorted((r for r in stubbed if r.path == path), key=lambda r: -r.start):  # bottom up
            lines[r.start - 1 : r.end] = banner(r, assigned=component_of(r.function).name in chosen.assigned)
        _write(target / path.relative_to(package), lines)
    write_manifest(target, chosen, _built_from(package))
    (Path(out_dir) / "ASSIGNMENTS.md").write_text(handout(chosen), encoding="utf-8")
    return stubbed


def release(copy, components=(), weeks=(), package=PACKAGE):
    """Put the reference bodies of the named components (and weeks) back into a handout built by `build`.

    copy: the handout folder (holding minibridge/) or its minibridge/ folder. The stubs must be as
    `build` wrote them, from this version of the source; the manifest and ASSIGNMENTS.md are
    updated. Returns the regions restored.
    """
    root = copy_root(copy)
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root / MANIFEST} is missing: {copy} is no handout built by `build` "
                                "(or nothing in it is stubbed)")
    named = component_names(components or (), weeks)
    todo = [n for n in named if n not in manifest["released"]]
    regions = reference_regions(package)
    restored = [r for r in regions if component_of(r.function).name in todo]
    for path in sorted({r.path for r in restored}):
        copied = root / path.relative_to(package)
        lines = copied.read_text(encoding="utf-8").splitlines()
        source = path.read_text(encoding="utf-8").splitlines()
        spans = []
        for r in (r for r in restored if r.path == path):
            stub = banner(r, assigned=component_of(r.function).name in manifest["assigned"])
            at = [i for i in range(len(lines) - len(stub) + 1) if lines[i : i + len(stub)] == stub]
            if len(at) != 1:
                raise ValueError(f"{copied}: the stub of {r.function} is not as `build` wrote it (edited, or built "
                                 "from another version of minibridge); build the handout again with --release")
            spans.append((at[0], at[0] + len(stub), source[r.start - 1 : r.end]))
        for begin, end, text in sorted(spans, reverse=True):  # bottom up
            lines[begin:end] = text
        _write(copied, lines)
    now = Plan(tuple(n for n in manifest["assigned"] if n not in named),
               tuple(component_names([*named, *manifest["released"]])),
               tuple(n for n in manifest["withheld"] if n not in named), tuple(manifest.get("weeks", ())))
    write_manifest(root, now, manifest.get("built_from", {}))
    if (root.parent / "ASSIGNMENTS.md").is_file():
        (root.parent / "ASSIGNMENTS.md").write_text(handout(now), encoding="utf-8")
    return restored


def _write(path, lines):
    text = "\n".join(lines) + "\n"
    compile(text, str(path), "exec")  # a broken banner is the builder's bug: fail here, not in class
    path.write_text(text, encoding="utf-8")


# ---- the manifest -------------------------------------------------------------------------------------


def copy_root(copy):
    """The minibridge/ folder of a copy given as the folder holding it, or as itself."""
    copy = Path(copy)
    return copy / "minibridge" if (copy / "minibridge").is_dir() else copy


def read_manifest(root):
    """The Plan a copy records ({"assigned", "released", "withheld", "weeks", "built_from"}), or None.

    root: the copy's minibridge/ folder. None for the reference and for copies with nothing stubbed.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    unknown = [n for key in ("assigned", "released", "withheld") for n in manifest.get(key, ()) if n not in BY_NAME]
    if unknown:
        raise ValueError(f"{path} names components this grader does not know: {unknown}")
    return manifest


def write_manifest(root, chosen, built_from):
    """Record `chosen` (a Plan) in root/assignments/assignment.json; remove it when nothing is stubbed."""
    path = Path(root) / MANIFEST
    if not chosen.stubbed:
        path.unlink(missing_ok=True)
        return
    manifest = {"assigned": list(chosen.assigned), "released": list(chosen.released),
                "withheld": list(chosen.withheld), "weeks": list(chosen.weeks), "built_from": built_from}
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _built_from(package):
    """{"minibridge": version, "commit": git commit of the source or None, "date": today}."""
    from .. import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"minibridge": __version__, "commit": commit, "date": datetime.date.today().isoformat()}


def handout(chosen):
    """ASSIGNMENTS.md for the student copy: what to write, in order, and how to check it."""
    from .grade import TIME_LIMIT_S  # here: grade imports this module

    lines = ["# Assignments", ""]
    if chosen.weeks:
        lines += [f"Week {', '.join(map(str, chosen.weeks))} of the minibridge course.", ""]
    lines += ["Set up once (Python 3.10 or later):", "", "```bash", INSTALL, "```", ""]
    if not chosen.assigned:
        # subtle: after `release` gives back everything a handout assigned, there is nothing to write;
        # a table of TODOs with no rows would read as a broken handout.
        lines += ["Nothing is assigned in this handout now: there is nothing to write, and `check` says so",
                  "(`nothing is assigned in this handout`, exit status 0).", ""]
        if chosen.released:
            lines += [f"Released, the reference code to read and compare with your own: {', '.join(chosen.released)}.",
                      ""]
        if chosen.withheld:
            lines += [f"Not in this handout (their bodies raise `NotImplementedError`): {', '.join(chosen.withheld)}.",
                      ""]
        return "\n".join(lines)
    lines += ["Each component below is a set of functions in `minibridge/` whose bodies are a TODO that raises",
              "`NotImplementedError`. Write them in this order: later components call your earlier ones.",
              "Check your work from this folder (no torch needed):", "",
              "```bash", "python -m minibridge.assignments check                   # every assigned component",
              f"python -m minibridge.assignments check --component {chosen.assigned[0]}  # one of them", "```", "",
              "It prints PASS or FAIL per component (a failure shows the worst element: its index, your",
              "value and the reference's) and ends with `score: P/N components`. A component still running",
              f"after its time limit ({TIME_LIMIT_S:g} s) fails with a TimeoutError at your line; one that "
              "will not stop even",
              "then (a loop that catches every exception) ends the check, which says where it was.", "",
              "| component | write | builds on | what it is |", "|---|---|---|---|"]
    for c in COMPONENTS:
        if c.name not in chosen.assigned:
            continue
        where = ", ".join(f"`{f.rsplit('.', 1)[1]}` in minibridge/{source_file(f)}" for f in c.covers)
        lines.append(f"| {c.name} | {where} | {', '.join(c.needs) or '-'} | {c.summary} |")
    lines += ["", "A failing component also fails the ones built on it: fix the earliest failure first.", ""]
    if any(f.startswith("backward.") for n in chosen.assigned for f in BY_NAME[n].covers):
        lines += ["Gradients: before you run `check` on a backward function, check it against finite differences",
                  "with `minibridge.backward.gradcheck` (`numerical_gradient` and `rel_error`; its docstring has",
                  "an example): a relative error below 1e-7, in float64, means the gradient is right.", ""]
    if chosen.released:
        lines += [f"Given (solutions released, the reference code): {', '.join(chosen.released)}.", ""]
    if chosen.withheld:
        lines += [f"Not assigned in this handout (their bodies raise `NotImplementedError`, and `check` "
                  f"skips them): {', '.join(chosen.withheld)}.", ""]
    lines += ["The grader runs on this copy's `minibridge/config.py`, `minibridge/weights.py` and",
              "`minibridge/assignments/`: they are not graded; leave them as they are.", ""]
    return "\n".join(lines)
