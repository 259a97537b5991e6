"""Live parity: transformers runs beside minibridge in the same process (needs the `reference` extra).

* every fixture recipe of make_fixtures.py, rebuilt on the fly with the installed transformers;
* the full-size published architectures with random weights: base (ViT-B/16 at 288,
  RoBERTa-base; model, ITM and MLM heads) and large (ViT-L/14 at 294, RoBERTa-large; model and
  the contrastive head with 512-dim embeddings). These are marked slow; CI runs them.
"""

import time

import pytest

pytest.importorskip("torch", reason="live parity needs the reference extra: pip install -e '.[reference]'")
pytest.importorskip("transformers", reason="live parity needs the reference extra: pip install -e '.[reference]'")

import make_fixtures  # noqa: E402
import reference as ref  # noqa: E402
from helpers import HEAD_CLASSES, compare, run_mine  # noqa: E402
from minibridge.config import BASE, LARGE  # noqa: E402


@pytest.mark.parametrize("name", list(make_fixtures.SPECS))
def test_fixture_recipes_live(name, tmp_path):
    spec = make_fixtures.SPECS[name]
    arrays, cases = make_fixtures.generate(spec, seed=1234, folder=tmp_path)
    for case, meta in cases.items():
        inputs = {k.split("/")[-1]: v for k, v in arrays.items() if k.startswith(f"{case}/inputs/")}
        for head in meta["heads"]:
            prefix = f"{case}/{head}/"
            expected = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            keep = any(k.startswith("hidden_states") for k in expected)
            model = HEAD_CLASSES[head].from_pretrained(tmp_path)
            out = run_mine(model, head, inputs, arrays.get(f"{case}/labels/{head}"), meta["interpolate"], keep)
            compare(out, expected, f"live {name}/{case}/{head}")


def _full_size(config, heads, tmp_path_factory, seed, lengths):
    models = ref.build(config, heads, seed)
    folder = tmp_path_factory.mktemp("full")
    ref.save_checkpoint(models, folder)
    inputs = ref.make_inputs(config, lengths, seed=seed)
    return models, folder, inputs


def _check_full_size(models, folder, inputs, head, label):
    labels = make_fixtures.labels_for(head, inputs, seed=0)
    expected = ref.run(models, inputs, head, labels=labels, return_loss=head == "itc")
    start = time.perf_counter()
    model = HEAD_CLASSES[head].from_pretrained(folder)
    load_s = time.perf_counter() - start
    out = run_mine(model, head, inputs, labels, keep=True)
    errors = compare(out, expected, f"{label}/{head}")
    worst = max(errors, key=errors.get)
    print(f"\n{label} {head}: worst relative error {errors[worst]:.2e} ({worst}); "
          f"{len(errors)} outputs compared; from_pretrained {load_s:.3f} s")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return _full_size(BASE, ["itm", "mlm"], tmp_path_factory, seed=7, lengths=[16, 11])


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    return _full_size(LARGE, ["itc"], tmp_path_factory, seed=8, lengths=[16, 9])


@pytest.mark.slow
@pytest.mark.parametrize("head", ["model", "itm", "mlm"])
def test_base_full_size(base, head):
    _check_full_size(*base, head, "base")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["model", "itc"])
def test_large_full_size(large, head):
    _check_full_size(*large, head, "large")
