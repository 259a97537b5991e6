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
"""

import ast
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

from .components import BY_NAME, COMPONENTS, component_of

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
PACKAGE = Path(__file__).resolve().parents[1]  # the minibridge package this module belongs to
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


class MarkerError(ValueError):
    """Solution markers that cannot be turned into a student copy."""


@dataclass(frozen=True)
class Region:
    """One marked region: lines start..end (1-based, the marker lines included) of `path`."""

    path: Path
    start: int
    end: int
    indent: str
    function: str  # "module.function", e.g. "ops.layer_norm"
    signature: str  # "layer_norm(x, p, eps)"
    docstring: str
    whole_body: bool  # the region runs to the end of the function
    keep_defined: tuple  # names the code after a partial region reads (it must leave them defined)


def find_regions(path):
    """The marked regions of one source file, in order (empty when it has none)."""
    path = Path(path)
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
    return [_region(path, lines, functions, s, e) for s, e in spans]


def _region(path, lines, functions, start, end):
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
                  function=f"{path.stem}.{fn.name}", signature=f"{fn.name}({ast.unparse(fn.args)})",
                  docstring=ast.get_docstring(fn) or "", whole_body=not after,
                  keep_defined=tuple(sorted(stored & read_later)))


def banner(region):
    """The lines that replace a region in the student copy (a TODO comment block and a raise)."""
    component = component_of(region.function)
    module = region.path.name
    what = (f"write the body of {region.signature}" if region.whole_body
            else f"write this part of {region.signature}")
    text = _wrap(f"TODO (component {component.name}): {what}.", "    ")
    text += ["  " + line if line else "" for line in region.docstring.splitlines()]
    if component.hints.get(region.function):
        text += [""] + _wrap("  Given: " + component.hints[region.function], "    ")
    if region.keep_defined:
        text += ["", "  The code below this part reads: " + ", ".join(region.keep_defined) + "."]
    text += ["", f"  Check it: python -m minibridge.assignments check --impl <this copy> --component {component.name}"]
    name = region.function.split(".")[1]
    out = [region.indent + ("# " + t if t else "#") for t in text]
    out.append(f'{region.indent}raise NotImplementedError("{name} in minibridge/{module} '
               f'(component {component.name}) is yours to write")')
    return out


def _wrap(line, indent):
    return textwrap.wrap(line, width=100, subsequent_indent=indent, break_on_hyphens=False)


def package_regions(package=PACKAGE):
    """Every marked region of the package's modules (the assignments package itself excluded)."""
    regions = []
    for path in sorted(Path(package).rglob("*.py")):
        if "assignments" in path.relative_to(package).parts[:-1] or "__pycache__" in path.parts:
            continue
        regions += find_regions(path)
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


def build(out_dir, components=None, force=False, package=PACKAGE):
    """Write the student copy to out_dir/minibridge; stub the regions of `components` (default: all).

    Returns the regions that were replaced.
    """
    names = [c.name for c in COMPONENTS] if components is None else list(components)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; choose from {[c.name for c in COMPONENTS]}")
    regions = package_regions(package)
    check_markers(regions)
    target = Path(out_dir) / "minibridge"
    if target.exists():
        if not force:
            raise FileExistsError(f"{target} exists; remove it or pass --force to replace it")
        shutil.rmtree(target)
    shutil.copytree(package, target, ignore=IGNORED)

    chosen = [r for r in regions if component_of(r.function).name in names]
    for path in sorted({r.path for r in chosen}):
        lines = path.read_text(encoding="utf-8").splitlines()
        for r in sorted((r for r in chosen if r.path == path), key=lambda r: -r.start):  # bottom up
            lines[r.start - 1 : r.end] = banner(r)
        text = "\n".join(lines) + "\n"
        copy = target / path.relative_to(package)
        compile(text, str(copy), "exec")  # a broken banner is the builder's bug: fail here, not in class
        copy.write_text(text, encoding="utf-8")
    (Path(out_dir) / "ASSIGNMENTS.md").write_text(handout(names), encoding="utf-8")
    return chosen


def handout(names):
    """ASSIGNMENTS.md for the student copy: what to write, in order, and how to check it."""
    lines = ["# Assignments", "",
             "Each component below is a set of functions in `minibridge/` whose bodies are a TODO that raises",
             "`NotImplementedError`. Write them in this order: later components call your earlier ones.",
             "Check your work from this folder (no torch needed):", "",
             "```bash", "python -m minibridge.assignments check --impl .                   # every component",
             "python -m minibridge.assignments check --impl . --component softmax # one", "```", "",
             "It prints PASS or FAIL per component (a failure shows the worst element: its index, your",
             "value and the reference's) and ends with `score: P/N components`.", "",
             "| component | write | builds on | what it is |", "|---|---|---|---|"]
    for c in COMPONENTS:
        if c.name not in names:
            continue
        where = ", ".join(f"`{f.split('.')[1]}` in minibridge/{f.split('.')[0]}.py" for f in c.covers)
        lines.append(f"| {c.name} | {where} | {', '.join(c.needs) or '-'} | {c.summary} |")
    lines += ["", "A failing component also fails the ones built on it: fix the earliest failure first.", ""]
    return "\n".join(lines)
