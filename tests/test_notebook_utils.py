"""notebooks/notebook_utils.py: the MINIBRIDGE_MODEL switch and its offline error, the offline photos,
the random-weights stamp on figures, the package source without solutions, and displayable."""

import inspect
import json
import sys
import time

import numpy as np
import PIL.Image
import pytest

from minibridge.image_processing import BridgeTowerImageProcessor, rescale_and_normalize

from paths import PHOTOS

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "notebooks"))
import notebook_utils as nu  # noqa: E402  (it lives beside the notebooks, which run in that folder)


BASE = "BridgeTower/bridgetower-base-itm-mlm"


def test_model_id_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(nu.MODEL_ENV, raising=False)
    monkeypatch.setattr(nu, "hub_unreachable", lambda repo_id: None)  # the Hub answers
    assert nu.model_id(BASE) == BASE
    assert not nu.offline()
    monkeypatch.setenv(nu.MODEL_ENV, str(tmp_path))
    assert nu.model_id(BASE) == str(tmp_path)
    assert nu.offline()


def test_a_relative_model_folder_is_found_from_the_checkout_too(monkeypatch):
    """The README's launch line sets MINIBRIDGE_MODEL relative to the checkout; Jupyter runs the kernel in notebooks/."""
    monkeypatch.chdir(nu.CHECKOUT / "notebooks")
    monkeypatch.setenv(nu.MODEL_ENV, "notebooks")  # a folder that exists relative to the checkout only
    assert nu.model_id(BASE) == str(nu.CHECKOUT / "notebooks")


def test_a_model_folder_that_is_not_there_names_the_variable_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv(nu.MODEL_ENV, str(tmp_path / "nothing"))
    with pytest.raises(nu.NoCheckpointError) as e:
        nu.model_id(BASE)
    assert "MINIBRIDGE_MODEL" in str(e.value) and "minibridge random-checkpoint" in str(e.value)


def _no_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(nu.MODEL_ENV, raising=False)
    monkeypatch.setenv("MINIBRIDGE_HOME", str(tmp_path))  # an empty download cache


def test_without_the_hub_model_id_fails_at_once_naming_minibridge_model(monkeypatch, tmp_path):
    """Not a download that retries for 40 s and then suggests --model: the variable, the command, the launch line."""
    _no_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(nu.NoCheckpointError) as e:
        nu.model_id(BASE)
    assert time.perf_counter() - start < 1.0
    message = str(e.value)
    for part in ("HF_HUB_OFFLINE", BASE, "MINIBRIDGE_MODEL is not set",
                 "minibridge random-checkpoint weights/random-base --size base --tokenizer",
                 "MINIBRIDGE_MODEL=weights/random-base jupyter lab notebooks/"):
        assert part in message, (part, message)
    assert "--model" not in message  # the command line's advice, not the notebooks'


def test_an_unreachable_hub_is_noticed_within_the_probe_timeout(monkeypatch, tmp_path):
    _no_cache(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    start = time.perf_counter()
    why = nu.hub_unreachable(BASE)
    assert why and "127.0.0.1:9" in why
    assert time.perf_counter() - start < nu.HUB_PROBE_TIMEOUT + 1
    with pytest.raises(nu.NoCheckpointError, match="MINIBRIDGE_MODEL"):
        nu.model_id(BASE)


def test_a_cached_checkpoint_needs_no_hub(monkeypatch, tmp_path):
    _no_cache(monkeypatch, tmp_path)
    folder = nu.hub.cache_folder(BASE)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / nu.hub.SINGLE).write_bytes(b"")
    monkeypatch.setattr(nu, "hub_unreachable", lambda repo_id: pytest.fail("probed the Hub for a cached checkpoint"))
    assert nu.model_id(BASE) == BASE


def test_an_index_without_its_shards_is_not_cached(monkeypatch, tmp_path):
    """As minibridge.hub.resolve sees it: a half-downloaded shard set is no checkpoint."""
    _no_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = nu.hub.cache_folder(BASE)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / nu.hub.INDEX).write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(nu.NoCheckpointError, match="no copy of it is cached"):
        nu.model_id(BASE)


# ---- honest pictures ---------------------------------------------------------------------------------


def _checkpoint(folder, random):
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "bridgetower"}
    if random:
        config["minibridge_random_weights"] = {"seed": 0, "note": "random weights: noise"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_figures_from_a_random_checkpoint_are_stamped(monkeypatch, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    monkeypatch.setenv(nu.MODEL_ENV, str(_checkpoint(tmp_path / "random", True)))
    assert nu.random_checkpoint() == "random weights: noise"
    fig = plt.figure()
    try:
        assert nu.stamp(fig) and nu.stamp(fig)
        stamps = [t for t in fig.texts if t.get_gid() == nu.STAMP_GID]
        assert len(stamps) == 1 and stamps[0].get_text() == nu.RANDOM_STAMP  # once, however often it is asked
    finally:
        plt.close(fig)


def test_figures_from_a_trained_checkpoint_or_the_hub_are_not_stamped(monkeypatch, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    monkeypatch.setenv(nu.MODEL_ENV, str(_checkpoint(tmp_path / "trained", False)))
    assert nu.random_checkpoint() is None
    fig = plt.figure()
    try:
        assert not nu.stamp(fig) and not fig.texts
        monkeypatch.delenv(nu.MODEL_ENV)
        assert nu.random_checkpoint() is None and not nu.stamp(fig)
    finally:
        plt.close(fig)


def test_show_stamps_only_figures_drawn_from_the_weights(monkeypatch, tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    monkeypatch.setattr(plt, "show", lambda: None)
    monkeypatch.setenv(nu.MODEL_ENV, str(_checkpoint(tmp_path / "random", True)))
    monkeypatch.setattr(nu, "FIGURES", [])
    try:
        photo = plt.figure()
        nu.show(from_weights=False)  # a photo: no stamp
        assert not photo.texts
        plt.close(photo)
        scores = plt.figure()
        nu.show()
        assert [t.get_text() for t in scores.texts] == [nu.RANDOM_STAMP]
        assert nu.FIGURES == [(False, False), (True, True)]
    finally:
        plt.close("all")


# ---- the package source, without the solutions ---------------------------------------------------------


def _solution_regions(fn):
    """The lines inside fn's BEGIN/END SOLUTION regions, and the lines outside them."""
    inside, outside, now = [], [], False
    for line in inspect.getsource(fn).splitlines():
        if line.strip() in ("# BEGIN SOLUTION", "# END SOLUTION"):
            now = line.strip() == "# BEGIN SOLUTION"
        else:
            (inside if now else outside).append(line.strip())
    return inside, outside


def test_shown_source_never_holds_a_solution():
    """Every graded function: its solution lines are gone, a placeholder names its component (habit 14)."""
    import importlib

    from minibridge.assignments.components import COMPONENTS

    for component in COMPONENTS:
        for covered in component.covers:
            module, name = covered.rsplit(".", 1)
            fn = getattr(importlib.import_module(f"minibridge.{module}"), name)
            shown = nu.source_without_solutions(fn)
            inside, outside = _solution_regions(fn)
            assert inside, f"{covered} has no solution region"
            lines = {line.strip() for line in shown.splitlines()}
            leaked = [line for line in inside if line and line in lines and line not in outside]
            assert not leaked, f"{covered}: shown source holds solution lines {leaked}"
            assert "SOLUTION" not in shown
            assert f"exercise: component {component.name}" in shown
            assert f"def {name}(" in shown  # the signature and docstring stay


def test_shown_source_of_an_unmarked_function_is_the_package_source():
    from minibridge.vision import vision_embed

    shown = nu.source_without_solutions(vision_embed)
    assert shown.startswith("# minibridge/vision.py, line ")
    assert shown.split("\n", 1)[1] == inspect.getsource(vision_embed)


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
