"""Search an index with a text or an image; optionally re-rank the shortlist with the ITM head.

    found = retrieve("photos.index", "two cats on a sofa", k=5)             # text -> images
    found = retrieve("captions.index", "cat.jpg", k=5, rerank=50)           # image -> texts, re-ranked
    print(found)            # a ranked table;  found.to_dict() is what `--json` prints

The paper's retrieval recipe (BridgeTower §4, after ALBEF/METER): the contrastive embeddings give a
cheap shortlist (index.Index.search, exact cosine), then the image-text matching head, which reads
image and text together through the cross-modal layers, re-scores the top K; the rows are ordered
by its match probability softmax(logits)[:, 1].
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .embedding import Embedder
from .index import Index, json_text, positive_int


@dataclass
class Retrieved:
    """The rows found for one query, best first: rows (index row numbers), ids, cosine similarities,
    and with re-ranking itm (match probabilities, by which the rows are then ordered)."""

    index: str
    kind: str  # what the index holds: "image" or "text"
    query: str
    model: str
    rows: list
    ids: list
    cosine: list
    itm: list = None
    rerank: int = None
    notes: tuple = ()

    def __str__(self):
        query = f'the text "{self.query}"' if self.kind == "image" else f"the image {self.query}"
        lines = [f"{self.index}: {self.kind}s nearest to {query} (model {self.model}"
                 + (f", top {self.rerank} re-ranked by ITM)" if self.itm is not None else ")"),
                 "  rank  cosine   " + ("itm      " if self.itm is not None else "") + "id"]
        for rank, (row_id, cos) in enumerate(zip(self.ids, self.cosine), 1):
            itm = f"{self.itm[rank - 1]:<8.4f} " if self.itm is not None else ""
            lines.append(f"  {rank:<5} {cos:<8.4f} {itm}{row_id}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self):
        results = [{"rank": r, "row": row, "id": i, "cosine": c} for r, (row, i, c) in
                   enumerate(zip(self.rows, self.ids, self.cosine), 1)]
        for entry, p in zip(results, self.itm or []):
            entry["itm"] = p
        return {"index": self.index, "kind": self.kind, "query": self.query, "model": self.model,
                "rerank": self.rerank, "results": results, "notes": list(self.notes)}

    def to_json(self):
        return json_text(self.to_dict(), indent=2)  # (a file name that is not UTF-8 as \u escapes)


def retrieve(index, query, k=10, rerank=None, model=None, revision=None, batch_size=8):
    """The k rows of `index` nearest to `query`, optionally re-ranked; returns Retrieved.

    index: an Index or its folder. query: a text for an index of images, an image (path, URL) for an
    index of texts. rerank: K, re-score the K nearest by cosine with the ITM head and order them by
    its match probability (the best k of the K are returned). model: the checkpoint that embeds the
    query and scores the pairs (default: the one that made the index); it needs an ITC head, and
    an ITM head for rerank.
    """
    index = index if isinstance(index, Index) else Index.open(index)
    if len(index) == 0:
        raise ValueError(f"{index.folder} holds no vectors yet (every input skipped, or the run stopped early)")
    k = positive_int(k, "k")
    rerank = None if rerank is None else positive_int(rerank, "rerank")
    _check_query_kind(index, query)
    model, revision, notes = _model_of(index, model, revision)
    query_kind = "text" if index.kind == "image" else "image"
    preprocessing = index.manifest["preprocessing"]
    embedder = Embedder(model, query_kind, revision, truncation=query_kind == "text")
    if rerank and "itm" not in embedder.heads:
        raise ValueError(f"--rerank re-scores with the image-text matching (ITM) head, and {model} has none (it has: "
                         f"{', '.join(embedder.heads) or 'no head'}); pass --model a checkpoint with both the ITC "
                         "and ITM heads, e.g. BridgeTower/bridgetower-large-itm-mlm-itc")
    if embedder.dim != index.manifest["dim"]:
        raise ValueError(f"{model} makes {embedder.dim}-dimensional embeddings but {index.folder} holds "
                         f"{index.manifest['dim']}-dimensional ones (made by {index.manifest['model']}); "
                         "embed the query with the index's model")
    query_vector = embedder.embed([embedder.load(query)])  # [1, C]; an unreadable query raises, naming it
    hits = index.search(query_vector, k=max(k, rerank or 0))
    rows, cosine, itm = hits.rows[0], hits.scores[0], None
    if rerank:
        rows, cosine = rows[:rerank], cosine[:rerank]
        itm = _itm_scores(index, query, rows, model, revision, batch_size, preprocessing.get("truncation", False))
        order = np.argsort(-itm, kind="stable")  # equal probabilities keep the cosine order
        rows, cosine, itm = rows[order], cosine[order], itm[order]
    rows, cosine = rows[:k], cosine[:k]
    from .weights import random_mark

    notes += [n for n in [random_mark(embedder.folder)] if n]
    if not index.complete:
        notes.append(f"the index is incomplete ({index.manifest['inputs_done']} of {index.manifest['inputs']['count']} "
                     "inputs done): finish it with `minibridge embed ... --resume`")
    return Retrieved(str(index.folder), index.kind, str(query), str(model), rows.tolist(),
                     [index.ids[r] for r in rows.tolist()], cosine.tolist(), None if itm is None else itm[:k].tolist(),
                     rerank, tuple(notes))


def _check_query_kind(index, query):
    """Refuse a query of the kind the index holds: images are searched with a text, texts with an image."""
    from .embedding import _is_file
    from .fetch import is_url

    names_image = isinstance(query, (str, Path)) and (is_url(str(query)) or _is_file(Path(query)))
    if index.kind == "image" and names_image:  # subtle: it would be embedded as the text "cat.jpg"
        raise ValueError(f"{index.folder} holds images, so the query must be a text to look for; got {query}, which "
                         "names an image (a file or URL). An image query searches an index of texts "
                         "(`minibridge embed --text ... --out INDEX_DIR`)")
    if index.kind == "text" and isinstance(query, (str, Path)) and not names_image:
        raise FileNotFoundError(f"no image file at {query}: {index.folder} holds texts, so the query must be an "
                                "image (a file or an http(s) URL)")


def _model_of(index, model, revision):
    """(model, revision, notes): the given checkpoint, else the one the manifest records."""
    m = index.manifest
    if model is not None:
        import hashlib

        from .hub import resolve

        notes = []
        config = (resolve(model, revision, weights=False) / "config.json").read_bytes()
        if hashlib.sha256(config).hexdigest() != m["config_sha256"]:
            notes.append(f"the index was made with {m['model']}, whose config differs from {model}'s: "
                         "the query is compared with another model's embeddings")
        return model, revision, notes
    if Path(m["model_path"]).is_dir():  # the folder it was loaded from (a Hub id's: its download)
        return m["model_path"], None, []
    return m["model"], m["revision"], []


def _itm_scores(index, query, rows, model, revision, batch_size, truncation):
    """P(match) of the query with each of the rows, by the ITM head: [len(rows)]."""
    from .infer import infer

    found = [index.ids[r] for r in rows.tolist()]
    if index.kind == "image":
        images = [_image_path(index, i) for i in found]
        result = infer(images, query, model=model, task="itm", revision=revision, batch_size=batch_size)
    else:
        result = infer(query, found, model=model, task="itm", revision=revision, batch_size=batch_size,
                       truncation=truncation)
    return np.asarray(result.scores)


def _image_path(index, image_id):
    """An image id as a path to read now: a URL or an absolute path as it is; a relative path from the
    folder the index was made in (base_dir), or, where nothing is there (the photos moved with the
    index), from this folder."""
    from .fetch import is_url

    if is_url(image_id) or Path(image_id).is_absolute():
        return image_id
    # subtle: base_dir first; the same relative name here may be another photo
    made_in = Path(index.manifest["base_dir"]) / image_id
    return str(made_in) if made_in.exists() or not Path(image_id).exists() else image_id

