"""Shared test helpers: the parity tolerance, a diff-speaking comparison, and the output mapping."""

import numpy as np
import pytest

import minibridge as mb
from minibridge.backend import gpu_available, to_numpy
from minibridge.config import TINY_REAL_VOCAB  # noqa: F401 (re-exported for the tests)
from paths import FIXTURES, PHOTOS, ROBERTA, SHARED_DATA  # noqa: F401 (re-exported for the tests)

# Tolerance of every parity check: max |mine − reference| ≤ TOL × max(1, max |reference|).
# float32 sums in a different order drift by ~1e-6 relative per tower, and the large vision
# residual stream reaches ~1e-5 (bridgetower.md §12); 1e-4 leaves room for that, while a real mistake
# (a skipped LayerNorm, a wrong eps order of magnitude, tanh-GELU) moves outputs by 1e-3 or more.
TOL = 1e-4

# Parity tests run on every backend: NumPy always, CuPy where there is a GPU (CONTRIBUTING.md habit 6).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a GPU"))]

HEAD_CLASSES = {
    "model": mb.BridgeTowerModel,
    "itm": mb.BridgeTowerForImageAndTextRetrieval,
    "mlm": mb.BridgeTowerForMaskedLM,
    "itc": mb.BridgeTowerForContrastiveLearning,
}


def assert_close(mine, ref, name, tol=TOL):
    """Fail with the worst element, its index and mine vs reference; return the relative error."""
    mine = np.asarray(to_numpy(mine), dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert mine.shape == ref.shape, f"{name}: shape mine {mine.shape} vs reference {ref.shape}"
    if ref.size == 0:
        return 0.0
    mine, ref = mine.reshape(-1) if mine.ndim == 0 else mine, ref.reshape(-1) if ref.ndim == 0 else ref
    diff = np.abs(mine - ref)
    diff[np.isnan(diff)] = np.inf
    scale = max(1.0, float(np.abs(ref).max()))
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    err = float(diff[worst]) / scale
    assert err <= tol, (f"{name}: max |mine - reference| = {diff[worst]:.3g} (relative {err:.3g} > {tol}) "
                        f"at index {worst}: mine {mine[worst]:.7g} vs reference {ref[worst]:.7g}")
    return err


def mine_by_reference_name(out):
    """{reference key: my array} for every field `reference.run` records (image hidden states transposed)."""
    res = {}
    for k in ("text_features", "image_features", "pooler_output", "logits", "loss", "text_embeds",
              "image_embeds", "cross_embeds", "logit_scale"):
        v = getattr(out, k, None)
        if v is not None:
            res[k] = v
    if out.hidden_states is not None:
        text_h, image_h, cross_h = out.hidden_states
        for i, h in enumerate(text_h):
            res[f"hidden_states.text.{i}"] = h
        for i, h in enumerate(image_h):
            # minibridge is batch-first; the reference returns image hidden states as [L, B, Dv]
            res[f"hidden_states.image.{i}"] = to_numpy(h).transpose(1, 0, 2)
        for i, (x, y) in enumerate(cross_h):
            res[f"hidden_states.cross.{i}.text"], res[f"hidden_states.cross.{i}.image"] = x, y
    if out.attentions is not None:
        for i, (a, b) in enumerate(out.attentions):
            res[f"attentions.{i}.text"], res[f"attentions.{i}.image"] = a, b
        for i, a in enumerate(out.text_attentions):
            res[f"text_attentions.{i}"] = a
        for i, a in enumerate(out.vision_attentions):
            res[f"vision_attentions.{i}"] = a
        for i, (a, b) in enumerate(out.cross_attentions):
            res[f"cross_attentions.{i}.text"], res[f"cross_attentions.{i}.image"] = a, b
    return res


def run_mine(model, head, inputs, labels=None, interpolate=False, keep=False):
    kw = dict(inputs, interpolate_pos_encoding=interpolate, output_hidden_states=keep, output_attentions=keep)
    if labels is not None:
        kw["labels"] = labels
    if head == "itc":
        kw["return_loss"] = True
    return model(**kw)


def compare(out, ref_outputs, label):
    """Assert every reference output; return {name: relative error}."""
    mine = mine_by_reference_name(out)
    errors = {}
    for name, ref in ref_outputs.items():
        assert name in mine, f"{label}: minibridge did not return {name}"
        errors[name] = assert_close(mine[name], ref, f"{label}: {name}")
    return errors
