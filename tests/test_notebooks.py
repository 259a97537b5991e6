"""The walkthrough notebooks (notebooks/0*.ipynb) run top to bottom, offline, on a small random checkpoint,
and their exercises work.

MINIBRIDGE_MODEL points every notebook at a TINY random checkpoint in the Hub layout (`minibridge random-checkpoint --size tiny`)
with the real RoBERTa tokenizer files, so nothing is downloaded; the inline backend renders every figure
to PNG, as Jupyter does, so that the figures can be counted (each stamped as noise when drawn from the weights).
Needs the `notebook-tests` extra (nbclient, nbformat, ipykernel, matplotlib) and ../shared/data/roberta-base;
skips with a message when either is missing. The committed notebooks must carry no outputs: outputs of
a random checkpoint would read as model results.

The exercises (notebooks/README.md): markdown cells tagged `exercise`, headed "Exercise N.k (change,
predict, run)" or "(implement, then check)". An implement exercise is followed by its stub (tag
`exercise-stub`, functions my_*) and its check cell (tag `check`); each check cell is run here without
a kernel with the solutions in notebooks/solutions.py (PASS) and with a typical wrong answer from
tests/notebook_wrong_answers.py (FAIL, naming the failing case, with the grader's hint where it has
one). A change-predict-run exercise asks for the prediction (tag `predict`) in a cell before the one
that answers it (tag `answer`).
"""

import ast
import contextlib
import importlib
import inspect
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import minibridge

from helpers import PHOTOS, SHARED_DATA, TINY_REAL_VOCAB
from notebook_wrong_answers import WRONG

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("0*.ipynb"))
sys.path.insert(0, str(NOTEBOOK_DIR))
import solutions  # noqa: E402  (beside the notebooks, which import it from there)

HEADING = re.compile(r"^### Exercise (\d)\.(\d+) \((change, predict, run|implement, then check)\): \S")
MIN_EXERCISES = 3
# The instructor guide's component table, which every notebook links to (and which links back).
ASSIGNMENTS_LINK = "assignments/README.md#4-the-components"

# Seconds one cell may take before the run counts as hung. On the TINY checkpoint a whole notebook
# takes a few seconds; this only stops a kernel that never answers.
CELL_TIMEOUT = 300


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _code_cells(path):
    return [c for c in _cells(path) if c["cell_type"] == "code"]


def _source(cell):
    return "".join(cell["source"])


def _tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


def _exercises(path):
    """[(number, kind, [cells up to the next exercise heading or section])] of one notebook."""
    cells, found = _cells(path), []
    for i, cell in enumerate(cells):
        if "exercise" in _tags(cell):
            match = HEADING.match(_source(cell))
            assert match, f"{path.name}: an exercise cell without a heading 'Exercise N.k (kind): title': {_source(cell)[:80]!r}"
            end = next((j for j in range(i + 1, len(cells)) if "exercise" in _tags(cells[j])
                        or (cells[j]["cell_type"] == "markdown" and _source(cells[j]).startswith("#"))), len(cells))
            found.append((f"{match[1]}.{match[2]}", match[3], cells[i + 1:end]))
    return found


def _check_cells():
    """(notebook, exercise, stub source, check source) of every implement-then-check exercise."""
    out = []
    for path in NOTEBOOKS:
        for number, kind, cells in _exercises(path):
            if kind == "implement, then check":
                stub = next(_source(c) for c in cells if "exercise-stub" in _tags(c))
                check = next(_source(c) for c in cells if "check" in _tags(c))
                out.append(pytest.param(stub, check, id=f"{path.stem[:2]}-{number}"))
    return out


def _run_cell(source, namespace):
    """Execute a cell's source in `namespace` as the kernel would; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, "<cell>", "exec"), namespace)
    return printed.getvalue()


def _stub_names(stub):
    return [n.name for n in ast.parse(stub).body if isinstance(n, ast.FunctionDef)]


def test_the_seven_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"], [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    """Outputs computed from random weights must never be committed as if they were model results."""
    for cell in _code_cells(path):
        assert not cell.get("outputs") and cell.get("execution_count") is None, (
            f"{path.name}: a code cell has outputs; clear them before committing "
            f"(jupyter nbconvert --clear-output --inplace {path.name}). Cell starts: {''.join(cell['source'])[:80]!r}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_import_minibridge_and_redefine_none_of_it(path):
    """CONTRIBUTING.md habit 13: a notebook explains, the package computes. No `def` may reuse a package function's name."""
    package_functions = {name for module in _minibridge_modules()
                         for name, obj in inspect.getmembers(module, inspect.isfunction)
                         if obj.__module__ == module.__name__}
    source = "\n".join("".join(c["source"]) for c in _code_cells(path))
    tree = ast.parse(source)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert any("minibridge" in (getattr(n, "module", None) or "") or any("minibridge" in a.name for a in n.names)
               for n in imports), f"{path.name} does not import minibridge"
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    clash = sorted(defined & package_functions)
    assert not clash, f"{path.name} defines {clash}, which minibridge already defines: import them instead"


# ---- exercises ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_exercises_of_both_kinds_numbered_in_order(path):
    exercises = _exercises(path)
    assert len(exercises) >= MIN_EXERCISES, f"{path.name} has {len(exercises)} exercises, fewer than {MIN_EXERCISES}"
    assert [n for n, _, _ in exercises] == [f"{int(path.name[:2])}.{k}" for k in range(1, len(exercises) + 1)], (
        f"{path.name}: exercises numbered {[n for n, _, _ in exercises]}")
    assert {kind for _, kind, _ in exercises} == {"change, predict, run", "implement, then check"}, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_prediction_is_asked_before_the_cell_that_answers_it(path):
    for number, kind, cells in _exercises(path):
        tags = [_tags(c) for c in cells]
        if kind == "change, predict, run":
            predict = next((i for i, t in enumerate(tags) if "predict" in t), None)
            assert predict is not None, f"{path.name} exercise {number}: no cell tagged 'predict'"
            answers = [i for i, t in enumerate(tags) if "answer" in t]
            assert answers and min(answers) > predict, f"{path.name} exercise {number}: the answer comes before the prediction"
            assert "my_prediction" in _source(cells[predict]), f"{path.name} exercise {number}: nowhere to write the prediction"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_implement_exercises_have_a_stub_then_a_check_cell_and_no_solution(path):
    for number, kind, cells in _exercises(path):
        if kind != "implement, then check":
            continue
        order = [t for c in cells for t in _tags(c) if t in ("exercise-stub", "check")]
        assert order == ["exercise-stub", "check"], f"{path.name} exercise {number}: cells tagged {order}"
        stub = next(_source(c) for c in cells if "exercise-stub" in _tags(c))
        for name in _stub_names(stub):
            assert name.startswith("my_"), f"{path.name} exercise {number}: {name} (learners' functions are my_*)"
            assert hasattr(solutions, name) and name in WRONG, f"{name}: no solution or no typical wrong answer"
        body = [n for n in ast.walk(ast.parse(stub)) if isinstance(n, ast.Raise)]
        assert len(body) == len(_stub_names(stub)), f"{path.name} exercise {number}: a stub must only raise NotImplementedError"


@pytest.mark.parametrize("stub, check", _check_cells())
def test_check_cell_passes_the_solution(stub, check):
    namespace = {name: getattr(solutions, name) for name in _stub_names(stub)}
    printed = _run_cell(check, namespace)
    assert "PASS" in printed and "FAIL" not in printed, printed
    assert namespace["result"].passed


@pytest.mark.parametrize("stub, check", _check_cells())
def test_check_cell_fails_a_typical_wrong_answer_naming_the_case(stub, check):
    """The FAIL line names the failing output and case, shows the element (mine beside the reference's)
    and, where the grader has a hint for the mistake, the hint (notebook_wrong_answers.Wrong says what)."""
    for wrong_name in _stub_names(stub):
        for wrong in WRONG[wrong_name]:
            namespace = {name: getattr(solutions, name) for name in _stub_names(stub)}
            namespace[wrong_name] = wrong.fn
            with _quiet_numpy():
                printed = _run_cell(check, namespace)
            assert not wrong.problems(printed), (wrong.fn.__name__, wrong.problems(printed), printed)
            assert not namespace["result"].passed


@pytest.mark.parametrize("stub, check", _check_cells())
def test_check_cell_as_committed_says_not_implemented_and_raises_nothing(stub, check):
    namespace = {}
    _run_cell(stub, namespace)
    printed = _run_cell(check, namespace)
    assert "FAIL" in printed and "not implemented" in printed, printed


def test_every_solution_and_wrong_answer_belongs_to_an_exercise():
    stubs = {name for param in _check_cells() for name in _stub_names(param.values[0])}
    mine = {name for name, obj in vars(solutions).items() if inspect.isfunction(obj) and obj.__module__ == "solutions"}
    assert mine == stubs == set(WRONG), (sorted(mine ^ stubs), sorted(stubs ^ set(WRONG)))


@contextlib.contextmanager
def _quiet_numpy():
    import numpy as np

    with np.errstate(all="ignore"):  # a wrong softmax overflows on purpose
        yield


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_link_their_assignment_components_and_the_solutions(path):
    text = "\n".join(_source(c) for c in _cells(path) if c["cell_type"] == "markdown")
    assert ASSIGNMENTS_LINK in text and "(solutions.py)" in text, path.name
    guide = (NOTEBOOK_DIR / "assignments" / "README.md").read_text(encoding="utf-8")
    assert "\n## 4. The components\n" in guide  # the anchor #4-the-components
    from minibridge.assignments.components import BY_NAME

    for name in re.findall(r"\[`(\w+)`\]\(" + re.escape(ASSIGNMENTS_LINK) + r"\)", text):
        assert name in BY_NAME, f"{path.name} links to component {name!r}, which does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figures_go_through_show_and_source_through_show_source(path):
    """show() stamps figures of a random checkpoint; show_source() hides assignment solutions (notebook_utils)."""
    source = "\n".join(_source(c) for c in _code_cells(path))
    assert "plt.show(" not in source, f"{path.name}: call notebook_utils.show() (it stamps random-weight figures)"
    assert "getsource" not in source, f"{path.name}: show package code with notebook_utils.show_source()"
    assert "show_source(" in source, f"{path.name} shows no package function's source"


def _minibridge_modules():
    import importlib
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(minibridge.__path__) if not m.ispkg and m.name != "__main__"]
    return [importlib.import_module(f"minibridge.{name}") for name in names]


# ---- executing them ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib"):
        pytest.importorskip(module, reason=f"running the notebooks needs {module}: pip install -e '.[notebook-tests]'")
    if not (SHARED_DATA / "roberta-base" / "tokenizer.json").is_file():
        pytest.skip(f"running the notebooks needs the real tokenizer files in {SHARED_DATA / 'roberta-base'}")
    # Made as a user offline makes one (the README's offline start), at the tiny size for CI's time.
    folder = tmp_path_factory.mktemp("checkpoints") / "random-tiny"
    r = subprocess.run([sys.executable, "-m", "minibridge", "random-checkpoint", str(folder), "--size", "tiny",
                        "--tokenizer", str(SHARED_DATA / "roberta-base")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((folder / "config.json").read_text())["text_config"] == TINY_REAL_VOCAB["text_config"]
    return folder


@pytest.fixture(scope="module")
def timings(pytestconfig):
    """{notebook: seconds}; the total is written to the terminal at the end (also under -q)."""
    times = {}
    yield times
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if times and capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\nnotebooks offline on the TINY checkpoint: {sum(times.values()):.1f} s in all ("
                  + ", ".join(f"{name[:2]} {t:.1f} s" for name, t in times.items()) + ")")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_offline(path, tiny_checkpoint, timings, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # The kernel inherits this process's environment.
    monkeypatch.setenv("MINIBRIDGE_MODEL", str(tiny_checkpoint))
    monkeypatch.setenv("MINIBRIDGE_PHOTOS", str(PHOTOS))  # the COCO photos, from disk
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # PNGs in the outputs, as Jupyter
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    # One extra cell at the end reports what notebook_utils.show() did with each figure.
    notebook.cells.append(nbformat.v4.new_code_cell("import json, notebook_utils\n"
                                                    "print('FIGURES', json.dumps(notebook_utils.FIGURES))"))
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    timings[path.name] = time.perf_counter() - start

    cells = notebook.cells[:-1]
    figures = json.loads(notebook.cells[-1].outputs[0]["text"].split("FIGURES", 1)[1])
    pngs = sum("image/png" in o.get("data", {}) for c in cells if c.cell_type == "code" for o in c.outputs)
    assert pngs == len(figures), f"{path.name}: {pngs} figures drawn, {len(figures)} through notebook_utils.show()"
    unstamped = [i for i, (from_weights, stamped) in enumerate(figures) if from_weights and not stamped]
    assert not unstamped, f"{path.name}: figures {unstamped} come from the random weights but are not stamped"

    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in cells if c.cell_type == "code" for o in c.outputs)
    for cell in cells:  # as committed, every check cell reports the stub as not implemented, and the notebook goes on
        if "check" in cell.metadata.get("tags", []):
            printed = "".join(o.get("text", "") for o in cell.outputs)
            assert "FAIL" in printed and "not implemented" in printed, printed
    leaked = [line for line in _solution_lines() if line in text]
    assert not leaked, f"{path.name} shows lines of an assignment's solution: {leaked[:3]}"


# Exercise 5.3 asks the learner to change the bridge dial. Every s is compared with s = 1 (the published
# model), wherever 1 is in the dial, and a dial without it gets it added: this one has no 1 (added between
# 0.5 and 2, so not last) and no 0 (the "both off" bar is then computed on its own).
OTHER_DIAL = "np.array([0.5, 2.0])"


def test_the_bridge_dial_compares_with_s_1_for_any_dial(tiny_checkpoint, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    path = NOTEBOOK_DIR / "05_bridges_and_coattention.ipynb"
    monkeypatch.setenv("MINIBRIDGE_MODEL", str(tiny_checkpoint))
    monkeypatch.setenv("MINIBRIDGE_PHOTOS", str(PHOTOS))
    monkeypatch.setenv("MPLBACKEND", "agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    dial_cells = [c for c in notebook.cells if c.cell_type == "code" and re.search(r"^dial = ", c.source, re.M)]
    assert len(dial_cells) == 1, "exercise 5.3: one cell sets `dial`"
    dial_cells[0].source = re.sub(r"^dial = .*$", f"dial = {OTHER_DIAL}", dial_cells[0].source, flags=re.M)
    NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "".join(o.get("text", "") for o in dial_cells[0].outputs)
    assert "adding it" in printed, printed
    assert re.search(r"s = 1 reproduces the model: max \|difference\| = 0\.0\b", printed), printed


def _solution_lines():
    """Distinctive lines of the package's solution regions: ones that appear nowhere else in the package."""
    inside, outside = [], set()
    for py in sorted(Path(minibridge.__file__).parent.glob("*.py")):
        now = False
        for line in py.read_text(encoding="utf-8").splitlines():
            if line.strip() in ("# BEGIN SOLUTION", "# END SOLUTION"):
                now = line.strip() == "# BEGIN SOLUTION"
            elif now:
                inside.append(line.strip())
            else:
                outside.add(line.strip())
    return [line for line in inside if len(line) > 25 and line not in outside]
