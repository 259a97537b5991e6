"""Primitives: the few array operations every part of BridgeTower is built from (SPEC §2).

Axis legend used in shape comments across minibridge:
    B batch, T text tokens, L image tokens (1 + grid²), S either (a sequence), D hidden size,
    H heads, Dh head size (D // H), F feed-forward width, V vocabulary, C contrastive size.

Parameters are nested dicts keyed by the checkpoint's own names, e.g. a Linear is
{"weight": [out, in], "bias": [out]} as torch stores it.
"""

import math

import numpy as np

from .backend import array_module


def linear(x, p):
    """y = x Wᵀ + b, with W stored (out, in) as in torch.  [..., in] -> [..., out]"""
    # BEGIN SOLUTION
    # subtle: W.T is a free view; BLAS multiplies by a transposed matrix without copying it.
    y = x @ p["weight"].T  # [..., in] @ [in, out] -> [..., out]
    if "bias" in p:
        y += p["bias"]
    return y
    # END SOLUTION


def layer_norm(x, p, eps):
    """LayerNorm over the last axis with the *biased* variance, as torch.  [..., D] -> [..., D]

    eps comes from the config (1e-5 for every published checkpoint); a wrong eps moves outputs
    by about 1e-6 relative, which parity tests at 1e-4 would not catch, so it is always passed in.
    """
    # BEGIN SOLUTION
    mean = x.mean(axis=-1, keepdims=True)  # [..., 1]
    centred = x - mean  # [..., D]
    var = (centred * centred).mean(axis=-1, keepdims=True)  # [..., 1], biased (divide by D, not D-1)
    return centred / (var + eps) ** 0.5 * p["weight"] + p["bias"]
    # END SOLUTION


# erf(x) ≈ x·P(x²)/Q(x²) on [-4, 4]: the rational approximation of Eigen / XLA for float32 erf.
# Evaluated in float64 its error is below 7e-8 everywhere (tests/test_ops.py checks it against
# math.erf on a dense grid); evaluated in float32 it would be ~4e-7 near |x| = 3, from rounding.
# Beyond |x| = 4, erf(x) rounds to ±1 in float32.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def erf(x):
    """The error function, elementwise, to ~1e-7 (NumPy has none; math.erf is one scalar at a time)."""
    xp = array_module(x)
    z = xp.clip(x.astype(xp.float64), -4.0, 4.0)
    z2 = z * z
    num = _ERF_P[0]
    for c in _ERF_P[1:]:  # Horner's rule
        num = num * z2 + c
    den = _ERF_Q[0]
    for c in _ERF_Q[1:]:
        den = den * z2 + c
    return (z * num / den).astype(x.dtype)


def gelu(x):
    """Exact GELU, x·Φ(x) = 0.5·x·(1 + erf(x/√2)): the text, cross-modal and MLM-head activation.

    subtle: not the tanh approximation; that one differs by up to ~1e-3 and fails parity.
    """
    # BEGIN SOLUTION
    return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
    # END SOLUTION


def quick_gelu(x):
    """QuickGELU, x·sigmoid(1.702·x): the CLIP vision tower's activation (only there)."""
    # BEGIN SOLUTION
    xp = array_module(x)
    return x / (1.0 + xp.exp(-1.702 * x))
    # END SOLUTION


def softmax(x, axis=-1):
    """Softmax along `axis`, shifted by the max so exp never overflows."""
    # BEGIN SOLUTION
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
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
    scores = (q @ k) * (1.0 / math.sqrt(Dh))  # [B, H, Sq, Sk]
    if mask is not None:
        scores = scores + mask  # padded keys get finfo.min and so ~0 probability
    probs = softmax(scores, axis=-1)  # [B, H, Sq, Sk]
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
    logits, labels = logits[keep], labels[keep]
    shift = logits.max(axis=-1, keepdims=True)  # [N, 1]
    log_z = xp.log(xp.exp(logits - shift).sum(axis=-1)) + shift[:, 0]  # [N]
    picked = logits[xp.arange(labels.shape[0]), labels]  # [N]
    return (log_z - picked).mean().astype(xp.float32)  # nan when every label is ignored, as torch
