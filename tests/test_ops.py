"""The primitives against their mathematical definitions (exact math.erf, float64 formulas)."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minibridge import ops
from minibridge.backend import BLOCK_NUMBERS

# erf is a rational approximation evaluated in float32: about 4 units in the last place near ±1
# (torch's float32 GELU is as far from the exact value).
ERF_TOL = 5e-7


def test_erf_matches_math_erf_on_a_dense_grid():
    x = np.linspace(-7, 7, 200_001, dtype=np.float32)
    ref = np.array([math.erf(float(v)) for v in x])
    err = np.abs(ops.erf(x).astype(np.float64) - ref)
    worst = int(err.argmax())
    assert err[worst] < ERF_TOL, f"erf({x[worst]}): mine {ops.erf(x)[worst]} vs math.erf {ref[worst]}"


def test_gelu_is_exact_erf_gelu_not_tanh():
    x = np.linspace(-6, 6, 10_001, dtype=np.float32)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    mine = ops.gelu(x)
    assert mine.dtype == np.float32
    # float32 erf (4 ulp near ±1) and three roundings; torch's own float32 GELU is 1.1e-6 off
    assert (np.abs(mine - exact) / np.maximum(1, np.abs(exact))).max() < 1.5e-6
    tanh_gelu = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.abs(tanh_gelu - exact).max() > 1e-4  # the approximation we must not use is far off


def test_quick_gelu():
    x = np.array([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=np.float32)
    x64 = x.astype(np.float64)
    # against float64: a float32 exp and divide are good to a few ulps (rtol 1e-6)
    np.testing.assert_allclose(ops.quick_gelu(x), x64 / (1 + np.exp(-1.702 * x64)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "quick_gelu", "softmax"])
def test_row_blocks_equal_the_plain_formula(name):
    """@rowwise runs a primitive on blocks of rows; the result equals the formula on the whole array,
    for a big transposed (non-contiguous) input and when written in place (out=x)."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((64, 40, 96)).astype(np.float32).transpose(1, 0, 2)  # 245 K numbers, not contiguous
    assert big.size > BLOCK_NUMBERS  # so the blocked path is the one taken
    p = {"weight": rng.standard_normal(96).astype(np.float32), "bias": rng.standard_normal(96).astype(np.float32)}
    args = (p, 1e-5) if name == "layer_norm" else ()
    blocked, plain = getattr(ops, name), getattr(ops, name).__wrapped__
    expected = plain(big, *args)
    np.testing.assert_array_equal(blocked(big, *args), expected, err_msg=name)
    in_place = np.ascontiguousarray(big)
    assert blocked(in_place, *args, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, expected, err_msg=f"{name}, in place")


def test_layer_norm_uses_biased_variance_and_eps():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32) * 3 + 1
    p = {"weight": rng.standard_normal(8).astype(np.float32), "bias": rng.standard_normal(8).astype(np.float32)}
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * p["weight"] + p["bias"]
    np.testing.assert_allclose(ops.layer_norm(x, p, 1e-5), ref, atol=2e-6)  # float32 sums of 8 values: ~1e-6


def test_softmax_is_stable_and_normalised():
    x = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]], dtype=np.float32)
    y = ops.softmax(x)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0], np.exp([1, 2, 0]) / np.exp([1, 2, 0]).sum(), rtol=1e-6)


def test_additive_mask_is_none_without_padding():
    assert ops.additive_mask(np.ones((2, 4), dtype=np.int64)) is None
    m = ops.additive_mask(np.array([[1, 1, 0]]))
    assert m.shape == (1, 1, 1, 3) and m.dtype == np.float32
    assert m[0, 0, 0, 0] == 0 and m[0, 0, 0, 2] == np.finfo(np.float32).min


def test_attention_by_hand_one_head():
    q = np.array([[[1.0, 0.0]]], dtype=np.float32)  # [B=1, Sq=1, D=2]
    k = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    v = np.array([[[10.0, 0.0], [0.0, 10.0]]], dtype=np.float32)
    context, probs = ops.attention(q, k, v, num_heads=1)
    w = np.exp([1 / math.sqrt(2), 0.0])
    w /= w.sum()
    np.testing.assert_allclose(probs[0, 0, 0], w, rtol=1e-6)
    np.testing.assert_allclose(context[0, 0], 10 * w, rtol=1e-6)


def test_cross_entropy_ignores_minus_100():
    logits = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    labels = np.array([0, -100, 1])
    ref = np.mean([math.log(1 + math.exp(-2)), math.log(2)])
    assert abs(float(ops.cross_entropy(logits, labels)) - ref) < 1e-6


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(ops.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])


_FAULTS = """
import resource, sys
import numpy as np
from minibridge.backend import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
a = np.ones((8, 12, 325, 325), np.float32)  # 40 MB: the attention scores of the base model at batch 8
(a * 2).sum()  # one array of that size made and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    (a * 2).sum()  # made and freed again: fresh pages from the kernel, or the freed block again
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_large_arrays_are_reused_not_faulted_in_again():
    """keep_freed_memory: a 40 MB array made after one of its size was freed reuses that block (few page
    faults) instead of fresh pages (about one fault per 4 KB page, or per 2 MB huge page, 20 or more)."""
    def faults(mode, **env):
        r = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **env})
        assert r.returncode == 0, r.stderr
        kept, n = r.stdout.split()
        return kept == "True", float(n)

    kept, with_keep = faults("keep")
    _, without = faults("plain")
    assert kept, "keep_freed_memory() returned False on Linux"
    assert with_keep <= 5 < 20 <= without, f"page faults per 40 MB array: kept {with_keep}, plain {without}"
    kept, opted_out = faults("keep", MINIBRIDGE_KEEP_FREED_MEMORY="0")
    assert not kept and opted_out >= 20, f"MINIBRIDGE_KEEP_FREED_MEMORY=0: kept {kept}, {opted_out} faults per array"


_RELEASE = """
import numpy as np
from minibridge.backend import keep_freed_memory, release_freed_memory
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6
keep_freed_memory()
start = rss_mb()
arrays = [np.ones((25, 1000, 1000), np.float32) for _ in range(4)]  # 4 × 100 MB, touched
del arrays
kept = rss_mb() - start
release_freed_memory()
print(kept, rss_mb() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_memory_kept_for_reuse_goes_back_when_released():
    """Freed blocks stay in the process (for the next layer) until release_freed_memory, which the calls
    that run many passes (score_pairs, infer) make before they return."""
    r = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    kept, after = map(float, r.stdout.split())
    assert kept > 300 and after < 50, f"RSS above the start: {kept:.0f} MB kept after freeing 400 MB, {after:.0f} MB after release"
