"""Poolers and the three task heads on top of the cross-modal stack (SPEC §6-7).

    pooled = pool(p, text_features, image_features)      # [B, 2D]
    itm_logits(p["itm_score"], pooled)                   # [B, 2]   image-text matching
    mlm_logits(p["mlm_score"], text_features, ...)       # [B, T, V] masked language modelling
    contrastive_embeddings(...)                          # 3 × [B, C] text / image / cross
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


def contrastive_embeddings(p, text_cls, image_cls_projected, pooled):
    """The ITC head's three L2-normalised embeddings (SPEC §7.3).

    text_cls: [B, Dt] raw last RoBERTa layer at <s>; image_cls_projected: [B, D] the last vision
    layer's CLS after ln_post, the image transform and token type 1; pooled: [B, 2D].
    Returns (text_embeds, image_embeds, cross_embeds), each [B, C].
    """
    # BEGIN SOLUTION
    text = l2_normalize(linear(text_cls, p["itc_text_head"]["fc"]))  # [B, C]
    image = l2_normalize(linear(image_cls_projected, p["itc_image_head"]["fc"]))  # [B, C]
    cross = l2_normalize(linear(pooled, p["itc_cross_modal_head"]["fc"]))  # [B, C]
    return text, image, cross
    # END SOLUTION
