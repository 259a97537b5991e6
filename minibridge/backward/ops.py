"""The primitives' derivatives: for each forward primitive f of ops.py, f_backward (backward/ops.py).

f_backward takes what f took, then the gradient of f's output (dy: same shape as f's output), and
returns the gradients of f's array inputs, then of its parameters as a dict shaped like p. What it
needs of the forward (normalised x, probabilities, ...) it recomputes from f's inputs.
Axis legend as in ops.py: B batch, S sequence, D hidden, H heads, Dh head size, K classes, C size.
float32 in, float32 out; the array module comes from the data, so CuPy works.

Reading the math: "g" is the incoming gradient dy, "·" a product, "⊙" elementwise, Σ a sum.
"""

import math

import numpy as np

from ..backend import array_module
from ..ops import attention, erf, softmax


def _sum_to_last(a):
    """Sum over every axis but the last: the gradient of a parameter broadcast over rows.  [..., n] -> [n]"""
    return a.reshape(-1, a.shape[-1]).sum(axis=0)


def linear_backward(x, p, dy):
    """Gradient of ops.linear, y = x Wᵀ + b: of x, of W and of b, given dy (the gradient of y).

    x [..., in], p {"weight": [out, in], "bias": [out]} (no "bias": none), dy [..., out].
    Returns (dx [..., in], {"weight": [out, in], "bias": [out]}).
    """
    # BEGIN SOLUTION
    # dx = dy W,  dW = dyᵀ x (summed over rows),  db = Σ_rows dy
    x2 = x.reshape(-1, x.shape[-1])  # [..., in] -> [N, in]
    dy2 = dy.reshape(-1, dy.shape[-1])  # [..., out] -> [N, out]
    dx = (dy2 @ p["weight"]).reshape(x.shape)  # [N, out] @ [out, in] -> [N, in] -> [..., in]
    grads = {"weight": dy2.T @ x2}  # [out, N] @ [N, in] -> [out, in]
    if "bias" in p:
        grads["bias"] = dy2.sum(axis=0)  # [out]: b was broadcast over every row
    return dx, grads
    # END SOLUTION


def layer_norm_backward(x, p, eps, dy):
    """Gradient of ops.layer_norm, y = x̂⊙w + b with x̂ = (x − μ)/σ, σ = sqrt(var + eps), per row.

    x, dy [..., D]; p {"weight": [D], "bias": [D]}; eps as the forward's (inside the root).
    Returns (dx [..., D], {"weight": [D], "bias": [D]}).
    """
    # BEGIN SOLUTION
    # dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂)) / σ with dx̂ = dy⊙w;  dw = Σ_rows dy⊙x̂,  db = Σ_rows dy
    centred = x - x.mean(axis=-1, keepdims=True)  # [..., D], recomputed as the forward does
    inv_std = 1.0 / ((centred * centred).mean(axis=-1, keepdims=True) + eps) ** 0.5  # [..., 1]
    x_hat = centred * inv_std  # [..., D]
    grads = {"weight": _sum_to_last(dy * x_hat), "bias": _sum_to_last(dy)}  # [D] each
    dx_hat = dy * p["weight"]  # [..., D]: the gradient of x̂
    # subtle: three terms, not one. μ and σ are functions of every x of the row, so besides the
    # direct path (dx̂ / σ) each x also moves the mean (− mean(dx̂)) and the variance
    # (− x̂·mean(dx̂⊙x̂)); dropping either is the classic wrong LayerNorm backward.
    mean_term = dx_hat.mean(axis=-1, keepdims=True)  # [..., 1]
    variance_term = x_hat * (dx_hat * x_hat).mean(axis=-1, keepdims=True)  # [..., D]
    dx = (dx_hat - mean_term - variance_term) * inv_std  # [..., D]
    return dx, grads
    # END SOLUTION


def gelu_backward(x, dy):
    """Gradient of ops.gelu, y = x·Φ(x) (Φ the standard normal CDF, through ops.erf).  [...] -> [...]"""
    # BEGIN SOLUTION
    # dx = dy ⊙ (Φ(x) + x·φ(x)), φ(x) = exp(−x²/2)/√(2π): both factors of x·Φ(x) depend on x.
    # Φ is computed with ops.erf, the forward's own float32 erf, so the two agree where erf saturates.
    xp = array_module(x)
    cdf = 0.5 * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))  # Φ(x), exactly 0 or 1 beyond |x| ≈ 5.7
    pdf = xp.exp(x * x * np.float32(-0.5)) * np.float32(1.0 / math.sqrt(2.0 * math.pi))  # φ(x), → 0 far out
    return dy * (cdf + x * pdf)
    # END SOLUTION


def quick_gelu_backward(x, dy):
    """y = x·s, s = sigmoid(1.702·x)  ⇒  dx = dy ⊙ (s + 1.702·x·s·(1 − s)).  [...] -> [...]"""
    s = 1.0 / (1.0 + array_module(x).exp(x * np.float32(-1.702)))  # sigmoid(1.702·x), as the forward
    return dy * (s + np.float32(1.702) * x * s * (1.0 - s))


def softmax_backward(probs, dprobs):
    """Gradient of ops.softmax along the last axis: dx from y = softmax(x) and g, y's gradient.  [..., S] -> [..., S]

    probs: the forward's output y; dprobs: the gradient g of y.
    """
    # BEGIN SOLUTION
    # dx = y ⊙ (g − Σ y⊙g), the sum along the last axis (the row's own entries)
    # subtle: the Jacobian ∂y_i/∂x_j = y_i (δ_ij − y_j) is symmetric, and applied to g it is this
    # vector product; the [S, S] matrix is never built. A key whose probability is 0 (masked with
    # finfo.min) gets exactly 0 gradient, as it should: moving its score changes nothing.
    # subtle: computed in float64, rounded once at the end. The rows of the result sum to 0 in exact
    #   arithmetic, and an attention key's gradient lives on that cancellation: in float32 the base
    #   model's key weights came out 2e-3 (relative) from the float64 truth, 4× torch's own float32 error.
    y = probs.astype(array_module(probs).float64)  # [..., S]
    return (y * (dprobs - (y * dprobs).sum(axis=-1, keepdims=True))).astype(probs.dtype)
    # END SOLUTION


def attention_backward(q, k, v, num_heads, mask, dcontext):
    """Gradient of ops.attention's context, softmax(q kᵀ/√Dh + mask) v per head: of q, k and v.

    q [B, Sq, D], k and v [B, Sk, D], mask None or additive [B, 1, 1, Sk] (a constant: no gradient),
    dcontext [B, Sq, D]. Returns (dq [B, Sq, D], dk [B, Sk, D], dv [B, Sk, D]).
    """
    # BEGIN SOLUTION
    # With P the probabilities, dV = Pᵀ dC, dP = dC Vᵀ, dS = softmax_backward(P, dP), dQ = dS K/√Dh,
    # dK = dSᵀ Q/√Dh.
    B, Sq, D = q.shape
    Sk = k.shape[1]
    Dh = D // num_heads
    scale = 1.0 / math.sqrt(Dh)  # as the forward: a Python float keeps float32 arrays float32
    _, probs = attention(q, k, v, num_heads, mask)  # [B, H, Sq, Sk], recomputed (the context is not needed)
    q = q.reshape(B, Sq, num_heads, Dh).transpose(0, 2, 1, 3)  # [B, Sq, D] -> [B, H, Sq, Dh]
    k = k.reshape(B, Sk, num_heads, Dh).transpose(0, 2, 1, 3)  # [B, Sk, D] -> [B, H, Sk, Dh]
    v = v.reshape(B, Sk, num_heads, Dh).transpose(0, 2, 1, 3)  # [B, Sk, D] -> [B, H, Sk, Dh]
    dcontext = dcontext.reshape(B, Sq, num_heads, Dh).transpose(0, 2, 1, 3)  # [B, Sq, D] -> [B, H, Sq, Dh]
    dv = probs.transpose(0, 1, 3, 2) @ dcontext  # [B, H, Sk, Sq] @ [B, H, Sq, Dh] -> [B, H, Sk, Dh]
    dprobs = dcontext @ v.transpose(0, 1, 3, 2)  # [B, H, Sq, Dh] @ [B, H, Dh, Sk] -> [B, H, Sq, Sk]
    dscores = softmax_backward(probs, dprobs)  # [B, H, Sq, Sk]; masked keys get 0 (their probability is 0)
    # subtle: scores = (q·scale) kᵀ, so the 1/√Dh comes back into both dq and dk (forgetting it
    # makes them √Dh = 8 times too large in the base model).
    dscores *= scale
    dq = dscores @ k  # [B, H, Sq, Sk] @ [B, H, Sk, Dh] -> [B, H, Sq, Dh]
    dk = dscores.transpose(0, 1, 3, 2) @ q  # [B, H, Sk, Sq] @ [B, H, Sq, Dh] -> [B, H, Sk, Dh]

    def merge(a):  # [B, H, S, Dh] -> [B, S, D], the heads side by side again
        return a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], D)

    return merge(dq), merge(dk), merge(dv)
    # END SOLUTION


def cross_entropy_backward(logits, labels, ignore_index=-100):
    """Gradient of ops.cross_entropy's loss, the mean over kept rows of log Σ exp(logits) − logits[label].

    logits [N, K], labels [N] (ignore_index: skipped). Returns dlogits [N, K] (float32), the
    gradient of that one number; ignored rows are not in the loss.
    """
    # BEGIN SOLUTION
    # dlogits = (softmax − onehot) / N' on the kept rows (N' of them), 0 on the ignored ones
    xp = array_module(logits)
    kept = xp.nonzero(labels != ignore_index)[0]  # [N'] indices of the rows that count
    dlogits = softmax(logits.astype(xp.float64))  # [N, K], in float64 like the forward's loss
    dlogits[kept, labels[kept]] -= 1.0  # softmax − onehot on the kept rows
    dlogits[labels == ignore_index] = 0.0  # ignored rows do not enter the loss
    # subtle: the mean divides by the kept rows N', not N. With every label ignored the loss is nan
    # (a mean of nothing), but torch's gradient is 0, not nan, and so is ours (max(N', 1)).
    dlogits /= max(int(kept.shape[0]), 1)
    return dlogits.astype(xp.float32)
    # END SOLUTION


def l2_normalize_backward(x, dy, eps=1e-12):
    """y = x / max(‖x‖, eps)  ⇒  dx = (dy − y·(y·dy)) / ‖x‖, or dy / eps where ‖x‖ < eps.

    x, dy [..., C]; eps as the forward's. Returns dx [..., C].
    """
    xp = array_module(x)
    norm = xp.sqrt((x * x).sum(axis=-1, keepdims=True))  # [..., 1]
    denom = xp.maximum(norm, eps)  # [..., 1], as the forward
    y = x / denom  # [..., C], the forward's output
    # subtle: below eps the denominator is the constant eps, so only the direct term dy/eps is left;
    # at or above it (torch's clamp_min passes the gradient at equality) the norm's own derivative
    # removes the component of dy along y. Dividing by denom, never by norm, keeps x = 0 finite.
    along = (y * dy).sum(axis=-1, keepdims=True) * (norm >= eps)  # [..., 1], y·dy where the norm counts
    return (dy - y * along) / denom
