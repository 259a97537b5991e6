"""AdamW (minibridge/optim.py): three steps equal to torch.optim.AdamW's; the first step by hand; a
memory-mapped checkpoint copied on first write, its file never changed; bad gradients refused by name."""

import hashlib

import numpy as np
import pytest

import minibridge as mb
from minibridge.config import TINY, derived
from minibridge.optim import adamw_update
from minibridge.weights import random_weights, save_random_checkpoint, to_tree

# AdamW's weights against torch's after each step: max |mine − torch| ≤ ADAM_TOL × max |torch's weight|,
# tensor by tensor. Both compute in float32 in the same order, so they differ by rounding alone (torch's
# lerp_ fuses a multiply-add where the CPU has one): an ulp or two, 1.5e-7 relative at worst after three
# steps (measured 2026-12, torch 2.13; about half the tensors equal bit for bit). A mistake (a bias
# correction left out, decay after the update, the step count shared between weights) moves weights by
# ~lr = 1e-2, a hundred thousand times more.
ADAM_TOL = 1e-6
HYPER = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY, heads=("itm", "itc"), seed=3)


def random_grads(weights, names, rng):
    """{name: float32 gradient} with a different scale per tensor, from 1e-9 (where eps matters) to 10."""
    out = {}
    for name in names:
        scale = 10.0 ** rng.uniform(-9, 1)
        out[name] = np.asarray(scale * rng.standard_normal(weights[name].shape), np.float32)  # (0-d stays an array)
    return out


def relative_error(mine, ref):
    return float(np.abs(mine.astype(np.float64) - ref).max() / np.abs(ref).max())


def test_three_steps_equal_torch_adamw(checkpoint):
    torch = pytest.importorskip("torch", reason="the comparison needs the reference extra (torch)")
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(checkpoint)  # logit_scale is 0-d
    weights = model.state_dict()
    names = list(weights)
    assert weights["logit_scale"].shape == ()
    theirs = {n: torch.tensor(np.array(a), requires_grad=True) for n, a in weights.items()}
    optimizer = mb.AdamW(model, **HYPER)
    reference = torch.optim.AdamW(list(theirs.values()), **HYPER)

    rng = np.random.default_rng(0)
    subset = [n for n in names[1::3] if n != "logit_scale"]  # step 2: a third of the weights, not the 0-d one
    worst = 0.0
    for step, step_names in enumerate([names, subset, names], start=1):
        before = {n: np.array(a) for n, a in model.state_dict().items()}
        grads = random_grads(weights, step_names, rng)
        for n, p in theirs.items():
            p.grad = torch.from_numpy(grads[n].copy()) if n in grads else None
        optimizer.step(grads)
        reference.step()
        for n, a in model.state_dict().items():
            ref = theirs[n].detach().numpy()
            err = relative_error(a, ref)
            assert err <= ADAM_TOL, f"step {step}: {n}: max |mine - torch| is {err:.3g} of max |weight| > {ADAM_TOL}"
            worst = max(worst, err)
            if n in grads:  # the step moved the weight, by far more than the tolerance
                assert relative_error(before[n], ref) > 1000 * ADAM_TOL, f"step {step}: {n} did not move"
            else:
                assert np.array_equal(a, before[n]), f"step {step}: {n} had no gradient but changed"
    print(f"worst relative difference from torch over three steps: {worst:.3g}")


def test_the_first_step_by_hand():
    """Step 1: m̂ = g and v̂ = g², so each weight moves by −lr·g/(|g| + ε) after the decay: −lr·sign(g)."""
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((3, 4)).astype(np.float32)
    g = rng.standard_normal((3, 4)).astype(np.float32)
    g[0, 0] = 1e-9  # here ε (1e-8) dominates: the step is lr · 1e-9 / 1.1e-8
    lr, wd, eps = 1e-2, 0.1, 1e-8
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    adamw_update(p, g, m, v, 1, lr, 0.9, 0.999, eps, wd)
    g64 = g.astype(np.float64)
    expected = p0 * (1 - lr * wd) - lr * g64 / (np.abs(g64) + eps)
    assert relative_error(p, expected) <= ADAM_TOL
    assert abs(p[0, 0] - p0[0, 0] * (1 - lr * wd) + lr / 11) < 1e-7


def test_a_memory_mapped_checkpoint_is_copied_on_first_write_and_its_file_never_changes(checkpoint):
    file = checkpoint / "model.safetensors"
    before = (hashlib.sha256(file.read_bytes()).hexdigest(), file.stat().st_mtime_ns)
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    original = {n: np.array(a) for n, a in model.state_dict().items()}
    assert not any(a.flags.writeable for a in model.state_dict().values())  # read-only views of the mapped file

    optimizer = mb.AdamW(model, **HYPER)
    rng = np.random.default_rng(2)
    for _ in range(3):
        optimizer.step(random_grads(original, original, rng))

    assert (hashlib.sha256(file.read_bytes()).hexdigest(), file.stat().st_mtime_ns) == before
    after = model.state_dict()
    assert all(after[n].flags.writeable and not np.array_equal(after[n], original[n]) for n in original)
    reloaded = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint).state_dict()
    assert all(np.array_equal(reloaded[n], original[n]) for n in original)


def test_arrays_passed_in_stay_the_callers():
    flat = random_weights(mb.BridgeTowerConfig.from_dict(TINY), ["itm"], seed=4)
    kept = {k: v.copy() for k, v in flat.items()}
    model = mb.BridgeTowerForImageAndTextRetrieval(mb.BridgeTowerConfig.from_dict(TINY), to_tree(flat))
    name = "itm_score.fc.weight"
    mb.AdamW(model, **HYPER).step({name: np.ones((2, 2 * TINY["hidden_size"]), np.float32)})
    assert all(np.array_equal(flat[k], kept[k]) for k in flat)
    assert not np.array_equal(model.state_dict()[name], kept[name])


def test_a_tied_decoder_follows_the_embedding_it_is(tmp_path):
    folder = save_random_checkpoint(tmp_path, derived(TINY, tie_word_embeddings=True), heads=("mlm",))
    model = mb.BridgeTowerForMaskedLM.from_pretrained(folder)
    name = "bridgetower.text_model.embeddings.word_embeddings.weight"
    assert "mlm_score.decoder.weight" not in model.state_dict()
    old = np.array(model.state_dict()[name])
    mb.AdamW(model, **HYPER).step({name: np.ones(old.shape, np.float32)})
    p = model.params
    assert p["mlm_score"]["decoder"]["weight"] is p["text_model"]["embeddings"]["word_embeddings"]["weight"]
    assert not np.array_equal(p["mlm_score"]["decoder"]["weight"], old)


@pytest.mark.parametrize("bad, error, message", [
    ({"itm_score.fc.wieght": np.zeros((2, 256), np.float32)}, ValueError,
     r"'itm_score.fc.wieght' is not a weight of this BridgeTowerForImageAndTextRetrieval \(names as model.state_dict"),
    ({"text_model.embeddings.LayerNorm.bias": np.zeros(128, np.float32)}, ValueError,
     r"is not a weight .*; did you mean 'bridgetower.text_model.embeddings.LayerNorm.bias'\?"),
    ({"itm_score.fc.bias": np.zeros(3, np.float32)}, ValueError,
     r"the gradient of itm_score.fc.bias has shape \(3,\), expected the weight's \(2,\)"),
    ({"itm_score.fc.bias": np.array([1.0, np.nan], np.float32)}, ValueError,
     "the gradient of itm_score.fc.bias holds 1 NaN or infinite value.*refused before any weight changed"),
    ({"itm_score.fc.bias": np.array([1, 2])}, TypeError, "the gradient of itm_score.fc.bias must be floating point, got dtype int64"),
])
def test_a_bad_gradient_is_refused_by_name_and_nothing_changes(checkpoint, bad, error, message):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    before = {n: np.array(a) for n, a in model.state_dict().items()}
    optimizer = mb.AdamW(model, **HYPER)
    good = {"itm_score.fc.weight": np.ones((2, 256), np.float32)}  # listed first: it must not be applied either
    with pytest.raises(error, match=message):
        optimizer.step({**good, **bad})
    assert all(np.array_equal(a, before[n]) for n, a in model.state_dict().items())
    assert optimizer.state == {}


def test_other_misuse_is_named(checkpoint):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    with pytest.raises(TypeError, match=r"AdamW.step takes a dict \{weight name: gradient array\}, got list"):
        mb.AdamW(model).step([np.zeros(2)])
    for hyper, message in [(dict(lr=-1e-3), "lr must be a number >= 0, got -0.001"),
                           (dict(eps=float("nan")), "eps must be a number >= 0, got nan"),
                           (dict(weight_decay=-0.1), "weight_decay must be a number >= 0"),
                           (dict(betas=(0.9, 1.0)), r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)")]:
        with pytest.raises(ValueError, match=message):
            mb.AdamW(model, **hyper)
    optimizer = mb.AdamW(model)
    model.to("cpu")  # a new tree of arrays: the optimiser's moments belong to the old one
    with pytest.raises(RuntimeError, match=r"model.params was replaced .*make the optimiser after moving the model"):
        optimizer.step({"itm_score.fc.bias": np.zeros(2, np.float32)})


def mlm_batch(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["text_config"]["vocab_size"], size=(2, 6))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    labels = np.where(mask == 1, ids, -100)
    pixels = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels), labels


def test_a_tied_decoder_trained_with_its_embedding_predicts_as_the_saved_model_does(tmp_path):
    """Three real training steps of a tied MLM model: the decoder must follow the embedding it is, so the
    model in memory predicts exactly as the one saved (which stores the matrix once) and reloaded."""
    folder = save_random_checkpoint(tmp_path / "tied", derived(TINY, tie_word_embeddings=True), heads=("mlm",))
    model = mb.BridgeTowerForMaskedLM.from_pretrained(folder)
    inputs, labels = mlm_batch()
    optimizer = mb.AdamW(model, **HYPER)
    for _ in range(3):
        _, grads = model.loss_and_grads(**inputs, labels=labels)
        assert "bridgetower.text_model.embeddings.word_embeddings.weight" in grads
        optimizer.step(grads)
        p = model.params
        assert p["mlm_score"]["decoder"]["weight"] is p["text_model"]["embeddings"]["word_embeddings"]["weight"]
    model.save_pretrained(tmp_path / "saved")
    again = mb.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "saved")
    assert np.array_equal(model(**inputs).logits, again(**inputs).logits)
    original = mb.BridgeTowerForMaskedLM.from_pretrained(folder)
    assert not np.allclose(model(**inputs).logits, original(**inputs).logits, atol=1e-3)  # it did learn


def test_three_steps_on_a_tied_decoder_equal_torch_adamw(tmp_path):
    """torch's tied decoder is the embedding Parameter itself: after the same three AdamW steps (the same
    gradients given to both), the weights and the MLM logits agree."""
    torch = pytest.importorskip("torch", reason="the comparison needs the reference extra (torch)")
    reference = pytest.importorskip("reference")
    from helpers import TOL, assert_close

    config = derived(TINY, tie_word_embeddings=True)
    model = mb.BridgeTowerForMaskedLM.from_pretrained(save_random_checkpoint(tmp_path, config, heads=("mlm",), seed=5))
    theirs = reference.build(config, ["mlm"], seed=5)["mlm"]
    params = dict(theirs.named_parameters())  # the tied decoder is not listed: it is the embedding
    names = list(model.state_dict())
    assert set(names) <= set(params)
    optimizer = mb.AdamW(model, **HYPER)
    reference_optimizer = torch.optim.AdamW([params[n] for n in names], **HYPER)
    rng = np.random.default_rng(3)
    for step in range(3):
        grads = random_grads(model.state_dict(), names, rng)
        for n in names:
            params[n].grad = torch.from_numpy(grads[n].copy())
        optimizer.step(grads)
        reference_optimizer.step()
        for n, a in model.state_dict().items():
            err = relative_error(a, params[n].detach().numpy())
            assert err <= ADAM_TOL, f"step {step + 1}: {n}: max |mine - torch| is {err:.3g} of max |weight| > {ADAM_TOL}"
    inputs, labels = mlm_batch()
    with torch.no_grad():
        expected = theirs(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    assert_close(model(**inputs).logits, expected, "MLM logits after three steps", tol=TOL)
