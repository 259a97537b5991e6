"""minibridge.processing: routing, batch checks, and all four arrays vs transformers' BridgeTowerProcessor."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minibridge.image_processing import BridgeTowerImageProcessor
from minibridge.processing import BridgeTowerProcessor

from paths import ROBERTA
from paths import SHARED_DATA as DATA

# Pixels agree to the bit today; see PIXEL_ATOL in test_image_processing.py for why 1e-6.
PIXEL_ATOL = 1e-6

# The base checkpoints' preprocessor_config.json, as transformers 5 writes it.
BASE_CONFIG = {"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 0.00392156862745098,
               "do_normalize": True, "do_pad": True, "do_center_crop": True, "size_divisor": 32,
               "size": {"shortest_edge": 288}, "crop_size": {"shortest_edge": 288},
               "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
               "image_processor_type": "BridgeTowerImageProcessor"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A checkpoint-like folder: tokenizer.json from shared data (copied to a temp dir, never the repo)."""
    if not (ROBERTA / "tokenizer.json").is_file():
        pytest.skip(f"shared data not found at {ROBERTA} (the real roberta-base tokenizer lives outside the repo)")
    path = tmp_path_factory.mktemp("checkpoint")
    shutil.copy(ROBERTA / "tokenizer.json", path / "tokenizer.json")
    (path / "preprocessor_config.json").write_text(json.dumps(BASE_CONFIG), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def proc(folder):
    return BridgeTowerProcessor.from_pretrained(folder)


def pairs(n):
    """The first n (image path, caption) pairs of the shared COCO captions, one per image."""
    with open(DATA / "captions" / "coco_captions.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    first = {}
    for row in rows:
        first.setdefault(row["file"], row["caption"])
    return [(DATA / file, caption) for file, caption in list(first.items())[:n]]


def noise(height, width, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


def test_outputs_ready_for_the_model(proc):
    enc = proc(images=[noise(480, 640), noise(300, 200)], text=["a cat", "two cats on a pink blanket"], padding=True)
    assert list(enc) == ["input_ids", "attention_mask", "pixel_values", "pixel_mask"]
    assert enc.input_ids.dtype == enc.attention_mask.dtype == enc.pixel_mask.dtype == np.int64
    assert enc.pixel_values.dtype == np.float32
    assert enc.input_ids.shape == enc.attention_mask.shape and enc.input_ids.shape[0] == 2
    assert enc.pixel_values.shape == (2, 3, 288, 288) and enc.pixel_mask.shape == (2, 288, 288)
    assert enc.attention_mask[0, -1] == 0 and enc.input_ids[0, -1] == proc.tokenizer.pad_token_id


def test_one_image_one_text(proc):
    enc = proc(images=noise(64, 64), text="")  # empty text is valid: <s></s>
    assert enc.input_ids.tolist() == [[0, 2]] and enc.pixel_values.shape == (1, 3, 288, 288)


def test_text_only_and_images_only(proc):
    assert set(proc(text="a cat")) == {"input_ids", "attention_mask"}
    assert set(proc(images=noise(64, 64))) == {"pixel_values", "pixel_mask"}
    with pytest.raises(ValueError, match="pass images, text, or both"):
        proc()


def test_batch_sizes_must_match(proc):
    with pytest.raises(ValueError, match=r"got 2 text\(s\) and 3 image\(s\)"):
        proc(images=[noise(32, 32)] * 3, text=["a", "b"], padding=True)
    with pytest.raises(ValueError, match=r"got 1 text\(s\) and 2 image\(s\)"):
        proc(images=[noise(32, 32)] * 2, text="a")


def test_unequal_texts_need_padding_and_long_texts_truncation(proc):
    with pytest.raises(ValueError, match="padding=True"):
        proc(text=["a cat", "two cats on a pink blanket"])
    long_text = "cat " * 700
    with pytest.raises(ValueError, match="truncation=True"):
        proc(images=noise(32, 32), text=long_text)
    enc = proc(images=noise(32, 32), text=long_text, truncation=True)
    assert enc.input_ids.shape == (1, 512) and enc.input_ids[0, -1] == proc.tokenizer.eos_token_id


def test_decode_passthrough(proc):
    enc = proc(text=["a cat", "a dog on a mat"], padding=True)
    assert proc.batch_decode(enc.input_ids, skip_special_tokens=True) == ["a cat", "a dog on a mat"]
    assert proc.decode(enc.input_ids[0]) == "<s>a cat</s><pad><pad><pad>"


def test_legacy_large_config_crops_to_294(folder, tmp_path):
    shutil.copy(folder / "tokenizer.json", tmp_path / "tokenizer.json")
    legacy = {"max_text_len": 50, "size": 294, "tokenizer": "roberta-large", "vocab_size": 50265}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy), encoding="utf-8")
    large = BridgeTowerProcessor.from_pretrained(tmp_path)
    assert isinstance(large.image_processor, BridgeTowerImageProcessor)
    assert large(images=noise(480, 640), text="a cat").pixel_values.shape == (1, 3, 294, 294)


@pytest.fixture(scope="module")
def reference(folder):
    transformers = pytest.importorskip("transformers")
    pil = pytest.importorskip("transformers.models.bridgetower.image_processing_pil_bridgetower")
    tokenizer = transformers.RobertaTokenizer.from_pretrained(str(folder))
    return transformers.BridgeTowerProcessor(image_processor=pil.BridgeTowerImageProcessorPil(do_convert_rgb=True),
                                             tokenizer=tokenizer)


@pytest.mark.parametrize("kwargs", [dict(padding=True), dict(padding=True, truncation=True, max_length=10),
                                    dict(padding="max_length", truncation=True, max_length=40)])
def test_matches_transformers_processor(proc, reference, kwargs):
    import PIL.Image

    chosen = pairs(6)
    if len(chosen) < 6:
        pytest.skip(f"captions/photos not found under {DATA}")
    images = [PIL.Image.open(path) for path, _ in chosen]
    texts = [caption for _, caption in chosen]
    mine = proc(images=images, text=texts, **kwargs)
    theirs = reference(images=images, text=texts, return_tensors="np", **kwargs)
    assert set(mine) == set(theirs), f"keys: mine {sorted(mine)} vs reference {sorted(theirs)}"
    for key in ("input_ids", "attention_mask", "pixel_mask"):
        assert np.array_equal(mine[key], theirs[key]), f"{key}: mine {mine[key]} vs reference {theirs[key]}"
    diff = np.abs(mine["pixel_values"].astype(np.float64) - theirs["pixel_values"])
    k = np.unravel_index(diff.argmax(), diff.shape)
    assert diff[k] <= PIXEL_ATOL, f"pixel_values worst at {k}: mine {mine['pixel_values'][k]} vs reference " \
                                  f"{theirs['pixel_values'][k]}"
