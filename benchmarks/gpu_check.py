"""Everything the GPU backend must show, in one run (for the device machine; see README "Performance").

    python benchmarks/gpu_check.py OUT_DIR

1. the parity tests on the CuPy backend (tests/test_model.py, the "cuda" cases);
2. on random weights of the published base architecture, every head: CuPy outputs vs the NumPy
   backend's, with the parity tolerance (max |cupy − numpy| ≤ 1e-4 × max(1, max |numpy|));
3. forward time at batch 8 and 32, CuPy vs transformers on the same GPU, float32
   (python benchmarks/bench.py --device cuda).
Writes OUT_DIR/gpu_check.json and prints a summary.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import minibridge as mb  # noqa: E402
from minibridge.backend import to_numpy  # noqa: E402
from minibridge.config import BASE  # noqa: E402
from minibridge.weights import save_random_checkpoint  # noqa: E402

TOL = 1e-4
HEADS = {"model": mb.BridgeTowerModel, "itm": mb.BridgeTowerForImageAndTextRetrieval,
         "mlm": mb.BridgeTowerForMaskedLM, "itc": mb.BridgeTowerForContrastiveLearning}


def step(title):
    print(f"\n=== {title} ({time.strftime('%H:%M:%S')})", flush=True)


def main(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    step("environment")
    import cupy

    report["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    report["cupy"] = cupy.__version__
    print(report)

    step("1. parity tests on the CuPy backend")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "tests/test_model.py", "-k", "cuda"],
                       cwd=ROOT, capture_output=True, text=True)
    print(r.stdout[-1500:], r.stderr[-1500:])
    report["cuda_parity_tests"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]

    step("2. CuPy vs NumPy on the base architecture, every head")
    folder = save_random_checkpoint(Path("/tmp/mb_base"), BASE, heads=("itm", "mlm", "itc"), seed=11)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 50000, size=(2, 16))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = np.ones_like(ids)
    ids[1, 10:], mask[1, 10:] = 1, 0  # one padded text
    ids[1, 9] = 2
    inputs = {"input_ids": ids, "attention_mask": mask,
              "pixel_values": rng.standard_normal((2, 3, 288, 288)).astype(np.float32)}
    report["base_parity"] = {}
    for head, cls in HEADS.items():
        kw = dict(inputs, return_loss=True) if head == "itc" else dict(inputs)
        cpu = cls.from_pretrained(folder)(**kw, output_hidden_states=True)
        gpu = cls.from_pretrained(folder, device="cuda")(**kw, output_hidden_states=True)
        worst = {}
        for name in ("text_features", "image_features", "pooler_output", "logits", "loss", "text_embeds",
                     "image_embeds", "cross_embeds"):
            a = getattr(cpu, name, None)
            if a is None:
                continue
            a, b = np.asarray(to_numpy(a), np.float64), np.asarray(to_numpy(getattr(gpu, name)), np.float64)
            worst[name] = float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))
        hs = [np.abs(to_numpy(x) - to_numpy(y)).max() / max(1.0, np.abs(to_numpy(x)).max())
              for x, y in zip(cpu.hidden_states[1], gpu.hidden_states[1])]
        worst["image_hidden_states"] = float(max(hs))
        name = max(worst, key=worst.get)
        report["base_parity"][head] = {"worst_relative": worst[name], "output": name, "pass": worst[name] <= TOL}
        print(head, report["base_parity"][head], flush=True)

    step("3. forward time, CuPy vs transformers (CUDA, float32)")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--device", "cuda", "--model", str(folder),
                        "--batches", "8", "32", "--json", str(out_dir / "bench_gpu.json")],
                       cwd=ROOT, capture_output=True, text=True)
    print(r.stdout[-3000:], r.stderr[-3000:])
    if (out_dir / "bench_gpu.json").is_file():
        report["bench"] = json.loads((out_dir / "bench_gpu.json").read_text())
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out")
