"""Poolers and the three task heads on top of the cross-modal stack (bridgetower.md §6-7).

Each function takes its own weight subtree, named as in the checkpoint:

    pooler(p["cross_modal_text_pooler"], text_features)       # [B, T, D] -> [B, D]
    itm_logits(p["itm_score"], pooled)                        # [B, 2D] -> [B, 2]     image-text matching
    mlm_logits(p["mlm_score"], text_features, eps)            # [B, T, D] -> [B, T, V] masked language modelling
    contrastive_embedding(p["itc_text_head"], text_cls)       # [B, ·] -> [B, C]       contrastive (ITC)
    contrastive_loss(text, image, cross, scale)               # the ITC loss
"""

from .backend import array_module
from .ops import cross_entropy, gelu, l2_normalize, layer_norm, linear


def pooler(p, features):
    """A stream's first token ([CLS] / <s>) through Linear + tanh.  [B, S, D] -> [B, D]"""
    # BEGIN SOLUTION
    return array_module(features).tanh(linear(features[:, 0], p["dense"]))
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


def contrastive_embedding(p, x):
    """One ITC head: Linear, then scaled to unit length.  [B, in] -> [B, C]

    Its input depends on the head (model.py passes them, bridgetower.md §7.3): itc_text_head reads the
    raw last RoBERTa layer at <s> [B, Dt]; itc_image_head the last vision layer's CLS put into the
    cross-modal space [B, D]; itc_cross_modal_head the pooled pair [B, 2D].
    """
    # BEGIN SOLUTION
    return l2_normalize(linear(x, p["fc"]))
    # END SOLUTION


def contrastive_loss(text, image, cross, scale):
    """The ITC loss: the i-th text belongs with the i-th image.  [B, C] × 3, scalar -> scalar

    subtle: three one-directional terms (text→image, text→cross, image→cross), averaged; no
    image→text term (bridgetower.md §7.3).
    """
    labels = array_module(text).arange(text.shape[0])
    return (cross_entropy(scale * text @ image.T, labels) + cross_entropy(scale * text @ cross.T, labels)
            + cross_entropy(scale * image @ cross.T, labels)) / 3.0
