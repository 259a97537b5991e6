"""Poolers and the three task heads on top of the cross-modal stack (SPEC §6-7).

    pooled = pool(p, text_features, image_features)      # [B, 2D]
    itm_logits(p["itm_score"], pooled)                   # [B, 2]   image-text matching
    mlm_logits(p["mlm_score"], text_features, ...)       # [B, T, V] masked language modelling
    contrastive_*_embedding(...)                         # [B, C] text / image / cross
"""

from .backend import array_module
from .ops import gelu, l2_normalize, layer_norm, linear


def pool(p, text_features, image_features):
    """[CLS] of each stream through Linear + tanh, concatenated.  [B, T, D], [B, L, D] -> [B, 2D]"""
    # BEGIN SOLUTION
    xp = array_module(text_features)
    text = xp.tanh(linear(text_features[:, 0], p["cross_modal_text_pooler"]["dense"]))  # [B, D]
    image = xp.tanh(linear(image_features[:, 0], p["cross_modal_image_pooler"]["dense"]))  # [B, D]
    return xp.concatenate([text, image], axis=-1)  # [B, 2D]
    # END SOLUTION


def itm_logits(p, pooled):
    """Image-text matching: [B, 2D] -> [B, 2] logits; index 1 means "this text fits this image"."""
    # BEGIN SOLUTION
    return linear(pooled, p["fc"])
    # END SOLUTION


def mlm_logits(p, text_features, eps):
    """Masked-LM scores for every text position: LN(gelu(W·x)) Eᵀ + b.  [B, T, D] -> [B, T, V]"""
    # BEGIN SOLUTION
    h = layer_norm(gelu(linear(text_features, p["transform"]["dense"])), p["transform"]["LayerNorm"], eps)
    # subtle: the decoder has no bias of its own; the vocabulary bias is the separate mlm_score.bias.
    return h @ p["decoder"]["weight"].T + p["bias"]  # [B, T, D] @ [D, V] -> [B, T, V]
    # END SOLUTION


def contrastive_text_embedding(p, text_cls):
    """ITC text embedding: the raw last RoBERTa layer at <s>, projected.  [B, Dt] -> [B, C], unit length

    subtle: no cross-modal transform, no LayerNorm, no token type on this side (SPEC §7.3).
    """
    # BEGIN SOLUTION
    return l2_normalize(linear(text_cls, p["itc_text_head"]["fc"]))
    # END SOLUTION


def contrastive_image_embedding(p, image_cls_projected):
    """ITC image embedding.  [B, D] -> [B, C], unit length

    image_cls_projected: the last vision layer's CLS after ln_post, the shared image transform and
    token type 1 (the model class computes it), as the reference does.
    """
    # BEGIN SOLUTION
    return l2_normalize(linear(image_cls_projected, p["itc_image_head"]["fc"]))
    # END SOLUTION


def contrastive_cross_embedding(p, pooled):
    """ITC cross-modal embedding of the pooled pair.  [B, 2D] -> [B, C], unit length"""
    # BEGIN SOLUTION
    return l2_normalize(linear(pooled, p["itc_cross_modal_head"]["fc"]))
    # END SOLUTION
