"""The BridgeTower forward pass, as functions over (params, config, arrays) (bridgetower.md §5-7).

Reading order: two towers, then the cross-modal stack. The first `first` layers of each tower
(first = depth − N) run alone; from tower layer `first` on, each layer's output enters the
cross-modal space and feeds one of the N cross-modal layers, in which text attends to the image and
the image to the text:

    text:   emb ─ layers 0 … first−1 ─ layer first ─ layer first+1 ─ … ─ layer depth−1
                                           │ LN            │ bridge          │ bridge
    cross:                              cross 0 ──────── cross 1 ── … ──── cross N−1 ─ poolers ─ heads
                                           │ LN            │ bridge          │ bridge
    image:  emb ─ blocks 0 … first−1 ─ block first ─ block first+1 ─ … ─ block depth−1

The paper draws the towers running beside the cross-modal stack, layer i of each at the same time.
Nothing in a tower depends on the other modality, though, so the code runs each tower alone first
and keeps what it hands the bridges (`text_bridged`, `image_bridged`), then the cross-modal stack on
those (`cross_modal`): the same numbers, and a tower runs once per input even when that input is in
many pairs (one image scored against eight texts runs the vision tower once).

Shapes: B batch, T text tokens, L image tokens, Dt / Dv / D the text, vision and cross-modal
widths; depth = layers per tower, N = cross-modal layers (bridgetower.md §1.4 for the sizes).
"""

from dataclasses import dataclass, field

from .backend import array_module
from .bridge import cross_modal_layer, link_tower, to_cross_space
from .heads import contrastive_embedding, pooler
from .ops import additive_mask, layer_norm
from .text import bert_layer, text_embed
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

    def text_layer(self, t, probs=None):
        """One RoBERTa layer's output [B, T, Dt] and attention (or the embeddings, without)."""
        self._tower(self.text_hidden, self.text_attentions, t, probs)

    def image_layer(self, v, probs=None):
        """One ViT block's output [B, L, Dv] and attention (or ln_pre's output, without)."""
        self._tower(self.image_hidden, self.vision_attentions, v, probs)

    def _tower(self, hidden, attentions, x, probs):
        if self.keep_hidden:
            hidden.append(x)
        if self.keep_attentions and probs is not None:
            attentions.append(probs)

    def cross(self, x, y, self_probs, cross_probs):
        """One cross-modal layer: outputs (text, image), self- and cross-attention (text, image)."""
        if self.keep_hidden:
            self.cross_hidden.append((x, y))
        if self.keep_attentions:
            self.cross_self_attentions.append(self_probs)
            self.cross_attentions.append(cross_probs)


def bridgetower(p, cfg, input_ids, attention_mask, pixel_values, interpolate_pos_encoding=False, trace=None,
                read="all"):
    """BridgeTowerModel's forward pass.

    p: the weight tree (unprefixed checkpoint names), cfg: BridgeTowerConfig,
    input_ids: [B, T] int, attention_mask: [B, T] 1/0, pixel_values: [B, 3, H, W] float32.
    Returns a dict: text_features [B, T, D], image_features [B, L, D], pooler_output [B, 2D],
    and, for the contrastive head, text_last [B, T, Dt] and image_last [B, L, Dv] (the last
    layer of each tower). `trace` (a Trace) collects hidden states and attention maps.
    read: what the head reads of the last cross-modal layer (READS, below): "all" by default.
    """
    text = text_bridged(p, cfg, input_ids, attention_mask, trace)  # N × [B, T, D]
    image = image_bridged(p, cfg, pixel_values, interpolate_pos_encoding, trace)  # N × [B, L, D]
    feats = cross_modal(p, cfg, text, image, read, trace)
    return {**feats, "text_last": text.last, "image_last": image.last}


# ---- the towers: each alone, keeping what feeds the bridges ------------------------------------


@dataclass
class Bridged:
    """One tower's output, as the cross-modal stack reads it, for a batch of inputs of one modality.

    side:   "text" or "image"
    states: N × [B, S, D]   tower layer first + l put into the cross-modal space (to_cross_space):
                            what cross-modal layer l reads from this side
    last:   [B, S, Dt|Dv]   the tower's last layer (the contrastive head reads it)
    mask:   [B, T] 1/0      the texts' attention_mask (text only: the cross-modal layers mask padding too)
    """

    side: str
    states: list
    last: object
    mask: object = None


def text_bridged(p, cfg, input_ids, attention_mask, trace=None):
    """The text tower, keeping what feeds the bridges.  [B, T] ids -> Bridged (states N × [B, T, D])"""
    tc, first, trace = cfg.text_config, cfg.first_bridged_layer, trace or Trace()
    mask = additive_mask(attention_mask)  # [B, 1, 1, T], or None when nothing is padded
    t = text_embed(p["text_model"]["embeddings"], input_ids, tc)  # [B, T] -> [B, T, Dt]
    trace.text_layer(t)
    states = []
    for i, layer in enumerate(p["text_model"]["encoder"]["layer"]):
        t, probs = bert_layer(layer, t, tc, mask)  # [B, T, Dt]
        trace.text_layer(t, probs)
        del probs  # the attention map lives on only in a trace that keeps it
        if i >= first:  # tower layer i feeds cross-modal layer i − first
            states.append(to_cross_space(p, cfg, "text", t, i - first))  # [B, T, Dt] -> [B, T, D]
    return Bridged("text", states, t, attention_mask)


def image_bridged(p, cfg, pixel_values, interpolate_pos_encoding=False, trace=None):
    """The vision tower, keeping what feeds the bridges.  [B, 3, H, W] -> Bridged (states N × [B, L, D])"""
    vc, first, trace = cfg.vision_config, cfg.first_bridged_layer, trace or Trace()
    visual = p["vision_model"]["visual"]
    v = vision_embed(visual, pixel_values, vc, interpolate_pos_encoding)  # [B, 3, H, W] -> [B, L, Dv]
    trace.image_layer(v)
    states = []
    for i, block in enumerate(visual["transformer"]["resblocks"]):
        v, probs = vision_block(block, v, vc)  # [B, L, Dv]
        trace.image_layer(v, probs)
        del probs  # the attention map lives on only in a trace that keeps it
        if i >= first:  # tower layer i feeds cross-modal layer i − first
            states.append(to_cross_space(p, cfg, "image", v, i - first))  # [B, L, Dv] -> [B, L, D]
    return Bridged("image", states, v)


# ---- the cross-modal stack ----------------------------------------------------------------------

# What a head reads of the last cross-modal layer, whose other rows are never computed:
#   "all"    every row of both streams
#   "first"  position 0 of each stream (the poolers: ITM and the contrastive head)
#   "text"   every row of the text stream, position 0 of the image stream (MLM; the poolers still run)
READS = ("all", "first", "text")


def _rows_read(read, last):
    """The rows of a cross-modal layer's (text, image) output that are read: None (every row) or 1 (position 0)."""
    if read not in READS:
        raise ValueError(f"read must be one of {READS}, got {read!r}")
    if not last or read == "all":
        return None, None
    return (1 if read == "first" else None), 1


def cross_modal(p, cfg, text, image, read="all", trace=None, pairs=None):
    """The cross-modal stack and the poolers: text row k with image row k, or the pairs asked for.

    text, image: Bridged (text_bridged, image_bridged) of B inputs each; or of any numbers, with
    pairs = (text_rows, image_rows), two [P] integer arrays: pair k joins text text_rows[k] with
    image image_rows[k]. read: one of READS. Returns text_features [P, T, D], image_features
    [P, L, D] (the rows `read` leaves out of the last layer are not there: [P, 1, D]), pooler_output
    [P, 2D]; a trace records those same rows.
    """
    tc, eps, N, trace = cfg.text_config, cfg.layer_norm_eps, cfg.num_hidden_layers, trace or Trace()
    text_rows, image_rows = pairs if pairs is not None else (slice(None), slice(None))
    mask = additive_mask(text.mask[text_rows])  # [P, 1, 1, T], or None when nothing is padded
    for l in range(N):
        # subtle: one layer's rows at a time; picking every layer's first would hold N copies at once
        h_text, h_image = text.states[l][text_rows], image.states[l][image_rows]  # [P, T, D], [P, L, D]
        x_rows, y_rows = _rows_read(read, l == N - 1)  # None: every row; 1: position 0 alone
        # BEGIN SOLUTION
        if l == 0:  # the first cross-modal layer: nothing to bridge with yet
            x_in = layer_norm(h_text, p["cross_modal_text_layernorm"], eps)
            y_in = layer_norm(h_image, p["cross_modal_image_layernorm"], eps)
        else:  # link tower l − 1 joins cross-modal layer l − 1's output to layer l's input
            x_in = link_tower(p["cross_modal_text_link_tower"][l - 1], h_text, x, cfg.link_tower_type, eps)
            y_in = link_tower(p["cross_modal_image_link_tower"][l - 1], h_image, y, cfg.link_tower_type, eps)
        # subtle: both streams read the *inputs* of this layer; the image does not see the new text.
        x, x_self, x_cross = cross_modal_layer(p["cross_modal_text_layers"][l], x_in, y_in, tc, mask, None, x_rows)
        y, y_self, y_cross = cross_modal_layer(p["cross_modal_image_layers"][l], y_in, x_in, tc, None, mask, y_rows)
        # END SOLUTION
        trace.cross(x, y, (x_self, y_self), (x_cross, y_cross))  # [P, T, D], [P, L, D]
        del x_self, y_self, x_cross, y_cross  # the attention maps live on only in a trace that keeps them
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
