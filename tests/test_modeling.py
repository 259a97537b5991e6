"""Bad input is named at the boundary: what was expected and what came (never a deep broadcast error)."""

import json
import shutil

import numpy as np
import pytest

import minibridge as mb

from helpers import FIXTURES


@pytest.fixture(scope="module")
def model():
    return mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(FIXTURES / "tiny")


@pytest.fixture
def good():
    rng = np.random.default_rng(0)
    return {"input_ids": np.array([[0, 5, 6, 2], [0, 7, 2, 1]]), "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]]),
            "pixel_values": rng.standard_normal((2, 3, 12, 12)).astype(np.float32)}  # the fixture takes 12×12


def test_good_input_runs(model, good):
    assert model(**good).logits.shape == (2, 2)
    # lists and float64 pixels are accepted (converted at the boundary)
    out = model(input_ids=good["input_ids"].tolist(), pixel_values=good["pixel_values"].astype(np.float64))
    assert out.logits.dtype == np.float32


@pytest.mark.parametrize("change, error, message", [
    (dict(input_ids=None), TypeError, "input_ids is required"),
    (dict(input_ids=np.array([[0.0, 5.0]])), TypeError, "input_ids must be integer token ids, got dtype float64"),
    (dict(input_ids=np.array([0, 5, 2])), ValueError, r"2-D \[batch, tokens\], got shape \(3,\); for one text use input_ids\[None\]"),
    (dict(input_ids=np.array([[0, 500, 2], [0, 1, 2]])), ValueError, r"id 500, outside the vocabulary \[0, 50\)"),
    (dict(input_ids=np.array([[0, -1, 2], [0, 1, 2]])), ValueError, "id -1, outside"),
    (dict(input_ids=np.zeros((2, 15), np.int64)), ValueError, "the text has 15 tokens but the model takes at most 14.*truncation=True"),
    (dict(input_ids=np.zeros((2, 0), np.int64)), ValueError, "at least one token"),
    (dict(attention_mask=np.ones((2, 3))), ValueError, r"attention_mask must have the shape of input_ids \(2, 4\), got \(2, 3\)"),
    (dict(attention_mask=np.full((2, 4), 2)), ValueError, "only 0 .padding. and 1"),
    (dict(pixel_values=None), TypeError, r"pixel_values is required: a float array \[batch, 3, 12, 12\]"),
    (dict(pixel_values=np.zeros((2, 3, 12, 12), np.uint8)), TypeError, "floating point .* got dtype uint8"),
    (dict(pixel_values=np.zeros((2, 16, 16, 3), np.float32)), ValueError, r"shape \[batch, 3, height, width\], got \(2, 16, 16, 3\)"),
    (dict(pixel_values=np.zeros((3, 16, 16), np.float32)), ValueError, r"got \(3, 16, 16\)"),
    (dict(pixel_values=np.zeros((2, 3, 20, 12), np.float32)), ValueError, "takes 12×12 images, got 20×12.*interpolate_pos_encoding=True"),
    (dict(pixel_values=np.zeros((3, 3, 12, 12), np.float32)), ValueError, "batches differ: 2 texts but 3 images"),
])
def test_bad_input_is_named(model, good, change, error, message):
    with pytest.raises(error, match=message):
        model(**{**good, **change})


def test_too_small_for_one_patch(model, good):
    with pytest.raises(ValueError, match="at least one patch .4 pixels"):
        model(**{**good, "pixel_values": np.zeros((2, 3, 3, 16), np.float32)}, interpolate_pos_encoding=True)


def test_bad_labels(good):
    itm = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(FIXTURES / "tiny")
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\), got \(3,\)"):
        itm(**good, labels=np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\), found 2"):
        itm(**good, labels=np.array([0, 2]))
    mlm = mb.BridgeTowerForMaskedLM.from_pretrained(FIXTURES / "tiny")
    with pytest.raises(ValueError, match=r"or -100 \(ignored\), found 50"):
        mlm(**good, labels=np.array([[0, 50, 2, -100], [-100] * 4]))


def test_contrastive_head_needs_its_config(tmp_path):
    cfg = json.loads((FIXTURES / "tiny" / "config.json").read_text())
    del cfg["contrastive_hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(FIXTURES / "tiny" / "model.safetensors", tmp_path)
    with pytest.raises(mb.ConfigError, match="needs contrastive_hidden_size"):
        mb.BridgeTowerForContrastiveLearning.from_pretrained(tmp_path)
    with pytest.raises(mb.ConfigError, match="share_cross_modal_transformer_layers=False"):
        mb.BridgeTowerForContrastiveLearning.from_pretrained(FIXTURES / "tiny-scaled-untied-transforms")
