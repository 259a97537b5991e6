"""The BridgeTower forward pass as one function over (params, config, arrays) (SPEC §5-7).

Reading order: the two towers run side by side; after their first L − N layers, each of their
top N layers feeds, through a bridge, one layer of the cross-modal stack, in which text attends to
the image and the image to the text:

    text:   emb ─ layer 0 … layer L−N ─┬─ layer L−N+1 ─┬─ …  ─┬─ layer L−1
                                       │bridge         │bridge │bridge
    cross:                     cross 0 ┴─── cross 1 ───┴─ …  ──┴─ cross N−1 ─ poolers ─ heads
                                       │bridge         │bridge │bridge
    image:  emb ─ block 0 … block L−N ─┴─ block L−N+1 ─┴─ …  ─┴─ block L−1

Shapes: B batch, T text tokens, L image tokens, D width (SPEC §1 for the published sizes).
"""

from dataclasses import dataclass, field

from .bridge import cross_modal_layer, link_tower
from .heads import pool
from .ops import additive_mask, layer_norm, linear
from .text import bert_layer, text_embed
from .vision import vision_block, vision_embed


@dataclass
class Trace:
    """What a forward pass can leave behind besides its outputs (kept only when asked for).

    text_hidden:    depth+1 × [B, T, Dt]   embeddings, then each RoBERTa layer's output
    image_hidden:   depth+1 × [B, L, Dv]   ln_pre output, then each ViT block's output (residual stream,
                                      not ln_post-ed; batch-first, unlike the reference)
    cross_hidden:   N × ([B, T, D], [B, L, D])   each cross-modal layer's (text, image) output
    cross_self_attentions:  N × ([B, H, T, T], [B, H, L, L])   self-attention in each cross layer
    cross_attentions:       N × ([B, H, T, L], [B, H, L, T])   text→image and image→text attention
    text_attentions:        depth × [B, H, T, T]    RoBERTa self-attention
    vision_attentions:      depth × [B, Hv, L, L]   ViT self-attention
    """

    keep_hidden: bool = False
    keep_attentions: bool = False
    text_hidden: list = field(default_factory=list)
    image_hidden: list = field(default_factory=list)
    cross_hidden: list = field(default_factory=list)
    cross_self_attentions: list = field(default_factory=list)
    cross_attentions: list = field(default_factory=list)
    text_attentions: list = field(default_factory=list)
    vision_attentions: list = field(default_factory=list)

    def hidden(self, name, value):
        if self.keep_hidden:
            getattr(self, name).append(value)

    def attn(self, name, value):
        if self.keep_attentions:
            getattr(self, name).append(value)


def text_tower(p, cfg, input_ids, attention_mask):
    """The text tower alone, all L layers: [B, T] ids -> [B, T, Dt] (for text-only embeddings)."""
    tc = cfg.text_config
    mask = additive_mask(attention_mask)
    t = text_embed(p["text_model"]["embeddings"], input_ids, tc)
    for layer in p["text_model"]["encoder"]["layer"]:
        t, _ = bert_layer(layer, t, tc, mask)
    return t


def vision_tower(p, cfg, pixel_values, interpolate_pos_encoding=False):
    """The vision tower alone, all L blocks: [B, 3, H, W] -> [B, L, Dv] residual stream (not ln_post-ed)."""
    visual = p["vision_model"]["visual"]
    v = vision_embed(visual, pixel_values, cfg.vision_config, interpolate_pos_encoding)
    for block in visual["transformer"]["resblocks"]:
        v, _ = vision_block(block, v, cfg.vision_config)
    return v


def bridgetower(p, cfg, input_ids, attention_mask, pixel_values, interpolate_pos_encoding=False, trace=None):
    """BridgeTowerModel's forward pass.

    p: the weight tree (unprefixed checkpoint names), cfg: BridgeTowerConfig,
    input_ids: [B, T] int, attention_mask: [B, T] 1/0, pixel_values: [B, 3, H, W] float32.
    Returns a dict: text_features [B, T, D], image_features [B, L, D], pooler_output [B, 2D],
    and, for the contrastive head, text_last [B, T, Dt] and image_last [B, L, Dv] (the last
    layer of each tower). `trace` (a Trace) collects hidden states and attention maps.
    """
    tc, vc = cfg.text_config, cfg.vision_config
    trace = trace or Trace()
    visual = p["vision_model"]["visual"]
    text_layers = p["text_model"]["encoder"]["layer"]
    vision_blocks = visual["transformer"]["resblocks"]
    mask = additive_mask(attention_mask)  # [B, 1, 1, T], or None when nothing is padded
    type_text, type_image = p["token_type_embeddings"]["weight"][:2]  # [D] each; image type index is 1

    def transform(side, l):  # subtle: "share_cross_modal_transformer_layers" shares only these Linears
        w = p[f"cross_modal_{side}_transform"]  # side: "text" or "image"
        return w if cfg.share_cross_modal_transformer_layers else w[l]

    def text_layer(i, t):
        t, probs = bert_layer(text_layers[i], t, tc, mask)  # [B, T, Dt]
        trace.hidden("text_hidden", t)
        trace.attn("text_attentions", probs)
        return t

    def vision_layer(i, v):
        v, probs = vision_block(vision_blocks[i], v, vc)  # [B, L, Dv]
        trace.hidden("image_hidden", v)
        trace.attn("vision_attentions", probs)
        return v

    def cross_layers(l, x_in, y_in):
        # subtle: both streams read the *inputs* of this layer; the image does not see the new text.
        x, tp, t2i = cross_modal_layer(p["cross_modal_text_layers"][l], x_in, y_in, tc, mask, None)
        y, ip, i2t = cross_modal_layer(p["cross_modal_image_layers"][l], y_in, x_in, tc, None, mask)
        trace.hidden("cross_hidden", (x, y))
        trace.attn("cross_self_attentions", (tp, ip))
        trace.attn("cross_attentions", (t2i, i2t))
        return x, y  # [B, T, D], [B, L, D]

    # 1. Both towers up to the first bridged layer (0-based index L − N).
    t = text_embed(p["text_model"]["embeddings"], input_ids, tc)  # [B, T] -> [B, T, Dt]
    v = vision_embed(visual, pixel_values, vc, interpolate_pos_encoding)  # [B, 3, H, W] -> [B, L, Dv]
    trace.hidden("text_hidden", t)
    trace.hidden("image_hidden", v)
    for i in range(cfg.split_index + 1):
        t, v = text_layer(i, t), vision_layer(i, v)

    # 2. The first cross-modal layer: its inputs are the projected uni-modal states, LayerNormed.
    # BEGIN SOLUTION
    x_in = layer_norm(linear(t, transform("text", 0)) + type_text, p["cross_modal_text_layernorm"],
                      cfg.layer_norm_eps)  # [B, T, Dt] -> [B, T, D]
    v_ln = layer_norm(v, visual["ln_post"], vc.layer_norm_eps)  # subtle: bridges read ln_post(v); v stays raw
    y_in = layer_norm(linear(v_ln, transform("image", 0)) + type_image, p["cross_modal_image_layernorm"],
                      cfg.layer_norm_eps)  # [B, L, Dv] -> [B, L, D]
    x, y = cross_layers(0, x_in, y_in)

    # 3. Each further tower layer feeds the next cross-modal layer through a bridge (link tower).
    for l, i in enumerate(range(cfg.split_index + 1, tc.num_hidden_layers)):
        t, v = text_layer(i, t), vision_layer(i, v)  # the same layer index in both towers
        h_text = linear(t, transform("text", l + 1)) + type_text  # [B, T, Dt] -> [B, T, D]
        v_ln = layer_norm(v, visual["ln_post"], vc.layer_norm_eps)  # [B, L, Dv]
        h_image = linear(v_ln, transform("image", l + 1)) + type_image  # [B, L, Dv] -> [B, L, D]
        x_in = link_tower(p["cross_modal_text_link_tower"][l], h_text, x, cfg.link_tower_type, cfg.layer_norm_eps)
        y_in = link_tower(p["cross_modal_image_link_tower"][l], h_image, y, cfg.link_tower_type, cfg.layer_norm_eps)
        x, y = cross_layers(l + 1, x_in, y_in)
    # END SOLUTION

    return {"text_features": x, "image_features": y, "pooler_output": pool(p, x, y),
            "text_last": t, "image_last": v}
