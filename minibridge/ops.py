"""Primitives: the few array operations every part of BridgeTower is built from (bridgetower.md §2).

Axis legend used in shape comments across minibridge:
    B batch, T text tokens, L image tokens (1 + grid²), S either (a sequence), D hidden size,
    H heads, Dh head size (D // H), F feed-forward width, V vocabulary, C contrastive size.

Parameters are nested dicts keyed by the checkpoint's own names, e.g. a Linear is
{"weight": [out, in], "bias": [out]} as torch stores it.

Each primitive is written as its formula. Those that work row by row (elementwise, or along the
last axis) carry `@rowwise`, which runs the formula on cache-sized blocks of rows (the one speed technique, in backend.py); the arithmetic is
the formula's, and tests/test_ops.py checks that the blocked and the plain form agree.
"""

import math

import numpy as np

from .backend import array_module, rowwise


def linear(x, p):
    """y = x Wᵀ + b, with W stored (out, in) as in torch.  [..., in] -> [..., out]

    p: {"weight": [out, in], "bias": [out]}; without "bias", no bias.
    """
    # BEGIN SOLUTION
    # subtle: W.T is a free view, and BLAS multiplies by a transposed matrix without copying it.
    # Flattening the leading axes makes one large matrix product instead of one per batch row.
    y = x.reshape(-1, x.shape[-1]) @ p["weight"].T  # [N, in] @ [in, out] -> [N, out]
    if "bias" in p:
        y += p["bias"]  # in place: y is the product's fresh array
    return y.reshape(*x.shape[:-1], y.shape[-1])  # [..., out]
    # END SOLUTION


@rowwise
def layer_norm(x, p, eps):
    """LayerNorm over the last axis with the *biased* variance, as torch.  [..., D] -> [..., D]

    y = (x - mean) / sqrt(var + eps) · weight + bias: var divided by D, eps inside the root. eps
    comes from the config (1e-5 for every published checkpoint); a wrong eps moves outputs by about
    1e-6 relative, which parity tests at 1e-4 would not catch, so it is always passed in.
    """
    # BEGIN SOLUTION
    centred = x - x.mean(axis=-1, keepdims=True)  # [..., D]
    var = (centred * centred).mean(axis=-1, keepdims=True)  # [..., 1], biased: divide by D, not D − 1
    inv_std = 1.0 / (var + eps) ** 0.5  # [..., 1]; eps inside the root
    return centred * inv_std * p["weight"] + p["bias"]
    # END SOLUTION


# erf(x) ≈ x·P(x²)/Q(x²) on [-4, 4]: the rational approximation of Eigen / XLA for float32 erf.
# Beyond |x| = 4, erf(x) rounds to ±1 in float32. In float32 arithmetic its error is below 5e-7
# (about 4 units in the last place near ±1; torch's own float32 GELU is as far from the exact
# value), checked against math.erf on a dense grid by tests/test_ops.py.
_ERF_P = tuple(np.float32(c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02))
_ERF_Q = tuple(np.float32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02))


def erf(x):
    """The error function, elementwise, in float32 (NumPy has none; math.erf is one scalar at a time)."""
    xp = array_module(x)
    z = xp.clip(x, -4.0, 4.0).astype(np.float32, copy=False)
    z2 = z * z
    num, den = xp.full_like(z, _ERF_P[0]), xp.full_like(z, _ERF_Q[0])
    for c in _ERF_P[1:]:  # Horner's rule: P(z²) = ((p0·z² + p1)·z² + p2)·z² …, updating num in place
        num *= z2
        num += c
    for c in _ERF_Q[1:]:
        den *= z2
        den += c
    return z * num / den


@rowwise
def gelu(x):
    """Exact GELU, x·Φ(x) = 0.5·x·(1 + erf(x/√2)): the text, cross-modal and MLM-head activation.  [...] -> [...]

    subtle: not the tanh approximation; that one differs by up to ~1e-3 and fails parity.
    """
    # BEGIN SOLUTION
    return 0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))
    # END SOLUTION


@rowwise
def quick_gelu(x):
    """QuickGELU, x·sigmoid(1.702·x): the CLIP vision tower's activation (only there).  [...] -> [...]"""
    # BEGIN SOLUTION
    return x / (1.0 + array_module(x).exp(x * np.float32(-1.702)))  # x·sigmoid(1.702·x)
    # END SOLUTION


@rowwise
def softmax(x):
    """Softmax along the last axis, shifted by the max so exp never overflows.  [..., S] -> [..., S]"""
    # BEGIN SOLUTION
    e = array_module(x).exp(x - x.max(axis=-1, keepdims=True))  # [..., S], every entry in (0, 1]
    return e / e.sum(axis=-1, keepdims=True)
    # END SOLUTION


def additive_mask(attention_mask, dtype=np.float32):
    """[B, T] 1 = keep / 0 = pad  ->  [B, 1, 1, T] with 0 to keep and finfo.min to drop, or None.

    subtle: the reference adds float32's most negative number, not -inf: a row that were all
    padding would still softmax to something finite instead of NaN. When nothing is padded it
    uses no mask at all, and so do we (the results are bit-identical either way).
    """
    xp = array_module(attention_mask)
    if bool((attention_mask != 0).all()):
        return None
    keep = (attention_mask != 0)[:, None, None, :]  # [B, T] -> [B, 1, 1, T]
    return xp.where(keep, 0.0, np.finfo(dtype).min).astype(dtype)


def attention(q, k, v, num_heads, mask=None):
    """Scaled dot-product attention over heads.

    q: [B, Sq, D], k and v: [B, Sk, D], mask: None or additive [B, 1, 1, Sk].
    Returns (context [B, Sq, D], probabilities [B, H, Sq, Sk]).
    """
    # BEGIN SOLUTION
    B, Sq, D = q.shape
    Sk = k.shape[1]
    Dh = D // num_heads
    q = q.reshape(B, Sq, num_heads, Dh).transpose(0, 2, 1, 3)  # [B, Sq, D] -> [B, H, Sq, Dh]
    k = k.reshape(B, Sk, num_heads, Dh).transpose(0, 2, 3, 1)  # [B, Sk, D] -> [B, H, Dh, Sk]
    v = v.reshape(B, Sk, num_heads, Dh).transpose(0, 2, 1, 3)  # [B, Sk, D] -> [B, H, Sk, Dh]
    scores = (q * (1.0 / math.sqrt(Dh))) @ k  # [B, H, Sq, Sk]; scaling q is cheaper than scaling scores
    if mask is not None:
        scores += mask  # padded keys get finfo.min and so ~0 probability
    probs = softmax(scores, out=scores)  # [B, H, Sq, Sk], written over the scores (rowwise's out=)
    context = probs @ v  # [B, H, Sq, Dh]
    context = context.transpose(0, 2, 1, 3).reshape(B, Sq, D)  # [B, H, Sq, Dh] -> [B, Sq, D]
    return context, probs
    # END SOLUTION


def l2_normalize(x, eps=1e-12):
    """x / max(‖x‖₂, eps) along the last axis, as torch.nn.functional.normalize.  [..., C] -> [..., C]"""
    xp = array_module(x)
    norm = xp.sqrt((x * x).sum(axis=-1, keepdims=True))  # [..., 1]
    return x / xp.maximum(norm, eps)


def cross_entropy(logits, labels, ignore_index=-100):
    """Mean cross-entropy of integer `labels` [N] under `logits` [N, K], skipping ignore_index.

    Computed in float64 (log-sum-exp), so the loss is not the least exact number we return.
    """
    xp = array_module(logits)
    logits = logits.astype(xp.float64)
    keep = labels != ignore_index  # [N]
    logits, labels = logits[keep], labels[keep]  # [N, K] -> [N', K], [N] -> [N']
    shift = logits.max(axis=-1, keepdims=True)  # [N, 1]
    log_z = xp.log(xp.exp(logits - shift).sum(axis=-1)) + shift[:, 0]  # [N]
    picked = logits[xp.arange(labels.shape[0]), labels]  # [N]
    return (log_z - picked).mean().astype(xp.float32)  # nan when every label is ignored, as torch
