"""What the embedding, index, search and Ray tests share: a small checkpoint and a folder of photos.

The checkpoint is TINY with 288-pixel images in 32-pixel patches (81 patches + CLS): a few ms per
image, while each image's pixel_values are the published models' size (3 × 288 × 288 float32, 1 MB),
so holding a collection's pixels at once would show in the peak memory.
"""

import os
import subprocess
import sys

import numpy as np
import PIL.Image

from minibridge.config import TINY_REAL_VOCAB, derived
from minibridge.weights import save_random_checkpoint

from paths import ROBERTA

IMAGE_288 = derived(TINY_REAL_VOCAB, vision_config={"image_size": 288, "patch_size": 32})
BAD_FILES = {  # name: (bytes, what the skip reason must say)
    "im0040_corrupt.jpg": (None, "truncated"),  # the first 400 bytes of a real JPEG
    "im0090_empty.jpg": (b"", "it starts with b''"),
    "im0150_notes.jpg": (b"shopping list: eggs, milk\n", "it starts with b'shopping list"),
}


def make_checkpoint(folder, heads=("itm", "mlm", "itc"), seed=0):
    """A random IMAGE_288 checkpoint; with RoBERTa's tokenizer files when they are here (for texts)."""
    tokenizer = ROBERTA if (ROBERTA / "vocab.json").is_file() else None
    return save_random_checkpoint(folder, IMAGE_288, heads=heads, seed=seed, tokenizer_dir=tokenizer)


def make_photos(folder, count, distinct=8, seed=0):
    """`count` JPEGs im0000.jpg … in `folder` (a few subfolders deep), copies of `distinct` generated
    photos (a colour gradient, noise and a square at a random place), 240 × 320 pixels. Returns the paths."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:240, 0:320]
    originals = []
    for _ in range(distinct):
        rgb = np.stack([x * rng.uniform(0.2, 0.8), y * rng.uniform(0.2, 1.0), (x + y) * rng.uniform(0.1, 0.5)], -1)
        rgb += rng.normal(0, 12, rgb.shape)
        top, left = rng.integers(0, 160), rng.integers(0, 220)
        rgb[top:top + 80, left:left + 100] = rng.uniform(0, 255, 3)
        originals.append(PIL.Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)))
    paths = []
    for i in range(count):
        sub = folder / f"part{i // 100}" if i >= 100 else folder  # subfolders: the search is recursive
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"im{i:04d}.jpg"
        originals[i % distinct].save(path, quality=90)
        paths.append(path)
    return paths


def add_bad_files(folder):
    """The three hostile files of BAD_FILES, placed among the photos' names (so they fall mid-batch)."""
    good = next(folder.rglob("*.jpg")).read_bytes()
    for name, (data, _) in BAD_FILES.items():
        (folder / name).write_bytes(good[:400] if data is None else data)
    return [folder / name for name in BAD_FILES]


# The environment of the child processes: BLAS on one thread. subtle: on a machine whose cores are
# busy with other work, OpenBLAS's spinning threads make a run of these tiny matrix products 3-4x
# slower (measured: 400 photos in 15.5 s on two threads, 4.3 s on one, under a load of 4 on 2 cores).
CHILD_ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "minibridge", *map(str, args)], capture_output=True, text=True,
                          env={**CHILD_ENV, **(env or {})}, timeout=300, **kwargs)
