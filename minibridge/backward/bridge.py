"""The bridge's derivatives: for each function of bridge.py, its backward (bridgetower.md §5).

Each reads as its forward read upwards: recompute the intermediates with the forward functions,
then send the gradient back through them, last line first.

    dh, grads = to_cross_space_backward(p, cfg, side, h, layer, dout)     # grads: flat dotted names
    dh, dc, grads = link_tower_backward(p, h, c, link_tower_type, eps, dout)
    dx, dother, grads = cross_modal_layer_backward(p, x, other, cfg, self_mask, cross_mask, dout)

Axis legend as in ops.py: B batch, S this stream's tokens, S' the other stream's, D cross-modal width,
Dt / Dv the text / vision tower width.
"""

from ..backend import array_module
from ..bridge import TOKEN_TYPE
from ..ops import layer_norm
from ..text import bert_attention
from .ops import layer_norm_backward, linear_backward
from .text import bert_attention_backward, bert_ffn_backward


def to_cross_space_backward(p, cfg, side, h, layer, dout):
    """Gradient of bridge.to_cross_space(p, cfg, side, h, layer).

    h: [B, S, Dt] / [B, S, Dv] (or the CLS row, [B, Dt] / [B, Dv]); dout: [B, S, D] (or [B, D]).
    Returns (dh like h, grads). Its weights come from three places of the tree, so grads is FLAT:
    {dotted unprefixed checkpoint name: array}: "cross_modal_{side}_transform.weight" / ".bias" (with
    the layer's number, ".{layer}.", when each layer has its own Linear), "token_type_embeddings.weight"
    ([2, D], only the side's row non-zero) and, for the image, "vision_model.visual.ln_post.weight" / ".bias".
    """
    xp = array_module(dout)
    # forward, recomputed: x = ln_post(h) for the image, h itself for the text
    x = h
    if side == "image":
        ln_post, eps = p["vision_model"]["visual"]["ln_post"], cfg.vision_config.layer_norm_eps
        x = layer_norm(h, ln_post, eps)  # [..., Dv]
    name = f"cross_modal_{side}_transform"
    w = p[name]
    if not cfg.share_cross_modal_transformer_layers:
        w, name = w[layer], f"{name}.{layer}"  # this layer's own Linear

    # out = linear(x, w) + token_type_embeddings[row]: back through the sum, then the Linear
    d_types = xp.zeros_like(p["token_type_embeddings"]["weight"])  # [2, D]
    # subtle: the side's row was broadcast over every token of every batch row, so its gradient is
    # dout summed over all of them; the other side's row was not used here and gets 0.
    d_types[TOKEN_TYPE[side]] = dout.reshape(-1, dout.shape[-1]).sum(axis=0)  # [..., D] -> [N, D] -> [D]
    dx, g_linear = linear_backward(x, w, dout)  # [..., D] -> [..., Dt or Dv]
    grads = {"token_type_embeddings.weight": d_types,
             f"{name}.weight": g_linear["weight"],  # [D, Dt or Dv]
             f"{name}.bias": g_linear["bias"]}  # [D]
    if side == "image":
        dh, g_ln = layer_norm_backward(h, ln_post, eps, dx)  # [..., Dv]
        grads["vision_model.visual.ln_post.weight"] = g_ln["weight"]  # [Dv]
        grads["vision_model.visual.ln_post.bias"] = g_ln["bias"]  # [Dv]
    else:
        dh = dx  # [..., Dt]
    return dh, grads


def link_tower_backward(p, h, c, link_tower_type, eps, dout):
    """Gradient of bridge.link_tower(p, h, c, link_tower_type, eps).  h, c, dout: [B, S, D]

    Returns (dh [B, S, D], dc [B, S, D], grads): grads {"LayerNorm": {"weight", "bias"}}, plus the
    learned scalar as a 0-d array: "scaled_factor" (scaled_add) or "beta" (interpolate).
    """
    xp = array_module(dout)
    # forward, recomputed: the mix that the LayerNorm read
    if link_tower_type == "add":
        mixed = h + c  # [B, S, D]
    elif link_tower_type == "scaled_add":
        mixed = h * p["scaled_factor"] + c  # [B, S, D]
    elif link_tower_type == "interpolate":
        mixed = h * (1 - p["beta"]) + c * p["beta"]  # [B, S, D]
    else:
        raise ValueError(f"link_tower_type must be add, scaled_add or interpolate, got {link_tower_type!r}")

    # out = LN(mixed): back through the LayerNorm, then through the mix
    dmixed, g_ln = layer_norm_backward(mixed, p["LayerNorm"], eps, dout)  # [B, S, D]
    grads = {"LayerNorm": g_ln}
    if link_tower_type == "add":
        # subtle: two arrays, not one array twice, so that a caller adding into one in place
        # does not change the other.
        dh, dc = dmixed, dmixed.copy()  # [B, S, D] each
    elif link_tower_type == "scaled_add":
        dh, dc = dmixed * p["scaled_factor"], dmixed  # [B, S, D] each
        # subtle: the scalar multiplied every element of h, so its gradient sums over all of them
        grads["scaled_factor"] = xp.asarray((dmixed * h).sum(), dtype=dmixed.dtype)  # 0-d
    else:  # interpolate: mixed = h·(1 − β) + c·β, so ∂mixed/∂β = c − h
        dh, dc = dmixed * (1 - p["beta"]), dmixed * p["beta"]  # [B, S, D] each
        grads["beta"] = xp.asarray((dmixed * (c - h)).sum(), dtype=dmixed.dtype)  # 0-d
    return dh, dc, grads


def cross_modal_layer_backward(p, x, other, cfg, self_mask, cross_mask, dout):
    """Gradient of bridge.cross_modal_layer(p, x, other, cfg, self_mask, cross_mask) (of its first output).

    x: [B, S, D], other: [B, S', D], masks None or additive [B, 1, 1, S] / [B, 1, 1, S'] (constants),
    dout: [B, S, D]. `cfg` is the text config, as for the forward.
    Returns (dx [B, S, D], dother [B, S', D], grads): grads shaped like p, {"attention",
    "crossattention", "intermediate", "output"}.
    """
    # BEGIN SOLUTION
    H, eps = cfg.num_attention_heads, cfg.layer_norm_eps
    # forward, recomputed: the two attention blocks' outputs (the FFN's input is the second one)
    a, _ = bert_attention(p["attention"], x, x, H, eps, self_mask)  # [B, S, D]
    c, _ = bert_attention(p["crossattention"], a, other, H, eps, cross_mask)  # [B, S, D]

    # out = bert_ffn(p, c): back through the FFN
    dc, g_ffn = bert_ffn_backward(p, c, eps, dout)  # [B, S, D]
    # c = cross-attention with queries a and keys/values other: the only path to `other`
    da, dother, g_cross = bert_attention_backward(p["crossattention"], a, other, H, eps, cross_mask, dc)
    # a = self-attention: x is both the queries and the keys/values, so both gradients are x's
    dx_queries, dx_keys_values, g_self = bert_attention_backward(p["attention"], x, x, H, eps, self_mask, da)
    dx = dx_queries + dx_keys_values  # [B, S, D]
    grads = {"attention": g_self, "crossattention": g_cross, **g_ffn}  # g_ffn: {"intermediate", "output"}
    return dx, dother, grads
    # END SOLUTION
