"""The walkthrough notebooks (notebooks/0*.ipynb) run top to bottom, offline, on a small random checkpoint.

MINIBRIDGE_MODEL points every notebook at a TINY random checkpoint in the Hub layout (weights.save_random_checkpoint)
with the real RoBERTa tokenizer files, so nothing is downloaded; MPLBACKEND=Agg draws without a display.
Needs the `notebook-tests` extra (nbclient, nbformat, ipykernel, matplotlib) and ../shared/data/roberta-base;
skips with a message when either is missing. The committed notebooks must carry no outputs: outputs of
a random checkpoint would read as model results.
"""

import ast
import inspect
import json
import time
from pathlib import Path

import pytest

import minibridge
from minibridge.weights import save_random_checkpoint

from helpers import PHOTOS, SHARED_DATA, TINY_REAL_VOCAB

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))

# Seconds one cell may take before the run counts as hung. On the TINY checkpoint a whole notebook
# takes a few seconds; this only stops a kernel that never answers.
CELL_TIMEOUT = 300


def _code_cells(path):
    return [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]


def test_the_six_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"], [p.name for p in NOTEBOOKS]


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
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_REAL_VOCAB, seed=0,
                                  tokenizer_dir=SHARED_DATA / "roberta-base")


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
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    timings[path.name] = time.perf_counter() - start
