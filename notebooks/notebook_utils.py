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

Without MINIBRIDGE_MODEL and without the Hub (and no cached copy), `model_id` fails at once with the
command that makes an offline checkpoint (OFFLINE_HOWTO), instead of a download that times out.

Honest pictures: `show()` replaces plt.show() in the notebooks. It stamps RANDOM_STAMP across every
figure drawn from a random checkpoint (one whose config.json carries weights.RANDOM_MARK), so a
picture of noise never passes for what BridgeTower learned; figures that do not depend on the
weights (a photo, the tokenizer) say so with show(from_weights=False).

Exercises: `show_source(fn)` prints a package function's source from the installed package, with
every `# BEGIN SOLUTION` … `# END SOLUTION` region replaced by a one-line placeholder naming its
assignment component, so no notebook shows an assignment's solution (CONTRIBUTING.md habit 14).
"""

import inspect
import io
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image

from minibridge import hub
from minibridge.fetch import fetch_url
from minibridge.image_processing import pil_to_rgb
from minibridge.weights import random_mark

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


# What to do without the Hub: the two lines of notebooks/README.md ("Offline"), run from the checkout.
OFFLINE_HOWTO = ("    minibridge random-checkpoint weights/random-base --size base --tokenizer PATH/TO/roberta-base\n"
                 "    MINIBRIDGE_MODEL=weights/random-base jupyter lab notebooks/")
# Seconds to wait for the Hub before saying it cannot be reached (a download would retry for ~40 s).
HUB_PROBE_TIMEOUT = 5
CHECKOUT = Path(__file__).resolve().parents[1]  # a relative MINIBRIDGE_MODEL may be relative to here


class NoCheckpointError(RuntimeError):
    """No checkpoint to load: MINIBRIDGE_MODEL unset and the Hub unreachable, or it names no folder."""


def model_id(default):
    """The checkpoint a notebook loads: the folder in $MINIBRIDGE_MODEL if set, else `default` (a Hub id).

    Fails at once (NoCheckpointError, naming MINIBRIDGE_MODEL and the command that makes an offline
    checkpoint) when the variable names no folder, or when it is unset, `default` is not cached and
    the Hub cannot be reached.
    """
    folder = os.environ.get(MODEL_ENV)
    if folder:
        found = _model_folder(folder)
        if found is not None:
            return str(found)
        raise NoCheckpointError(f"{MODEL_ENV}={folder} names no folder (looked in {Path.cwd()} and {CHECKOUT}). "
                                f"Make a random checkpoint there, from the checkout:\n{OFFLINE_HOWTO}")
    if not hub.cached(default):
        why = hub_unreachable(default)
        if why:
            raise NoCheckpointError(
                f"Cannot load {default}: {why}, no copy of it is cached, and {MODEL_ENV} is not set. "
                f"To run the notebooks offline, make a checkpoint of random weights (its pictures and scores "
                f"are noise; the code, the shapes and the exercises still work; the base size keeps notebook "
                f"3's 288-pixel images and 16-pixel patches) and point {MODEL_ENV} at it, from the checkout:\n"
                f"{OFFLINE_HOWTO}\n"
                f"(or, in a running notebook: import os; os.environ[\"{MODEL_ENV}\"] = \"../weights/random-base\", "
                f"then run this cell again).")
    return default


def _model_folder(folder):
    """The checkpoint folder that MINIBRIDGE_MODEL=`folder` names, or None when there is none.

    A relative path as written in the README (from the checkout) also works from notebooks/, where
    Jupyter starts the kernel.
    """
    return next((c for c in (Path(folder).expanduser(), CHECKOUT / folder) if c.is_dir()), None)


def hub_unreachable(repo_id, timeout=HUB_PROBE_TIMEOUT):
    """Why the Hugging Face Hub cannot serve `repo_id` now (a short phrase), or None when it answers."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in hub._TRUE:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered (even "not found" or "rate limited" is an answer): the loader explains
    except (OSError, ValueError) as e:  # URLError, a timeout, no route, a malformed endpoint
        return f"the Hugging Face Hub cannot be reached ({endpoint}: {getattr(e, 'reason', e)})"
    return None


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


# ---- honest pictures -------------------------------------------------------------------------------

RANDOM_STAMP = "random weights: this picture is noise"
STAMP_GID = "minibridge-random-weights"  # the stamp's matplotlib id, to find it (and not stamp twice)
FIGURES = []  # one (from_weights, stamped) per figure `show` has shown in this process


def random_checkpoint(folder=None):
    """The random-weights note of the notebooks' checkpoint ($MINIBRIDGE_MODEL, or `folder`), or None.

    None for a Hub id and for a trained checkpoint: only `minibridge random-checkpoint` (and
    weights.save_random_checkpoint) write the mark into config.json.
    """
    folder = folder or os.environ.get(MODEL_ENV)
    found = _model_folder(folder) if folder else None
    return None if found is None else random_mark(found)


def stamp(fig, folder=None):
    """Write RANDOM_STAMP across `fig` when the checkpoint is random (see random_checkpoint). Returns whether it is."""
    if random_checkpoint(folder) is None:
        return False
    if not any(t.get_gid() == STAMP_GID for t in fig.texts):
        width = fig.get_size_inches()[0]
        fig.text(0.5, 0.5, RANDOM_STAMP, gid=STAMP_GID, ha="center", va="center", rotation=12,
                 fontsize=max(8.0, min(26.0, 2.2 * width)), fontweight="bold", color="red", alpha=0.45,
                 zorder=1000, bbox=dict(boxstyle="round", facecolor="white", edgecolor="red", alpha=0.55))
    return True


def show(*, from_weights=True):
    """plt.show() for the notebooks: first stamps each open figure drawn from a random checkpoint.

    from_weights=False for a figure that does not depend on the model's weights (a photo, the
    tokenizer, the resize steps): it is what a trained model sees too, so it gets no stamp.
    """
    import matplotlib.pyplot as plt

    for number in plt.get_fignums():
        fig = plt.figure(number)
        FIGURES.append((from_weights, from_weights and stamp(fig)))
    plt.show()


# ---- the package's source, without the solutions -----------------------------------------------------


def source_without_solutions(fn):
    """The source of package function `fn`, each `# BEGIN SOLUTION` … `# END SOLUTION` region replaced by
    one line: "# … exercise: component X …" (the region's lines are the assignment's solution)."""
    from minibridge.assignments.build import BEGIN, END
    from minibridge.assignments.components import component_of

    lines, start = inspect.getsourcelines(fn)
    module = fn.__module__.removeprefix("minibridge.")
    component = component_of(f"{module}.{fn.__name__}")
    name = component.name if component else "?"
    out, inside = [], False
    for line in lines:
        marker = line.strip()
        if marker == BEGIN:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}# … exercise: component {name} (notebooks/assignments/README.md) …\n")
        elif marker == END:
            inside = False
        elif not inside:
            out.append(line)
    path = Path(inspect.getsourcefile(fn))
    where = f"# {path.parent.name}/{path.name}, line {start}: {fn.__module__}.{fn.__qualname__}\n"
    return where + "".join(out)


def show_source(*functions):
    """Print each package function's source as the installed package has it, solutions left out."""
    print("\n\n".join(source_without_solutions(fn).rstrip("\n") for fn in functions))


# ---- pixels ---------------------------------------------------------------------------------------------


def displayable(pixel_values, image_processor):
    """Undo the processor's normalisation for plotting: float32 [3, H, W] -> uint8 [H, W, 3]."""
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(image_processor.image_std, dtype=np.float32)[:, None, None]
    rgb = (np.asarray(pixel_values) * std + mean) / image_processor.rescale_factor  # [3, H, W], 0..255
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _download(url):
    """A photo by URL, through minibridge's bounded download (a deadline and a size cap, fetch.py)."""
    return _open(io.BytesIO(fetch_url(url)))


def _open(source):
    """An RGB PIL image; transparency goes on white, as the image processor does (pil_to_rgb)."""
    with PIL.Image.open(source) as im:
        return PIL.Image.fromarray(pil_to_rgb(im))
