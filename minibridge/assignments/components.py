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
import math
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
# Where a case's own float32 analysis allows more, the case says so (softmax's +1000 row, below).
# Unit roundoff u = 2⁻²⁴ ≈ 6e-8: a float32 result is within u·|result| of the exact value.
U32 = 2.0**-24

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
class Case:
    """A named part of one output, graded on its own: the failing case is what a FAIL line names.

    where: the indices of `output` it covers (np.s_[...] expressions, their union), or None for
    every element no earlier case of that output covers. tol: None for the component's tolerance.
    """

    label: str
    output: str
    where: tuple = None
    tol: float = None
    hint: str = None  # a line for a FAIL in this case (what it is there to catch)


@dataclass(frozen=True)
class Symptom:
    """A typical mistake and its hint: `test(inputs, mine, tiny)` is true when the failing outputs look like it.

    mine: {output: np.ndarray} of the student (each of the reference's shape); the test may
    recompute the mistake with the reference package (see `_looks_like`).
    """

    hint: str
    test: Callable = field(repr=False)


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
    cases: tuple = ()  # Case: the named parts of the outputs (an output without cases is one case)
    symptoms: tuple = ()  # Symptom: typical mistakes, each with a hint line for a FAIL

    def cases_of(self, output):
        return tuple(c for c in self.cases if c.output == output)


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


# ---- cases and typical mistakes ------------------------------------------------------------------------
# Cases name the inputs each snapshot holds on purpose (tests/make_snapshots.py says why each is there),
# so a FAIL line says which kind of input went wrong. Symptom tests recognise a typical mistake from
# the student's outputs, mostly by a relation to the reference's (never by running a solution).

_ = np.s_

# softmax, x [3, 4, 7]: row (0, 0) has a +1000 logit, x[1] masks keys 5-6 with finfo.min, row (2, 1)
# is [-1e4, 1e4, 0, …], the rest are normal(0, 3).
# Tolerance of the +1000 row, from float32 error analysis: every formulation computes p_i as
# exp(x_i - c) for a c near the row's max m (|m| < 1024 here; tests check it): either c = m (exact)
# and a division by the sum, or c = log-sum-exp = m + log Σ exp(x_j - m), which float32 can only
# hold to half an ulp of m, u·1024 = 6.1e-5. A shift δ of the exponent moves p_i by p_i·δ ≤ δ, and
# the subtraction x_i - c may round once more (when not exact), so |Δp| ≤ 2·u·1024 = 1.2e-4, plus the
# few-ulp error of exp and of the division (< 1e-6). The log-sum-exp form lands at 1.7e-5 there.
# Elsewhere |x| < 16 (or the masked / ±1e4 entries, whose probabilities are exactly 0 and 1 in
# either form), so the same argument gives 2·u·16 < 2e-6, within PRIMITIVE_TOL.
SOFTMAX_LARGE_MAX = 1024.0  # |x| of the +1000 row stays below this (tests/test_grader_diagnostics.py checks it)
SOFTMAX_LARGE_TOL = 2 * U32 * SOFTMAX_LARGE_MAX  # 1.2e-4; a missing max subtraction gives nan, a wrong axis ~1
_SOFTMAX_CASES = (
    Case("row with a +1000 logit", "y", (_[0, 0],), SOFTMAX_LARGE_TOL, "exp(1000) overflows float32: subtract the "
         "row max before exp (softmax(x) = softmax(x - max))"),
    Case("rows with masked keys (finfo.min)", "y", (_[1],), None, "masked keys (finfo.min) must get probability 0 "
         "and the other keys still sum to 1"),
    Case("a ±1e4 row", "y", (_[2, 1],)),
    Case("ordinary rows", "y"),
)


def _sums_to_one(p, axis):
    return bool(np.allclose(p.sum(axis=axis), 1.0, atol=1e-4))


def _wrong_axis(p):
    """p sums to 1 over some axis, but not over the last one."""
    return not _sums_to_one(p, -1) and any(_sums_to_one(p, a) for a in range(p.ndim - 1))


_SOFTMAX_SYMPTOMS = (
    Symptom("the probabilities sum to 1 over the wrong axis? softmax runs over the last axis (axis=-1)",
            lambda x, mine, tiny: _wrong_axis(mine["y"])),
    Symptom("nan where the scores are large: exp overflowed; subtract the row max before exp",
            lambda x, mine, tiny: not np.isfinite(mine["y"][0, 0]).all()),
)

# layer_norm, x [6, 3, 16]: rows of std 1e-3, 1e-2, 0.1, 1, 10, 100 (each with an offset of its size).
# Float32: the two-pass form is within a few u of exact. The one-pass variance E[x²] - E[x]² loses
# u·E[x²] to cancellation, a relative error u·(1 + μ²/σ²)·(a few) in var + eps, half of it in the
# output (|y| ≲ 5): with |μ/σ| < 3 here, below 5 · ½ · 10 · 10 · u = 1.5e-5 at worst and 1e-6 in fact.
# The std 1e-3 row is where eps (1e-5) dwarfs the variance (1e-6): eps forgotten or added outside
# the root changes that row by its whole size (~1), the std 1e-2 row by ~5%.
_LAYER_NORM_CASES = (
    Case("std 1e-3 row where eps dominates", "y", (_[0],), None, "eps must be added to the variance inside the "
         "square root: (x - mean) / sqrt(var + eps)"),
    Case("std 1e-2 row (eps is 10% of the variance)", "y", (_[1],)),
    Case("rows of std 0.1 to 100", "y"),
)


def _ln_like(x, mine, var_of, root):
    """mine["y"] is a LayerNorm whose 1/std is root(var_of(centred)) instead of the right one."""
    xx = x["x"].astype(np.float64)
    c = xx - xx.mean(axis=-1, keepdims=True)
    wrong = c / root(var_of(c), float(x["eps"])) * x["weight"] + x["bias"]
    return bool(np.abs(mine["y"] - wrong).max() < 1e-3 * max(1.0, np.abs(wrong).max()))


def _biased(c):
    return (c * c).mean(axis=-1, keepdims=True)


_LAYER_NORM_SYMPTOMS = (
    Symptom("LayerNorm without eps? divide by sqrt(var + eps)",
            lambda x, mine, tiny: _ln_like(x, mine, _biased, lambda v, eps: np.sqrt(v))),
    Symptom("eps outside the square root? divide by sqrt(var + eps), not sqrt(var) + eps",
            lambda x, mine, tiny: _ln_like(x, mine, _biased, lambda v, eps: np.sqrt(v) + eps)),
    Symptom("unbiased variance (divided by D - 1)? LayerNorm divides by D",
            lambda x, mine, tiny: _ln_like(x, mine, lambda c: (c * c).sum(-1, keepdims=True) / (c.shape[-1] - 1),
                                           lambda v, eps: np.sqrt(v + eps))),
)

# gelu / quick_gelu, x [3, 100]: x[0], x[1] and x[2, :41] are a dense grid on [-6, 6], the rest normal(0, 3).
_ACTIVATION_CASES = (
    Case("the bend, a dense grid on [-6, 6]", "y", (_[0], _[1], _[2, :41])),
    Case("random inputs (std 3)", "y"),
)


def _close(a, b, rel=1e-4):
    b = np.asarray(b, dtype=np.float64)
    return bool(np.abs(a - b).max() <= rel * max(1.0, np.abs(b).max()))


def _tanh_gelu(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _x_sigmoid(x, a):
    x = x.astype(np.float64)
    return x / (1 + np.exp(-a * x))


_GELU_SYMPTOMS = (
    Symptom("this is the tanh approximation of GELU; the grader wants the exact 0.5·x·(1 + erf(x/√2))",
            lambda x, mine, tiny: _close(mine["y"], _tanh_gelu(x["x"]), 1e-5)),
    Symptom("this is QuickGELU, x·sigmoid(1.702x); gelu is the exact 0.5·x·(1 + erf(x/√2))",
            lambda x, mine, tiny: _close(mine["y"], _x_sigmoid(x["x"], 1.702), 1e-5)),
)
_QUICK_GELU_SYMPTOMS = (
    Symptom("x·sigmoid(x)? QuickGELU is x·sigmoid(1.702·x)",
            lambda x, mine, tiny: _close(mine["y"], _x_sigmoid(x["x"], 1.0), 1e-5)),
)

# attention: q [2, 5, 16], k and v [2, 7, 16], 4 heads (Dh = 4), batch row 1 masks keys 4-6; then
# self-attention of s [2, 6, 16] with 2 heads (Dh = 8) and no mask. Errors are those of a softmax
# of scores |s| < 16 and two short dot products: a few u, far within PRIMITIVE_TOL.
_ATTENTION_CASES = (
    Case("masked keys (row 1: keys 4-6 padded)", "probs", (_[1],), None, "the additive mask (0 or finfo.min, "
         "[B, 1, 1, Sk]) is added to the scores before the softmax"),
    Case("cross-attention (Sq != Sk), no padding", "probs"),
    Case("masked keys (row 1: keys 4-6 padded)", "context", (_[1],)),
    Case("cross-attention (Sq != Sk), no padding", "context"),
    Case("self-attention, 2 heads of 8", "self_probs"),
    Case("self-attention, 2 heads of 8", "self_context"),
)


def _rows_of_softmax(probs, scores, keep):
    """probs = softmax(scores) along the last axis, judged on the kept entries: log p - s constant per row."""
    with np.errstate(divide="ignore"):
        d = np.where(keep, np.log(probs) - scores, np.nan)
    spread = np.nanmax(d, axis=-1) - np.nanmin(d, axis=-1)
    return bool(np.isfinite(spread).all() and spread.max() < 1e-3 * max(1.0, np.abs(scores[keep]).max()))


def _scaled_like(x, mine, factor):
    """Mine's probabilities are softmax(factor · the reference's scores): log p = factor · log p_ref + const."""
    ref = x["_ref"]["self_probs"].astype(np.float64)
    return _rows_of_softmax(mine["self_probs"], factor * np.log(ref), ref > 0)


def _interleaved(x, mine):
    """Mine's self-attention heads are the interleaved feature slices h, h + H, h + 2H, …"""
    s, H = x["s"].astype(np.float64), int(x["self_num_heads"])
    B, S, D = s.shape
    heads = s.reshape(B, S, D // H, H)  # feature f = j·H + h goes to head h
    scores = np.einsum("bqjh,bkjh->bhqk", heads, heads) / np.sqrt(D // H)
    return _rows_of_softmax(mine["self_probs"], scores, np.ones(scores.shape, dtype=bool))


_ATTENTION_SYMPTOMS = (
    Symptom("scores not scaled by 1/sqrt(Dh)? (Dh = D / num_heads)", lambda x, mine, tiny: _scaled_like(
        x, mine, math.sqrt(x["s"].shape[-1] // int(x["self_num_heads"])))),
    Symptom("scores scaled by 1/Dh instead of 1/sqrt(Dh)?", lambda x, mine, tiny: _scaled_like(
        x, mine, 1 / math.sqrt(x["s"].shape[-1] // int(x["self_num_heads"])))),
    Symptom("padding mask not applied? masked keys must get probability 0",
            lambda x, mine, tiny: bool((mine["probs"][1, ..., 4:] > 1e-6).any())),
    Symptom("mask applied after the softmax? add it to the scores, then softmax",
            lambda x, mine, tiny: not _sums_to_one(mine["probs"][1], -1) and _sums_to_one(mine["probs"][0], -1)),
    Symptom("heads interleaved? head h is the contiguous slice of features h·Dh … (h + 1)·Dh - 1",
            lambda x, mine, tiny: _interleaved(x, mine)),
    Symptom("probabilities normalised over the queries? softmax runs over the keys (the last axis)",
            lambda x, mine, tiny: _wrong_axis(mine["self_probs"])),
)

# patchify, pixels [2, 3, 18, 13] in 4×4 patches: a 4×3 grid (N = 12), the last 2 rows and 1 column
# dropped. The top-left patch is the same in any grid order, so it isolates the order inside a patch.
# Patches are copies of pixels and the embeddings short sums: a few u, far within PRIMITIVE_TOL.
_PATCHIFY_CASES = (
    Case("the top-left patch (the same in any grid order)", "patches", (_[:, 0],), None, "inside a patch: "
         "channel, then pixel row, then column (C·P·P), the order of the conv kernel [Dv, C, P, P]"),
    Case("the other patches of the 4×3 grid", "patches"),
    Case("embeddings (your patches times the flattened kernel)", "embeddings"),
)


def _patches_like(x, mine, grid=(0, 1), inside=(0, 1, 2)):
    """Mine's patches are the reference's with the grid axes (rows, columns) and the axes inside a patch
    (channel, pixel row, pixel column) taken in another order."""
    ref, P = x["_ref"]["patches"], int(x["patch_size"])
    B, C, H, W = x["pixels"].shape
    wrong = ref.reshape(B, H // P, W // P, C, P, P).transpose(0, *(1 + a for a in grid), *(3 + a for a in inside))
    return _close(mine["patches"], wrong.reshape(ref.shape), 1e-6)


_PATCHIFY_SYMPTOMS = (
    Symptom("patches in column-major order? the patch index runs row-major over the grid: n = row·(W // P) + column",
            lambda x, mine, tiny: _patches_like(x, mine, grid=(1, 0))),
    Symptom("each patch flattened channel-last (P, P, C)? flatten it channel-major, C·P·P, as the conv kernel "
            "[Dv, C, P, P] is", lambda x, mine, tiny: _patches_like(x, mine, inside=(1, 2, 0))
            or _patches_like(x, mine, inside=(2, 1, 0))),
    Symptom("each patch transposed (pixel columns before rows)? within a channel: pixel row i, then column j",
            lambda x, mine, tiny: _patches_like(x, mine, inside=(0, 2, 1))),
)

# position_ids, input_ids [4, 8] with pad 1: no padding, right padding, left padding, pads inside.
_POSITION_CASES = (
    Case("no padding", "position_ids", (_[0],)),
    Case("right padding", "position_ids", (_[1],)),
    Case("left padding", "position_ids", (_[2],)),
    Case("pads inside the text", "position_ids", (_[3],)),
)
_POSITION_SYMPTOMS = (
    Symptom("positions counted from 0? real tokens count up from pad_token_id + 1 = 2",
            lambda x, mine, tiny: bool((mine["position_ids"][0] == x["_ref"]["position_ids"][0] - 2).all())),
    Symptom("positions counted from 1? real tokens count up from pad_token_id + 1 = 2",
            lambda x, mine, tiny: bool((mine["position_ids"][0] == x["_ref"]["position_ids"][0] - 1).all())),
    Symptom("pads must keep pad_token_id and not advance the count",
            lambda x, mine, tiny: bool((mine["position_ids"][0] == x["_ref"]["position_ids"][0]).all())),
)

_VISION_BLOCK_CASES = (
    Case("attention probabilities (ln_1, packed q/k/v, scores)", "probs", None, None,
         "the packed in_proj rows are [W_q; W_k; W_v], in that order; q, k, v come from ln_1(x); heads are "
         "contiguous slices"),
    Case("block output", "x"),
)

_BERT_ATTENTION_CASES = (
    Case("unpadded text", "probs", (_[0],)),
    Case("padded texts (masked keys)", "probs", None, None, "the mask is added to the scores of every head "
         "before the softmax"),
    Case("unpadded text", "out", (_[0],)),
    Case("padded texts (masked keys)", "out"),
)

_BERT_ATTENTION_SYMPTOMS = (
    Symptom("padding mask not applied? pass mask on to the attention: masked keys get probability 0",
            lambda x, mine, tiny: bool((mine["probs"][np.broadcast_to(x["mask"] < -1e30, mine["probs"].shape)]
                                        > 1e-6).any())),
)

_TEXT_EMBED_CASES = tuple(Case(c.label, "embeddings", c.where) for c in _POSITION_CASES)


def _text_embed_like(x, mine, tiny, token_type=True, positions=None):
    """Mine is the text embedding without the token type row, or with positions(input_ids) for position ids."""
    from ..ops import layer_norm
    from ..text import position_ids

    p, tc, ids = tiny.tree["text_model"]["embeddings"], tiny.cfg.text_config, x["input_ids"]
    pos = position_ids(ids, tc.pad_token_id) if positions is None else positions(ids, tc.pad_token_id)
    h = p["word_embeddings"]["weight"][ids] + p["position_embeddings"]["weight"][pos]
    if token_type:
        h = h + p["token_type_embeddings"]["weight"][0]
    return _close(mine["embeddings"], layer_norm(h, p["LayerNorm"], tc.layer_norm_eps), 1e-4)


_TEXT_EMBED_SYMPTOMS = (
    Symptom("token type missing? every token adds row 0 of token_type_embeddings",
            lambda x, mine, tiny: _text_embed_like(x, mine, tiny, token_type=False)),
    Symptom("positions counted over every token, pads included? look them up at position_ids(input_ids, "
            "cfg.pad_token_id)", lambda x, mine, tiny: any(_text_embed_like(
                x, mine, tiny, positions=lambda ids, pad, s=start: np.broadcast_to(np.arange(ids.shape[1]) + s,
                                                                                   ids.shape))
                for start in (0, int(tiny.cfg.text_config.pad_token_id) + 1))),
)

# bpe, 49 words (tests/make_snapshots.py WORDS_FROM, pre-tokenised) under 150 merges learned from a
# small caption corpus. Strings: the first case (in this order) with a wrong word is the one named.
_BPE_CASES = (
    Case("words of the training captions", "tokens", (_[:18],)),
    Case("repeated letters (aaaaaaa, Ġaaa, Ġbbbbbbb)", "tokens", (_[18:21],), None, "merge every occurrence of "
         "the pair, left to right without overlap: with (a, a), a a a becomes aa a"),
    Case("unseen words and digits", "tokens", (_[21:25],)),
    Case("multi-byte characters (ï, é, à, 😺)", "tokens", (_[25:28], _[29:30])),
    Case("spaces, tabs and punctuation", "tokens"),
)


def _bpe_like(x, mine, wrong_bpe):
    """Mine's tokens are, word for word, what `wrong_bpe(word, ranks)` gives."""
    ranks = {(left, right): rank for rank, (left, right) in enumerate(x["merges"].tolist())}
    wrong = np.array([" ".join(wrong_bpe(word, ranks)) for word in x["words"].tolist()])
    return bool((mine["tokens"].astype(str) == wrong).all())


def _highest_first(word, ranks):
    from ..tokenizer import bpe

    return bpe(word, {pair: -rank for pair, rank in ranks.items()})


def _one_merge(word, ranks):
    from ..tokenizer import bpe_steps

    steps = bpe_steps(word, ranks)
    return steps[min(1, len(steps) - 1)][0]


_BPE_SYMPTOMS = (
    Symptom("merged the highest rank first? the adjacent pair with the lowest rank (the earliest-learned "
            "merge) goes first", lambda x, mine, tiny: _bpe_like(x, mine, _highest_first)),
    Symptom("stopped after one merge? repeat until no adjacent pair is in ranks",
            lambda x, mine, tiny: _bpe_like(x, mine, _one_merge)),
)

# cross_modal_layer: text [2, 6, D] (row 1 padded after 4 tokens, the text mask), image [2, 10, D].
# As the model runs it: the text stream (self_mask = text mask, cross_mask None), the image stream
# (self_mask None, cross_mask = text mask). Earlier stages first: a FAIL names the first that fails.
_CROSS_MODAL_CASES = (
    Case("text self-attention, padded text (self_mask)", "text_self_probs", (_[1],), None, "self_mask masks "
         "this stream's own keys, in the self-attention"),
    Case("text self-attention, unpadded text", "text_self_probs"),
    Case("text → image cross-attention (no mask)", "text_cross_probs", None, None, "the cross-attention's "
         "queries are the self-attention's output; its keys and values are the other stream"),
    Case("text stream output", "text"),
    Case("image self-attention (no mask)", "image_self_probs"),
    Case("image → text cross-attention, padded text (cross_mask)", "image_cross_probs", (_[1],), None,
         "cross_mask masks the other stream's keys, in the cross-attention"),
    Case("image → text cross-attention, unpadded text", "image_cross_probs"),
    Case("image stream output", "image"),
)


def _cross_queries_from_x(x, mine, tiny):
    """Mine's text cross-attention is queried by the layer's input instead of the self-attention's output."""
    from ..text import bert_attention

    tc = tiny.cfg.text_config
    p = tiny.tree["cross_modal_text_layers"][0]["crossattention"]
    _, probs = bert_attention(p, x["text"], x["image"], tc.num_attention_heads, tc.layer_norm_eps)
    return _close(mine["text_cross_probs"], probs, 1e-4)


_CROSS_MODAL_SYMPTOMS = (
    Symptom("self_mask not applied? it masks this stream's keys in the self-attention (the text stream's "
            "padding)", lambda x, mine, tiny: bool((mine["text_self_probs"][1, ..., 4:] > 1e-6).any())),
    Symptom("cross_mask not applied? it masks the other stream's keys in the cross-attention (the image "
            "stream attending to padded text)",
            lambda x, mine, tiny: bool((mine["image_cross_probs"][1, ..., 4:] > 1e-6).any())),
    Symptom("cross-attention queried by the layer input x? the queries are the self-attention's output",
            _cross_queries_from_x),
)

_LINK_TOWER_SYMPTOMS = (
    Symptom("interpolate: h is weighted by (1 - beta) and c by beta",
            lambda x, mine, tiny: not _close(mine["interpolate"], x["_ref"]["interpolate"], 1e-4)
            and _close(mine["add"], x["_ref"]["add"], 1e-4)),
    Symptom("scaled_add: h is scaled (h·s + c), c is not",
            lambda x, mine, tiny: not _close(mine["scaled_add"], x["_ref"]["scaled_add"], 1e-4)
            and _close(mine["add"], x["_ref"]["add"], 1e-4)),
)

_HEADS_SYMPTOMS = tuple(
    Symptom(f"{name}: the contrastive embedding is scaled to unit length (l2_normalize)",
            lambda x, mine, tiny, name=name: not np.allclose(np.linalg.norm(mine[name], axis=-1), 1, atol=1e-4))
    for name in ("itc_text", "itc_image", "itc_cross"))


_TORCH = "torch"
_HF = "transformers"

COMPONENTS = (
    Component("linear", ("ops.linear",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.functional.linear",
              "y = x W^T + b with torch's (out, in) weight layout, with and without bias", _linear,
              {"ops.linear": 'p = {"weight": [out, in], "bias": [out]}; "bias" may be absent.'}),
    Component("layer_norm", ("ops.layer_norm",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.LayerNorm",
              "LayerNorm with the biased variance and eps, on rows of very different scales", _layer_norm,
              {"ops.layer_norm": 'p = {"weight": [D], "bias": [D]}.'}, _LAYER_NORM_CASES, _LAYER_NORM_SYMPTOMS),
    Component("gelu", ("ops.gelu",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.functional.gelu (exact, erf)",
              "exact GELU through erf (the tanh approximation fails)", _gelu,
              {"ops.gelu": "erf(x) above is given (NumPy has none)."}, _ACTIVATION_CASES, _GELU_SYMPTOMS),
    Component("quick_gelu", ("ops.quick_gelu",), (), PRIMITIVE_TOL,
              f"{_HF}: activations.QuickGELUActivation", "QuickGELU, x * sigmoid(1.702 x)", _quick_gelu,
              cases=_ACTIVATION_CASES, symptoms=_QUICK_GELU_SYMPTOMS),
    Component("softmax", ("ops.softmax",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.softmax(dim=-1)",
              "softmax over the last axis, stable for large and for masked (finfo.min) scores", _softmax,
              cases=_SOFTMAX_CASES, symptoms=_SOFTMAX_SYMPTOMS),
    Component("attention", ("ops.attention",), ("softmax",), PRIMITIVE_TOL,
              f"{_HF}: BridgeTower's eager_attention_forward",
              "multi-head scaled dot-product attention with a padding mask", _attention,
              cases=_ATTENTION_CASES, symptoms=_ATTENTION_SYMPTOMS),
    Component("patchify", ("vision.patchify",), (), PRIMITIVE_TOL,
              f"{_TORCH}: Tensor.unfold (patches) and torch.nn.functional.conv2d (embeddings)",
              "cut images into P x P patches; the patch conv as one matrix product", _patchify,
              cases=_PATCHIFY_CASES, symptoms=_PATCHIFY_SYMPTOMS),
    Component("vision_block", ("vision.vision_block",), ("linear", "layer_norm", "quick_gelu", "attention"),
              LAYER_TOL, f"{_HF}: BridgeTowerResidualAttention (resblocks.0 of the tiny model)",
              "one pre-LN CLIP ViT block: packed q/k/v, QuickGELU MLP", _vision_block,
              {"vision.vision_block": 'p = {"ln_1", "attn": {"in_proj_weight" [3·Dv, Dv], "in_proj_bias" [3·Dv], '
                                      '"out_proj"}, "ln_2", "mlp": {"c_fc", "c_proj"}}; '
                                      'heads: cfg.num_attention_heads.'}, _VISION_BLOCK_CASES),
    Component("position_ids", ("text.position_ids",), (), EXACT,
              f"{_HF}: BridgeTowerTextEmbeddings.create_position_ids_from_input_ids",
              "RoBERTa position ids (from 2; pads keep the pad id), right-, left- and inner padding", _position_ids,
              cases=_POSITION_CASES, symptoms=_POSITION_SYMPTOMS),
    Component("text_embed", ("text.text_embed",), ("position_ids", "layer_norm"), PRIMITIVE_TOL,
              f"{_HF}: BridgeTowerTextEmbeddings (text_model.embeddings of the tiny model)",
              "word + token-type + position embeddings, then LayerNorm", _text_embed,
              {"text.text_embed": 'p = {"word_embeddings", "position_embeddings", "token_type_embeddings", '
                                  '"LayerNorm"}, each table under "weight"; pad id and eps are in cfg.'},
              _TEXT_EMBED_CASES, _TEXT_EMBED_SYMPTOMS),
    Component("bert_attention", ("text.bert_attention",), ("linear", "attention", "layer_norm"), LAYER_TOL,
              f"{_HF}: BridgeTowerAttention (text layer 0's self-attention)",
              "a RoBERTa attention block with its post-LN residual, padded batch", _bert_attention,
              {"text.bert_attention": 'p = {"self": {"query", "key", "value"}, "output": {"dense", "LayerNorm"}}.'},
              _BERT_ATTENTION_CASES, _BERT_ATTENTION_SYMPTOMS),
    Component("bpe", ("tokenizer.bpe",), (), EXACT,
              "tokenizers: models.BPE.tokenize, merges trained by tokenizers' BpeTrainer on a small corpus",
              "the byte-pair merge loop of one word", _bpe, cases=_BPE_CASES, symptoms=_BPE_SYMPTOMS),
    Component("link_tower", ("bridge.link_tower",), ("layer_norm",), PRIMITIVE_TOL,
              f"{_HF}: BridgeTowerLinkTower, one per link_tower_type",
              "the bridge layer: LN(h + c), scaled_add and interpolate", _link_tower,
              {"bridge.link_tower": 'p = {"LayerNorm"}, plus the 0-d "scaled_factor" or "beta" for those types.'},
              symptoms=_LINK_TOWER_SYMPTOMS),
    Component("cross_modal_layer", ("bridge.cross_modal_layer",), ("bert_attention", "linear", "gelu", "layer_norm"),
              LAYER_TOL, f"{_HF}: BridgeTowerBertCrossLayer (cross_modal_{{text,image}}_layers.0)",
              "self-attention, co-attention to the other stream, FFN; both streams", _cross_modal_layer,
              {"bridge.cross_modal_layer": 'p = {"attention", "crossattention", "intermediate", "output"}: '
                                           'text.bert_attention and text.bert_ffn take these subtrees.'},
              _CROSS_MODAL_CASES, _CROSS_MODAL_SYMPTOMS),
    Component("heads", ("heads.pooler", "heads.itm_logits", "heads.mlm_logits", "heads.contrastive_embedding"),
              ("linear", "layer_norm", "gelu"), LAYER_TOL,
              f"{_HF}: BridgeTowerPooler, BridgeTowerITMHead, BridgeTowerMLMHead, BridgeTowerContrastiveHead",
              "poolers, ITM, MLM and the three contrastive embeddings", _heads,
              {"heads.pooler": 'p = {"dense"} (cross_modal_text_pooler or cross_modal_image_pooler).',
               "heads.itm_logits": 'p = {"fc"} (itm_score).',
               "heads.mlm_logits": 'p = {"transform": {"dense", "LayerNorm"}, "decoder": {"weight"}, "bias"}.',
               "heads.contrastive_embedding": 'p = {"fc"} (itc_text_head, itc_image_head or itc_cross_modal_head).'},
              symptoms=_HEADS_SYMPTOMS),
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
