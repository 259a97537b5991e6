"""The command line: `minibridge ...` or `python -m minibridge ...` (see --help)."""

import argparse
import sys
from pathlib import Path

from .infer import DEFAULT_MODEL

EXAMPLES = """examples:
  minibridge infer cats.jpg "two cats on a sofa" "a plate of food"
  minibridge infer http://images.cocodataset.org/val2017/000000039769.jpg "a bunch of <mask> laying on a tower."
  minibridge download BridgeTower/bridgetower-large-itm-mlm-itc
  minibridge embed --model BridgeTower/bridgetower-large-itm-mlm-itc --image a.jpg b.jpg --out images.npy
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minibridge", description="BridgeTower in NumPy: score, fill in and "
                                     "embed images and text.", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="show Python's traceback on an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("infer", help="score texts against an image, or fill in <mask>")
    p.add_argument("image", help="a path or an http(s) URL")
    p.add_argument("text", nargs="+", help="one or more texts (put <mask> where a word goes to fill it in)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id or local folder (default {DEFAULT_MODEL})")
    p.add_argument("--task", choices=["itm", "mlm", "itc"], help="default: chosen from the checkpoint and text")
    p.add_argument("--top-k", type=int, default=5, help="candidates shown per <mask> (default 5)")
    p.add_argument("--revision", help="branch, tag, commit or refs/pr/N on the Hub")

    p = sub.add_parser("download", help="download a checkpoint from the Hub (then it works offline)")
    p.add_argument("id", help="e.g. BridgeTower/bridgetower-base-itm-mlm")
    p.add_argument("--revision")

    p = sub.add_parser("convert", help="write model.safetensors beside a pytorch_model.bin (no torch needed)")
    p.add_argument("folder")

    p = sub.add_parser("embed", help="contrastive embeddings of images or texts (one vector each)")
    p.add_argument("--model", required=True, help="a contrastive checkpoint, e.g. "
                   "BridgeTower/bridgetower-large-itm-mlm-itc")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--image", nargs="+", metavar="PATH")
    group.add_argument("--text", nargs="+")
    p.add_argument("--out", help="write the [N, C] float32 array to this .npy file (default: print shapes)")
    p.add_argument("--revision")

    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 -- every error becomes one readable paragraph, no traceback
        if args.traceback or not _is_user_error(e):
            raise
        print(f"minibridge {args.command}: {e}", file=sys.stderr)
        return 1


def _infer(args):
    from .infer import infer

    print(infer(args.image, args.text, model=args.model, task=args.task, top_k=args.top_k, revision=args.revision))
    return 0


def _download(args):
    from .convert import ensure_safetensors
    from .hub import resolve

    folder = ensure_safetensors(resolve(args.id, args.revision))
    print(folder)
    return 0


def _convert(args):
    from .convert import convert_folder

    print(convert_folder(Path(args.folder)))
    return 0


def _embed(args):
    import numpy as np

    from .modeling import BridgeTowerForContrastiveLearning
    from .processing import BridgeTowerProcessor

    model = BridgeTowerForContrastiveLearning.from_pretrained(args.model, revision=args.revision)
    processor = BridgeTowerProcessor.from_pretrained(args.model, revision=args.revision)
    if args.image:
        vectors = model.get_image_features(processor(images=args.image)["pixel_values"])
    else:
        enc = processor(text=args.text, padding=True)
        vectors = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    vectors = np.asarray(vectors, dtype=np.float32)  # [N, C]
    names = args.image or args.text
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


COMMANDS = {"infer": _infer, "download": _download, "convert": _convert, "embed": _embed}


def _is_user_error(e):
    """Errors that say what went wrong in the input or the environment (not bugs in minibridge)."""
    return isinstance(e, (ValueError, TypeError, OSError)) or type(e).__name__ in ("HubError", "ConvertError")


if __name__ == "__main__":
    sys.exit(main())
