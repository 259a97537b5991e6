"""The primitives' derivatives (backward/ops.py) against torch autograd, in float32 on realistic
shapes, and against float64 central differences (backward/gradcheck.py), which need no torch."""

import math

import numpy as np
import pytest

from minibridge import ops
from minibridge.backward import ops as bops
from minibridge.backward.gradcheck import numerical_gradient, rel_error

# float32 against torch's float32 autograd, as max|mine − torch| / max|torch| per gradient: both
# sides round every step to float32 (eps 6e-8) and sum rows in different orders; the worst measured
# is 8e-7 (LayerNorm's dweight, a sum over 74 rows), so 1e-5 leaves room for other BLAS orders
# yet fails any wrong term (a dropped factor or term is off by 1e-2 to 1).
TORCH_TOL = 1e-5
# float64 central differences (eps 1e-6): truncation ~1e-12 and rounding ~1e-10 of |f|; a right
# float64 gradient is measured within 8e-10 (CS231n's "below 1e-7: right").
NUMERIC_TOL = 1e-7
# ... where the backward itself works in float32 (GELU's Φ uses the forward's float32 erf, good to
# 5e-7; cross_entropy_backward returns float32): float32's precision (measured 1e-8).
NUMERIC_TOL_F32 = 1e-6


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def randn(*shape, scale=1.0, seed=None):
    r = np.random.default_rng(seed)
    return (r.standard_normal(shape) * scale).astype(np.float32)


def assert_close(mine, ref, name, tol=TORCH_TOL):
    """mine (float32) within tol · max|ref| of ref everywhere; the message shows the worst element."""
    ref = np.asarray(ref, dtype=np.float64)
    assert mine.dtype == np.float32, f"{name}: dtype {mine.dtype}, expected float32"
    assert mine.shape == ref.shape, f"{name}: shape {mine.shape}, expected {ref.shape}"
    err = np.abs(mine.astype(np.float64) - ref)
    worst = tuple(int(i) for i in np.unravel_index(int(err.argmax()), err.shape))
    scale = np.abs(ref).max()
    assert err[worst] <= tol * scale, (f"{name}: mine {mine[worst]} vs torch {ref[worst]} at {worst}, "
                                       f"error {err[worst] / scale:.1e} of max|torch| {scale:.3g} (tolerance {tol})")


def torch_grads(torch, fn, inputs, dout):
    """Gradients of fn(*inputs) · dout with respect to each input (NumPy arrays), by torch autograd."""
    leaves = [torch.tensor(a, requires_grad=True) for a in inputs]
    fn(*leaves).backward(torch.tensor(dout))
    return [leaf.grad.numpy() for leaf in leaves]


def check_numerically(f, x, analytic, name, tol=NUMERIC_TOL):
    """analytic is the gradient of the scalar f at x: compare with float64 central differences."""
    error = rel_error(numerical_gradient(f, x), analytic)
    assert error < tol, f"{name}: relative error {error:.1e} against central differences (tolerance {tol})"


# ---- against torch autograd, float32, the base model's sizes ------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear_backward_matches_torch(torch, bias):
    x, w, b = randn(2, 37, 768, seed=0), randn(3072, 768, scale=0.02, seed=1), randn(3072, seed=2)
    dy = randn(2, 37, 3072, seed=3)
    p = {"weight": w, "bias": b} if bias else {"weight": w}
    dx, grads = bops.linear_backward(x, p, dy)
    inputs = (x, w, b) if bias else (x, w)
    ref = torch_grads(torch, torch.nn.functional.linear, inputs, dy)
    assert_close(dx, ref[0], "dx")
    assert_close(grads["weight"], ref[1], "dW")
    if bias:
        assert_close(grads["bias"], ref[2], "db")
    else:
        assert set(grads) == {"weight"}


def test_layer_norm_backward_matches_torch(torch):
    x = randn(2, 37, 768, scale=3.0, seed=0) + 1.0  # off-centre, as hidden states are
    x[..., 5] *= 30  # an outlier feature, as real hidden states have
    w, b, dy = 1 + randn(768, scale=0.1, seed=1), randn(768, scale=0.1, seed=2), randn(2, 37, 768, seed=3)
    dx, grads = bops.layer_norm_backward(x, {"weight": w, "bias": b}, 1e-5, dy)
    ref = torch_grads(torch, lambda x, w, b: torch.nn.functional.layer_norm(x, (768,), w, b, 1e-5), (x, w, b), dy)
    assert_close(dx, ref[0], "dx")
    assert_close(grads["weight"], ref[1], "dweight")
    assert_close(grads["bias"], ref[2], "dbias")


def test_gelu_backward_matches_torch_also_where_erf_saturates(torch):
    x = np.concatenate([randn(2 * 37 * 64, scale=2.0, seed=0), np.linspace(-10, 10, 2001, dtype=np.float32)])
    assert (np.abs(x) > 6).sum() > 500  # erf(x/√2) rounds to ±1 in float32 beyond |x| ≈ 5.7
    dy = randn(*x.shape, seed=1)
    ref = torch_grads(torch, lambda x: torch.nn.functional.gelu(x, approximate="none"), (x,), dy)[0]
    mine = bops.gelu_backward(x, dy)
    assert_close(mine, ref, "dx")
    far = np.abs(x) > 6  # there the slope is 0 or 1 to float32 precision, on both sides
    np.testing.assert_allclose(mine[far], ref[far], rtol=1e-6, atol=1e-7)


def test_quick_gelu_backward_matches_torch(torch):
    x = np.concatenate([randn(2, 50, 3072, scale=2.0, seed=0).ravel(), np.float32([-30, -8, 0, 8, 30])])
    dy = randn(*x.shape, seed=1)
    ref = torch_grads(torch, lambda x: x * torch.sigmoid(1.702 * x), (x,), dy)[0]
    assert_close(bops.quick_gelu_backward(x, dy), ref, "dx")


def test_softmax_backward_matches_torch(torch):
    x, dprobs = randn(2, 12, 37, 37, scale=3.0, seed=0), randn(2, 12, 37, 37, seed=1)
    ref = torch_grads(torch, lambda x: torch.softmax(x, dim=-1), (x,), dprobs)[0]
    assert_close(bops.softmax_backward(ops.softmax(x), dprobs), ref, "dx")


def torch_attention(torch, num_heads, mask):
    """BERT's self/cross attention in torch: softmax(q kᵀ / √Dh + mask) v over heads."""

    def attend(q, k, v):
        B, Sq, D = q.shape
        Dh = D // num_heads
        heads = lambda t: t.reshape(B, t.shape[1], num_heads, Dh).transpose(1, 2)  # [B, S, D] -> [B, H, S, Dh]
        scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(Dh)
        if mask is not None:
            scores = scores + torch.tensor(mask)
        return (torch.softmax(scores, dim=-1) @ heads(v)).transpose(1, 2).reshape(B, Sq, D)

    return attend


@pytest.mark.parametrize("Sq, Sk, padded", [(37, 37, True), (37, 50, False), (50, 37, True)],
                         ids=["self, padded", "cross to image", "cross to padded text"])
def test_attention_backward_matches_torch(torch, Sq, Sk, padded):
    B, D, H = 2, 768, 12
    q, k, v = randn(B, Sq, D, seed=0), randn(B, Sk, D, seed=1), randn(B, Sk, D, seed=2)
    dcontext = randn(B, Sq, D, seed=3)
    keep = np.ones((B, Sk), dtype=np.int64)
    keep[1, Sk - 12:] = 0  # the second example's last 12 keys are padding
    mask = ops.additive_mask(keep) if padded else None
    dq, dk, dv = bops.attention_backward(q, k, v, H, mask, dcontext)
    ref = torch_grads(torch, torch_attention(torch, H, mask), (q, k, v), dcontext)
    assert_close(dq, ref[0], "dq")
    assert_close(dk, ref[1], "dk")
    assert_close(dv, ref[2], "dv")
    if padded:  # a padded key has probability 0: moving it changes nothing
        assert not dk[1, Sk - 12:].any() and not dv[1, Sk - 12:].any()
        assert dk[1, : Sk - 12].any() and dv[0, Sk - 12:].any()


@pytest.mark.parametrize("N, K, ignored", [(8, 2, 0.0), (2 * 16, 50265, 0.85)], ids=["ITM, 2 classes", "MLM, 85% ignored"])
def test_cross_entropy_backward_matches_torch(torch, N, K, ignored):
    logits = randn(N, K, scale=2.0, seed=0)
    r = np.random.default_rng(1)
    labels = r.integers(0, K, N)
    labels[r.random(N) < ignored] = -100
    labels[0] = 1  # at least one row counts
    if ignored:
        labels[1] = -100
    ref = torch_grads(torch, lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(labels), ignore_index=-100),
                      (logits,), np.float32(1.0))[0]
    mine = bops.cross_entropy_backward(logits, labels)
    assert_close(mine, ref, "dlogits")
    assert not mine[labels == -100].any()  # an ignored row is not in the loss


def test_cross_entropy_backward_with_every_label_ignored_is_zero_as_torch(torch):
    logits, labels = randn(4, 6, seed=0), np.full(4, -100)
    ref = torch_grads(torch, lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(labels)), (logits,),
                      np.float32(1.0))[0]
    assert not ref.any()  # torch: the loss is nan, its gradient 0
    mine = bops.cross_entropy_backward(logits, labels)
    assert mine.dtype == np.float32 and not mine.any() and not np.isnan(mine).any()


def test_l2_normalize_backward_matches_torch(torch):
    x, dy = randn(8, 512, seed=0), randn(8, 512, seed=1)
    ref = torch_grads(torch, lambda x: torch.nn.functional.normalize(x, dim=-1), (x,), dy)[0]
    assert_close(bops.l2_normalize_backward(x, dy), ref, "dx")


def test_l2_normalize_backward_below_eps_matches_torch(torch):
    """A zero row and a row of norm 1e-13 (< eps 1e-12): the denominator is the constant eps."""
    x = np.zeros((2, 4), dtype=np.float32)
    x[1] = [1e-13, 0, 0, 0]
    dy = randn(2, 4, seed=1)
    ref = torch_grads(torch, lambda x: torch.nn.functional.normalize(x, dim=-1), (x,), dy)[0]
    mine = bops.l2_normalize_backward(x, dy)
    assert mine.dtype == np.float32 and np.isfinite(mine).all()
    np.testing.assert_allclose(mine, ref, rtol=1e-6)  # dy / eps, about 1e12
    np.testing.assert_allclose(mine, dy / np.float32(1e-12), rtol=1e-6)


# ---- against float64 central differences (no torch needed) -------------------------------------

def f64(*shape, scale=1.0, seed=0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def test_linear_backward_numerically():
    x, w, b, dy = f64(2, 3, 5, seed=0), f64(4, 5, seed=1), f64(4, seed=2), f64(2, 3, 4, seed=3)
    dx, grads = bops.linear_backward(x, {"weight": w, "bias": b}, dy)
    check_numerically(lambda x: (ops.linear(x, {"weight": w, "bias": b}) * dy).sum(), x, dx, "dx")
    check_numerically(lambda w: (ops.linear(x, {"weight": w, "bias": b}) * dy).sum(), w, grads["weight"], "dW")
    check_numerically(lambda b: (ops.linear(x, {"weight": w, "bias": b}) * dy).sum(), b, grads["bias"], "db")


def test_layer_norm_backward_numerically():
    x, w, b, dy = f64(2, 3, 6, scale=2.0, seed=0) + 1, 1 + f64(6, scale=0.3, seed=1), f64(6, seed=2), f64(2, 3, 6, seed=3)
    dx, grads = bops.layer_norm_backward(x, {"weight": w, "bias": b}, 1e-5, dy)
    loss = lambda x, w, b: (ops.layer_norm(x, {"weight": w, "bias": b}, 1e-5) * dy).sum()
    check_numerically(lambda x: loss(x, w, b), x, dx, "dx")
    check_numerically(lambda w: loss(x, w, b), w, grads["weight"], "dweight")
    check_numerically(lambda b: loss(x, w, b), b, grads["bias"], "dbias")


def test_gelu_backward_numerically_against_exact_gelu():
    """Against x·Φ(x) with math.erf in float64: ops.gelu's float32 erf is too coarse to difference."""
    x = np.concatenate([f64(20, scale=2.0, seed=0), [-9.0, -6.0, -4.5, 4.5, 6.0, 9.0]])
    dy = f64(*x.shape, seed=1)
    erf64 = np.vectorize(math.erf)
    exact = lambda x: (0.5 * x * (1 + erf64(x / math.sqrt(2))) * dy).sum()
    check_numerically(exact, x, bops.gelu_backward(x, dy), "dx", tol=NUMERIC_TOL_F32)


def test_quick_gelu_backward_numerically():
    x, dy = np.concatenate([f64(20, scale=3.0, seed=0), [-12.0, 12.0]]), f64(22, seed=1)
    check_numerically(lambda x: (ops.quick_gelu(x) * dy).sum(), x, bops.quick_gelu_backward(x, dy), "dx")


def test_softmax_backward_numerically():
    x, dprobs = f64(2, 3, 5, scale=2.0, seed=0), f64(2, 3, 5, seed=1)
    check_numerically(lambda x: (ops.softmax(x) * dprobs).sum(), x, bops.softmax_backward(ops.softmax(x), dprobs), "dx")


@pytest.mark.parametrize("Sq, Sk, padded", [(3, 3, True), (3, 4, False)], ids=["self, padded", "cross"])
def test_attention_backward_numerically(Sq, Sk, padded):
    B, D, H = 2, 8, 2
    q, k, v, dcontext = f64(B, Sq, D, seed=0), f64(B, Sk, D, seed=1), f64(B, Sk, D, seed=2), f64(B, Sq, D, seed=3)
    mask = ops.additive_mask(np.array([[1] * Sk, [1] * (Sk - 1) + [0]])) if padded else None
    dq, dk, dv = bops.attention_backward(q, k, v, H, mask, dcontext)
    loss = lambda q, k, v: (ops.attention(q, k, v, H, mask)[0] * dcontext).sum()
    check_numerically(lambda q: loss(q, k, v), q, dq, "dq")
    check_numerically(lambda k: loss(q, k, v), k, dk, "dk")
    check_numerically(lambda v: loss(q, k, v), v, dv, "dv")


def test_cross_entropy_backward_numerically():
    """Against the loss's formula in float64 (ops.cross_entropy rounds its result to float32)."""
    logits, labels = f64(5, 4, scale=2.0, seed=0), np.array([1, -100, 3, 0, -100])

    def loss64(logits):
        kept = labels != -100
        z = logits[kept]
        log_z = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
        return (log_z - z[np.arange(len(z)), labels[kept]]).mean()

    assert abs(loss64(logits) - ops.cross_entropy(logits, labels)) < 1e-6  # the same loss
    check_numerically(loss64, logits, bops.cross_entropy_backward(logits, labels), "dlogits", tol=NUMERIC_TOL_F32)


def test_l2_normalize_backward_numerically_on_both_sides_of_eps():
    """eps = 0.5 with rows of norm ~2.4 and 0.3, so both branches are checked, away from the kink."""
    x, dy = f64(2, 3, seed=0), f64(2, 3, seed=1)
    x[1] *= 0.3 / np.linalg.norm(x[1])  # norm 0.3 < eps: y = x / eps
    check_numerically(lambda x: (ops.l2_normalize(x, eps=0.5) * dy).sum(), x,
                      bops.l2_normalize_backward(x, dy, eps=0.5), "dx")
