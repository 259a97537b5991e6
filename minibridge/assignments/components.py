"""What is assigned: each component, the functions a student writes for it, how the grader calls them.

A component is one box of the architecture, smallest first. For each one:
    covers   the functions whose `# BEGIN SOLUTION` … `# END SOLUTION` regions the student copy empties
    needs    the components it calls, so it runs on the student's own versions of those too
    tol      how far from the snapshot it may be (the constants below)
    source   where its snapshot comes from (tests/make_snapshots.py computes it)
    run      (student, inputs, tiny) -> {output name: array}: one call into the student's code

The inputs live in snapshots.npz beside the outputs, and so do the *stored mistakes* the hints
compare a failing student's outputs with (Symptom; tests/make_snapshots.py computes them): this file
ships in every handout, so it computes no component, right or wrong. The weights of the layer and
model components (about 1.6 M numbers, too many to commit) do not: `tiny_weights` regenerates them
from a seed, bit for bit, and a checksum stored with the snapshots proves it.

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
# Gradients (week 5), measured against torch autograd in float64 (the exact gradient of the stored
# float32 inputs, rounded once). A right float32 backward is a few float32 steps per primitive, as the
# forward: the reference's own float32 lands within 3e-7 of every primitive's snapshot, torch's float32
# autograd too, and so do a float32 softmax_backward and the one-pass (E[x²] − E[x]²) or textbook
# (N·dx̂ − Σdx̂ − x̂·Σdx̂x̂)/N forms of LayerNorm's (tests/test_grader_diagnostics.py). The subtlest mistakes
# worth catching move a primitive's gradient by 6e-4 (the tanh-GELU derivative) and the rest by 1e-2 to 1
# (a missing term, a missing 1/√Dh, a sum over the wrong axis).
GRAD_PRIMITIVE_TOL = 1e-5  # one primitive's backward: right answers within 3e-7, mistakes from 6e-4 up
# A cross-modal layer's backward recomputes its forward and runs ~20 primitive backwards: right answers
# (float32 throughout, float32 softmax_backward included) land within 5e-7, torch's float32 autograd at
# 4e-7; a hard-coded LayerNorm eps of 1e-6 or the tanh-GELU derivative inside it move its gradients by
# 2e-4, a missing term or scale by 6e-3 or more. The forward layers' LAYER_TOL sits between.
GRAD_LAYER_TOL = 3e-5
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
    hint: what the case tests, for a FAIL in this case that no Symptom recognises (so a statement of
    what the case checks, never a guess at the mistake); fits: None, or (inputs, mine, reference) -> bool,
    when the hint is only worth giving for failures of one kind.
    """

    label: str
    output: str
    where: tuple = None
    tol: float = None
    hint: str = None
    fits: Callable = field(default=None, repr=False)


@dataclass(frozen=True)
class Symptom:
    """A typical mistake and its hint line for a FAIL, recognised from the student's failing outputs.

    Either by `test(inputs, mine, ref)`: a property of the student's outputs `mine` ({output:
    np.ndarray}, each of the reference's shape) alone or their relation to the inputs and to the
    reference's outputs `ref` ({output: np.ndarray}), never by computing the mistake;
    or by `mistake`: the name of a *stored mistake*, what that mistake computes from the stored inputs.
    tests/make_snapshots.py computes it offline with the reference (nothing here computes a
    component, so a handout holds no solution and its hints do not depend on the student's own
    files) and stores `outputs` (default: all of them), each cut to `where` (an np.s_[...] index, or
    None for the whole output), as snapshots.npz keys `component/mistake/<mistake>/<output>`.
    The symptom fits when mine[output][where] is within `rel` of every stored output (strings: equal).
    shapes: judged also when an output has the wrong shape (a `test` of the shapes themselves);
    the others are judged only on outputs of the reference's shapes.
    """

    hint: str
    test: Callable = field(default=None, repr=False)
    mistake: str = None
    outputs: tuple = ()
    where: tuple = None
    rel: float = 1e-4
    shapes: bool = False

    def fits(self, snapshot, mine):
        """Whether `mine` looks like this mistake; snapshot: the component's grade.Snapshot (inputs, outputs, mistakes)."""
        if self.mistake is None:
            return bool(self.test(snapshot.inputs, mine, snapshot.outputs))
        stored = snapshot.mistakes[self.mistake]
        return all(_same(mine[name] if self.where is None else mine[name][self.where], value, self.rel)
                   for name, value in stored.items())


@dataclass(frozen=True)
class OnError:
    """A hint for a component whose code raised: given when any of `says` is in the error's message."""

    says: tuple
    hint: str


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
    on_error: tuple = ()  # OnError: hints for typical exceptions

    def cases_of(self, output):
        return tuple(c for c in self.cases if c.output == output)

    def mistakes(self):
        """{name: Symptom} of the stored mistakes its symptoms compare with (tests/make_snapshots.py makes them)."""
        return {s.mistake: s for s in self.symptoms if s.mistake is not None}


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
    # And as the model's last layer runs them for a head that reads position 0 alone (rows=1).
    t1, t1_self, _ = mb.bridge.cross_modal_layer(tree["cross_modal_text_layers"][0], x["text"], x["image"], tc,
                                                 x["text_mask"], None, rows=1)
    i1, i1_self, _ = mb.bridge.cross_modal_layer(tree["cross_modal_image_layers"][0], x["image"], x["text"], tc,
                                                 None, x["text_mask"], rows=1)
    return {"text": t, "text_self_probs": t_self, "text_cross_probs": t_cross,
            "image": i, "image_self_probs": i_self, "image_cross_probs": i_cross,
            "text_first": t1, "text_first_self_probs": t1_self, "image_first": i1, "image_first_self_probs": i1_self}


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
    p, cfg = tiny.tree, tiny.cfg
    out = mb.model.bridgetower(p, cfg, x["input_ids"], x["attention_mask"], x["pixel_values"])
    graded = {k: out[k] for k in ("text_features", "image_features", "pooler_output")}
    # The heads' reads (model.READS), as the head classes run them: the towers, then the cross-modal
    # stack, whose last layer computes only the rows the head reads.
    text = mb.model.text_bridged(p, cfg, x["input_ids"], x["attention_mask"])
    image = mb.model.image_bridged(p, cfg, x["pixel_values"])
    first = mb.model.cross_modal(p, cfg, text, image, "first")  # ITM, ITC
    graded.update({f"read_first.{k}": first[k] for k in ("text_features", "image_features", "pooler_output")})
    mlm = mb.model.cross_modal(p, cfg, text, image, "text")  # MLM
    graded.update({f"read_text.{k}": mlm[k] for k in ("text_features", "image_features")})
    return graded


# ---- the backward components (week 5): gradients, compared with torch autograd's --------------------------


def _linear_backward(mb, x, tiny):
    dx, g = mb.backward.ops.linear_backward(x["x"], {"weight": x["weight"], "bias": x["bias"]}, x["dy"])
    dx_nobias, g_nobias = mb.backward.ops.linear_backward(x["x"], {"weight": x["weight"]}, x["dy"])
    return {"dx": dx, "dweight": g["weight"], "dbias": g["bias"],
            "dx_without_bias": dx_nobias, "dweight_without_bias": g_nobias["weight"]}


def _layer_norm_backward(mb, x, tiny):
    p = {"weight": x["weight"], "bias": x["bias"]}
    dx, g = mb.backward.ops.layer_norm_backward(x["x"], p, float(x["eps"]), x["dy"])
    return {"dx": dx, "dweight": g["weight"], "dbias": g["bias"]}


def _gelu_backward(mb, x, tiny):
    return {"dx": mb.backward.ops.gelu_backward(x["x"], x["dy"])}


def _softmax_backward(mb, x, tiny):
    # As attention runs it: the probabilities are the forward's output (your softmax), the scores' gradient is graded.
    return {"dscores": mb.backward.ops.softmax_backward(mb.ops.softmax(x["scores"]), x["dprobs"])}


def _attention_backward(mb, x, tiny):
    dq, dk, dv = mb.backward.ops.attention_backward(x["q"], x["k"], x["v"], int(x["num_heads"]), x["mask"],
                                                    x["dcontext"])
    # Self-attention: q, k and v are one array, and each of the three gradients is graded on its own.
    sq, sk, sv = mb.backward.ops.attention_backward(x["s"], x["s"], x["s"], int(x["self_num_heads"]), None,
                                                    x["dself"])
    return {"dq": dq, "dk": dk, "dv": dv, "self_dq": sq, "self_dk": sk, "self_dv": sv}


def _itm_loss_backward(mb, x, tiny):
    # The ITM head's loss as the model computes it: cross_entropy(itm_logits(pooled), labels), itm_logits
    # being one Linear (ops.linear, so that only the components this one calls are those it builds on).
    p = tiny.tree["itm_score"]
    dlogits = mb.backward.ops.cross_entropy_backward(mb.ops.linear(x["pooled"], p["fc"]), x["labels"])
    dpooled, g = mb.backward.heads.itm_logits_backward(p, x["pooled"], dlogits)
    return {"dlogits": dlogits, "dpooled": dpooled, "fc.weight": g["fc"]["weight"], "fc.bias": g["fc"]["bias"]}


# A cross-modal layer's weight gradients are 149 k numbers a stream, too many to store: each is graded on
# every GRAD_STRIDE-th row and column (8 × 8 of a 128 × 128 weight, 8 of a bias), a sample that reads
# every head and every block. A wrong backward moves a weight's whole gradient, not a few of its entries.
GRAD_STRIDE = 16


def sampled_gradients(grads, prefix=""):
    """{dotted name: every GRAD_STRIDE-th entry along each axis} of a nested gradient dict, as the snapshots hold them."""
    out = {}
    for key, value in grads.items():
        if isinstance(value, dict):
            out.update(sampled_gradients(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value[(slice(None, None, GRAD_STRIDE),) * np.ndim(value)]
    return out


def _cross_modal_layer_backward(mb, x, tiny):
    tc, tree, bridge = tiny.cfg.text_config, tiny.tree, mb.backward.bridge
    # As the model runs the layer: the text stream with (text mask, None), the image stream with (None, text mask).
    dtext, dimage_from_text, g_text = bridge.cross_modal_layer_backward(
        tree["cross_modal_text_layers"][0], x["text"], x["image"], tc, x["text_mask"], None, x["dtext"])
    dimage, dtext_from_image, g_image = bridge.cross_modal_layer_backward(
        tree["cross_modal_image_layers"][0], x["image"], x["text"], tc, None, x["text_mask"], x["dimage"])
    return {"text_dx": dtext, "text_dother": dimage_from_text, "image_dx": dimage, "image_dother": dtext_from_image,
            **sampled_gradients(g_text, "text."), **sampled_gradients(g_image, "image.")}


# ---- cases and typical mistakes ------------------------------------------------------------------------
# Cases name the inputs each snapshot holds on purpose (tests/make_snapshots.py says why each is there),
# so a FAIL line says which kind of input went wrong. Symptoms recognise a typical mistake from the
# student's outputs: by a property of them or a relation to the reference's outputs, or by comparing
# them with a *stored mistake*, computed offline by tests/make_snapshots.py. Nothing here computes a
# component (this file ships in every handout, and a hint must not depend on the student's own files).

_ = np.s_


def _close(a, b, rel=1e-4):
    """a is b within rel · max(1, max |b|), and of its shape."""
    a, b = np.asarray(a), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.abs(a - b).max() <= rel * max(1.0, np.abs(b).max()))


def _same(mine, stored, rel):
    """mine is the stored output: the same strings, or numbers within rel (_close)."""
    mine = np.asarray(mine)
    if stored.dtype.kind == "U":
        return mine.shape == stored.shape and bool((mine.astype(str) == stored).all())
    return mine.dtype.kind in "biuf" and _close(mine, stored, rel)


def _sums_to_one(p, axis):
    return bool(np.allclose(p.sum(axis=axis), 1.0, atol=1e-4))


def _wrong_axis(p):
    """p sums to 1 over some axis, but not over the last one."""
    return not _sums_to_one(p, -1) and any(_sums_to_one(p, a) for a in range(p.ndim - 1))


def _float16(y):
    """y is float16, or each of its (many different) values is a float16 number: computed in float16."""
    if y.dtype == np.float16:
        return True
    finite = y[np.isfinite(y)]
    return (y.dtype.kind == "f" and np.unique(finite).size > 10
            and bool((finite.astype(np.float16).astype(y.dtype) == finite).all()))


_FLOAT16 = ("computed in float16? it holds about 3 significant digits (scores near 1000 only to ±0.25) and overflows "
            "above 65504: compute in float32")

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
    Case("row with a +1000 logit", "y", (_[0, 0],), SOFTMAX_LARGE_TOL, "this row tests stability: exp(1000) "
         "overflows float32 unless the row max is subtracted before exp (softmax(x) = softmax(x - max)), and "
         "float32 holds scores near 1000 only to 6e-5"),
    Case("rows with masked keys (finfo.min)", "y", (_[1],), None, "this case tests masked keys (finfo.min): "
         "they get probability 0, and the other keys still sum to 1"),
    Case("a ±1e4 row", "y", (_[2, 1],)),
    Case("ordinary rows", "y"),
)
_SOFTMAX_SYMPTOMS = (
    Symptom("the probabilities sum to 1 over the wrong axis? softmax runs over the last axis (axis=-1)",
            lambda x, mine, ref: _wrong_axis(mine["y"])),
    Symptom(_FLOAT16, lambda x, mine, ref: _float16(mine["y"])),
    Symptom("nan where the scores are large: exp overflowed; subtract the row max before exp",
            lambda x, mine, ref: not np.isfinite(mine["y"][0, 0]).all()),
)

# layer_norm, x [6, 3, 16]: rows of std 1e-3, 1e-2, 0.1, 1, 10, 100 (each with an offset of its size).
# Float32: the two-pass form is within a few u of exact. The one-pass variance E[x²] - E[x]² loses
# u·E[x²] to cancellation, a relative error u·(1 + μ²/σ²)·(a few) in var + eps, half of it in the
# output (|y| ≲ 5): with |μ/σ| < 3 here, below 5 · ½ · 10 · 10 · u = 1.5e-5 at worst and 1e-6 in fact.
# The std 1e-3 row is where eps (1e-5) dwarfs the variance (1e-6): eps forgotten or added outside
# the root changes that row by its whole size (~1), the std 1e-2 row by ~5%, the rows of std ≥ 1
# by 5e-6 or less (so those pass when only eps is wrong: the case's hint is given then alone).
_LAYER_NORM_CASES = (
    Case("std 1e-3 row where eps dominates", "y", (_[0],), None, "this row's variance (1e-6) is below eps "
         "(1e-5), so it tests eps: (x - mean) / sqrt(var + eps), the eps argument inside the square root",
         lambda x, mine, ref: _close(mine["y"][3:], ref["y"][3:], 1e-4)),
    Case("std 1e-2 row (eps is 10% of the variance)", "y", (_[1],)),
    Case("rows of std 0.1 to 100", "y"),
)
_LAYER_NORM_SYMPTOMS = (
    Symptom("LayerNorm without eps? divide by sqrt(var + eps)", mistake="no_eps", rel=1e-3),
    Symptom("eps outside the square root? divide by sqrt(var + eps), not sqrt(var) + eps",
            mistake="eps_outside_root", rel=1e-3),
    Symptom("eps hard-coded (this one is 1e-6)? use the eps argument (here 1e-5; it comes from the config)",
            mistake="eps_1e-6", rel=1e-3),
    Symptom("unbiased variance (divided by D - 1)? LayerNorm divides by D", mistake="unbiased_variance", rel=1e-3),
    Symptom("bias not added? LayerNorm ends with · weight + bias", mistake="no_bias", rel=1e-3),
    Symptom("weight not applied? LayerNorm ends with · weight + bias", mistake="no_weight", rel=1e-3),
)

# gelu / quick_gelu, x [3, 100]: x[0], x[1] and x[2, :41] are a dense grid on [-6, 6], the rest normal(0, 3).
# The stored mistakes differ from the right activation by 8e-5 (tanh-GELU, its closest) or more, of the
# largest output: rel 1e-5 tells them apart.
_ACTIVATION_CASES = (
    Case("the bend, a dense grid on [-6, 6]", "y", (_[0], _[1], _[2, :41])),
    Case("random inputs (std 3)", "y"),
)
_GELU_SYMPTOMS = (
    Symptom("this is the tanh approximation of GELU; the grader wants the exact 0.5·x·(1 + erf(x/√2))",
            mistake="tanh_approximation", rel=1e-5),
    Symptom("this is QuickGELU, x·sigmoid(1.702x); gelu is the exact 0.5·x·(1 + erf(x/√2))",
            mistake="quick_gelu", rel=1e-5),
)
_QUICK_GELU_SYMPTOMS = (
    Symptom("x·sigmoid(x)? QuickGELU is x·sigmoid(1.702·x)", mistake="sigmoid_of_x", rel=1e-5),
    Symptom("this is the exact GELU; QuickGELU is x·sigmoid(1.702·x)", mistake="exact_gelu", rel=1e-5),
)

# attention: q [2, 5, 16], k and v [2, 7, 16], 4 heads (Dh = 4), batch row 1 masks keys 4-6; then
# self-attention of s [2, 6, 16] with 2 heads (Dh = 8) and no mask. Errors are those of a softmax
# of scores |s| < 16 and two short dot products: a few u, far within PRIMITIVE_TOL.
_ATTENTION_CASES = (
    Case("masked keys (row 1: keys 4-6 padded)", "probs", (_[1],), None, "this case tests the padding mask: "
         "the additive mask (0 or finfo.min, [B, 1, 1, Sk]) is added to the scores before the softmax"),
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


def _scaled_like(mine, ref, factor):
    """Mine's self-attention probabilities are softmax(factor · the reference's scores).

    That is log p = factor · log p_ref + a constant per row: a relation to the reference's output.
    """
    ref = ref["self_probs"].astype(np.float64)
    return _rows_of_softmax(mine["self_probs"], factor * np.log(ref), ref > 0)


def _head_width(x):
    return x["s"].shape[-1] // int(x["self_num_heads"])  # Dh of the self-attention


_ATTENTION_SYMPTOMS = (
    Symptom("probabilities normalised over the queries? softmax runs over the keys (the last axis)",
            lambda x, mine, ref: _wrong_axis(mine["self_probs"])),
    Symptom("scores not scaled by 1/sqrt(Dh)? (Dh = D / num_heads)",
            lambda x, mine, ref: _scaled_like(mine, ref, _head_width(x) ** 0.5)),
    Symptom("scores scaled by 1/Dh instead of 1/sqrt(Dh)?",
            lambda x, mine, ref: _scaled_like(mine, ref, _head_width(x) ** -0.5)),
    Symptom("scores scaled by 1/sqrt(D), the whole width? scale by 1/sqrt(Dh), the width of one head "
            "(Dh = D / num_heads)",
            lambda x, mine, ref: _scaled_like(mine, ref, (_head_width(x) / x["s"].shape[-1]) ** 0.5)),
    Symptom("padding mask not applied? masked keys must get probability 0",
            lambda x, mine, ref: bool((mine["probs"][1, ..., 4:] > 1e-6).any()) and _sums_to_one(mine["probs"], -1)),
    Symptom("mask applied after the softmax? add it to the scores, then softmax",
            lambda x, mine, ref: not _sums_to_one(mine["probs"][1], -1) and _sums_to_one(mine["probs"][0], -1)),
    Symptom("heads interleaved? head h is the contiguous slice of features h·Dh … (h + 1)·Dh - 1",
            mistake="interleaved_heads", outputs=("self_probs",)),
)

# patchify, pixels [2, 3, 18, 13] in 4×4 patches: a 4×3 grid (N = 12), the last 2 rows and 1 column
# dropped. The top-left patch is the same in any grid order, so it isolates the order inside a patch.
# Patches are copies of pixels and the embeddings short sums: a few u, far within PRIMITIVE_TOL.
_PATCHIFY_CASES = (
    Case("the top-left patch (the same in any grid order)", "patches", (_[:, 0],), None, "this case tests the "
         "order inside a patch: channel, then pixel row, then column (C·P·P), the order of the conv kernel "
         "[Dv, C, P, P]"),
    Case("the other patches of the 4×3 grid", "patches"),
    Case("embeddings (your patches times the flattened kernel)", "embeddings"),
)

# The stored mistakes are the reference's patches with the grid axes (rows, columns) or the axes inside a
# patch (channel, pixel row, pixel column) taken in another order (tests/make_snapshots.py mistakes_patchify).
_PATCHIFY_SYMPTOMS = (
    Symptom("patches in column-major order? the patch index runs row-major over the grid: n = row·(W // P) + column",
            mistake="grid_column_major", outputs=("patches",)),
    *(Symptom("each patch flattened channel-last (P, P, C)? flatten it channel-major, C·P·P, as the conv kernel "
              "[Dv, C, P, P] is", mistake=mistake, outputs=("patches",))
      for mistake in ("channel_last", "channel_last_columns_first")),
    Symptom("each patch transposed (pixel columns before rows)? within a channel: pixel row i, then column j",
            mistake="columns_before_rows", outputs=("patches",)),
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
            lambda x, mine, ref: bool((mine["position_ids"][0] == ref["position_ids"][0] - 2).all())),
    Symptom("positions counted from 1? real tokens count up from pad_token_id + 1 = 2",
            lambda x, mine, ref: bool((mine["position_ids"][0] == ref["position_ids"][0] - 1).all())),
    Symptom("pads must keep pad_token_id and not advance the count",
            lambda x, mine, ref: bool((mine["position_ids"][0] == ref["position_ids"][0]).all())),
)

_VISION_BLOCK_CASES = (
    Case("attention probabilities (ln_1, packed q/k/v, scores)", "probs", None, None,
         "this case tests the attention's input: q, k, v from ln_1(x), the packed in_proj rows [W_q; W_k; W_v] "
         "in that order, heads as contiguous slices"),
    Case("block output", "x"),
)

_BERT_ATTENTION_CASES = (
    Case("unpadded text", "probs", (_[0],)),
    Case("padded texts (masked keys)", "probs", None, None, "this case tests the mask: it is added to the scores "
         "of every head before the softmax"),
    Case("unpadded text", "out", (_[0],)),
    Case("padded texts (masked keys)", "out"),
)

_BERT_ATTENTION_SYMPTOMS = (
    Symptom("padding mask not applied? pass mask on to the attention: masked keys get probability 0",
            lambda x, mine, ref: bool((mine["probs"][np.broadcast_to(x["mask"] < -1e30, mine["probs"].shape)]
                                        > 1e-6).any())),
)

# text_embed: the position_ids inputs, a few tokens changed. The stored mistakes keep 16 of the 128
# features (LayerNorm mixes every feature into each, so 16 tell the mistakes apart; snapshots stay small).
_TEXT_EMBED_CASES = tuple(Case(c.label, "embeddings", c.where) for c in _POSITION_CASES)
_POSITIONS_OVER_PADS = ("positions counted over every token, pads included? look them up at "
                        "position_ids(input_ids, cfg.pad_token_id)")
_TEXT_EMBED_SYMPTOMS = (
    Symptom("token type missing? every token adds row 0 of token_type_embeddings", mistake="no_token_type",
            where=_[..., :16]),
    Symptom(_POSITIONS_OVER_PADS, mistake="positions_0_1_2_over_pads", where=_[..., :16]),
    Symptom(_POSITIONS_OVER_PADS, mistake="positions_2_3_4_over_pads", where=_[..., :16]),
)

# bpe, 49 words (tests/make_snapshots.py WORDS_FROM, pre-tokenised) under 150 merges learned from a
# small caption corpus. Strings: the first case (in this order) with a wrong word is the one named.
_BPE_CASES = (
    Case("words of the training captions", "tokens", (_[:18],)),
    Case("repeated letters (aaaaaaa, Ġaaa, Ġbbbbbbb)", "tokens", (_[18:21],), None, "this case tests repeated "
         "pairs: every occurrence of the pair merges, left to right without overlap: with (a, a), a a a "
         "becomes aa a"),
    Case("unseen words and digits", "tokens", (_[21:25],)),
    Case("multi-byte characters (ï, é, à, 😺)", "tokens", (_[25:28], _[29:30])),
    Case("spaces, tabs and punctuation", "tokens"),
)
_BPE_SYMPTOMS = (
    Symptom("merged the highest rank first? the adjacent pair with the lowest rank (the earliest-learned "
            "merge) goes first", mistake="highest_rank_first"),
    Symptom("stopped after one merge? repeat until no adjacent pair is in ranks", mistake="one_merge"),
    Symptom("no merge made? every token is one character: merge the lowest-ranked adjacent pair, and repeat",
            lambda x, mine, ref: all(len(token) == 1 for tokens in mine["tokens"].astype(str).tolist()
                                      for token in tokens.split(" ") if token)),
)

# cross_modal_layer: text [2, 6, D] (row 1 padded after 4 tokens, the text mask), image [2, 10, D].
# As the model runs it: the text stream (self_mask = text mask, cross_mask None), the image stream
# (self_mask None, cross_mask = text mask). Earlier stages first: a FAIL names the first that fails.
# Then both streams again with rows=1, as the last layer runs for a head that reads position 0 (ITM,
# ITC): the reference is the full layer's position 0 (its output row, its self-attention's row of
# probabilities). Only the queries are cut, so the self-attention's keys and values cut too (position 0
# attending to itself) is a wrong value, and a wrong shape of the probabilities.
_CROSS_MODAL_CASES = (
    Case("text self-attention, padded text (self_mask)", "text_self_probs", (_[1],), None, "this case tests "
         "self_mask: it masks this stream's own keys, in the self-attention"),
    Case("text self-attention, unpadded text", "text_self_probs"),
    Case("text → image cross-attention (no mask)", "text_cross_probs", None, None, "this case tests the "
         "cross-attention's inputs: its queries are the self-attention's output, its keys and values the other "
         "stream"),
    Case("text stream output", "text"),
    Case("image self-attention (no mask)", "image_self_probs"),
    Case("image → text cross-attention, padded text (cross_mask)", "image_cross_probs", (_[1],), None,
         "this case tests cross_mask: it masks the other stream's keys, in the cross-attention"),
    Case("image → text cross-attention, unpadded text", "image_cross_probs"),
    Case("image stream output", "image"),
    Case("rows=1, text: position 0 attending to every (unpadded) text key", "text_first_self_probs", None, None,
         "this case tests rows: with rows=1 the self-attention's queries are position 0 alone (`queries`, x[:, :1]), "
         "its keys and values still every position of x, so the output is the full layer's position 0"),
    Case("rows=1, text: position 0 of the output", "text_first"),
    Case("rows=1, image: position 0 attending to every image key", "image_first_self_probs"),
    Case("rows=1, image: position 0 of the output", "image_first"),
)
# A mask of the wrong length for its scores: with the reference attention (in place) "non-broadcastable
# output operand", with a learner's "could not be broadcast". Cutting the self-attention's keys to the rows
# as well as its queries ends here on the padded text (its self_mask still has every key).
_MASK_SHAPES = ("broadcast",)
_CROSS_MODAL_ERRORS = (
    OnError(_MASK_SHAPES, "a mask that does not fit its attention's scores [B, H, queries, keys]: self_mask masks "
            "this stream's keys, every position of x (keys and values are x, not `queries`, also with rows), "
            "cross_mask the other stream's"),
    OnError(("unexpected keyword argument 'rows'",), "cross_modal_layer takes rows=None (the signature as given): "
            "the model's last layer passes rows=1"),
)
_CROSS_MODAL_SYMPTOMS = (
    Symptom("self_mask not applied? it masks this stream's keys in the self-attention (the text stream's "
            "padding)", lambda x, mine, ref: bool((mine["text_self_probs"][1, ..., 4:] > 1e-6).any())),
    Symptom("cross_mask not applied? it masks the other stream's keys in the cross-attention (the image "
            "stream attending to padded text)",
            lambda x, mine, ref: bool((mine["image_cross_probs"][1, ..., 4:] > 1e-6).any())),
    Symptom("cross-attention queried by the layer input x? the queries are the self-attention's output",
            mistake="cross_queried_by_x", outputs=("text_cross_probs",)),
    # rows: the model's last layer passes rows=1 for a head that reads position 0 alone (ITM, ITC). Every
    # row returned is refused, with this hint, even where its position 0 is right: the docstring promises
    # [B, k, D] (the model's outputs would hold rows its docstring says are not there), and rows exists so
    # that the last layer does 1/S of the work, which right values at the full cost would skip unseen.
    # What comes back is graded, not how: every row computed and the first k returned passes
    # (tests/test_grader_diagnostics.py).
    Symptom("rows ignored? with rows=1 return position 0 alone, [B, 1, D] (probabilities [B, H, 1, S]): the "
            "self-attention's queries are `queries` (x[:, :rows], given); the model's last layer computes only "
            "the rows a head reads",
            lambda x, mine, ref: any(np.shape(mine[f"{s}_first"]) == x[s].shape for s in ("text", "image")),
            shapes=True),
    Symptom("the self-attention's keys and values cut to the rows too? only its queries are `queries` "
            "(x[:, :rows]); its keys and values are every position of x (position 0 attends to the whole stream)",
            lambda x, mine, ref: any(np.shape(mine[f"{s}_first_self_probs"])[-1:] == (1,) for s in ("text", "image")),
            shapes=True),
)

_LINK_TOWER_SYMPTOMS = (
    Symptom("interpolate: h is weighted by (1 - beta) and c by beta",
            lambda x, mine, ref: not _close(mine["interpolate"], ref["interpolate"], 1e-4)
            and _close(mine["add"], ref["add"], 1e-4)),
    Symptom("scaled_add: h is scaled (h·s + c), c is not",
            lambda x, mine, ref: not _close(mine["scaled_add"], ref["scaled_add"], 1e-4)
            and _close(mine["add"], ref["add"], 1e-4)),
)

_HEADS_SYMPTOMS = (
    Symptom("pooler: a mean over the tokens? the pooler reads the first token, features[:, 0]",
            mistake="pooler_mean", outputs=("pooled",)),
    Symptom("pooler: the last token? the pooler reads the first token, features[:, 0]",
            mistake="pooler_last_token", outputs=("pooled",)),
    Symptom("pooler without tanh? it is tanh(dense(features[:, 0]))", mistake="pooler_no_tanh", outputs=("pooled",)),
    Symptom("pooler: dense's weight not transposed? it is stored (out, in), as torch's: x @ W.T",
            mistake="pooler_weight_not_transposed", outputs=("pooled",)),
    Symptom("mlm_logits: transform.dense's weight not transposed? it is stored (out, in), as torch's: x @ W.T",
            mistake="mlm_dense_not_transposed", outputs=("mlm_logits",)),
    *(Symptom(f"{name}: the contrastive embedding is scaled to unit length (l2_normalize)",
              lambda x, mine, ref, name=name: not np.allclose(np.linalg.norm(mine[name], axis=-1), 1, atol=1e-4))
      for name in ("itc_text", "itc_image", "itc_cross")),
)

# A Linear's weight not transposed (x @ W) is a shape error where the weight is not square (linear's
# and the ITM head's, here); the square ones of the heads are stored mistakes above.
_MATMUL_SHAPES = OnError(("matmul", "not aligned"), "a matrix product of mismatched shapes: a Linear's weight "
                         "is stored (out, in), as torch's, so the product is x @ W.T")

# bridgetower, a padded batch of 3 (texts of 7, 4 and 6 tokens) through model.bridgetower (read "all"),
# then model.cross_modal with each read a head uses (model.READS), whose last layer holds only the rows
# read: "first" position 0 of each stream (ITM, ITC: the poolers), "text" every text row and position 0
# of the image (MLM). Their references are the full forward's rows (tests/make_snapshots.py). Rows the
# read leaves out are refused, as cross_modal_layer's with rows (a wrong shape, with a hint; the reasons
# there): model.cross_modal's docstring says they are not there, and skipping them is what reads are for.
_READ_FIRST = ("this case tests read=\"first\" (ITM, ITC): in the last layer each stream computes position 0 "
               "alone (x_rows = y_rows = 1, passed on as cross_modal_layer's rows), attending to every position")
_READ_TEXT = ("this case tests read=\"text\" (MLM): in the last layer the text stream computes every row (x_rows "
              "None) and the image stream position 0 alone (y_rows = 1)")
_BRIDGETOWER_CASES = (
    Case("read \"all\": every row of the last layer", "text_features"),
    Case("read \"all\": every row of the last layer", "image_features"),
    Case("read \"all\"", "pooler_output"),
    Case("read \"first\": position 0", "read_first.text_features", None, None, _READ_FIRST),
    Case("read \"first\": position 0", "read_first.image_features", None, None, _READ_FIRST),
    Case("read \"first\"", "read_first.pooler_output", None, None, _READ_FIRST),
    Case("read \"text\": every text row", "read_text.text_features", None, None, _READ_TEXT),
    Case("read \"text\": position 0 of the image", "read_text.image_features", None, None, _READ_TEXT),
)


def _every_row(mine, ref, read, stream):
    """The read's output of `stream` has every row of the last layer (read "all"'s shape) where the read has fewer."""
    shape = np.shape(mine[f"{read}.{stream}_features"])
    return shape == ref[f"{stream}_features"].shape and shape != ref[f"{read}.{stream}_features"].shape


_BRIDGETOWER_ERRORS = (
    OnError(_MASK_SHAPES, "a mask that does not fit its attention's scores: in the last layer only the queries are "
            "cut to the rows read (cross_modal_layer's rows); x_in and y_in stay whole, as keys and values, and so "
            "do the masks"),
)
_BRIDGETOWER_SYMPTOMS = (
    Symptom("x_rows and y_rows swapped? x_rows are the text stream's (x) rows, y_rows the image stream's (y): "
            "with read=\"text\" the text keeps every row and the image only position 0",
            lambda x, mine, ref: _every_row(mine, ref, "read_text", "image")
            and np.shape(mine["read_text.text_features"]) == ref["read_first.text_features"].shape, shapes=True),
    Symptom("every row in the last layer where the head reads position 0 alone? pass x_rows / y_rows on as "
            "cross_modal_layer's rows (x_rows to the text layer, y_rows to the image layer), and cross_modal_layer "
            "must honour them: the rows a read leaves out are not there ([B, 1, D])",
            lambda x, mine, ref: any(_every_row(mine, ref, "read_first", s) for s in ("text", "image")), shapes=True),
    Symptom("read=\"all\" is right but the rows a head reads are not: in the last layer only the queries are cut to "
            "the rows read (cross_modal_layer's rows); the keys and values stay every position of both streams' "
            "inputs (x_in, y_in uncut)",
            lambda x, mine, ref: all(_close(mine[k], ref[k]) for k in ("text_features", "image_features"))
            and not all(_close(mine[k], ref[k]) for k in ref if k.startswith("read_"))),
)


# ---- the backward components: cases and typical mistakes ------------------------------------------------
# Their snapshots are torch autograd's gradients in float64 (the modules cast to float64) of the stored float32
# inputs: the exact gradients, rounded once. The tolerances (GRAD_* above COMPONENTS) are measured against them.

_GRADCHECK = (" Check it numerically first, as CS231n does: minibridge.backward.gradcheck's "
              "numerical_gradient(lambda a: (f(a) * dy).sum(), a) in float64, and rel_error(numerical, yours), "
              "below 1e-7 when right.")

# linear_backward, x [2, 3, 5], W [4, 5], b [4], dy [2, 3, 4]: W is not square, so a dW not transposed has
# the wrong shape, and x has two leading axes, so a bias gradient summed over the first one only does too.
_LINEAR_BACKWARD_SYMPTOMS = (
    Symptom("dW transposed? it has W's shape [out, in]: dyᵀ x, the rows of dy and x summed over, not xᵀ dy",
            lambda x, mine, ref: np.shape(mine["dweight"]) == ref["dweight"].shape[::-1], shapes=True),
    Symptom("db summed over the first axis only? b was added to every row, along every leading axis of x: sum "
            "dy over all axes but the last",
            lambda x, mine, ref: np.shape(mine["dbias"]) == x["dy"].shape[1:], shapes=True),
    Symptom("db is a sum over the rows (b was added to each), not a mean",
            lambda x, mine, ref: _close(np.asarray(mine["dbias"]) * (x["dy"].size // x["dy"].shape[-1]),
                                        ref["dbias"])),
)
_LINEAR_BACKWARD_SHAPES = OnError(("matmul", "not aligned"), "a matrix product of mismatched shapes: dx = dy W is "
                                  "[..., out] times W [out, in]; dW = dyᵀ x is [out, N] times [N, in], with the "
                                  "leading axes of x and dy flattened into N rows")

# layer_norm_backward, x [6, 3, 16] of rows of std 1e-3 … 100 (as layer_norm's), dy [6, 3, 16] of std 1.
# dx is 1/σ times dy's size: 300 on the std 1e-3 rows, 1e-2 on the std 100 ones; each case is graded on
# its own scale. Each stored mistake leaves out one term of the right dx (tests/make_snapshots.py).
_LAYER_NORM_BACKWARD_CASES = (
    Case("std 1e-3 row where eps dominates", "dx", (_[0],), None, "this row's variance (1e-6) is below eps (1e-5), "
         "so it tests eps: σ = sqrt(var + eps), recomputed as the forward does",
         lambda x, mine, ref: _close(mine["dx"][3:], ref["dx"][3:], 1e-4)),
    Case("std 1e-2 row (eps is 10% of the variance)", "dx", (_[1],)),
    Case("rows of std 0.1 to 100", "dx"),
    Case("weight gradient", "dweight"),
    Case("bias gradient", "dbias"),
)
_LAYER_NORM_BACKWARD_SYMPTOMS = (
    Symptom("the mean's term missing? μ depends on every x of the row: dx = (dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂)) / σ",
            mistake="no_mean_term", outputs=("dx",)),
    Symptom("the variance's term missing? σ depends on every x of the row: dx = (dx̂ − mean(dx̂) − "
            "x̂·mean(dx̂⊙x̂)) / σ", mistake="no_variance_term", outputs=("dx",)),
    Symptom("dx̂ is dy⊙weight: the weight multiplied x̂ on the way in", mistake="no_weight", outputs=("dx",)),
)

# gelu_backward, x [3, 100] as gelu's (a dense grid on [-6, 6] and std 3), dy [3, 100] of std 1.
_GELU_BACKWARD_CASES = tuple(Case(c.label, "dx", c.where) for c in _ACTIVATION_CASES)
_GELU_BACKWARD_SYMPTOMS = (
    Symptom("only Φ(x)? x·Φ(x) is a product: its derivative is Φ(x) + x·φ(x), φ(x) = exp(−x²/2)/√(2π)",
            mistake="no_x_pdf_term", rel=1e-5),
    Symptom("this is the derivative of the tanh approximation; gelu is the exact x·Φ(x)", mistake="tanh_derivative",
            rel=1e-5),
    Symptom("dy not multiplied in? dx is dy times GELU's derivative (the chain rule)",
            lambda x, mine, ref: _close(np.asarray(mine["dx"]) * x["dy"], ref["dx"], 1e-5)),
)

# softmax_backward, scores [2, 3, 4, 7] (attention's [B, H, Sq, Sk]: Sq ≠ Sk), std 3; scores[1] mask keys 5-6
# (finfo.min: probability 0), row (0, 1, 2) is [-1e4, 1e4, 0, …] (one probability 1: gradient 0).
# dx = y ⊙ (g − Σ y⊙g) rounds to a few u of max |g| (about 3); the stored mistake moves it by ~1.
_SOFTMAX_BACKWARD_CASES = (
    Case("rows with masked keys (probability 0)", "dscores", (_[1],), None, "this case tests masked keys: their "
         "probability is 0, so moving their score changes nothing and their gradient is exactly 0"),
    Case("ordinary rows (and a saturated one)", "dscores"),
)


def _rows_sum_to_zero(d, g):
    """Each row of d (along the last axis) sums to 0, to float32 rounding of g's size."""
    d = np.asarray(d, dtype=np.float64)
    return bool(np.abs(d.sum(axis=-1)).max() <= 1e-5 * max(1.0, float(np.abs(g).max())))


_SOFTMAX_BACKWARD_SYMPTOMS = (
    Symptom("Σ y⊙g summed over axis -2 (the Jacobian applied along the wrong axis)? each row of probabilities is "
            "its own softmax: dx = y ⊙ (g − Σ_j y_j g_j), the sum over the row's own entries (axis=-1)",
            mistake="sum_over_axis_-2"),
    Symptom("the rows of your dx do not sum to 0, as the gradient of a softmax's scores must (adding a constant "
            "to a row of scores changes nothing): dx = y ⊙ (g − Σ y⊙g), the sum along the last axis",
            lambda x, mine, ref: not _rows_sum_to_zero(mine["dscores"], x["dprobs"])),
)

# attention_backward: attention's inputs (q [2, 5, 16], k and v [2, 7, 16], 4 heads, batch row 1 masks
# keys 4-6; self-attention of s [2, 6, 16], 2 heads), dcontext and dself of std 1. The masked keys' dk and
# dv are exactly 0. Float32: two short matrix products and softmax_backward, a few u.
_ATTENTION_BACKWARD_CASES = (
    Case("masked keys (row 1: keys 4-6 padded)", "dk", (_[1, 4:],), None, "this case tests the mask: a masked key "
         "has probability 0, so its gradient is exactly 0; recompute the probabilities with the mask"),
    Case("keys", "dk"),
    Case("masked keys (row 1: keys 4-6 padded)", "dv", (_[1, 4:],), None, "this case tests the mask: a masked key "
         "has probability 0, so its gradient is exactly 0; recompute the probabilities with the mask"),
    Case("values", "dv"),
    Case("queries", "dq"),
    Case("self-attention, 2 heads of 8", "self_dq"),
    Case("self-attention, 2 heads of 8", "self_dk"),
    Case("self-attention, 2 heads of 8", "self_dv"),
)


def _grads_scaled(x, mine, ref, power):
    """mine's dq and dk (both attentions) are ref's times sqrt(Dh) ** power, its dv ref's: only the scale wrong."""
    dh = {"": x["q"].shape[-1] // int(x["num_heads"]), "self_": x["s"].shape[-1] // int(x["self_num_heads"])}
    return all(_close(mine[f"{s}d{a}"], ref[f"{s}d{a}"] * (dh[s] ** (0.5 * power) if a in "qk" else 1.0))
               for s in dh for a in "qkv")


_ATTENTION_BACKWARD_SYMPTOMS = (
    Symptom("dq and dk √Dh times too large: the scores were q·kᵀ/√Dh, so the 1/√Dh comes back into dq and dk "
            "(Dh = D / num_heads)", lambda x, mine, ref: _grads_scaled(x, mine, ref, 1)),
    Symptom("dq and dk √Dh times too small: 1/√Dh applied twice? once to dS (or to q and k), not both",
            lambda x, mine, ref: _grads_scaled(x, mine, ref, -1)),
    Symptom("masked keys get a gradient: the probabilities were recomputed without the mask? a masked key has "
            "probability 0, so its dk and dv are 0",
            lambda x, mine, ref: bool(np.abs(mine["dv"][1, 4:]).max() > 1e-6)),
)
_ATTENTION_BACKWARD_SHAPES = OnError(("matmul", "not aligned"), "a matrix product of mismatched shapes: "
                                     "cross-attention has Sq ≠ Sk, so per head dv = Pᵀ dC and dk = dSᵀ q are [Sk, Dh], "
                                     "dq = dS k is [Sq, Dh] (P, dS [Sq, Sk])")

# itm_loss_backward: pooled [4, 256] of std 1, labels [1, 0, -100, 1] (row 2 ignored: 3 rows in the mean).
_ITM_LOSS_BACKWARD_CASES = (
    Case("the ignored row (label -100)", "dlogits", (_[2],), None, "this case tests ignore_index: a row labelled "
         "-100 is not in the loss, so its gradient is exactly 0"),
    Case("labelled rows", "dlogits"),
)


def _kept(x):
    return int((x["labels"] != -100).sum())


_ITM_LOSS_BACKWARD_SYMPTOMS = (
    Symptom("divided by every row? the loss is the mean over the rows that count: divide by the number of labels "
            "that are not ignore_index (-100)",
            lambda x, mine, ref: _close(mine["dlogits"], ref["dlogits"] * _kept(x) / x["labels"].shape[0])),
    Symptom("not divided by the number of rows? the loss is a mean over the rows that count (not ignore_index)",
            lambda x, mine, ref: _close(mine["dlogits"], ref["dlogits"] * _kept(x))),
    Symptom("the sign: dlogits = softmax(logits) − onehot(label) (then divided by the rows that count)",
            lambda x, mine, ref: _close(mine["dlogits"], -ref["dlogits"])),
)

# cross_modal_layer_backward: text [2, 5, 128] (row 1 padded after 3 tokens: the text mask), image [2, 4, 128],
# both of std 0.1 as cross_modal_layer's; dtext, dimage of std 1. Each stream as the model runs it. Earlier
# stages of the backward (the input gradients) first; the weight gradients are sampled (GRAD_STRIDE).
_CROSS_MODAL_BACKWARD_CASES = (
    Case("padded text rows (self_mask)", "text_dx", (_[1],), None, "this case tests the text stream's path back "
         "to x with self_mask: x is the self-attention's queries and its keys and values, so both gradients are "
         "x's (dx = dx_queries + dx_keys_values), plus each block's residual"),
    Case("unpadded text", "text_dx", None, None, "this case tests the path back to x: through the FFN, the "
         "cross-attention (whose queries are the self-attention's output) and the self-attention, where x is "
         "queries and keys/values, each block adding its residual's gradient"),
    Case("the image, keys and values of the text's cross-attention", "text_dother", None, None, "this case tests "
         "the path to `other`: only the cross-attention reads it, as its keys and values"),
    Case("the image stream's input", "image_dx"),
    Case("padded text tokens (cross_mask): exactly 0", "image_dother", (_[1, 3:],), None, "this case tests "
         "cross_mask: the image stream attends to text with padded tokens masked out, so those get no gradient "
         "from it"),
    Case("the text, keys and values of the image's cross-attention", "image_dother"),
)
# The weight gradients, each graded on its own case (its sample's index mapped back to the weight's).
_CROSS_LAYER_PARAMETERS = tuple(
    f"{block}.{name}" for block in ("attention", "crossattention")
    for name in ("self.query.weight", "self.query.bias", "self.key.weight", "self.key.bias", "self.value.weight",
                 "self.value.bias", "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight",
                 "output.LayerNorm.bias")) + ("intermediate.dense.weight", "intermediate.dense.bias",
                                              "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight",
                                              "output.LayerNorm.bias")
_CROSS_MODAL_BACKWARD_CASES += tuple(
    Case(f"every {GRAD_STRIDE}th row and column: index (i, j) is row {GRAD_STRIDE}·i, column {GRAD_STRIDE}·j"
         if name.endswith(".weight") and "LayerNorm" not in name else
         f"every {GRAD_STRIDE}th entry: index (i,) is entry {GRAD_STRIDE}·i", f"{side}.{name}")
    for side in ("text", "image") for name in _CROSS_LAYER_PARAMETERS)
_CROSS_MODAL_BACKWARD_SYMPTOMS = (
    Symptom("cross_mask not applied in the backward? the padded text tokens are masked keys of the image stream's "
            "cross-attention: recompute it with cross_mask, and they get no gradient",
            lambda x, mine, ref: bool(np.abs(mine["image_dother"][1, 3:]).max() > 1e-6)),
)

_TORCH = "torch"
_HF = "transformers"

COMPONENTS = (
    Component("linear", ("ops.linear",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.functional.linear",
              "y = x W^T + b with torch's (out, in) weight layout, with and without bias", _linear,
              {"ops.linear": 'p = {"weight": [out, in], "bias": [out]}, so y = x @ Wᵀ (not x @ W); a p without "bias" '
                             'means no bias (both are graded); any leading axes of x are kept ([B, S, in] -> '
                             '[B, S, out]).'},
              on_error=(_MATMUL_SHAPES,)),
    Component("layer_norm", ("ops.layer_norm",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.LayerNorm",
              "LayerNorm with the biased variance and eps, on rows of very different scales", _layer_norm,
              {"ops.layer_norm": 'p = {"weight": [D], "bias": [D]}, and eps as an argument (never a constant: it '
                                 'comes from the config). Graded on rows of std 1e-3 (where eps dominates the '
                                 'variance) up to 100.'}, _LAYER_NORM_CASES, _LAYER_NORM_SYMPTOMS),
    Component("gelu", ("ops.gelu",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.nn.functional.gelu (exact, erf)",
              "exact GELU through erf (the tanh approximation fails)", _gelu,
              {"ops.gelu": "erf(x) above is given (NumPy has none)."}, _ACTIVATION_CASES, _GELU_SYMPTOMS),
    Component("quick_gelu", ("ops.quick_gelu",), (), PRIMITIVE_TOL,
              f"{_HF}: activations.QuickGELUActivation", "QuickGELU, x * sigmoid(1.702 x)", _quick_gelu,
              cases=_ACTIVATION_CASES, symptoms=_QUICK_GELU_SYMPTOMS),
    Component("softmax", ("ops.softmax",), (), PRIMITIVE_TOL, f"{_TORCH}: torch.softmax(dim=-1)",
              "softmax over the last axis, stable for large and for masked (finfo.min) scores", _softmax,
              {"ops.softmax": "x [..., S]: always the last axis (there is no axis argument). Graded on rows with a "
                              "+1000 or a ±1e4 score and rows with masked (finfo.min) entries, which get "
                              "probability 0 while the rest sum to 1."},
              cases=_SOFTMAX_CASES, symptoms=_SOFTMAX_SYMPTOMS),
    Component("attention", ("ops.attention",), ("softmax",), PRIMITIVE_TOL,
              f"{_HF}: BridgeTower's eager_attention_forward",
              "multi-head scaled dot-product attention with a padding mask", _attention,
              {"ops.attention": "q, k, v of num_heads heads: head h is the contiguous slice of features "
                                "h·Dh … (h+1)·Dh − 1 (Dh = D / num_heads) of q, k and v, and of the context; "
                                "scores q·kᵀ / sqrt(Dh); the mask (0 or finfo.min) added to the scores before the "
                                "softmax over the keys. Graded on cross-attention (Sq ≠ Sk) and self-attention."},
              cases=_ATTENTION_CASES, symptoms=_ATTENTION_SYMPTOMS),
    Component("patchify", ("vision.patchify",), (), PRIMITIVE_TOL,
              f"{_TORCH}: Tensor.unfold (patches) and torch.nn.functional.conv2d (embeddings)",
              "cut images into P x P patches; the patch conv as one matrix product", _patchify,
              {"vision.patchify": "pixels [B, C, H, W] and P: patch n = row·(W // P) + column, row-major over the "
                                  "grid; within a patch, entry (c·P + i)·P + j is channel c, pixel row i, column j "
                                  "(the kernel's [C, P, P] order, not channel-last). Graded on an 18×13 image in "
                                  "4×4 patches (2 rows and 1 column dropped), and through patch_embed, which runs "
                                  "on your patches."},
              cases=_PATCHIFY_CASES, symptoms=_PATCHIFY_SYMPTOMS),
    Component("vision_block", ("vision.vision_block",), ("linear", "layer_norm", "quick_gelu", "attention"),
              LAYER_TOL, f"{_HF}: BridgeTowerResidualAttention (resblocks.0 of the tiny model)",
              "one pre-LN CLIP ViT block: packed q/k/v, QuickGELU MLP", _vision_block,
              {"vision.vision_block": 'p = {"ln_1", "attn": {"in_proj_weight" [3·Dv, Dv], "in_proj_bias" [3·Dv], '
                                      '"out_proj"}, "ln_2", "mlp": {"c_fc", "c_proj"}}; '
                                      'heads: cfg.num_attention_heads. q, k, v = ln_1(x) times the packed in_proj '
                                      'rows [W_q; W_k; W_v], in that order; no mask; QuickGELU (not GELU) in the '
                                      'MLP; both LayerNorms with cfg.layer_norm_eps.'}, _VISION_BLOCK_CASES),
    Component("position_ids", ("text.position_ids",), (), EXACT,
              f"{_HF}: BridgeTowerTextEmbeddings.create_position_ids_from_input_ids",
              "RoBERTa position ids (from 2; pads keep the pad id), right-, left- and inner padding", _position_ids,
              {"text.position_ids": "input_ids [B, T] int: a pad anywhere keeps pad_token_id and does not advance "
                                    "the count. Graded exactly (integers) on no padding, right, left and inner "
                                    "padding."},
              cases=_POSITION_CASES, symptoms=_POSITION_SYMPTOMS),
    Component("text_embed", ("text.text_embed",), ("position_ids", "layer_norm"), PRIMITIVE_TOL,
              f"{_HF}: BridgeTowerTextEmbeddings (text_model.embeddings of the tiny model)",
              "word + token-type + position embeddings, then LayerNorm", _text_embed,
              {"text.text_embed": 'p = {"word_embeddings", "position_embeddings", "token_type_embeddings", '
                                  '"LayerNorm"}, each table under "weight"; pad id and eps are in cfg. Token type '
                                  '0 for every token (row 0 of token_type_embeddings); position rows at '
                                  'position_ids(input_ids, cfg.pad_token_id), so pads take row pad_token_id; '
                                  'LayerNorm with cfg.layer_norm_eps. Graded on the four paddings of position_ids.'},
              _TEXT_EMBED_CASES, _TEXT_EMBED_SYMPTOMS),
    Component("bert_attention", ("text.bert_attention",), ("linear", "attention", "layer_norm"), LAYER_TOL,
              f"{_HF}: BridgeTowerAttention (text layer 0's self-attention)",
              "a RoBERTa attention block with its post-LN residual, padded batch", _bert_attention,
              {"text.bert_attention": 'p = {"self": {"query", "key", "value"}, "output": {"dense", "LayerNorm"}}: q '
                                      'from x, k and v from kv, each through its own Linear; the residual adds x '
                                      '(the queries\' input) before the LayerNorm; the mask goes to every head. '
                                      'Graded on a padded batch.'},
              _BERT_ATTENTION_CASES, _BERT_ATTENTION_SYMPTOMS),
    Component("bpe", ("tokenizer.bpe",), (), EXACT,
              "tokenizers: models.BPE.tokenize, merges trained by tokenizers' BpeTrainer on a small corpus",
              "the byte-pair merge loop of one word", _bpe,
              {"tokenizer.bpe": "word: one pre-tokenised word of byte-level symbols: the lowest rank first (not the "
                                "highest); all occurrences of that pair, left to right without overlap (a a a → aa "
                                "a); repeated until no adjacent pair is in ranks (not one merge). Graded exactly, "
                                "word by word, on seen and unseen words, repeated letters, multi-byte characters "
                                "(é, 😺), digits, spaces."},
              cases=_BPE_CASES, symptoms=_BPE_SYMPTOMS),
    Component("link_tower", ("bridge.link_tower",), ("layer_norm",), PRIMITIVE_TOL,
              f"{_HF}: BridgeTowerLinkTower, one per link_tower_type",
              "the bridge layer: LN(h + c), scaled_add and interpolate", _link_tower,
              {"bridge.link_tower": 'p = {"LayerNorm"}, plus the 0-d "scaled_factor" or "beta" for those types. '
                                   'Graded on each of the three types.'},
              symptoms=_LINK_TOWER_SYMPTOMS),
    Component("cross_modal_layer", ("bridge.cross_modal_layer",), ("bert_attention", "linear", "gelu", "layer_norm"),
              LAYER_TOL, f"{_HF}: BridgeTowerBertCrossLayer (cross_modal_{{text,image}}_layers.0)",
              "self-attention, co-attention to the other stream, FFN; both streams", _cross_modal_layer,
              {"bridge.cross_modal_layer": 'p = {"attention", "crossattention", "intermediate", "output"}: '
                                           'text.bert_attention and text.bert_ffn take these subtrees: '
                                           'bert_attention(p["attention"]) of `queries` on x with self_mask (this '
                                           'stream\'s keys), then bert_attention(p["crossattention"]) with that output '
                                           'as queries and `other` as keys and values, with cross_mask (the other '
                                           'stream\'s keys); then bert_ffn. `queries` (given) is x, or with rows=k its '
                                           'first k positions x[:, :k]: the model\'s last layer computes only the '
                                           'rows a head reads (position 0 for ITM), and that position still attends '
                                           'to every position of x (keys and values all of x, not `queries`), so the '
                                           'output is [B, k, D], the full layer\'s first k rows. Graded on both '
                                           'streams: (self_mask, cross_mask) is (text mask, None) for the text stream '
                                           'and (None, text mask) for the image stream; each with rows=None and '
                                           'rows=1.'},
              _CROSS_MODAL_CASES, _CROSS_MODAL_SYMPTOMS, _CROSS_MODAL_ERRORS),
    Component("heads", ("heads.pooler", "heads.itm_logits", "heads.mlm_logits", "heads.contrastive_embedding"),
              ("linear", "layer_norm", "gelu"), LAYER_TOL,
              f"{_HF}: BridgeTowerPooler, BridgeTowerITMHead, BridgeTowerMLMHead, BridgeTowerContrastiveHead",
              "poolers, ITM, MLM and the three contrastive embeddings", _heads,
              {"heads.pooler": 'p = {"dense"} (cross_modal_text_pooler or cross_modal_image_pooler): features[:, 0] '
                               'only (not a mean), then p["dense"], then tanh. Graded as the model uses it: the text '
                               'and the image pooler concatenated, text first, into the [B, 2D] pooled vector.',
               "heads.itm_logits": 'p = {"fc"} (itm_score), a Linear with its bias, on the concatenated pooled '
                                   'vector [text pooled, image pooled]; no activation.',
               "heads.mlm_logits": 'p = {"transform": {"dense", "LayerNorm"}, "decoder": {"weight"}, "bias"}: '
                                   'transform.dense, then exact GELU, then transform.LayerNorm with eps, in that '
                                   'order; then times decoder.weight [V, D] transposed (the decoder has no bias) '
                                   'plus the separate p["bias"] [V].',
               "heads.contrastive_embedding": 'p = {"fc"} (itc_text_head, itc_image_head or itc_cross_modal_head): '
                                              'p["fc"] with its bias, then L2-normalised along the last axis (each '
                                              'row of length 1, ops.l2_normalize). Graded on each of the three '
                                              'heads, on its stored input.'},
              symptoms=_HEADS_SYMPTOMS, on_error=(_MATMUL_SHAPES,)),
    Component("bridgetower", ("bridge.to_cross_space", "model.cross_modal"),
              ("patchify", "vision_block", "text_embed", "bert_attention", "link_tower", "cross_modal_layer", "heads",
               "linear", "layer_norm"), MODEL_TOL, f"{_HF}: BridgeTowerModel, via tests/reference.py",
              "the full forward pass: towers, bridges, cross-modal stack, poolers; and the rows each head reads",
              _bridgetower,
              {"bridge.to_cross_space": 'p: the whole tree: for the image only, first p["vision_model"]["visual"]'
                                        '["ln_post"] (eps cfg.vision_config.layer_norm_eps); then the side\'s '
                                        'p["cross_modal_{side}_transform"] (a list of Linears when not '
                                        'cfg.share_cross_modal_transformer_layers); then + row TOKEN_TYPE[side] '
                                        '(text 0, image 1) of p["token_type_embeddings"]["weight"] [2, D]. Graded '
                                        'through the full model.',
               "model.cross_modal": "One step of the cross-modal loop (the diagram at the top of model.py): "
                                    "h_text, h_image are tower layer first + l in the cross-modal space. Cross-modal "
                                    "layer 0 reads LN(h) (cross_modal_{text,image}_layernorm), layer l > 0 link "
                                    "tower l − 1 of h and layer l − 1's output; both streams read this layer's "
                                    "inputs; (self_mask, cross_mask) is (mask, None) for the text stream, (None, "
                                    "mask) for the image stream. `read` says which rows of the last layer a head "
                                    "reads (model.READS): \"all\" every row; \"first\" position 0 of both streams "
                                    "(the poolers: ITM, ITC); \"text\" every text row and position 0 of the image "
                                    "(MLM). x_rows / y_rows (given, from _rows_read) are the text (x) and the image "
                                    "(y) stream's rows: None (every row) or 1 (position 0), and 1 only in the last "
                                    "layer; pass x_rows on as the text layer's rows and y_rows as the image "
                                    "layer's, and cut nothing else (x_in and y_in stay whole: they are the keys "
                                    "and values). Graded: text_features, image_features and pooler_output of a "
                                    "padded batch with read=\"all\" (model.bridgetower), then with read=\"first\" "
                                    "and read=\"text\", whose outputs hold only the rows read ([B, 1, D] for "
                                    "position 0): the full forward's rows."},
              _BRIDGETOWER_CASES, _BRIDGETOWER_SYMPTOMS, _BRIDGETOWER_ERRORS),
)

# The backward pass (week 5): each gradient after the forward it differentiates.
COMPONENTS += (
    Component("linear_backward", ("backward.ops.linear_backward",), (), GRAD_PRIMITIVE_TOL,
              f"{_TORCH}: autograd of torch.nn.functional.linear (float64)",
              "the gradients of a Linear: dx, dW, db, with and without bias", _linear_backward,
              {"backward.ops.linear_backward": 'x [..., in] with any leading axes (flatten them into rows), '
                                               'p["weight"] [out, in] as stored; return dW of W\'s shape and, only '
                                               'when p has "bias", db [out]. Graded on x [2, 3, 5] with and without '
                                               'bias.' + _GRADCHECK},
              symptoms=_LINEAR_BACKWARD_SYMPTOMS, on_error=(_LINEAR_BACKWARD_SHAPES,)),
    Component("layer_norm_backward", ("backward.ops.layer_norm_backward",), (), GRAD_PRIMITIVE_TOL,
              f"{_TORCH}: autograd of torch.nn.functional.layer_norm (float64)",
              "the gradients of LayerNorm: dx (the mean and the variance depend on x too), dweight, dbias",
              _layer_norm_backward,
              {"backward.ops.layer_norm_backward": "recompute x̂ and σ = sqrt(var + eps) from x, as the forward does "
                                                   "(biased variance, the eps argument inside the root). Graded on "
                                                   "layer_norm's rows of std 1e-3 (where eps dominates) up to 100."
                                                   + _GRADCHECK},
              _LAYER_NORM_BACKWARD_CASES, _LAYER_NORM_BACKWARD_SYMPTOMS),
    Component("gelu_backward", ("backward.ops.gelu_backward",), (), GRAD_PRIMITIVE_TOL,
              f"{_TORCH}: autograd of torch.nn.functional.gelu (exact, float64)",
              "the derivative of the exact GELU, times dy", _gelu_backward,
              {"backward.ops.gelu_backward": "Φ(x) = 0.5·(1 + erf(x/√2)) with ops.erf (given, the forward's own). "
                                             "Graded on gelu's inputs, a dense grid on [-6, 6] and std 3." + _GRADCHECK
                                             + " (ops.erf is float32: gradcheck with np.vectorize(math.erf).)"},
              _GELU_BACKWARD_CASES, _GELU_BACKWARD_SYMPTOMS),
    Component("softmax_backward", ("backward.ops.softmax_backward",), ("softmax",), GRAD_PRIMITIVE_TOL,
              f"{_TORCH}: autograd of torch.softmax(dim=-1) (float64)",
              "the gradient of the scores from the probabilities y and their gradient g, row by row", _softmax_backward,
              {"backward.ops.softmax_backward": "probs: the forward's output y [..., S] (softmax along the last "
                                                "axis), dprobs its gradient g: write dx from y and g (no exp). Graded "
                                                "on attention-shaped [B, H, Sq, Sk] rows (Sq ≠ Sk), with masked keys "
                                                "(probability 0) and a saturated row, y from your softmax."
                                                + _GRADCHECK},
              _SOFTMAX_BACKWARD_CASES, _SOFTMAX_BACKWARD_SYMPTOMS),
    Component("attention_backward", ("backward.ops.attention_backward",), ("attention", "softmax_backward"),
              GRAD_PRIMITIVE_TOL, f"{_HF}: autograd of BridgeTower's eager_attention_forward (float64)",
              "the gradients of multi-head attention's q, k and v, with a padding mask", _attention_backward,
              {"backward.ops.attention_backward": "recompute the probabilities with ops.attention (the mask "
                                                  "included); heads as the forward's (contiguous slices of Dh = D / "
                                                  "num_heads); softmax_backward is yours. Graded on cross-attention "
                                                  "(Sq ≠ Sk, padded keys) and self-attention (q, k, v one array, "
                                                  "their three gradients graded apart)." + _GRADCHECK},
              _ATTENTION_BACKWARD_CASES, _ATTENTION_BACKWARD_SYMPTOMS, (_ATTENTION_BACKWARD_SHAPES,)),
    Component("itm_loss_backward", ("backward.ops.cross_entropy_backward", "backward.heads.itm_logits_backward"),
              ("linear", "softmax", "linear_backward"), GRAD_PRIMITIVE_TOL,
              f"{_HF}: autograd of BridgeTowerITMHead and torch.nn.functional.cross_entropy (float64)",
              "the ITM head's loss, backward: cross-entropy over its two logits (ignore_index), then its Linear",
              _itm_loss_backward,
              {"backward.ops.cross_entropy_backward": "logits [N, K], labels [N] int; rows labelled ignore_index "
                                                      "(-100) are not in the loss, which is the mean over the others. "
                                                      "ops.softmax (your week-1 softmax) is there. Graded through the "
                                                      "ITM head: logits = linear(pooled, itm_score.fc) of 4 pairs, one "
                                                      "labelled -100." + _GRADCHECK,
               "backward.heads.itm_logits_backward": 'p = {"fc"} (itm_score): the head is one Linear, so this is '
                                                     'linear_backward, with the gradients under "fc".' + _GRADCHECK},
              _ITM_LOSS_BACKWARD_CASES, _ITM_LOSS_BACKWARD_SYMPTOMS),
    Component("cross_modal_layer_backward", ("backward.text.bert_attention_backward", "backward.text.bert_ffn_backward",
                                             "backward.bridge.cross_modal_layer_backward"),
              ("bert_attention", "linear", "attention", "gelu", "linear_backward", "layer_norm_backward",
               "gelu_backward", "attention_backward"), GRAD_LAYER_TOL,
              f"{_HF}: autograd of BridgeTowerBertCrossLayer (cross_modal_{{text,image}}_layers.0, float64)",
              "a whole cross-modal layer's backward, both streams with their masks (weight gradients sampled)",
              _cross_modal_layer_backward,
              {"backward.text.bert_attention_backward": 'p = {"self": {"query", "key", "value"}, "output": {"dense", '
                                                        '"LayerNorm"}}; the forward is LN(dense(attention(query(x), '
                                                        'key(kv), value(kv))) + x): recompute its intermediates with '
                                                        'the forward functions, then go back line by line.'
                                                        + _GRADCHECK,
               "backward.text.bert_ffn_backward": 'p = {"intermediate": {"dense"}, "output": {"dense", "LayerNorm"}}; '
                                                  'the forward is LN(output.dense(gelu(intermediate.dense(x))) + x).'
                                                  + _GRADCHECK,
               "backward.bridge.cross_modal_layer_backward": "the forward: a = bert_attention(p[\"attention\"]) of x "
                                                            "on x with self_mask, c = bert_attention("
                                                            "p[\"crossattention\"]) of a on `other` with cross_mask, "
                                                            "out = bert_ffn(p, c); recompute a and c, then go back: "
                                                            "FFN, cross-attention, self-attention. Graded on both "
                                                            "streams as the model runs them ((text mask, None) for "
                                                            "the text, (None, text mask) for the image); the weight "
                                                            f"gradients on every {GRAD_STRIDE}th row and column."
                                                            + _GRADCHECK},
              _CROSS_MODAL_BACKWARD_CASES, _CROSS_MODAL_BACKWARD_SYMPTOMS),
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

# Five handouts (`build --week N`), smallest first. Each week's components build only on that
# week's and earlier weeks' (tests/test_course.py checks it), so week N's handout runs on the
# released solutions of weeks 1 … N-1 and nothing else.
WEEKS = {
    1: ("linear", "layer_norm", "gelu", "quick_gelu", "softmax", "attention"),  # primitives
    2: ("bpe", "position_ids", "text_embed", "patchify"),  # tokens and pixels
    3: ("vision_block", "bert_attention"),  # the tower layers
    4: ("link_tower", "cross_modal_layer", "heads", "bridgetower"),  # the bridge
    5: ("linear_backward", "layer_norm_backward", "gelu_backward", "softmax_backward", "attention_backward",
        "itm_loss_backward", "cross_modal_layer_backward"),  # the backward pass
}


def week_of(name):
    """The week (WEEKS) in which component `name` is assigned."""
    return next(week for week, names in WEEKS.items() if name in names)
