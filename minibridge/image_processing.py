"""BridgeTower image processor, written out from scratch (bridgetower.md §8): photo → pixel_values.

The steps, in reading order (each a function below), mirror transformers' PIL backend:

    load_image              any input → uint8 RGB [H, W, 3], transparency composited on white
    resize_output_size      shortest edge → S, longest edge ≤ 1333/800·S, both floored to a multiple of 32
    resize                  Pillow's bicubic filter (the reference's own call, so equal to the bit)
    center_crop             c × c, zero-padding an image smaller than c
    rescale_and_normalize   × 1/255 in float64 → float32, then (x − mean) / std in float32
    pad_batch               to the batch's largest H, W (bottom/right), with a pixel_mask

Axis legend: B batch, H / W height / width, C = 3 colour channels, S output side.
"""

import json
import warnings
from math import ceil
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
def load_image(image):
    """Any one image (path, PIL image, or array [H, W] / [H, W, C] uint8 or float in [0, 1])
    → uint8 RGB array [H, W, 3]."""
    if isinstance(image, (str, Path)):
        return _open_image(Path(image))
    if isinstance(image, PIL.Image.Image):
        return pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        return array_to_rgb(image)
    hint = "; open the bytes with PIL.Image.open(io.BytesIO(data))" if isinstance(image, (bytes, bytearray)) else ""
    raise TypeError("an image must be a path, a PIL.Image.Image or a numpy array [H, W, C], "
                    f"got {type(image).__name__}{hint}")


def _open_image(path):
    """Decode an image file fully (so a truncated file fails here, not later) and convert it to RGB."""
    if not path.is_file():
        hint = " (minibridge does not download; save the image first)" if str(path).startswith("http") else ""
        raise FileNotFoundError(f"no image file at {path}{hint}")
    with warnings.catch_warnings():
        # subtle: Pillow only *warns* between 1x and 2x its pixel limit; we refuse from 1x, as for
        # images passed in memory, so one limit holds everywhere.
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            with PIL.Image.open(path) as im:
                im.load()
                return pil_to_rgb(im)  # inside the `with`: a closed Pillow image has no pixels
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as err:
            raise ValueError(f"{path}: {err} Raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) "
                             "if you trust this file.") from err
        except (OSError, SyntaxError, EOFError, ValueError) as err:  # unknown format, truncated, corrupt
            raise ValueError(f"cannot read {path} as an image: {err}") from err


def _check_pixel_count(height, width):
    if height == 0 or width == 0:
        raise ValueError(f"the image is empty ({height}×{width} pixels); expected at least 1×1")
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > limit:
        raise ValueError(
            f"the image has {height}×{width} = {height * width} pixels, over Pillow's decompression-bomb "
            f"limit of {limit}; raise PIL.Image.MAX_IMAGE_PIXELS (or set it to None) if you trust it")


def pil_to_rgb(im):
    """A PIL image of any mode → uint8 RGB [H, W, 3], as the reference with do_convert_rgb=True:
    an image with transparency is composited on white, every other mode goes through convert("RGB")."""
    _check_pixel_count(im.height, im.width)
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


def array_to_rgb(a):
    """An array [H, W] or [H, W, C] (C = 1, 3 or 4), uint8 or float in [0, 1] → uint8 RGB [H, W, 3].

    Follows the reference's NumPy path: grey is repeated, alpha is blended onto white in floating point.
    """
    a = _check_array(a)
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


def _check_array(a):
    """Refuse arrays that are not an image, saying what was expected."""
    shape = tuple(a.shape)
    if a.ndim not in (2, 3) or (a.ndim == 3 and shape[-1] not in (1, 3, 4)):
        hint = ("; it looks channels-first, use a.transpose(1, 2, 0)"
                if a.ndim == 3 and shape[0] in (1, 3, 4) else "")
        raise ValueError(f"an image array must be [H, W] or [H, W, C] with C in (1, 3, 4), got shape {shape}{hint}")
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
        self.size = _edge(size, "size")
        self.crop_size = self.size if crop_size is None else _edge(crop_size, "crop_size")
        self.size_divisor = int(size_divisor)
        self.do_resize, self.do_center_crop, self.do_pad = do_resize, do_center_crop, do_pad
        self.do_rescale, self.rescale_factor = do_rescale, rescale_factor
        self.do_normalize, self.image_mean, self.image_std = do_normalize, tuple(image_mean), tuple(image_std)

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
        return cls(**_config_kwargs(json.loads(path.read_text(encoding="utf-8"))))

    def preprocess_one(self, image):
        """One image → float32 [3, c, c] (or [3, h, w] without the crop)."""
        rgb = load_image(image)  # [H, W, 3] uint8
        if self.do_resize:
            rgb = resize(rgb, *resize_output_size(*rgb.shape[:2], self.size, self.size_divisor))
        if self.do_center_crop:
            rgb = center_crop(rgb, self.crop_size)  # [c, c, 3]
        return rescale_and_normalize(rgb, self.rescale_factor, self.image_mean, self.image_std,
                                     self.do_rescale, self.do_normalize)  # [3, c, c]

    def __call__(self, images, return_tensors="np"):
        """One image or a list of images → BatchFeature(pixel_values [B, 3, c, c], pixel_mask [B, c, c])."""
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be 'np' (minibridge computes in NumPy), got {return_tensors!r}")
        arrays = [self.preprocess_one(im) for im in as_image_list(images)]
        if not self.do_pad and len({a.shape for a in arrays}) > 1:
            raise ValueError(f"images of different sizes {sorted({a.shape for a in arrays})} cannot be "
                             "stacked without padding; use do_pad=True or keep the crop")
        pixel_values, pixel_mask = pad_batch(arrays)
        return BatchFeature(pixel_values=pixel_values, pixel_mask=pixel_mask)


def as_image_list(images):
    """One image, a list/tuple of images or a [B, H, W, C] array → a list of single images."""
    if images is None:
        raise TypeError("images is None; expected a path, a PIL image, a numpy array, or a list of them")
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)  # [B, H, W, C] -> B × [H, W, C]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("got an empty list of images; pass at least one")
        return list(images)
    return [images]


def _edge(value, name):
    """An int, {"shortest_edge": n} or a square {"height": n, "width": n} → n."""
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and value.get("height") == value.get("width"):
            return int(value["height"])
        raise ValueError(f"{name} must be an int, {{'shortest_edge': n}} or a square {{'height': n, 'width': n}}, "
                         f"got {value}")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    raise ValueError(f"{name} must be a positive int or a dict, got {value!r}")


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


def _config_kwargs(config):
    """Constructor arguments from a preprocessor_config.json dict, refusing what would change the output."""
    resample = config.get("resample", 3)
    if resample not in (3, "BICUBIC", "bicubic"):
        raise ValueError(f"preprocessor_config.json asks for resample={resample!r}; only bicubic (3) is implemented")
    if config.get("pad_size") is not None:
        raise ValueError("preprocessor_config.json sets pad_size, which is not implemented (pads to the batch)")
    unknown = set(config) - _IGNORED_KEYS - _ARGUMENT_KEYS - {"resample", "pad_size"}
    if unknown:
        warnings.warn(f"preprocessor_config.json: ignoring unknown keys {sorted(unknown)}", stacklevel=3)
    return {k: v for k, v in config.items() if k in _ARGUMENT_KEYS and v is not None}
