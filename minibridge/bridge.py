"""The heart of BridgeTower: how tower states enter the cross-modal space, the bridge (link tower)
layers, and the co-attention cross-modal layer (bridgetower.md §5).

A tower state h enters the cross-modal space through a Linear to width D plus a token-type row
(text 0, image 1): `to_cross_space`. The first cross-modal layer reads LN(h); every later one reads
a bridge, which mixes h into the previous cross-modal layer's output c by LayerNorm of a sum
(paper §3.2; "add" is the published choice):

    add:          LN(h + c)
    scaled_add:   LN(h·s + c)            s a learned scalar
    interpolate:  LN(h·(1 − β) + c·β)    β a learned scalar

A cross-modal layer is a BERT layer with one extra block: after self-attention, each stream
attends to the *other* stream's layer input (co-attention).
"""

from .ops import layer_norm, linear
from .text import bert_attention, bert_ffn

TOKEN_TYPE = {"text": 0, "image": 1}  # rows of the cross-modal token_type_embeddings


def to_cross_space(p, cfg, side, h, layer=0):
    """Put a tower state into the cross-modal space: Linear to width D, plus the side's token type.

    p: the whole weight tree; side: "text" (h [B, T, Dt]) or "image" (h [B, L, Dv], the vision
    residual stream, which gets ln_post here); also for the CLS row alone ([B, Dt] or [B, Dv]).
    layer: the cross-modal layer it feeds (read only when each layer has its own Linear).
    Returns [B, S, D] (or [B, D]).
    """
    # BEGIN SOLUTION
    if side == "image":  # subtle: the bridges read ln_post(v); the vision residual stream v stays raw
        h = layer_norm(h, p["vision_model"]["visual"]["ln_post"], cfg.vision_config.layer_norm_eps)
    w = p[f"cross_modal_{side}_transform"]
    if not cfg.share_cross_modal_transformer_layers:  # subtle: the flag shares only these Linears
        w = w[layer]
    return linear(h, w) + p["token_type_embeddings"]["weight"][TOKEN_TYPE[side]]  # [..., D]
    # END SOLUTION


def link_tower(p, h, c, link_tower_type, eps):
    """Bridge layer: fuse uni-modal h with cross-modal c.  h, c: [B, S, D] -> [B, S, D]

    add: LN(h + c), scaled_add: LN(h·scaled_factor + c), interpolate: LN(h·(1 − beta) + c·beta);
    LN is layer_norm with p["LayerNorm"] and eps.
    """
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


def cross_modal_layer(p, x, other, cfg, self_mask=None, cross_mask=None, rows=None):
    """Self-attention, then cross-attention to the other modality, then FFN; each post-LN.

    x: [B, S, D] this stream, other: [B, S', D] the other stream, self_mask: None or [B, 1, 1, S],
    cross_mask: None or [B, 1, 1, S']. `cfg` is the *text* config: heads, FFN width and eps of
    every cross-modal layer come from it (bridgetower.md §5).
    rows: None, or k to compute the output of positions 0 … k−1 alone (queries x[:, :k]; keys
    and values are still every position of x and of other); the last layer needs only position 0.
    Returns (x [B, S, D], self-attention probs [B, H, S, S], cross-attention probs [B, H, S, S']),
    with k rows in place of S where `rows` is given.
    """
    queries = x if rows is None else x[:, :rows]  # [B, S, D], or [B, k, D]
    # BEGIN SOLUTION
    H, eps = cfg.num_attention_heads, cfg.layer_norm_eps
    a, self_probs = bert_attention(p["attention"], queries, x, H, eps, self_mask)  # [B, S, D]
    c, cross_probs = bert_attention(p["crossattention"], a, other, H, eps, cross_mask)  # queries a, keys other
    return bert_ffn(p, c, eps), self_probs, cross_probs
    # END SOLUTION
