"""The heads' derivatives: for each function of heads.py, its backward (bridgetower.md §6-7).

    dfeatures, grads = pooler_backward(p["cross_modal_text_pooler"], features, dpooled)
    dpooled, grads = itm_logits_backward(p["itm_score"], pooled, dlogits)
    dtext_features, grads = mlm_logits_backward(p["mlm_score"], text_features, eps, dlogits)
    dx, grads = contrastive_embedding_backward(p["itc_text_head"], x, dout)
    dtext, dimage, dcross, dscale = contrastive_loss_backward(text, image, cross, scale)

Each recomputes what it needs with the forward functions, then reads the forward's lines upwards.
The losses of ITM and MLM are ops.cross_entropy, whose backward is ops' cross_entropy_backward.
Axis legend as in ops.py: B batch, S sequence, T text tokens, D hidden, V vocabulary, C contrastive size.
"""

from ..backend import array_module
from ..ops import gelu, layer_norm, linear
from ..heads import pooler
from .ops import (cross_entropy_backward, gelu_backward, l2_normalize_backward, layer_norm_backward,
                  linear_backward)


def pooler_backward(p, features, dpooled):
    """Gradient of heads.pooler: tanh(Linear(features[:, 0])).

    features: [B, S, D], dpooled: [B, D]. Returns (dfeatures [B, S, D], grads {"dense": {"weight", "bias"}}).
    """
    xp = array_module(features)
    pooled = pooler(p, features)  # [B, D], recomputed: tanh(z)
    dz = dpooled * (1 - pooled * pooled)  # [B, D]: tanh'(z) = 1 − tanh²(z), from the output itself
    dfirst, g_dense = linear_backward(features[:, 0], p["dense"], dz)  # [B, D]
    dfeatures = xp.zeros_like(features)  # [B, S, D]: only the first token was read,
    dfeatures[:, 0] = dfirst  # so every other token gets 0
    return dfeatures, {"dense": g_dense}


def itm_logits_backward(p, pooled, dlogits):
    """Gradient of heads.itm_logits: one Linear.  pooled [B, 2D], dlogits [B, 2] -> (dpooled [B, 2D], {"fc"})"""
    # BEGIN SOLUTION
    dpooled, g_fc = linear_backward(pooled, p["fc"], dlogits)  # [B, 2] -> [B, 2D]
    return dpooled, {"fc": g_fc}
    # END SOLUTION


def mlm_logits_backward(p, text_features, eps, dlogits):
    """Gradient of heads.mlm_logits: LN(gelu(W·x)) Eᵀ + b.

    text_features: [B, T, D], dlogits: [B, T, V]. Returns (dtext_features [B, T, D], grads
    {"transform": {"dense", "LayerNorm"}, "decoder": {"weight"}, "bias"}). When the decoder is tied to
    the word embeddings, adding its gradient to theirs is the caller's business.
    """
    dense, ln = p["transform"]["dense"], p["transform"]["LayerNorm"]
    # forward, recomputed
    z = linear(text_features, dense)  # [B, T, D]
    g = gelu(z)  # [B, T, D]
    h = layer_norm(g, ln, eps)  # [B, T, D]

    # logits = h Eᵀ + b: a Linear without bias (the decoder), then the separate vocabulary bias
    dbias = dlogits.reshape(-1, dlogits.shape[-1]).sum(axis=0)  # [B, T, V] -> [V]: b was broadcast over rows
    dh, g_decoder = linear_backward(h, p["decoder"], dlogits)  # [B, T, V] -> [B, T, D]; g_decoder {"weight": [V, D]}
    dg, g_ln = layer_norm_backward(g, ln, eps, dh)  # [B, T, D]
    dz = gelu_backward(z, dg)  # [B, T, D]
    dx, g_dense = linear_backward(text_features, dense, dz)  # [B, T, D]
    return dx, {"transform": {"dense": g_dense, "LayerNorm": g_ln}, "decoder": g_decoder, "bias": dbias}


def contrastive_embedding_backward(p, x, dout):
    """Gradient of heads.contrastive_embedding: l2_normalize(Linear(x)).

    x: [B, in], dout: [B, C]. Returns (dx [B, in], grads {"fc": {"weight", "bias"}}).
    """
    z = linear(x, p["fc"])  # [B, C], recomputed: the vector before it is scaled to unit length
    dz = l2_normalize_backward(z, dout)  # [B, C]
    dx, g_fc = linear_backward(x, p["fc"], dz)  # [B, C] -> [B, in]
    return dx, {"fc": g_fc}


def _similarity_term_backward(a, b, scale, labels):
    """Gradient of cross_entropy(scale · a bᵀ, labels) / 3, one term of the ITC loss.

    a: [B, C], b: [B, C]. Returns (da [B, C], db [B, C], dscale, a 0-d array).
    """
    sims = a @ b.T  # [B, C] @ [C, B] -> [B, B]: every a against every b
    dlogits = cross_entropy_backward(scale * sims, labels) / 3.0  # [B, B]; the loss is a mean of 3 terms
    dsims = scale * dlogits  # [B, B]: logits = scale · sims
    da = dsims @ b  # [B, B] @ [B, C] -> [B, C]
    db = dsims.T @ a  # [B, B] @ [B, C] -> [B, C]
    dscale = (dlogits * sims).sum()  # []: the scale multiplied every logit
    return da, db, dscale


def contrastive_loss_backward(text, image, cross, scale):
    """Gradient of heads.contrastive_loss (dloss = 1).  text, image, cross: [B, C]; scale: scalar

    Returns (dtext [B, C], dimage [B, C], dcross [B, C], dscale 0-d). scale is the multiplier
    itself, exp(logit_scale); the caller chains it to the stored log-scale: dlogit_scale = dscale · scale.
    """
    xp = array_module(text)
    labels = xp.arange(text.shape[0])  # [B]: the i-th text belongs with the i-th image
    # the loss is (text→image + text→cross + image→cross) / 3; each embedding sits in two terms
    dtext_1, dimage_1, dscale_1 = _similarity_term_backward(text, image, scale, labels)
    dtext_2, dcross_2, dscale_2 = _similarity_term_backward(text, cross, scale, labels)
    dimage_3, dcross_3, dscale_3 = _similarity_term_backward(image, cross, scale, labels)
    dtext = dtext_1 + dtext_2  # [B, C]
    dimage = dimage_1 + dimage_3  # [B, C]
    dcross = dcross_2 + dcross_3  # [B, C]
    dscale = xp.asarray(dscale_1 + dscale_2 + dscale_3, dtype=text.dtype)  # 0-d
    return dtext, dimage, dcross, dscale
