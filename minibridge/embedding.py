"""Embedding a collection: images or texts in, an index folder out, one batch in memory at a time.

    report = embed_collection(["photos/"], "image", model="BridgeTower/bridgetower-large-itm-mlm-itc",
                              out="photos.index", batch_size=16)
    index = Index.open("photos.index")                 # index.py: the vectors, their ids, search

On the command line: `minibridge embed --model M --image PATH... --out INDEX_DIR [--resume]`.

What the inputs may be (collect_inputs):
  images  a file, a folder (searched recursively for image files, hidden ones left out), a glob
          pattern ("photos/**/*.jpg"), an http(s) URL, or a CSV/TSV/Parquet table with --column
          naming the column of paths (relative to the table's folder) or URLs.
  texts   a text, a text file (UTF-8, one caption per line, blank lines left out), or a table with
          --column. An argument is read as a file when it names an existing file; any other argument
          is the text itself, except one that looks like a file name (ends in .txt, .csv, .tsv or
          .parquet, without spaces) and names no file: that is refused as a mistyped path.

Memory holds the list of input names (about 100 bytes each), one batch of decoded inputs and one
shard of vectors; never the collection. An input that cannot be read (a corrupt or empty image, a
text over the model's length) is skipped and listed with the reason in the manifest and skipped.tsv.

subtle: a batch is batch_size *readable* inputs, and a shard a whole number of batches, so a run
resumed at a shard boundary computes the very batches an uninterrupted run computes: the same
vectors to the bit (a batch's composition can change the last bit of float32 sums).
"""

import csv
import glob
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .index import IndexWriter, positive_int
from .tokenizer import pad_ids

KINDS = ("image", "text")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
TEXT_FILE_SUFFIXES = (".txt",) + TABLE_SUFFIXES  # a name ending so is a file, never a caption
DEFAULT_BATCH_SIZE = 8
SHARD_ROWS = 4096  # rows per shard, rounded up to whole batches: 8 MB of float32 at C = 512


class ExtraNeeded(ImportError):
    """An optional dependency that this input needs is not installed; the message says what to install."""


# ---- 1. the inputs ------------------------------------------------------------------------------


def collect_inputs(arguments, kind, column=None):
    """The command line's PATH or TEXT_OR_FILE arguments → (inputs, notes).

    inputs: the list of image paths/URLs or texts, in order (folders and globs sorted by name; an
    image named twice is kept once); notes: lines about what was left out (empty cells, duplicates).
    Raises FileNotFoundError / ValueError, naming the argument, for a missing path, a glob that
    matches nothing, a folder without images, a table without --column, or an unreadable file.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
    if isinstance(arguments, (str, Path)):
        arguments = [arguments]
    inputs, notes, tables = [], [], 0
    for arg in map(str, arguments):
        path = Path(os.path.expanduser(arg))  # subtle: Path.expanduser raises on "~ a caption"; this keeps it
        if _is_file(path) and path.suffix.lower() in TABLE_SUFFIXES:
            tables += 1
            inputs += _table_column(path, column, kind, notes)
        elif kind == "text":
            inputs += _texts(arg, path)
        else:
            inputs += _images(arg, path)
    if column is not None and not tables:
        raise ValueError(f"--column {column} names a column of a table, but no .csv, .tsv or .parquet file was given")
    if kind == "image":  # the same file found twice (a folder and a glob over it) is embedded once
        unique = list(dict.fromkeys(inputs))
        if len(unique) < len(inputs):
            notes.append(f"{len(inputs) - len(unique)} image(s) named more than once, embedded once")
        inputs = unique
    if not inputs:
        raise ValueError(f"no {kind}s to embed in {' '.join(map(str, arguments)) or 'the arguments'}")
    return inputs, notes


def _images(arg, path):
    from .fetch import is_url
    from .finetune import IMAGE_SUFFIXES  # .jpg .jpeg .png .webp .bmp .gif .tif .tiff

    if is_url(arg):
        return [arg]
    if _is_dir(path):
        found = _image_files(path, IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"the folder {arg} holds no image files (looked for {' '.join(sorted(IMAGE_SUFFIXES))}, "
                             "in every subfolder)")
        return found
    if _is_file(path):
        return [str(path)]
    if glob.has_magic(arg):
        matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
        if not matches:
            raise FileNotFoundError(f"no file matches the pattern {arg}")
        # a file the pattern names is taken as it is; a folder it names is searched for images
        return [f for m in matches for f in (_image_files(Path(m), IMAGE_SUFFIXES) if Path(m).is_dir() else [m])]
    raise FileNotFoundError(f"no file or folder {arg} (expected an image file, a folder of images, a glob "
                            "pattern or an http(s) URL)")


def _is_file(path):
    try:
        return path.is_file()
    except OSError:  # subtle: a name longer than the system allows raises; such a text is no file
        return False


def _is_dir(path):
    try:
        return path.is_dir()
    except OSError:
        return False


def _image_files(folder, suffixes):
    """Image files under `folder`, every subfolder included, sorted; hidden files and folders left out."""
    found = []
    for root, dirs, files in os.walk(folder):  # subtle: symlinked folders are not followed (no loops)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
    return found


def _texts(arg, path):
    if _is_dir(path):
        raise ValueError(f"{arg} is a folder; --text takes texts, or text files with one caption per line")
    if _is_file(path):
        try:
            with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: an editor's BOM is not text
                return [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError as e:
            raise ValueError(f"{arg} is not UTF-8 text ({e.reason} at byte {e.start}); expected a text file "
                             "with one caption per line") from None
    if arg.lower().endswith(TEXT_FILE_SUFFIXES) and " " not in arg:
        raise FileNotFoundError(f"there is no file {arg}; an argument that looks like a file name is not taken "
                                "as a caption (to embed such a caption, put it in a text file)")
    return [arg]


def _table_column(path, column, kind, notes):
    """The non-empty cells of `column` of a CSV/TSV (csv module) or Parquet (pyarrow) table; image
    paths are taken relative to the table's folder."""
    values = _read_parquet(path, column) if path.suffix.lower() == ".parquet" else _read_csv(path, column)
    cells = [str(v).strip() for v in values if v is not None and str(v).strip()]
    if len(cells) < len(values):
        notes.append(f"{path}: {len(values) - len(cells)} empty cell(s) of column {column!r} left out")
    if kind == "image":
        from .fetch import is_url

        cells = [c if is_url(c) or Path(c).is_absolute() else str(path.parent / c) for c in cells]
    return cells


def _read_csv(path, column):
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            _check_column(path, column, reader.fieldnames or [])
            return [row[column] for row in reader]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); expected a CSV file") from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a valid CSV file ({e})") from None


def _read_parquet(path, column):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ExtraNeeded(f"reading {path} needs pyarrow, which is not installed: `pip install pyarrow` "
                          "(or give the column as a .csv file)") from None
    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"cannot read {path} as a Parquet file: {e}") from None
    _check_column(path, column, names)
    return pq.read_table(path, columns=[column]).column(column).to_pylist()


def _check_column(path, column, names):
    if column is None:
        raise ValueError(f"{path} is a table; say which column holds the inputs with --column NAME "
                         f"(its columns: {', '.join(names) or 'none'})")
    if column not in names:
        raise ValueError(f"{path} has no column {column!r} (--column); its columns: {', '.join(names) or 'none'}")


# ---- 2. the model ------------------------------------------------------------------------------


class Embedder:
    """A contrastive checkpoint and the preprocessing of one kind of input.

    load(x): one image (path or URL) → pixels [3, S, S], or one text → token ids; an unreadable
    input raises (OSError / ValueError naming it). embed(loaded): a list of those → [b, C] float32.
    """

    def __init__(self, model, kind, revision=None, truncation=False, max_length=None):
        from .image_processing import BridgeTowerImageProcessor
        from .modeling import BridgeTowerForContrastiveLearning, open_checkpoint
        from .tokenizer import RobertaTokenizer

        if kind not in KINDS:
            raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
        checkpoint = open_checkpoint(model, revision)
        self.kind, self.folder, self.heads = kind, checkpoint.folder, checkpoint.heads
        self.model = BridgeTowerForContrastiveLearning.from_checkpoint(checkpoint)  # weights memory-mapped
        self.dim = int(self.model.config.contrastive_hidden_size)  # C
        if kind == "image":
            self.image_processor = BridgeTowerImageProcessor.from_pretrained(checkpoint.folder)
        else:
            self.tokenizer = RobertaTokenizer.from_pretrained(checkpoint.folder)
            # subtle: the model's own limit (its position table), which may be under the tokenizer's 512
            limit = self.model.config.text_config.max_text_length
            if max_length is not None and not 2 <= max_length <= limit:
                raise ValueError(f"max_length must be from 2 (<s> and </s>) to the model's limit of {limit} tokens, "
                                 f"got {max_length}")
            self.truncation, self.max_length = truncation, max_length or limit

    def load(self, x):
        if self.kind == "image":
            return self.image_processor.preprocess_one(x)  # [3, S, S]
        ids = self.tokenizer.encode(x)  # <s> … </s>: what the tokenizer's call returns, uncut
        if len(ids) > self.max_length:
            if not self.truncation:
                raise ValueError(f"the text is {len(ids)} tokens long (with <s> and </s>), over the limit of "
                                 f"{self.max_length}; pass --truncation (truncation=True) to cut it instead")
            ids = self.tokenizer(x, truncation=True, max_length=self.max_length)["input_ids"]
        return ids

    def embed(self, loaded):
        from .backend import to_numpy
        from .image_processing import pad_batch

        if self.kind == "image":
            pixels, _ = pad_batch(loaded)  # [b, 3, S, S], as the image processor batches them
            vectors = self.model.get_image_features(pixel_values=pixels)
        else:
            ids, mask = pad_ids(loaded, self.tokenizer.pad_token_id)  # [b, T] each
            vectors = self.model.get_text_features(input_ids=ids, attention_mask=mask)
        return np.asarray(to_numpy(vectors), dtype=np.float32)  # [b, C]

    def preprocessing(self):
        """The settings that turn an input into the model's input, as saved in the manifest."""
        if self.kind == "image":
            p = self.image_processor
            return {k: getattr(p, k) for k in ("size", "crop_size", "size_divisor", "do_resize", "do_center_crop",
                                               "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                                               "image_std", "do_pad")}
        return {"tokenizer": "RoBERTa byte-level BPE", "vocab_size": self.tokenizer.vocab_size,
                "truncation": self.truncation, "max_length": self.max_length, "padding": "to the batch's longest"}


def batches(embedder, inputs, start, batch_size, on_skip):
    """Read inputs[start:] in order → (loaded, positions, consumed) for every batch_size readable ones.

    An input that cannot be read goes to on_skip(position, input, reason) and is not in any batch;
    consumed counts the inputs each batch used up, the skipped ones included (for the progress bar).
    """
    loaded, positions, consumed = [], [], 0
    for position in range(start, len(inputs)):
        consumed += 1
        try:
            loaded.append(embedder.load(inputs[position]))
            positions.append(position)
        except (OSError, ValueError) as e:  # unreadable, undecodable, too long: named in the message
            on_skip(position, inputs[position], e)
        if len(loaded) == batch_size:
            yield loaded, positions, consumed
            loaded, positions, consumed = [], [], 0
    if loaded or consumed:
        yield loaded, positions, consumed


def embed_inputs(inputs, kind, model, batch_size=DEFAULT_BATCH_SIZE, revision=None, truncation=False,
                 max_length=None):
    """Embed a short list of inputs into one array [N, C] float32, every input required: the first
    that cannot be read raises. (For a collection, embed_collection writes an index instead.)"""
    embedder = Embedder(model, kind, revision, truncation, max_length)

    def refuse(position, x, error):
        raise error

    parts = [embedder.embed(loaded) for loaded, _, _ in batches(embedder, inputs, 0, batch_size, refuse) if loaded]
    return np.concatenate(parts)  # [N, C]


# ---- 3. the job ---------------------------------------------------------------------------------


@dataclass
class EmbedReport:
    """What a run of embed_collection did: the index folder, rows written in all, the inputs
    skipped [(input, reason)] in all, inputs counted, and this run's seconds and inputs read."""

    folder: Path
    rows: int
    skipped: list
    inputs: int
    seconds: float = 0.0
    read_now: int = 0
    notes: list = field(default_factory=list)

    @classmethod
    def of(cls, writer, inputs, start, start_time, notes):
        """The report of a finished IndexWriter: `inputs` in all, this run from input `start`."""
        m = writer.manifest
        return cls(writer.folder, m["rows"], [(s["id"], s["reason"]) for s in m["skipped"]], inputs,
                   time.monotonic() - start_time, inputs - start, notes)

    def __str__(self):
        lines = [f"wrote {self.folder}: {self.rows} of {self.inputs} inputs embedded"
                 + (f" ({self.read_now} read by this run in {self.seconds:.1f} s)" if self.read_now != self.inputs else
                    f" in {self.seconds:.1f} s")]
        lines += [f"note: {n}" for n in self.notes]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} input(s) that could not be read, listed with the reason in "
                         f"{self.folder / 'skipped.tsv'}; the first: {self.skipped[0][0]}: {self.skipped[0][1]}")
        return "\n".join(lines)


def embed_collection(inputs, kind, model, out, batch_size=None, shard_size=None, resume=False, revision=None,
                     truncation=False, max_length=None, column=None, progress=True):
    """Embed every input into the index folder `out`, a batch at a time; returns an EmbedReport.

    inputs: the PATH / TEXT_OR_FILE arguments (collect_inputs); kind: "image" or "text"; model: a
    contrastive checkpoint (Hub id or folder). batch_size: readable inputs per forward pass (default 8,
    or the index's own when resuming); shard_size: rows per shard, a multiple of batch_size (default:
    SHARD_ROWS rounded up to whole batches). resume: continue the index in `out` after its last
    complete shard (refused if another model, other settings or other inputs made it).
    progress: a progress bar on stderr (tqdm's if installed, else a plain line).
    """
    start_time = time.monotonic()
    items, notes = collect_inputs(inputs, kind, column)  # bad arguments fail before the model loads
    embedder = Embedder(model, kind, revision, truncation, max_length)
    batch_size, shard_size = shard_sizes(out, resume, batch_size, shard_size)
    header = describe(embedder, model, revision, items, batch_size, shard_size)
    writer = IndexWriter(out, header, resume=resume)
    start = writer.inputs_done
    with Progress(len(items), start, f"{kind}s", enabled=progress) as bar:
        for loaded, positions, consumed in batches(embedder, items, start, batch_size, writer.skip):
            if loaded:
                writer.add(embedder.embed(loaded), [items[p] for p in positions], positions)
            bar.update(consumed)
    writer.finish(len(items))
    return EmbedReport.of(writer, len(items), start, start_time, notes)


def shard_sizes(out, resume, batch_size, shard_size):
    """(batch_size, shard_size): as given, else the resumed index's, else the defaults; checked."""
    from .index import MANIFEST, read_manifest

    if resume and (Path(out) / MANIFEST).is_file():
        manifest = read_manifest(out)
        batch_size = manifest.get("batch_size") if batch_size is None else batch_size
        shard_size = manifest.get("shard_size") if shard_size is None else shard_size
    batch_size = positive_int(DEFAULT_BATCH_SIZE if batch_size is None else batch_size, "batch_size")
    rounded = -(-SHARD_ROWS // batch_size) * batch_size  # SHARD_ROWS rounded up to whole batches
    shard_size = positive_int(rounded if shard_size is None else shard_size, "shard_size")
    if shard_size % batch_size:
        raise ValueError(f"shard_size {shard_size} is not a multiple of batch_size {batch_size}: a shard must end "
                         "where a batch ends, so that a resumed run computes the batches of an uninterrupted one")
    return batch_size, shard_size


def describe(embedder, model, revision, items, batch_size, shard_size):
    """The manifest's header: what made the vectors (index.IDENTITY) and where the model was."""
    from . import __version__

    config = (embedder.folder / "config.json").read_bytes()
    names = hashlib.sha256("\0".join(items).encode("utf-8", "surrogatepass")).hexdigest()
    header = {"kind": embedder.kind, "model": str(model), "revision": revision,
              "model_path": str(Path(embedder.folder).resolve()), "config_sha256": hashlib.sha256(config).hexdigest(),
              "preprocessing": embedder.preprocessing(), "dim": embedder.dim,
              "batch_size": batch_size, "shard_size": shard_size, "inputs": {"count": len(items), "sha256": names},
              "base_dir": os.getcwd(), "minibridge_version": __version__}
    return json.loads(json.dumps(header))  # tuples as lists: as it reads back from the manifest


# ---- 4. progress --------------------------------------------------------------------------------


class Progress:
    """Inputs done of a total, with items/s and the time left, on stderr.

    tqdm's bar when tqdm is installed (`pip install "minibridge[progress]"`); else one line, rewritten
    in place on a terminal, printed every 10 s elsewhere (a log file gets a line, not a flood).
    """

    EVERY_S = 10.0

    def __init__(self, total, done=0, unit="items", enabled=True):
        self.total, self.done, self.unit, self.enabled = total, done, unit, enabled
        self.start, self.start_done, self.shown = time.monotonic(), done, 0.0
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=done, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)

    def __enter__(self):
        return self

    def update(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            now, tty = time.monotonic(), sys.stderr.isatty()
            if tty or now - self.shown >= self.EVERY_S or self.done == self.total:
                self.shown = now
                print(("\r" if tty else "") + self.line(now), end="" if tty else "\n", file=sys.stderr, flush=True)

    def line(self, now=None):
        """'160/400 images  12.3/s  ETA 0:00:19'"""
        elapsed = (now or time.monotonic()) - self.start
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left is not None else "?"
        return f"{self.done}/{self.total} {self.unit}  {rate:.1f}/s  ETA {eta}"

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and sys.stderr.isatty():
            print(file=sys.stderr)  # end the line rewritten in place
