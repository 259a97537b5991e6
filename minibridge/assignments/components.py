"""What is assigned: each component, the functions a student writes for it, how the grader calls them.

A component is one box of the architecture, smallest first. For each one:
    covers   the functions whose `# BEGIN SOLUTION` … `# END SOLUTION` regions the student copy empties
    needs    the components it calls, so it runs on the student's own versions of those too
    tol      how far from the snapshot it may be (the constants below)
    source   where its snapshot comes from (tests/make_snapshots.py computes it)
    run      (student, inputs, tiny) -> {output name: array}: one call into the student's code

The inputs live in snapshots.npz beside the outputs. The weights of the layer and model components
(about 1.6 M numbers, too many to commit) do not: `tiny_weights` regenerates them from a seed,
bit for bit, and a checksum stored with the snapshots proves it.

Axis legend as in minibridge/ops.py: B batch, T text tokens, L image tokens, D width, H heads.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..config import TINY, BridgeTowerConfig
from ..weights import random_weights, to_tree

# Tolerances: max |mine - reference| <= tol * max(1, max |reference|), output by output, as the
# parity tests measure (tests/helpers.py). They tighten from the whole model down to primitives:
# a correct float32 implementation (or a float64 one) lands within ~1e-6 of each snapshot, while
# the mistakes worth catching (tanh-GELU, a missing eps, a wrong axis) move outputs by 1e-4 or more.
PRIMITIVE_TOL = 1e-5  # one operation, or one LayerNorm of a sum: rounding of a few float32 steps
LAYER_TOL = 3e-5  # a block of ~10 primitives (attention + LayerNorms + MLP): their roundings add up
MODEL_TOL = 1e-4  # the full forward pass: the parity tests' tolerance (tests/helpers.py TOL)
EXACT = 0  # integers and strings (position ids, BPE tokens): right or wrong, nothing in between

WEIGHTS_SEED = 2206_08657  # the paper's arXiv number


def tiny_weights():
    """{checkpoint key: float32 array} of config.TINY with every head: weights.random_weights, seeded.

    The same numbers on every platform and NumPy version (see random_weights), so the snapshots
    need not store them.
    """
    return random_weights(BridgeTowerConfig.from_dict(TINY), ("itm", "mlm", "itc"), WEIGHTS_SEED)


def weights_checksum(flat):
    """Sum of |w| over every weight, in float64: what the snapshots store to prove they match `tiny_weights`."""
    return float(sum(np.abs(v.astype(np.float64)).sum() for v in flat.values()))


@dataclass
class Tiny:
    """The tiny model as the grader hands it to a component: config and weight tree (read-only arrays)."""

    cfg: BridgeTowerConfig
    tree: dict

    @classmethod
    def make(cls):
        flat = tiny_weights()
        for v in flat.values():
            v.flags.writeable = False  # as the memory-mapped checkpoint: a student's code must not write into p
        return cls(BridgeTowerConfig.from_dict(TINY), to_tree(flat))


# ---- the components, in teaching order --------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    name: str
    covers: tuple  # "module.function" of each marked region the student writes
    needs: tuple  # components whose functions it calls
    tol: float
    source: str  # where the snapshot comes from
    summary: str  # one line for the guide and the handout
    run: Callable = field(repr=False)
    hints: dict = field(default_factory=dict)  # {"module.function": a line for its TODO banner}


def _linear(mb, x, tiny):
    p = {"weight": x["weight"], "bias": x["bias"]}
    return {"with_bias": mb.ops.linear(x["x"], p),
            "without_bias": mb.ops.linear(x["x"], {"weight": x["weight"]})}


def _layer_norm(mb, x, tiny):
    return {"y": mb.ops.layer_norm(x["x"], {"weight": x["weight"], "bias": x["bias"]}, float(x["eps"]))}


def _gelu(mb, x, tiny):
    return {"y": mb.ops.gelu(x["x"])}


def _quick_gelu(mb, x, tiny):
    return {"y": mb.ops.quick_gelu(x["x"])}


def _softmax(mb, x, tiny):
    return {"y": mb.ops.softmax(x["x"])}


def _attention(mb, x, tiny):
    context, probs = mb.ops.attention(x["q"], x["k"], x["v"], int(x["num_heads"]), x["mask"])
    self_context, self_probs = mb.ops.attention(x["s"], x["s"], x["s"], int(x["self_num_heads"]))
    return {"context": context, "probs": probs, "self_context": self_context, "self_probs": self_probs}


def _patchify(mb, x, tiny):
    patches = mb.vision.patchify(x["pixels"], int(x["patch_size"]))  # [B, N, C·P·P]
    # The patch embedding: those rows times the flattened conv kernel [Dv, C, P, P] (vision.patch_embed).
    return {"patches": patches, "embeddings": mb.vision.patch_embed(x["pixels"], x["kernel"])}


def _vision_block(mb, x, tiny):
    block = tiny.tree["vision_model"]["visual"]["transformer"]["resblocks"][0]
    y, probs = mb.vision.vision_block(block, x["x"], tiny.cfg.vision_config)
    return {"x": y, "probs": probs}


def _position_ids(mb, x, tiny):
    return {"position_ids": mb.text.position_ids(x["input_ids"], int(x["pad_token_id"]))}


def _text_embed(mb, x, tiny):
    p = tiny.tree["text_model"]["embeddings"]
    return {"embeddings": mb.text.text_embed(p, x["input_ids"], tiny.cfg.text_config)}


def _bert_attention(mb, x, tiny):
    tc = tiny.cfg.text_config
    p = tiny.tree["text_model"]["encoder"]["layer"][0]["attention"]
    out, probs = mb.text.bert_attention(p, x["x"], x["x"], tc.num_attention_heads, tc.layer_norm_eps, x["mask"])
    return {"out": out, "probs": probs}


def _bpe(mb, x, tiny):
    ranks = {(left, right): rank for rank, (left, right) in enumerate(x["merges"].tolist())}
    # One string per word, tokens joined by spaces (a byte-level symbol never holds a space).
    return {"tokens": np.array([" ".join(mb.tokenizer.bpe(word, ranks)) for word in x["words"].tolist()])}


def _link_tower(mb, x, tiny):
    ln = {"weight": x["ln_weight"], "bias": x["ln_bias"]}
    params = {"add": {"LayerNorm": ln},
              "scaled_add": {"LayerNorm": ln, "scaled_factor": x["scaled_factor"]},
              "interpolate": {"LayerNorm": ln, "beta": x["beta"]}}
    return {kind: mb.bridge.link_tower(p, x["h"], x["c"], kind, float(x["eps"])) for kind, p in params.items()}


def _cross_modal_layer(mb, x, tiny):
    tc, tree = tiny.cfg.text_config, tiny.tree
    # As the model runs them: text queries with the text mask, image queries attending to masked text.
    t, t_self, t_cross = mb.bridge.cross_modal_layer(tree["cross_modal_text_layers"][0], x["text"], x["image"], tc,
                                                     x["text_mask"], None)
    i, i_self, i_cross = mb.bridge.cross_modal_layer(tree["cross_modal_image_layers"][0], x["image"], x["text"], tc,
                                                     None, x["text_mask"])
    return {"text": t, "text_self_probs": t_self, "text_cross_probs": t_cross,
            "image": i, "image_self_probs": i_self, "image_cross_probs": i_cross}


def _heads(mb, x, tiny):
    tree, h = tiny.tree, mb.heads
    # Each head gets its own stored input (not the student's pooled output), so a wrong pooler
    # fails "pooled" alone and each head is judged on its own.
    pooled = np.concatenate([h.pooler(tree["cross_modal_text_pooler"], x["text_features"]),
                             h.pooler(tree["cross_modal_image_pooler"], x["image_features"])], axis=-1)
    return {"pooled": pooled,
            "itm_logits": h.itm_logits(tree["itm_score"], x["pooled"]),
            "mlm_logits": h.mlm_logits(tree["mlm_score"], x["text_features"], tiny.cfg.layer_norm_eps),
            "itc_text": h.contrastive_embedding(tree["itc_text_head"], x["text_cls"]),
            "itc_image": h.contrastive_embedding(tree["itc_image_head"], x["image_cls"]),
            "itc_cross": h.contrastive_embedding(tree["itc_cross_modal_head"], x["pooled"])}


def _bridgetower(mb, x, tiny):
    out = mb.model.bridgetower(tiny.tree, tiny.cfg, x["input_ids"], x["attention_mask"], x["pixel_values"])
    return {k: out[k] for k in ("text_features", "image_features", "pooler_output")}


_TORCH = "torch"
_HF = "transformers"

COMPONENTS = (
    Component("linear", ("ops.linear",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.functional.linear",
              "y = x W^T + b with torch's (out, in) weight layout, with and without bias", _linear,
              {"ops.linear": 'p = {"weight": [out, in], "bias": [out]}; "bias" may be absent.'}),
    Component("layer_norm", ("ops.layer_norm",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.LayerNorm",
              "LayerNorm with the biased variance and eps, on rows of very different scales", _layer_norm,
              {"ops.layer_norm": 'p = {"weight": [D], "bias": [D]}.'}),
    Component("gelu", ("ops.gelu",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.functional.gelu (exact, erf)",
              "exact GELU through erf (the tanh approximation fails)", _gelu,
              {"ops.gelu": "erf(x) above is given (NumPy has none)."}),
    Component("quick_gelu", ("ops.quick_gelu",), (), PRIMITIVE_TOL,
              f"{_HF}: activations.QuickGELUActivation", "QuickGELU, x * sigmoid(1.702 x)", _quick_gelu),
    Component("softmax", ("ops.softmax",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.softmax(dim=-1)",
              "softmax over the last axis, stable for large and for masked (finfo.min) scores", _softmax),
    Component("attention", ("ops.attention",), ("softmax",), PRIMITIVE_TOL,
              f"{_HF}: BridgeTower's eager_attention_forward",
              "multi-head scaled dot-product attention with a padding mask", _attention),
    Component("patchify", ("vision.patchify",), (), PRIMITIVE_TOL,
              f"{_TORCH}: Tensor.unfold (patches) and torch.nn.functional.conv2d (embeddings)",
              "cut images into P x P patches; the patch conv as one matrix product", _patchify),
    Component("vision_block", ("vision.vision_block",), ("linear", "layer_norm", "quick_gelu", "attention"),
              LAYER_TOL, f"{_HF}: BridgeTowerResidualAttention (resblocks.0 of the tiny model)",
              "one pre-LN CLIP ViT block: packed q/k/v, QuickGELU MLP", _vision_block,
              {"vision.vision_block": 'p = {"ln_1", "attn": {"in_proj_weight" [3·Dv, Dv], "in_proj_bias" [3·Dv], '
                                      '"out_proj"}, "ln_2", "mlp": {"c_fc", "c_proj"}}; '
                                      'heads: cfg.num_attention_heads.'}),
    Component("position_ids", ("text.position_ids",), (), EXACT,
              f"{_HF}: BridgeTowerTextEmbeddings.create_position_ids_from_input_ids",
              "RoBERTa position ids (from 2; pads keep the pad id), right-, left- and inner padding", _position_ids),
    Component("text_embed", ("text.text_embed",), ("position_ids", "layer_norm"), PRIMITIVE_TOL,
              f"{_HF}: BridgeTowerTextEmbeddings (text_model.embeddings of the tiny model)",
              "word + token-type + position embeddings, then LayerNorm", _text_embed,
              {"text.text_embed": 'p = {"word_embeddings", "position_embeddings", "token_type_embeddings", '
                                  '"LayerNorm"}, each table under "weight"; pad id and eps are in cfg.'}),
    Component("bert_attention", ("text.bert_attention",), ("linear", "attention", "layer_norm"), LAYER_TOL,
              f"{_HF}: BridgeTowerAttention (text layer 0's self-attention)",
              "a RoBERTa attention block with its post-LN residual, padded batch", _bert_attention,
              {"text.bert_attention": 'p = {"self": {"query", "key", "value"}, "output": {"dense", "LayerNorm"}}.'}),
    Component("bpe", ("tokenizer.bpe",), (), EXACT,
              "tokenizers: models.BPE.tokenize, merges trained by tokenizers' BpeTrainer on a small corpus",
              "the byte-pair merge loop of one word", _bpe),
    Component("link_tower", ("bridge.link_tower",), ("layer_norm",), PRIMITIVE_TOL,
              f"{_HF}: BridgeTowerLinkTower, one per link_tower_type",
              "the bridge layer: LN(h + c), scaled_add and interpolate", _link_tower,
              {"bridge.link_tower": 'p = {"LayerNorm"}, plus the 0-d "scaled_factor" or "beta" for those types.'}),
    Component("cross_modal_layer", ("bridge.cross_modal_layer",), ("bert_attention", "linear", "gelu", "layer_norm"),
              LAYER_TOL, f"{_HF}: BridgeTowerBertCrossLayer (cross_modal_{{text,image}}_layers.0)",
              "self-attention, co-attention to the other stream, FFN; both streams", _cross_modal_layer,
              {"bridge.cross_modal_layer": 'p = {"attention", "crossattention", "intermediate", "output"}: '
                                           'text.bert_attention and text.bert_ffn take these subtrees.'}),
    Component("heads", ("heads.pooler", "heads.itm_logits", "heads.mlm_logits", "heads.contrastive_embedding"),
              ("linear", "layer_norm", "gelu"), LAYER_TOL,
              f"{_HF}: BridgeTowerPooler, BridgeTowerITMHead, BridgeTowerMLMHead, BridgeTowerContrastiveHead",
              "poolers, ITM, MLM and the three contrastive embeddings", _heads,
              {"heads.pooler": 'p = {"dense"} (cross_modal_text_pooler or cross_modal_image_pooler).',
               "heads.mlm_logits": 'p = {"transform": {"dense", "LayerNorm"}, "decoder": {"weight"}, "bias"}.',
               "heads.contrastive_embedding": 'p = {"fc"} (itc_text_head, itc_image_head or itc_cross_modal_head).'}),
    Component("bridgetower", ("bridge.to_cross_space", "model.bridgetower"),
              ("patchify", "vision_block", "text_embed", "bert_attention", "link_tower", "cross_modal_layer", "heads",
               "linear", "layer_norm"), MODEL_TOL, f"{_HF}: BridgeTowerModel, via tests/reference.py",
              "the full forward pass: towers, bridges, cross-modal stack, poolers", _bridgetower,
              {"bridge.to_cross_space": 'p: the whole tree: p["cross_modal_{side}_transform"] (a list of Linears '
                                        'when not cfg.share_cross_modal_transformer_layers), '
                                        'p["token_type_embeddings"]["weight"] [2, D], TOKEN_TYPE[side], and for '
                                        'the image p["vision_model"]["visual"]["ln_post"].',
               "model.bridgetower": "The cross-modal part of one step of the loop (the diagram at the top of "
                                    "model.py): tower layer i feeds cross-modal layer l = i - first."}),
)

BY_NAME = {c.name: c for c in COMPONENTS}


def component_of(function):
    """The component that covers "module.function", or None."""
    return next((c for c in COMPONENTS if function in c.covers), None)


def dependents(name):
    """Every component built on `name`, directly or through others, in teaching order."""
    found, frontier = set(), {name}
    while frontier:
        frontier = {c.name for c in COMPONENTS if set(c.needs) & frontier} - found
        found |= frontier
    return [c.name for c in COMPONENTS if c.name in found]


def foundations(name):
    """Every component `name` is built on, directly or through others, in teaching order."""
    found, frontier = set(), set(BY_NAME[name].needs)
    while frontier:
        found |= frontier
        frontier = {n for f in frontier for n in BY_NAME[f].needs} - found
    return [c.name for c in COMPONENTS if c.name in found]


def config_json():
    """config.TINY as stored in the snapshots (sorted keys), to notice snapshots made for another config."""
    return json.dumps(TINY, sort_keys=True)


# ---- the course in weeks -----------------------------------------------------------------------------

# Four handouts (`build --week N`), smallest first. Each week's components build only on that
# week's and earlier weeks' (tests/test_course.py checks it), so week N's handout runs on the
# released solutions of weeks 1 … N-1 and nothing else.
WEEKS = {
    1: ("linear", "layer_norm", "gelu", "quick_gelu", "softmax", "attention"),  # primitives
    2: ("bpe", "position_ids", "text_embed", "patchify"),  # tokens and pixels
    3: ("vision_block", "bert_attention"),  # the tower layers
    4: ("link_tower", "cross_modal_layer", "heads", "bridgetower"),  # the bridge
}


def week_of(name):
    """The week (WEEKS) in which component `name` is assigned."""
    return next(week for week, names in WEEKS.items() if name in names)
