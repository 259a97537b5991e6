"""The text and vision layers' backward (backward/text.py, backward/vision.py) against torch autograd.

Each test runs one transformers module of a tiny BridgeTower (reference.build, minibridge's own random
weights) on random inputs, backpropagates a random upstream gradient through it with torch autograd,
and compares every input gradient and every parameter gradient (named by the module's own parameter
names) with ours. Without torch, float64 finite differences check one small layer of each file.
"""

from types import SimpleNamespace

import numpy as np
import pytest

import minibridge as mb
from minibridge.backward.gradcheck import numerical_gradient, rel_error
from minibridge.backward.text import (bert_attention_backward, bert_ffn_backward, bert_layer_backward,
                                      text_embed_backward)
from minibridge.backward.vision import vision_block_backward, vision_embed_backward
from minibridge.config import TINY
from minibridge.ops import additive_mask
from minibridge.text import bert_attention, text_embed
from minibridge.vision import vision_block, vision_embed
from minibridge.weights import random_weights, to_tree

# Every gradient within GRAD_TOL × max|reference gradient| of that tensor. Both sides are float32 sums
# of the same products in a different order (BLAS blocking, our recomputed LayerNorm statistics), which
# drift by ~1e-6 of the largest entry; a real mistake (a dropped LayerNorm term, a missing 1/√Dh, a
# transposed Jacobian, a lost residual) is off by 1e-2 or more.
GRAD_TOL = 1e-4
# Finite differences in float64 (gradcheck.rel_error): eps = 1e-6 leaves ~1e-10 of rounding and
# O(eps²) of truncation; a right gradient measures ~1e-9 here, a wrong one 1e-2 or more.
FD_TOL = 1e-7

SEED = 3
CFG = mb.BridgeTowerConfig.from_dict(TINY)
TC, VC = CFG.text_config, CFG.vision_config
LENGTHS = [7, 4, 2]  # a padded batch: T = 7, two rows with padding


# ---- helpers ---------------------------------------------------------------------------------


def flatten(tree, prefix=""):
    """Nested dicts / lists of arrays -> {dotted name: array}, the checkpoint's way of naming."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix[:-1]: tree}
    out = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def scale_name(name):
    """The tensor whose max|gradient| scales the comparison of `name`'s gradient: itself, but for the key bias.

    subtle: the key bias adds the same q·b_k to every score of a query's row, which softmax ignores:
    its exact gradient is 0 and both sides hold rounding noise (~1e-7 in float32), so it is compared
    with the scale of its layer's key weight gradient instead of its own.
    """
    return name.removesuffix("key.bias") + "key.weight" if name.endswith("key.bias") else name


def assert_grad_close(mine, ref, name, tol=GRAD_TOL, scale=None):
    """Fail with the worst element, its index and mine vs reference; return max|mine − ref| / scale.

    scale: max|ref| unless given.
    """
    assert mine.dtype == np.float32, f"{name}: float32 in, float32 out; got {mine.dtype}"
    assert mine.shape == ref.shape, f"{name}: shape mine {mine.shape} vs reference {ref.shape}"
    diff = np.abs(mine.astype(np.float64) - ref)
    diff[np.isnan(diff)] = np.inf
    scale = float(np.abs(ref).max()) if scale is None else scale
    assert scale > 0, f"{name}: the reference gradient is all zero; this check would compare nothing"
    worst = np.unravel_index(int(diff.argmax()), diff.shape)
    err = float(diff[worst]) / scale
    assert err <= tol, (f"{name}: max |mine - reference| = {diff[worst]:.3g} (relative to max|ref| {scale:.3g}: "
                        f"{err:.3g} > {tol}) at index {worst}: mine {mine[worst]:.7g} vs reference {ref[worst]:.7g}")
    return err


def assert_grads_match(mine_tree, ref_flat):
    """Our grads tree holds exactly the module's parameters, each within GRAD_TOL; returns {name: error}."""
    mine = flatten(mine_tree)
    assert sorted(mine) == sorted(ref_flat), f"parameters: mine {sorted(mine)} vs reference {sorted(ref_flat)}"
    return {name: assert_grad_close(mine[name], ref_flat[name], name,
                                    scale=float(np.abs(ref_flat[scale_name(name)]).max())) for name in ref_flat}


def autograd(fn, arrays, modules, dout):
    """torch autograd of fn(*tensors) · dout: ([grad of each array], {prefix + parameter name: grad})."""
    import torch

    xs = [torch.tensor(a, requires_grad=True) for a in arrays]
    for m in modules.values():
        m.zero_grad(set_to_none=True)
    fn(*xs).backward(torch.from_numpy(dout))
    params = {prefix + name: t.grad.double().numpy()
              for prefix, m in modules.items() for name, t in m.named_parameters()}
    return [x.grad.double().numpy() for x in xs], params


def padded_ids(lengths, vocab, rng):
    """<s> … </s> right-padded with pad id 1, as the tokenizer makes them; [B, T] int64 and [B, T] 0/1 mask."""
    ids = np.ones((len(lengths), max(lengths)), dtype=np.int64)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(3, vocab, size=n)
        ids[b, 0], ids[b, n - 1] = 0, 2
        mask[b, :n] = 1
    return ids, mask


def normal(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture(scope="module")
def tiny():
    """(transformers BridgeTowerModel, our parameter tree): the same random weights on both sides."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import reference

    model = reference.build(TINY, ["model"], SEED)["model"]
    return model, to_tree(random_weights(CFG, [], SEED))


# ---- text (backward/text.py) against autograd ----------------------------------------------------


@pytest.mark.parametrize("padded", [True, False])
def test_bert_attention_self_matches_autograd(tiny, padded):
    import torch

    model, p = tiny
    rng = np.random.default_rng(0)
    B, T, D = len(LENGTHS), max(LENGTHS), TC.hidden_size
    mask = additive_mask(padded_ids(LENGTHS if padded else [T] * B, TC.vocab_size, rng)[1])  # [B, 1, 1, T] or None
    x, dout = normal(rng, B, T, D), normal(rng, B, T, D)
    module = model.text_model.encoder.layer[0].attention
    mask_t = None if mask is None else torch.from_numpy(mask)
    (ref_dx,), ref = autograd(lambda x: module(x, attention_mask=mask_t)[0], [x], {"": module}, dout)

    layer = p["text_model"]["encoder"]["layer"][0]["attention"]
    dx, dkv, grads = bert_attention_backward(layer, x, x, TC.num_attention_heads, TC.layer_norm_eps, mask, dout)
    assert_grad_close(dx + dkv, ref_dx, "dx (self-attention: dx + dkv)")
    assert_grads_match(grads, ref)


def test_bert_attention_cross_matches_autograd(tiny):
    """Queries from one stream, keys/values from another of a different length, keys padded: dx and dkv apart."""
    import torch

    model, p = tiny
    rng = np.random.default_rng(1)
    B, T, Sk, D = 3, 5, 10, TC.hidden_size
    kv_mask = additive_mask(padded_ids([10, 6, 3], TC.vocab_size, rng)[1])  # [B, 1, 1, Sk]
    x, kv, dout = normal(rng, B, T, D), normal(rng, B, Sk, D), normal(rng, B, T, D)
    module = model.cross_modal_text_layers[0].crossattention
    (ref_dx, ref_dkv), ref = autograd(
        lambda x, kv: module(x, encoder_hidden_states=kv, encoder_attention_mask=torch.from_numpy(kv_mask))[0],
        [x, kv], {"": module}, dout)

    layer = p["cross_modal_text_layers"][0]["crossattention"]
    dx, dkv, grads = bert_attention_backward(layer, x, kv, TC.num_attention_heads, TC.layer_norm_eps, kv_mask, dout)
    assert_grad_close(dx, ref_dx, "dx")
    assert_grad_close(dkv, ref_dkv, "dkv")
    assert_grads_match(grads, ref)


def test_bert_ffn_matches_autograd(tiny):
    model, p = tiny
    rng = np.random.default_rng(2)
    x, dout = normal(rng, 3, 7, TC.hidden_size), normal(rng, 3, 7, TC.hidden_size)
    module = model.text_model.encoder.layer[0]
    modules = {"intermediate.": module.intermediate, "output.": module.output}
    (ref_dx,), ref = autograd(lambda x: module.output(module.intermediate(x), x), [x], modules, dout)

    dx, grads = bert_ffn_backward(p["text_model"]["encoder"]["layer"][0], x, TC.layer_norm_eps, dout)
    assert_grad_close(dx, ref_dx, "dx")
    assert_grads_match(grads, ref)


@pytest.mark.parametrize("padded", [True, False])
def test_bert_layer_matches_autograd(tiny, padded):
    import torch

    model, p = tiny
    rng = np.random.default_rng(3)
    B, T, D = len(LENGTHS), max(LENGTHS), TC.hidden_size
    mask = additive_mask(padded_ids(LENGTHS if padded else [T] * B, TC.vocab_size, rng)[1])
    x, dout = normal(rng, B, T, D), normal(rng, B, T, D)
    module = model.text_model.encoder.layer[1]
    mask_t = None if mask is None else torch.from_numpy(mask)
    (ref_dx,), ref = autograd(lambda x: module(x, attention_mask=mask_t), [x], {"": module}, dout)

    dx, grads = bert_layer_backward(p["text_model"]["encoder"]["layer"][1], x, TC, mask, dout)
    assert_grad_close(dx, ref_dx, "dx")
    assert_grads_match(grads, ref)


def test_text_embed_matches_autograd(tiny):
    """Repeated tokens add up in their row; the pad's word and position rows get nothing, as in torch."""
    import torch

    model, p = tiny
    rng = np.random.default_rng(4)
    ids, _ = padded_ids(LENGTHS, TC.vocab_size, rng)  # <s>, </s> and the pad repeat across the batch
    ids[0, 1] = ids[0, 2] = ids[1, 1] = 7  # and one word three times
    dout = normal(rng, *ids.shape, TC.hidden_size)
    module = model.text_model.embeddings
    _, ref = autograd(lambda: module(input_ids=torch.from_numpy(ids)), [], {"": module}, dout)

    grads = text_embed_backward(p["text_model"]["embeddings"], ids, TC, dout)
    assert_grads_match(grads, ref)
    pad = TC.pad_token_id
    assert not grads["word_embeddings"]["weight"][pad].any() and not grads["position_embeddings"]["weight"][pad].any()


# ---- vision (backward/vision.py) against autograd ------------------------------------------------


def test_vision_block_matches_autograd(tiny):
    model, p = tiny
    rng = np.random.default_rng(5)
    L = VC.num_positions
    x, dout = normal(rng, 2, L, VC.hidden_size), normal(rng, 2, L, VC.hidden_size)
    module = model.vision_model.visual.transformer.resblocks[1]
    # subtle: the reference's vision tower is sequence-first [L, B, Dv]; ours is batch-first.
    (ref_dx,), ref = autograd(lambda x: module(x.transpose(0, 1)).transpose(0, 1), [x], {"": module}, dout)

    dx, grads = vision_block_backward(p["vision_model"]["visual"]["transformer"]["resblocks"][1], x, VC, dout)
    assert_grad_close(dx, ref_dx, "dx")
    assert_grads_match(grads, ref)


def test_vision_embed_matches_autograd(tiny):
    import torch

    model, p = tiny
    rng = np.random.default_rng(6)
    pixels = normal(rng, 2, 3, VC.image_size, VC.image_size)
    dout = normal(rng, 2, VC.num_positions, VC.hidden_size)
    visual = model.vision_model.visual
    _, ref = autograd(lambda: visual.ln_pre(visual.embeddings(torch.from_numpy(pixels))), [],
                      {"embeddings.": visual.embeddings, "ln_pre.": visual.ln_pre}, dout)

    grads = vision_embed_backward(p["vision_model"]["visual"], pixels, VC, dout)
    assert_grads_match(grads, ref)


def test_vision_embed_backward_refuses_other_image_sizes():
    """No interpolate_pos_encoding in training: an image of another size is refused, naming both sizes."""
    visual = to_tree(random_weights(CFG, [], SEED))["vision_model"]["visual"]
    pixels = np.zeros((1, 3, 16, 16), np.float32)  # 4×4 patches where the table has 3×3 (+ CLS)
    dout = np.zeros((1, 17, VC.hidden_size), np.float32)
    with pytest.raises(ValueError, match=r"16×16 .*image_size 12×12"):
        vision_embed_backward(visual, pixels, VC, dout)


# ---- float64 finite differences: no torch needed ---------------------------------------------------


def param_numerical_gradients(loss, p):
    """{dotted name: ∂loss/∂leaf} by central differences, for every array leaf of the tree p (float64)."""
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
                continue

            def f(w, node=node, key=key):
                node[key] = w
                return loss()

            out[prefix + key] = numerical_gradient(f, value)
            node[key] = value  # put the original back

    walk(p, "")
    return out


def random_tree(rng, shapes):
    """{dotted name: shape} -> nested float64 params; LayerNorm weights near 1, the rest small."""
    def is_norm_weight(name):
        return name.endswith("weight") and ("LayerNorm" in name or name.startswith("ln_"))

    flat = {name: float(is_norm_weight(name)) + 0.3 * rng.standard_normal(shape) for name, shape in shapes.items()}
    return to_tree(flat)


def assert_fd_close(mine, num, name, scale=None):
    """gradcheck.rel_error of mine vs the numerical gradient, or max|mine − num| / scale when given."""
    err = rel_error(mine, num) if scale is None else float(np.abs(mine - num).max()) / scale
    assert err <= FD_TOL, f"{name}: relative error {err:.2e} against finite differences (> {FD_TOL})"
    return err


def assert_fd_tree_close(grads, num):
    """Our grads tree holds exactly the numerical gradients' names, each within FD_TOL."""
    mine = flatten(grads)
    assert sorted(mine) == sorted(num), f"parameters: mine {sorted(mine)} vs numerical {sorted(num)}"
    for name in num:
        scale = None if scale_name(name) == name else float(np.abs(num[scale_name(name)]).max())
        assert_fd_close(mine[name], num[name], name, scale)


def test_bert_attention_backward_finite_differences():
    """Cross-attention with padded keys, D = 8 in 2 heads: dx, dkv and every parameter."""
    rng = np.random.default_rng(7)
    B, Sq, Sk, D, H, eps = 2, 3, 4, 8, 2, 1e-5
    shapes = {f"self.{n}.weight": (D, D) for n in ("query", "key", "value")}
    shapes.update({f"self.{n}.bias": (D,) for n in ("query", "key", "value")})
    shapes.update({"output.dense.weight": (D, D), "output.dense.bias": (D,),
                   "output.LayerNorm.weight": (D,), "output.LayerNorm.bias": (D,)})
    p = random_tree(rng, shapes)
    x, kv, dout = (rng.standard_normal(s) for s in ((B, Sq, D), (B, Sk, D), (B, Sq, D)))
    mask = additive_mask(np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))  # [B, 1, 1, Sk], the second row padded

    def loss(x=x, kv=kv):
        return (bert_attention(p, x, kv, H, eps, mask)[0] * dout).sum()

    dx, dkv, grads = bert_attention_backward(p, x, kv, H, eps, mask, dout)
    assert_fd_close(dx, numerical_gradient(lambda x: loss(x=x), x), "dx")
    assert_fd_close(dkv, numerical_gradient(lambda kv: loss(kv=kv), kv), "dkv")
    assert_fd_tree_close(grads, param_numerical_gradients(loss, p))


def test_text_embed_backward_finite_differences():
    """Every table row but the pad's matches the numerical gradient; the pad's rows are 0 (torch's padding_idx)."""
    rng = np.random.default_rng(8)
    V, P, D = 6, 8, 8
    cfg = SimpleNamespace(pad_token_id=1, layer_norm_eps=1e-5)
    p = random_tree(rng, {"word_embeddings.weight": (V, D), "position_embeddings.weight": (P, D),
                          "token_type_embeddings.weight": (1, D), "LayerNorm.weight": (D,), "LayerNorm.bias": (D,)})
    ids = np.array([[0, 4, 4, 5, 2], [0, 3, 2, 1, 1]])  # a repeated word; the second row padded
    dout = rng.standard_normal((2, 5, D))

    grads = flatten(text_embed_backward(p, ids, cfg, dout))
    num = param_numerical_gradients(lambda: (text_embed(p, ids, cfg) * dout).sum(), p)
    assert sorted(grads) == sorted(num)
    for name in num:
        mine = grads[name]
        if name in ("word_embeddings.weight", "position_embeddings.weight"):
            # The numerical gradient of the pad's row is not 0 (the pads did read it), but torch
            # freezes that row, and so do we: compare the other rows, and check that one is 0.
            assert not mine[cfg.pad_token_id].any(), f"{name}: the pad's row should get no gradient"
            assert num[name][cfg.pad_token_id].any(), "the pads read this row: the check above means something"
            mine, num[name] = np.delete(mine, cfg.pad_token_id, 0), np.delete(num[name], cfg.pad_token_id, 0)
        assert_fd_close(mine, num[name], name)


def test_vision_block_backward_finite_differences():
    """A pre-LN ViT block with Dv = 8 in 2 heads (a stand-in config: CLIP's heads are 64 wide)."""
    rng = np.random.default_rng(9)
    B, L, D = 2, 5, 8
    cfg = SimpleNamespace(num_attention_heads=2, layer_norm_eps=1e-5)
    p = random_tree(rng, {"ln_1.weight": (D,), "ln_1.bias": (D,), "attn.in_proj_weight": (3 * D, D),
                          "attn.in_proj_bias": (3 * D,), "attn.out_proj.weight": (D, D), "attn.out_proj.bias": (D,),
                          "ln_2.weight": (D,), "ln_2.bias": (D,), "mlp.c_fc.weight": (4 * D, D),
                          "mlp.c_fc.bias": (4 * D,), "mlp.c_proj.weight": (D, 4 * D), "mlp.c_proj.bias": (D,)})
    x, dout = rng.standard_normal((B, L, D)), rng.standard_normal((B, L, D))

    def loss(x=x):
        return (vision_block(p, x, cfg)[0] * dout).sum()

    dx, grads = vision_block_backward(p, x, cfg, dout)
    assert_fd_close(dx, numerical_gradient(lambda x: loss(x=x), x), "dx")
    assert_fd_tree_close(grads, param_numerical_gradients(loss, p))


def test_vision_embed_backward_finite_differences():
    """4×4 images in 2×2 patches (1 + 4 tokens), Dv = 8: the kernel, CLS, position table and ln_pre."""
    rng = np.random.default_rng(10)
    D = 8
    cfg = SimpleNamespace(image_size=4, patch_size=2, layer_norm_eps=1e-5)
    p = random_tree(rng, {"embeddings.class_embedding": (D,), "embeddings.patch_embedding.weight": (D, 3, 2, 2),
                          "embeddings.position_embedding.weight": (5, D), "ln_pre.weight": (D,), "ln_pre.bias": (D,)})
    pixels, dout = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 5, D))

    grads = vision_embed_backward(p, pixels, cfg, dout)
    assert_fd_tree_close(grads, param_numerical_gradients(lambda: (vision_embed(p, pixels, cfg) * dout).sum(), p))
