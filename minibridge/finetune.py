"""Fine-tune a checkpoint's ITM (or ITC) head on image-caption pairs: `minibridge finetune` in Python.

    pairs = read_pairs("photos.csv")                    # [(image path or URL, caption)]
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(name)
    processor = mb.BridgeTowerProcessor.from_pretrained(name)
    losses = train(model, processor, pairs, epochs=3, lr=1e-5)
    save(model, name_folder, "weights/my-itm")          # weights + the tokenizer and preprocessor files

ITM learns "does this caption fit this image?" from the pairs (label 1) and as many mismatched
negatives (label 0): each image with the caption of another pair. ITC learns the contrastive loss
over the pairs of a batch (the i-th caption goes with the i-th image; the others are its negatives).
"""

import csv
import shutil
import sys
from pathlib import Path

import numpy as np

from .optim import AdamW

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# The files besides the weights that make a folder a checkpoint `minibridge infer` runs.
PROCESSOR_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "preprocessor_config.json",
                   "special_tokens_map.json", "tokenizer_config.json")
# --train: what each choice trains, as weight-name prefixes for loss_and_grads (None = every weight).
HEADS = {"itm": ["itm_score"],
         "itc": ["itc_text_head", "itc_image_head", "itc_cross_modal_head", "logit_scale"]}
# The cross-modal layers, transforms, link towers and poolers; the token types and the vision tower's
# ln_post, which also feed the cross-modal layers, stay frozen with the towers.
CROSS = ["bridgetower.cross_modal"]


def read_pairs(data):
    """A CSV file with header `image,caption` (paths relative to the CSV's folder, or URLs), or a folder
    where each image x.jpg has its caption in x.txt → [(image, caption)], at least 2 pairs.
    A missing image, an empty caption or a missing caption file is refused by file (and line)."""
    data = Path(data)
    if data.is_dir():
        pairs = _read_folder(data)
    elif data.is_file():
        pairs = _read_csv(data)
    else:
        raise FileNotFoundError(f"no such file or folder: {data}; expected a CSV file (image,caption) or a "
                                "folder of images with a caption file x.txt beside each image x.jpg")
    if len(pairs) < 2:
        raise ValueError(f"{data} holds {len(pairs)} image-caption pair(s); fine-tuning needs at least 2 "
                         "(a negative pairs an image with the caption of another pair)")
    return pairs


def _read_csv(path):
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's BOM is not a name
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: expected a CSV file whose header is `image,caption`, got "
                                 f"{','.join(reader.fieldnames or []) or 'an empty file'!r}")
            pairs = []
            for row in reader:
                where = f"{path}, line {reader.line_num}"
                image, caption = (row["image"] or "").strip(), (row["caption"] or "").strip()
                if not image:
                    raise ValueError(f"{where}: no image (expected a path or an http(s) URL)")
                if not image.lower().startswith(("http://", "https://")):
                    image = str(path.parent / image)  # relative to the CSV, wherever the command runs
                    if not Path(image).is_file():
                        raise FileNotFoundError(f"{where}: no image file at {image}")
                if not caption:
                    raise ValueError(f"{where}: the caption of {image} is empty; expected a text")
                pairs.append((image, caption))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); expected a CSV file") from None
    return pairs


def _read_folder(folder):
    pairs = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        text = image.with_suffix(".txt")
        if not text.is_file():
            raise FileNotFoundError(f"{image} has no caption file: expected {text.name} beside it")
        try:
            caption = text.read_text(encoding="utf-8-sig").strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"{text} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not caption:
            raise ValueError(f"{text} is empty; expected the caption of {image.name}")
        pairs.append((str(image), caption))
    return pairs


def batches(pairs, batch_size, rng, negatives=True):
    """One epoch of (images, captions, labels), the pairs shuffled by `rng` (a numpy Generator).

    With negatives (ITM): a batch of k pairs (label 1) followed by k negatives (label 0), the i-th
    image with the caption of another pair that is not one of that image's own captions; 2k rows.
    Without (ITC): the k pairs alone, labels None; k >= 2 (spans).
    """
    if not negatives:
        check_contrastive(len(pairs), batch_size)
    images = [image for image, _ in pairs]
    captions = [caption for _, caption in pairs]
    true = set(pairs)
    if negatives:
        own = {}  # image -> its captions
        for image, caption in true:
            own.setdefault(image, set()).add(caption)
        for image, mine in own.items():  # every image needs a caption that is not its own
            if len(mine) == len(set(captions)):
                raise ValueError(f"every caption belongs to {image}: no negative can be made for it; "
                                 "give pairs of at least two images with different captions")
    order = rng.permutation(len(pairs))
    for start, stop in spans(len(pairs), batch_size, contrastive=not negatives):
        some = order[start:stop]
        batch_images = [images[i] for i in some]
        batch_captions = [captions[i] for i in some]
        if not negatives:
            yield batch_images, batch_captions, None
            continue
        wrong = []
        for image in batch_images:
            # subtle: drawn again until the caption is not one of the image's own (rarely more than once)
            j = int(rng.integers(len(pairs)))
            while (image, captions[j]) in true:
                j = int(rng.integers(len(pairs)))
            wrong.append(captions[j])
        labels = np.array([1] * len(some) + [0] * len(some))  # [2k]
        yield batch_images + batch_images, batch_captions + wrong, labels


def spans(n, batch_size, contrastive=False):
    """[(start, stop)] of an epoch's batches over n pairs: batch_size each, the last one what is left.

    subtle: the contrastive loss of a single pair is 0 (its caption has no other image to be told
    from), so a step on it would only decay the weights: for ITC a last batch of one pair joins the one
    before (batch_size + 1 pairs).
    """
    starts = list(range(0, n, batch_size))
    if contrastive and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def check_contrastive(n, batch_size):
    """Refuse what would give the contrastive loss a batch of one pair: a batch_size or a data set of 1."""
    if batch_size < 2:
        raise ValueError(f"the contrastive (ITC) loss needs batches of at least 2 pairs (it tells each caption's "
                         f"image from the others of its batch), got batch_size {batch_size}")
    if n < 2:
        raise ValueError(f"the contrastive (ITC) loss needs at least 2 image-caption pairs, got {n}")


def trainable_prefixes(head, train):
    """The `trainable` of loss_and_grads for --train "heads", "cross" (heads + cross-modal) or "all"."""
    if train not in ("heads", "cross", "all"):
        raise ValueError(f"train must be 'heads', 'cross' or 'all', got {train!r}")
    return None if train == "all" else HEADS[head] + (CROSS if train == "cross" else [])


def train(model, processor, pairs, epochs=1, batch_size=8, lr=1e-5, weight_decay=0.01, train="cross", seed=0,
          save_every=None, save=None, log=sys.stderr):
    """Fine-tune `model` (ITM or contrastive) in place with AdamW on `pairs` [(image, caption)].

    batch_size counts pairs (an ITM batch also holds as many negatives; an ITC batch needs 2 or more, and
    a last batch of one pair joins the one before: spans). train: "heads", "cross" or "all"
    (trainable_prefixes). save: a function of no arguments, called every `save_every` steps. A progress
    line per step goes to `log` (None: quiet). Returns the loss of every step, in order.
    """
    if model.head not in HEADS:
        raise ValueError(f"fine-tuning trains the ITM or the contrastive (ITC) head; got a "
                         f"{type(model).__name__} (head {model.head!r})")
    trainable = trainable_prefixes(model.head, train)
    if model.head == "itc":
        check_contrastive(len(pairs), batch_size)
    processor.tokenizer([c for _, c in pairs])  # every caption is checked (length) before any step
    optimizer = AdamW(model, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    steps = len(spans(len(pairs), batch_size, contrastive=model.head == "itc"))  # per epoch
    losses, step = [], 0
    for epoch in range(1, epochs + 1):
        epoch_losses = []
        for k, (images, captions, labels) in enumerate(batches(pairs, batch_size, rng, model.head == "itm"), 1):
            enc = processor(images=images, text=captions, padding=True)
            extra = {} if labels is None else {"labels": labels}
            loss, grads = model.loss_and_grads(**enc, **extra, trainable=trainable)
            optimizer.step(grads)
            epoch_losses.append(float(loss))
            step += 1
            _progress(log, f"epoch {epoch}/{epochs} step {k}/{steps} loss {float(loss):.4f} "
                           f"(mean {np.mean(epoch_losses):.2f})", last=k == steps)
            if save is not None and save_every and step % save_every == 0:
                save()
        losses += epoch_losses
    return losses


def _progress(log, line, last):
    """One line per step; on a terminal, each rewrites the last in place (\\r) until the epoch ends."""
    if log is None:
        return
    if log.isatty():
        log.write("\r" + line + ("\n" if last else ""))
    else:
        log.write(line + "\n")
    log.flush()


def save(model, source, out):
    """model.save_pretrained(out) (refuses a folder of other files), then the tokenizer and preprocessor
    files of the `source` checkpoint folder, so that `out` is a checkpoint `minibridge infer` runs."""
    out = Path(model.save_pretrained(out))
    for name in PROCESSOR_FILES:
        src, dst = Path(source) / name, out / name
        if src.is_file() and not (dst.exists() and dst.samefile(src)):
            tmp = dst.with_name(dst.name + ".partial")
            shutil.copyfile(src, tmp)  # contents only, not a read-only mode of a download cache
            tmp.replace(dst)
    return out
