"""An index of embeddings on disk: float32 shards, a manifest, and exact cosine search over them.

    index = Index.open("photos.index")
    index.vectors                  # [N, C] float32: every shard memory-mapped, read like one array
    index.ids                      # N strings: the path (or the text) of each row
    hits = index.search(query, k=5)  # hits.scores [Q, k], hits.rows [Q, k], hits.ids (Q lists of k)

The folder, as `embedding.embed_collection` (or `scale.embed_on_ray`) writes it:

    manifest.json       what made the vectors, and which shards are complete (IndexWriter.header)
    vectors-00000.npy   [shard_size, C] float32; every shard has shard_size rows but the last
    ids-00000.json      that shard's ids, one per row, as a JSON list
    skipped.tsv         the inputs that could not be read, with the reason (written when the run ends)

subtle: a shard's two files are written under temporary names and renamed once whole, and only then
listed in the manifest, which is itself replaced in one rename. A reader trusts the manifest alone,
so a run killed at any instant leaves an index whose listed shards are all complete.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "minibridge-index"
VERSION = 1
MANIFEST, SKIPPED = "manifest.json", "skipped.tsv"
PARTIAL = ".partial"  # suffix of a file being written

# The manifest's fields that a reader uses, with their JSON types (the rest is what made the vectors).
FIELDS = {"kind": str, "model": str, "dim": int, "shard_size": int, "rows": int, "inputs": dict, "inputs_done": int,
          "complete": bool, "shards": list, "skipped": list}
JSON_TYPES = {str: "a string", int: "an integer", dict: "an object", bool: "true or false", list: "a list"}

# What must agree for `--resume` to continue an index: the rest of the header may change (a model
# folder that moved keeps its config; progress counters grow).
IDENTITY = ("kind", "model", "revision", "config_sha256", "preprocessing", "dim", "batch_size", "shard_size",
            "inputs")


class IndexFormatError(ValueError):
    """An index folder that cannot be read or continued; the message names the file and what is wrong."""


# ---- reading ------------------------------------------------------------------------------------


@dataclass
class Hits:
    """The best k rows for each query: scores [Q, k] cosine similarities (best first), rows [Q, k]
    row numbers in the index, ids: Q lists of the k ids."""

    scores: np.ndarray
    rows: np.ndarray
    ids: list


class Index:
    """An index folder opened for reading: its manifest, its rows' ids and its memory-mapped shards."""

    def __init__(self, folder, manifest, shards, ids):
        self.folder, self.manifest, self.ids = Path(folder), manifest, ids
        self.vectors = ShardedVectors(shards, manifest["shard_size"], manifest["dim"])

    @classmethod
    def open(cls, folder):
        """Open an index folder; every shard the manifest lists is checked (shape, dtype) and memory-mapped.

        An index whose run stopped (`complete` False) opens too, with the shards finished so far.
        """
        folder = Path(folder)
        manifest = read_manifest(folder)
        shards, ids = [], []
        for entry in manifest["shards"]:
            vectors = _load_shard(folder / entry["vectors"], entry["rows"], manifest["dim"])
            shard_ids = _read_json(folder / entry["ids"], "a JSON list of ids")
            if not isinstance(shard_ids, list) or len(shard_ids) != entry["rows"]:
                got = f"{len(shard_ids)} ids" if isinstance(shard_ids, list) else type(shard_ids).__name__
                raise IndexFormatError(f"{folder / entry['ids']}: expected a list of {entry['rows']} ids, found {got}")
            shards.append(vectors)
            ids += shard_ids
        return cls(folder, manifest, shards, ids)

    def __len__(self):
        return len(self.ids)

    def __repr__(self):
        m = self.manifest
        state = "" if m["complete"] else f", incomplete: {m['inputs_done']} of {m['inputs']['count']} inputs done"
        return f"Index({str(self.folder)!r}: {len(self)} {m['kind']}s × {m['dim']}, model {m['model']}{state})"

    @property
    def kind(self):
        """"image" or "text": what the rows embed."""
        return self.manifest["kind"]

    @property
    def complete(self):
        return self.manifest["complete"]

    @property
    def skipped(self):
        """[(id, reason)] of the inputs that could not be read (those of the finished part of the run)."""
        return [(s["id"], s["reason"]) for s in self.manifest["skipped"]]

    def search(self, queries, k=10):
        """Exact cosine top-k of each query over every row, a shard at a time.

        queries: [C] or [Q, C] (need not be normalised). Returns Hits with min(k, N) columns, best
        first; equal scores keep row order. Memory: one [Q, shard_size] block of scores at a time.
        """
        q = _as_queries(queries, self.manifest["dim"])  # [Q, C], unit length
        k = positive_int(k, "k")
        best_scores = np.empty((len(q), 0), dtype=np.float32)
        best_rows = np.empty((len(q), 0), dtype=np.int64)
        start = 0
        for shard in self.vectors.shards:
            norms = np.linalg.norm(shard, axis=1)  # [S]
            scores = (q @ shard.T) / np.maximum(norms, 1e-12)  # [Q, C] @ [C, S] -> [Q, S]
            rows = np.broadcast_to(np.arange(start, start + len(shard)), scores.shape)
            if scores.shape[1] > k:  # only this shard's k best can enter the top k
                keep = _top_columns(scores, k)  # [Q, k]
                scores, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
            best_scores, best_rows = _best(np.concatenate([best_scores, scores], 1),
                                           np.concatenate([best_rows, rows], 1), k)
            start += len(shard)
        return Hits(best_scores, best_rows, [[self.ids[r] for r in row] for row in best_rows.tolist()])


def positive_int(value, name):
    """value as an int; ValueError naming `name` unless it is an integer ≥ 1 (a NumPy integer counts, True does not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _top_columns(scores, k):
    """The k best columns of each row of scores [Q, S] (S > k), as [Q, k] column numbers: the k
    highest scores, and on a tie at the k-th score the lowest columns (those a full sort keeps).

    subtle: np.argpartition alone picks *any* of the tied columns, and a collection of copies (the
    same photo twice has the same vector) ties; the search would then depend on the shard size.
    """
    scores = np.where(np.isnan(scores), -np.inf, scores)  # a NaN row (a broken vector) ranks last
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # [Q, 1] the k-th highest score
    above, tied = scores > kth, scores == kth  # [Q, S] each
    wanted = k - above.sum(1, keepdims=True)  # [Q, 1] how many of the tied columns enter
    take = above | (tied & (np.cumsum(tied, axis=1) <= wanted))  # [Q, S], k True in each row
    return np.nonzero(take)[1].reshape(len(scores), k)  # the columns, in increasing order


def _best(scores, rows, k):
    """The k best columns of each query row: highest score first, the lower row number first on a tie."""
    order = np.lexsort((rows, -scores), axis=1)[:, :k]  # the last key sorts first
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def _as_queries(queries, dim):
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None]  # [C] -> [1, C]
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"query vectors must be [C] or [Q, C] with C = {dim} (the index's dimension), "
                         f"got shape {np.shape(queries)}")
    norms = np.linalg.norm(q, axis=1, keepdims=True)  # [Q, 1]
    if not np.isfinite(q).all() or (norms == 0).any():
        raise ValueError("a query vector is zero or holds NaN/infinity; cosine similarity needs a finite, "
                         "non-zero vector")
    return q / norms


class ShardedVectors:
    """[N, C] float32 rows kept in memory-mapped shards of `shard_size` rows, read like one array.

    vectors[i], vectors[a:b], vectors[[i, j]], vectors[mask] and vectors[rows, cols] read only the
    rows asked for from the files, into a new in-memory array (as NumPy's fancy indexing does);
    np.asarray(vectors) reads them all. `shards` are the np.memmap arrays themselves.
    """

    def __init__(self, shards, shard_size, dim):
        self.shards, self.shard_size = shards, shard_size
        self.shape = (sum(len(s) for s in shards), dim)
        self.dtype, self.ndim = np.dtype(np.float32), 2

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return (f"ShardedVectors(shape={self.shape}, {len(self.shards)} memory-mapped shard(s) "
                f"of {self.shard_size} rows)")

    def __array__(self, dtype=None, copy=None):
        if copy is False:  # NumPy 2's np.asarray(x, copy=False): "never copy"
            raise ValueError(f"the rows are in {len(self.shards)} shard files: reading them as one array copies "
                             "them (leave out copy=False, or read one shard: vectors.shards[i])")
        whole = self._span(0, len(self))  # [N, C], in RAM
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key):
        rows, *cols = key if isinstance(key, tuple) else (key,)
        if len(cols) > 1:
            raise IndexError(f"the vectors have 2 dimensions (rows, columns), got {len(key)} indices")
        if isinstance(rows, slice) and rows.indices(len(self))[2] == 1:
            out = self._span(*rows.indices(len(self))[:2])  # [n, C]: whole runs of each shard
        elif isinstance(rows, (int, np.integer)):
            out = self._take(np.array([rows]))[0]  # [C]
        else:
            rows = np.arange(*rows.indices(len(self))) if isinstance(rows, slice) else np.asarray(rows)
            if rows.dtype == bool:
                if rows.shape != (len(self),):
                    raise IndexError(f"a boolean mask of the rows needs {len(self)} entries, got {rows.size}")
                rows = np.flatnonzero(rows)
            out = self._take(rows.reshape(-1)).reshape(rows.shape + (self.shape[1],))  # [..., C]
        return out[..., cols[0]] if cols else out

    def _span(self, start, stop):
        """Rows start:stop as a new array [stop - start, C], copied a run of each shard at a time."""
        parts = [np.empty((0, self.shape[1]), np.float32)]
        for first in range(start - start % self.shard_size, stop, self.shard_size):  # each shard's first row
            parts.append(self.shards[first // self.shard_size][max(start - first, 0):stop - first])
        return np.concatenate(parts)

    def _take(self, rows):
        """Rows by number (negative: from the end) → a new array [len(rows), C], a shard at a time."""
        rows = rows.astype(np.int64) if rows.size == 0 else rows  # (np.asarray([]) is float)
        if not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f"rows are chosen by integers, slices or a boolean mask, got {rows.dtype} values")
        n = len(self)
        outside = (rows < -n) | (rows >= n)
        if outside.any():
            raise IndexError(f"row {rows[outside][0]} is out of range for an index of {n} rows")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)  # [n, C]
        shard_of = rows // self.shard_size
        for s in np.unique(shard_of):
            mine = shard_of == s
            out[mine] = self.shards[s][rows[mine] - s * self.shard_size]
        return out


def read_manifest(folder):
    """The manifest of an index folder as a dict, checked for the fields a reader needs."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        what = "no such folder" if not Path(folder).exists() else f"no {MANIFEST} in it"
        raise FileNotFoundError(f"{folder} is not a minibridge index ({what}); make one with "
                                "`minibridge embed --model M --image PATH... --out INDEX_DIR`")
    manifest = _read_json(path, "a JSON object")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a minibridge index manifest (expected \"format\": \"{FORMAT}\")")
    if manifest.get("version") != VERSION:
        raise IndexFormatError(f"{path} has version {manifest.get('version')!r}; this minibridge reads "
                               f"version {VERSION}")
    wrong = [key for key, kind in FIELDS.items() if not isinstance(manifest.get(key), kind)]
    if wrong:  # (only an edit by hand does this: the writer replaces the manifest whole)
        raise IndexFormatError(f"{path}: expected " + ", ".join(f'"{k}" as {JSON_TYPES[FIELDS[k]]}' for k in wrong)
                               + "; found " + ", ".join(_short(manifest.get(k)) for k in wrong))
    return manifest


def _read_json(path, what):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is missing; the manifest lists it (was the folder changed by hand?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"cannot read {path} as {what}: {e}") from None


def _load_shard(path, rows, dim):
    """A shard file memory-mapped, after checking that it holds [rows, dim] float32."""
    try:
        shard = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise IndexFormatError(f"{path} is missing; the manifest lists it (was the folder changed by hand?)") from None
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"cannot read {path} as a .npy array: {e}") from None
    if shard.dtype != np.float32 or shard.shape != (rows, dim):
        raise IndexFormatError(f"{path}: expected [{rows}, {dim}] float32 as the manifest says, found "
                               f"{list(shard.shape)} {shard.dtype}")
    return shard


# ---- writing ------------------------------------------------------------------------------------


class IndexWriter:
    """Appends rows to an index folder a shard at a time, each shard committed atomically.

    header: what made the vectors (the IDENTITY keys and any others), saved in the manifest.
    add(vectors [b, C], ids, positions) appends rows (positions: each row's place in the input list),
    skip(position, id, reason) records an input that could not be read, finish() writes the last shard.
    `inputs_done` is where a run (or a resumed one) starts: the inputs before it are all committed.
    """

    def __init__(self, folder, header, resume=False):
        self.folder = Path(folder)
        self.shard_size, self.dim = header["shard_size"], header["dim"]
        existing = (self.folder / MANIFEST).is_file()
        if resume and existing:
            self.manifest = read_manifest(self.folder)
            _check_same_run(self.folder, self.manifest, header)
            self.manifest.update({k: v for k, v in header.items() if k not in IDENTITY})  # e.g. a moved folder
            _remove_unlisted(self.folder, self.manifest)
        else:
            # (a temporary file is what a run killed while writing its first manifest leaves)
            if self.folder.exists() and (not self.folder.is_dir() or
                                         any(not p.name.endswith(PARTIAL) for p in self.folder.iterdir())):
                hint = " or pass --resume (resume=True) to continue it" if existing else ""
                raise FileExistsError(f"{self.folder} exists and is not empty; choose a new folder for the index{hint}")
            self.folder.mkdir(parents=True, exist_ok=True)
            self.manifest = {"format": FORMAT, "version": VERSION, **header, "rows": 0, "inputs_done": 0,
                             "complete": False, "shards": [], "skipped": []}
            self._write_manifest()
        self.buffer = np.empty((self.shard_size, self.dim), dtype=np.float32)  # the shard being filled
        self.buffer_ids, self.filled = [], 0
        self.pending_skips = []  # skips not yet in the manifest (after its inputs_done)

    @property
    def inputs_done(self):
        return self.manifest["inputs_done"]

    def add(self, vectors, ids, positions):
        """Append rows: vectors [b, C] float32, with their ids and input positions (increasing)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim) or len(positions) != len(ids):
            raise ValueError(f"expected vectors [{len(ids)}, {self.dim}] with one id and position each, got "
                             f"{list(vectors.shape)}, {len(ids)} ids, {len(positions)} positions")
        done = 0
        while done < len(ids):  # a batch that crosses a shard's end starts the next shard
            n = min(len(ids) - done, self.shard_size - self.filled)
            self.buffer[self.filled:self.filled + n] = vectors[done:done + n]  # [n, C]
            self.buffer_ids += list(ids[done:done + n])
            self.filled, done = self.filled + n, done + n
            if self.filled == self.shard_size:
                self._commit(int(positions[done - 1]) + 1)

    def skip(self, position, id_, reason):
        """Record that input `position` (named `id_`) could not be read, and why (one line)."""
        self.pending_skips.append({"input": int(position), "id": id_, "reason": " ".join(str(reason).split())})

    def finish(self, total):
        """Commit the last (short) shard and mark the index complete; `total` inputs were read."""
        self._commit(total, complete=True)
        lines = ["input\treason"] + [f"{_one_line(s['id'])}\t{s['reason']}" for s in self.manifest["skipped"]]
        text = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")  # a file name's own bytes, as ls shows
        _write_atomically(self.folder / SKIPPED, lambda f: f.write(text))

    def _commit(self, inputs_done, complete=False):
        """Write the filled rows as the next shard (if any), then the manifest that lists it."""
        shards = self.manifest["shards"]
        if self.filled:
            number = len(shards)
            entry = {"vectors": f"vectors-{number:05d}.npy", "ids": f"ids-{number:05d}.json", "rows": self.filled}
            ids_json = json_text(self.buffer_ids).encode("utf-8")
            _write_atomically(self.folder / entry["ids"], lambda f: f.write(ids_json))
            _write_atomically(self.folder / entry["vectors"], lambda f: np.save(f, self.buffer[:self.filled]))
            shards.append(entry)
            self.manifest["rows"] += self.filled
            self.buffer_ids, self.filled = [], 0
        done = [s for s in self.pending_skips if s["input"] < inputs_done]
        self.pending_skips = [s for s in self.pending_skips if s["input"] >= inputs_done]
        self.manifest["skipped"] += done
        self.manifest.update(inputs_done=inputs_done, complete=complete)
        self._write_manifest()  # subtle: last, so the shard it names is already whole on disk

    def _write_manifest(self):
        text = json_text(self.manifest, indent=1).encode("utf-8")
        _write_atomically(self.folder / MANIFEST, lambda f: f.write(text))


def json_text(value, indent=None):
    """value as JSON text that UTF-8 can encode (non-ASCII letters kept as they are).

    subtle: a file name that is not UTF-8 (b"caf\\xe9.jpg": Linux keeps bytes, Python reads them as
    the lone surrogate "caf\\udce9.jpg") has no UTF-8 form; then everything non-ASCII is written as
    JSON's \\u escapes, which json.loads reads back to the same name, which open() takes."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, indent=indent)
    return text


def _one_line(text):
    return str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _write_atomically(path, write):
    """write(file) into path + PARTIAL, flushed to disk, then renamed over path: never half a file."""
    tmp = path.with_name(path.name + PARTIAL)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_same_run(folder, manifest, header):
    """Refuse to continue an index that another model, other settings or other inputs made."""
    for key in IDENTITY:
        mine, theirs = header.get(key), manifest.get(key)
        if mine != theirs:
            if key == "inputs":
                why = (f"the inputs differ: it was made from {theirs['count']} inputs and this run names "
                       f"{mine['count']}" + ("" if theirs["count"] != mine["count"] else " (the same number, but "
                                              "other names or another order)"))
                if header.get("base_dir") != manifest.get("base_dir"):
                    why += (f"; relative paths are read from the folder a run starts in: the index was made in "
                            f"{manifest.get('base_dir')}, this run is in {header.get('base_dir')}")
            else:
                why = f"it was made with {key} = {_short(theirs)}, and this run has {key} = {_short(mine)}"
            raise IndexFormatError(f"cannot resume {folder}: {why}. Resume with the same model, settings and inputs, "
                                   "or write a new index to another folder")


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _remove_unlisted(folder, manifest):
    """Delete what a killed run left beyond the manifest: temporary files and shards it never listed."""
    listed = {MANIFEST} | {name for entry in manifest["shards"] for name in (entry["vectors"], entry["ids"])}
    for path in folder.iterdir():
        ours = path.name.endswith(PARTIAL) or path.name == SKIPPED or \
            (path.name.startswith(("vectors-", "ids-")) and path.suffix in (".npy", ".json"))
        if ours and path.name not in listed and path.is_file():
            path.unlink()
