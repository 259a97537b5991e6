"""One call from a photo and some text to an answer.

    >>> import minibridge as mb
    >>> mb.infer("cats.jpg", ["two cats on a sofa", "a plate of food"])
    BridgeTower/bridgetower-base-itm-mlm · image-text matching: probability that the text fits the image
      rank  score   text
      1     …       two cats on a sofa
      2     …       a plate of food

The readout follows the checkpoint and the text (or `task=`); one image may be scored against many
texts, many images against one text, or images and texts in pairs, in batches of `batch_size`:
* "itm": image-text matching heads; scores are softmax(logits)[:, 1], one per text.
* "mlm": a text with <mask> on a masked-LM checkpoint; the filled-in text and the top-k per mask.
* "itc": contrastive checkpoints; scores are cosine similarities of the image and text embeddings.
"""

import functools
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .modeling import (BridgeTowerForContrastiveLearning, BridgeTowerForImageAndTextRetrieval,
                       BridgeTowerForMaskedLM, open_checkpoint)
from .backend import release_freed_memory
from .ops import softmax
from .weights import random_mark

DEFAULT_MODEL = "BridgeTower/bridgetower-base-itm-mlm"
TASKS = {"itm": BridgeTowerForImageAndTextRetrieval, "mlm": BridgeTowerForMaskedLM,
         "itc": BridgeTowerForContrastiveLearning}
_TITLES = {"itm": "image-text matching: probability that the text fits the image",
           "itc": "contrastive: cosine similarity of the image and text embeddings",
           "mlm": "masked language modelling: the <mask> filled in"}


@dataclass
class InferResult:
    """What `infer` found, one row per (image, text) pair scored.

    texts: the text of each row; images: the image of each row (a name), set only when several
    images were given; scores: one per row (itm, itc); filled / candidates: per row (mlm).
    """

    task: str
    model: str
    texts: list
    scores: list = None  # itm: match probability; itc: cosine similarity
    filled: list = None  # mlm: each text with its masks replaced by the best token
    candidates: list = None  # mlm: per row, per mask, [(token, probability)]
    note: str = None  # set when the checkpoint is marked as random weights: the numbers are noise
    images: list = None  # several images: which image each row scored (its path, URL or "image k")

    def __str__(self):
        lines = [f"{self.model} · {_TITLES[self.task]}"]
        images = self.images or [None] * len(self.texts)
        if self.task == "mlm":
            for text, image, filled, masks in zip(self.texts, images, self.filled, self.candidates):
                lines += [f"  image:  {image}"] if image is not None else []
                lines += [f"  text:   {text}", f"  filled: {filled}"]
                for i, cands in enumerate(masks, 1):
                    lines.append(f"  mask {i}: " + " | ".join(f"{tok.strip() or repr(tok)} {p:.3f}" for tok, p in cands))
        else:
            lines.append("  rank  score   " + ("image  " if self.images else "") + "text")
            for rank, i in enumerate(np.argsort(-np.asarray(self.scores), kind="stable"), 1):
                image = f"{self.images[i]}  " if self.images else ""
                lines.append(f"  {rank:<5} {self.scores[i]:<7.4f} {image}{self.texts[i]}")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    __repr__ = __str__


def infer(image, text, model=DEFAULT_MODEL, task=None, top_k=5, revision=None, device="cpu",
          truncation=False, max_length=None, batch_size=8):
    """Score text(s) against image(s), or fill in <mask>, with a BridgeTower checkpoint.

    image: a path, an http(s) URL, a PIL image or an array [H, W, 3], or a list of them;
    text: a string or a list. How they pair, for every task:
        one image, N texts  → N rows: the image with each text
        N images, one text  → N rows: each image with the text
        N images, N texts   → N rows: image k with text k
    model: Hub id or local folder; task: None (chosen from the checkpoint and the text), "itm",
    "mlm" or "itc". truncation / max_length: as the tokenizer's (texts over the model's 512
    tokens are an error unless truncation=True). batch_size: pairs per forward pass, so memory
    stays that of batch_size pairs however many are scored. The model is loaded once per process
    and reused by later calls. A checkpoint marked as random weights (`minibridge random-checkpoint`)
    gets a `note` saying its numbers are noise.
    """
    top_k = _positive_int(top_k, "top_k")
    batch_size = _positive_int(batch_size, "batch_size")
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"text must be a string or a non-empty list of strings, got {text!r}")
    images = _image_list(image)
    pairs = _pairs(len(images), len(texts))  # [(image index, text index), …]: one row each
    checkpoint = _checkpoint(str(model), revision)
    task = _choose_task(task, checkpoint.heads, texts, model)
    net, processor = _load(str(model), revision, task, device)
    from .tokenizer import pad_ids  # here: the tokenizer module is loaded with the processor, not at import

    tok = processor.tokenizer
    # Every text is tokenised (and so checked) before any image is read or any layer runs.
    ids = tok(texts, truncation=truncation, max_length=max_length)["input_ids"]
    made = _Images(processor.image_processor, images)
    result = InferResult(task=task, model=str(model), texts=[texts[t] for _, t in pairs],
                         images=[_name(images[i], i) for i, _ in pairs] if len(images) > 1 else None,
                         note=random_mark(checkpoint.folder))
    scores, filled, candidates = [], [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        if task == "itc":
            chunk_ids, mask = pad_ids([ids[t] for _, t in chunk], tok.pad_token_id)  # [b, T]
            # subtle: each tower alone, as the embeddings are defined; the image is embedded once
            text_emb = _numpy(net.get_text_features(input_ids=chunk_ids, attention_mask=mask))  # [b, C]
            image_emb = np.concatenate([made.embedding(net, i) for i, _ in chunk])  # [b, C]
            scores += (text_emb * image_emb).sum(-1).tolist()
            continue
        # Each distinct text and image of the chunk goes through its tower once (one image scored
        # against every text: once in all); only the cross-modal layers run per pair.
        text_of = {t: k for k, t in enumerate(dict.fromkeys(t for _, t in chunk))}  # text index -> row
        image_of = {i: k for k, i in enumerate(dict.fromkeys(i for i, _ in chunk))}
        chunk_ids, mask = pad_ids([ids[t] for t in text_of], tok.pad_token_id)  # [nt, T]
        text_b = net.encode_text(input_ids=chunk_ids, attention_mask=mask)
        image_b = made.bridged(net, list(image_of))
        logits = _numpy(net.forward_pairs(text_b, image_b, np.array([text_of[t] for _, t in chunk]),
                                          np.array([image_of[i] for i, _ in chunk])).logits)
        if task == "itm":
            scores += softmax(logits)[:, 1].tolist()  # [b, 2] -> P(match)
        else:
            f, c = _fill_masks(tok, chunk_ids[[text_of[t] for _, t in chunk]], logits, top_k)  # logits [b, T, V]
            filled += f
            candidates += c
    if task == "mlm":
        result.filled, result.candidates = filled, candidates
    else:
        result.scores = scores
    made = text_b = image_b = logits = None  # the last batch's arrays go before the memory is handed back
    release_freed_memory()  # what the batches freed goes back to the system (backend.keep_freed_memory)
    return result


def _positive_int(value, name):
    # subtle: NumPy integers are integers (numbers.Integral); True is not a count
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _image_list(image):
    """One image or several (a list, a tuple, or an array [N, H, W, C]) as a list."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("got an empty list of images; pass at least one")
        return list(image)
    if isinstance(image, np.ndarray) and image.ndim == 4:
        return list(image)
    return [image]


def _pairs(n_images, n_texts):
    if n_images == 1:
        return [(0, t) for t in range(n_texts)]
    if n_texts == 1:
        return [(i, 0) for i in range(n_images)]
    if n_images == n_texts:
        return [(k, k) for k in range(n_images)]
    raise ValueError(f"got {n_images} images and {n_texts} texts; pass one image (scored against every text), "
                     "one text (scored against every image), or as many images as texts (image k with text k)")


def _name(image, index):
    """How a row names its image: the path or URL it came from, else its position."""
    if isinstance(image, (str, Path)):
        return str(image)
    return getattr(image, "filename", "") or f"image {index + 1}"


class _Images:
    """Each image's pixel_values [1, 3, S, S] (and its tower's output: its embedding [1, C] for itc,
    its bridges' inputs for itm and mlm), made when first needed.

    One image, scored against every text, is processed once and kept; several images each appear
    in one row, so nothing is kept and memory stays that of one batch.
    """

    def __init__(self, image_processor, images):
        self.image_processor, self.images, self.kept = image_processor, images, {}

    def pixels(self, i):
        return self._made(("pixels", i), lambda: self.image_processor(self.images[i])["pixel_values"])

    def embedding(self, net, i):
        return self._made(("itc", i), lambda: _numpy(net.get_image_features(pixel_values=self.pixels(i))))

    def bridged(self, net, indices):
        """The images `indices` through the vision tower (model.Bridged), one batch; kept for one image."""
        make = lambda: net.encode_image(np.concatenate([self.pixels(i) for i in indices]))  # noqa: E731
        return self._made(("bridged", tuple(indices)), make)

    def _made(self, key, make):
        if key not in self.kept:
            value = make()
            if len(self.images) > 1:
                return value
            self.kept[key] = value
        return self.kept[key]


def _fill_masks(tok, ids, logits, top_k):
    mask_id = tok.mask_token_id
    filled, candidates = [], []
    for row, row_logits in zip(ids, logits):
        positions = np.flatnonzero(row == mask_id)
        probs = softmax(row_logits[positions])  # [M, V]
        best = row.copy()
        best[positions] = probs.argmax(-1)
        filled.append(tok.decode(best.tolist(), skip_special_tokens=True))
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]  # [M, k]
        candidates.append([[(tok.decode([int(t)]), float(p[t])) for t in ts] for ts, p in zip(top, probs)])
    return filled, candidates


@functools.lru_cache(maxsize=4)  # a few checkpoints at most: each holds its weights (memory-mapped)
def _checkpoint(model, revision):
    """The opened checkpoint of a Hub id or folder: resolved, converted and memory-mapped once."""
    return open_checkpoint(model, revision)


@functools.lru_cache(maxsize=4)
def _load(model, revision, task, device):
    """(the model of this task's class, its processor), built on the one opening of the checkpoint."""
    from .processing import BridgeTowerProcessor  # here: it needs Pillow, and `import minibridge` does not

    checkpoint = _checkpoint(model, revision)
    return TASKS[task].from_checkpoint(checkpoint, device), BridgeTowerProcessor.from_pretrained(checkpoint.folder)


def _choose_task(task, heads, texts, model):
    has_mask = ["<mask>" in t for t in texts]
    if task is None:
        task = "mlm" if any(has_mask) and "mlm" in heads else "itm" if "itm" in heads else \
            "itc" if "itc" in heads else "mlm" if "mlm" in heads else None
        if task is None:
            raise ValueError(f"{model} has no task head (it is a bare BridgeTowerModel); load it with "
                             "mb.BridgeTowerModel.from_pretrained for features, or pick a checkpoint with a head")
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)} or None, got {task!r}")
    if task not in heads:
        raise ValueError(f"{model} has no {task} head; it has: {', '.join(heads) or 'none'}")
    if task == "mlm" and not all(has_mask):
        missing = [t for t, m in zip(texts, has_mask) if not m]
        raise ValueError(f"the mlm task fills in <mask>, but {missing[0]!r} has none; write <mask> where a word goes")
    return task


def _numpy(x):
    from .backend import to_numpy

    return to_numpy(x)
