"""What the grader says: the notebook API `check`, the failing case it names, its hints, and the
tolerances (every correct float32 formulation passes, the typical mistakes fail).

Functions are graded through `check` exactly as a notebook would: on the stored snapshots, against
the reference's outputs, so each test here can fail.
"""

from pathlib import Path

import numpy as np
import pytest

from minibridge.assignments import check
from minibridge.assignments.components import BY_NAME, COMPONENTS
# The reference's own, held from before a check: while one runs, the learner's function is in its place.
from minibridge.backward.ops import attention_backward as reference_attention_backward
from minibridge.backward.ops import gelu_backward as reference_gelu_backward
from minibridge.backward.ops import layer_norm_backward as reference_layer_norm_backward
from minibridge.backward.ops import linear_backward as reference_linear_backward
from minibridge.bridge import link_tower as reference_link_tower
from minibridge.bridge import to_cross_space as reference_to_cross_space
from minibridge.text import bert_attention as reference_bert_attention
from minibridge.vision import patchify as reference_patchify


def textbook_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- the notebook API ---------------------------------------------------------------------------------


def test_check_passes_a_correct_function_and_prints_the_grader_line(capsys):
    result = check("softmax", softmax=textbook_softmax)
    assert result.passed, result.message
    assert capsys.readouterr().out.startswith("PASS  softmax  worst error ")


def test_check_fails_a_wrong_function_with_mine_vs_reference(capsys):
    result = check("softmax", softmax=lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True))
    assert not result.passed
    out = capsys.readouterr().out
    assert out.startswith("FAIL  softmax  y") and " vs reference " in out


def test_check_turns_the_learners_exceptions_into_fail_lines(capsys):
    def my_softmax(x):
        raise NotImplementedError("my TODO")

    assert not check("softmax", softmax=my_softmax).passed
    assert "not implemented: my TODO" in capsys.readouterr().out

    def my_pooler(p, features):
        return features.no_such_attribute

    result = check("heads", pooler=my_pooler)
    assert not result.passed and "AttributeError" in result.message
    assert "test_grader_diagnostics.py:" in result.message and "in my_pooler)" in result.message, result.message
    assert not check("softmax", softmax=lambda x: x[..., :-1]).passed  # a wrong shape
    assert "shape mine" in capsys.readouterr().out


def test_check_fills_the_functions_not_given_with_the_reference():
    assert check("heads").passed
    assert not check("heads", itm_logits=lambda p, pooled: pooled @ p["fc"]["weight"].T).passed  # no bias


def test_check_puts_the_learners_function_where_the_reference_code_calls_it(capsys):
    """model.bridgetower calls the to_cross_space model.py imported, vision.patch_embed the patchify of
    vision.py: the learner's function must be the one they call, and the reference's again afterwards."""
    import minibridge.bridge
    import minibridge.model
    import minibridge.vision

    def my_to_cross_space(*args, **kwargs):
        raise RuntimeError("my to_cross_space")

    result = check("bridgetower", to_cross_space=my_to_cross_space)
    assert result.status == "error" and "RuntimeError: my to_cross_space" in result.message, capsys.readouterr().out
    assert "in my_to_cross_space)" in result.message, result.message
    result = check("patchify", patchify=patchify_with(grid=(4, 2)))  # column-major grid
    assert not result.passed and result.message.startswith("patches"), capsys.readouterr().out
    assert "also failing: embeddings" in result.notes, result.notes
    assert minibridge.model.to_cross_space is minibridge.bridge.to_cross_space is reference_to_cross_space
    assert minibridge.vision.patchify is reference_patchify
    assert check("bridgetower").passed and check("patchify").passed


def test_every_result_says_its_status(capsys):
    def unwritten(x):
        raise NotImplementedError("my TODO")

    with np.errstate(all="ignore"):
        statuses = [check("softmax", softmax=f).status for f in (textbook_softmax, unwritten, lambda x: x.no_such,
                                                                   np.exp)]
    assert statuses == ["pass", "not implemented", "error", "fail"], capsys.readouterr().out
    from minibridge.assignments.grade import Result

    with pytest.raises(ValueError, match="status"):
        Result("softmax", False, "a Result made without its status")
    with pytest.raises(ValueError, match="status"):
        Result("softmax", True, "passed, with the status of a failure", status="fail")


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGALRM"), reason="the time limit needs POSIX signals")
def test_run_component_stops_at_its_time_limit():
    from minibridge.assignments.components import Tiny
    from minibridge.assignments.grade import load_snapshots, run_component
    from minibridge.assignments.notebook import NotebookStudent

    def endless(x):
        while True:
            pass

    student = NotebookStudent({"ops.softmax": endless})
    with student.patched():
        result = run_component(BY_NAME["softmax"], student, load_snapshots()["softmax"], Tiny.make(), time_limit=0.2)
    assert result.status == "error" and "TimeoutError: still running after 0.2 s" in result.message, result.message
    assert "in endless, " in result.message or "in endless)" in result.message, result.message


@pytest.mark.parametrize("component, keywords, match", [
    ("no_such_component", {}, "choose from"),
    ("heads", {"softmax": textbook_softmax}, "pooler"),
    ("softmax", {"sofmax": textbook_softmax}, "softmax"),
])
def test_check_refuses_unknown_components_and_keywords(component, keywords, match):
    with pytest.raises(ValueError, match=match):
        check(component, **keywords)


# ---- formulations the grader must accept ----------------------------------------------------------------


def lse_softmax(x):
    """The textbook log-sum-exp form, in float32: exp(x - logsumexp(x))."""
    m = x.max(axis=-1, keepdims=True)
    return np.exp(x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))))


def float64_softmax(x):
    return textbook_softmax(x.astype(np.float64))


def one_pass_layer_norm(x, p, eps):
    """var = E[x²] - E[x]², in float32: cancellation costs a few u·(1 + mean²/var) of the variance."""
    mean = x.mean(axis=-1, keepdims=True)
    var = (x * x).mean(axis=-1, keepdims=True) - mean * mean
    return (x - mean) / np.sqrt(var + eps) * p["weight"] + p["bias"]


def float64_layer_norm(x, p, eps):
    x = x.astype(np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * p["weight"] + p["bias"]


def einsum_attention(q, k, v, num_heads, mask=None, dtype=np.float32):
    B, Sq, D = q.shape
    Dh = D // num_heads
    q, k, v = (a.astype(dtype).reshape(B, -1, num_heads, Dh) for a in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(Dh)
    if mask is not None:
        scores = scores + mask
    probs = textbook_softmax(scores)
    return np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, Sq, D), probs


def looped_attention(q, k, v, num_heads, mask=None):
    """One head at a time, the scale applied to the scores."""
    B, Sq, D = q.shape
    Dh = D // num_heads
    contexts, probs = [], []
    for h in range(num_heads):
        cut = slice(h * Dh, (h + 1) * Dh)
        scores = q[..., cut] @ k[..., cut].transpose(0, 2, 1) / np.float32(np.sqrt(Dh))
        if mask is not None:
            scores = scores + mask[:, 0]
        p = textbook_softmax(scores)
        probs.append(p)
        contexts.append(p @ v[..., cut])
    return np.concatenate(contexts, axis=-1), np.stack(probs, axis=1)


def float64_gelu(x):
    from math import erf

    return 0.5 * x.astype(np.float64) * (1 + np.vectorize(erf)(x.astype(np.float64) / np.sqrt(2)))


def looped_position_ids(input_ids, pad_token_id):
    out = np.full_like(input_ids, pad_token_id)
    for b, row in enumerate(input_ids):
        count = pad_token_id
        for t, token in enumerate(row):
            if token != pad_token_id:
                count += 1
                out[b, t] = count
    return out


ALTERNATIVES = {
    "float32 log-sum-exp softmax": ("softmax", {"softmax": lse_softmax}),
    "float64 softmax": ("softmax", {"softmax": float64_softmax}),
    "one-pass LayerNorm (E[x²] - E[x]²)": ("layer_norm", {"layer_norm": one_pass_layer_norm}),
    "float64 LayerNorm": ("layer_norm", {"layer_norm": float64_layer_norm}),
    "einsum attention": ("attention", {"attention": einsum_attention}),
    "float64 einsum attention": ("attention", {"attention": lambda *a: einsum_attention(*a, dtype=np.float64)}),
    "attention one head at a time": ("attention", {"attention": looped_attention}),
    "float64 GELU through math.erf": ("gelu", {"gelu": float64_gelu}),
    "position ids by a loop": ("position_ids", {"position_ids": looped_position_ids}),
}


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_every_correct_formulation_passes(name, capsys):
    component, functions = ALTERNATIVES[name]
    result = check(component, **functions)
    assert result.passed, capsys.readouterr().out


def test_the_large_logit_row_stays_within_its_analysed_range():
    """SOFTMAX_LARGE_TOL is derived for |x| < SOFTMAX_LARGE_MAX in the +1000 row; the other rows for |x| < 16."""
    from minibridge.assignments.components import SOFTMAX_LARGE_MAX
    from minibridge.assignments.grade import load_snapshots

    x = load_snapshots()["softmax"][0]["x"]
    assert 512 <= np.abs(x[0, 0]).max() < SOFTMAX_LARGE_MAX
    ordinary = np.concatenate([x[0, 1:].ravel(), x[2, 0].ravel(), x[2, 2:].ravel(), x[1, :, :5].ravel()])
    assert np.abs(ordinary).max() < 16


def test_the_bpe_and_patchify_cases_cover_the_inputs_their_labels_name():
    """Cases index the stored inputs by position: the words and the grid they name must be there."""
    from minibridge.assignments.components import BY_NAME
    from minibridge.assignments.grade import load_snapshots

    snaps = load_snapshots()
    words = snaps["bpe"][0]["words"]
    for case in BY_NAME["bpe"].cases:
        if case.label.startswith("repeated letters"):
            assert [str(w) for w in words[case.where[0]]] == ["aaaaaaa", "Ġaaa", "Ġbbbbbbb"]
        if case.label.startswith("multi-byte"):
            assert all(any(ord(ch) > 0x7F and ch != "Ġ" for ch in str(w)) for s in case.where for w in words[s])
    assert snaps["patchify"][0]["pixels"].shape[2:] == (18, 13) and int(snaps["patchify"][0]["patch_size"]) == 4


# ---- typical mistakes: each fails, naming the case, with its hint where the grader gives one -------------


def wrong_axis_softmax(x):
    e = np.exp(x - x.max(axis=-2, keepdims=True))
    return e / e.sum(axis=-2, keepdims=True)


def unshifted_softmax(x):
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def tanh_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.float32(np.sqrt(2 / np.pi)) * (x + np.float32(0.044715) * x**3)))


def layer_norm_with(root, divide_by=None):
    def layer_norm(x, p, eps):
        c = x - x.mean(axis=-1, keepdims=True)
        var = (c * c).sum(axis=-1, keepdims=True) / (divide_by or x.shape[-1])
        return c / root(var, eps) * p["weight"] + p["bias"]

    return layer_norm


def attention_with(scale=None, mask_mode="before", interleaved=False, axis=-1):
    """The reference attention with one thing changed."""

    def attention(q, k, v, num_heads, mask=None):
        B, Sq, D = q.shape
        Dh = D // num_heads

        def split(a):  # contiguous: feature h·Dh + j -> head h; interleaved: feature j·H + h -> head h
            if interleaved:
                return a.reshape(B, -1, Dh, num_heads).transpose(0, 3, 1, 2)
            return a.reshape(B, -1, num_heads, Dh).transpose(0, 2, 1, 3)

        scores = split(q) @ split(k).transpose(0, 1, 3, 2) * np.float32(1 / np.sqrt(Dh) if scale is None else scale(Dh))
        if mask is not None and mask_mode == "before":
            scores = scores + mask
        e = np.exp(scores - scores.max(axis=axis, keepdims=True))
        probs = e / e.sum(axis=axis, keepdims=True)
        if mask is not None and mask_mode == "after":
            probs = probs + mask
        context = probs @ split(v)
        if interleaved:
            return context.transpose(0, 2, 3, 1).reshape(B, Sq, D), probs
        return context.transpose(0, 2, 1, 3).reshape(B, Sq, D), probs

    return attention


def vision_block_qkv(order):
    """The reference vision block, but reading the packed q/k/v rows in another order."""
    from minibridge.ops import attention, layer_norm, linear, quick_gelu

    def vision_block(p, x, cfg):
        h = layer_norm(x, p["ln_1"], cfg.layer_norm_eps)
        qkv = linear(h, {"weight": p["attn"]["in_proj_weight"], "bias": p["attn"]["in_proj_bias"]})
        parts = dict(zip(order, np.split(qkv, 3, axis=-1)))
        context, probs = attention(parts["q"], parts["k"], parts["v"], cfg.num_attention_heads)
        x = x + linear(context, p["attn"]["out_proj"])
        h = layer_norm(x, p["ln_2"], cfg.layer_norm_eps)
        return x + linear(quick_gelu(linear(h, p["mlp"]["c_fc"])), p["mlp"]["c_proj"]), probs

    return vision_block


def unnormalised_contrastive(p, x):
    return x @ p["fc"]["weight"].T + p["fc"]["bias"]


def swapped_interpolate(p, h, c, link_tower_type, eps):
    if link_tower_type == "interpolate":
        return reference_link_tower(p, c, h, link_tower_type, eps)  # h·β + c·(1 − β)
    return reference_link_tower(p, h, c, link_tower_type, eps)


def patchify_with(grid=(2, 4), inside=(1, 3, 5)):
    """patchify with the grid axes (rows, columns) and the axes inside a patch (channel, row, column) reordered."""

    def patchify(pixels, P):
        B, C, H, W = pixels.shape
        gh, gw = H // P, W // P
        x = pixels[:, :, : gh * P, : gw * P].reshape(B, C, gh, P, gw, P)  # axes B, C, gh, i, gw, j
        return x.transpose(0, *grid, *inside).reshape(B, gh * gw, C * P * P)

    return patchify


def bpe_with(pick=min, once=False, right_to_left=False):
    """A learner's merge loop with one thing changed: which rank goes first, one round only, or scanning right to left."""

    def bpe(word, ranks):
        symbols = list(word)
        while len(symbols) > 1:
            known = [pair for pair in zip(symbols, symbols[1:]) if pair in ranks]
            if not known:
                break
            best = pick(known, key=ranks.get)
            merged, i = [], 0
            symbols = symbols[::-1] if right_to_left else symbols
            target = best[::-1] if right_to_left else best
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == target:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged[::-1] if right_to_left else merged
            if once:
                break
        return symbols

    return bpe


def bert_attention_without_mask(p, x, kv, num_heads, eps, mask=None):
    return reference_bert_attention(p, x, kv, num_heads, eps, None)


def text_embed_with(token_type=True, positions=None):
    from minibridge.ops import layer_norm
    from minibridge.text import position_ids

    def text_embed(p, input_ids, cfg):
        pos = position_ids(input_ids, cfg.pad_token_id) if positions is None else positions(input_ids)
        h = p["word_embeddings"]["weight"][input_ids] + p["position_embeddings"]["weight"][pos]
        if token_type:
            h = h + p["token_type_embeddings"]["weight"][0]
        return layer_norm(h, p["LayerNorm"], cfg.layer_norm_eps)

    return text_embed


def cross_modal_layer_with(self_mask=True, cross_mask=True, queries_from_x=False, rows_taken="right"):
    """The reference cross-modal layer with one mask dropped, or the cross-attention queried by its input x; or
    with rows taken another way: "ignored" (every row), "cut" (keys, values and self_mask cut to the rows too),
    "sliced" (every row computed, the first `rows` returned: right too)."""
    from minibridge.text import bert_attention, bert_ffn

    def cross_modal_layer(p, x, other, cfg, s_mask=None, c_mask=None, rows=None):
        H, eps = cfg.num_attention_heads, cfg.layer_norm_eps
        queries = x if rows is None or rows_taken in ("ignored", "sliced") else x[:, :rows]
        keys = queries if rows_taken == "cut" else x
        if rows_taken == "cut" and rows is not None and s_mask is not None:
            s_mask = s_mask[..., :rows]
        a, self_probs = bert_attention(p["attention"], queries, keys, H, eps, s_mask if self_mask else None)
        c, cross_probs = bert_attention(p["crossattention"], queries if queries_from_x else a, other, H, eps,
                                        c_mask if cross_mask else None)
        out = bert_ffn(p, c, eps), self_probs, cross_probs
        if rows_taken == "sliced" and rows is not None:
            return tuple(a[..., :rows, :] for a in out)
        return out

    return cross_modal_layer


def cross_modal_layer_without_rows(p, x, other, cfg, self_mask=None, cross_mask=None):
    """A learner's layer written before rows: no such argument."""
    return cross_modal_layer_with()(p, x, other, cfg, self_mask, cross_mask)


# name: (component, functions, the case its FAIL line names, the hint it gives or None)
MISTAKES = {
    "softmax over the wrong axis": ("softmax", {"softmax": wrong_axis_softmax}, "y, case ",
                                    "sum to 1 over the wrong axis"),
    "softmax without the max subtraction": ("softmax", {"softmax": unshifted_softmax},
                                            'case "row with a +1000 logit"', "subtract the row max"),
    "tanh-GELU": ("gelu", {"gelu": tanh_gelu}, 'case "the bend, a dense grid on [-6, 6]"', "tanh approximation"),
    "QuickGELU with sigmoid(x)": ("quick_gelu", {"quick_gelu": lambda x: x / (1 + np.exp(-x))},
                                  'case "the bend', "x·sigmoid(x)?"),
    "LayerNorm without eps": ("layer_norm", {"layer_norm": layer_norm_with(lambda v, eps: np.sqrt(v))},
                              'case "std 1e-3 row where eps dominates"', "LayerNorm without eps?"),
    "LayerNorm with eps outside the root": ("layer_norm",
                                            {"layer_norm": layer_norm_with(lambda v, eps: np.sqrt(v) + eps)},
                                            'case "std 1e-3 row where eps dominates"', "eps outside the square root?"),
    "LayerNorm with the unbiased variance": ("layer_norm", {"layer_norm": layer_norm_with(
        lambda v, eps: np.sqrt(v + eps), divide_by=15)}, 'y, case "', "unbiased variance"),
    "unscaled attention scores": ("attention", {"attention": attention_with(scale=lambda Dh: 1.0)}, "case ",
                                  "not scaled by 1/sqrt(Dh)?"),
    "attention scaled by 1/Dh": ("attention", {"attention": attention_with(scale=lambda Dh: 1.0 / Dh)}, "case ",
                                 "scaled by 1/Dh instead"),
    "mask not applied": ("attention", {"attention": attention_with(mask_mode="never")},
                         'probs, case "masked keys (row 1: keys 4-6 padded)"', "mask not applied?"),
    "mask applied after the softmax": ("attention", {"attention": attention_with(mask_mode="after")},
                                       'probs, case "masked keys (row 1: keys 4-6 padded)"',
                                       "mask applied after the softmax?"),
    "heads interleaved": ("attention", {"attention": attention_with(interleaved=True)}, "case ",
                          "heads interleaved?"),
    "attention softmax over the queries": ("attention", {"attention": attention_with(axis=-2)}, "case ",
                                           "normalised over the queries?"),
    "position ids from 0": ("position_ids",
                            {"position_ids": lambda ids, pad: np.broadcast_to(np.arange(ids.shape[1]), ids.shape)},
                            'case "no padding"', "counted from 0?"),
    "position ids counting the pads": ("position_ids",
                                       {"position_ids": lambda ids, pad: np.broadcast_to(
                                           np.arange(ids.shape[1]) + pad + 1, ids.shape)},
                                       'case "right padding"', "pads must keep pad_token_id"),
    "q/k/v read as k/q/v": ("vision_block", {"vision_block": vision_block_qkv("kqv")},
                            'probs, case "attention probabilities', "[W_q; W_k; W_v]"),
    "q/k/v read as v/k/q": ("vision_block", {"vision_block": vision_block_qkv("vkq")},
                            'probs, case "attention probabilities', "[W_q; W_k; W_v]"),
    "interpolate with beta on h": ("link_tower", {"link_tower": swapped_interpolate}, "interpolate: ",
                                   "h is weighted by (1 - beta)"),
    "contrastive embedding not normalised": ("heads", {"contrastive_embedding": unnormalised_contrastive}, "itc_",
                                             "scaled to unit length"),
    "patches in column-major grid order": ("patchify", {"patchify": patchify_with(grid=(4, 2))},
                                           'patches, case "the other patches', "patches in column-major order?"),
    "patches flattened channel-last": ("patchify", {"patchify": patchify_with(inside=(3, 5, 1))}, "patches, case ",
                                       "flattened channel-last (P, P, C)?"),
    "patches transposed inside": ("patchify", {"patchify": patchify_with(inside=(1, 5, 3))}, "patches, case ",
                                  "each patch transposed"),
    "text embedding without the token type": ("text_embed", {"text_embed": text_embed_with(token_type=False)},
                                              "embeddings, case ", "token type missing?"),
    "text positions 0, 1, 2, … over pads too": ("text_embed", {"text_embed": text_embed_with(
        positions=lambda ids: np.broadcast_to(np.arange(ids.shape[1]), ids.shape))}, "embeddings, case ",
        "positions counted over every token"),
    "text positions from 2 over pads too": ("text_embed", {"text_embed": text_embed_with(
        positions=lambda ids: np.broadcast_to(np.arange(ids.shape[1]) + 2, ids.shape))},
        "embeddings, case ", "positions counted over every token"),
    "bert_attention without the padding mask": ("bert_attention", {"bert_attention": bert_attention_without_mask},
                                                'probs, case "padded texts (masked keys)"',
                                                "padding mask not applied?"),
    "BPE merging the highest rank first": ("bpe", {"bpe": bpe_with(pick=max)}, 'tokens, case "',
                                           "merged the highest rank first?"),
    "BPE stopping after one merge": ("bpe", {"bpe": bpe_with(once=True)},
                                     'tokens, case "words of the training captions"', "stopped after one merge?"),
    "BPE merging right to left": ("bpe", {"bpe": bpe_with(right_to_left=True)},
                                  'tokens, case "repeated letters', "left to right without overlap"),
    "cross-modal self-attention without self_mask": ("cross_modal_layer", {"cross_modal_layer": cross_modal_layer_with(
        self_mask=False)}, 'text_self_probs, case "text self-attention, padded text', "self_mask not applied?"),
    "cross-modal cross-attention without cross_mask": ("cross_modal_layer", {
        "cross_modal_layer": cross_modal_layer_with(cross_mask=False)},
        'image_cross_probs, case "image → text cross-attention, padded text', "cross_mask not applied?"),
    "cross-attention queried by the layer input": ("cross_modal_layer", {
        "cross_modal_layer": cross_modal_layer_with(queries_from_x=True)},
        'text_cross_probs, case "text → image cross-attention', "queried by the layer input x?"),
    # rows=1, as the model's last layer runs it for ITM / ITC: every row back is refused, with a hint (components.py
    # says why); keys and values cut with the queries (self_mask cut to fit) give position 0 attending to itself.
    "cross-modal layer ignoring rows": ("cross_modal_layer", {"cross_modal_layer": cross_modal_layer_with(
        rows_taken="ignored")}, "text_first_self_probs: shape mine (2, 4, 6, 6) vs reference (2, 4, 1, 6)",
        "rows ignored?"),
    "cross-modal self-attention keys cut to the rows": ("cross_modal_layer", {
        "cross_modal_layer": cross_modal_layer_with(rows_taken="cut")},
        "text_first_self_probs: shape mine (2, 4, 1, 1) vs reference (2, 4, 1, 6)", "keys and values cut to the rows"),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_typical_mistakes_fail_naming_the_case_and_the_hint(name, capsys):
    component, functions, case, hint = MISTAKES[name]
    with np.errstate(all="ignore"):
        result = check(component, **functions)
    out = capsys.readouterr().out
    assert not result.passed, out
    assert case in result.message and " vs reference " in result.message, out
    hints = [n for n in result.notes if n.startswith("hint: ")]
    assert any(hint in h for h in hints), out
    assert f"hint: " in out


# ---- hints the review found missing or misleading: each now fits its mistake ---------------------------


def layer_norm_affine(weight=True, bias=True, eps=None):
    """A right LayerNorm but for its affine part, or with eps hard-coded."""

    def layer_norm(x, p, eps_given):
        c = x - x.mean(axis=-1, keepdims=True)
        y = c / np.sqrt((c * c).mean(axis=-1, keepdims=True) + (eps_given if eps is None else eps))
        return (y * p["weight"] if weight else y) + (p["bias"] if bias else 0)

    return layer_norm


def float16_softmax(x):
    x = x.astype(np.float16)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def pooler_with(pick=lambda f: f[:, 0], tanh=True, transposed=True):
    def pooler(p, features):
        h = pick(features)
        h = h @ (p["dense"]["weight"].T if transposed else p["dense"]["weight"]) + p["dense"]["bias"]
        return np.tanh(h) if tanh else h

    return pooler


def mlm_dense_not_transposed(p, text_features, eps):
    from minibridge.ops import gelu, layer_norm

    h = text_features @ p["transform"]["dense"]["weight"] + p["transform"]["dense"]["bias"]
    h = layer_norm(gelu(h), p["transform"]["LayerNorm"], eps)
    return h @ p["decoder"]["weight"].T + p["bias"]


# name: (component, functions, the case its FAIL line names, the hint it gives first, a text no hint may hold)
REVIEWED = {
    "LayerNorm without the bias": ("layer_norm", {"layer_norm": layer_norm_affine(bias=False)}, "y, case ",
                                   "bias not added?", "eps"),
    "LayerNorm without the weight": ("layer_norm", {"layer_norm": layer_norm_affine(weight=False)}, "y, case ",
                                     "weight not applied?", "eps"),
    "LayerNorm with eps hard-coded to 1e-6": ("layer_norm", {"layer_norm": layer_norm_affine(eps=1e-6)},
                                              'case "std 1e-3 row where eps dominates"', "eps hard-coded",
                                              "inside the square root"),
    "GELU as QuickGELU": ("gelu", {"gelu": lambda x: x / (1 + np.exp(np.float32(-1.702) * x))}, "y, case ",
                          "this is QuickGELU", None),
    "QuickGELU as the exact GELU": ("quick_gelu", {"quick_gelu": float64_gelu}, "y, case ", "this is the exact GELU",
                                    None),
    "attention softmax over the queries, first hint": ("attention", {"attention": attention_with(axis=-2)}, "case ",
                                                       "normalised over the queries?", "mask not applied"),
    "attention scaled by 1/sqrt(D)": ("attention", {"attention": attention_with(scale=lambda Dh: 1.0 / np.sqrt(
        16.0))}, "case ", "scaled by 1/sqrt(D), the whole width?", None),
    "softmax in float16": ("softmax", {"softmax": float16_softmax}, 'case "row with a +1000 logit"',
                           "computed in float16?", "subtract the row max"),
    "softmax in float16, returned as float32": ("softmax", {"softmax": lambda x: float16_softmax(x).astype(np.float32)},
                                                'case "row with a +1000 logit"', "computed in float16?",
                                                "subtract the row max"),
    "pooler as a mean": ("heads", {"pooler": pooler_with(pick=lambda f: f.mean(axis=1))}, "pooled",
                         "pooler: a mean over the tokens?", None),
    "pooler on the last token": ("heads", {"pooler": pooler_with(pick=lambda f: f[:, -1])}, "pooled",
                                 "pooler: the last token?", None),
    "pooler without tanh": ("heads", {"pooler": pooler_with(tanh=False)}, "pooled", "pooler without tanh?", None),
    "pooler with the weight not transposed": ("heads", {"pooler": pooler_with(transposed=False)}, "pooled",
                                              "dense's weight not transposed?", None),
    "MLM transform with the weight not transposed": ("heads", {"mlm_logits": mlm_dense_not_transposed}, "mlm_logits",
                                                     "transform.dense's weight not transposed?", None),
    "BPE that never merges": ("bpe", {"bpe": lambda word, ranks: list(word)}, 'tokens, case "', "no merge made?",
                              "stopped after one merge?"),
}


@pytest.mark.parametrize("name", list(REVIEWED))
def test_reviewed_mistakes_get_the_hint_that_fits_first(name, capsys):
    component, functions, case, hint, never = REVIEWED[name]
    with np.errstate(all="ignore"):
        result = check(component, **functions)
    out = capsys.readouterr().out
    assert not result.passed and case in result.message and " vs reference " in result.message, out
    hints = [n for n in result.notes if n.startswith("hint: ")]
    assert hints and hint in hints[0], out
    assert never is None or not any(never in h for h in hints), out


def test_a_cross_modal_layer_that_computes_every_row_and_returns_the_rows_asked_for_passes(capsys):
    """The grader grades what comes back (the rows asked for: values and shape), not the work done for it."""
    result = check("cross_modal_layer", cross_modal_layer=cross_modal_layer_with(rows_taken="sliced"))
    assert result.passed, capsys.readouterr().out


def test_a_cross_modal_layer_without_rows_gets_a_hint(capsys):
    """A learner's function written before rows existed: the grader's rows=1 call raises, and the hint says why."""
    result = check("cross_modal_layer", cross_modal_layer=cross_modal_layer_without_rows)
    out = capsys.readouterr().out
    assert result.status == "error" and "unexpected keyword argument 'rows'" in result.message, out
    assert any("takes rows=None" in n for n in result.notes), out


def test_the_rows_cases_are_the_full_layers_first_rows():
    """The rows=1 references are the full layer's position 0 (make_snapshots derives them): a grade of the rows
    compares with what the full layer computes, to the bit."""
    from minibridge.assignments.grade import load_snapshots

    out = load_snapshots()["cross_modal_layer"].outputs
    for side in ("text", "image"):
        assert np.array_equal(out[f"{side}_first"], out[side][:, :1])
        assert np.array_equal(out[f"{side}_first_self_probs"], out[f"{side}_self_probs"][:, :, :1])
    out = load_snapshots()["bridgetower"].outputs
    assert np.array_equal(out["read_first.text_features"], out["text_features"][:, :1])
    assert np.array_equal(out["read_first.image_features"], out["image_features"][:, :1])
    assert np.array_equal(out["read_first.pooler_output"], out["pooler_output"])
    assert np.array_equal(out["read_text.text_features"], out["text_features"])
    assert np.array_equal(out["read_text.image_features"], out["image_features"][:, :1])


def test_a_case_hint_says_what_the_case_tests_and_only_where_the_failure_fits_it(capsys):
    """layer_norm's eps row: its hint for an eps no symptom knows (1e-4), none where other rows fail too."""
    result = check("layer_norm", layer_norm=layer_norm_affine(eps=1e-4))
    assert 'case "std 1e-3 row where eps dominates"' in result.message
    assert [n for n in result.notes if n.startswith("hint: ")] == [
        "hint: " + next(c.hint for c in BY_NAME["layer_norm"].cases if c.hint)], capsys.readouterr().out
    result = check("layer_norm", layer_norm=lambda x, p, eps: layer_norm_affine()(x, p, eps) * np.float32(1.01))
    assert not result.passed and not [n for n in result.notes if n.startswith("hint: ")], capsys.readouterr().out
    for c in (case for component in COMPONENTS for case in component.cases if case.hint):
        assert c.hint.startswith("this "), f"{c.label}: a case hint says what the case tests ({c.hint!r})"


@pytest.mark.parametrize("component, functions", [
    ("linear", {"linear": lambda x, p: x @ p["weight"] + p.get("bias", 0)}),
    ("heads", {"itm_logits": lambda p, pooled: pooled @ p["fc"]["weight"] + p["fc"]["bias"]}),
])
def test_a_weight_not_transposed_that_raises_gets_a_hint(component, functions, capsys):
    result = check(component, **functions)
    out = capsys.readouterr().out
    assert result.message.startswith("error: ValueError: matmul"), out
    assert any("stored (out, in)" in n and "x @ W.T" in n for n in result.notes), out


def test_exact_outputs_say_how_many_differ_and_the_first(capsys):
    result = check("position_ids", position_ids=lambda ids, pad: np.broadcast_to(np.arange(ids.shape[1]) + 1,
                                                                                  ids.shape))
    assert result.message == ('position_ids, case "no padding": 30 of 32 differ; the first, at index (0, 0): '
                              "mine 1 vs reference 2"), capsys.readouterr().out
    from minibridge.assignments.grade import compare

    found = compare("ids", np.array([[2, 3], [1, 5]]), np.array([[2, 3], [1, 4]]), 0)
    assert found.ratio == np.inf and found.message == ("ids: 1 of 4 differ; the first, at index (1, 1): mine 5 vs "
                                                       "reference 4")
    assert compare("ids", np.array([2.0, 3.5]), np.array([2, 4]), 0).message.endswith("mine 3.5 vs reference 4")


# ---- the backward week: right gradients pass in any form, wrong ones fail with their hint ---------------


def float32_softmax_backward(y, g):
    return y * (g - (y * g).sum(axis=-1, keepdims=True))


def jacobian_softmax_backward(y, g):
    """The Jacobian J[i, j] = ∂y_i/∂x_j = y_i (δ_ij − y_j) built row by row, applied as dx_j = Σ_i g_i J[i, j]."""
    jacobian = y[..., :, None] * (np.eye(y.shape[-1], dtype=y.dtype) - y[..., None, :])  # [..., S, S]
    return np.einsum("...ij,...i->...j", jacobian, g)


def layer_norm_backward_with(variance="two-pass", textbook=False, mean_term=True, variance_term=True, weight=True,
                             eps=None):
    """A learner's LayerNorm backward in float32: the variance one-pass (E[x²] − E[x]²) or two-pass, the
    textbook (N·dx̂ − Σdx̂ − x̂·Σdx̂x̂)/N form or the means' one, or with a term, the weight or eps wrong."""

    def layer_norm_backward(x, p, eps_given, dy):
        D = x.shape[-1]
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x * x).mean(axis=-1, keepdims=True) - mean * mean if variance == "one-pass"
               else ((x - mean) ** 2).mean(axis=-1, keepdims=True))
        inv_std = 1 / np.sqrt(var + (eps_given if eps is None else eps))
        x_hat = (x - mean) * inv_std
        g = dy * p["weight"] if weight else dy
        if textbook:
            dx = inv_std / D * (D * g - g.sum(-1, keepdims=True) - x_hat * (g * x_hat).sum(-1, keepdims=True))
        else:
            dx = inv_std * (g - (g.mean(-1, keepdims=True) if mean_term else 0)
                            - (x_hat * (g * x_hat).mean(-1, keepdims=True) if variance_term else 0))
        return dx, {"weight": (dy * x_hat).reshape(-1, D).sum(0), "bias": dy.reshape(-1, D).sum(0)}

    return layer_norm_backward


def float64_gelu_backward(x, dy):
    from math import erf, pi

    x64 = x.astype(np.float64)
    return dy * (0.5 * (1 + np.vectorize(erf)(x64 / np.sqrt(2))) + x64 * np.exp(-x64 * x64 / 2) / np.sqrt(2 * pi))


def tanh_gelu_backward(x, dy):
    """The derivative of tanh-GELU, 0.5·x·(1 + tanh(c·(x + 0.044715·x³)))."""
    c, a = np.float32(np.sqrt(2 / np.pi)), np.float32(0.044715)
    t = np.tanh(c * (x + a * x**3))
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * a * x * x))


def einsum_attention_backward(q, k, v, num_heads, mask, dcontext):
    """All heads at once with einsum, in float32, its own softmax and softmax backward."""
    B, Sq, D = q.shape
    Dh = D // num_heads
    Q, K, V, dC = (a.reshape(B, -1, num_heads, Dh) for a in (q, k, v, dcontext))
    scores = np.einsum("bqhd,bkhd->bhqk", Q, K) / np.float32(np.sqrt(Dh))
    probs = textbook_softmax(scores if mask is None else scores + mask)
    dV = np.einsum("bhqk,bqhd->bkhd", probs, dC)
    dP = np.einsum("bqhd,bkhd->bhqk", dC, V)
    dS = probs * (dP - (probs * dP).sum(axis=-1, keepdims=True)) / np.float32(np.sqrt(Dh))
    dQ, dK = np.einsum("bhqk,bkhd->bqhd", dS, K), np.einsum("bhqk,bqhd->bkhd", dS, Q)
    return dQ.reshape(B, Sq, D), dK.reshape(B, -1, D), dV.reshape(B, -1, D)


def cross_entropy_backward_with(divide_by="kept", sign=1.0, zero_ignored=True):
    """softmax − onehot in float32, divided by the kept rows (or by every row, or by nothing)."""

    def cross_entropy_backward(logits, labels, ignore_index=-100):
        kept = labels != ignore_index
        d = textbook_softmax(logits)
        d[np.flatnonzero(kept), labels[kept]] -= 1
        if zero_ignored:
            d[~kept] = 0
        n = {"kept": max(int(kept.sum()), 1), "all": labels.shape[0], "none": 1}[divide_by]
        return sign * d / n

    return cross_entropy_backward


BACKWARD_ALTERNATIVES = {
    "softmax backward in float32": ("softmax_backward", {"softmax_backward": float32_softmax_backward}),
    "softmax backward through the full Jacobian": ("softmax_backward", {"softmax_backward": jacobian_softmax_backward}),
    "LayerNorm backward, textbook form": ("layer_norm_backward",
                                          {"layer_norm_backward": layer_norm_backward_with(textbook=True)}),
    "LayerNorm backward, one-pass variance": ("layer_norm_backward",
                                              {"layer_norm_backward": layer_norm_backward_with(variance="one-pass")}),
    "GELU backward in float64 through math.erf": ("gelu_backward", {"gelu_backward": float64_gelu_backward}),
    "attention backward with einsum": ("attention_backward", {"attention_backward": einsum_attention_backward}),
    "cross-entropy backward in float32": ("itm_loss_backward",
                                          {"cross_entropy_backward": cross_entropy_backward_with()}),
}


@pytest.mark.parametrize("name", list(BACKWARD_ALTERNATIVES))
def test_every_correct_backward_formulation_passes(name, capsys):
    component, functions = BACKWARD_ALTERNATIVES[name]
    result = check(component, **functions)
    assert result.passed, capsys.readouterr().out


def test_the_layer_backward_passes_on_float32_primitives_and_fails_on_subtle_mistakes(capsys):
    """GRAD_LAYER_TOL: a cross-modal layer's backward on the float32 softmax and one-pass LayerNorm backwards
    passes; with the tanh-GELU derivative or a LayerNorm eps of 1e-6 inside (2e-4 off at worst) it fails."""
    from minibridge.assignments.components import Tiny
    from minibridge.assignments.grade import load_snapshots, run_component
    from minibridge.assignments.notebook import NotebookStudent

    def grade(**functions):
        student = NotebookStudent({f"backward.ops.{name}": fn for name, fn in functions.items()})
        with student.patched():
            return run_component(BY_NAME["cross_modal_layer_backward"], student,
                                 load_snapshots()["cross_modal_layer_backward"], Tiny.make())

    right = grade(softmax_backward=float32_softmax_backward,
                  layer_norm_backward=layer_norm_backward_with(variance="one-pass"))
    assert right.passed and right.ratio < 0.1, right.message  # within a tenth of the tolerance
    for wrong in (grade(gelu_backward=tanh_gelu_backward),
                  grade(layer_norm_backward=layer_norm_backward_with(eps=1e-6))):
        assert not wrong.passed, wrong.message


def linear_backward_with_mean_bias(x, p, dy):
    dx, g = reference_linear_backward(x, p, dy)
    if "bias" in g:
        g["bias"] = g["bias"] / (dy.size // dy.shape[-1])
    return dx, g


def attention_backward_scaled_twice(q, k, v, num_heads, mask, dcontext):
    dq, dk, dv = reference_attention_backward(q, k, v, num_heads, mask, dcontext)
    root = np.float32(np.sqrt(q.shape[-1] // num_heads))
    return dq / root, dk / root, dv


# name: (component, functions, the case its FAIL line names, the hint it gives first)
BACKWARD_MISTAKES = {
    "linear backward: the bias gradient a mean": ("linear_backward",
                                                  {"linear_backward": linear_backward_with_mean_bias}, "dbias",
                                                  "not a mean"),
    "LayerNorm backward without the variance's term": ("layer_norm_backward", {
        "layer_norm_backward": layer_norm_backward_with(variance_term=False)}, "dx, case ", "the variance's term"),
    "LayerNorm backward without the weight in dx̂": ("layer_norm_backward", {
        "layer_norm_backward": layer_norm_backward_with(weight=False)}, "dx, case ", "dx̂ is dy⊙weight"),
    "LayerNorm backward with eps hard-coded to 1e-6": ("layer_norm_backward", {
        "layer_norm_backward": layer_norm_backward_with(eps=1e-6)}, 'dx, case "std 1e-3 row where eps dominates"',
        "so it tests eps"),
    "GELU backward: the tanh approximation's derivative": ("gelu_backward", {"gelu_backward": tanh_gelu_backward},
                                                           "dx, case ", "derivative of the tanh approximation"),
    "GELU backward without dy": ("gelu_backward", {"gelu_backward": lambda x, dy: reference_gelu_backward(
        x, np.ones_like(dy))}, "dx, case ", "dy not multiplied in?"),
    "softmax backward without y in the sum": ("softmax_backward", {
        "softmax_backward": lambda y, g: y * (g - g.sum(axis=-1, keepdims=True))}, "dscores, case ",
        "do not sum to 0"),
    "attention backward with the 1/sqrt(Dh) twice": ("attention_backward", {
        "attention_backward": attention_backward_scaled_twice}, "case ", "applied twice?"),
    "cross-entropy backward not divided": ("itm_loss_backward", {
        "cross_entropy_backward": cross_entropy_backward_with(divide_by="none")}, "dlogits, case ",
        "not divided by the number of rows?"),
    "cross-entropy backward with the sign flipped": ("itm_loss_backward", {
        "cross_entropy_backward": cross_entropy_backward_with(sign=-1.0)}, "dlogits, case ", "the sign"),
    "cross-entropy backward keeping the ignored row": ("itm_loss_backward", {
        "cross_entropy_backward": cross_entropy_backward_with(zero_ignored=False)},
        'dlogits, case "the ignored row (label -100)"', "this case tests ignore_index"),
}


@pytest.mark.parametrize("name", list(BACKWARD_MISTAKES))
def test_typical_backward_mistakes_fail_with_their_hint(name, capsys):
    component, functions, case, hint = BACKWARD_MISTAKES[name]
    with np.errstate(all="ignore"):
        result = check(component, **functions)
    out = capsys.readouterr().out
    assert not result.passed and case in result.message and " vs reference " in result.message, out
    hints = [n for n in result.notes if n.startswith("hint: ")]
    assert hints and hint in hints[0], out


def test_a_linear_backward_product_of_mismatched_shapes_gets_a_hint(capsys):
    def dx_with_w_transposed(x, p, dy):
        dy2 = dy.reshape(-1, dy.shape[-1])
        return dy2 @ p["weight"].T, {"weight": dy2.T @ x.reshape(-1, x.shape[-1]), "bias": dy2.sum(0)}

    result = check("linear_backward", linear_backward=dx_with_w_transposed)
    out = capsys.readouterr().out
    assert result.status == "error" and "matmul" in result.message, out
    assert any("dx = dy W is [..., out] times W [out, in]" in n for n in result.notes), out


def test_the_backward_handout_points_at_the_gradient_checker(tmp_path):
    from minibridge.assignments import build as builder

    builder.build(tmp_path, weeks=[5])
    for c in (BY_NAME[n] for n in ("linear_backward", "softmax_backward", "cross_modal_layer_backward")):
        for function in c.covers:
            source = (tmp_path / "minibridge" / builder.source_file(function)).read_text(encoding="utf-8")
            name = function.rsplit(".", 1)[1]
            banner = source.split(f"def {name}(")[1].split("raise NotImplementedError")[0]
            assert "minibridge.backward.gradcheck" in " ".join(line.strip("# ") for line in banner.splitlines()), \
                function
    assert "minibridge.backward.gradcheck" in (tmp_path / "ASSIGNMENTS.md").read_text(encoding="utf-8")
    import minibridge.backward.gradcheck as gradcheck

    assert callable(gradcheck.numerical_gradient) and callable(gradcheck.rel_error)


# ---- the hints ship in every handout: they compute no component, right or wrong ------------------------


COMPONENT_MODULES = {"ops", "vision", "text", "bridge", "heads", "model", "tokenizer", "backend", "backward"}
# NumPy's math that, composed, computes components (the symptoms need none of it: properties and
# stored mistakes do); and the matrix product.
SOLUTION_MATH = {"exp", "expm1", "tanh", "erf", "sqrt", "einsum", "matmul", "dot", "tensordot", "cumsum", "sigmoid"}
# and the array methods that rearrange a component's output into a mistake's (the patchify mistakes are stored)
REARRANGING = {"reshape", "transpose", "moveaxis", "swapaxes", "permute", "T"}


def test_components_py_computes_no_component_and_calls_the_package_only_through_the_student():
    """components.py ships in every handout: it may reach ops, text, tokenizer, … only through the
    `student` argument of a run function, and holds no formula of a component (its symptoms use
    properties of the outputs and stored mistakes, tests/make_snapshots.py)."""
    import ast
    import minibridge.assignments.components as components

    tree = ast.parse(Path(components.__file__).read_text(encoding="utf-8"))
    runs = {c.run.__name__ for c in COMPONENTS}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):  # from ..ops import x, from .. import text, from minibridge import bridge
            module = (node.module or "").split(".")
            assert not (set(module) | {a.name for a in node.names}) & COMPONENT_MODULES, ast.unparse(node)
            assert module[0] != "importlib", ast.unparse(node)
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith(("minibridge", "importlib")) for a in node.names), ast.unparse(node)
        if isinstance(node, ast.Name):
            assert node.id not in ("__import__", "import_module", "getattr"), f"line {node.lineno}: {node.id}"
        if isinstance(node, ast.BinOp | ast.AugAssign):
            assert not isinstance(node.op, ast.MatMult), f"line {node.lineno}: a matrix product"
        if isinstance(node, ast.Attribute) or isinstance(node, ast.Name):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            assert name not in SOLUTION_MATH | REARRANGING, f"line {node.lineno}: {ast.unparse(node)}"
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.Lambda)):
        student = fn.args.args[0].arg if isinstance(fn, ast.FunctionDef) and fn.name in runs else None
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and node.attr in COMPONENT_MODULES:
                owner = node.value  # student.ops, or student.backward.ops (student.backward, then .ops)
                if isinstance(owner, ast.Attribute) and owner.attr == "backward":
                    owner = owner.value
                assert isinstance(owner, ast.Name) and owner.id == student, (
                    f"line {node.lineno}: {ast.unparse(node)} outside a run function's student argument")


BPE_HIGHEST_FIRST = '''
def _planted_bpe(word, ranks):
    symbols = list(word)
    while len(symbols) > 1:
        known = [pair for pair in zip(symbols, symbols[1:]) if pair in ranks]
        if not known:
            break
        best, merged, i = max(known, key=ranks.get), [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols
'''
BPE_NEVER_MERGES = '''
def _planted_bpe(word, ranks):
    return list(word)
'''


def check_inside_a_handout(handout, planted):
    """The hint lines of `python -m minibridge.assignments check`, run inside a handout (its own grader and
    snapshots) whose tokenizer.bpe is `planted`, as a student runs it."""
    import subprocess
    import sys

    tokenizer = handout / "minibridge" / "tokenizer.py"
    lines = tokenizer.read_text(encoding="utf-8").splitlines()
    stub = next(i for i, line in enumerate(lines) if line.startswith('    raise NotImplementedError("bpe in'))
    lines[stub] = "    return _planted_bpe(word, ranks)"
    tokenizer.write_text("\n".join(lines) + "\n" + planted, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "minibridge.assignments", "check", "--component", "bpe"], cwd=handout,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and "FAIL  bpe" in proc.stdout, proc.stdout + proc.stderr
    return [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("hint: ")]


def test_inside_a_handout_the_hints_are_the_graders_own(tmp_path, capsys):
    """Inside a handout the grader's files are the handout's copy, beside the student's: a hint that ran the
    package's bpe would run the student's (and miss, or misfire)."""
    from minibridge.assignments import build as builder

    builder.build(tmp_path / "highest", ["bpe"])
    inside = check_inside_a_handout(tmp_path / "highest", BPE_HIGHEST_FIRST)
    outside = check("bpe", bpe=bpe_with(pick=max)).notes
    capsys.readouterr()
    assert inside == [n for n in outside if n.startswith("hint: ")] and any("highest rank first" in h for h in inside)

    builder.build(tmp_path / "never", ["bpe"])
    inside = check_inside_a_handout(tmp_path / "never", BPE_NEVER_MERGES)
    assert inside and not any("stopped after one merge" in h for h in inside), inside
