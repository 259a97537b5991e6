"""loss_and_grads of the whole model against torch autograd's numbers stored in tests/fixtures/gradients/
(made by make_grad_fixtures.py): the three heads on tiny configurations, a padded batch each. No torch
needed, so every machine checks the whole backward pass; where torch is installed, one more test remakes
the fixture and checks that it is what the generator makes now.
"""

import json

import numpy as np
import pytest

from gradient_parity import check_loss_and_grads, random_model, weights_sha256
from paths import FIXTURES

FOLDER = FIXTURES / "gradients"
RECIPES = json.loads((FOLDER / "recipes.json").read_text(encoding="utf-8"))
HEADS = ["itm", "mlm", "itc"]
# Torch remaking the fixture on another machine or version may round differently (BLAS order), never by
# more than this fraction of the comparison's own bounds; a changed recipe (seed, config, batch) moves
# the loss and the gradients by orders of magnitude more.
FRESH = 0.1


def stored(head):
    """(inputs, labels or None, loss, {name: gradient}) of one head, as make_grad_fixtures.py stored them."""
    with np.load(FOLDER / "grads.npz") as data:
        return split(data, head)


def split(data, head):
    """One head's (inputs, labels or None, loss, {name: gradient}) from the fixture's arrays {"head/...": array}."""
    arrays = {k.removeprefix(f"{head}/"): data[k] for k in data.keys() if k.startswith(f"{head}/")}
    inputs = {k.removeprefix("inputs/"): v for k, v in arrays.items() if k.startswith("inputs/")}
    grads = {k.removeprefix("grads/"): v for k, v in arrays.items() if k.startswith("grads/")}
    return inputs, arrays.get("labels"), float(arrays["loss"]), grads


@pytest.mark.parametrize("head", HEADS)
def test_gradients_equal_the_stored_autograd_ones(head, tmp_path):
    recipe = RECIPES[head]
    model = random_model(tmp_path, recipe["config"], head, recipe["seed"])
    assert weights_sha256(model) == recipe["weights_sha256"], (
        f"weights.random_weights(seed={recipe['seed']}) no longer makes the weights the {head} gradients were "
        "computed from (the random-weight rule or the config changed): run python tests/make_grad_fixtures.py")
    inputs, labels, ref_loss, ref_grads = stored(head)
    loss, grads = model.loss_and_grads(**inputs, labels=labels)
    worst = check_loss_and_grads(loss, grads, ref_loss, ref_grads, label=f"{head}: ")
    print(f"{head}: loss {float(loss):.7g} vs {ref_loss:.7g}; {len(ref_grads)} gradients, worst {worst:.2e} × max|ref|")


@pytest.mark.parametrize("head", HEADS)
def test_the_fixture_is_what_the_generator_makes_now(head):
    pytest.importorskip("torch", reason="remaking the fixture needs the reference extra")
    make = pytest.importorskip("make_grad_fixtures")
    from gradient_parity import GRAD_TOL, LOSS_RTOL, scale_name

    arrays, recipe = make.generate(head, make.SPECS[head])
    assert recipe == {k: RECIPES[head][k] for k in recipe}, f"{head}: the recipe changed; run python tests/make_grad_fixtures.py"
    inputs, labels, loss, grads = stored(head)
    fresh_inputs, fresh_labels, fresh_loss, fresh_grads = split(arrays, head)
    assert set(fresh_inputs) == set(inputs) and all(np.array_equal(fresh_inputs[k], inputs[k]) for k in inputs)
    assert (labels is None and fresh_labels is None) or np.array_equal(labels, fresh_labels)
    assert abs(fresh_loss - loss) <= FRESH * LOSS_RTOL * abs(loss), f"{head}: loss stored {loss!r}, now {fresh_loss!r}"
    assert set(fresh_grads) == set(grads), f"{head}: the parameters with a gradient changed: {set(fresh_grads) ^ set(grads)}"
    for name, g in grads.items():
        err = float(np.abs(fresh_grads[name] - g).max() / np.abs(grads[scale_name(name)]).max())
        assert err <= FRESH * GRAD_TOL, f"{head}: {name}: stored vs remade differ by {err:.2e} × max|stored|"
