"""notebook_utils: the MINIBRIDGE_MODEL switch, the offline photos, bpe_steps and displayable."""

import numpy as np
import PIL.Image
import pytest

from minibridge import notebook_utils as nu
from minibridge.image_processing import BridgeTowerImageProcessor, rescale_and_normalize
from minibridge.tokenizer import bpe

from helpers import SHARED_DATA


def test_model_id_follows_the_environment(monkeypatch):
    monkeypatch.delenv(nu.MODEL_ENV, raising=False)
    assert nu.model_id("BridgeTower/bridgetower-base-itm-mlm") == "BridgeTower/bridgetower-base-itm-mlm"
    assert not nu.offline()
    monkeypatch.setenv(nu.MODEL_ENV, "/some/folder")
    assert nu.model_id("BridgeTower/bridgetower-base-itm-mlm") == "/some/folder"
    assert nu.offline()


def test_offline_photos_come_from_shared_data(monkeypatch):
    if not (SHARED_DATA / "images" / "000000039769.png").is_file():
        pytest.skip(f"needs the photos in {SHARED_DATA / 'images'}")
    monkeypatch.setenv(nu.MODEL_ENV, "/some/folder")  # offline: no download is tried
    photos = nu.sample_photos(3)
    assert [source.rsplit("/", 1)[-1][:12] for _, source, _ in photos] == ["000000039769", "000000397133",
                                                                           "000000377575"]
    assert all(isinstance(im, PIL.Image.Image) and im.mode == "RGB" for im, _, _ in photos)
    photo, source = nu.sample_photo()
    assert photo.size == (640, 480) and source == photos[0][1]


def test_without_shared_data_matplotlib_pictures_stand_in(monkeypatch):
    pytest.importorskip("matplotlib", reason="the last offline fallback is matplotlib's sample data")
    monkeypatch.setenv(nu.MODEL_ENV, "/some/folder")
    monkeypatch.setattr(nu, "shared_data", lambda: None)
    photos = nu.sample_photos(5)
    assert len(photos) == len(nu.MATPLOTLIB_PHOTOS)  # fewer than asked for: there are only three
    assert photos[0][1].endswith("grace_hopper.jpg") and photos[0][0].mode == "RGB"
    assert photos[1][0].mode == "RGB"  # a transparent PNG, put on white


def test_bpe_steps_on_a_hand_checkable_table():
    ranks = {("l", "o"): 0, ("lo", "w"): 1, ("e", "r"): 2, ("low", "er"): 3, ("x", "y"): 4}
    steps = nu.bpe_steps("lower", ranks)
    assert steps == [(list("lower"), None, None), (["lo", "w", "e", "r"], ("l", "o"), 0),
                     (["low", "e", "r"], ("lo", "w"), 1), (["low", "er"], ("e", "r"), 2),
                     (["lower"], ("low", "er"), 3)]
    assert steps[-1][0] == bpe("lower", ranks)


def test_bpe_steps_end_where_bpe_ends_on_the_real_merges():
    if not (SHARED_DATA / "roberta-base" / "tokenizer.json").is_file():
        pytest.skip(f"needs the tokenizer files in {SHARED_DATA / 'roberta-base'}")
    from minibridge import RobertaTokenizer

    tok = RobertaTokenizer.from_pretrained(SHARED_DATA / "roberta-base")
    for word in ["Ġunbelievable", "ĠBridgeTower", "Ġtokenization", "a"]:
        steps = nu.bpe_steps(word, tok.ranks)
        assert steps[-1][0] == bpe(word, tok.ranks)
        ranks = [rank for _, _, rank in steps[1:]]
        assert ranks == sorted(ranks)  # merges apply in rising rank order


def test_displayable_undoes_the_normalisation():
    rgb = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    processor = BridgeTowerImageProcessor()
    pixels = rescale_and_normalize(rgb, processor.rescale_factor, processor.image_mean, processor.image_std)
    assert np.array_equal(nu.displayable(pixels, processor), rgb)
