"""minibridge.retrieval and `minibridge search`: text -> images, image -> texts, ITM re-ranking.

The expected rows are computed here independently: the model's own get_text_features /
get_image_features for the cosine order, BridgeTowerForImageAndTextRetrieval for the ITM order.
"""

import json

import numpy as np
import pytest

import minibridge as mb
from minibridge.embedding import embed_collection
from minibridge.retrieval import retrieve

from embed_helpers import cli, make_checkpoint, make_photos
from paths import ROBERTA

CAPTIONS = [f"a photo of {n} {c} {t}" for n in ("one", "two", "three") for c in ("red", "green")
            for t in ("cats", "boxes")]
QUERY = "two green boxes on a table"
ITM_TOL = 1e-6  # the same logits through the same softmax: float32 rounding only


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    root = tmp_path_factory.mktemp("search")
    checkpoint = make_checkpoint(root / "ckpt", seed=4)
    photos = make_photos(root / "photos", 12, distinct=12)
    embed_collection([root / "photos"], "image", model=checkpoint, out=root / "images.index", batch_size=4,
                     shard_size=4, progress=False)  # three shards: the search crosses them
    embed_collection(CAPTIONS, "text", model=checkpoint, out=root / "texts.index", batch_size=4, shard_size=4,
                     progress=False)
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(checkpoint)
    processor = mb.BridgeTowerProcessor.from_pretrained(checkpoint)
    return root, checkpoint, [str(p) for p in photos], model, processor


def cosine_order(query_vector, vectors):
    scores = (vectors @ query_vector) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query_vector)
    return sorted(range(len(vectors)), key=lambda r: (-scores[r], r)), scores


def test_text_query_finds_the_nearest_images(setup):
    root, checkpoint, photos, model, processor = setup
    enc = processor(text=[QUERY])
    query = model.get_text_features(enc["input_ids"], enc["attention_mask"])[0]  # [C]
    images = model.get_image_features(processor(images=photos)["pixel_values"])  # [12, C]
    order, scores = cosine_order(query, images)
    r = cli("search", root / "images.index", QUERY, "--k", 5, "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert [x["id"] for x in found["results"]] == [photos[i] for i in order[:5]]
    np.testing.assert_allclose([x["cosine"] for x in found["results"]], scores[order[:5]], atol=1e-5)
    assert found["kind"] == "image" and found["query"] == QUERY and "random weights" in found["notes"][0]

    table = cli("search", root / "images.index", QUERY, "--k", 3).stdout.splitlines()
    assert table[1].split() == ["rank", "cosine", "id"] and table[2].split()[2] == photos[order[0]]


def test_image_query_finds_the_nearest_texts(setup):
    root, checkpoint, photos, model, processor = setup
    image = model.get_image_features(processor(images=[photos[7]])["pixel_values"])[0]  # [C]
    enc = processor(text=CAPTIONS, padding=True)
    order, _ = cosine_order(image, model.get_text_features(enc["input_ids"], enc["attention_mask"]))
    found = retrieve(root / "texts.index", photos[7], k=4)
    assert found.ids == [CAPTIONS[i] for i in order[:4]] and found.rows == order[:4]


def test_rerank_orders_by_the_itm_match_probability(setup):
    root, checkpoint, photos, model, processor = setup
    r = cli("search", root / "images.index", QUERY, "--k", 6, "--rerank", 8, "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["results"]
    shortlist = retrieve(root / "images.index", QUERY, k=8).ids  # the 8 nearest by cosine
    assert len(found) == 6 and {x["id"] for x in found} <= set(shortlist)

    itm = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    enc = processor(images=shortlist, text=[QUERY] * 8, padding=True)
    logits = itm(**enc).logits  # [8, 2]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p_match = dict(zip(shortlist, (e / e.sum(-1, keepdims=True))[:, 1]))
    expected = sorted(shortlist, key=lambda i: -p_match[i])[:6]
    assert expected != shortlist[:6]  # the case is one where re-ranking changes the order
    assert [x["id"] for x in found] == expected, ([x["itm"] for x in found], sorted(p_match.values(), reverse=True))
    np.testing.assert_allclose([x["itm"] for x in found], [p_match[i] for i in expected], atol=ITM_TOL)


def test_rerank_of_texts_for_an_image(setup):
    root, checkpoint, photos, model, processor = setup
    found = retrieve(root / "texts.index", photos[2], k=5, rerank=5)
    assert found.ids != retrieve(root / "texts.index", photos[2], k=5).ids  # re-ranking changed the order
    itm = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    enc = processor(images=[photos[2]] * 5, text=found.ids, padding=True)
    logits = itm(**enc).logits
    p = np.exp(logits[:, 1]) / np.exp(logits).sum(-1)
    np.testing.assert_allclose(found.itm, p, atol=ITM_TOL)
    assert found.itm == sorted(found.itm, reverse=True)


def test_rerank_needs_an_itm_head(setup, tmp_path):
    root = setup[0]
    itc_only = make_checkpoint(tmp_path / "itc", heads=("itc",), seed=4)
    r = cli("search", root / "images.index", QUERY, "--rerank", 5, "--model", itc_only)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"--rerank re-scores with the image-text matching (ITM) head, and {itc_only} has none (it has: itc)" \
        in r.stderr


def test_help():
    r = cli("search", "--help")
    assert r.returncode == 0 and "--rerank K" in r.stdout and "--json" in r.stdout


def test_search_errors_name_the_input(setup, tmp_path):
    root = setup[0]
    r = cli("search", tmp_path, QUERY)
    assert r.returncode == 1 and f"{tmp_path} is not a minibridge index (no manifest.json in it)" in r.stderr
    r = cli("search", root / "texts.index", tmp_path / "missing.jpg")
    assert r.returncode == 1 and f"no image file at {tmp_path / 'missing.jpg'}" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_query_of_the_kind_the_index_holds_is_refused(setup):
    root, checkpoint, photos = setup[:3]
    for query in (photos[0], "https://example.com/cat.jpg"):  # an image, for an index of images
        with pytest.raises(ValueError, match="holds images, so the query must be a text to look for; got "
                                             f"{query}, which names an image"):
            retrieve(root / "images.index", query)
    r = cli("search", root / "texts.index", "two cats")  # a text, for an index of texts
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (f"no image file at two cats: {root / 'texts.index'} holds texts, so the query must be an image "
            "(a file or an http(s) URL)") in r.stderr, r.stderr


def test_relative_ids_are_read_where_the_index_was_made(setup, tmp_path, monkeypatch):
    """An index of relative paths, re-ranked from another folder that has other photos under the
    same names: the ITM head must score the indexed photos, not those."""
    checkpoint = setup[1]
    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    make_photos(made / "photos", 4, distinct=4, seed=1)
    make_photos(elsewhere / "photos", 4, distinct=4, seed=2)  # the same names, other pictures
    monkeypatch.chdir(made)
    embed_collection(["photos"], "image", model=checkpoint, out=made / "i", progress=False)
    here = retrieve(made / "i", QUERY, k=4, rerank=4)
    assert here.ids[0].startswith("photos")  # relative, as given
    monkeypatch.chdir(elsewhere)
    there = retrieve(made / "i", QUERY, k=4, rerank=4)
    assert (there.ids, there.itm) == (here.ids, here.itm)
