"""minibridge.assignments: the generated student copy, the grader, the snapshots (CONTRIBUTING.md habit 14).

A student copy with every component stubbed must import and score 0; the reference itself must
score full marks; a bug planted in one function (by editing the text of a copy) must fail exactly
its component and the components built on it, with a "mine vs reference" line.
"""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minibridge
from minibridge.assignments import build as builder
from minibridge.assignments import grade as grader
from minibridge.assignments.__main__ import main
from minibridge.assignments.components import BY_NAME, COMPONENTS, dependents

PACKAGE = Path(minibridge.__file__).resolve().parent
NAMES = [c.name for c in COMPONENTS]
# The snapshots hold inputs and outputs of small arrays only (the weights are regenerated from a seed,
# and a cross-modal layer's weight gradients are sampled): 282 kB for the 16 forward components (the
# heads' reads of the last layer included), 385 kB with the 7 backward ones.
SNAPSHOT_BUDGET_BYTES = 400_000


@pytest.fixture(scope="module")
def student_copy(tmp_path_factory):
    out = tmp_path_factory.mktemp("handout")
    builder.build(out)
    return out


def reference_copy(tmp_path):
    """A student copy with nothing stubbed (every solution released): the reference's files, to plant bugs in."""
    builder.build(tmp_path, components=[], released=NAMES)
    return tmp_path


def plant(copy, module, edits):
    """Replace each (old, new) in minibridge/<module>; each old text must occur exactly once."""
    path = copy / "minibridge" / module
    text = path.read_text(encoding="utf-8")
    for old, new in edits:
        assert text.count(old) == 1, f"{module} no longer holds {old!r} exactly once; update this test"
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def failing(results):
    return {r.name for r in results if not r.passed}


# ---- the student copy ---------------------------------------------------------------------------------


def test_student_copy_imports_and_scores_zero(student_copy):
    """As a student runs it: the copy is `minibridge` on sys.path, and its own grader checks it."""
    code = ("import sys, minibridge; print(minibridge.__file__); "
            "from minibridge.assignments.__main__ import main; sys.exit(main(['check', '--impl', '.']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=student_copy, capture_output=True, text=True, timeout=300,
                          check=False)
    lines = proc.stdout.strip().splitlines()
    assert Path(lines[0]).resolve() == (student_copy / "minibridge" / "__init__.py").resolve(), proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert lines[-1] == f"score: 0/{len(COMPONENTS)} components"
    verdicts = [line for line in lines[1:-1] if not line.startswith(" ")]
    assert [v.split()[1] for v in verdicts] == NAMES
    assert all(v.startswith("FAIL") and "not implemented" in v for v in verdicts), "\n".join(verdicts)


def test_student_copy_keeps_signatures_and_docstrings_but_no_solution(student_copy):
    for c in COMPONENTS:
        for function in c.covers:
            name, file = function.rsplit(".", 1)[1], builder.source_file(function)  # "backward/ops.py"
            source = (student_copy / "minibridge" / file).read_text(encoding="utf-8")
            assert builder.BEGIN not in source and builder.END not in source
            fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)
            reference = next(n for n in ast.parse((PACKAGE / file).read_text(encoding="utf-8")).body
                             if isinstance(n, ast.FunctionDef) and n.name == name)
            assert ast.unparse(fn.args) == ast.unparse(reference.args)
            assert ast.get_docstring(fn) == ast.get_docstring(reference)
            raises = [n for n in ast.walk(fn) if isinstance(n, ast.Raise)]  # a partial region may sit in a loop
            assert raises and f"component {c.name}" in ast.unparse(raises[0]), function
            if function not in ("model.cross_modal", "bridge.cross_modal_layer"):  # the regions that are part of a body
                assert len(fn.body) == 2, f"{function}: the student copy should hold docstring + raise"
    model = (student_copy / "minibridge" / "model.py").read_text(encoding="utf-8")
    assert "link_tower(" not in model.split("def cross_modal(")[1]


def test_banner_states_the_docstring_at_the_region_indentation(student_copy):
    lines = (student_copy / "minibridge" / "ops.py").read_text(encoding="utf-8").splitlines()
    start = lines.index("    # TODO (component layer_norm): write the body of layer_norm(x, p, eps).")
    banner = lines[start : lines.index("    raise NotImplementedError(\"layer_norm in minibridge/ops.py (component "
                                       "layer_norm) is yours to write\")") + 1]
    assert any("[..., D] -> [..., D]" in line for line in banner)
    assert all(line.startswith(("    # ", "    raise")) or line == "    #" for line in banner)


def test_building_with_no_component_copies_the_source_unchanged(tmp_path):
    """So the planted-bug copies below are the reference plus the one edit, nothing else."""
    copy = reference_copy(tmp_path)
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" not in path.parts:
            assert (copy / "minibridge" / path.relative_to(PACKAGE)).read_bytes() == path.read_bytes(), path


def test_build_refuses_to_overwrite_without_force(tmp_path):
    builder.build(tmp_path, components=["softmax"])
    with pytest.raises(FileExistsError, match="--force"):
        builder.build(tmp_path)
    builder.build(tmp_path, force=True)
    assert "component layer_norm" in (tmp_path / "minibridge" / "ops.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("source, error", [
    ("def f():\n    # BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    return 1\n    # END SOLUTION\n", "without a"),
    ("# BEGIN SOLUTION\nX = 1\n# END SOLUTION\n", "inside a function"),
])
def test_bad_markers_are_refused_with_file_and_line(tmp_path, source, error):
    path = tmp_path / "mod.py"
    path.write_text(source)
    with pytest.raises(builder.MarkerError, match=error) as info:
        builder.find_regions(path)
    assert "mod.py:" in str(info.value)


def test_regions_know_their_function_and_what_a_partial_region_must_leave_defined(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text('def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n\n\n'
                    'def g(x, n=2):\n    """Doc."""\n    # BEGIN SOLUTION\n    y = x + 1\n    z = n\n'
                    '    # END SOLUTION\n    return y\n')
    f, g = builder.find_regions(path)
    assert (f.function, f.signature, f.whole_body, f.start, f.end) == ("mod.f", "f(x)", True, 2, 4)
    assert (g.signature, g.docstring, g.whole_body, g.keep_defined) == ("g(x, n=2)", "Doc.", False, ("y",))


def test_every_marked_function_is_graded_and_every_graded_function_is_marked():
    builder.check_markers(builder.package_regions())  # raises MarkerError naming the culprit otherwise


# ---- the grader ---------------------------------------------------------------------------------------


def test_reference_scores_full_marks(capsys):
    assert main(["check", "--impl", str(PACKAGE)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"score: {len(COMPONENTS)}/{len(COMPONENTS)} components"
    assert all(line.startswith("PASS") for line in out[:-1]), "\n".join(out)


def test_one_component_can_be_graded_alone(student_copy, capsys):
    assert main(["check", "--impl", str(student_copy), "--component", "softmax"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("FAIL  softmax  not implemented") and out[-1] == "score: 0/1 components"


# Planted bugs: (component, module, [(reference text, buggy text)]).
BUGS = {
    "softmax over the wrong axis": ("softmax", "ops.py", [
        ("exp(x - x.max(axis=-1, keepdims=True))", "exp(x - x.max(axis=-2, keepdims=True))"),
        ("return e / e.sum(axis=-1, keepdims=True)", "return e / e.sum(axis=-2, keepdims=True)")]),
    "LayerNorm without eps": ("layer_norm", "ops.py", [
        ("inv_std = 1.0 / (var + eps) ** 0.5", "inv_std = 1.0 / var ** 0.5")]),
    "position ids from 0": ("position_ids", "text.py", [
        ("return xp.cumsum(real, axis=1) * real + pad_token_id",
         "return xp.broadcast_to(xp.arange(input_ids.shape[1]), input_ids.shape)")]),
    "QuickGELU with sigmoid(x)": ("quick_gelu", "ops.py", [("np.float32(-1.702)", "np.float32(-1.0)")]),
    "attention scaled by 1/Dh": ("attention", "ops.py", [
        ("scores = (q * (1.0 / math.sqrt(Dh))) @ k", "scores = (q * (1.0 / Dh)) @ k")]),
    "BPE merging the latest merge first": ("bpe", "tokenizer.py", [
        ("heapq.heappush(queue, (rank, i))", "heapq.heappush(queue, (-rank, i))"),
        ("rank, i = heapq.heappop(queue)", "rank, i = heapq.heappop(queue); rank = -rank")]),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_planted_bug_fails_exactly_its_component_and_those_built_on_it(tmp_path, bug):
    component, module, edits = BUGS[bug]
    copy = reference_copy(tmp_path)
    plant(copy, module, edits)
    results = grader.grade(copy)
    assert failing(results) == {component, *dependents(component)}, grader.report(results)
    line = next(r.message for r in results if r.name == component)
    assert " at index " in line and " vs reference " in line and "mine " in line, line


# Planted backward mistakes: (component, module, [(reference text, buggy text)], a text of the hint it must
# get, the components built on it that the bug leaves right). Each is a classic wrong gradient.
BACKWARD_BUGS = {
    "attention backward without the 1/sqrt(Dh)": ("attention_backward", "backward/ops.py", [
        ("    dscores *= scale\n", "")], "√Dh times too large", ()),
    "attention backward recomputing the probabilities without the mask": ("attention_backward", "backward/ops.py", [
        ("_, probs = attention(q, k, v, num_heads, mask)", "_, probs = attention(q, k, v, num_heads, None)")],
        "masked keys get a gradient", ()),
    "LayerNorm backward without the mean's term": ("layer_norm_backward", "backward/ops.py", [
        ("dx = (dx_hat - mean_term - variance_term) * inv_std", "dx = (dx_hat - variance_term) * inv_std")],
        "the mean's term missing?", ()),
    # A row softmax's Jacobian is symmetric, so "transposed" is the sum taken along the other axis (the
    # queries, -2, of attention's [B, H, Sq, Sk]): it still broadcasts, and every row goes wrong.
    "softmax Jacobian transposed (summed along axis -2)": ("softmax_backward", "backward/ops.py", [
        ("(y * dprobs).sum(axis=-1, keepdims=True)", "(y * dprobs).sum(axis=-2, keepdims=True)")],
        "summed over axis -2", ()),
    "linear backward with dW not transposed": ("linear_backward", "backward/ops.py", [
        ('grads = {"weight": dy2.T @ x2}', 'grads = {"weight": x2.T @ dy2}')], "dW transposed?", ()),
    # The ITM head's dy is [B, 2]: summed over axis 0 it is right there, so itm_loss_backward still passes.
    "linear backward with the bias gradient summed over the first axis only": ("linear_backward", "backward/ops.py", [
        ('grads["bias"] = dy2.sum(axis=0)', 'grads["bias"] = dy.sum(axis=0)')], "db summed over the first axis only?",
        ("itm_loss_backward",)),
    "GELU backward without the x·φ(x) term": ("gelu_backward", "backward/ops.py", [
        ("return dy * (cdf + x * pdf)", "return dy * cdf")], "only Φ(x)?", ()),
    "cross-entropy backward divided by every row": ("itm_loss_backward", "backward/ops.py", [
        ("dlogits /= max(int(kept.shape[0]), 1)", "dlogits /= labels.shape[0]")], "divided by every row?", ()),
    "cross-modal layer backward without the self-attention's keys/values gradient": (
        "cross_modal_layer_backward", "backward/bridge.py", [
            ("dx = dx_queries + dx_keys_values  # [B, S, D]", "dx = dx_queries  # [B, S, D]")],
        "dx = dx_queries + dx_keys_values", ()),
    "cross-modal layer backward without cross_mask": ("cross_modal_layer_backward", "backward/bridge.py", [
        ("g_cross = bert_attention_backward(p[\"crossattention\"], a, other, H, eps, cross_mask, dc)",
         "g_cross = bert_attention_backward(p[\"crossattention\"], a, other, H, eps, None, dc)")],
        "cross_mask not applied in the backward?", ()),
    "FFN backward without the residual's gradient": ("cross_modal_layer_backward", "backward/text.py", [
        ("    dx = dx + dresidual  # [B, S, D]: plus the residual's copy\n", "")], "this case tests the ", ()),
}


@pytest.mark.parametrize("bug", list(BACKWARD_BUGS))
def test_a_planted_backward_mistake_fails_with_its_hint(tmp_path, bug):
    component, module, edits, hint, spared = BACKWARD_BUGS[bug]
    copy = reference_copy(tmp_path)
    plant(copy, module, edits)
    with np.errstate(all="ignore"):
        results = grader.grade(copy)
    assert failing(results) == {component, *dependents(component)} - set(spared), grader.report(results)
    result = next(r for r in results if r.name == component)
    assert result.status == "fail" and ("mine " in result.message or "shape mine" in result.message), result.message
    hints = [n for n in result.notes if n.startswith("hint: ")]
    assert hints and hint in hints[0], grader.report([result])


# Planted mistakes in the rows a head reads (model.READS; cross_modal_layer's rows), which the full forward
# (read "all") never exercises: (component, module, [(reference text, buggy text)], its status, a text of its
# FAIL line, a text of its first hint, the first hint of bridgetower when the bug is below it). The first two
# are a review's: both passed every component before the reads were graded.
_SELF_ATTENTION = 'a, self_probs = bert_attention(p["attention"], queries, x, H, eps, self_mask)'
_TEXT_LAYER = "x, x_self, x_cross = cross_modal_layer(p[\"cross_modal_text_layers\"][l], x_in, y_in, tc, mask, None, "
_IMAGE_LAYER = "y, y_self, y_cross = cross_modal_layer(p[\"cross_modal_image_layers\"][l], y_in, x_in, tc, None, mask, "
ROWS_BUGS = {
    "x_rows and y_rows swapped in model.cross_modal": ("bridgetower", "model.py", [
        (_TEXT_LAYER + "x_rows)", _TEXT_LAYER + "y_rows)"), (_IMAGE_LAYER + "y_rows)", _IMAGE_LAYER + "x_rows)")],
        "fail", "read_text.text_features: shape mine (3, 1, 128) vs reference (3, 7, 128)",
        "x_rows and y_rows swapped?", None),
    # On the padded text the text mask (every key) no longer fits the scores (one key): an error, with a hint.
    "self-attention keys and values from `queries`": ("cross_modal_layer", "bridge.py", [
        (_SELF_ATTENTION, _SELF_ATTENTION.replace("queries, x,", "queries, queries,"))],
        "error", "ValueError", "keys and values are x, not `queries`", "only the queries are cut"),
    # The same, its mask cut to fit: no error, the rows' values and the probabilities' shape wrong.
    "self-attention keys, values and mask cut to the rows": ("cross_modal_layer", "bridge.py", [
        (_SELF_ATTENTION, _SELF_ATTENTION.replace("queries, x,", "queries, queries,").replace(
            "self_mask)", "self_mask if self_mask is None or rows is None else self_mask[..., :rows])"))],
        "fail", "text_first_self_probs: shape mine (2, 4, 1, 1) vs reference (2, 4, 1, 6)",
        "keys and values cut to the rows too?", 'read="all" is right but the rows a head reads are not'),
    "cross_modal_layer ignoring rows": ("cross_modal_layer", "bridge.py", [
        (_SELF_ATTENTION, _SELF_ATTENTION.replace("queries, x,", "x, x,"))],
        "fail", "text_first_self_probs: shape mine (2, 4, 6, 6) vs reference (2, 4, 1, 6)", "rows ignored?",
        "every row in the last layer where the head reads position 0 alone?"),
    "model.cross_modal not passing the rows on": ("bridgetower", "model.py", [
        (_TEXT_LAYER + "x_rows)", _TEXT_LAYER.rstrip(", ") + ")"),
        (_IMAGE_LAYER + "y_rows)", _IMAGE_LAYER.rstrip(", ") + ")")],
        "fail", "read_first.text_features: shape mine (3, 7, 128) vs reference (3, 1, 128)",
        "every row in the last layer where the head reads position 0 alone?", None),
}


@pytest.mark.parametrize("bug", list(ROWS_BUGS))
def test_a_planted_mistake_in_the_rows_read_fails_with_its_hint(tmp_path, bug):
    component, module, edits, status, message, hint, model_hint = ROWS_BUGS[bug]
    copy = reference_copy(tmp_path)
    plant(copy, module, edits)
    results = grader.grade(copy)
    assert failing(results) == {component, *dependents(component)}, grader.report(results)
    result = next(r for r in results if r.name == component)
    assert result.status == status and message in result.message, grader.report([result])
    hints = [n for n in result.notes if n.startswith("hint: ")]
    assert hints and hint in hints[0], grader.report([result])
    if model_hint is not None:  # bridgetower fails too, built on it: its own hint, and where to look first
        model = next(r for r in results if r.name == "bridgetower")
        hints = [n for n in model.notes if n.startswith("hint: ")]
        assert hints and model_hint in hints[0], grader.report([model])
        assert "builds on failing cross_modal_layer: fix those first" in model.notes, grader.report([model])


@pytest.mark.parametrize("name", NAMES)
def test_a_stubbed_component_fails_exactly_itself_and_those_built_on_it(tmp_path, name):
    """The `needs` of every component are the calls its code makes: nothing missing, nothing extra."""
    builder.build(tmp_path, components=[name], released=[n for n in NAMES if n != name])
    results = grader.grade(tmp_path, assigned=NAMES)  # all graded, though the copy assigns only `name`
    assert failing(results) == {name, *dependents(name)}, grader.report(results)
    for r in results:
        if r.name in dependents(name):
            assert any(name in note for note in r.notes), f"{r.name} should say it builds on failing {name}"


def test_a_module_that_does_not_import_fails_only_its_components(tmp_path):
    copy = reference_copy(tmp_path)
    plant(copy, "tokenizer.py", [("def bpe(word, ranks):", "def bpe(word, ranks)")])
    results = grader.grade(copy)
    assert failing(results) == {"bpe"}
    assert "SyntaxError" in next(r.message for r in results if r.name == "bpe")


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGALRM"), reason="the time limit needs POSIX signals")
def test_an_endless_loop_fails_its_component_instead_of_hanging(tmp_path, monkeypatch):
    monkeypatch.setattr(grader, "TIME_LIMIT_S", 0.5)
    copy = reference_copy(tmp_path)
    plant(copy, "tokenizer.py", [("rank, i = heapq.heappop(queue)", "rank, i = queue[0]")])  # never pops
    results = grader.grade(copy, ["bpe", "softmax"])
    assert failing(results) == {"bpe"}
    line = next(r.message for r in results if r.name == "bpe")
    assert "TimeoutError" in line and "at minibridge/tokenizer.py:" in line, line


def test_the_grader_leaves_the_installed_minibridge_alone(student_copy):
    grader.grade(student_copy, ["layer_norm"])
    assert sys.modules["minibridge"] is minibridge
    assert not [name for name in sys.modules if name.startswith("_minibridge_student_")]
    x = np.ones((1, 4), dtype=np.float32)
    minibridge.ops.layer_norm(x, {"weight": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}, 1e-5)


def test_compare_speaks_in_diffs():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    found = grader.compare("y", ref + np.array([[0, 0], [0.5, 0]], np.float32), ref, 1e-5)
    assert found.ratio > 1 and found.message == "y: worst error 0.125 > 1e-05 at index (1, 0): mine 3.5 vs reference 3"
    assert found.tol == 1e-5 and found.err == pytest.approx(0.125) and found.case is None
    assert "shape mine (2,) vs reference (2, 2)" in grader.compare("y", ref[0], ref, 1e-5).message
    assert grader.compare("y", ref * np.nan, ref, 1e-5).ratio == np.inf
    words = np.array(["Ġlow er", "a"])
    assert "mine 'Ġl ow er' vs reference 'Ġlow er'" in grader.compare("t", ["Ġl ow er", "a"], words, 0).message


# ---- the snapshots ------------------------------------------------------------------------------------


def test_snapshots_are_small_and_cover_every_component():
    assert grader.SNAPSHOTS.stat().st_size < SNAPSHOT_BUDGET_BYTES
    snaps = grader.load_snapshots()  # also checks the config and the seeded weights' checksum
    assert sorted(snaps) == sorted(BY_NAME)


def test_snapshots_are_what_the_reference_computes_from_their_inputs():
    """Recompute every stored output and stored mistake with torch / transformers / tokenizers (the reference extra)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    import make_snapshots

    snaps = grader.load_snapshots()
    inputs = {name: snap.inputs for name, snap in snaps.items()}
    fresh, mistakes = make_snapshots.references(inputs), make_snapshots.mistake_outputs(inputs)
    assert {name: sorted(snap.mistakes) for name, snap in snaps.items() if snap.mistakes} == \
        {name: sorted(made) for name, made in mistakes.items()}
    for name, snap in snaps.items():
        pairs = [(key, fresh[name][key], stored) for key, stored in snap.outputs.items()]
        pairs += [(f"mistake/{m}/{key}", mistakes[name][m][key], stored)
                  for m, arrays in snap.mistakes.items() for key, stored in arrays.items()]
        for key, again, stored in pairs:
            tol = 1e-6 if stored.dtype.kind == "f" else 0  # the same arithmetic again: only float noise may differ
            found = grader.compare(f"{name}/{key}", again, stored, tol)
            assert found.ratio <= 1, found.message


def test_the_instructor_guide_lists_every_component_with_its_tolerance():
    guide = PACKAGE.parent / "notebooks" / "assignments" / "README.md"
    if not guide.is_file():
        pytest.skip("the guide is in a checkout, not in an installed package")
    lines = guide.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| component | the student writes |"))
    table = [line for line in lines[header + 2:]][: next(i for i, line in enumerate(lines[header + 2:] + [""])
                                                      if not line.startswith("| "))]
    rows = {cells[1].strip(): cells for cells in (line.split("|") for line in table)}  # that table only
    for c in COMPONENTS:
        assert c.name in rows, f"the guide's table has no row for {c.name}"
        expected = "exact" if c.tol == 0 else f"{c.tol:.0e}"
        found = rows[c.name][4].strip()
        assert found == expected, f"{c.name}: the guide says {found}, not {expected}"
