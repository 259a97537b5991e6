"""Regenerate tests/fixtures/gradients/ (needs the `reference` extra):

    python tests/make_grad_fixtures.py

What torch autograd computes through transformers (float32, eval mode) for the three heads, each on a
tiny configuration: a padded batch's inputs and labels, the loss, and every parameter's gradient, in
grads.npz ("itm/grads/<name>", ...); the recipes in recipes.json. test_backward_fixture.py checks
loss_and_grads against them on a machine without torch.

The weights are not committed: they are weights.random_weights(config, [head], seed), which the test
makes again (the same numbers on every platform) and checks against the checksum stored here.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import reference
from gradient_parity import labels_for, random_model, reference_loss_and_grads, weights_sha256
from minibridge.config import TINY, derived

FOLDER = Path(__file__).resolve().parent / "fixtures" / "gradients"

# The gradients are as many floats as the weights, and random-looking floats do not compress: the
# fixture's size is the three models' size. So each recipe is config.TINY made as narrow as its head
# allows, and each covers a different whole-model path (the three link tower types, unshared
# transforms, a tied decoder). 32 wide (two heads of 16) with the vision tower at its narrowest, 64
# (one CLIP head), so that D != Dv; the contrastive head needs D = Dt = Dv, hence 64 throughout.
NARROW = dict(hidden_size=32, num_attention_heads=2,
              text_config=dict(hidden_size=32, num_attention_heads=2, intermediate_size=32),
              vision_config=dict(hidden_size=64))
WIDTH_64 = dict(hidden_size=64, text_config=dict(hidden_size=64), vision_config=dict(hidden_size=64))
SPECS = {
    "itm": dict(config=derived(TINY, share_cross_modal_transformer_layers=False, **NARROW), seed=1),
    "mlm": dict(config=derived(TINY, link_tower_type="scaled_add", tie_word_embeddings=True, **NARROW), seed=2),
    "itc": dict(config=derived(TINY, link_tower_type="interpolate", **WIDTH_64), seed=3),
}
LENGTHS = [7, 4, 10]  # a padded batch: three texts right-padded to 10 tokens


def generate(head, spec):
    """({key: array} of one head's inputs, labels, loss and gradients; its recipe for recipes.json)."""
    config, seed = spec["config"], spec["seed"]
    with tempfile.TemporaryDirectory() as folder:
        checksum = weights_sha256(random_model(folder, config, head, seed))
    ref = reference.build(config, [head], seed)[head]
    inputs = reference.make_inputs(config, LENGTHS, seed=seed)
    labels = labels_for(head, inputs, config["text_config"]["vocab_size"], seed)
    loss, grads = reference_loss_and_grads(ref, head, inputs, labels)
    arrays = {f"{head}/inputs/{k}": v for k, v in inputs.items()}
    if labels is not None:
        arrays[f"{head}/labels"] = labels
    arrays[f"{head}/loss"] = np.float64(loss)
    arrays.update({f"{head}/grads/{name}": g.astype(np.float32) for name, g in grads.items()})
    return arrays, dict(config=config, seed=seed, weights_sha256=checksum)


def main():
    import torch
    import transformers

    arrays, recipes = {}, {}
    for head, spec in SPECS.items():
        a, recipes[head] = generate(head, spec)
        arrays.update(a)
        print(f"{head}: loss {float(a[f'{head}/loss']):.6f}, {sum(k.startswith(f'{head}/grads/') for k in a)} gradients")
    recipes["made_with"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    FOLDER.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FOLDER / "grads.npz", **arrays)
    (FOLDER / "recipes.json").write_text(json.dumps(recipes, indent=1) + "\n")
    size = sum(f.stat().st_size for f in FOLDER.iterdir())
    print(f"{FOLDER}: {len(arrays)} arrays, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
