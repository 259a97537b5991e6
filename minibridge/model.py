"""The BridgeTower forward pass, as functions over (params, config, arrays) (bridgetower.md §5-7).

Reading order: the two towers run side by side, layer i of each at the same time. The first
`first` layers (first = depth − N) run alone; from tower layer `first` on, each layer's output
enters the cross-modal space and feeds one of the N cross-modal layers, in which text attends to
the image and the image to the text:

    text:   emb ─ layers 0 … first−1 ─ layer first ─ layer first+1 ─ … ─ layer depth−1
                                           │ LN            │ bridge          │ bridge
    cross:                              cross 0 ──────── cross 1 ── … ──── cross N−1 ─ poolers ─ heads
                                           │ LN            │ bridge          │ bridge
    image:  emb ─ blocks 0 … first−1 ─ block first ─ block first+1 ─ … ─ block depth−1

Shapes: B batch, T text tokens, L image tokens, Dt / Dv / D the text, vision and cross-modal
widths; depth = layers per tower, N = cross-modal layers (bridgetower.md §1.4 for the sizes).
"""

from dataclasses import dataclass, field

from .backend import array_module
from .bridge import cross_modal_layer, link_tower, to_cross_space
from .heads import contrastive_embedding, pooler
from .ops import additive_mask, layer_norm
from .text import bert_attention, bert_ffn, bert_layer, text_embed
from .vision import vision_block, vision_embed


@dataclass
class Trace:
    """What a forward pass can leave behind besides its outputs (kept only when asked for).

    text_hidden:    depth+1 × [B, T, Dt]   embeddings, then each RoBERTa layer's output
    image_hidden:   depth+1 × [B, L, Dv]   ln_pre output, then each ViT block's output (residual stream,
                                           not ln_post-ed; batch-first, unlike the reference)
    text_attentions:        depth × [B, H, T, T]    RoBERTa self-attention
    vision_attentions:      depth × [B, Hv, L, L]   ViT self-attention
    cross_hidden:   N × ([B, T, D], [B, L, D])   each cross-modal layer's (text, image) output
    cross_self_attentions:  N × ([B, H, T, T], [B, H, L, L])   self-attention in each cross layer
    cross_attentions:       N × ([B, H, T, L], [B, H, L, T])   text→image and image→text attention
    """

    keep_hidden: bool = False
    keep_attentions: bool = False
    text_hidden: list = field(default_factory=list)
    image_hidden: list = field(default_factory=list)
    text_attentions: list = field(default_factory=list)
    vision_attentions: list = field(default_factory=list)
    cross_hidden: list = field(default_factory=list)
    cross_self_attentions: list = field(default_factory=list)
    cross_attentions: list = field(default_factory=list)

    def towers(self, t, v, t_probs=None, v_probs=None):
        """One tower layer (or the embeddings, without attention): text [B, T, Dt], image [B, L, Dv]."""
        if self.keep_hidden:
            self.text_hidden.append(t)
            self.image_hidden.append(v)
        if self.keep_attentions and t_probs is not None:
            self.text_attentions.append(t_probs)
            self.vision_attentions.append(v_probs)

    def cross(self, x, y, self_probs, cross_probs):
        """One cross-modal layer: outputs (text, image), self- and cross-attention (text, image)."""
        if self.keep_hidden:
            self.cross_hidden.append((x, y))
        if self.keep_attentions:
            self.cross_self_attentions.append(self_probs)
            self.cross_attentions.append(cross_probs)


def bridgetower(p, cfg, input_ids, attention_mask, pixel_values, interpolate_pos_encoding=False, trace=None):
    """BridgeTowerModel's forward pass.

    p: the weight tree (unprefixed checkpoint names), cfg: BridgeTowerConfig,
    input_ids: [B, T] int, attention_mask: [B, T] 1/0, pixel_values: [B, 3, H, W] float32.
    Returns a dict: text_features [B, T, D], image_features [B, L, D], pooler_output [B, 2D],
    and, for the contrastive head, text_last [B, T, Dt] and image_last [B, L, Dv] (the last
    layer of each tower). `trace` (a Trace) collects hidden states and attention maps.
    """
    tc, vc, eps = cfg.text_config, cfg.vision_config, cfg.layer_norm_eps
    trace = trace or Trace()
    text_layers = p["text_model"]["encoder"]["layer"]
    vision_blocks = p["vision_model"]["visual"]["transformer"]["resblocks"]
    mask = additive_mask(attention_mask)  # [B, 1, 1, T], or None when nothing is padded

    t = text_embed(p["text_model"]["embeddings"], input_ids, tc)  # [B, T] -> [B, T, Dt]
    v = vision_embed(p["vision_model"]["visual"], pixel_values, vc, interpolate_pos_encoding)  # [B, 3, H, W] -> [B, L, Dv]
    trace.towers(t, v)
    first = cfg.first_bridged_layer  # depth − N: the tower layer that feeds cross-modal layer 0
    for i in range(cfg.depth):
        t, t_probs = bert_layer(text_layers[i], t, tc, mask)  # [B, T, Dt]
        v, v_probs = vision_block(vision_blocks[i], v, vc)  # [B, L, Dv]; the same layer index in both towers
        trace.towers(t, v, t_probs, v_probs)
        if i < first:
            continue  # below the bridges the towers run alone
        # BEGIN SOLUTION
        l = i - first  # the cross-modal layer this tower layer feeds
        h_text = to_cross_space(p, cfg, "text", t, l)  # [B, T, Dt] -> [B, T, D]
        h_image = to_cross_space(p, cfg, "image", v, l)  # [B, L, Dv] -> [B, L, D]
        if l == 0:  # the first cross-modal layer: nothing to bridge with yet
            x_in = layer_norm(h_text, p["cross_modal_text_layernorm"], eps)
            y_in = layer_norm(h_image, p["cross_modal_image_layernorm"], eps)
        else:  # link tower l − 1 joins cross-modal layer l − 1's output to layer l's input
            x_in = link_tower(p["cross_modal_text_link_tower"][l - 1], h_text, x, cfg.link_tower_type, eps)
            y_in = link_tower(p["cross_modal_image_link_tower"][l - 1], h_image, y, cfg.link_tower_type, eps)
        # subtle: both streams read the *inputs* of this layer; the image does not see the new text.
        x, x_self, x_cross = cross_modal_layer(p["cross_modal_text_layers"][l], x_in, y_in, tc, mask, None)
        y, y_self, y_cross = cross_modal_layer(p["cross_modal_image_layers"][l], y_in, x_in, tc, None, mask)
        # END SOLUTION
        trace.cross(x, y, (x_self, y_self), (x_cross, y_cross))  # [B, T, D], [B, L, D]

    xp = array_module(x)
    pooled = xp.concatenate([pooler(p["cross_modal_text_pooler"], x),
                             pooler(p["cross_modal_image_pooler"], y)], axis=-1)  # 2 × [B, D] -> [B, 2D]
    return {"text_features": x, "image_features": y, "pooler_output": pooled, "text_last": t, "image_last": v}


# ---- the same pass in two phases: each tower once per input, the cross-modal stack once per pair ------
#
# `bridgetower` above runs the towers in lockstep with the cross-modal stack, the way the paper draws
# it. Nothing in a tower depends on the other modality, though, so the same numbers come out of two
# phases: run each tower alone and keep what it hands the bridges (`text_bridged`, `image_bridged`),
# then run the cross-modal stack on pairs of those (`cross_modal`). One image scored against eight
# texts then runs the 12-layer vision tower once, not eight times: only the cross-modal layers run
# per pair. tests/test_pairs.py checks the two forms agree.


@dataclass
class Bridged:
    """One tower's output, as the cross-modal stack reads it, for a batch of inputs of one modality.

    states: N × [B, S, D]   tower layer first + l put into the cross-modal space (to_cross_space):
                            what cross-modal layer l reads from this side
    last:   [B, S, Dt|Dv]   the tower's last layer (the contrastive head reads it)
    """

    states: list
    last: object

    def pick(self, rows):
        """The rows of these inputs that a batch of pairs reads, e.g. [0, 0, 0] for one input in three pairs."""
        return Bridged([s[rows] for s in self.states], self.last[rows])


def text_bridged(p, cfg, input_ids, attention_mask):
    """The text tower alone, keeping what feeds the bridges.  [B, T] ids -> Bridged (states [B, T, D])"""
    tc, first = cfg.text_config, cfg.first_bridged_layer
    mask = additive_mask(attention_mask)
    t = text_embed(p["text_model"]["embeddings"], input_ids, tc)
    states = []
    for i, layer in enumerate(p["text_model"]["encoder"]["layer"]):
        t, _ = bert_layer(layer, t, tc, mask)
        if i >= first:
            states.append(to_cross_space(p, cfg, "text", t, i - first))  # [B, T, D]
    return Bridged(states, t)


def image_bridged(p, cfg, pixel_values, interpolate_pos_encoding=False):
    """The vision tower alone, keeping what feeds the bridges.  [B, 3, H, W] -> Bridged (states [B, L, D])"""
    vc, first = cfg.vision_config, cfg.first_bridged_layer
    visual = p["vision_model"]["visual"]
    v = vision_embed(visual, pixel_values, vc, interpolate_pos_encoding)
    states = []
    for i, block in enumerate(visual["transformer"]["resblocks"]):
        v, _ = vision_block(block, v, vc)
        if i >= first:
            states.append(to_cross_space(p, cfg, "image", v, i - first))  # [B, L, D]
    return Bridged(states, v)


# What a head reads from the last cross-modal layer: everything, only the first row of each stream
# (the poolers: ITM and the contrastive head), or only the text stream (MLM).
READS = ("all", "first", "text")


def cross_modal(p, cfg, text, image, attention_mask, read="all"):
    """The cross-modal stack and poolers on pairs: row k of `text` with row k of `image`.

    text, image: Bridged of the same batch size P (Bridged.pick makes pairs); attention_mask [P, T].
    read: "all", or "first" / "text" to skip, in the last layer, what the head never reads
    ("first": only position 0 of each stream, what the poolers read; "text": no image stream, no
    poolers). Returns text_features [P, T, D] (position 0 only: [P, 1, D], for "first"),
    image_features [P, L, D] ([P, 1, D]; None for "text"), pooler_output [P, 2D] (None for "text").
    """
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")
    tc, eps, N = cfg.text_config, cfg.layer_norm_eps, cfg.num_hidden_layers
    mask = additive_mask(attention_mask)  # [P, 1, 1, T], or None
    for l in range(N):
        h_text, h_image = text.states[l], image.states[l]
        if l == 0:
            x_in = layer_norm(h_text, p["cross_modal_text_layernorm"], eps)
            y_in = layer_norm(h_image, p["cross_modal_image_layernorm"], eps)
        else:
            x_in = link_tower(p["cross_modal_text_link_tower"][l - 1], h_text, x, cfg.link_tower_type, eps)
            y_in = link_tower(p["cross_modal_image_link_tower"][l - 1], h_image, y, cfg.link_tower_type, eps)
        if read != "all" and l == N - 1:  # the last layer: only what the head reads (_last_layer)
            return _last_layer(p, cfg, x_in, y_in, mask, read)
        x, _, _ = cross_modal_layer(p["cross_modal_text_layers"][l], x_in, y_in, tc, mask, None)
        y, _, _ = cross_modal_layer(p["cross_modal_image_layers"][l], y_in, x_in, tc, None, mask)
    return _pooled(p, x, y)


def _last_layer(p, cfg, x_in, y_in, mask, read):
    """The last cross-modal layer, computing only the rows `read` asks for (cross_modal).

    A row that is never read is never computed: "text" leaves out the image stream; "first" runs
    each stream with its position 0 alone as queries (keys and values still every position).
    """
    if read == "text":  # MLM: the text stream only
        x, _, _ = cross_modal_layer(p["cross_modal_text_layers"][-1], x_in, y_in, cfg.text_config, mask, None)
        return {"text_features": x, "image_features": None, "pooler_output": None}
    x = _first_position(p["cross_modal_text_layers"][-1], x_in, y_in, cfg.text_config, mask, None)  # [P, 1, D]
    y = _first_position(p["cross_modal_image_layers"][-1], y_in, x_in, cfg.text_config, None, mask)
    return _pooled(p, x, y)


def _first_position(p, x, other, cfg, self_mask, cross_mask):
    """bridge.cross_modal_layer's output at position 0 alone.  [B, S, D] -> [B, 1, D]

    Its three blocks with only x[:, :1] as queries: keys and values are still every position of x
    (self-attention) and of `other` (cross-attention), so row 0 is the full layer's row 0.
    """
    H, eps = cfg.num_attention_heads, cfg.layer_norm_eps
    a, _ = bert_attention(p["attention"], x[:, :1], x, H, eps, self_mask)  # [B, 1, D]
    c, _ = bert_attention(p["crossattention"], a, other, H, eps, cross_mask)  # [B, 1, D]
    return bert_ffn(p, c, eps)


def _pooled(p, x, y):
    """The two poolers on the last layer's streams, concatenated: pooler_output [P, 2D]."""
    xp = array_module(x)
    pooled = xp.concatenate([pooler(p["cross_modal_text_pooler"], x),
                             pooler(p["cross_modal_image_pooler"], y)], axis=-1)  # 2 × [P, D] -> [P, 2D]
    return {"text_features": x, "image_features": y, "pooler_output": pooled}


# ---- one tower alone, and the contrastive embeddings ------------------------------------------


def text_tower(p, cfg, input_ids, attention_mask):
    """The text tower alone, every layer: [B, T] ids -> [B, T, Dt] (for text-only embeddings)."""
    tc = cfg.text_config
    mask = additive_mask(attention_mask)
    t = text_embed(p["text_model"]["embeddings"], input_ids, tc)
    for layer in p["text_model"]["encoder"]["layer"]:
        t, _ = bert_layer(layer, t, tc, mask)
    return t


def vision_tower(p, cfg, pixel_values, interpolate_pos_encoding=False):
    """The vision tower alone, every block: [B, 3, H, W] -> [B, L, Dv] residual stream (not ln_post-ed)."""
    visual = p["vision_model"]["visual"]
    v = vision_embed(visual, pixel_values, cfg.vision_config, interpolate_pos_encoding)
    for block in visual["transformer"]["resblocks"]:
        v, _ = vision_block(block, v, cfg.vision_config)
    return v


def text_embedding(p, text_last):
    """ITC text embedding from the last RoBERTa layer.  [B, T, Dt] -> [B, C], unit length

    subtle: read raw at <s>: no cross-modal transform, no LayerNorm, no token type (bridgetower.md §7.3).
    """
    return contrastive_embedding(p["itc_text_head"], text_last[:, 0])


def image_embedding(p, cfg, image_last):
    """ITC image embedding from the last vision block.  [B, L, Dv] -> [B, C], unit length

    Its CLS goes into the cross-modal space as a bridge input does (ln_post, the shared image
    transform, token type 1), then through the head.
    """
    return contrastive_embedding(p["itc_image_head"], to_cross_space(p, cfg, "image", image_last[:, 0]))


def cross_embedding(p, pooled):
    """ITC embedding of the pooled pair.  [B, 2D] -> [B, C], unit length"""
    return contrastive_embedding(p["itc_cross_modal_head"], pooled)
