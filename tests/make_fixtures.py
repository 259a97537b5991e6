"""Regenerate the committed parity fixtures in tests/fixtures/ (needs the `reference` extra).

    python tests/make_fixtures.py

For each fixture: tiny BridgeTower models built by transformers with random weights on every
tensor (minibridge.weights.random_weights), saved in the Hub layout (config.json + model.safetensors), plus reference.npz holding the inputs
and what transformers computed from them, and cases.json describing each case.
Together they stay a few MB, so the default test run needs no torch.
"""

import json
import shutil
from pathlib import Path

import numpy as np

import reference as ref
from minibridge.config import TINY, derived

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# name -> (config overrides, heads, how it is saved, cases)
# A case: batch text lengths (right-padded to the longest), image size, interpolate flag,
# whether to keep every hidden state and attention map.
# Each recipe is config.TINY with what it covers changed. All are 64 wide where TINY is 128 (a
# quarter of the weights, so that the committed files stay small).
NARROW = dict(hidden_size=64, text_config=dict(hidden_size=64))  # D = Dt = 64; Dv stays 128 (two vision heads)
SPECS = {
    # The default flags, every head in one file (as the published base-itm-mlm holds two heads);
    # Dv = D = 64 for the contrastive head.
    "tiny": dict(
        config=derived(TINY, hidden_size=64, text_config=dict(hidden_size=64), vision_config=dict(hidden_size=64)),
        heads=["model", "itm", "mlm", "itc"], save="multi-head",
        cases={
            "padded": dict(lengths=[9, 5, 7], maps=True),
            "single": dict(lengths=[6]),
            "interpolate": dict(lengths=[6, 4], image_hw=(24, 20), interpolate=True),
        }),
    # scaled_add bridges, one transform per cross layer, tied MLM decoder; 4 layers, the top 3
    # bridged, so that tower layer i feeds cross-modal layer l = i − 1 (an index mix-up fails)
    # through two link towers per side.
    "tiny-scaled-untied-transforms": dict(
        config=derived(TINY, link_tower_type="scaled_add", share_cross_modal_transformer_layers=False,
                       tie_word_embeddings=True, num_hidden_layers=3, hidden_size=64,
                       text_config=dict(hidden_size=64, num_hidden_layers=4),
                       vision_config=dict(hidden_size=64, num_hidden_layers=4)),
        heads=["model", "itm", "mlm"], save="multi-head",
        cases={"padded": dict(lengths=[4, 8], maps=True), "single": dict(lengths=[5])}),
    # interpolate bridges, N = depth (no tower layer runs alone), Dv = 128 != D = 64 (two vision
    # heads), separate vision LayerNorms present but unused, saved by transformers' own
    # save_pretrained without prefix.
    "tiny-interpolate-bare": dict(
        config=derived(TINY, link_tower_type="interpolate", num_hidden_layers=3, vision_config=dict(share_layernorm=False),
                       **NARROW),
        heads=["model"], save="save_pretrained",
        cases={"padded": dict(lengths=[3, 7, 5]), "interpolate": dict(lengths=[5], image_hw=(28, 28),
                                                                      interpolate=True)}),
}


def labels_for(head, inputs, seed):
    rng = np.random.default_rng(seed)
    if head == "itm":
        return rng.integers(0, 2, size=len(inputs["input_ids"]))
    if head == "mlm":
        lab = inputs["input_ids"].copy()
        lab[rng.random(lab.shape) < 0.5] = -100
        lab[inputs["attention_mask"] == 0] = -100
        return lab
    return None


def generate(spec, seed, folder):
    """Build and save one fixture checkpoint in `folder`; return (arrays, cases) of its reference runs."""
    cfg = spec["config"]
    models = ref.build(cfg, spec["heads"], seed)
    if spec["save"] == "save_pretrained":
        models["model"].save_pretrained(folder)  # transformers' own writer: unprefixed keys
    else:
        ref.save_checkpoint(models, folder, prefixed=True)
    arrays, cases = {}, {}
    for c, (case, cs) in enumerate(spec["cases"].items()):
        inputs = ref.make_inputs(cfg, cs["lengths"], cs.get("image_hw"), seed=seed * 100 + c)
        for k, v in inputs.items():
            arrays[f"{case}/inputs/{k}"] = v
        meta = {"interpolate": bool(cs.get("interpolate")), "heads": {}}
        for head in spec["heads"]:
            labels = labels_for(head, inputs, seed * 100 + c)
            if labels is not None:
                arrays[f"{case}/labels/{head}"] = labels
            out = ref.run(models, inputs, head, interpolate=meta["interpolate"], labels=labels,
                          return_loss=head == "itc", attention_maps=cs.get("maps", False) and head == "model")
            if not (cs.get("maps") and head == "model"):  # keep maps and hidden states once per case
                out = {k: v for k, v in out.items() if not k.startswith(("hidden_states", "attentions"))}
            for k, v in out.items():
                arrays[f"{case}/{head}/{k}"] = v
            meta["heads"][head] = sorted(out)
        cases[case] = meta
    return arrays, cases


def make(name, spec, seed):
    folder = FIXTURES / name
    shutil.rmtree(folder, ignore_errors=True)
    arrays, cases = generate(spec, seed, folder)
    np.savez_compressed(folder / "reference.npz", **arrays)
    (folder / "cases.json").write_text(json.dumps(cases, indent=1))
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"{name}: {len(cases)} cases, {len(arrays)} arrays, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    for i, (name, spec) in enumerate(SPECS.items()):
        make(name, spec, seed=i + 1)
