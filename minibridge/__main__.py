"""The command line: `minibridge ...` or `python -m minibridge ...` (see --help)."""

import argparse
import sys
from pathlib import Path

# subtle: nothing heavy is imported before main() is running, so that ^C while NumPy & co. load is
# caught below (exit 130, no traceback); `import minibridge` itself does the same (its __init__).
DEFAULT_MODEL = "BridgeTower/bridgetower-base-itm-mlm"  # infer.DEFAULT_MODEL (a test keeps them equal)

EXAMPLES = """examples:
  minibridge infer cats.jpg "two cats on a sofa" "a plate of food"
  minibridge infer http://images.cocodataset.org/val2017/000000039769.jpg "a bunch of <mask> laying on a tower."
  minibridge download BridgeTower/bridgetower-large-itm-mlm-itc
  minibridge embed --model BridgeTower/bridgetower-large-itm-mlm-itc --image photos/ --out photos.index
  minibridge search photos.index "two cats on a sofa" --k 5 --rerank 20
  minibridge random-checkpoint weights/random-base --size base --tokenizer path/to/roberta-base
  minibridge finetune pairs.csv --model BridgeTower/bridgetower-base-itm-mlm --out weights/my-itm --epochs 3
"""

# `minibridge embed --out INDEX_DIR`: the index is complete, but some inputs could not be read (skipped.tsv)
SKIPPED_STATUS = 3

EMBED_HELP = """Embed images or texts with a contrastive checkpoint, one batch in memory at a time.

With --out INDEX_DIR (the usual way) the vectors go to an index folder: float32 shards (.npy) and a
manifest.json of their ids, the model and the preprocessing; `minibridge search` and
minibridge.index.Index.open read it. An input that cannot be read (a corrupt image, a text over the
model's length) is skipped and listed with the reason in INDEX_DIR/skipped.tsv. A run stopped by ^C or
a crash continues with --resume, from its last complete shard.

A TEXT_OR_FILE that names an existing file is read as a file (UTF-8, one caption per line, blank lines
left out; .csv/.tsv/.parquet with --column); any other argument is the text itself.

exit status: 0 every input embedded; 3 the index is complete but some inputs were skipped;
1 an error (nothing embedded, or the run stopped: --resume continues it); 130 interrupted by ^C.
"""

# The architectures `random-checkpoint` can make (config.py's TINY_REAL_VOCAB, BASE, LARGE).
SIZES = ("tiny", "base", "large")


def main(argv=None):
    """Run one command; returns the exit status (0 done, 1 bad input, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # --traceback may come anywhere before a "--" (after it, every word is a text)
    end = argv.index("--") if "--" in argv else len(argv)
    show_traceback = "--traceback" in argv[:end]
    argv = [a for a in argv[:end] if a != "--traceback"] + argv[end:]
    try:
        return _run(argv, show_traceback)
    except KeyboardInterrupt:
        return 130  # the shell's status for ^C, without Python's traceback


def _run(argv, show_traceback):
    parser = argparse.ArgumentParser(prog="minibridge", description="BridgeTower in NumPy: score, fill in and "
                                     "embed images and text.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="show Python's traceback on an error "
                        "(anywhere on the line)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="score texts against an image, or fill in <mask>")
    p.add_argument("image", help="a path or an http(s) URL")
    p.add_argument("text", nargs="+", help="one or more texts (put <mask> where a word goes to fill it in)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id or local folder (default {DEFAULT_MODEL})")
    p.add_argument("--task", choices=["itm", "mlm", "itc"], help="default: chosen from the checkpoint and text")
    p.add_argument("--top-k", type=_count, default=5, help="candidates shown per <mask> (default 5)")
    p.add_argument("--revision", help="branch, tag, commit or refs/pr/N on the Hub")
    p.add_argument("--truncation", action="store_true", help="cut texts longer than the model takes "
                   "(512 tokens, or --max-length) instead of refusing them")
    p.add_argument("--max-length", type=_count, help="the longest text in tokens, <s> and </s> included")
    p.add_argument("--batch-size", type=_count, default=8, help="texts per forward pass (default 8): memory "
                   "stays that of one batch however many texts")

    p = sub.add_parser("download", help="download a checkpoint from the Hub (then it works offline)")
    p.add_argument("id", help="e.g. BridgeTower/bridgetower-base-itm-mlm")
    p.add_argument("--revision")

    p = sub.add_parser("convert", help="write model.safetensors beside a pytorch_model.bin (no torch needed)")
    p.add_argument("folder")
    p.add_argument("--force", action="store_true", help="replace an existing model.safetensors")

    p = sub.add_parser("embed", help="contrastive embeddings of images or texts: an index folder (or one .npy)",
                       description=EMBED_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a contrastive checkpoint, e.g. "
                   "BridgeTower/bridgetower-large-itm-mlm-itc")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--image", nargs="+", metavar="PATH", help="image files, folders (searched recursively), "
                       "glob patterns, http(s) URLs, or a table with --column")
    group.add_argument("--text", nargs="+", metavar="TEXT_OR_FILE", help="texts, or text files with one caption "
                       "per line, or a table with --column")
    p.add_argument("--out", metavar="INDEX_DIR", help="the index folder to write; a name ending in .npy writes one "
                   "[N, C] float32 array instead (every input must be readable); none: print each vector's start")
    p.add_argument("--column", help="the column of a .csv/.tsv/.parquet input that holds the paths or texts")
    p.add_argument("--batch-size", type=_count, help="inputs per forward pass (default 8; memory holds one batch)")
    p.add_argument("--shard-size", type=_count, metavar="ROWS", help="rows per shard file, a multiple of the batch "
                   "size (default: 4096 rounded up to whole batches)")
    p.add_argument("--resume", action="store_true", help="continue the index in --out after its last complete shard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--revision")
    p.add_argument("--truncation", action="store_true", help="cut texts longer than the model takes (or --max-length) "
                   "instead of skipping them")
    p.add_argument("--max-length", type=_count, help="the longest text in tokens, <s> and </s> included")
    p.add_argument("--ray", action="store_true", help="run on Ray Data: a pool of actors, each holding one model "
                   "(pip install \"minibridge[scale]\"); writes the same index")
    p.add_argument("--address", help="with --ray: the cluster to join (default: a local Ray started for this run)")
    p.add_argument("--actors", type=_count, default=2, help="with --ray: how many model-holding actors (default 2)")

    p = sub.add_parser("search", help="the rows of an index nearest to a text or an image (ITM re-ranking optional)")
    p.add_argument("index", help="an index folder made by `minibridge embed --out INDEX_DIR`")
    p.add_argument("query", help="a text, for an index of images; an image path or URL, for an index of texts")
    p.add_argument("--k", type=_count, default=10, help="rows to show (default 10)")
    p.add_argument("--rerank", type=_count, metavar="K", help="re-score the K nearest with the image-text matching "
                   "(ITM) head and order them by its match probability")
    p.add_argument("--model", help="the checkpoint that embeds the query and re-ranks (default: the index's own; "
                   "--rerank needs one with an ITM head)")
    p.add_argument("--revision")
    p.add_argument("--batch-size", type=_count, default=8, help="pairs per ITM forward pass (default 8)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("random-checkpoint", help="write a checkpoint of random weights (no network): to run "
                       "the notebooks and the code offline; its outputs are noise")
    p.add_argument("out", help="the folder to write (Hub layout: config.json, model.safetensors, tokenizer files)")
    p.add_argument("--size", choices=SIZES, default="base", help="the architecture: tiny (seconds, 12-pixel "
                   "images), base (1.3 GB, the published base model's shapes; the default) or large (3.5 GB)")
    p.add_argument("--heads", nargs="+", choices=["itm", "mlm", "itc"], default=["itm", "mlm", "itc"],
                   help="task heads to include (default: all three)")
    p.add_argument("--tokenizer", metavar="DIR", help="a folder with RoBERTa's vocab.json and merges.txt (any "
                   "BridgeTower or roberta-base download); default: one found in minibridge's download folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace OUT if it already holds a checkpoint")

    p = sub.add_parser("finetune", help="fine-tune the ITM (or ITC) head on image-caption pairs; saves a checkpoint")
    p.add_argument("data", help="a CSV file with header image,caption (paths relative to it, or URLs), or a "
                   "folder of images x.jpg each with its caption in x.txt")
    p.add_argument("--model", required=True, help="Hub id or local folder of the checkpoint to start from")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (new, empty, or a checkpoint)")
    p.add_argument("--task", choices=["itm", "itc"], default="itm", help="itm (default): the pairs and as many "
                   "mismatched negatives; itc: the contrastive loss over each batch's pairs")
    p.add_argument("--epochs", type=_count, default=1)
    p.add_argument("--batch-size", type=_count, default=8, help="pairs per step (default 8; ITM adds as many "
                   "negatives)")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW's learning rate (default 1e-5)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--train", choices=["heads", "cross", "all"], default="cross", help="the weights trained: "
                   "the task's head, the head and the cross-modal layers (default), or every weight")
    p.add_argument("--save-every", type=_count, metavar="N", help="also save to OUT every N steps")
    p.add_argument("--seed", type=int, default=0, help="the order of the pairs and the negatives drawn")
    p.add_argument("--revision")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except Exception as e:  # noqa: BLE001 -- every error becomes one readable paragraph, no traceback
        if show_traceback or not _is_user_error(e):
            raise
        print(f"minibridge {args.command}: {e}", file=sys.stderr)
        return 1


def _infer(args):
    from .infer import infer

    print(infer(args.image, args.text, model=args.model, task=args.task, top_k=args.top_k, revision=args.revision,
                truncation=args.truncation, max_length=args.max_length, batch_size=args.batch_size))
    return 0


def _download(args):
    from .convert import ensure_safetensors
    from .hub import resolve

    folder = ensure_safetensors(resolve(args.id, args.revision))
    print(folder)
    return 0


def _convert(args):
    from .convert import convert_folder

    print(convert_folder(Path(args.folder), force=args.force))
    return 0


def _embed(args):
    from .embedding import ExtraNeeded

    index = args.out is not None and not args.out.lower().endswith(".npy")
    if not index:
        used = [flag for flag, on in (("--resume", args.resume), ("--ray", args.ray), ("--shard-size", args.shard_size))
                if on]
        if used:
            raise ValueError(f"{used[0]} needs --out INDEX_DIR (an index folder), got "
                             + (f"--out {args.out}" if args.out else "no --out"))
    try:
        return _embed_index(args) if index else _embed_array(args)
    except ExtraNeeded as e:  # an optional dependency: say what to install, without a traceback
        print(f"minibridge embed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # main() makes it exit 130; say first what is kept and how to go on
        if index and (Path(args.out) / "manifest.json").is_file():
            from .index import read_manifest

            m = read_manifest(args.out)
            print(f"minibridge embed: interrupted; {args.out} keeps the {m['inputs_done']} inputs done of "
                  f"{m['inputs']['count']}: run the same command with --resume to continue", file=sys.stderr)
        raise


def _embed_index(args):
    from .embedding import embed_collection

    _print_names_as_bytes()
    options = dict(kind="image" if args.image else "text", model=args.model, out=args.out,
                   batch_size=args.batch_size, shard_size=args.shard_size, resume=args.resume, revision=args.revision,
                   truncation=args.truncation, max_length=args.max_length, column=args.column,
                   progress=not args.no_progress)
    if args.ray:
        from .scale import embed_on_ray

        report = embed_on_ray(args.image or args.text, address=args.address, actors=args.actors, **options)
    else:
        report = embed_collection(args.image or args.text, **options)
    print(report)
    return SKIPPED_STATUS if report.skipped else 0


def _embed_array(args):
    import numpy as np

    from .embedding import collect_inputs, embed_inputs

    kind = "image" if args.image else "text"
    names, notes = collect_inputs(args.image or args.text, kind, args.column)
    for note in notes:
        print(f"minibridge embed: {note}", file=sys.stderr)
    vectors = embed_inputs(names, kind, args.model, batch_size=args.batch_size or 8, revision=args.revision,
                           truncation=args.truncation, max_length=args.max_length)  # [N, C]
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".partial")
        try:
            with open(tmp, "wb") as f:
                np.save(f, vectors)
            tmp.replace(out)  # no half-written file if interrupted
        finally:
            tmp.unlink(missing_ok=True)
        print(f"wrote {out}: {vectors.shape[0]} × {vectors.shape[1]} float32")
    else:
        for name, v in zip(names, vectors):
            print(f"{name}: [{v.shape[0]}] first values {np.array2string(v[:4], precision=4)}")
    return 0


def _search(args):
    from .retrieval import retrieve

    _print_names_as_bytes()
    found = retrieve(args.index, args.query, k=args.k, rerank=args.rerank, model=args.model, revision=args.revision,
                     batch_size=args.batch_size)
    print(found.to_json() if args.json else found)
    return 0


def _print_names_as_bytes():
    """Let print() write a file name that is not UTF-8 ("caf\\udce9.jpg", as Python reads b"caf\\xe9.jpg")
    with its own bytes, as ls does, rather than fail after the work is done (stdout is strict under
    most UTF-8 locales)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")


def _random_checkpoint(args):
    import os
    import shutil

    from .config import BASE, LARGE, TINY_REAL_VOCAB
    from .weights import check_tokenizer_dir, save_random_checkpoint

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.force or not (out / "config.json").is_file():
            raise FileExistsError(f"{out} exists and is not empty; choose a new folder"
                                  + (" or pass --force to replace this checkpoint" if (out / "config.json").is_file()
                                     else " (--force replaces only a checkpoint folder)"))
    tokenizer = check_tokenizer_dir(args.tokenizer) if args.tokenizer else _found_tokenizer()
    config = {"tiny": TINY_REAL_VOCAB, "base": BASE, "large": LARGE}[args.size]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside OUT and renamed into place: an error or ^C leaves no half-made checkpoint.
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        tmp.mkdir()
        save_random_checkpoint(tmp, config, tuple(args.heads), args.seed, tokenizer)
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size_gb = (out / "model.safetensors").stat().st_size / 1e9
    print(f"wrote {out}: the {args.size} architecture with random weights (seed {args.seed}), heads "
          f"{' '.join(args.heads)}, {size_gb:.2f} GB; tokenizer files from {tokenizer}.\n"
          "Its outputs are noise (config.json says so); it is for running the code and notebooks offline:\n"
          f"  MINIBRIDGE_MODEL={out} jupyter lab notebooks/\n"
          f"  minibridge infer --model {out} photo.jpg \"a caption\"")
    return 0


def _finetune(args):
    from . import finetune
    from .hub import resolve
    from .modeling import BridgeTowerForContrastiveLearning, BridgeTowerForImageAndTextRetrieval
    from .processing import BridgeTowerProcessor
    from .weights import _check_save_folder

    pairs = finetune.read_pairs(args.data)  # bad data is refused before anything is loaded or written
    if args.task == "itc":
        finetune.check_contrastive(len(pairs), args.batch_size)  # every ITC batch needs two pairs or more
    _check_save_folder(Path(args.out))  # a folder of other files is refused now, not after training
    cls = {"itm": BridgeTowerForImageAndTextRetrieval, "itc": BridgeTowerForContrastiveLearning}[args.task]
    model = cls.from_pretrained(args.model, revision=args.revision)
    processor = BridgeTowerProcessor.from_pretrained(args.model, revision=args.revision)
    source = resolve(args.model, args.revision, weights=False)  # (already here: from_pretrained fetched it)
    losses = finetune.train(model, processor, pairs, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, train=args.train, seed=args.seed,
                            save_every=args.save_every, save=lambda: finetune.save(model, source, args.out))
    out = finetune.save(model, source, args.out)
    print(f"wrote {out}: {args.task} fine-tuned on {len(pairs)} pairs, {args.epochs} epoch(s), {len(losses)} "
          f"steps; loss {losses[0]:.4f} -> {losses[-1]:.4f}\n  minibridge infer --model {out} IMAGE \"a caption\"")
    return 0


def _count(text):
    """argparse's type for a count: a positive integer."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _found_tokenizer():
    """RoBERTa's tokenizer files from a checkpoint minibridge already downloaded, or a clear error."""
    from .hub import default_home

    home = default_home()
    for folder in sorted(home.glob("*/*/")) if home.is_dir() else ():
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return folder
    raise FileNotFoundError(
        "a checkpoint needs RoBERTa's tokenizer files (vocab.json and merges.txt) and none were given or found "
        f"in {home}. Pass --tokenizer DIR, a folder that holds them: any BridgeTower checkpoint folder "
        "(`minibridge download BridgeTower/bridgetower-base-itm-mlm` on a machine with internet puts one in "
        f"{home}), or the two files of https://huggingface.co/FacebookAI/roberta-base copied to one folder.")


COMMANDS = {"infer": _infer, "download": _download, "convert": _convert, "embed": _embed, "search": _search,
            "random-checkpoint": _random_checkpoint, "finetune": _finetune}


def _is_user_error(e):
    """Errors that say what went wrong in the input or the environment (not bugs in minibridge)."""
    # TooLargeError: an input refused up front by a size check (a MemoryError that is not a crash)
    return isinstance(e, (ValueError, TypeError, OSError)) or type(e).__name__ in ("HubError", "ConvertError",
                                                                                  "TooLargeError")


if __name__ == "__main__":
    sys.exit(main())
