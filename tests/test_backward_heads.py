"""The backward of the bridge and the heads (minibridge/backward/bridge.py, heads.py) against torch autograd.

Every function's gradients, of each array input and each parameter, are compared with what torch
autograd gives through transformers' own modules (BridgeTowerLinkTower, BridgeTowerBertCrossLayer,
BridgeTowerPooler, the ITM / MLM / contrastive heads, and the contrastive loss as
BridgeTowerForContrastiveLearning computes it), built by tests/reference.py with minibridge's random
weights, on random inputs and a random upstream gradient, with padded masks where masks apply.
Without torch, float64 central differences check one function of each file.
"""

import functools

import numpy as np
import pytest

import minibridge as mb
from minibridge.backward.bridge import cross_modal_layer_backward, link_tower_backward, to_cross_space_backward
from minibridge.backward.heads import (contrastive_embedding_backward, contrastive_loss_backward,
                                       itm_logits_backward, mlm_logits_backward, pooler_backward)
from minibridge.bridge import cross_modal_layer, link_tower, to_cross_space
from minibridge.config import TINY, derived
from minibridge.heads import contrastive_embedding, contrastive_loss, mlm_logits, pooler
from minibridge.ops import additive_mask
from minibridge.weights import random_weights, to_tree

# Every gradient is compared per tensor: max |mine − reference| ≤ GRAD_TOL × max |reference| of that
# tensor. Both sides compute in float32 and sum in different orders (a weight's gradient sums over
# every row), which moves them by about 1e-6 relative; 1e-4 leaves room for that, while a wrong term
# (LayerNorm's mean term dropped, a missing 1/√Dh, a transposed product) moves them by 1e-2 or more.
GRAD_TOL = 1e-4
# Central differences in float64 with step 1e-6 are good to about 1e-8 relative (truncation h²,
# rounding 1e-16 / h); 1e-6 leaves room, and a wrong gradient misses by far more.
FD_TOL = 1e-6
SEED = 0
B, T, L = 2, 5, 10  # batch, text tokens, image tokens (TINY's 1 + 3² patches)
TEXT_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # the second text is padded


def assert_grad_close(mine, ref, name, tol=GRAD_TOL, scale=None):
    """Fail with the worst element, its index and mine vs reference; return the relative error.

    The error is relative to `scale`, by default max |ref|.
    """
    mine, ref = np.asarray(mine, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert mine.shape == ref.shape, f"{name}: shape mine {mine.shape} vs reference {ref.shape}"
    diff = np.abs(mine - ref).reshape(-1)
    diff[np.isnan(diff)] = np.inf
    worst = int(diff.argmax())
    scale = float(np.abs(ref).max()) if scale is None else scale
    if scale == 0.0:  # a gradient that must be exactly zero (a row or tensor the output never read)
        assert diff[worst] == 0.0, f"{name}: the reference gradient is 0, mine reaches {diff[worst]:.3g}"
        return 0.0
    err = float(diff[worst]) / scale
    index = np.unravel_index(worst, ref.shape) if ref.ndim else ()
    assert err <= tol, (f"{name}: max |mine - reference| = {diff[worst]:.3g} (relative to max |reference| "
                        f"{err:.3g} > {tol}) at {index}: mine {mine[index]:.7g} vs reference {ref[index]:.7g}")
    return err


def flatten(tree, prefix=""):
    """A nested grads dict (lists for numbered names) -> {dotted name: array}, as torch names parameters."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix: tree}
    out = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def random(*shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- the reference: transformers' modules, with minibridge's random weights ----------------------


@functools.lru_cache(maxsize=None)
def reference_models(link_tower_type="add", share=True):
    """(config dict, {head: transformers model}, minibridge weight tree of the same numbers)."""
    reference = pytest.importorskip("reference")  # needs torch and transformers
    config = derived(TINY, link_tower_type=link_tower_type, share_cross_modal_transformer_layers=share)
    models = reference.build(config, ["itm", "mlm", "itc"], SEED)
    assert models["itm"].config._attn_implementation == "eager"  # the reference's plain softmax attention
    flat = reference.state_dict_numpy(models, prefixed=False)
    return config, models, to_tree({k: v.copy() for k, v in flat.items()})


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def leaf(torch, array):
    """A float32 torch tensor of the array's numbers that collects its gradient."""
    return torch.tensor(array, requires_grad=True)


def assert_params_close(mine, module, name):
    """Every parameter gradient of a torch module against mine (flattened): the same names, the same numbers."""
    ref = {n: q.grad.numpy() for n, q in module.named_parameters() if q.grad is not None}
    mine = flatten(mine)
    assert sorted(mine) == sorted(ref), f"{name}: gradient names mine {sorted(mine)} vs reference {sorted(ref)}"
    for key in ref:
        scale = None
        if key.endswith("key.bias"):
            # subtle: the key bias adds q·b to every score of a query's row, and softmax ignores a
            # shift of the whole row, so its gradient is exactly 0 in exact arithmetic: both sides
            # hold float32 rounding noise (~1e-8). It is held to the scale of the query bias's gradient.
            scale = float(np.abs(ref[key.replace("key.bias", "query.bias")]).max())
        assert_grad_close(mine[key], ref[key], f"{name}: {key}", scale=scale)


# ---- bridge.py ----------------------------------------------------------------------------------


@pytest.mark.parametrize("share, layer", [(True, 1), (False, 0), (False, 1)])
@pytest.mark.parametrize("side", ["text", "image"])
@pytest.mark.parametrize("cls_only", [False, True], ids=["tokens", "cls-row"])
def test_to_cross_space_backward_matches_autograd(torch, side, share, layer, cls_only):
    config, models, p = reference_models(share=share)
    cfg = mb.BridgeTowerConfig.from_dict(config)
    bt = models["itm"].bridgetower
    S = T if side == "text" else L
    h = random(B, 128, seed=1) if cls_only else random(B, S, 128, seed=1)  # Dt = Dv = 128 in TINY
    dout = random(*h.shape[:-1], cfg.hidden_size, seed=2)

    bt.zero_grad(set_to_none=True)
    h_t = leaf(torch, h)
    if side == "text":
        out = bt._apply_text_transform(h_t, layer)
    elif cls_only:  # the CLS row alone, as the contrastive head reads it: ln_post itself
        out = bt._apply_image_transform(bt.vision_model.visual.ln_post(h_t), layer)
    else:  # forward_post: ln_post of the reference's sequence-first state, returned batch-first
        x = bt.vision_model.visual.forward_post(h_t.permute(1, 0, 2))
        out = bt._apply_image_transform(x, layer)
    row = torch.full((1,), 0 if side == "text" else 1, dtype=torch.long)
    out = out + bt.token_type_embeddings(row).expand_as(out)  # as BridgeTowerModel.forward adds it
    out.backward(torch.from_numpy(dout))

    np.testing.assert_allclose(to_cross_space(p, cfg, side, h, layer), out.detach().numpy(), atol=1e-5)
    dh, grads = to_cross_space_backward(p, cfg, side, h, layer, dout)
    assert_grad_close(dh, h_t.grad.numpy(), f"{side}: dh")
    # the whole model's parameters: exactly the transform used (its layer's, when not shared), the
    # token types (the other side's row 0) and, for the image, ln_post get a gradient
    assert_params_close(grads, bt, side)
    assert not grads["token_type_embeddings.weight"][1 - (side == "image")].any()


@pytest.mark.parametrize("link_tower_type", ["add", "scaled_add", "interpolate"])
def test_link_tower_backward_matches_autograd(torch, link_tower_type):
    config, models, p = reference_models(link_tower_type)
    cfg = mb.BridgeTowerConfig.from_dict(config)
    module = models["itm"].bridgetower.cross_modal_text_link_tower[0]
    h, c, dout = random(B, T, 128, seed=3), random(B, T, 128, seed=4), random(B, T, 128, seed=5)

    module.zero_grad(set_to_none=True)
    h_t, c_t = leaf(torch, h), leaf(torch, c)
    out = module(h_t, c_t, None)  # BridgeTowerLinkTower ignores its attention_mask argument
    out.backward(torch.from_numpy(dout))

    lp = p["cross_modal_text_link_tower"][0]
    dh, dc, grads = link_tower_backward(lp, h, c, link_tower_type, cfg.layer_norm_eps, dout)
    assert_grad_close(dh, h_t.grad.numpy(), "dh")
    assert_grad_close(dc, c_t.grad.numpy(), "dc")
    assert_params_close(grads, module, link_tower_type)  # LayerNorm, and scaled_factor / beta as 0-d arrays
    dh += 1.0  # a caller accumulating into one gradient in place leaves the other as it was
    assert_grad_close(dc, c_t.grad.numpy(), "dc after dh += 1")


def test_link_tower_backward_refuses_an_unknown_type():
    p = to_tree(random_weights(mb.BridgeTowerConfig.from_dict(TINY), [], SEED))["cross_modal_text_link_tower"][0]
    h = random(B, T, 128, seed=3)
    with pytest.raises(ValueError, match="add, scaled_add or interpolate, got 'concat'"):
        link_tower_backward(p, h, h, "concat", 1e-5, h)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("stream", ["text", "image"])
def test_cross_modal_layer_backward_matches_autograd(torch, stream, share):
    """The text stream masks its self-attention, the image stream its cross-attention (to the padded text)."""
    from transformers.masking_utils import create_bidirectional_mask

    config, models, p = reference_models(share=share)
    cfg = mb.BridgeTowerConfig.from_dict(config)
    bt = models["itm"].bridgetower
    module = (bt.cross_modal_text_layers if stream == "text" else bt.cross_modal_image_layers)[0]
    S, S_other = (T, L) if stream == "text" else (L, T)
    x, other, dout = random(B, S, 128, seed=6), random(B, S_other, 128, seed=7), random(B, S, 128, seed=8)

    # the text mask as BridgeTowerModel.forward builds it: additive, float32's minimum on padding
    torch_mask = create_bidirectional_mask(config=bt.config, inputs_embeds=torch.zeros(B, 1, 128),
                                           attention_mask=torch.from_numpy(TEXT_MASK))
    mask = additive_mask(TEXT_MASK)  # [B, 1, 1, T]
    np.testing.assert_array_equal(mask, torch_mask.numpy())

    module.zero_grad(set_to_none=True)
    x_t, other_t = leaf(torch, x), leaf(torch, other)
    if stream == "text":  # as BridgeTowerModel.forward calls the layers
        out = module(x_t, other_t, attention_mask=torch_mask)[0]
        self_mask, cross_mask = mask, None
    else:
        out = module(x_t, other_t, encoder_attention_mask=torch_mask)[0]
        self_mask, cross_mask = None, mask
    out.backward(torch.from_numpy(dout))

    lp = p[f"cross_modal_{stream}_layers"][0]
    tc = cfg.text_config
    np.testing.assert_allclose(cross_modal_layer(lp, x, other, tc, self_mask, cross_mask)[0],
                               out.detach().numpy(), atol=1e-4)
    dx, dother, grads = cross_modal_layer_backward(lp, x, other, tc, self_mask, cross_mask, dout)
    assert_grad_close(dx, x_t.grad.numpy(), f"{stream}: dx")
    assert_grad_close(dother, other_t.grad.numpy(), f"{stream}: dother")
    assert_params_close(grads, module, stream)
    if stream == "image":  # the padded text tokens were never attended to: no gradient reaches them
        assert not dother[1, 3:].any()


# ---- heads.py -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cross_modal_text_pooler", "cross_modal_image_pooler"])
def test_pooler_backward_matches_autograd(torch, name):
    config, models, p = reference_models()
    module = getattr(models["itm"].bridgetower, name)
    features, dpooled = random(B, T, 128, seed=9), random(B, 128, seed=10)

    module.zero_grad(set_to_none=True)
    f_t = leaf(torch, features)
    module(f_t).backward(torch.from_numpy(dpooled))

    dfeatures, grads = pooler_backward(p[name], features, dpooled)
    assert_grad_close(dfeatures, f_t.grad.numpy(), "dfeatures")  # tokens after the first: exactly 0
    assert_params_close(grads, module, name)


def test_itm_logits_backward_matches_autograd(torch):
    config, models, p = reference_models()
    module = models["itm"].itm_score
    pooled, dlogits = random(B, 256, seed=11), random(B, 2, seed=12)

    module.zero_grad(set_to_none=True)
    pooled_t = leaf(torch, pooled)
    module(pooled_t).backward(torch.from_numpy(dlogits))

    dpooled, grads = itm_logits_backward(p["itm_score"], pooled, dlogits)
    assert_grad_close(dpooled, pooled_t.grad.numpy(), "dpooled")
    assert_params_close(grads, module, "itm_score")


def test_mlm_logits_backward_matches_autograd(torch):
    config, models, p = reference_models()
    cfg = mb.BridgeTowerConfig.from_dict(config)
    module = models["mlm"].mlm_score
    features, dlogits = random(B, T, 128, seed=13), random(B, T, cfg.text_config.vocab_size, seed=14)

    module.zero_grad(set_to_none=True)
    f_t = leaf(torch, features)
    out = module(f_t)
    out.backward(torch.from_numpy(dlogits))

    eps = cfg.layer_norm_eps
    np.testing.assert_allclose(mlm_logits(p["mlm_score"], features, eps), out.detach().numpy(), atol=1e-5)
    dfeatures, grads = mlm_logits_backward(p["mlm_score"], features, eps, dlogits)
    assert_grad_close(dfeatures, f_t.grad.numpy(), "dfeatures")
    assert_params_close(grads, module, "mlm_score")  # transform, decoder.weight, bias


@pytest.mark.parametrize("name, width", [("itc_text_head", 128), ("itc_image_head", 128),
                                         ("itc_cross_modal_head", 256)])
def test_contrastive_embedding_backward_matches_autograd(torch, name, width):
    config, models, p = reference_models()
    module = getattr(models["itc"], name)
    x, dout = random(B, width, seed=15), random(B, 16, seed=16)  # C = contrastive_hidden_size = 16

    module.zero_grad(set_to_none=True)
    x_t = leaf(torch, x)
    out = torch.nn.functional.normalize(module(x_t), dim=-1, p=2)  # as the reference does after the head
    out.backward(torch.from_numpy(dout))

    np.testing.assert_allclose(contrastive_embedding(p[name], x), out.detach().numpy(), atol=1e-6)
    dx, grads = contrastive_embedding_backward(p[name], x, dout)
    assert_grad_close(dx, x_t.grad.numpy(), "dx")
    assert_params_close(grads, module, name)


def unit_rows(*shape, seed):
    x = random(*shape, seed=seed)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_contrastive_loss_backward_matches_autograd(torch):
    """The loss as BridgeTowerForContrastiveLearning.forward writes it, with its own logit_scale."""
    config, models, p = reference_models()
    itc = models["itc"]
    text, image, cross = (unit_rows(3, 16, seed=s) for s in (17, 18, 19))  # a batch of 3 pairs

    itc.zero_grad(set_to_none=True)
    text_t, image_t, cross_t = leaf(torch, text), leaf(torch, image), leaf(torch, cross)
    logit_scale = itc.logit_scale.exp()
    logit_scale.retain_grad()  # d loss / d scale, the gradient contrastive_loss_backward returns
    labels = torch.arange(3)
    ce = torch.nn.functional.cross_entropy
    loss = (ce(torch.matmul(text_t, image_t.t()) * logit_scale, labels)
            + ce(torch.matmul(text_t, cross_t.t()) * logit_scale, labels)
            + ce(torch.matmul(image_t, cross_t.t()) * logit_scale, labels)) / 3.0
    loss.backward()

    scale = np.exp(p["logit_scale"])
    np.testing.assert_allclose(contrastive_loss(text, image, cross, scale), loss.item(), rtol=1e-6)
    dtext, dimage, dcross, dscale = contrastive_loss_backward(text, image, cross, scale)
    assert_grad_close(dtext, text_t.grad.numpy(), "dtext")
    assert_grad_close(dimage, image_t.grad.numpy(), "dimage")
    assert_grad_close(dcross, cross_t.grad.numpy(), "dcross")
    assert dscale.shape == () and dscale.dtype == np.float32
    assert_grad_close(dscale, logit_scale.grad.numpy(), "dscale")
    # chained to the stored log-scale: d/d logit_scale = dscale · scale
    assert_grad_close(dscale * scale, itc.logit_scale.grad.numpy(), "dlogit_scale")


# ---- without torch: float64 central differences ---------------------------------------------------
# Only functions that compute in float64 throughout can be checked this way (gradcheck.py): the
# cross-modal layer and the MLM head go through ops.gelu's float32 erf, and the ITC loss through
# ops.cross_entropy's float32 result, so those are checked against autograd above.


def check_numerically(f, x, analytic, name):
    """numerical_gradient of the scalar f at x against the analytic gradient, in float64."""
    from minibridge.backward.gradcheck import numerical_gradient, rel_error

    err = rel_error(numerical_gradient(f, x), analytic)
    assert err < FD_TOL, f"{name}: relative error {err:.2e} against central differences (> {FD_TOL})"


def random64(*shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("link_tower_type", ["add", "scaled_add", "interpolate"])
def test_link_tower_backward_matches_central_differences(link_tower_type):
    D = 6
    p = {"LayerNorm": {"weight": 1 + 0.1 * random64(D, seed=20), "bias": random64(D, seed=21)},
         "scaled_factor": np.asarray(0.7), "beta": np.asarray(0.3)}
    h, c, dout = random64(2, 3, D, seed=22), random64(2, 3, D, seed=23), random64(2, 3, D, seed=24)
    dh, dc, grads = link_tower_backward(p, h, c, link_tower_type, 1e-5, dout)

    def loss(h=h, c=c, p=p):  # the scalar whose gradient the backward gives: Σ out ⊙ dout
        return (link_tower(p, h, c, link_tower_type, 1e-5) * dout).sum()

    check_numerically(lambda x: loss(h=x), h, dh, "dh")
    check_numerically(lambda x: loss(c=x), c, dc, "dc")
    for key in ("weight", "bias"):
        check_numerically(lambda x: loss(p={**p, "LayerNorm": {**p["LayerNorm"], key: x}}), p["LayerNorm"][key],
                          grads["LayerNorm"][key], f"LayerNorm.{key}")
    scalar = {"scaled_add": "scaled_factor", "interpolate": "beta"}.get(link_tower_type)
    assert sorted(grads) == sorted(["LayerNorm"] + ([scalar] if scalar else []))
    if scalar:
        assert grads[scalar].shape == ()
        check_numerically(lambda x: loss(p={**p, scalar: x}), p[scalar], grads[scalar], scalar)


def test_to_cross_space_backward_matches_central_differences():
    """The image side with a Linear per layer: ln_post, layer 1's transform, the token type row."""
    cfg = mb.BridgeTowerConfig.from_dict(derived(TINY, share_cross_modal_transformer_layers=False))
    p = to_tree({k: v.astype(np.float64) for k, v in random_weights(cfg, [], SEED).items()})
    h, dout = random64(1, 2, 128, seed=25), random64(1, 2, 128, seed=26)
    dh, grads = to_cross_space_backward(p, cfg, "image", h, 1, dout)
    check_numerically(lambda x: (to_cross_space(p, cfg, "image", x, 1) * dout).sum(), h, dh, "dh")
    ln_post = p["vision_model"]["visual"]["ln_post"]

    def with_ln_weight(x):
        q = {**p, "vision_model": {"visual": {"ln_post": {**ln_post, "weight": x}}}}
        return (to_cross_space(q, cfg, "image", h, 1) * dout).sum()

    check_numerically(with_ln_weight, ln_post["weight"], grads["vision_model.visual.ln_post.weight"],
                      "ln_post.weight")
    assert sorted(grads) == ["cross_modal_image_transform.1.bias", "cross_modal_image_transform.1.weight",
                             "token_type_embeddings.weight", "vision_model.visual.ln_post.bias",
                             "vision_model.visual.ln_post.weight"]
    np.testing.assert_allclose(grads["token_type_embeddings.weight"][1], dout.sum(axis=(0, 1)))
    assert not grads["token_type_embeddings.weight"][0].any()


def test_contrastive_embedding_and_pooler_backward_match_central_differences():
    p = {"fc": {"weight": random64(4, 5, seed=27), "bias": random64(4, seed=28)}}
    x, dout = random64(3, 5, seed=29), random64(3, 4, seed=30)
    dx, grads = contrastive_embedding_backward(p, x, dout)
    check_numerically(lambda a: (contrastive_embedding(p, a) * dout).sum(), x, dx, "contrastive dx")
    check_numerically(lambda w: (contrastive_embedding({"fc": {**p["fc"], "weight": w}}, x) * dout).sum(),
                      p["fc"]["weight"], grads["fc"]["weight"], "contrastive fc.weight")

    p = {"dense": {"weight": random64(5, 5, seed=31), "bias": random64(5, seed=32)}}
    features, dpooled = random64(3, 4, 5, seed=33), random64(3, 5, seed=34)
    dfeatures, grads = pooler_backward(p, features, dpooled)
    check_numerically(lambda a: (pooler(p, a) * dpooled).sum(), features, dfeatures, "pooler dfeatures")
    check_numerically(lambda b: (pooler({"dense": {**p["dense"], "bias": b}}, features) * dpooled).sum(),
                      p["dense"]["bias"], grads["dense"]["bias"], "pooler dense.bias")
