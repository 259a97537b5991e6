"""The published checkpoints against the numbers of transformers' own slow tests (bridgetower.md §11).

These need the Hugging Face Hub (the first run downloads 1.3 GB and 3.5 GB), which the development
and CI machines cannot reach, so they run only when asked:

    MINIBRIDGE_NETWORK_TESTS=1 python -m pytest -q tests/test_real_checkpoints.py

The expected values are those transformers' tests assert for its own implementation.
"""

import os

import numpy as np
import pytest

import minibridge as mb

from helpers import SHARED_DATA

pytestmark = pytest.mark.skipif(os.environ.get("MINIBRIDGE_NETWORK_TESTS") != "1",
                                reason="downloads the real checkpoints: set MINIBRIDGE_NETWORK_TESTS=1")

PHOTO = SHARED_DATA / "images" / "000000039769.png"  # tests/fixtures/tests_samples/COCO in transformers
BASE_ITM_MLM = "BridgeTower/bridgetower-base-itm-mlm"


@pytest.fixture(scope="module")
def photo():
    if not PHOTO.is_file():
        pytest.skip(f"needs {PHOTO}")
    return PHOTO


def test_itm(photo):
    proc = mb.BridgeTowerProcessor.from_pretrained(BASE_ITM_MLM)
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(BASE_ITM_MLM)
    enc = proc(images=photo, text="a bunch of cats laying on a tower.")
    out = model(**enc, labels=np.array([1]))
    assert out.logits[0, 1] > out.logits[0, 0]
    assert abs(float(out.loss) - 0.5108) < 1e-4  # transformers asserts 4 decimal places


def test_mlm(photo):
    proc = mb.BridgeTowerProcessor.from_pretrained(BASE_ITM_MLM)
    model = mb.BridgeTowerForMaskedLM.from_pretrained(BASE_ITM_MLM)
    enc = proc(images=photo, text="a bunch of <mask> laying on a tower.")
    out = model(**enc, labels=enc["input_ids"])
    assert out.logits.shape == (1, 11, 50265)
    assert proc.decode([int(out.logits[0, 4].argmax())]) == " cats"
    assert abs(float(out.loss) - 5.7373) < 1e-4


def test_itc_shapes(photo):
    name = "BridgeTower/bridgetower-large-itm-mlm-itc"
    proc = mb.BridgeTowerProcessor.from_pretrained(name)
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(name)
    out = model(**proc(images=photo, text="a bunch of cats laying on a tower.", padding=True), return_loss=True)
    assert out.logits.shape == (1, 3, 512) and np.isfinite(float(out.loss))


def test_interpolated_position_embeddings(photo):
    """bridgetower-base at 180 pixels (crop = size, as transformers 4.x), positions interpolated."""
    proc = mb.BridgeTowerProcessor(mb.BridgeTowerImageProcessor(size=180),
                                   mb.RobertaTokenizer.from_pretrained("BridgeTower/bridgetower-base"))
    model = mb.BridgeTowerModel.from_pretrained("BridgeTower/bridgetower-base")
    out = model(**proc(images=photo, text="a bunch of cats laying on a tower."), interpolate_pos_encoding=True)
    assert out.image_features.shape == (1, 122, 768)
    expected = np.array([[-0.6518, 0.4978, -0.4544], [-2.6672, -0.0843, -0.4210], [-2.4510, -0.1002, -0.3458]])
    np.testing.assert_allclose(out.image_features[0, :3, :3], expected, atol=1e-4)
