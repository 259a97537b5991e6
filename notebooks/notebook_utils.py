"""What the walkthrough notebooks (notebooks/*.ipynb) share: which checkpoint, which photos, how to
show normalised pixels. It lives beside them (a notebook runs in this folder) and is not part of
the package: nothing here computes any part of the model (CONTRIBUTING.md habit 13).

    from notebook_utils import model_id, sample_photo
    model = mb.BridgeTowerForMaskedLM.from_pretrained(model_id("BridgeTower/bridgetower-base-itm-mlm"))
    photo, source = sample_photo()            # a PIL image and where it came from

The offline switch: when the environment variable MINIBRIDGE_MODEL names a local checkpoint folder
(config.json + model.safetensors + tokenizer and preprocessor files), every notebook loads that
folder instead of the Hub id it names, and takes its photos from disk instead of the network.
This is how CI runs the notebooks, on a small random checkpoint (weights.save_random_checkpoint):

    MINIBRIDGE_MODEL=/tmp/tiny jupyter nbconvert --execute --to notebook notebooks/01_quick_start.ipynb

Photos: online, COCO val2017 images by URL; offline (or when a download fails), the same photos
from the folder in MINIBRIDGE_PHOTOS when it holds them (files named by COCO id, e.g.
000000039769.jpg), else images that ship with matplotlib.
"""

import io
import os
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image

from minibridge.image_processing import pil_to_rgb

MODEL_ENV = "MINIBRIDGE_MODEL"
PHOTOS_ENV = "MINIBRIDGE_PHOTOS"

# (COCO val2017 id, a caption of it from the COCO annotations): the photos the notebooks use, the
# two-cats photo of the BridgeTower model cards first.
COCO_PHOTOS = (
    (39769, "Two cats sleeping with a remote control near each of them."),
    (397133, "A man is in a kitchen making pizzas."),
    (377575, "A dog is tied to a fire hydrant."),
    (99053, "A bowl of noodles, meat and broccoli with a fork."),
    (214753, "Two equestrians riding their horses on the beach together."),
)
COCO_URL = "http://images.cocodataset.org/val2017/{:012d}.jpg"

# The last resort offline: pictures inside matplotlib's sample data (matplotlib.cbook.get_sample_data).
MATPLOTLIB_PHOTOS = (
    ("grace_hopper.jpg", "A portrait of a woman in a navy uniform."),
    ("Minduka_Present_Blue_Pack.png", "A blue gift box tied with a ribbon."),
    ("logo2.png", "The matplotlib logo, blue letters on white."),
)


def offline():
    """True when MINIBRIDGE_MODEL is set: use the local checkpoint and photos from disk, no network."""
    return bool(os.environ.get(MODEL_ENV))


def model_id(default):
    """The checkpoint a notebook loads: the folder in $MINIBRIDGE_MODEL if set, else `default` (a Hub id)."""
    return os.environ.get(MODEL_ENV) or default


def photo_folder():
    """The folder named by MINIBRIDGE_PHOTOS, or None."""
    folder = os.environ.get(PHOTOS_ENV)
    return Path(folder) if folder and Path(folder).is_dir() else None


def sample_photo():
    """(PIL RGB image, where it came from): the COCO two-cats photo, or the best offline stand-in."""
    return sample_photos(1)[0][:2]


def sample_photos(n=len(COCO_PHOTOS)):
    """n photos with a caption each: [(PIL RGB image, source, caption), …].

    Online: COCO by URL. Offline or on a failed download: the same COCO photos from $MINIBRIDGE_PHOTOS,
    else matplotlib's sample pictures (fewer than n when there are not that many).
    """
    if not offline():
        try:
            return [(_download(COCO_URL.format(i)), COCO_URL.format(i), caption) for i, caption in COCO_PHOTOS[:n]]
        except OSError as e:
            print(f"(could not download the COCO photos: {e}; using photos from disk)")
    folder = photo_folder()
    if folder is not None:
        found = []
        for i, caption in COCO_PHOTOS[:n]:
            for suffix in (".jpg", ".png"):
                path = folder / f"{i:012d}{suffix}"
                if path.is_file():
                    found.append((_open(path), str(path), caption))
                    break
        if found:
            return found
    import matplotlib.cbook

    return [(_open(matplotlib.cbook.get_sample_data(name, asfileobj=False)), f"matplotlib sample data: {name}", caption)
            for name, caption in MATPLOTLIB_PHOTOS[:n]]


def displayable(pixel_values, image_processor):
    """Undo the processor's normalisation for plotting: float32 [3, H, W] -> uint8 [H, W, 3]."""
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(image_processor.image_std, dtype=np.float32)[:, None, None]
    rgb = (np.asarray(pixel_values) * std + mean) / image_processor.rescale_factor  # [3, H, W], 0..255
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _download(url, timeout=20):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return _open(io.BytesIO(response.read()))


def _open(source):
    """An RGB PIL image; transparency goes on white, as the image processor does (pil_to_rgb)."""
    with PIL.Image.open(source) as im:
        return PIL.Image.fromarray(pil_to_rgb(im))
