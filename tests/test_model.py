"""Parity of the forward pass with transformers, on the committed fixtures (no torch needed).

The fixtures (tests/fixtures/*, written by make_fixtures.py) hold tiny random BridgeTower
checkpoints in the Hub layout and what transformers 5 computed from them: every head, padded and
single batches, position-embedding interpolation, hidden states and all attention maps.
"""

import json

import numpy as np
import pytest

from minibridge.backend import to_numpy

from helpers import DEVICES, FIXTURES, HEAD_CLASSES, assert_close, compare, run_mine


def _cases():
    for folder in sorted(p for p in FIXTURES.iterdir() if (p / "cases.json").is_file()):
        for case, meta in json.loads((folder / "cases.json").read_text()).items():
            for head in meta["heads"]:
                yield pytest.param(folder, case, head, meta["interpolate"], id=f"{folder.name}-{case}-{head}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("folder, case, head, interpolate", list(_cases()))
def test_matches_reference(folder, case, head, interpolate, device):
    data = np.load(folder / "reference.npz")
    inputs = {k.split("/")[-1]: data[k] for k in data.files if k.startswith(f"{case}/inputs/")}
    label_key = f"{case}/labels/{head}"
    labels = data[label_key] if label_key in data.files else None
    prefix = f"{case}/{head}/"
    ref = {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
    keep = any(k.startswith("hidden_states") for k in ref)

    model = HEAD_CLASSES[head].from_pretrained(folder, device=device)
    out = run_mine(model, head, inputs, labels, interpolate, keep)
    compare(out, ref, f"{folder.name}/{case}/{head}")


def test_padding_leaves_real_tokens_unchanged():
    """bridgetower.md §5: right-padding with the right mask changes no output of the real tokens.

    The reference is bit-identical here; we allow float32 rounding (1e-5, a few ulps of outputs of
    size ~3), since a longer text makes matrix products of another shape, which BLAS may sum in
    another order.
    """
    model = HEAD_CLASSES["model"].from_pretrained(FIXTURES / "tiny")
    data = np.load(FIXTURES / "tiny" / "reference.npz")
    ids, pixels = data["padded/inputs/input_ids"][1:2], data["padded/inputs/pixel_values"][1:2]
    n = int(data["padded/inputs/attention_mask"][1].sum())
    short = model(input_ids=ids[:, :n], pixel_values=pixels)
    padded = model(input_ids=ids, attention_mask=(np.arange(ids.shape[1]) < n)[None].astype(np.int64),
                   pixel_values=pixels)
    assert_close(padded.text_features[:, :n], short.text_features, "text features", tol=1e-5)
    assert_close(padded.image_features, short.image_features, "image features", tol=1e-5)


def test_attention_maps_are_distributions():
    model = HEAD_CLASSES["model"].from_pretrained(FIXTURES / "tiny")
    data = np.load(FIXTURES / "tiny" / "reference.npz")
    inputs = {k: data[f"padded/inputs/{k}"] for k in ("input_ids", "attention_mask", "pixel_values")}
    out = model(**inputs, output_attentions=True)
    B, T = inputs["input_ids"].shape
    L = out.image_features.shape[1]
    depth, cross, heads = (model.config.text_config.num_hidden_layers, model.config.num_hidden_layers,
                           model.config.text_config.num_attention_heads)
    assert len(out.text_attentions) == len(out.vision_attentions) == depth
    assert len(out.cross_attentions) == len(out.attentions) == cross
    t2i, i2t = out.cross_attentions[0]
    assert t2i.shape == (B, heads, T, L) and i2t.shape == (B, heads, L, T)
    np.testing.assert_allclose(i2t.sum(-1), 1.0, atol=1e-5)
    pad = (inputs["attention_mask"] == 0)[:, None, None, :]  # [B, 1, 1, T]
    assert pad.any() and (i2t * pad).max() < 1e-30  # image queries give padded text keys no weight


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["padded", "single", "interpolate"])
def test_unimodal_features_equal_the_full_forward(case, device):
    """get_text_features / get_image_features run one tower each, and give the full pass's embeddings."""
    model = HEAD_CLASSES["itc"].from_pretrained(FIXTURES / "tiny", device=device)
    data = np.load(FIXTURES / "tiny" / "reference.npz")
    ids, mask, pixels = (data[f"{case}/inputs/{k}"] for k in ("input_ids", "attention_mask", "pixel_values"))
    interpolate = case == "interpolate"
    full = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, interpolate_pos_encoding=interpolate)
    text = model.get_text_features(input_ids=ids, attention_mask=mask)
    image = model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=interpolate)
    # Same arithmetic in the same order on unit vectors, so equal to float32 rounding (1e-6), not
    # merely within TOL; and within 1e-5 of the reference's embeddings (a tenth of TOL).
    text, image = to_numpy(text), to_numpy(image)
    np.testing.assert_allclose(text, to_numpy(full.text_embeds), rtol=0, atol=1e-6)
    np.testing.assert_allclose(image, to_numpy(full.image_embeds), rtol=0, atol=1e-6)
    np.testing.assert_allclose(text, data[f"{case}/itc/text_embeds"], rtol=0, atol=1e-5)
    C = model.config.contrastive_hidden_size
    assert text.shape == (len(ids), C) and image.shape == (len(pixels), C)


def test_row_blocked_path_matches_reference(monkeypatch):
    """@rowwise cuts big arrays into row blocks; the tiny fixtures are below the block size, so
    force blocks of 64 numbers here (the full-size live tests meet the real size)."""
    from minibridge import backend

    monkeypatch.setattr(backend, "BLOCK_NUMBERS", 64)
    folder = FIXTURES / "tiny"
    data = np.load(folder / "reference.npz")
    for case in ("padded", "interpolate"):
        inputs = {k: data[f"{case}/inputs/{k}"] for k in ("input_ids", "attention_mask", "pixel_values")}
        ref = {k[len(f"{case}/itc/"):]: data[k] for k in data.files if k.startswith(f"{case}/itc/")}
        out = run_mine(HEAD_CLASSES["itc"].from_pretrained(folder), "itc", inputs, interpolate=case == "interpolate")
        compare(out, ref, f"tiny/{case}/itc in blocks of 64 numbers")


def test_the_forward_pass_reads_top_to_bottom():
    """model.bridgetower has no nested functions, and one helper (bridge.to_cross_space) puts tower
    states into the cross-modal space: the transforms are read nowhere else in the package."""
    import ast
    from pathlib import Path

    import minibridge

    package = Path(minibridge.__file__).resolve().parent
    tree = ast.parse((package / "model.py").read_text(encoding="utf-8"))
    forward = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "bridgetower")
    nested = [n.name for n in ast.walk(forward) if isinstance(n, (ast.FunctionDef, ast.Lambda)) and n is not forward]
    assert not nested, f"bridgetower defines {nested}"
    readers = [p.name for p in sorted(package.glob("*.py")) if p.name != "weights.py"  # (the key inventory)
               and '_transform"' in p.read_text(encoding="utf-8")]
    assert readers == ["bridge.py"], readers
