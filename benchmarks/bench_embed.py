"""Benchmark: `minibridge embed` (the streaming job) against a loop over transformers, side by side.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_embed.py --model FOLDER \
        [--images 16] [--texts 96] [--batch-size 8] [--rounds 1] [--threads N]

FOLDER: a checkpoint with the contrastive (ITC) head, e.g. a random base one made by
`minibridge random-checkpoint /tmp/base --size base --tokenizer path/to/roberta-base` (timing only:
its vectors are noise). The inputs are the shared photos and COCO captions (tests/paths.py; generated
ones when those are absent), repeated to --images / --texts, so both sides decode the same files.

Each measurement runs in a fresh process, the two libraries alternating:
  minibridge    embedding.embed_collection: the folder (or the caption file) to an index folder,
                decoding, preprocessing, both forward passes, shards and manifest; its own model
                load (memory-mapped, a fraction of a second) is inside the time.
  transformers  BridgeTowerProcessor + BridgeTowerForContrastiveLearning loaded first (not timed),
                then a loop over batches: decode with PIL, process, and run one tower under
                torch.no_grad(). transformers has no get_image_features for BridgeTower, so the
                tower alone is written out from its contrastive forward (_transformers_features):
                vision tower, forward_post, the image transform + token type, itc_image_head,
                normalise; or RoBERTa's last layer, itc_text_head, normalise.
Reported: items/s (median over the rounds), the peak RSS of each process (minibridge's counts the
memory-mapped weight pages it has read: file cache, not allocations), and the largest difference
between the two libraries' vectors, which checks that the loop computes the same thing.
--threads N sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS and torch's threads in the workers: on a
machine whose cores other work keeps busy, OpenBLAS's spinning threads can slow NumPy several-fold,
and one thread each gives steadier figures.
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's minibridge, and tests/paths.py
from paths import PHOTOS, SHARED_DATA  # noqa: E402

CAPTIONS = SHARED_DATA / "captions" / "coco_captions.tsv"


# ---- the workers (each in its own process) -------------------------------------------------------


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def minibridge_worker(model, kind, source, batch_size, out):
    from minibridge.embedding import embed_collection
    from minibridge.index import Index

    start = time.perf_counter()
    report = embed_collection([source], kind, model=model, out=out / "index", batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    import numpy as np

    np.save(out / "vectors.npy", np.asarray(Index.open(out / "index").vectors))
    return {"seconds": seconds, "items": report.rows, "peak_mb": _peak_rss_mb()}


def _transformers_features(model, kind, batch):
    """The embeddings of one tower, as BridgeTowerForContrastiveLearning.forward computes them."""
    import torch

    bt = model.bridgetower
    if kind == "text":
        last = bt.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return torch.nn.functional.normalize(model.itc_text_head(last[:, 0, :]), dim=-1, p=2)
    x = bt.vision_model.visual.forward_pre(batch["pixel_values"])
    for block in bt.vision_model.visual.transformer.resblocks:
        x = block(x)
    x = bt.vision_model.visual.forward_post(x)
    token_type = bt.token_type_embeddings(torch.full((1,), 1, dtype=torch.long)).expand_as(x)
    x = bt.cross_modal_image_transform(x) + token_type
    return torch.nn.functional.normalize(model.itc_image_head(x[:, 0, :]), dim=-1, p=2)


def transformers_worker(model, kind, source, batch_size, out):
    import numpy as np
    import PIL.Image
    import torch
    import transformers

    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    processor = transformers.BridgeTowerProcessor.from_pretrained(model)
    net = transformers.BridgeTowerForContrastiveLearning.from_pretrained(model).eval()
    if kind == "image":
        items = sorted(str(p) for p in Path(source).iterdir())
    else:
        items = Path(source).read_text(encoding="utf-8").splitlines()
    vectors = []
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(items), batch_size):
            some = items[i:i + batch_size]
            if kind == "image":
                images = [PIL.Image.open(p).convert("RGB") for p in some]
                batch = processor.image_processor(images, return_tensors="pt")
            else:
                batch = processor.tokenizer(some, padding=True, return_tensors="pt")
            vectors.append(_transformers_features(net, kind, batch).numpy())
    seconds = time.perf_counter() - start
    np.save(out / "vectors.npy", np.concatenate(vectors))
    return {"seconds": seconds, "items": len(items), "peak_mb": _peak_rss_mb()}


WORKERS = {"minibridge": minibridge_worker, "transformers": transformers_worker}


def _run(lib, model, kind, source, batch_size, threads):
    """One measurement in a fresh process: its figures, and the vectors it made."""
    env = dict(os.environ, **({"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
                              if threads else {}))
    out = Path(tempfile.mkdtemp(prefix=f"bench-embed-{lib}-"))
    try:
        cmd = [sys.executable, __file__, "--worker", lib, "--kind", kind, "--source", str(source), "--model",
               str(model), "--batch-size", str(batch_size), "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{lib} {kind} worker failed:\n{r.stderr[-3000:]}")
        import numpy as np

        return json.loads(r.stdout.strip().splitlines()[-1]), np.load(out / "vectors.npy")
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ---- the inputs -----------------------------------------------------------------------------------


def make_inputs(folder, n_images, n_texts):
    """(a folder of n_images photos, a file of n_texts captions): the shared ones repeated, or generated."""
    import numpy as np
    import PIL.Image

    photos = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpg", ".png")) if PHOTOS.is_dir() else []
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_images):
        if photos:
            source = photos[i % len(photos)]
            shutil.copyfile(source, images / f"im{i:04d}{source.suffix}")
        else:
            PIL.Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(images / f"im{i:04d}.jpg")
    if CAPTIONS.is_file():
        with open(CAPTIONS, encoding="utf-8", newline="") as f:
            captions = [row["caption"].strip() for row in csv.DictReader(f, delimiter="\t")]
    else:
        captions = [f"a photo of {n} things on a table near a window" for n in range(50)]
    texts = folder / "captions.txt"
    texts.write_text("\n".join(captions[i % len(captions)] for i in range(n_texts)) + "\n", encoding="utf-8")
    return images, texts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a checkpoint folder with the ITC head")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--texts", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, help="BLAS / torch threads per worker (default: each library's own)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.model, args.kind, args.source, args.batch_size, Path(args.out))))
        return

    import numpy as np

    print(f"embedding throughput, {args.model}, batch {args.batch_size}, {args.rounds} round(s); "
          f"{os.cpu_count()} cores, threads {args.threads or 'default'}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        images, texts = make_inputs(Path(tmp), args.images, args.texts)
        rows = []
        for kind, source, n in (("image", images, args.images), ("text", texts, args.texts)):
            figures = {"minibridge": [], "transformers": []}
            vectors = {}
            for r in range(args.rounds):
                for lib in (("minibridge", "transformers") if r % 2 == 0 else ("transformers", "minibridge")):
                    result, vectors[lib] = _run(lib, args.model, kind, source, args.batch_size, args.threads)
                    figures[lib].append(result)
                    print(f"  {kind}s, {lib}: {n / result['seconds']:.2f}/s, peak {result['peak_mb']:.0f} MB",
                          flush=True)
            rate = {lib: statistics.median(n / f["seconds"] for f in fs) for lib, fs in figures.items()}
            peak = {lib: max(f["peak_mb"] for f in fs) for lib, fs in figures.items()}
            diff = float(np.abs(vectors["minibridge"] - vectors["transformers"]).max())
            rows.append((f"{kind}s/s", rate, peak, diff))
        print(f"\n{'':12} {'minibridge':>12} {'transformers':>13} {'ratio':>7}   peak RSS MB (mb / tf)   "
              "max |mb - tf| of the vectors")
        for name, rate, peak, diff in rows:
            print(f"{name:12} {rate['minibridge']:12.2f} {rate['transformers']:13.2f} "
                  f"{rate['minibridge'] / rate['transformers']:6.2f}x   {peak['minibridge']:7.0f} / "
                  f"{peak['transformers']:<7.0f}         {diff:.2g}")


if __name__ == "__main__":
    main()
