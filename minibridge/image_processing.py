"""BridgeTower image processor, written out from scratch (bridgetower.md §8): photo → pixel_values.

The steps, in reading order (each a function below), mirror transformers' PIL backend:

    load_image              path, URL, PIL image or array → uint8 RGB [H, W, 3], transparency on white
    resize_output_size      shortest edge → S, longest edge ≤ 1333/800·S, both floored to a multiple of 32
    resize                  Pillow's bicubic filter (the reference's own call, so equal to the bit)
    center_crop             c × c, zero-padding an image smaller than c
    rescale_and_normalize   × 1/255 in float64 → float32, then (x − mean) / std in float32
    pad_batch               to the batch's largest H, W (bottom/right), with a pixel_mask

Axis legend: B batch, H / W height / width, C = 3 colour channels, S output side.
"""

import io
import json
import warnings
from math import ceil, isfinite
from pathlib import Path

import numpy as np
import PIL.Image

from .tokenizer import BatchEncoding

# CLIP's normalisation constants, which BridgeTower's vision tower (a CLIP ViT) was trained with.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class BatchFeature(BatchEncoding):
    """A dict of arrays ({"pixel_values": …, "pixel_mask": …}) with attribute access: the tokenizer's
    BatchEncoding under the name transformers gives the image processor's output."""


# -------------------------------------------------------------------- 1. load and convert to RGB
def load_image(image, input_data_format=None):
    """Any one image (path, http(s) URL, PIL image, or array [H, W], [H, W, C] or [C, H, W], uint8 or
    float in [0, 1]) → uint8 RGB array [H, W, 3].

    input_data_format: "channels_last" or "channels_first" says how a 3-D array is laid out; by default
    it is inferred as the reference does (see array_to_rgb).
    """
    if isinstance(image, str):
        from . import fetch  # lazy: the network code loads only when a string is given

        if fetch.is_url(image):
            try:
                data = fetch.fetch_url(image)
            except fetch.FetchError as e:  # an OSError; its message names the URL and what went wrong
                said = str(e)
                raise fetch.FetchError(said if said.startswith("could not download") else
                                       f"could not download the image: {said}") from None
            return decode_image(data, image)
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            hint = " (a URL must start with http:// or https://)" if str(image).lower().startswith("http") else ""
            raise FileNotFoundError(f"no image file at {path}{hint}")
        return decode_image(path, str(path))
    if isinstance(image, PIL.Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image, input_data_format)
    hint = "; open the bytes with PIL.Image.open(io.BytesIO(data))" if isinstance(image, (bytes, bytearray)) else ""
    raise TypeError("an image must be a path, a URL, a PIL.Image.Image or a numpy array [H, W, C], "
                    f"got {type(image).__name__}{hint}")


def decode_image(source, name):
    """An image file's path, or its bytes, → uint8 RGB [H, W, 3]; `name` (the path or URL) is in every error.

    A file and a download go through these same checks, so they fail with the same message.
    The image is decoded fully here, so a truncated file fails here, not later.
    """
    with warnings.catch_warnings():
        # subtle: Pillow only *warns* between 1x and 2x its pixel limit; we refuse from 1x, as for
        # images passed in memory, so one limit holds everywhere.
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            with PIL.Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                im.load()
                return pil_to_rgb(im, name)  # inside the `with`: a closed Pillow image has no pixels
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
            raise ValueError(f"{name}: {err} Raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) "
                             "if you trust this file.") from err
        except PIL.UnidentifiedImageError as err:  # Pillow's own message names a file object, not `name`
            raise ValueError(f"cannot read {name} as an image: it starts with {_first_bytes(source)!r}, which is no "
                             "image format Pillow knows (expected JPEG, PNG, GIF, WebP, …)") from err
        except (OSError, SyntaxError, EOFError, ValueError) as err:  # truncated, corrupt
            raise ValueError(f"cannot read {name} as an image: {err}") from err


def _first_bytes(source, n=16):
    """The first n bytes of a file (a path) or of bytes: what came instead of an image."""
    if isinstance(source, bytes):
        return source[:n]
    with open(source, "rb") as f:
        return f.read(n)


def _check_pixel_count(height, width):
    if height == 0 or width == 0:
        raise ValueError(f"the image is empty ({height}×{width} pixels); expected at least 1×1")
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > limit:
        raise ValueError(
            f"the image has {height}×{width} = {height * width} pixels, over Pillow's decompression-bomb "
            f"limit of {limit}; raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) if you trust it")


def pil_to_rgb(im, name="the image"):
    """A PIL image of any mode → uint8 RGB [H, W, 3], as the reference with do_convert_rgb=True:
    an image with transparency is composited on white, every other mode goes through convert("RGB")."""
    _check_pixel_count(im.height, im.width)
    _warn_if_clipped(im, name)
    if im.mode == "La":
        # subtle: Pillow cannot convert premultiplied "La" to RGB(A) and the reference crashes;
        # un-premultiplying to "LA" first gives the white composite every other alpha mode gets.
        im = im.convert("LA")
    # subtle: the reference finds alpha by band name, so LAB (whose "A" is the a* colour axis) also
    # goes through RGBA; its alpha comes out opaque, so nothing changes. "RGBa"/"La" have a lowercase a.
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")  # also applies a palette's or a grey PNG's transparent colour
        white = PIL.Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = PIL.Image.alpha_composite(white, rgba)
    return np.array(im.convert("RGB"))  # [H, W, 3] uint8


def _warn_if_clipped(im, name):
    """Warn when a wide grey image (16-bit "I;16", 32-bit "I", float "F") will not survive convert("RGB").

    subtle: Pillow (and so the reference, whose pixels we keep to the bit) clips these to 0…255 without
    scaling: a 16-bit scan comes out nearly white, a float image in [0, 1] nearly black.
    """
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return
    values = np.asarray(im)  # (getextrema refuses the byte-ordered I;16B/L/N modes)
    lo, hi = values.min().item(), values.max().item()
    if lo < 0 or hi > 255:
        result, fix = "clipped to 0…255 (over 255: white)", 'im.point(lambda v: v / 256).convert("L") for 16-bit data'
    elif im.mode == "F" and 0 < hi <= 1:
        result, fix = "rounded to 0 or 1 (black)", 'im.point(lambda v: v * 255).convert("L") for values in [0, 1]'
    else:
        return
    warnings.warn(f"{name} has mode {im.mode} with values {lo}…{hi}: converting it to RGB as transformers "
                  f"does, they are {result}. Scale it to 0…255 first, e.g. {fix}", stacklevel=2)


def array_to_rgb(a, input_data_format=None):
    """An array [H, W], [H, W, C] or [C, H, W] (C = 1, 3 or 4), uint8 or float in [0, 1] → uint8 RGB [H, W, 3].

    Follows the reference's NumPy path: the layout is inferred (see _channels_last), grey is repeated,
    alpha is blended onto white in floating point.
    """
    a = _check_array(_channels_last(a, input_data_format))  # [H, W] or [H, W, C]
    if a.ndim == 2:
        a = a[:, :, None]  # [H, W] -> [H, W, 1]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)  # [H, W, 1] -> [H, W, 3]
    elif a.shape[-1] == 4:
        white = 255 if a.dtype == np.uint8 else 1.0
        alpha = a[..., 3:4] / white  # [H, W, 1]
        blend = alpha * a[..., :3] + (1 - alpha) * white  # [H, W, 3]
        a = np.round(blend).astype(np.uint8) if white == 255 else blend.astype(a.dtype)
    if a.dtype != np.uint8:
        # subtle: quantise as the reference's resize does (via to_pil_image): ×255 in float64, cast to
        # float32, then *truncate*. k/255 stored in float32 or float64 comes back as exactly k.
        a = (a.astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
    return a


CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: the channel counts an image array may have


def _channels_last(a, input_data_format=None):
    """A 3-D array [C, H, W] or [H, W, C] → [H, W, C], inferring the layout as the reference does.

    subtle: transformers (infer_channel_dimension_format) takes a first axis of 1, 3 or 4 as channels;
    when the last axis could be channels too ([3, 4, 4], [1, 1, 3], [4, 4, 3]: tiny images), it still
    takes the first, and says so. We follow it, with a warning, so the pixels stay the reference's.
    """
    if input_data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(f'input_data_format must be "channels_first", "channels_last" or None, got {input_data_format!r}')
    if a.ndim != 3 or input_data_format == "channels_last":
        return a
    if input_data_format == "channels_first":
        if a.shape[0] not in CHANNELS:
            raise ValueError(f"a channels-first image array must be [C, H, W] with C in {CHANNELS}, got shape {a.shape}")
    elif a.shape[0] not in CHANNELS:
        return a  # [H, W, C], or no image at all (_check_array says so)
    elif a.shape[-1] in CHANNELS:
        warnings.warn(f"the image array of shape {a.shape} could be [C, H, W] or [H, W, C]; taking it as "
                      'channels-first [C, H, W], as transformers does. Pass input_data_format="channels_last" '
                      '(or "channels_first") to say which', stacklevel=2)
    return np.moveaxis(a, 0, -1)  # [C, H, W] -> [H, W, C]


def _check_array(a):
    """Refuse arrays that are not an image, saying what was expected."""
    shape = tuple(a.shape)
    if a.ndim not in (2, 3) or (a.ndim == 3 and shape[-1] not in CHANNELS):
        raise ValueError(f"an image array must be [H, W], [H, W, C] or [C, H, W] with C in {CHANNELS}, got shape {shape}")
    _check_pixel_count(shape[0], shape[1])
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"an image array must be uint8 (0…255) or float in [0, 1], got {a.dtype}; "
                        "for integer values 0…255 use a.astype(np.uint8)")
    if not np.isfinite(a).all():
        raise ValueError("the float image array contains NaN or infinity; expected values in [0, 1]")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"a float image array must hold values in [0, 1], got [{lo}, {hi}]; "
                         "for 0…255 values use a.astype(np.uint8)")
    return a


# -------------------------------------------------------------------- 2. resize
def resize_output_size(height, width, shortest_edge=288, size_divisor=32):
    """(H', W') for an H × W image: shortest edge → S, longest ≤ int(1333/800·S), floor to the divisor.

    480×640 → 288×384, 640×480 → 384×288, 100×1000 → 32×448 (S = 288).
    """
    longest = int(1333 / 800 * shortest_edge)  # 479 for 288, 489 for 294
    scale = shortest_edge / min(height, width)
    if height < width:
        new_h, new_w = shortest_edge, scale * width
    else:  # subtle: a square image takes this branch; the results agree anyway
        new_h, new_w = scale * height, shortest_edge
    if max(new_h, new_w) > longest:
        scale = longest / max(new_h, new_w)
        new_h, new_w = scale * new_h, scale * new_w
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)  # round half up
    # subtle: a very long thin image (7×1000) floors its short side to 0 here and the reference
    # crashes; we keep one divisor's worth (32 px) instead, and the crop pads the rest.
    return max(new_h // size_divisor, 1) * size_divisor, max(new_w // size_divisor, 1) * size_divisor


def resize(image, height, width):
    """uint8 [H, W, 3] → uint8 [height, width, 3] with Pillow's bicubic filter (antialiased when
    shrinking, fixed-point, uint8 result; bridgetower.md §8.4 spells it out)."""
    if image.shape[:2] == (height, width):
        return image
    return np.array(PIL.Image.fromarray(image).resize((width, height), PIL.Image.BICUBIC))


# -------------------------------------------------------------------- 3. crop
def center_crop(image, size):
    """[H, W, C] → [size, size, C], cut from the centre (the odd pixel goes bottom/right).

    An image smaller than size is zero-padded first, the larger half of the padding on top/left.
    """
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2  # floor division: negative when too small
    if top < 0 or left < 0:
        # subtle: these zeros are uint8 black *before* normalisation, so they come out as
        # −mean/std ≈ (−1.79, −1.75, −1.48), not 0.
        big_h, big_w = max(size, h), max(size, w)
        pad_top, pad_left = ceil((big_h - h) / 2), ceil((big_w - w) / 2)
        canvas = np.zeros((big_h, big_w) + image.shape[2:], dtype=image.dtype)
        canvas[pad_top:pad_top + h, pad_left:pad_left + w] = image
        image, top, left = canvas, top + pad_top, left + pad_left
    return image[top:top + size, left:left + size]


# -------------------------------------------------------------------- 4. rescale and normalise
def rescale_and_normalize(image, rescale_factor=1 / 255, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                          do_rescale=True, do_normalize=True):
    """uint8 [H, W, 3] → float32 [3, H, W]: x·rescale_factor, then (x − mean) / std.

    subtle: the reference rescales in float64 and rounds to float32 *before* normalising in
    float32; one fused float32 expression would differ by ~1e-7.
    """
    x = image.astype(np.float64) * rescale_factor if do_rescale else image
    x = x.astype(np.float32)
    if do_normalize:
        x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))  # [H, W, 3] -> [3, H, W]


# -------------------------------------------------------------------- 5. batch
def pad_batch(images):
    """list of [3, h, w] → pixel_values [B, 3, H, W] (0.0 bottom/right) and pixel_mask [B, H, W] int64.

    After the crop every image is c × c, so the padding only matters without a crop.
    """
    height = max(im.shape[1] for im in images)
    width = max(im.shape[2] for im in images)
    pixel_values = np.zeros((len(images), 3, height, width), dtype=np.float32)  # [B, 3, H, W]
    pixel_mask = np.zeros((len(images), height, width), dtype=np.int64)  # [B, H, W]
    for k, im in enumerate(images):
        pixel_values[k, :, :im.shape[1], :im.shape[2]] = im
        pixel_mask[k, :im.shape[1], :im.shape[2]] = 1
    return pixel_values, pixel_mask


# -------------------------------------------------------------------- the processor
class BridgeTowerImageProcessor:
    """Images → {"pixel_values": float32 [B, 3, c, c], "pixel_mask": int64 [B, c, c]}, as
    transformers' BridgeTowerImageProcessorPil with do_convert_rgb=True (bridgetower.md §8).

    Crop size: when the checkpoint names none, the crop is `size` (transformers 4.x). transformers 5
    crops to 288 regardless, so the large checkpoints (size 294) get 288×288 and its own model then
    refuses the image (bridgetower.md §8.3); cropping to 294 keeps them working. Pass crop_size to choose.
    """

    def __init__(self, size=288, crop_size=None, size_divisor=32, do_resize=True, do_center_crop=True,
                 do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
                 image_std=OPENAI_CLIP_STD, do_pad=True):
        # Every field is checked here, where a bad preprocessor_config.json is read, rather than deep
        # inside a resize (a huge size) or a division (size_divisor 0, image_std 0).
        self.size = _edge(size, "size")
        self.crop_size = self.size if crop_size is None else _edge(crop_size, "crop_size")
        self.size_divisor = _whole(size_divisor, "size_divisor", 1, self.size)
        for name, flag in (("do_resize", do_resize), ("do_center_crop", do_center_crop), ("do_rescale", do_rescale),
                           ("do_normalize", do_normalize), ("do_pad", do_pad)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        self.do_resize, self.do_center_crop, self.do_pad = do_resize, do_center_crop, do_pad
        self.do_rescale, self.rescale_factor = do_rescale, _number(rescale_factor, "rescale_factor", positive=True)
        self.do_normalize = do_normalize
        self.image_mean, self.image_std = _three(image_mean, "image_mean"), _three(image_std, "image_std", positive=True)

    def __repr__(self):
        return (f"BridgeTowerImageProcessor(size={self.size}, crop_size={self.crop_size}, "
                f"size_divisor={self.size_divisor})")

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None):
        """Read preprocessor_config.json of a folder (or Hub repo id): the legacy form ({"size": 294,
        "max_text_len": 50, …}) or the dict forms transformers writes ({"size": {"shortest_edge": 288}, …})."""
        from .hub import resolve

        folder = resolve(name_or_path, revision, cache_dir, weights=False)
        path = Path(folder) / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no preprocessor_config.json in {folder}")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not valid UTF-8 JSON: {err}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} should hold a JSON object of settings, found {type(config).__name__}")
        try:
            return cls(**_config_kwargs(config, path))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def preprocess_one(self, image, input_data_format=None):
        """One image → float32 [3, c, c] (or [3, h, w] without the crop)."""
        rgb = load_image(image, input_data_format)  # [H, W, 3] uint8
        if self.do_resize:
            rgb = resize(rgb, *resize_output_size(*rgb.shape[:2], self.size, self.size_divisor))
        if self.do_center_crop:
            rgb = center_crop(rgb, self.crop_size)  # [c, c, 3]
        return rescale_and_normalize(rgb, self.rescale_factor, self.image_mean, self.image_std,
                                     self.do_rescale, self.do_normalize)  # [3, c, c]

    def __call__(self, images, return_tensors="np", input_data_format=None):
        """One image or a list of images → BatchFeature(pixel_values [B, 3, c, c], pixel_mask [B, c, c]).

        input_data_format: "channels_first" / "channels_last" for arrays, else inferred (load_image)."""
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be 'np' (minibridge computes in NumPy), got {return_tensors!r}")
        arrays = [self.preprocess_one(im, input_data_format) for im in as_image_list(images)]
        if not self.do_pad and len({a.shape for a in arrays}) > 1:
            raise ValueError(f"images of different sizes {sorted({a.shape for a in arrays})} cannot be "
                             "stacked without padding; use do_pad=True or keep the crop")
        pixel_values, pixel_mask = pad_batch(arrays)
        return BatchFeature(pixel_values=pixel_values, pixel_mask=pixel_mask)


def as_image_list(images):
    """One image, a list/tuple of images or a [B, H, W, C] (or [B, C, H, W]) array → a list of single images."""
    if images is None:
        raise TypeError("images is None; expected a path, a PIL image, a numpy array, or a list of them")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)  # [B, H, W, C] -> B × [H, W, C]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("got an empty list of images; pass at least one")
        return list(images)
    return [images]


# The published checkpoints resize to 288 or 294 px. A side of 4096 already means a 4096×6825 resize and
# ~65,000 patches for the vision tower; anything larger is a typo (10^6 would start a multi-GB resize).
MAX_SIDE = 4096


def _edge(value, name):
    """An int, {"shortest_edge": n} or a square {"height": n, "width": n} → n, with 1 ≤ n ≤ MAX_SIDE."""
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return _whole(value["shortest_edge"], f"{name}.shortest_edge", 1, MAX_SIDE)
        if "height" in value and value.get("height") == value.get("width"):
            return _whole(value["height"], f"{name}.height", 1, MAX_SIDE)
        raise ValueError(f"{name} must be an int, {{'shortest_edge': n}} or a square {{'height': n, 'width': n}}, "
                         f"got {value}")
    return _whole(value, name, 1, MAX_SIDE)


def _whole(value, name, low, high):
    """An integer in [low, high], or a ValueError naming the field, the range and the value."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and low <= value <= high:
        return int(value)
    raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _number(value, name, positive=False):
    """A finite number (> 0 if positive), or a ValueError naming the field and the value."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and isfinite(value) \
            and (value > 0 or not positive):
        return float(value)
    raise ValueError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")


def _three(value, name, positive=False):
    """One number per RGB channel (a single number is used for all three) → a tuple of 3 floats."""
    values = [value] * 3 if isinstance(value, (int, float)) else value
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != 3:
        raise ValueError(f"{name} must be three numbers, one per RGB channel, got {value!r}")
    return tuple(_number(v, f"{name}[{i}]", positive) for i, v in enumerate(values))


# Keys of preprocessor_config.json that change nothing here, with the reason.
_IGNORED_KEYS = {
    "max_text_len",  # the original training length; the reference ignores it too (bridgetower.md §9)
    "tokenizer", "vocab_size",  # legacy descriptions of the text side
    "image_processor_type", "feature_extractor_type", "processor_class",  # class names
    "do_convert_rgb",  # we always convert to RGB, which leaves RGB input unchanged
    "default_to_square",  # BridgeTower's resize keeps the aspect ratio whatever it says
    "data_format", "input_data_format", "return_tensors", "device", "disable_grouping",  # call options
}
_ARGUMENT_KEYS = {"size", "crop_size", "size_divisor", "do_resize", "do_center_crop", "do_rescale",
                  "rescale_factor", "do_normalize", "image_mean", "image_std", "do_pad"}


def _config_kwargs(config, path="preprocessor_config.json"):
    """Constructor arguments from a preprocessor_config.json dict, refusing what would change the output."""
    resample = config.get("resample", 3)
    if resample not in (3, "BICUBIC", "bicubic"):
        raise ValueError(f"resample={resample!r}; only bicubic (3) is implemented")
    if config.get("pad_size") is not None:
        raise ValueError("pad_size is set, which is not implemented (pads to the batch)")
    unknown = set(config) - _IGNORED_KEYS - _ARGUMENT_KEYS - {"resample", "pad_size"}
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {sorted(unknown)}", stacklevel=3)
    return {k: v for k, v in config.items() if k in _ARGUMENT_KEYS and v is not None}
