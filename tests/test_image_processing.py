"""minibridge.image_processing: hand-checkable steps, then pixels vs transformers'
BridgeTowerImageProcessorPil (do_convert_rgb=True, same crop size) on real photos, synthetic sizes
and every Pillow mode, then configs and bad input."""

import contextlib
import glob
import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from minibridge.image_processing import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, BridgeTowerImageProcessor,
                                         center_crop, load_image, pad_batch, rescale_and_normalize,
                                         resize_output_size)

from paths import SHARED_DATA as DATA

PHOTOS = sorted(glob.glob(str(DATA / "images" / "*")))

# Both sides call the same Pillow resize and do the same float64 → float32 arithmetic, so today they
# agree to the bit (worst difference 0.0). 1e-6 is a few float32 ulps at these magnitudes (|x| ≤ 2.2)
# and still flags one grey level of difference (≈ 0.015).
PIXEL_ATOL = 1e-6

BLACK = -np.array(OPENAI_CLIP_MEAN, dtype=np.float32) / np.array(OPENAI_CLIP_STD, dtype=np.float32)  # [3]


def assert_pixels_close(mine, reference, what):
    """Fail with the worst element, mine vs reference."""
    assert mine.shape == reference.shape, f"{what}: shape mine {mine.shape} vs reference {reference.shape}"
    diff = np.abs(mine.astype(np.float64) - reference)
    k = np.unravel_index(diff.argmax(), diff.shape)
    assert diff[k] <= PIXEL_ATOL, (f"{what}: worst |mine - reference| = {diff[k]:.3g} at {k}: "
                                   f"mine {mine[k]!r} vs reference {reference[k]!r}")


def noise(height, width, channels=3, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, channels), dtype=np.uint8)


# ------------------------------------------------------------------ each step, by hand
@pytest.mark.parametrize("shortest, hw, expected", [
    (288, (480, 640), (288, 384)), (288, (640, 480), (384, 288)), (288, (300, 301), (288, 288)),
    (288, (100, 1000), (32, 448)), (294, (480, 640), (288, 384)), (294, (1000, 100), (480, 32)),
    (288, (1, 1), (288, 288)),
    # the reference floors the short side to 0 here and crashes; we keep 32 px
    (288, (7, 1000), (32, 448)), (288, (5000, 40), (448, 32)),
])
def test_resize_output_size(shortest, hw, expected):
    assert resize_output_size(*hw, shortest, 32) == expected


def test_center_crop_pads_smaller_images_top_left_first():
    image = np.arange(1, 4, dtype=np.uint8).reshape(1, 3, 1)  # one row of 3 pixels
    out = center_crop(image, 4)  # [4, 4, 1]
    # 3 missing rows: 2 on top, 1 below; 1 missing column: on the left
    expected = np.zeros((4, 4, 1), dtype=np.uint8)
    expected[2, 1:4, 0] = [1, 2, 3]
    assert np.array_equal(out, expected)
    big = np.arange(25, dtype=np.uint8).reshape(5, 5, 1)
    assert np.array_equal(center_crop(big, 2)[:, :, 0], [[6, 7], [11, 12]])  # top = left = (5 - 2) // 2 = 1


def test_rescale_and_normalize_black_and_white():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[1, 1] = 255
    out = rescale_and_normalize(image)
    assert out.dtype == np.float32 and out.shape == (3, 2, 2)
    assert np.array_equal(out[:, 0, 0], BLACK)  # padding zeros become −mean/std, not 0
    white = (1 - np.array(OPENAI_CLIP_MEAN, dtype=np.float32)) / np.array(OPENAI_CLIP_STD, dtype=np.float32)
    assert np.array_equal(out[:, 1, 1], white)


def test_pad_batch_bottom_right():
    values, mask = pad_batch([np.ones((3, 2, 3), np.float32), np.ones((3, 4, 1), np.float32)])
    assert values.shape == (2, 3, 4, 3) and mask.shape == (2, 4, 3) and mask.dtype == np.int64
    assert mask[0].tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert mask[1].tolist() == [[1, 0, 0]] * 4
    assert values[0, :, 2:].sum() == 0 and values[1, :, :, 1:].sum() == 0


def test_defaults_and_extreme_aspect_ratio():
    proc = BridgeTowerImageProcessor()
    out = proc(noise(5000, 40))
    assert out.pixel_values.shape == (1, 3, 288, 288) and out.pixel_values.dtype == np.float32
    assert out.pixel_mask.shape == (1, 288, 288) and out.pixel_mask.dtype == np.int64 and out.pixel_mask.all()
    # resized to 448×32, then padded to 288 wide: 128 black columns on each side
    assert np.array_equal(out.pixel_values[0, :, 100, 0], BLACK)
    assert np.array_equal(out.pixel_values[0, :, 100, 287], BLACK)


def test_input_kinds_agree():
    array = noise(37, 53)
    pil = PIL.Image.fromarray(array)
    float_image = array.astype(np.float32) / 255  # k/255 in float32 comes back to k exactly
    grey = array[:, :, :1]
    proc = BridgeTowerImageProcessor()
    base = proc(array).pixel_values
    assert np.array_equal(proc(pil).pixel_values, base)
    assert np.array_equal(proc(float_image).pixel_values, base)
    assert np.array_equal(proc(grey).pixel_values, proc(grey[:, :, 0]).pixel_values)  # [H, W] is grey
    assert np.array_equal(proc(np.stack([array, array])).pixel_values, proc([array, pil]).pixel_values)


def test_rgba_composited_on_white():
    transparent = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent
    assert (load_image(PIL.Image.fromarray(transparent, "RGBA")) == 255).all()
    assert (load_image(transparent) == 255).all()


# ------------------------------------------------------------------ configs
def write_config(folder, config):
    (folder / "preprocessor_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.mark.parametrize("config, size, crop", [
    ({"max_text_len": 50, "size": 294, "tokenizer": "roberta-large", "vocab_size": 50265}, 294, 294),  # legacy
    ({"do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 0.00392156862745098,
      "do_normalize": True, "do_pad": True, "do_center_crop": True, "size_divisor": 32,
      "size": {"shortest_edge": 288}, "crop_size": {"shortest_edge": 288}, "image_mean": list(OPENAI_CLIP_MEAN),
      "image_std": list(OPENAI_CLIP_STD), "image_processor_type": "BridgeTowerImageProcessor"}, 288, 288),  # v5
    ({"size": {"shortest_edge": 294}, "crop_size": None}, 294, 294),
    ({"size": {"shortest_edge": 294}}, 294, 294),
    ({"size": {"shortest_edge": 294}, "crop_size": {"shortest_edge": 288}}, 294, 288),  # what v5 does
    ({"size": 294, "crop_size": {"height": 294, "width": 294}}, 294, 294),
    ({"size": 180, "crop_size": 180, "do_convert_rgb": True}, 180, 180),
])
def test_from_pretrained_configs(tmp_path, config, size, crop):
    proc = BridgeTowerImageProcessor.from_pretrained(write_config(tmp_path, config))
    assert (proc.size, proc.crop_size) == (size, crop)
    assert proc(noise(480, 640)).pixel_values.shape == (1, 3, crop, crop)


def test_from_pretrained_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        BridgeTowerImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="only bicubic"):
        BridgeTowerImageProcessor.from_pretrained(write_config(tmp_path, {"size": 288, "resample": 2}))
    with pytest.raises(ValueError, match="square"):
        BridgeTowerImageProcessor.from_pretrained(write_config(tmp_path, {"crop_size": {"height": 288, "width": 300}}))
    with pytest.warns(UserWarning, match="unknown keys.*'colour'"):
        BridgeTowerImageProcessor.from_pretrained(write_config(tmp_path, {"size": 288, "colour": "blue"}))


# ------------------------------------------------------------------ bad input
def test_bad_types():
    proc = BridgeTowerImageProcessor()
    with pytest.raises(TypeError, match="images is None"):
        proc(None)
    with pytest.raises(TypeError, match=r"got bytes; open the bytes with PIL.Image.open\(io.BytesIO"):
        proc(b"\x89PNG....")
    with pytest.raises(TypeError, match="got int"):
        proc(42)
    with pytest.raises(TypeError, match="got int"):
        proc([noise(8, 8), 42])
    with pytest.raises(ValueError, match="empty list"):
        proc([])
    with pytest.raises(ValueError, match="return_tensors must be 'np'"):
        proc(noise(8, 8), return_tensors="pt")


def test_bad_files(tmp_path):
    proc = BridgeTowerImageProcessor()
    with pytest.raises(FileNotFoundError, match="no image file"):
        proc(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="a URL must start with http:// or https://"):
        proc("https:/example.com/cat.jpg")  # one slash: a path, not a URL (URLs: test_hostile_inputs.py)
    (tmp_path / "notes.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.jpg as an image"):
        proc(str(tmp_path / "notes.jpg"))
    PIL.Image.fromarray(noise(64, 64)).save(tmp_path / "whole.png")
    PIL.Image.fromarray(noise(64, 64)).save(tmp_path / "whole.jpg")
    for name in ("whole.png", "whole.jpg"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[:len(data) // 2])
        with pytest.raises(ValueError, match="cannot read .* as an image: image file is truncated"):
            proc(tmp_path / f"cut_{name}")


def test_zero_size_images():
    proc = BridgeTowerImageProcessor()
    with pytest.raises(ValueError, match=r"empty \(0×10 pixels\)"):
        proc(PIL.Image.new("RGB", (10, 0)))
    with pytest.raises(ValueError, match=r"empty \(5×0 pixels\)"):
        proc(np.zeros((5, 0, 3), dtype=np.uint8))


def test_decompression_bomb_limit(tmp_path, monkeypatch):
    proc = BridgeTowerImageProcessor()
    PIL.Image.new("RGB", (40, 40)).save(tmp_path / "warn.png")  # 1600 px: over 1x the limit (Pillow warns)
    PIL.Image.new("RGB", (50, 50)).save(tmp_path / "error.png")  # 2500 px: over 2x (Pillow raises)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape either
        for name in ("warn.png", "error.png"):
            with pytest.raises(ValueError, match="decompression bomb.*MAX_IMAGE_PIXELS"):
                proc(tmp_path / name)
    with pytest.raises(ValueError, match="1600 pixels, over Pillow's decompression-bomb limit of 1000"):
        proc(PIL.Image.new("RGB", (40, 40)))
    with pytest.raises(ValueError, match="decompression-bomb limit"):
        proc(np.zeros((40, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("array, error, message", [
    # [3, 32, 32] is a channels-first image, taken as the reference takes it (test_channel_layouts_match_reference)
    (np.zeros((2, 32, 32), np.uint8), ValueError, r"\[C, H, W\] with C in \(1, 3, 4\), got shape \(2, 32, 32\)"),
    (np.zeros((32, 32, 5), np.uint8), ValueError, r"C in \(1, 3, 4\), got shape \(32, 32, 5\)"),
    (np.zeros(32, np.uint8), ValueError, r"got shape \(32,\)"),
    (np.zeros((2, 2, 2, 2, 3), np.uint8), ValueError, "got shape"),
    (np.zeros((8, 8, 3), np.int64), TypeError, "uint8 .* or float in \\[0, 1\\], got int64"),
    (np.zeros((8, 8, 3), bool), TypeError, "got bool"),
    (np.full((8, 8, 3), 2.0), ValueError, r"values in \[0, 1\], got \[2.0, 2.0\]"),
    (np.full((8, 8, 3), np.nan), ValueError, "NaN"),
])
def test_bad_arrays(array, error, message):
    with pytest.raises(error, match=message):
        BridgeTowerImageProcessor()(array)


# ------------------------------------------------------------------ the reference
@pytest.fixture(scope="module")
def reference_module():
    pytest.importorskip("transformers")
    return pytest.importorskip("transformers.models.bridgetower.image_processing_pil_bridgetower")


def reference_processor(module, size, **kwargs):
    return module.BridgeTowerImageProcessorPil(do_convert_rgb=True, size={"shortest_edge": size},
                                               crop_size={"shortest_edge": size}, **kwargs)


def reference_pixels(ref, image, size):
    """The reference's pixel_values; for the shapes it cannot size (short side floored to 0, see
    resize_output_size) its own resize/crop/rescale/normalise steps at our 32-px minimum."""
    layout = None  # inferred from the shape by both sides, as by default (tiny [1, 1, 3] is channels-first)
    try:
        return ref(image, return_tensors="np", input_data_format=layout)["pixel_values"]
    except ValueError as err:
        if "Size must contain" not in str(err):
            raise
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import SizeDict
    chw = ref.process_image(image, do_convert_rgb=True, input_data_format=layout)  # [C, H, W] uint8
    height, width = resize_output_size(*chw.shape[1:], size, 32)
    x = PilBackend.resize(ref, chw, SizeDict(height=height, width=width), resample=PIL.Image.BICUBIC)
    x = ref.center_crop(x, SizeDict(height=size, width=size))
    x = ref.normalize(ref.rescale(x, 1 / 255), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return x[None]


@pytest.mark.parametrize("size", [288, 294])
def test_photos_match_reference(reference_module, size):
    if not PHOTOS:
        pytest.skip(f"no photos at {DATA / 'images'} (shared data lives outside the repo)")
    mine, ref = BridgeTowerImageProcessor(size=size), reference_processor(reference_module, size)
    for path in PHOTOS:
        with PIL.Image.open(path) as im:
            theirs = ref(im, return_tensors="np")["pixel_values"]
        assert_pixels_close(mine(path).pixel_values, theirs, f"{Path(path).name} at {size}")


SYNTHETIC_SIZES = [(1, 1), (2, 3), (7, 1000), (1000, 7), (5000, 40), (40, 5000), (32, 32), (64, 96),
                   (288, 288), (294, 294), (320, 480), (33, 97), (299, 301), (481, 639), (1001, 999)]


@pytest.mark.parametrize("size", [288, 294])
@pytest.mark.parametrize("hw", SYNTHETIC_SIZES, ids=[f"{h}x{w}" for h, w in SYNTHETIC_SIZES])
def test_synthetic_sizes_match_reference(reference_module, size, hw):
    image = noise(*hw, seed=hw[0] * 7 + hw[1])
    ref = reference_processor(reference_module, size)
    mine = BridgeTowerImageProcessor(size=size)
    assert_pixels_close(mine(image).pixel_values, reference_pixels(ref, image, size), f"noise {hw} at {size}")
    pil = PIL.Image.fromarray(image)
    assert_pixels_close(mine(pil).pixel_values, reference_pixels(ref, pil, size), f"PIL noise {hw} at {size}")


def images_in_every_mode():
    """{name: PIL image} for every Pillow mode, plus transparency keys and wide-range integer/float modes."""
    rgba = PIL.Image.fromarray(noise(45, 61, channels=4, seed=1), "RGBA")
    modes = getattr(PIL.Image, "MODES", ["1", "CMYK", "F", "HSV", "I", "I;16", "I;16B", "I;16L", "I;16N", "L",
                                          "LA", "LAB", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "YCbCr"])
    images = {mode: rgba.convert(mode) for mode in modes}
    rng = np.random.RandomState(2)
    images["I wide"] = PIL.Image.fromarray(rng.randint(-500, 70000, (45, 61)).astype(np.int32))
    images["F wide"] = PIL.Image.fromarray((rng.randn(45, 61) * 300).astype(np.float32))
    images["I;16 wide"] = PIL.Image.fromarray(rng.randint(0, 65536, (45, 61)).astype(np.uint16))
    images["P transparent"] = rgba.convert("RGB").convert("P")
    images["P transparent"].info["transparency"] = 3
    images["L transparent"] = rgba.convert("L")
    images["L transparent"].info["transparency"] = 100
    return images


@pytest.mark.parametrize("size", [288, 294])
def test_every_pillow_mode_matches_reference(reference_module, size):
    mine, ref = BridgeTowerImageProcessor(size=size), reference_processor(reference_module, size)
    for name, im in images_in_every_mode().items():
        # subtle: Pillow cannot convert "La" and the reference crashes; we convert it to "LA" first
        theirs_input = im.convert("LA") if im.mode == "La" else im
        assert_pixels_close(mine(im).pixel_values, ref(theirs_input, return_tensors="np")["pixel_values"],
                            f"mode {name} at {size}")


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32, np.float64])
def test_arrays_match_reference(reference_module, channels, dtype):
    rng = np.random.RandomState(channels)
    image = noise(50, 70, channels) if dtype == np.uint8 else rng.rand(50, 70, channels).astype(dtype)
    ref = reference_processor(reference_module, 288)
    # subtle: the reference rescales a float image twice (once back from its resize, once in rescale);
    # do_rescale=False there gives the single rescale a [0, 1] image is meant to get.
    theirs = ref(image, return_tensors="np", input_data_format="channels_last",
                 do_rescale=(dtype == np.uint8))["pixel_values"]
    assert_pixels_close(BridgeTowerImageProcessor()(image).pixel_values, theirs, f"{dtype.__name__} × {channels}")


def test_batches_match_reference(reference_module):
    images = [noise(480, 640, seed=1), noise(300, 200, seed=2), noise(64, 900, seed=3)]
    for crop in (True, False):  # without the crop, sizes differ and the batch is padded
        mine = BridgeTowerImageProcessor(do_center_crop=crop)(images)
        theirs = reference_processor(reference_module, 288)(images, return_tensors="np", do_center_crop=crop,
                                                            input_data_format="channels_last")
        assert_pixels_close(mine.pixel_values, theirs["pixel_values"], f"batch, crop={crop}")
        assert np.array_equal(mine.pixel_mask, theirs["pixel_mask"]), f"pixel_mask, crop={crop}"
        assert mine.pixel_mask.dtype == theirs["pixel_mask"].dtype == np.int64
    assert not mine.pixel_mask.all()  # the uncropped batch really was padded


def test_resize_size_matches_reference_formula(reference_module):
    formula = reference_module.get_resize_output_image_size
    sides = [1, 2, 7, 31, 32, 33, 100, 287, 288, 289, 294, 300, 427, 480, 640, 799, 1000, 1333, 5000]
    for size in (288, 294):
        longer = int(1333 / 800 * size)
        for h in sides:
            for w in sides:
                image = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, h, w))  # a free [3, h, w] view
                theirs = formula(image, shorter=size, longer=longer, size_divisor=32)
                if min(theirs) > 0:  # where the reference can size the image at all
                    assert resize_output_size(h, w, size, 32) == theirs, (h, w, size)


# ------------------------------------------------------------------ images by URL (issue 11)
URL = "https://example.com/photos/cat.jpg"


def png_declaring(width, height):
    """A ~100-byte PNG whose header claims width × height RGB pixels: a decompression bomb's signature."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def png_bytes(image):
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def truncated_photo():
    if not PHOTOS:
        pytest.skip(f"no photos at {DATA / 'images'} (shared data lives outside the repo)")
    jpeg = next(p for p in PHOTOS if p.endswith(".jpg"))
    data = Path(jpeg).read_bytes()
    return data[:len(data) // 2]


def serve(monkeypatch, data):
    """Make minibridge.fetch.fetch_url return `data` for any URL; returns the list of URLs asked for."""
    import minibridge.fetch

    asked = []
    monkeypatch.setattr(minibridge.fetch, "fetch_url", lambda url, **kw: asked.append(url) or data)
    return asked


# (what the server sends, how the error must read); each is refused the same way from a file
HOSTILE_DOWNLOADS = {
    "bomb: 10^10 pixels declared": (lambda: png_declaring(100_000, 100_000), r"decompression bomb.*MAX_IMAGE_PIXELS"),
    "bomb: 1x-2x the limit": (lambda: png_bytes(PIL.Image.new("RGB", (40, 40))), r"decompression bomb.*MAX_IMAGE_PIXELS"),
    "an HTML page": (lambda: b"<!DOCTYPE html><html><body>Not found</body></html>",
                     r"as an image: it starts with b'<!DOCTYPE html><', which is no image format"),
    "a truncated JPEG": (truncated_photo, r"as an image: image file is truncated"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_DOWNLOADS))
def test_a_url_gets_the_checks_of_a_file(kind, tmp_path, monkeypatch):
    make, message = HOSTILE_DOWNLOADS[kind]
    data = make()
    if "1x-2x" in kind:  # 1600 px: between 1x and 2x the limit, where Pillow only warns
        monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    asked = serve(monkeypatch, data)
    proc = BridgeTowerImageProcessor()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape either
        with pytest.raises(ValueError, match=message) as by_url:
            proc(URL)
        assert asked == [URL] and URL in str(by_url.value)
        path = tmp_path / "cat.jpg"
        path.write_bytes(data)
        with pytest.raises(ValueError) as by_path:
            proc(str(path))
    assert str(by_url.value).replace(URL, "NAME") == str(by_path.value).replace(str(path), "NAME")


def test_a_url_in_any_case_is_fetched_and_decoded_like_the_file(tmp_path, monkeypatch):
    image = noise(37, 53)
    url = "HTTP://Example.COM/cat.png"  # schemes are case-insensitive: this is a URL, not a path
    asked = serve(monkeypatch, png_bytes(PIL.Image.fromarray(image)))
    assert np.array_equal(load_image(url), image) and asked == [url]
    PIL.Image.fromarray(image).save(tmp_path / "cat.png")
    assert np.array_equal(BridgeTowerImageProcessor()(url).pixel_values,
                          BridgeTowerImageProcessor()(tmp_path / "cat.png").pixel_values)


def test_a_failed_download_names_the_url(monkeypatch):
    import minibridge.fetch

    def refuse(url, **kw):
        raise minibridge.fetch.FetchError(f"could not download {url}: HTTP Error 404: Not Found")

    monkeypatch.setattr(minibridge.fetch, "fetch_url", refuse)
    with pytest.raises(OSError, match=f"could not download {URL}: HTTP Error 404"):
        BridgeTowerImageProcessor()(URL)


# ------------------------------------------------------------------ wide grey modes (issue 11)
def test_wide_grey_modes_are_clipped_as_the_reference_does_and_say_so(reference_module, tmp_path):
    """16-bit, 32-bit and float grey: transformers' PIL backend neither scales nor refuses them; it
    converts with Pillow, which clips to 0…255 (a 16-bit scan comes out white). We keep its pixels,
    bit for bit, and warn with the conversion that keeps the picture."""
    rng = np.random.RandomState(5)
    scan = rng.randint(0, 65536, (45, 61)).astype(np.uint16)
    PIL.Image.fromarray(scan).save(tmp_path / "scan16.png")  # a real 16-bit grey PNG file
    images = {
        "I;16": (str(tmp_path / "scan16.png"), "I;16 with values", "v / 256"),
        "I": (PIL.Image.fromarray(rng.randint(-500, 70000, (45, 61)).astype(np.int32)), "I with values", "v / 256"),
        "F": (PIL.Image.fromarray((rng.randn(45, 61) * 300).astype(np.float32)), "F with values", "v / 256"),
        "F in [0, 1]": (PIL.Image.fromarray(rng.rand(45, 61).astype(np.float32)), r"F with values 0\.\d+…0\.\d+",
                        "v \\* 255"),
    }
    mine, ref = BridgeTowerImageProcessor(), reference_processor(reference_module, 288)
    for name, (image, mode, fix) in images.items():
        with pytest.warns(UserWarning, match=rf"mode {mode}.*as transformers does.*im\.point\(lambda v: {fix}\)"):
            pixels = mine(image).pixel_values
        with PIL.Image.open(image) if isinstance(image, str) else contextlib.nullcontext(image) as im:
            assert_pixels_close(pixels, ref(im, return_tensors="np")["pixel_values"], f"mode {name}")
    # the suggested conversion keeps the picture: v / 256 is the top byte of a 16-bit value
    with PIL.Image.open(tmp_path / "scan16.png") as im:
        grey = load_image(im.point(lambda v: v / 256).convert("L"))
    assert np.array_equal(grey[:, :, 0], scan >> 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16-bit data that fits 0…255 converts exactly: no warning
        assert np.array_equal(load_image(PIL.Image.fromarray(scan >> 8))[:, :, 0], scan >> 8)


# ------------------------------------------------------------------ channel layouts (issue 11)
# transformers infers the layout: channels-first when the first axis is 1, 3 or 4 (even when the last
# is too: it then warns and still takes the first), channels-last when only the last is.
LAYOUTS = [((3, 20, 30), False), ((1, 20, 30), False), ((4, 20, 30), False), ((20, 30, 3), False),
           ((20, 30, 4), False), ((3, 5, 3), True), ((1, 2, 1), True), ((3, 4, 4), True), ((4, 6, 4), True),
           ((4, 4, 3), True), ((1, 1, 3), True), ((3, 20, 1), True)]


@pytest.mark.parametrize("shape, ambiguous", LAYOUTS, ids=[str(s) for s, _ in LAYOUTS])
def test_channel_layouts_match_reference(reference_module, shape, ambiguous):
    image = np.random.RandomState(sum(shape)).randint(0, 256, shape).astype(np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mine = BridgeTowerImageProcessor()(image).pixel_values
    said = [str(w.message) for w in caught if "could be [C, H, W] or [H, W, C]" in str(w.message)]
    if ambiguous:
        assert said and str(shape) in said[0] and 'input_data_format="channels_last"' in said[0], said
    else:
        assert not said, said
    assert_pixels_close(mine, reference_pixels(reference_processor(reference_module, 288), image, 288), str(shape))


def test_an_explicit_layout_is_followed_without_a_warning(reference_module):
    image = noise(4, 4, 3, seed=3)  # 4 rows of 4 RGB pixels, which the shape alone cannot tell
    ref = reference_processor(reference_module, 288)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mine = BridgeTowerImageProcessor()(image, input_data_format="channels_last").pixel_values
        first = BridgeTowerImageProcessor()(image.transpose(2, 0, 1), input_data_format="channels_first").pixel_values
    theirs = ref(image, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    assert_pixels_close(mine, theirs, "[4, 4, 3] as channels-last")
    assert np.array_equal(first, mine)
    assert np.array_equal(mine, BridgeTowerImageProcessor()(PIL.Image.fromarray(image)).pixel_values)
    with pytest.raises(ValueError, match=r"input_data_format must be .*got 'NHWC'"):
        BridgeTowerImageProcessor()(image, input_data_format="NHWC")
    with pytest.raises(ValueError, match=r"channels-first image array must be \[C, H, W\] with C in \(1, 3, 4\), "
                                         r"got shape \(20, 30, 3\)"):
        BridgeTowerImageProcessor()(noise(20, 30), input_data_format="channels_first")


# ------------------------------------------------------------------ preprocessor_config.json fields (issue 11)
@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid UTF-8 JSON"),
    (b'{"size": "\xff"}', "is not valid UTF-8 JSON"),
    ("[288]", "should hold a JSON object of settings, found list"),
    ({"size": {"shortest_edge": 10 ** 6}}, r"size.shortest_edge must be an integer from 1 to 4096, got 1000000"),
    ({"size": 0}, r"size must be an integer from 1 to 4096, got 0"),
    ({"size": 288.5}, r"size must be an integer from 1 to 4096, got 288.5"),
    ({"size": True}, r"size must be an integer from 1 to 4096, got True"),
    ({"crop_size": {"height": 5000, "width": 5000}}, r"crop_size.height must be an integer from 1 to 4096, got 5000"),
    ({"size_divisor": 0}, r"size_divisor must be an integer from 1 to 288, got 0"),
    ({"size": 180, "size_divisor": 256}, r"size_divisor must be an integer from 1 to 180, got 256"),
    ({"rescale_factor": float("nan")}, r"rescale_factor must be a finite number > 0, got nan"),
    ({"rescale_factor": 0}, r"rescale_factor must be a finite number > 0, got 0"),
    ({"rescale_factor": "1/255"}, r"rescale_factor must be a finite number > 0, got '1/255'"),
    ({"image_mean": [0.5, 0.5]}, r"image_mean must be three numbers, one per RGB channel, got \[0.5, 0.5\]"),
    ({"image_mean": [0.5, "x", 0.5]}, r"image_mean\[1\] must be a finite number, got 'x'"),
    ({"image_std": [0.2, 0, 0.2]}, r"image_std\[1\] must be a finite number > 0, got 0"),
    ({"image_std": [0.2, float("inf"), 0.2]}, r"image_std\[1\] must be a finite number > 0, got inf"),
    ({"do_normalize": "false"}, r"do_normalize must be true or false, got 'false'"),
])
def test_bad_preprocessor_configs_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "preprocessor_config.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text if isinstance(text, str) else json.dumps(text), encoding="utf-8")  # NaN, Infinity too
    with pytest.raises(ValueError, match=message) as e:
        BridgeTowerImageProcessor.from_pretrained(tmp_path)
    assert str(path) in str(e.value)


def test_fields_are_checked_without_a_file_too():
    with pytest.raises(ValueError, match="size_divisor must be an integer from 1 to 288, got 0"):
        BridgeTowerImageProcessor(size_divisor=0)
    assert BridgeTowerImageProcessor(image_mean=0.5, image_std=0.5).image_std == (0.5, 0.5, 0.5)
