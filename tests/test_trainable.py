"""loss_and_grads' `trainable` where one weight has two names: an MLM decoder tied to the word embeddings
(issue 12). No torch needed: the full backward's gradients are the reference."""

import numpy as np
import pytest

import minibridge as mb
from minibridge.config import TINY, derived
from minibridge.weights import save_random_checkpoint

EMBEDDING = "bridgetower.text_model.embeddings.word_embeddings.weight"


def batch(config, seed=0):
    """A padded batch of two texts (6 and 4 tokens) and two images, with MLM labels on some real tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, config["text_config"]["vocab_size"], size=(2, 6))
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2])
    ids[mask == 0] = 1  # pad id
    size = config["vision_config"]["image_size"]
    pixels = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    labels = np.where(rng.random(ids.shape) < 0.5, ids, -100)
    labels[mask == 0] = -100
    labels[0, 1] = ids[0, 1]  # at least one label
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels), labels


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    config = derived(TINY, tie_word_embeddings=True)
    folder = save_random_checkpoint(tmp_path_factory.mktemp("tied"), config, heads=("mlm",), seed=4)
    model = mb.BridgeTowerForMaskedLM.from_pretrained(folder)
    inputs, labels = batch(config)
    _, full = model.loss_and_grads(**inputs, labels=labels)
    return model, inputs, labels, full


@pytest.mark.parametrize("trainable", [["mlm_score"], "mlm_score.decoder", lambda name: name.startswith("mlm_score")])
def test_a_tied_decoder_selected_without_its_embedding_is_refused(tied, trainable):
    model, inputs, labels, _ = tied
    with pytest.raises(ValueError) as e:
        model.loss_and_grads(**inputs, labels=labels, trainable=trainable)
    message = str(e.value)
    for said in ("selects mlm_score.decoder.weight", "ties its MLM decoder to the word embeddings",
                 f"it is {EMBEDDING}, one weight, which trainable leaves frozen",
                 "add 'bridgetower.text_model.embeddings.word_embeddings' to trainable",
                 "['mlm_score.transform', 'mlm_score.bias']"):
        assert said in message, message


def test_a_tied_decoder_trained_with_its_embedding_gets_the_whole_gradient(tied):
    model, inputs, labels, full = tied
    trainable = ["mlm_score", EMBEDDING.removesuffix(".weight")]
    _, grads = model.loss_and_grads(**inputs, labels=labels, trainable=trainable)
    assert set(grads) == {k for k in full if k.startswith(tuple(trainable))}
    assert "mlm_score.decoder.weight" not in grads  # one weight, saved under the embedding's name
    for k in grads:  # the embedding's gradient sums the decoder's and the lookup's, as in the full backward
        np.testing.assert_array_equal(grads[k], full[k], err_msg=k)


def test_the_rest_of_the_head_trains_with_the_tied_decoder_frozen(tied):
    model, inputs, labels, full = tied
    _, grads = model.loss_and_grads(**inputs, labels=labels, trainable=["mlm_score.transform", "mlm_score.bias"])
    assert set(grads) == {k for k in full if k.startswith(("mlm_score.transform", "mlm_score.bias"))}
    for k in grads:
        np.testing.assert_array_equal(grads[k], full[k], err_msg=k)


def test_an_untied_decoder_is_part_of_its_head(tmp_path):
    config = TINY
    model = mb.BridgeTowerForMaskedLM.from_pretrained(save_random_checkpoint(tmp_path, config, heads=("mlm",)))
    inputs, labels = batch(config)
    _, full = model.loss_and_grads(**inputs, labels=labels)
    _, grads = model.loss_and_grads(**inputs, labels=labels, trainable=["mlm_score"])
    assert "mlm_score.decoder.weight" in grads and EMBEDDING not in grads
    assert set(grads) == {k for k in full if k.startswith("mlm_score")}
