"""benchmarks/bench.py runs end to end and counts FLOPs right (it measures; nothing here asserts a time)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minibridge as mb
from minibridge import bridge, heads, model, ops, text, vision
from minibridge.weights import save_random_checkpoint

from helpers import ROBERTA, TINY_REAL_VOCAB

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
sys.path.insert(0, str(BENCH.parent))
import bench  # noqa: E402


def test_forward_flops_counts_every_matrix_product(tmp_path, monkeypatch):
    """bench.forward_flops equals the FLOPs of the matrix products of a full ITM forward (the lockstep pass,
    which output_hidden_states asks for; the plain forward skips the last layer's unread rows)."""
    folder = save_random_checkpoint(tmp_path, TINY_REAL_VOCAB, heads=("itm",))
    m = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    counted = []

    def counting_linear(x, p):
        counted.append(2 * x.size // x.shape[-1] * p["weight"].shape[0] * p["weight"].shape[1])
        return ops.linear(x, p)

    def counting_attention(q, k, v, num_heads, mask=None):
        counted.append(2 * 2 * q.shape[0] * q.shape[1] * k.shape[1] * q.shape[2])  # scores, then context
        return ops.attention(q, k, v, num_heads, mask)

    for module in (vision, text, bridge, heads, model):
        for name, fn in (("linear", counting_linear), ("attention", counting_attention)):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, fn)
    B, T, vc = 3, bench.TEXT_TOKENS, m.config.vision_config
    inputs = bench._inputs(TINY_REAL_VOCAB, B)
    m(**inputs, output_hidden_states=True)
    patch_embedding = 2 * B * (vc.num_positions - 1) * 3 * vc.patch_size**2 * vc.hidden_size  # a direct @
    assert inputs["input_ids"].shape == (B, T)
    assert bench.forward_flops(m.config, B) == sum(counted) + patch_embedding


def test_bench_runs_and_reports(tmp_path):
    if not ROBERTA.is_dir():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    folder = save_random_checkpoint(tmp_path / "ckpt", TINY_REAL_VOCAB, heads=("itm",), tokenizer_dir=ROBERTA)
    r = subprocess.run([sys.executable, str(BENCH), "--model", str(folder), "--batches", "1",
                        "--rounds", "1", "--json", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out.json").read_text())  # figure -> one value per round
    for key in ("forward_b1_s", "load_s", "peak_rss_b1_mb", "import_s", "train_b4_s", "train_peak_rss_mb",
                "pairs_1x8_s"):
        assert len(res["minibridge"][key]) >= 1 and all(np.isfinite(v) and v > 0 for v in res["minibridge"][key]), key
    assert res["machine"]["matmul_gflops"][0] > 0
    assert "forward, batch 1" in r.stdout and "GFLOP/s" in r.stdout and "× the weights" in r.stdout
    assert "median [min–max] over 1 fresh-process runs" in r.stdout and "machine: " in r.stdout
    libs = ["minibridge"] + ["transformers"] * ("transformers" in res)
    for label in ("train step, batch 4 (s)", "peak RSS, load + train steps (MB)"):  # the training rows, with numbers
        row = next((line for line in r.stdout.splitlines() if line.startswith(label)), None)
        assert row is not None, f"no row {label!r} in:\n{r.stdout}"
        numbers = [float(x) for x in row[len(label):].replace("[", " ").replace("]", " ").replace("–", " ").split()]
        assert len(numbers) == 3 * len(libs) + (len(libs) == 2) and all(x > 0 for x in numbers), row  # + the ratio
    assert "train steps: peak RSS = minibridge" in r.stdout
    if "transformers" in res:  # the reference extra: both measured in the same run, with ratios
        assert res["transformers"]["forward_b1_s"][0] > 0 and "ratio" in r.stdout
        assert res["transformers"]["train_b4_s"][0] > 0 and res["transformers"]["train_peak_rss_mb"][0] > 0
