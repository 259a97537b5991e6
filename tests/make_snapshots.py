"""Regenerate minibridge/assignments/snapshots.npz: every component's inputs and what the reference
computes from them.

    python tests/make_snapshots.py [--out PATH]        # needs the `reference` extra

The reference is torch and transformers wherever they have the piece (for the layers, the
BridgeTower submodules loaded with `components.tiny_weights`; for the full model, the parity
tooling of reference.py beside this file), and the `tokenizers` library for the BPE merge loop. Nothing here
is minibridge's own output, so the snapshots can catch a mistake that minibridge shares.

Each component has a maker (seeded inputs, numpy) and a reference (outputs, torch); `references`
recomputes the outputs from stored inputs, which is how tests check the committed file.

Some components also have *stored mistakes* (`mistakes_<component>`): what a typical mistake computes
from the same inputs, each named by a components.Symptom whose hint the grader gives when a student's
outputs match it. They are computed here, with the reference's modules where it has the piece, so
that the grader (which ships in every handout) never computes a component, right or wrong: a handout
holds no solution, and a hint never depends on the student's own files. `mistake_outputs` recomputes
them from stored inputs, as `references` does the outputs.
"""

import argparse
import copy
import json
from pathlib import Path

import numpy as np

import reference
from minibridge.assignments.components import COMPONENTS, config_json, sampled_gradients, tiny_weights, weights_checksum
from minibridge.assignments.grade import SNAPSHOTS
from minibridge.config import TINY

F32 = np.float32
SEED = 6  # inputs: np.random.RandomState(SEED + position in COMPONENTS)

# A small corpus for the BPE merges (tokenizers' trainer learns them), and the words to split:
# seen and unseen words, repeated letters (merges are left to right, non-overlapping), digits,
# accents and an emoji (several UTF-8 bytes each), runs of spaces.
CORPUS = [
    "a man riding a wave on top of a surfboard", "two cats laying on a pink blanket with remotes",
    "a bunch of cats laying on a tower", "a plate of food with broccoli and carrots",
    "a woman holding an umbrella in the rain", "a train traveling down the tracks near a station",
    "the giraffe is standing next to the tall trees", "a red double decker bus driving down the street",
    "people are flying kites on the beach on a windy day", "aaaa aaaa aa bbbbbb laying lay lays layer",
]
WORDS_FROM = [
    "a man riding a wave on top of a surfboard", "two cats laying lazily on a pinker blanket",
    "aaaaaaa aaa bbbbbbb", "unbelievably surfboarders 2024 1999", "naïve café déjà vu 😺",
    "  spaces   and\ttabs\n", "Capitalised Words, punctuation!? (brackets) it's we're",
]


# ---- inputs and reference outputs, one pair of functions per component ----------------------------------


def _normal(rng, *shape, std=1.0):
    return (rng.standard_normal(shape) * std).astype(F32)


def _padding_mask(lengths, T):
    return (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)  # [B, T] 1 = token


def _additive(mask):
    """[B, S] 1/0 -> [B, 1, 1, S] 0 / finfo.min, as transformers' get_extended_attention_mask."""
    return ((1.0 - mask[:, None, None, :].astype(F32)) * np.finfo(F32).min).astype(F32)


def make_linear(rng):
    return {"x": _normal(rng, 2, 3, 5), "weight": _normal(rng, 4, 5), "bias": _normal(rng, 4)}


def ref_linear(x, t, ctx):
    F = t.nn.functional
    return {"with_bias": F.linear(t.tensor(x["x"]), t.tensor(x["weight"]), t.tensor(x["bias"])),
            "without_bias": F.linear(t.tensor(x["x"]), t.tensor(x["weight"]))}


def make_layer_norm(rng):
    # Rows of very different scales: with std 1e-3 the variance (1e-6) is far below eps (1e-5),
    # so a LayerNorm that forgets eps, or adds it after the square root, is visibly wrong.
    scales = np.array([1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0], dtype=F32)[:, None, None]
    # The offsets scale with the rows: float32 cannot centre values of 1 ± 1e-3 to 1e-5 relative.
    x = (_normal(rng, 6, 3, 16) + _normal(rng, 6, 1, 1)) * scales
    return {"x": x, "weight": 1 + _normal(rng, 16, std=0.1), "bias": _normal(rng, 16, std=0.1),
            "eps": np.array(1e-5)}


def ref_layer_norm(x, t, ctx):
    ln = t.nn.LayerNorm(x["x"].shape[-1], eps=float(x["eps"]))
    with t.no_grad():
        ln.weight.copy_(t.tensor(x["weight"]))
        ln.bias.copy_(t.tensor(x["bias"]))
        return {"y": ln(t.tensor(x["x"]))}


def make_gelu(rng):
    # The whole range where GELU bends (|x| < 6), densely, plus a random sample: tanh-GELU is off by
    # up to 4.7e-4 near |x| = 2.7 (8e-5 of the largest output, 6), well beyond the tolerance.
    return {"x": np.concatenate([np.linspace(-6, 6, 241), 3 * rng.standard_normal(59)]).astype(F32).reshape(3, 100)}


def ref_gelu(x, t, ctx):
    return {"y": t.nn.functional.gelu(t.tensor(x["x"]), approximate="none")}


def make_quick_gelu(rng):
    return make_gelu(rng)


def ref_quick_gelu(x, t, ctx):
    from transformers.activations import QuickGELUActivation

    return {"y": QuickGELUActivation()(t.tensor(x["x"]))}


def make_softmax(rng):
    x = _normal(rng, 3, 4, 7, std=3.0)
    x[0, 0] += 1000.0  # exp(1000) overflows: the max must be subtracted first
    x[1, :, 5:] = np.finfo(F32).min  # masked keys, as attention's padding mask makes them
    x[2, 1] = np.array([-1e4, 1e4, 0, 0, 0, 0, 0], dtype=F32)  # one dominant entry
    return {"x": x}


def ref_softmax(x, t, ctx):
    return {"y": t.softmax(t.tensor(x["x"]), dim=-1)}


def make_attention(rng):
    # Cross-attention shapes (Sq != Sk), 4 heads, the second row padded; then unmasked self-attention.
    B, Sq, Sk, D = 2, 5, 7, 16
    return {"q": _normal(rng, B, Sq, D), "k": _normal(rng, B, Sk, D), "v": _normal(rng, B, Sk, D),
            "num_heads": np.array(4), "mask": _additive(_padding_mask([7, 4], Sk)),
            "s": _normal(rng, B, 6, D), "self_num_heads": np.array(2)}


def ref_attention(x, t, ctx):
    from transformers.models.bridgetower.modeling_bridgetower import eager_attention_forward

    def run(q, k, v, heads, mask):
        def split(a):  # [B, S, D] -> [B, H, S, Dh]
            return t.tensor(a).reshape(a.shape[0], a.shape[1], heads, -1).transpose(1, 2)

        out, probs = eager_attention_forward(t.nn.Module().eval(), split(q), split(k), split(v),
                                             None if mask is None else t.tensor(mask))
        return out.reshape(q.shape), probs  # out is [B, Sq, H, Dh] -> [B, Sq, D]

    context, probs = run(x["q"], x["k"], x["v"], int(x["num_heads"]), x["mask"])
    self_context, self_probs = run(x["s"], x["s"], x["s"], int(x["self_num_heads"]), None)
    return {"context": context, "probs": probs, "self_context": self_context, "self_probs": self_probs}


def make_patchify(rng):
    # 18×13 pixels in 4-pixel patches: the last 2 rows and 1 column are dropped, as the conv drops them.
    return {"pixels": _normal(rng, 2, 3, 18, 13), "patch_size": np.array(4), "kernel": _normal(rng, 8, 3, 4, 4)}


def ref_patchify(x, t, ctx):
    P = int(x["patch_size"])
    px = t.tensor(x["pixels"])
    B, C = px.shape[:2]
    grid = px.unfold(2, P, P).unfold(3, P, P)  # [B, C, gh, gw, P, P]
    patches = grid.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * P * P)  # row-major grid, channel-major rows
    conv = t.nn.functional.conv2d(px, t.tensor(x["kernel"]), stride=P)  # [B, Dv, gh, gw]
    return {"patches": patches, "embeddings": conv.flatten(2).transpose(1, 2)}


def make_vision_block(rng):
    # std 0.1: the residual stream is small, so ln_1 and ln_2 see a variance where eps matters.
    vc = TINY["vision_config"]
    tokens = (vc["image_size"] // vc["patch_size"]) ** 2 + 1
    return {"x": _normal(rng, 2, tokens, vc["hidden_size"], std=0.1)}


def ref_vision_block(x, t, ctx):
    block = ctx["model"].vision_model.visual.transformer.resblocks[0]
    h = t.tensor(x["x"]).transpose(0, 1)  # the reference runs this tower sequence-first: [L, B, Dv]
    out = block(h).transpose(0, 1)
    hn = block.ln_1(h)
    probs = block.attn(hn, hn, hn, need_weights=True, average_attn_weights=False)[1]  # [B, H, L, L]
    return {"x": out, "probs": probs}


def make_position_ids(rng):
    # No padding, right padding, left padding, and pads in the middle (RoBERTa skips them all).
    ids = np.array([[0, 7, 8, 9, 10, 11, 2, 5],
                    [0, 7, 8, 2, 1, 1, 1, 1],
                    [1, 1, 1, 0, 7, 8, 9, 2],
                    [0, 7, 1, 8, 1, 1, 9, 2]], dtype=np.int64)
    return {"input_ids": ids, "pad_token_id": np.array(1)}


def ref_position_ids(x, t, ctx):
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerTextEmbeddings

    return {"position_ids": BridgeTowerTextEmbeddings.create_position_ids_from_input_ids(
        t.tensor(x["input_ids"]), int(x["pad_token_id"]))}


def make_text_embed(rng):
    ids = make_position_ids(rng)["input_ids"].copy()
    ids[0, 1:6] = rng.randint(3, TINY["text_config"]["vocab_size"], size=5)
    return {"input_ids": ids}


def ref_text_embed(x, t, ctx):
    return {"embeddings": ctx["model"].text_model.embeddings(input_ids=t.tensor(x["input_ids"]))}


def make_bert_attention(rng):
    D = TINY["hidden_size"]
    return {"x": _normal(rng, 3, 6, D, std=0.1), "mask": _additive(_padding_mask([6, 3, 5], 6))}


def ref_bert_attention(x, t, ctx):
    att = ctx["model"].text_model.encoder.layer[0].attention
    out, probs = att(t.tensor(x["x"]), attention_mask=t.tensor(x["mask"]))
    return {"out": out, "probs": probs}


def make_bpe(rng):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + 150, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    merges = [m.split(" ") if isinstance(m, str) else m for m in json.loads(tok.to_str())["model"]["merges"]]
    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = [w for text in WORDS_FROM for w, _ in split.pre_tokenize_str(text)]
    return {"merges": np.array(merges, dtype=str), "words": np.array(words, dtype=str)}


def ref_bpe(x, t, ctx):
    from tokenizers import models, pre_tokenizers

    merges = [tuple(m) for m in x["merges"].tolist()]
    symbols = sorted(set(pre_tokenizers.ByteLevel.alphabet()) | {a + b for a, b in merges})
    bpe = models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=merges)
    return {"tokens": np.array([" ".join(tok.value for tok in bpe.tokenize(w)) for w in x["words"].tolist()])}


def make_link_tower(rng):
    D = TINY["hidden_size"]
    return {"h": _normal(rng, 2, 5, D, std=0.1), "c": _normal(rng, 2, 5, D, std=0.1),
            "ln_weight": 1 + _normal(rng, D, std=0.1), "ln_bias": _normal(rng, D, std=0.1),
            "scaled_factor": np.array(1.3, dtype=F32), "beta": np.array(0.3, dtype=F32), "eps": np.array(1e-5)}


def ref_link_tower(x, t, ctx):
    from transformers import BridgeTowerConfig
    from transformers.models.bridgetower.modeling_bridgetower import BridgeTowerLinkTower

    out = {}
    for kind in ("add", "scaled_add", "interpolate"):
        link = BridgeTowerLinkTower(BridgeTowerConfig(hidden_size=x["h"].shape[-1], link_tower_type=kind,
                                                      layer_norm_eps=float(x["eps"])))
        with t.no_grad():
            link.LayerNorm.weight.copy_(t.tensor(x["ln_weight"]))
            link.LayerNorm.bias.copy_(t.tensor(x["ln_bias"]))
            if kind == "scaled_add":
                link.scaled_factor.copy_(t.tensor(x["scaled_factor"]))
            if kind == "interpolate":
                link.beta.copy_(t.tensor(x["beta"]))
        out[kind] = link(t.tensor(x["h"]), t.tensor(x["c"]), None)
    return out


def make_cross_modal_layer(rng):
    D, vc = TINY["hidden_size"], TINY["vision_config"]
    tokens = (vc["image_size"] // vc["patch_size"]) ** 2 + 1
    return {"text": _normal(rng, 2, 6, D, std=0.1), "image": _normal(rng, 2, tokens, D, std=0.1),
            "text_mask": _additive(_padding_mask([6, 4], 6))}


def ref_cross_modal_layer(x, t, ctx):
    m = ctx["model"]
    text, image, mask = t.tensor(x["text"]), t.tensor(x["image"]), t.tensor(x["text_mask"])
    tx, t_self, t_cross = m.cross_modal_text_layers[0](text, image, attention_mask=mask, encoder_attention_mask=None)
    ix, i_self, i_cross = m.cross_modal_image_layers[0](image, text, attention_mask=None, encoder_attention_mask=mask)
    # rows=1 (the last layer for a head that reads position 0): the full layer's position 0. The reference
    # has no such argument; each output row depends on its own query alone, so this is what it computes.
    return {"text": tx, "text_self_probs": t_self, "text_cross_probs": t_cross,
            "image": ix, "image_self_probs": i_self, "image_cross_probs": i_cross,
            "text_first": tx[:, :1], "text_first_self_probs": t_self[:, :, :1],
            "image_first": ix[:, :1], "image_first_self_probs": i_self[:, :, :1]}


def make_heads(rng):
    D, vc = TINY["hidden_size"], TINY["vision_config"]
    tokens = (vc["image_size"] // vc["patch_size"]) ** 2 + 1
    return {"text_features": _normal(rng, 2, 6, D), "image_features": _normal(rng, 2, tokens, D),
            "pooled": _normal(rng, 2, 2 * D), "text_cls": _normal(rng, 2, D), "image_cls": _normal(rng, 2, D)}


def ref_heads(x, t, ctx):
    m, heads = ctx["model"], ctx["heads"]
    text, image, pooled = t.tensor(x["text_features"]), t.tensor(x["image_features"]), t.tensor(x["pooled"])
    normalize = t.nn.functional.normalize
    return {"pooled": t.cat([m.cross_modal_text_pooler(text), m.cross_modal_image_pooler(image)], dim=-1),
            "itm_logits": heads["itm_score"](pooled),
            "mlm_logits": heads["mlm_score"](text),
            "itc_text": normalize(heads["itc_text_head"](t.tensor(x["text_cls"])), dim=-1),
            "itc_image": normalize(heads["itc_image_head"](t.tensor(x["image_cls"])), dim=-1),
            "itc_cross": normalize(heads["itc_cross_modal_head"](pooled), dim=-1)}


def make_bridgetower(rng):
    return reference.make_inputs(TINY, lengths=[7, 4, 6], seed=int(rng.randint(1 << 30)))


def ref_bridgetower(x, t, ctx):
    out = reference.run({"model": ctx["model"]}, {k: np.array(v) for k, v in x.items()}, "model")
    feats = {k: out[k] for k in ("text_features", "image_features", "pooler_output")}
    # The heads' reads (model.READS) keep the rows they read of the same forward: the reference computes
    # every row, and a row of the last layer depends on its own query alone.
    first = {"text_features": feats["text_features"][:, :1], "image_features": feats["image_features"][:, :1],
             "pooler_output": feats["pooler_output"]}  # "first": position 0 of each stream (ITM, ITC)
    mlm = {"text_features": feats["text_features"], "image_features": feats["image_features"][:, :1]}  # "text"
    return {**feats, **{f"read_first.{k}": v for k, v in first.items()},
            **{f"read_text.{k}": v for k, v in mlm.items()}}


# ---- the backward components (week 5): torch autograd in float64 -------------------------------------------
# Each reference runs the forward in float64 (the inputs as given, the modules cast with .double()) and
# asks autograd for the gradients: the exact gradients of the stored float32 inputs, rounded once to
# float32 when stored. A right float32 backward is then off by its own rounding only (components.py's
# GRAD_* tolerances). Gradients of std-1 upstream gradients (dy, dcontext, ...) keep every output of order 1.


def _leaf(t, a):
    """A float64 tensor of array `a` that autograd tracks."""
    return t.tensor(np.asarray(a), dtype=t.float64).requires_grad_()


def _f64(t, a):
    return t.tensor(np.asarray(a), dtype=t.float64)


def _f32(v):
    """A gradient as stored: float32 (the reference's float64 value rounded once)."""
    return v.detach().float()


def make_linear_backward(rng):
    return {**make_linear(rng), "dy": _normal(rng, 2, 3, 4)}


def ref_linear_backward(x, t, ctx):
    F = t.nn.functional
    with t.enable_grad():
        X, W, b = (_leaf(t, x[k]) for k in ("x", "weight", "bias"))
        F.linear(X, W, b).backward(_f64(t, x["dy"]))
        X2, W2 = _leaf(t, x["x"]), _leaf(t, x["weight"])
        F.linear(X2, W2).backward(_f64(t, x["dy"]))
    return {"dx": _f32(X.grad), "dweight": _f32(W.grad), "dbias": _f32(b.grad),
            "dx_without_bias": _f32(X2.grad), "dweight_without_bias": _f32(W2.grad)}


def make_layer_norm_backward(rng):
    return {**make_layer_norm(rng), "dy": _normal(rng, 6, 3, 16)}


def ref_layer_norm_backward(x, t, ctx):
    with t.enable_grad():
        X, w, b = (_leaf(t, x[k]) for k in ("x", "weight", "bias"))
        t.nn.functional.layer_norm(X, (X.shape[-1],), w, b, eps=float(x["eps"])).backward(_f64(t, x["dy"]))
    return {"dx": _f32(X.grad), "dweight": _f32(w.grad), "dbias": _f32(b.grad)}


def make_gelu_backward(rng):
    return {**make_gelu(rng), "dy": _normal(rng, 3, 100)}


def ref_gelu_backward(x, t, ctx):
    with t.enable_grad():
        X = _leaf(t, x["x"])
        t.nn.functional.gelu(X, approximate="none").backward(_f64(t, x["dy"]))
    return {"dx": _f32(X.grad)}


def make_softmax_backward(rng):
    # Attention's shape [B, H, Sq, Sk] with Sq != Sk, so a sum along the wrong axis still broadcasts.
    scores = _normal(rng, 2, 3, 4, 7, std=3.0)
    scores[1, :, :, 5:] = np.finfo(F32).min  # masked keys: probability 0
    scores[0, 1, 2] = np.array([-1e4, 1e4, 0, 0, 0, 0, 0], dtype=F32)  # saturated: probabilities 0 and 1
    return {"scores": scores, "dprobs": _normal(rng, 2, 3, 4, 7)}


def ref_softmax_backward(x, t, ctx):
    with t.enable_grad():
        S = _leaf(t, x["scores"])
        t.softmax(S, dim=-1).backward(_f64(t, x["dprobs"]))
    return {"dscores": _f32(S.grad)}


def make_attention_backward(rng):
    x = make_attention(rng)
    return {**x, "dcontext": _normal(rng, *x["q"].shape), "dself": _normal(rng, *x["s"].shape)}


def ref_attention_backward(x, t, ctx):
    from transformers.models.bridgetower.modeling_bridgetower import eager_attention_forward

    def grads(q, k, v, heads, mask, dcontext):
        def split(a):  # [B, S, D] -> [B, H, S, Dh]
            return a.reshape(a.shape[0], a.shape[1], heads, -1).transpose(1, 2)

        Q, K, V = _leaf(t, q), _leaf(t, k), _leaf(t, v)
        out, _ = eager_attention_forward(t.nn.Module().eval(), split(Q), split(K), split(V),
                                         None if mask is None else _f64(t, mask))
        out.reshape(Q.shape).backward(_f64(t, dcontext))  # out is [B, Sq, H, Dh] -> [B, Sq, D]
        return _f32(Q.grad), _f32(K.grad), _f32(V.grad)

    with t.enable_grad():
        dq, dk, dv = grads(x["q"], x["k"], x["v"], int(x["num_heads"]), x["mask"], x["dcontext"])
        sq, sk, sv = grads(x["s"], x["s"], x["s"], int(x["self_num_heads"]), None, x["dself"])
    return {"dq": dq, "dk": dk, "dv": dv, "self_dq": sq, "self_dk": sk, "self_dv": sv}


def make_itm_loss_backward(rng):
    D = TINY["hidden_size"]
    return {"pooled": _normal(rng, 4, 2 * D), "labels": np.array([1, 0, -100, 1], dtype=np.int64)}


def ref_itm_loss_backward(x, t, ctx):
    head = copy.deepcopy(ctx["heads"]["itm_score"]).double()
    with t.enable_grad():
        pooled = _leaf(t, x["pooled"])
        logits = head(pooled)
        logits.retain_grad()
        t.nn.functional.cross_entropy(logits, t.tensor(x["labels"])).backward()  # ignore_index=-100, the mean
    return {"dlogits": _f32(logits.grad), "dpooled": _f32(pooled.grad), "fc.weight": _f32(head.fc.weight.grad),
            "fc.bias": _f32(head.fc.bias.grad)}


def make_cross_modal_layer_backward(rng):
    D = TINY["hidden_size"]
    return {"text": _normal(rng, 2, 5, D, std=0.1), "image": _normal(rng, 2, 4, D, std=0.1),
            "text_mask": _additive(_padding_mask([5, 3], 5)), "dtext": _normal(rng, 2, 5, D),
            "dimage": _normal(rng, 2, 4, D)}


def ref_cross_modal_layer_backward(x, t, ctx):
    m, mask = ctx["model"], _f64(t, x["text_mask"])
    out = {}
    with t.enable_grad():
        for side, layers, own, other, masks in (("text", m.cross_modal_text_layers, "text", "image", (mask, None)),
                                                ("image", m.cross_modal_image_layers, "image", "text", (None, mask))):
            layer = copy.deepcopy(layers[0]).double()
            h, o = _leaf(t, x[own]), _leaf(t, x[other])
            y = layer(h, o, attention_mask=masks[0], encoder_attention_mask=masks[1])[0]
            y.backward(_f64(t, x[f"d{side}"]))
            grads = {}
            for name, param in layer.named_parameters():  # "attention.self.query.weight", … as the checkpoint's
                *path, last = name.split(".")
                node = grads
                for part in path:
                    node = node.setdefault(part, {})
                node[last] = _f32(param.grad).numpy()
            out.update({f"{side}_dx": _f32(h.grad), f"{side}_dother": _f32(o.grad),
                        **sampled_gradients(grads, f"{side}.")})
    return out


# ---- stored mistakes: what typical mistakes compute, one function per component that has them --------------
# Each returns {mistake: {output: array}} for the mistakes its component's symptoms name (components.Symptom).
# Float mistakes are computed in float64 where the arithmetic is written out here: the exact value of
# the mistake, which a student's float32 version lands within a few u of.


def mistakes_layer_norm(x, t, ctx):
    F = t.nn.functional
    X, w, b, eps = (t.tensor(x[k], dtype=t.float64) for k in ("x", "weight", "bias", "eps"))
    D, eps = X.shape[-1], float(eps)
    c = X - X.mean(-1, keepdim=True)
    var = (c * c).mean(-1, keepdim=True)
    return {"no_eps": {"y": F.layer_norm(X, (D,), w, b, eps=0.0)},
            "eps_outside_root": {"y": c / (var.sqrt() + eps) * w + b},
            "eps_1e-6": {"y": F.layer_norm(X, (D,), w, b, eps=1e-6)},
            "unbiased_variance": {"y": c / (X.var(-1, unbiased=True, keepdim=True) + eps).sqrt() * w + b},
            "no_bias": {"y": F.layer_norm(X, (D,), w, None, eps)},
            "no_weight": {"y": F.layer_norm(X, (D,), None, b, eps)}}


def mistakes_gelu(x, t, ctx):
    from transformers.activations import QuickGELUActivation

    X = t.tensor(x["x"], dtype=t.float64)
    return {"tanh_approximation": {"y": t.nn.functional.gelu(X, approximate="tanh")},
            "quick_gelu": {"y": QuickGELUActivation()(X)}}


def mistakes_quick_gelu(x, t, ctx):
    X = t.tensor(x["x"], dtype=t.float64)
    return {"sigmoid_of_x": {"y": t.nn.functional.silu(X)},
            "exact_gelu": {"y": t.nn.functional.gelu(X, approximate="none")}}


def mistakes_attention(x, t, ctx):
    """Heads interleaved: head h reads features h, h + H, h + 2H, … (a reshape to [.., Dh, H])."""
    from transformers.models.bridgetower.modeling_bridgetower import eager_attention_forward

    s, H = x["s"], int(x["self_num_heads"])
    split = t.tensor(s).reshape(s.shape[0], s.shape[1], -1, H).permute(0, 3, 1, 2)  # [B, S, D] -> [B, H, S, Dh]
    _, probs = eager_attention_forward(t.nn.Module().eval(), split, split, split, None)
    return {"interleaved_heads": {"self_probs": probs}}


def mistakes_patchify(x, t, ctx):
    """The patches with their grid (rows, columns) or their insides (channel, pixel row, column) in another order."""
    P = int(x["patch_size"])
    px = t.tensor(x["pixels"])
    B, C = px.shape[:2]
    grid = px.unfold(2, P, P).unfold(3, P, P)  # [B, C, gh, gw, P, P]

    def patches(*order):  # the axes after B, of [B, C, gh, gw, P, P], in the order the rows are flattened
        return {"patches": grid.permute(0, *order).reshape(B, -1, C * P * P)}

    return {"grid_column_major": patches(3, 2, 1, 4, 5), "channel_last": patches(2, 3, 4, 5, 1),
            "channel_last_columns_first": patches(2, 3, 5, 4, 1), "columns_before_rows": patches(2, 3, 1, 5, 4)}


def mistakes_text_embed(x, t, ctx):
    emb = ctx["model"].text_model.embeddings
    ids = t.tensor(x["input_ids"])
    positions = emb.create_position_ids_from_input_ids(ids, emb.padding_idx)
    counted = t.arange(ids.shape[1]).expand(ids.shape)  # 0, 1, 2, … over every token, pads included
    untyped = emb.LayerNorm(emb.word_embeddings(ids) + emb.position_embeddings(positions))  # no token type row
    return {"no_token_type": {"embeddings": untyped},
            "positions_0_1_2_over_pads": {"embeddings": emb(input_ids=ids, position_ids=counted)},
            "positions_2_3_4_over_pads": {"embeddings": emb(input_ids=ids, position_ids=counted + 2)}}


def _merge_loop(word, rank, pick=min, rounds=None):
    """The textbook merge loop of one word: take the adjacent pair `pick` chooses by rank, merge all its
    occurrences left to right, repeat (at most `rounds` times). With min and no limit it is tokenizers'
    BPE (mistakes_bpe checks it on every stored word); with max the merges go highest rank first.

    subtle: tokenizers itself cannot stand in for the highest-first loop: given the merge table reversed,
    it merges one occurrence at a time, and a pair formed by a merge can then go before an older
    occurrence of the same pair (Ġbbbbbbb: Ġ bbb bbb b, where the loop gives Ġ bb bb bbb).
    """
    symbols = list(word)
    while len(symbols) > 1 and rounds != 0:
        known = [pair for pair in zip(symbols, symbols[1:]) if pair in rank]
        if not known:
            break
        best, merged, i = pick(known, key=rank.get), [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols, rounds = merged, None if rounds is None else rounds - 1
    return " ".join(symbols)


def mistakes_bpe(x, t, ctx):
    """The merge loop taking the highest rank first, or stopping after one round of merges."""
    rank = {tuple(m): i for i, m in enumerate(x["merges"].tolist())}
    words = x["words"].tolist()
    right = ref_bpe(x, t, ctx)["tokens"]
    assert [_merge_loop(w, rank) for w in words] == right.tolist(), "the merge loop is no longer tokenizers' BPE"
    return {"highest_rank_first": {"tokens": np.array([_merge_loop(w, rank, pick=max) for w in words])},
            "one_merge": {"tokens": np.array([_merge_loop(w, rank, rounds=1) for w in words])}}


def mistakes_cross_modal_layer(x, t, ctx):
    """The text stream's cross-attention queried by the layer's input instead of its self-attention's output."""
    layer = ctx["model"].cross_modal_text_layers[0]
    _, probs = layer.crossattention(t.tensor(x["text"]), encoder_hidden_states=t.tensor(x["image"]))
    return {"cross_queried_by_x": {"text_cross_probs": probs}}


def mistakes_layer_norm_backward(x, t, ctx):
    """dx with one of its terms left out: (dx̂ − mean(dx̂) − x̂·mean(dx̂⊙x̂)) / σ, dx̂ = dy⊙w."""
    X, w, dy, eps = _f64(t, x["x"]), _f64(t, x["weight"]), _f64(t, x["dy"]), float(x["eps"])
    c = X - X.mean(-1, keepdim=True)
    inv_std = 1 / ((c * c).mean(-1, keepdim=True) + eps).sqrt()
    x_hat = c * inv_std

    def dx(g, mean_term=True, variance_term=True):  # g: the gradient of x̂
        return (g - (g.mean(-1, keepdim=True) if mean_term else 0)
                - (x_hat * (g * x_hat).mean(-1, keepdim=True) if variance_term else 0)) * inv_std

    right = ref_layer_norm_backward(x, t, ctx)["dx"].double()
    assert t.allclose(dx(dy * w), right, rtol=1e-6, atol=1e-6 * right.abs().max()), "the formula is not autograd's"
    return {"no_mean_term": {"dx": dx(dy * w, mean_term=False)},
            "no_variance_term": {"dx": dx(dy * w, variance_term=False)},
            "no_weight": {"dx": dx(dy)}}


def mistakes_gelu_backward(x, t, ctx):
    """The derivative without its x·φ(x) term, and the tanh approximation's derivative (autograd, float64)."""
    X, dy = _f64(t, x["x"]), _f64(t, x["dy"])
    with t.enable_grad():
        Xt = _leaf(t, x["x"])
        t.nn.functional.gelu(Xt, approximate="tanh").backward(dy)
    return {"no_x_pdf_term": {"dx": dy * 0.5 * (1 + t.erf(X / 2**0.5))}, "tanh_derivative": {"dx": Xt.grad}}


def mistakes_softmax_backward(x, t, ctx):
    """Σ y⊙g summed over axis -2, the queries, instead of along each row: y ⊙ (g − Σ_{axis -2} y⊙g)."""
    y, g = t.softmax(_f64(t, x["scores"]), dim=-1), _f64(t, x["dprobs"])
    right = ref_softmax_backward(x, t, ctx)["dscores"].double()
    assert t.allclose(y * (g - (y * g).sum(-1, keepdim=True)), right, atol=1e-6), "the formula is not autograd's"
    return {"sum_over_axis_-2": {"dscores": y * (g - (y * g).sum(-2, keepdim=True))}}


def mistakes_heads(x, t, ctx):
    m, heads = ctx["model"], ctx["heads"]
    text, image = t.tensor(x["text_features"]), t.tensor(x["image_features"])

    def pooled(pick=lambda f: f[:, 0], tanh=True, transposed=True):
        out = []
        for pooler, f in ((m.cross_modal_text_pooler, text), (m.cross_modal_image_pooler, image)):
            h = pooler.dense(pick(f)) if transposed else pick(f) @ pooler.dense.weight + pooler.dense.bias
            out.append(t.tanh(h) if tanh else h)
        return {"pooled": t.cat(out, dim=-1)}

    mlm = heads["mlm_score"]
    h = text @ mlm.transform.dense.weight + mlm.transform.dense.bias  # the square dense weight, not transposed
    return {"pooler_mean": pooled(pick=lambda f: f.mean(1)),
            "pooler_last_token": pooled(pick=lambda f: f[:, -1]),
            "pooler_no_tanh": pooled(tanh=False),
            "pooler_weight_not_transposed": pooled(transposed=False),
            "mlm_dense_not_transposed": {"mlm_logits": mlm.decoder(mlm.transform.LayerNorm(
                mlm.transform.transform_act_fn(h))) + mlm.bias}}


# ---- the reference model ------------------------------------------------------------------------------


def reference_context():
    """transformers' BridgeTowerModel and the four heads, loaded with `tiny_weights` (every key checked)."""
    import torch
    from transformers import BridgeTowerConfig, BridgeTowerModel
    from transformers.models.bridgetower import modeling_bridgetower as hf

    config = BridgeTowerConfig(**json.loads(json.dumps(TINY)))
    config._attn_implementation = "eager"  # the implementation that returns attention probabilities
    weights = tiny_weights()
    model = reference.load_weights(BridgeTowerModel(config).eval(), weights)
    flat = {k: torch.from_numpy(v) for k, v in weights.items()}
    D, C = config.hidden_size, config.contrastive_hidden_size
    heads = {"itm_score": hf.BridgeTowerITMHead(2 * D), "mlm_score": hf.BridgeTowerMLMHead(config),
             "itc_text_head": hf.BridgeTowerContrastiveHead(D, C),
             "itc_image_head": hf.BridgeTowerContrastiveHead(D, C),
             "itc_cross_modal_head": hf.BridgeTowerContrastiveHead(2 * D, C)}
    for name, head in heads.items():
        head.eval().load_state_dict({k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(name + ".")},
                                    strict=True)
    return {"model": model, "heads": heads}


def references(inputs_by_component, names=None):
    """{component: {output: np.ndarray}} computed by the reference from the given inputs."""
    import torch

    ctx = reference_context()
    out = {}
    with torch.no_grad():
        for c in COMPONENTS:
            if names is None or c.name in names:
                ref = globals()[f"ref_{c.name}"](inputs_by_component[c.name], torch, ctx)
                out[c.name] = {k: v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                               for k, v in ref.items()}
    return out


def mistake_outputs(inputs_by_component, names=None):
    """{component: {mistake: {output: np.ndarray}}}: the stored mistakes as snapshots.npz holds them.

    Only the outputs each components.Symptom compares, cut to its `where`, float32 as the outputs.
    """
    import torch

    ctx = reference_context()
    out = {}
    with torch.no_grad():
        for c in COMPONENTS:
            wanted = c.mistakes()
            if not wanted or (names is not None and c.name not in names):
                continue
            made = globals()[f"mistakes_{c.name}"](inputs_by_component[c.name], torch, ctx)
            assert sorted(made) == sorted(wanted), f"{c.name}: made {sorted(made)}, symptoms name {sorted(wanted)}"
            out[c.name] = {}
            for name, symptom in wanted.items():
                kept = {}
                for output in symptom.outputs or made[name]:
                    v = made[name][output]
                    v = v.detach().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
                    v = v if symptom.where is None else v[symptom.where]
                    kept[output] = np.ascontiguousarray(v.astype(F32) if v.dtype.kind == "f" else v)
                out[c.name][name] = kept
    return out


def make(path=SNAPSHOTS):
    """Write snapshots.npz at `path`; returns its size in bytes."""
    import tokenizers
    import torch
    import transformers

    inputs = {c.name: globals()[f"make_{c.name}"](np.random.RandomState(SEED + i)) for i, c in enumerate(COMPONENTS)}
    outputs = references(inputs)
    mistakes = mistake_outputs(inputs)
    arrays = {"meta/config": np.array(config_json()),
              "meta/weights_checksum": np.array(weights_checksum(tiny_weights())),
              "meta/made_with": np.array(f"torch {torch.__version__}, transformers {transformers.__version__}, "
                                         f"tokenizers {tokenizers.__version__}")}
    for c in COMPONENTS:
        arrays.update({f"{c.name}/in/{k}": np.asarray(v) for k, v in inputs[c.name].items()})
        arrays.update({f"{c.name}/out/{k}": v for k, v in outputs[c.name].items()})
        arrays.update({f"{c.name}/mistake/{name}/{k}": v for name, stored in mistakes.get(c.name, {}).items()
                       for k, v in stored.items()})
    np.savez_compressed(path, **arrays)
    return Path(path).stat().st_size


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=SNAPSHOTS, help="where to write (default: minibridge/assignments/snapshots.npz)")
    out = ap.parse_args().out
    print(f"wrote {out} ({make(out) / 1e3:.0f} kB, {len(COMPONENTS)} components)")
