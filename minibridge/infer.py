"""One call from a photo and some text to an answer.

    >>> import minibridge as mb
    >>> mb.infer("cats.jpg", ["two cats on a sofa", "a plate of food"])
    BridgeTower/bridgetower-base-itm-mlm · image-text matching: probability that the text fits the image
      rank  score   text
      1     …       two cats on a sofa
      2     …       a plate of food

The readout follows the checkpoint and the text (or `task=`):
* "itm": image-text matching heads; scores are softmax(logits)[:, 1], one per text.
* "mlm": a text with <mask> on a masked-LM checkpoint; the filled-in text and the top-k per mask.
* "itc": contrastive checkpoints; scores are cosine similarities of the image and text embeddings.
"""

import functools
import io
from dataclasses import dataclass

import numpy as np

from .modeling import (BridgeTowerForContrastiveLearning, BridgeTowerForImageAndTextRetrieval,
                       BridgeTowerForMaskedLM, open_checkpoint)
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
    """What `infer` found. scores: one per text (itm, itc); filled / candidates: per text (mlm)."""

    task: str
    model: str
    texts: list
    scores: list = None  # itm: match probability; itc: cosine similarity
    filled: list = None  # mlm: each text with its masks replaced by the best token
    candidates: list = None  # mlm: per text, per mask, [(token, probability)]
    note: str = None  # set when the checkpoint is marked as random weights: the numbers are noise

    def __str__(self):
        lines = [f"{self.model} · {_TITLES[self.task]}"]
        if self.task == "mlm":
            for text, filled, masks in zip(self.texts, self.filled, self.candidates):
                lines += [f"  text:   {text}", f"  filled: {filled}"]
                for i, cands in enumerate(masks, 1):
                    lines.append(f"  mask {i}: " + " | ".join(f"{tok.strip() or repr(tok)} {p:.3f}" for tok, p in cands))
        else:
            lines.append("  rank  score   text")
            for rank, i in enumerate(np.argsort(-np.asarray(self.scores), kind="stable"), 1):
                lines.append(f"  {rank:<5} {self.scores[i]:<7.4f} {self.texts[i]}")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    __repr__ = __str__


def infer(image, text, model=DEFAULT_MODEL, task=None, top_k=5, revision=None, device="cpu"):
    """Score text(s) against one image, or fill in <mask>, with a BridgeTower checkpoint.

    image: a path, an http(s) URL, a PIL image or an array [H, W, 3]; text: a string or a list.
    model: Hub id or local folder; task: None (chosen from the checkpoint and the text), "itm",
    "mlm" or "itc". The model is loaded once per process and reused by later calls. A checkpoint
    marked as random weights (`minibridge random-checkpoint`) gets a `note` saying its numbers are noise.
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    texts = [text] if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"text must be a string or a non-empty list of strings, got {text!r}")
    checkpoint = _checkpoint(str(model), revision)
    task = _choose_task(task, checkpoint.heads, texts, model)
    net, processor = _load(str(model), revision, task, device)
    pixels = processor.image_processor(_open(image))["pixel_values"]  # [1, 3, S, S]
    enc = processor.tokenizer(texts, padding=True, return_tensors="np")  # [B, T]
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pixels = np.repeat(pixels, len(texts), axis=0)  # one image, scored against every text: [B, 3, S, S]
    result = InferResult(task=task, model=str(model), texts=texts, note=random_mark(checkpoint.folder))
    if task == "itm":
        logits = _numpy(net(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits)  # [B, 2]
        result.scores = softmax(logits)[:, 1].tolist()
    elif task == "itc":
        text_emb = _numpy(net.get_text_features(input_ids=ids, attention_mask=mask))  # [B, C], unit length
        image_emb = _numpy(net.get_image_features(pixel_values=pixels[:1]))  # [1, C]
        result.scores = (text_emb @ image_emb[0]).tolist()
    else:
        logits = _numpy(net(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits)  # [B, T, V]
        result.filled, result.candidates = _fill_masks(processor.tokenizer, ids, logits, top_k)
    return result


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


def _open(image):
    """A URL is fetched here (with the standard library); anything else goes to the image processor."""
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        import urllib.request

        import PIL.Image

        try:
            with urllib.request.urlopen(image, timeout=30) as response:
                data = response.read()
        except OSError as e:
            raise OSError(f"could not download the image {image}: {e}") from None
        return PIL.Image.open(io.BytesIO(data))
    return image


def _numpy(x):
    from .backend import to_numpy

    return to_numpy(x)
