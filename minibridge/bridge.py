"""The heart of BridgeTower: bridge (link tower) layers and co-attention cross-modal layers (SPEC §5).

A bridge mixes a uni-modal layer's output into the cross-modal stream by LayerNorm of a sum
(paper §3.2; "add" is the published choice):

    add:          LN(h + c)
    scaled_add:   LN(h·s + c)            s a learned scalar
    interpolate:  LN(h·(1 − β) + c·β)    β a learned scalar

h is the projected uni-modal state, c the previous cross-modal layer's output.
A cross-modal layer is a BERT layer with one extra block: after self-attention, each stream
attends to the *other* stream's layer input (co-attention).
"""

from .text import bert_attention, bert_ffn
from .ops import layer_norm


def link_tower(p, h, c, link_tower_type, eps):
    """Bridge layer: fuse uni-modal h with cross-modal c.  h, c: [B, S, D] -> [B, S, D]"""
    # BEGIN SOLUTION
    if link_tower_type == "add":
        mixed = h + c
    elif link_tower_type == "scaled_add":
        mixed = h * p["scaled_factor"] + c
    elif link_tower_type == "interpolate":
        mixed = h * (1 - p["beta"]) + c * p["beta"]
    else:
        raise ValueError(f"link_tower_type must be add, scaled_add or interpolate, got {link_tower_type!r}")
    return layer_norm(mixed, p["LayerNorm"], eps)
    # END SOLUTION


def cross_modal_layer(p, x, other, cfg, self_mask=None, cross_mask=None):
    """Self-attention, then cross-attention to the other modality, then FFN; each post-LN.

    x: [B, S, D] this stream, other: [B, S', D] the other stream, self_mask: None or [B, 1, 1, S],
    cross_mask: None or [B, 1, 1, S']. `cfg` is the *text* config: heads, FFN width and eps of
    every cross-modal layer come from it (SPEC §5).
    Returns (x [B, S, D], self-attention probs [B, H, S, S], cross-attention probs [B, H, S, S']).
    """
    # BEGIN SOLUTION
    H, eps = cfg.num_attention_heads, cfg.layer_norm_eps
    a, self_probs = bert_attention(p["attention"], x, x, H, eps, self_mask)  # [B, S, D]
    c, cross_probs = bert_attention(p["crossattention"], a, other, H, eps, cross_mask)  # queries a, keys other
    return bert_ffn(p, c, eps), self_probs, cross_probs
    # END SOLUTION
