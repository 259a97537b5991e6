"""notebooks/notebook_utils.py: the MINIBRIDGE_MODEL switch, the offline photos and displayable."""

import sys

import numpy as np
import PIL.Image
import pytest

from minibridge.image_processing import BridgeTowerImageProcessor, rescale_and_normalize

from paths import PHOTOS

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks"))
import notebook_utils as nu  # noqa: E402  (it lives beside the notebooks, which run in that folder)


def test_model_id_follows_the_environment(monkeypatch):
    monkeypatch.delenv(nu.MODEL_ENV, raising=False)
    assert nu.model_id("BridgeTower/bridgetower-base-itm-mlm") == "BridgeTower/bridgetower-base-itm-mlm"
    assert not nu.offline()
    monkeypatch.setenv(nu.MODEL_ENV, "/some/folder")
    assert nu.model_id("BridgeTower/bridgetower-base-itm-mlm") == "/some/folder"
    assert nu.offline()


def test_offline_photos_come_from_the_photo_folder(monkeypatch):
    if not (PHOTOS / "000000039769.png").is_file():
        pytest.skip(f"needs the photos in {PHOTOS}")
    monkeypatch.setenv(nu.MODEL_ENV, "/some/folder")  # offline: no download is tried
    monkeypatch.setenv(nu.PHOTOS_ENV, str(PHOTOS))
    photos = nu.sample_photos(3)
    assert [source.rsplit("/", 1)[-1][:12] for _, source, _ in photos] == ["000000039769", "000000397133",
                                                                           "000000377575"]
    assert all(isinstance(im, PIL.Image.Image) and im.mode == "RGB" for im, _, _ in photos)
    photo, source = nu.sample_photo()
    assert photo.size == (640, 480) and source == photos[0][1]


def test_without_a_photo_folder_matplotlib_pictures_stand_in(monkeypatch):
    pytest.importorskip("matplotlib", reason="the last offline fallback is matplotlib's sample data")
    monkeypatch.setenv(nu.MODEL_ENV, "/some/folder")
    monkeypatch.delenv(nu.PHOTOS_ENV, raising=False)
    photos = nu.sample_photos(5)
    assert len(photos) == len(nu.MATPLOTLIB_PHOTOS)  # fewer than asked for: there are only three
    assert photos[0][1].endswith("grace_hopper.jpg") and photos[0][0].mode == "RGB"
    assert photos[1][0].mode == "RGB"  # a transparent PNG, put on white


def test_displayable_undoes_the_normalisation():
    rgb = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    processor = BridgeTowerImageProcessor()
    pixels = rescale_and_normalize(rgb, processor.rescale_factor, processor.image_mean, processor.image_std)
    assert np.array_equal(nu.displayable(pixels, processor), rgb)
