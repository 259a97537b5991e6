"""Each tower once per input, the cross-modal stack once per pair (issue 13, item 2).

model.cross_modal on the towers' model.Bridged outputs, reading only what a head reads of the last
layer, is the full pass model.bridgetower (which the parity tests compare with transformers); the head
classes' forward, forward_pairs and score_pairs run it; and one image against N texts runs the vision
tower once.
"""

import numpy as np
import pytest

import minibridge as mb
from minibridge import model as M
from minibridge.config import TINY, BridgeTowerConfig, derived
from minibridge.weights import random_weights, save_random_checkpoint, to_tree

from helpers import HEAD_CLASSES, assert_close, mine_by_reference_name

# The same float32 products on the same rows; where the last layer computes position 0 alone it
# multiplies a [B, 1, D] block instead of [B, S, D], which BLAS may sum in another order:
# a few float32 roundings of the outputs (|x| ≲ 5), far below the parity tolerance (1e-4).
SAME_PASS_TOL = 1e-5

VARIANTS = {
    "tiny": {},
    "interpolate, unshared transforms": {"link_tower_type": "interpolate", "share_cross_modal_transformer_layers": False},
    "scaled_add, one cross layer": {"link_tower_type": "scaled_add", "num_hidden_layers": 1},
}


def setup(overrides, batch=3, seed=0):
    cfg = BridgeTowerConfig.from_dict(derived(TINY, **overrides))
    p = to_tree(random_weights(cfg, ("itm", "mlm", "itc"), seed))
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, cfg.text_config.vocab_size, (batch, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0  # a padded text
    size = cfg.vision_config.image_size
    pixels = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    return cfg, p, ids, mask, pixels


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("read", M.READS)
def test_reading_less_of_the_last_layer_changes_nothing_read(variant, read):
    cfg, p, ids, mask, pixels = setup(VARIANTS[variant])
    ref = M.bridgetower(p, cfg, ids, mask, pixels)
    text, image = M.text_bridged(p, cfg, ids, mask), M.image_bridged(p, cfg, pixels)
    out = M.cross_modal(p, cfg, text, image, read)
    x_rows = slice(0, 1) if read == "first" else slice(None)  # position 0 alone where the head reads no more
    y_rows = slice(0, 1) if read != "all" else slice(None)
    assert_close(out["text_features"], ref["text_features"][:, x_rows], f"text_features ({read})", SAME_PASS_TOL)
    assert_close(out["image_features"], ref["image_features"][:, y_rows], f"image_features ({read})", SAME_PASS_TOL)
    assert_close(out["pooler_output"], ref["pooler_output"], f"pooler_output ({read})", SAME_PASS_TOL)


def test_an_unknown_read_is_refused():
    cfg, p, ids, mask, pixels = setup({})
    text, image = M.text_bridged(p, cfg, ids, mask), M.image_bridged(p, cfg, pixels)
    with pytest.raises(ValueError, match="read must be one of"):
        M.cross_modal(p, cfg, text, image, "cls")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("pairs") / "tiny", TINY,
                                  heads=("itm", "mlm", "itc"), seed=3)


def _scores(logits):
    return mb.ops.softmax(logits)[:, 1]


def test_score_pairs_equals_scoring_each_pair_alone(folder):
    """[images, texts] from score_pairs equals forward on each pair by itself (batch 1, no sharing)."""
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    cfg, _, ids, mask, pixels = setup({}, batch=4, seed=1)
    pixels = pixels[:2]  # 2 images × 4 texts
    got = model.score_pairs(ids, mask, pixels, batch_size=3)  # 8 pairs in passes of 3, 3, 2
    assert got.shape == (2, 4)
    for i in range(2):
        for t in range(4):
            alone = model(input_ids=ids[t:t + 1, :mask[t].sum()], pixel_values=pixels[i:i + 1]).logits
            assert_close(got[i, t], _scores(alone)[0], f"score of image {i} with text {t}", SAME_PASS_TOL)


def test_one_image_runs_the_vision_tower_once(folder, monkeypatch):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    cfg, _, ids, mask, pixels = setup({}, batch=8, seed=2)
    batches = []  # the batch size of every vision block call
    block = M.vision_block
    monkeypatch.setattr(M, "vision_block", lambda p, x, c: batches.append(x.shape[0]) or block(p, x, c))
    scores = model.score_pairs(ids, mask, pixels[:1], batch_size=8)
    assert batches == [1] * cfg.depth, f"vision blocks ran on batches {batches}, expected one image per block"
    one_batch = _scores(model(input_ids=ids, attention_mask=mask, pixel_values=np.repeat(pixels[:1], 8, 0)).logits)
    assert_close(scores[0], one_batch, "1 image × 8 texts vs the repeated image in one batch", SAME_PASS_TOL)


@pytest.mark.parametrize("head", ["model", "itm", "mlm", "itc"])
def test_forward_pairs_equals_forward_on_the_same_pairs(folder, head):
    """Every output field (the backbone's features too), on a padded text in pairs with repeats."""
    model = HEAD_CLASSES[head].from_pretrained(folder)
    cfg, _, ids, mask, pixels = setup({}, batch=3, seed=4)
    text_rows, image_rows = np.array([0, 1, 2, 0, 1]), np.array([0, 0, 1, 2, 2])  # repeats on both sides
    out = model.forward_pairs(model.encode_text(ids, mask), model.encode_image(pixels), text_rows, image_rows)
    ref = model(input_ids=ids[text_rows], attention_mask=mask[text_rows], pixel_values=pixels[image_rows])
    mine, theirs = mine_by_reference_name(out), mine_by_reference_name(ref)
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert_close(mine[name], theirs[name], f"{head} {name} of 5 pairs", SAME_PASS_TOL)


def test_texts_encoded_without_a_mask_read_every_token(folder):
    """encode_text without attention_mask means no padding, as in forward."""
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    cfg, _, ids, _, pixels = setup({}, batch=3, seed=5)
    out = model.forward_pairs(model.encode_text(ids), model.encode_image(pixels[:1]), [2, 0], [0, 0])
    ref = model(input_ids=ids[[2, 0]], pixel_values=pixels[[0, 0]])
    assert_close(out.logits, ref.logits, "logits of 2 pairs without a mask", SAME_PASS_TOL)


def test_score_pairs_takes_images_of_another_size(folder):
    """score_pairs passes interpolate_pos_encoding on, as forward does (before: it had no such argument,
    and the error for a 16x16 image told the user to pass it)."""
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    cfg, _, ids, mask, _ = setup({}, batch=2, seed=6)
    pixels = np.random.default_rng(6).standard_normal((2, 3, 16, 16)).astype(np.float32)  # 12 is the model's size
    got = model.score_pairs(ids, mask, pixels, interpolate_pos_encoding=True)
    for i in range(2):
        ref = model(input_ids=ids, attention_mask=mask, pixel_values=pixels[[i, i]], interpolate_pos_encoding=True)
        assert_close(got[i], _scores(ref.logits), f"image {i} (16x16) against 2 texts", SAME_PASS_TOL)


def test_pairs_of_unequal_counts_are_refused(folder):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    cfg, _, ids, mask, pixels = setup({}, batch=3)
    with pytest.raises(ValueError, match="got 3 texts and 2 images to pair"):
        model.forward_pairs(model.encode_text(ids, mask), model.encode_image(pixels[:2]))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.score_pairs(ids, mask, pixels, batch_size=0)


def _pairing(folder):
    """A model, 3 encoded texts (one padded, the Bridged holds its mask), 2 encoded images, and a 1-cross-layer
    model's encodings."""
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    cfg, _, ids, mask, pixels = setup({}, batch=3, seed=7)
    other = mb.BridgeTowerForImageAndTextRetrieval(*_one_cross_layer())
    return model, model.encode_text(ids, mask), model.encode_image(pixels[:2]), other.encode_text(ids, mask)


def _one_cross_layer():
    cfg = BridgeTowerConfig.from_dict(derived(TINY, num_hidden_layers=1))
    return cfg, to_tree(random_weights(cfg, ("itm",), 8))


# Each case: (forward_pairs' arguments, from the encoded texts / images and texts encoded by a 1-cross-layer
# model), the error, and what its message must say (the field, what was expected, what came).
HOSTILE_PAIRS = {
    "text row out of range": (lambda t, i, o: (t, i, [0, 5], [0, 1]), ValueError,
                              r"text_rows holds 5, outside the 3 encoded texts \(0 to 2\)"),
    "negative image row": (lambda t, i, o: (t, i, [0, 1], [-1, 0]), ValueError,
                           r"image_rows holds -1, outside the 2 encoded images \(0 to 1\)"),
    "float rows": (lambda t, i, o: (t, i, [0.0, 1.0], [0, 1]), TypeError,
                   r"text_rows must be integer indices of the 3 encoded texts, got dtype float64"),
    "boolean rows (a mask, not indices)": (lambda t, i, o: (t, i, [True, False, True], [0, 1]), TypeError,
                                           r"text_rows must be integer indices of the 3 encoded texts, got dtype bool"),
    "2-D rows": (lambda t, i, o: (t, i, [[0, 1]], [[0, 1]]), ValueError,
                 r"text_rows must be 1-D \[pairs\], one index per pair, got shape \(1, 2\)"),
    "no rows at all": (lambda t, i, o: (t, i, [], []), ValueError,
                       r"text_rows must be 1-D \[pairs\], one index per pair, got shape \(0,\)"),
    "images first, then texts": (lambda t, i, o: (i, t, [0, 1], [0, 1]), ValueError,
                                 r"text must be encoded texts \(encode_text\), got encoded images: forward_pairs "
                                 r"takes the texts first"),
    "text rows without image rows": (lambda t, i, o: (t, i, [0, 1], None), ValueError,
                                     r"pass text_rows and image_rows together"),
    "rows of two lengths": (lambda t, i, o: (t, i, [0, 1, 2], [0, 1]), ValueError,
                            r"text_rows and image_rows must be of one length, one entry per pair; got 3 and 2"),
    "token ids instead of encoded texts": (lambda t, i, o: (np.zeros((3, 7), np.int64), i, [0, 1], [0, 1]),
                                           TypeError, r"text must be what encode_text returns \(a model.Bridged\), "
                                                      r"got ndarray"),
    "texts encoded by another architecture": (
        lambda t, i, o: (o, i, [0, 1], [0, 1]), ValueError,
        r"text was encoded by another architecture: 1 bridge input\(s\) of width 128 .* this model reads 2 of width "
        r"128 .*encode_text"),
}


@pytest.mark.parametrize("case", HOSTILE_PAIRS)
def test_forward_pairs_refuses_what_it_cannot_pair(folder, case):
    """Before: IndexError or a broadcasting error from inside model.py, or silently other pairs (a negative
    row counted from the end, booleans taken as a mask, a Bridged of another architecture read in part,
    images and texts swapped where their counts agree)."""
    model, text, image, other_text = _pairing(folder)
    arguments, error, message = HOSTILE_PAIRS[case]
    with pytest.raises(error, match=message):
        model.forward_pairs(*arguments(text, image, other_text))


def test_a_smaller_model_refuses_encodings_of_a_larger_one(folder):
    """Before: a 1-cross-layer model read the first of the 2 bridge inputs it was given and scored the pair."""
    model, text, image, _ = _pairing(folder)
    small = mb.BridgeTowerForImageAndTextRetrieval(*_one_cross_layer())
    with pytest.raises(ValueError, match=r"text was encoded by another architecture: 2 bridge input\(s\) .* this "
                                         r"model reads 1 "):
        small.forward_pairs(text, image, [0, 1], [0, 1])


@pytest.mark.parametrize("head", ["itm", "mlm", "itc"])
@pytest.mark.parametrize("asked", ["output_hidden_states", "output_attentions"])
def test_asking_for_states_gets_every_row_of_the_last_layer(folder, head, asked):
    """A head reads part of the last cross-modal layer, but hidden states or attention maps asked for are
    whole: equal to the backbone's (which reads every row), and the head's output is unchanged. (The
    parity fixtures record hidden states for the backbone alone.)"""
    cfg, _, ids, mask, pixels = setup({}, batch=3, seed=9)
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    model = HEAD_CLASSES[head].from_pretrained(folder)
    out, plain = model(**inputs, **{asked: True}), model(**inputs)
    backbone = mb.BridgeTowerModel.from_pretrained(folder)(**inputs, **{asked: True})
    if asked == "output_hidden_states":
        mine, theirs = out.hidden_states[2][-1], backbone.hidden_states[2][-1]  # the last layer's (text, image)
    else:
        mine = out.attentions[-1] + out.cross_attentions[-1]  # self- then cross-attention, (text, image) each
        theirs = backbone.attentions[-1] + backbone.cross_attentions[-1]
    for side, (a, b) in enumerate(zip(mine, theirs)):
        assert_close(a, b, f"{head} {asked}: the last cross-modal layer's {side}", SAME_PASS_TOL)
    assert_close(out.logits, plain.logits, f"{head} logits with {asked}", SAME_PASS_TOL)


def test_score_pairs_hands_freed_memory_back(folder, monkeypatch):
    """score_pairs, which runs many passes, releases what malloc kept for reuse (backend.keep_freed_memory)
    before it returns (infer does the same); a single forward keeps it for the next call."""
    from minibridge import modeling

    released = []
    monkeypatch.setattr(modeling, "release_freed_memory", lambda: released.append("released"))
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    cfg, _, ids, mask, pixels = setup({}, batch=2, seed=9)
    model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert released == []
    model.score_pairs(ids, mask, pixels)
    assert released == ["released"]
