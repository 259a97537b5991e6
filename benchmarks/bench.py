"""Benchmark: minibridge against transformers, side by side, on a base-size checkpoint.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py [--model FOLDER] [--rounds 5]

Uses a real checkpoint if given (or found in the default download folder), else random weights of
the published base architecture, written on the spot. Every measurement runs in a fresh process, so
one library's threads, caches and memory never touch the other's, and the two libraries alternate
(round r runs minibridge first when r is even, transformers first when odd). Each figure is the
median over the rounds (at least 5 by default), shown with the min and max: on a shared machine one
run can be tens of percent off.

Per process and library: load time; the ITM forward at batch 1 and 8 (16-token texts, base-size
images; the median of 3 after a warm-up); one image against 8 texts (minibridge's score_pairs, each
tower once per input; transformers has no such path, and its fastest way is one batch of the 8
pairs, the batch-8 row); peak resident memory of load + one forward at batch 1 and at batch 8 (each
its own process); one training step of the ITM head at batch 4 (minibridge's loss_and_grads vs torch
autograd, eval mode); the end-to-end time of one `infer` from a cold process. Then the ratios, the
machine's sustained float32 matrix-product rate (NumPy, 3072², measured in each round), and the
fraction of it each library's forward reaches, counting the FLOPs of the full forward pass from the
config (bench.forward_flops). With --device cuda it times the GPU forward (CuPy vs torch CUDA) at
batch 8 and 32.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's minibridge, and tests/paths.py
from paths import PHOTOS, ROBERTA  # noqa: E402  (the one definition of where the shared test data is)

TEXT_TOKENS = 16
TRAIN_BATCH = 4
PAIR_TEXTS = 8  # one image against this many texts
PHOTO = PHOTOS / "000000039769.png"  # the COCO two-cats photo


# ---- what runs inside a worker subprocess ----------------------------------------------------


def _inputs(cfg_dict, batch, seed=0, images=None):
    import numpy as np

    rng = np.random.default_rng(seed)
    size = cfg_dict.get("vision_config", {}).get("image_size", 288)
    ids = rng.integers(3, 50000, size=(batch, TEXT_TOKENS))
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "pixel_values": rng.standard_normal((batch if images is None else images, 3, size, size)).astype(np.float32)}


def median_time(fn, repeats=3):
    """Median wall time of fn() in seconds, over `repeats` runs after one warm-up run."""
    fn()  # warm-up: pages the weights in, fills caches, starts thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB; MB = 10⁶ bytes


def _train_labels(batch):
    import numpy as np

    return np.arange(batch) % 2  # ITM labels [B]: alternately mismatched (0) and matched (1)


def _load(lib, folder, device="cpu"):
    """(model, run(inputs) -> logits as NumPy, load seconds) of the ITM class of `lib`."""
    if lib == "minibridge":
        import minibridge as mb

        start = time.perf_counter()  # load time, not counting the import
        model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder, device=device)
        load_s = time.perf_counter() - start
        if device == "cuda":
            import cupy

            def run(inp):
                return model(**{k: cupy.asarray(v) for k, v in inp.items()}).logits.get()
        else:
            def run(inp):
                return model(**inp).logits
        return model, run, load_s
    import torch
    import transformers

    start = time.perf_counter()
    model = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder).eval()  # no dropout
    model.to(device)
    load_s = time.perf_counter() - start

    def run(inp):
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v).to(device) for k, v in inp.items()}).logits.cpu().numpy()
    return model, run, load_s


def worker(lib, folder, mode, batches, device):
    """Measure one library in this (fresh) process; print one JSON line."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    if mode == "gemm":
        print(json.dumps({"matmul_gflops": matmul_gflops()}))
        return
    if mode == "train":
        return train_worker(lib, folder, batches[0])
    model, run, load_s = _load(lib, folder, device)
    if mode == "memory":  # load + one forward at one batch size: its peak resident memory
        run(_inputs(cfg, batches[0]))
        print(json.dumps({"lib": lib, f"peak_rss_b{batches[0]}_mb": _peak_rss_mb()}))
        return
    result = {"lib": lib, "load_s": load_s}
    for b in batches:
        result[f"forward_b{b}_s"] = median_time(lambda: run(_inputs(cfg, b)), repeats=3)
    if lib == "minibridge" and device == "cpu":
        pair = _inputs(cfg, PAIR_TEXTS, images=1)
        result[f"pairs_1x{PAIR_TEXTS}_s"] = median_time(
            lambda: model.score_pairs(pair["input_ids"], pair["attention_mask"], pair["pixel_values"]))
    print(json.dumps(result))


def train_worker(lib, folder, batch):
    """Time one ITM training step (forward + backward) and measure the peak RSS of load + steps."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    inputs, labels = _inputs(cfg, batch), _train_labels(batch)
    if lib == "minibridge":
        import minibridge as mb

        model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)

        def step():
            model.loss_and_grads(**inputs, labels=labels)
    else:
        import torch
        import transformers

        model = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder).eval()  # no dropout
        pt_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
        pt_labels = torch.from_numpy(labels)

        def step():
            model.zero_grad(set_to_none=True)  # subtle: else each step adds into the last one's .grad
            model(**pt_inputs, labels=pt_labels).loss.backward()
    result = {"lib": lib, f"train_b{batch}_s": median_time(step, repeats=1)}
    result["train_peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


# ---- the orchestrating process ---------------------------------------------------------------


def _run_worker(lib, folder, mode, batches, device):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", lib, "--model", str(folder), "--mode", mode,
           "--device", device, "--batches", *map(str, batches)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{lib} {mode} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed_command(cmd):
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{cmd[:4]} failed:\n{r.stderr[-2000:]}")
    return time.perf_counter() - start


def matmul_gflops(n=3072, repeats=5):
    """Sustained float32 matrix-product throughput of this process's NumPy, in GFLOP/s (best of `repeats`)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def forward_flops(cfg, batch, text_tokens=TEXT_TOKENS):
    """Multiply-add FLOPs (×2) of the matrix products of one full ITM forward pass (every row of every layer)."""
    t, v = cfg.text_config, cfg.vision_config
    D, Dt, Dv, F, T = cfg.hidden_size, t.hidden_size, v.hidden_size, t.intermediate_size, text_tokens
    L = v.num_positions
    patches = (L - 1) * 3 * v.patch_size**2 * Dv
    vision_block = L * (4 * Dv * Dv + 8 * Dv * Dv) + 2 * L * L * Dv  # qkv+out, MLP 4×, scores + context
    text_layer = T * (4 * Dt * Dt + 2 * Dt * F) + 2 * T * T * Dt

    def cross(S, S_other):  # self-attn (4 projections), cross q/o on S and k/v on S_other, FFN
        return S * (6 * D * D + 2 * D * F) + 2 * S_other * D * D + 2 * S * S * D + 2 * S * S_other * D

    n_cross = cfg.num_hidden_layers
    bridges = n_cross * (T * Dt * D + L * Dv * D)
    total = (patches + v.num_hidden_layers * vision_block + t.num_hidden_layers * text_layer
             + n_cross * (cross(T, L) + cross(L, T)) + bridges + 2 * D * D + 2 * 2 * D)
    return 2 * batch * total


def _checkpoint(model_arg, workdir):
    """A folder to benchmark, and a description of it."""
    from minibridge.hub import default_home

    if model_arg:
        return Path(model_arg), f"checkpoint {model_arg}"
    real = default_home() / "BridgeTower--bridgetower-base-itm-mlm" / "main"
    if (real / "model.safetensors").is_file():
        return real, f"real checkpoint {real}"
    from minibridge.config import BASE
    from minibridge.weights import save_random_checkpoint

    folder = save_random_checkpoint(Path(workdir) / "base", BASE, heads=("itm",),
                                    tokenizer_dir=ROBERTA if ROBERTA.is_dir() else None)
    return folder, "random weights of the published base architecture (bridgetower-base-itm-mlm)"


def machine():
    """One line: CPU model, cores, and the library versions (NumPy with its BLAS)."""
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {}) if hasattr(np.__config__, "CONFIG") else {}
    versions = [f"NumPy {np.__version__} ({blas.get('name', '?')} {blas.get('version', '')})".replace(" )", ")")]
    for name in ("torch", "transformers"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; " + ", ".join(versions)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a checkpoint folder (default: the downloaded base-itm-mlm, else random weights)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", nargs="+", type=int, default=None)
    ap.add_argument("--json", help="also write the results (every run's figures) to this file")
    ap.add_argument("--rounds", type=int, default=5, help="fresh-process runs of each library (the median counts)")
    ap.add_argument("--train-rounds", type=int, default=None, help="rounds of the training step (default --rounds; "
                    "0 skips it)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="speed", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    batches = args.batches or ([8, 32] if args.device == "cuda" else [1, 8])
    if args.worker:
        return worker(args.worker, args.model, args.mode, batches, args.device)

    from minibridge.config import BridgeTowerConfig

    with tempfile.TemporaryDirectory() as workdir:
        folder, what = _checkpoint(args.model, workdir)
        cfg = BridgeTowerConfig.from_json_file(folder / "config.json")
        try:
            import transformers  # noqa: F401

            libs = ["minibridge", "transformers"]
        except ImportError:
            libs = ["minibridge"]
        print(f"benchmark: {what}; device {args.device}; OPENBLAS_CORETYPE="
              f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, OPENBLAS_L2_SIZE="
              f"{os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}\nmachine: {machine()}", flush=True)
        runs = {lib: {} for lib in libs}  # lib -> figure -> [one value per round]
        runs["machine"] = {}

        def keep(lib, result):
            for k, v in result.items():
                if k != "lib":
                    runs[lib].setdefault(k, []).append(v)

        train_rounds = args.rounds if args.train_rounds is None else args.train_rounds
        for r in range(max(args.rounds, train_rounds)):
            order = libs if r % 2 == 0 else libs[::-1]  # alternate which library runs first
            if args.device == "cpu":
                keep("machine", _run_worker("minibridge", folder, "gemm", [1], "cpu"))
            for lib in order:
                if r < args.rounds:
                    keep(lib, _run_worker(lib, folder, "speed", batches, args.device))
                    if args.device == "cpu":
                        for b in batches:
                            keep(lib, _run_worker(lib, folder, "memory", [b], "cpu"))
                if args.device == "cpu" and r < train_rounds:
                    keep(lib, _run_worker(lib, folder, "train", [TRAIN_BATCH], "cpu"))
            print(f"round {r + 1} done", flush=True)
        if args.device == "cpu":
            keep("minibridge", {"import_s": min(_timed_command([sys.executable, "-c", "import minibridge"])
                                                for _ in range(3))})
            keep("machine", {"python_startup_s": min(_timed_command([sys.executable, "-c", "pass"]) for _ in range(3))})
            if (folder / "tokenizer.json").is_file() and PHOTO.is_file():
                for r in range(args.rounds):
                    keep("minibridge", {"infer_cold_s": _timed_command(
                        [sys.executable, "-m", "minibridge", "infer", str(PHOTO), "a bunch of cats", "--model",
                         str(folder)])})
                    if "transformers" in libs:
                        keep("transformers", {"infer_cold_s": _timed_command(
                            [sys.executable, "-c", _TRANSFORMERS_INFER, str(folder), str(PHOTO)])})
        runs["machine"]["weights_mb"] = [sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6]
        _report(runs, cfg, batches, libs, args.device)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=2))


_TRANSFORMERS_INFER = """
import sys, torch, transformers
from PIL import Image
folder, photo = sys.argv[1], sys.argv[2]
proc = transformers.BridgeTowerProcessor.from_pretrained(folder)
model = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder).eval()
enc = proc(images=Image.open(photo).convert("RGB"), text="a bunch of cats", return_tensors="pt")
with torch.no_grad():
    print(model(**enc).logits.softmax(-1)[0, 1].item())
"""


def summary(values):
    """(median, min, max) of one figure's values over the rounds."""
    return statistics.median(values), min(values), max(values)


def _report(runs, cfg, batches, libs, device):
    mb, tf = runs["minibridge"], runs.get("transformers", {})
    n = max(len(v) for v in mb.values())
    rows = [(f"forward, batch {b} (s)", f"forward_b{b}_s", f"forward_b{b}_s") for b in batches]
    if device == "cpu":
        rows += [(f"1 image × {PAIR_TEXTS} texts, ITM (s)", f"pairs_1x{PAIR_TEXTS}_s", f"forward_b{PAIR_TEXTS}_s"),
                 ("from_pretrained (s)", "load_s", "load_s")]
        rows += [(f"peak RSS, load + batch-{b} forward (MB)", f"peak_rss_b{b}_mb", f"peak_rss_b{b}_mb") for b in batches]
        rows += [(f"train step, batch {TRAIN_BATCH} (s)", f"train_b{TRAIN_BATCH}_s", f"train_b{TRAIN_BATCH}_s"),
                 ("peak RSS, load + train steps (MB)", "train_peak_rss_mb", "train_peak_rss_mb"),
                 ("infer from a cold process (s)", "infer_cold_s", "infer_cold_s")]
    print(f"\nmedian [min–max] over {n} fresh-process runs of each library, alternated")
    print(f"{'':42} {'minibridge':>24} {'transformers':>24} {'ratio':>6}")

    def cell(values, label):
        if not values:
            return ""
        med, lo, hi = summary(values)
        f = (lambda x: f"{x:.0f}") if "MB" in label else (lambda x: f"{x:.3f}")
        return f"{f(med)} [{f(lo)}–{f(hi)}]"

    for label, mine, theirs in rows:
        a, b = mb.get(mine), tf.get(theirs)
        if not a:
            continue
        ratio = f"{statistics.median(a) / statistics.median(b):6.2f}" if b else ""
        print(f"{label:42} {cell(a, label):>24} {cell(b, label):>24} {ratio}")
    if device != "cpu":
        return
    weights = runs["machine"]["weights_mb"][0]
    print(f"\nweights file: {weights:.0f} MB; peak RSS / weights: " + "; ".join(
        f"{lib} " + ", ".join(f"batch {b} {statistics.median(runs[lib][f'peak_rss_b{b}_mb']) / weights:.2f}×"
                              for b in batches) for lib in libs))
    if f"pairs_1x{PAIR_TEXTS}_s" in mb and f"forward_b{PAIR_TEXTS}_s" in tf:
        print(f"1 image × {PAIR_TEXTS} texts: minibridge's score_pairs against transformers' fastest way, one batch "
              f"of the {PAIR_TEXTS} pairs (its batch-{PAIR_TEXTS} forward)")
    if "train_peak_rss_mb" in mb:
        print("train steps: peak RSS = " + "; ".join(
            f"{lib} {statistics.median(runs[lib]['train_peak_rss_mb']) / weights:.2f} × the weights" for lib in libs))
    print(f"import minibridge: {min(mb['import_s']):.3f} s (bare python startup "
          f"{min(runs['machine']['python_startup_s']):.3f} s)")
    peak, lo, hi = summary(runs["machine"]["matmul_gflops"])
    print(f"float32 matrix products, 3072², NumPy: {peak:.0f} GFLOP/s [{lo:.0f}–{hi:.0f}] sustained (the GEMM rate)")
    for b in batches:
        flops = forward_flops(cfg, b)
        for lib in libs:
            t = statistics.median(runs[lib][f"forward_b{b}_s"])
            print(f"batch {b}: {flops / 1e9:.0f} GFLOP (full forward); {lib} {flops / t / 1e9:.0f} GFLOP/s "
                  f"= {flops / t / 1e9 / peak:.0%} of the GEMM rate")


if __name__ == "__main__":
    main()
