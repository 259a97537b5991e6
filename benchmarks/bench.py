"""Benchmark: minibridge against transformers, side by side, on a base-size checkpoint.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py [--model FOLDER] [--device cuda]

Uses a real checkpoint if given (or found in the default download folder), else random weights of
the published base architecture, written on the spot. Reports, for each implementation:
forward time at batch 1 and 8 (16-token texts, base-size images; best of several after a warm-up),
load time, peak resident memory of a load + one batch-1 forward, one training step of the ITM head
at batch 4 (forward + backward: minibridge's loss_and_grads vs torch autograd, eval mode; best of
several after a warm-up) with the peak resident memory of that process, and the end-to-end time of
one `infer` from a cold process; then the ratios, the machine's sustained float32 matrix-product
throughput, and the fraction of it the forward pass reaches (its FLOPs counted from the config).
Each measurement runs in a fresh subprocess, so one library's threads and memory never touch the
other's. With --device cuda it times the GPU forward (CuPy vs torch CUDA) at batch 8 and 32.
"""

import argparse
import json
import os
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
PHOTO = PHOTOS / "000000039769.png"  # the COCO two-cats photo


# ---- what runs inside a worker subprocess ----------------------------------------------------


def _inputs(cfg_dict, batch, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    size = cfg_dict.get("vision_config", {}).get("image_size", 288)
    ids = rng.integers(3, 50000, size=(batch, TEXT_TOKENS))
    ids[:, 0], ids[:, -1] = 0, 2
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "pixel_values": rng.standard_normal((batch, 3, size, size)).astype(np.float32)}


def best_time(fn, repeats=5):
    """Best wall time of fn() in seconds, over `repeats` runs after one warm-up run."""
    fn()  # warm-up: pages the weights in, fills caches, starts thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # Linux reports KiB; MB = 10⁶ bytes


def _train_labels(batch):
    import numpy as np

    return np.arange(batch) % 2  # ITM labels [B]: alternately mismatched (0) and matched (1)


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
    result = {"lib": lib, f"train_b{batch}_s": best_time(step, repeats=3)}
    result["train_peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def worker(lib, folder, mode, batches, device):
    """Measure one library in this (fresh) process; print one JSON line."""
    if mode == "train":
        return train_worker(lib, folder, batches[0])
    cfg = json.loads((Path(folder) / "config.json").read_text())
    if lib == "minibridge":
        import minibridge as mb

        start = time.perf_counter()  # load time, not counting the import
        model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder, device=device)
        if device == "cuda":
            import cupy

            def run(inp):
                model(**{k: cupy.asarray(v) for k, v in inp.items()}).logits.get()
        else:
            def run(inp):
                model(**inp)
    else:
        import torch
        import transformers

        start = time.perf_counter()
        model = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder).eval()
        dev = "cuda" if device == "cuda" else "cpu"
        model.to(dev)

        def run(inp):
            with torch.no_grad():
                out = model(**{k: torch.from_numpy(v).to(dev) for k, v in inp.items()}).logits
                out.cpu()
    load_s = time.perf_counter() - start
    result = {"lib": lib, "load_s": load_s}
    if mode == "memory":
        run(_inputs(cfg, 1))
        result["peak_rss_mb"] = _peak_rss_mb()
    else:
        for b in batches:
            result[f"forward_b{b}_s"] = best_time(lambda: run(_inputs(cfg, b)), repeats=5 if b <= 8 else 3)
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
    """Sustained float32 matrix-product throughput of this process's NumPy, in GFLOP/s."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    return 2 * n**3 / best_time(lambda: a @ a, repeats) / 1e9


def forward_flops(cfg, batch, text_tokens=TEXT_TOKENS):
    """Multiply-add FLOPs (×2) of the matrix products of one ITM forward pass."""
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


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a checkpoint folder (default: the downloaded base-itm-mlm, else random weights)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", nargs="+", type=int, default=None)
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--rounds", type=int, default=2, help="times each library is run (the best counts)")
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
        print(f"benchmark: {what}; {os.cpu_count()} CPU cores; device {args.device}; "
              f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}", flush=True)
        res = {lib: {} for lib in libs}
        for _ in range(args.rounds):  # alternate the libraries; keep each one's best
            for lib in libs:
                r = _run_worker(lib, folder, "speed", batches, args.device)
                for k, v in r.items():
                    if k != "lib":
                        res[lib][k] = min(v, res[lib].get(k, v))
        if args.device == "cpu":
            for lib in libs:
                res[lib].update({k: v for k, v in _run_worker(lib, folder, "memory", [1], "cpu").items()
                                 if k == "peak_rss_mb"})
            for _ in range(args.rounds):  # the training step, alternating the libraries like the forward
                for lib in libs:
                    r = _run_worker(lib, folder, "train", [TRAIN_BATCH], "cpu")
                    for k, v in r.items():
                        if k != "lib":
                            res[lib][k] = min(v, res[lib].get(k, v))
            res["minibridge"]["import_s"] = min(_timed_command(
                [sys.executable, "-c", "import minibridge"]) for _ in range(3))
            res["python_startup_s"] = min(_timed_command([sys.executable, "-c", "pass"]) for _ in range(3))
            if (folder / "tokenizer.json").is_file() and PHOTO.is_file():
                res["minibridge"]["infer_cold_s"] = _timed_command(
                    [sys.executable, "-m", "minibridge", "infer", str(PHOTO), "a bunch of cats", "--model", str(folder)])
                if "transformers" in libs:
                    res["transformers"]["infer_cold_s"] = _timed_command([sys.executable, "-c", _TRANSFORMERS_INFER,
                                                                          str(folder), str(PHOTO)])
            res["matmul_gflops"] = matmul_gflops()
        weights_mb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e6
        res["weights_mb"] = weights_mb
        _report(res, cfg, batches, libs, args.device)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))


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


def _report(res, cfg, batches, libs, device):
    mb = res["minibridge"]
    tf = res.get("transformers", {})
    rows = [(f"forward, batch {b} (s)", f"forward_b{b}_s") for b in batches]
    if device == "cpu":
        rows += [("from_pretrained (s)", "load_s"), ("peak RSS, load + batch-1 forward (MB)", "peak_rss_mb"),
                 (f"train step, batch {TRAIN_BATCH} (s)", f"train_b{TRAIN_BATCH}_s"),
                 ("peak RSS, load + train steps (MB)", "train_peak_rss_mb"),
                 ("infer from a cold process (s)", "infer_cold_s")]
    print(f"\n{'':42} {'minibridge':>12} {'transformers':>13} {'ratio':>7}")
    for label, key in rows:
        a, b = mb.get(key), tf.get(key)
        ratio = f"{a / b:7.2f}" if a is not None and b else ""
        fmt = (lambda x: f"{x:12.1f}") if "MB" in label else (lambda x: f"{x:12.3f}")
        print(f"{label:42} {fmt(a) if a is not None else '':>12} {fmt(b) if b is not None else '':>13} {ratio}")
    if device == "cpu":
        print(f"\nweights file: {res['weights_mb']:.0f} MB; minibridge peak RSS = "
              f"{mb['peak_rss_mb'] / res['weights_mb']:.2f} × the weights")
        print("train steps: peak RSS = " + "; ".join(
            f"{lib} {res[lib]['train_peak_rss_mb'] / res['weights_mb']:.2f} × the weights" for lib in libs))
        print(f"import minibridge: {mb['import_s']:.3f} s (bare python startup {res['python_startup_s']:.3f} s)")
        peak = res["matmul_gflops"]
        print(f"float32 matrix products, 3072²: {peak:.0f} GFLOP/s sustained (NumPy)")
        for b in batches:
            flops = forward_flops(cfg, b)
            for lib in libs:
                t = res[lib][f"forward_b{b}_s"]
                print(f"batch {b}: {flops / 1e9:.0f} GFLOP; {lib} reaches {flops / t / 1e9:.0f} GFLOP/s "
                      f"= {flops / t / 1e9 / peak:.0%} of that peak")


if __name__ == "__main__":
    main()
