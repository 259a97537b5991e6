"""The whole backward pass: from a head's loss back to every weight (the chain rule over model.py).

    loss, grads = loss_and_grads(p, cfg, "itm", input_ids, attention_mask, pixel_values, labels)
    grads["cross_modal_text_layers.5.output.dense.weight"]     # [D, F], unprefixed names

One forward pass keeps each layer's input (model.Trace with keep_hidden, only here); then the
gradient flows back the way the forward came (model.py's diagram, read upwards):

    loss ─ head ─ poolers ─ cross N−1 ─ … ─ cross 0            the cross-modal stack, top down
                               │ bridge      │ LN               each cross layer l hands a gradient to
                  tower layer first+N−1 … first                 the tower layer that fed it (first + l)
                               │                                 and to the cross layer below (the bridge)
                  tower layers first−1 … 0 ─ embeddings          then each tower, top down

Each step calls the matching `*_backward` of backward/{heads,bridge,text,vision}.py, which recomputes
its layer's intermediates from that input. Shapes as in model.py: B batch, T text tokens, L image
tokens, D cross-modal width, C contrastive size.
"""

from ..backend import array_module
from ..bridge import cross_modal_layer, link_tower, to_cross_space
from ..heads import contrastive_embedding, contrastive_loss, itm_logits, mlm_logits, pooler
from ..model import Trace, bridgetower, cross_embedding, image_embedding, text_embedding
from ..ops import additive_mask, cross_entropy, layer_norm
from ..weights import to_flat
from .bridge import cross_modal_layer_backward, link_tower_backward, to_cross_space_backward
from .heads import (contrastive_embedding_backward, contrastive_loss_backward, itm_logits_backward,
                    mlm_logits_backward, pooler_backward)
from .ops import cross_entropy_backward, layer_norm_backward
from .text import bert_layer_backward, text_embed_backward
from .vision import vision_block_backward, vision_embed_backward


def loss_and_grads(p, cfg, head, input_ids, attention_mask, pixel_values, labels=None, trainable=None):
    """The head's loss and its gradient for every weight the loss depends on.

    p: the weight tree (unprefixed names); head: "itm" (labels [B] in {0, 1}), "mlm" (labels [B, T],
    -100 ignored) or "itc" (no labels: the i-th text goes with the i-th image).
    trainable: None (every weight) or a function name -> bool; the backward stops below the lowest
    layer that holds a trainable weight, and frozen weights get no gradient.
    Returns (loss: float32 scalar, grads: {unprefixed name: array of that weight's shape}).
    """
    trainable = trainable or (lambda name: True)
    mask = additive_mask(attention_mask)  # [B, 1, 1, T] or None
    trace = Trace(keep_hidden=True)  # each layer's output, i.e. the next layer's input
    feats = bridgetower(p, cfg, input_ids, attention_mask, pixel_values, False, trace)
    grads = Grads(trainable)

    # 1. the head: loss, then the gradient of the features it read
    d_text = d_image = d_text_last = d_image_last = None
    if head == "itm":
        logits = itm_logits(p["itm_score"], feats["pooler_output"])  # [B, 2]
        loss = cross_entropy(logits, labels)
        d_pooled, g = itm_logits_backward(p["itm_score"], feats["pooler_output"], cross_entropy_backward(logits, labels))
        grads.add("itm_score", g)
    elif head == "mlm":
        eps, V = cfg.layer_norm_eps, cfg.text_config.vocab_size
        logits = mlm_logits(p["mlm_score"], feats["text_features"], eps)  # [B, T, V]
        loss = cross_entropy(logits.reshape(-1, V), labels.reshape(-1))  # [B·T, V]
        d_logits = cross_entropy_backward(logits.reshape(-1, V), labels.reshape(-1)).reshape(logits.shape)
        d_text, g = mlm_logits_backward(p["mlm_score"], feats["text_features"], eps, d_logits)  # [B, T, D]
        if cfg.tie_word_embeddings:  # the decoder *is* the word-embedding matrix: one weight, two uses
            grads.add("text_model.embeddings.word_embeddings", g.pop("decoder"))
        grads.add("mlm_score", g)
        d_pooled = None  # the MLM head reads no pooler
    elif head == "itc":
        loss, d_pooled, d_text_last, d_image_last = _contrastive(p, cfg, feats, grads)
    else:
        raise ValueError(f"head must be itm, mlm or itc, got {head!r}")

    # 2. the poolers: each reads its stream's first token
    x, y = feats["text_features"], feats["image_features"]  # [B, T, D], [B, L, D]
    xp = array_module(x)
    d_x = xp.zeros_like(x) if d_text is None else d_text  # [B, T, D]
    d_y = xp.zeros_like(y)  # [B, L, D]
    if d_pooled is not None:
        D = x.shape[-1]
        dx_pool, g = pooler_backward(p["cross_modal_text_pooler"], x, d_pooled[:, :D])  # [B, 2D] -> halves
        grads.add("cross_modal_text_pooler", g)
        dy_pool, g = pooler_backward(p["cross_modal_image_pooler"], y, d_pooled[:, D:])
        grads.add("cross_modal_image_pooler", g)
        d_x, d_y = d_x + dx_pool, d_y + dy_pool

    # 3. the cross-modal stack, top down; each layer hands gradients to its tower layer and the layer below
    depth, N, first = cfg.depth, cfg.num_hidden_layers, cfg.first_bridged_layer
    d_t = [None] * (depth + 1)  # d_t[k]: gradient of text_hidden[k] (k = 0: the embeddings)
    d_v = [None] * (depth + 1)
    d_t[depth], d_v[depth] = d_text_last, d_image_last  # the contrastive head reads the towers' tops
    lowest = _lowest_trainable(p, cfg, trainable)
    for l in reversed(range(N)):
        if lowest > 1 + depth + l:
            break  # nothing trainable at or below this layer: its backward is not run
        d_x, d_y, d_h_text, d_h_image = _cross_layer_backward(p, cfg, trace, mask, l, d_x, d_y, grads)
        i = first + l  # the tower layer that fed cross-modal layer l
        d_ti, g = to_cross_space_backward(p, cfg, "text", trace.text_hidden[i + 1], l, d_h_text)
        grads.add_flat(g)
        d_vi, g = to_cross_space_backward(p, cfg, "image", trace.image_hidden[i + 1], l, d_h_image)
        grads.add_flat(g)
        d_t[i + 1] = d_ti if d_t[i + 1] is None else d_t[i + 1] + d_ti
        d_v[i + 1] = d_vi if d_v[i + 1] is None else d_v[i + 1] + d_vi

    # 4. the towers, top down, then their embeddings
    text_layers = p["text_model"]["encoder"]["layer"]
    vision_blocks = p["vision_model"]["visual"]["transformer"]["resblocks"]
    for i in reversed(range(depth)):
        if lowest > 1 + i:
            break
        if d_t[i + 1] is not None:  # (None: no gradient reached this layer)
            d_in, g = bert_layer_backward(text_layers[i], trace.text_hidden[i], cfg.text_config, mask, d_t[i + 1])
            grads.add(f"text_model.encoder.layer.{i}", g)
            d_t[i] = d_in if d_t[i] is None else d_t[i] + d_in
        if d_v[i + 1] is not None:
            d_in, g = vision_block_backward(vision_blocks[i], trace.image_hidden[i], cfg.vision_config, d_v[i + 1])
            grads.add(f"vision_model.visual.transformer.resblocks.{i}", g)
            d_v[i] = d_in if d_v[i] is None else d_v[i] + d_in
    if lowest == 0:
        if d_t[0] is not None:
            grads.add("text_model.embeddings",
                      text_embed_backward(p["text_model"]["embeddings"], input_ids, cfg.text_config, d_t[0]))
        if d_v[0] is not None:
            grads.add("vision_model.visual",
                      vision_embed_backward(p["vision_model"]["visual"], pixel_values, cfg.vision_config, d_v[0]))
    return loss, grads.flat


def _cross_layer_backward(p, cfg, trace, mask, l, d_x, d_y, grads):
    """Back through cross-modal layer l and what made its inputs (the first LayerNorms, or the bridges).

    d_x [B, T, D], d_y [B, L, D]: gradients of the layer's outputs. Returns the gradients of the layer
    below's outputs (d_x, d_y; zeros for l = 0) and of the tower states put into the cross space
    (d_h_text [B, T, D], d_h_image [B, L, D]).
    """
    tc, eps, first = cfg.text_config, cfg.layer_norm_eps, cfg.first_bridged_layer
    # recompute the layer's inputs, as the forward made them
    h_text = to_cross_space(p, cfg, "text", trace.text_hidden[first + l + 1], l)  # [B, T, D]
    h_image = to_cross_space(p, cfg, "image", trace.image_hidden[first + l + 1], l)  # [B, L, D]
    if l == 0:
        x_in = layer_norm(h_text, p["cross_modal_text_layernorm"], eps)
        y_in = layer_norm(h_image, p["cross_modal_image_layernorm"], eps)
    else:
        x_prev, y_prev = trace.cross_hidden[l - 1]  # the layer below's outputs
        x_in = link_tower(p["cross_modal_text_link_tower"][l - 1], h_text, x_prev, cfg.link_tower_type, eps)
        y_in = link_tower(p["cross_modal_image_link_tower"][l - 1], h_image, y_prev, cfg.link_tower_type, eps)

    # subtle: each stream's layer reads both inputs (its own as queries, the other's as keys and values),
    # so each input's gradient is the sum of what the two layers send back.
    dx_in, dy_from_text, g = cross_modal_layer_backward(p["cross_modal_text_layers"][l], x_in, y_in, tc, mask, None, d_x)
    grads.add(f"cross_modal_text_layers.{l}", g)
    dy_in, dx_from_image, g = cross_modal_layer_backward(p["cross_modal_image_layers"][l], y_in, x_in, tc, None, mask, d_y)
    grads.add(f"cross_modal_image_layers.{l}", g)
    dx_in, dy_in = dx_in + dx_from_image, dy_in + dy_from_text  # [B, T, D], [B, L, D]

    if l == 0:
        d_h_text, g = layer_norm_backward(h_text, p["cross_modal_text_layernorm"], eps, dx_in)
        grads.add("cross_modal_text_layernorm", g)
        d_h_image, g = layer_norm_backward(h_image, p["cross_modal_image_layernorm"], eps, dy_in)
        grads.add("cross_modal_image_layernorm", g)
        xp = array_module(d_x)
        return xp.zeros_like(d_x), xp.zeros_like(d_y), d_h_text, d_h_image
    d_h_text, d_x_prev, g = link_tower_backward(p["cross_modal_text_link_tower"][l - 1], h_text, x_prev,
                                                cfg.link_tower_type, eps, dx_in)
    grads.add(f"cross_modal_text_link_tower.{l - 1}", g)
    d_h_image, d_y_prev, g = link_tower_backward(p["cross_modal_image_link_tower"][l - 1], h_image, y_prev,
                                                 cfg.link_tower_type, eps, dy_in)
    grads.add(f"cross_modal_image_link_tower.{l - 1}", g)
    return d_x_prev, d_y_prev, d_h_text, d_h_image


def _contrastive(p, cfg, feats, grads):
    """The ITC loss and the gradients of what it read: (loss, d_pooled [B, 2D], d_text_last [B, T, Dt],
    d_image_last [B, L, Dv]); the three heads' and logit_scale's gradients go into `grads`."""
    text_last, image_last, pooled = feats["text_last"], feats["image_last"], feats["pooler_output"]
    xp = array_module(pooled)
    text = text_embedding(p, text_last)  # [B, C]
    image = image_embedding(p, cfg, image_last)  # [B, C]
    cross = cross_embedding(p, pooled)  # [B, C]
    scale = xp.exp(p["logit_scale"])  # stored in log space
    loss = contrastive_loss(text, image, cross, scale)
    d_text, d_image, d_cross, d_scale = contrastive_loss_backward(text, image, cross, scale)
    grads.add_flat({"logit_scale": d_scale * scale})  # d exp(s)/ds = exp(s)

    d_text_cls, g = contrastive_embedding_backward(p["itc_text_head"], text_last[:, 0], d_text)  # [B, Dt]
    grads.add("itc_text_head", g)
    d_text_last = xp.zeros_like(text_last)
    d_text_last[:, 0] = d_text_cls  # only <s> was read

    h = to_cross_space(p, cfg, "image", image_last[:, 0])  # [B, D]: the CLS as the bridges see it
    d_h, g = contrastive_embedding_backward(p["itc_image_head"], h, d_image)
    grads.add("itc_image_head", g)
    d_image_cls, g = to_cross_space_backward(p, cfg, "image", image_last[:, 0], 0, d_h)  # [B, Dv]
    grads.add_flat(g)
    d_image_last = xp.zeros_like(image_last)
    d_image_last[:, 0] = d_image_cls

    d_pooled, g = contrastive_embedding_backward(p["itc_cross_modal_head"], pooled, d_cross)  # [B, 2D]
    grads.add("itc_cross_modal_head", g)
    return loss, d_pooled, d_text_last, d_image_last


def _lowest_trainable(p, cfg, trainable):
    """How far down the backward must run: the lowest `_height` of a trainable weight."""
    heights = [_height(name, cfg) for name in to_flat(p) if trainable(name)]
    return min(heights, default=cfg.depth + cfg.num_hidden_layers + 1)


def _height(name, cfg):
    """Where a weight sits, counted from the bottom: 0 the embeddings, 1 + i tower layer i (both towers),
    1 + depth + l cross-modal layer l (with what makes its inputs), above that the poolers and heads."""
    depth, N = cfg.depth, cfg.num_hidden_layers
    parts = name.split(".")
    if name.startswith(("text_model.embeddings.", "vision_model.visual.embeddings.", "vision_model.visual.ln_pre.")):
        return 0
    if name.startswith(("text_model.encoder.layer.", "vision_model.visual.transformer.resblocks.")):
        return 1 + int(parts[3] if parts[0] == "text_model" else parts[4])
    if parts[0] in ("cross_modal_text_layers", "cross_modal_image_layers"):
        return 1 + depth + int(parts[1])
    if parts[0] in ("cross_modal_text_link_tower", "cross_modal_image_link_tower"):
        return 1 + depth + int(parts[1]) + 1  # link tower l − 1 makes the input of cross layer l
    if parts[0] in ("cross_modal_text_transform", "cross_modal_image_transform") and parts[1].isdigit():
        return 1 + depth + int(parts[1])  # one transform per cross layer
    if parts[0] in ("cross_modal_text_layernorm", "cross_modal_image_layernorm", "cross_modal_text_transform",
                    "cross_modal_image_transform", "token_type_embeddings") or name.startswith("vision_model.visual.ln_post."):
        return 1 + depth  # these feed every cross layer (the shared transforms, token types, ln_post); 0 is the lowest
    return 1 + depth + N  # poolers and heads


class Grads:
    """Gradients collected as the backward runs, flat and unprefixed: {"a.b.0.weight": array}.

    `add` takes a subtree of gradients shaped like the weights under a name; a weight met twice
    (a token-type row, a tied decoder) has its gradients summed. Frozen weights are dropped.
    """

    def __init__(self, trainable):
        self.trainable, self.flat = trainable, {}

    def add(self, prefix, tree):
        self.add_flat({f"{prefix}.{key}": g for key, g in to_flat(tree).items()})

    def add_flat(self, flat):
        for name, g in flat.items():
            if self.trainable(name):
                self.flat[name] = g if name not in self.flat else self.flat[name] + g
