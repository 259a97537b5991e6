"""minibridge.infer and the command line, end to end on a random checkpoint with the real tokenizer."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minibridge as mb
from minibridge.infer import _load
from minibridge.config import BridgeTowerConfig
from minibridge.weights import RANDOM_MARK, random_mark, random_weights, read_checkpoint, save_random_checkpoint

from helpers import ROBERTA, SHARED_DATA, TINY_REAL_VOCAB, assert_close

PHOTO = SHARED_DATA / "images" / "000000039769.png"  # the COCO two-cats photo of the HF tests
TEXTS = ["a bunch of cats laying on a tower.", "a plate of food", "two remote controls"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if not (SHARED_DATA / "roberta-base" / "tokenizer.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {SHARED_DATA} (../shared/data next to the checkout)")
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY_REAL_VOCAB, seed=3,
                                  tokenizer_dir=SHARED_DATA / "roberta-base")


def test_itm_scores_are_match_probabilities(checkpoint):
    result = mb.infer(PHOTO, TEXTS, model=checkpoint)
    assert result.task == "itm" and len(result.scores) == 3
    proc = mb.BridgeTowerProcessor.from_pretrained(checkpoint)
    enc = proc(images=[PHOTO] * 3, text=TEXTS, padding=True)
    logits = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)(**enc).logits
    e = np.exp(logits - logits.max(-1, keepdims=True))
    # the same logits through the same softmax: only float32 rounding apart
    assert_close(result.scores, (e / e.sum(-1, keepdims=True))[:, 1], "itm scores", tol=1e-6)
    table = str(result).splitlines()
    assert "image-text matching" in table[0] and table[1].split() == ["rank", "score", "text"]
    ranked = [line.split(None, 2)[2] for line in table[2:-1]]
    assert ranked == [TEXTS[i] for i in np.argsort(-np.asarray(result.scores), kind="stable")]
    assert table[-1].startswith("  note: random weights")  # the fixture is a random checkpoint, and says so


def test_itm_scores_match_transformers_pipeline(checkpoint):
    """infer equals softmax(logits)[:, 1] of transformers' model fed by transformers' processor."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    proc = transformers.BridgeTowerProcessor.from_pretrained(checkpoint)
    model = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint).eval()
    from PIL import Image

    image = Image.open(PHOTO).convert("RGB")
    enc = proc(images=[image] * len(TEXTS), text=TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits.softmax(-1)[:, 1].numpy()
    assert_close(mb.infer(PHOTO, TEXTS, model=checkpoint).scores, ref, "infer vs transformers pipeline")


def test_mask_is_filled(checkpoint):
    result = mb.infer(PHOTO, "a bunch of <mask> laying on a <mask>.", model=checkpoint, top_k=3)
    assert result.task == "mlm" and len(result.candidates[0]) == 2
    model = mb.BridgeTowerForMaskedLM.from_pretrained(checkpoint)
    proc = mb.BridgeTowerProcessor.from_pretrained(checkpoint)
    enc = proc(images=PHOTO, text="a bunch of <mask> laying on a <mask>.")
    logits = model(**enc).logits[0]
    positions = np.flatnonzero(enc["input_ids"][0] == proc.tokenizer.mask_token_id)
    best = logits[positions].argmax(-1)
    assert [c[0][0] for c in result.candidates[0]] == [proc.decode([int(b)]) for b in best]
    ids = enc["input_ids"][0].copy()
    ids[positions] = best
    assert result.filled == [proc.decode(ids.tolist(), skip_special_tokens=True)]
    assert all(len(c) == 3 and c[0][1] >= c[1][1] >= c[2][1] for c in result.candidates[0])


def test_itc_scores_are_cosines_of_the_full_forward(checkpoint):
    result = mb.infer(PHOTO, TEXTS[:2], model=checkpoint, task="itc")
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(checkpoint)
    enc = mb.BridgeTowerProcessor.from_pretrained(checkpoint)(images=[PHOTO] * 2, text=TEXTS[:2], padding=True)
    out = model(**enc)
    # get_*_features equal the full forward's embeddings to float32 rounding; 1e-5 covers the dot product
    assert_close(result.scores, (out.text_embeds * out.image_embeds).sum(-1), "itc cosines", tol=1e-5)


def test_model_is_loaded_once(checkpoint):
    mb.infer(PHOTO, "x", model=checkpoint)
    hits = _load.cache_info().hits
    mb.infer(PHOTO, "y", model=checkpoint)
    assert _load.cache_info().hits == hits + 1


def test_checkpoint_is_opened_once_for_every_task(tmp_path, monkeypatch):
    """Choosing the task and loading each task's model share one opening (one memory map) of the file."""
    from minibridge import modeling

    if not (ROBERTA / "tokenizer.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    folder = save_random_checkpoint(tmp_path, TINY_REAL_VOCAB, tokenizer_dir=ROBERTA)
    opened = []
    read = modeling.read_checkpoint
    monkeypatch.setattr(modeling, "read_checkpoint", lambda f: opened.append(f) or read(f))
    for task, text in (("itm", "a cat"), ("mlm", "a <mask> cat"), ("itc", "a cat")):
        mb.infer(PHOTO, text, model=folder, task=task)
    assert opened == [folder]


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="no mask here", task="mlm"), "has none; write <mask>"),
    (dict(text="x", task="nope"), "task must be one of"),
    (dict(text=None), "text must be a string or a non-empty list"),
    (dict(text=[]), "non-empty list"),
])
def test_bad_requests(checkpoint, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mb.infer(PHOTO, model=checkpoint, **kwargs)


def test_missing_head_is_named(tmp_path):
    folder = save_random_checkpoint(tmp_path, TINY_REAL_VOCAB, heads=("itm",))
    with pytest.raises(ValueError, match="has no itc head; it has: itm"):
        mb.infer(np.zeros((40, 40, 3), np.uint8), "x", model=folder, task="itc")


# ---- the command line, as a subprocess --------------------------------------------------------


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "minibridge", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("command", ["", "infer", "download", "convert", "embed", "random-checkpoint"])
def test_help(command):
    r = cli(*([command] if command else []), "--help")
    assert r.returncode == 0 and "usage: minibridge" in r.stdout


def test_cli_infer(checkpoint):
    r = cli("infer", PHOTO, *TEXTS, "--model", checkpoint)
    assert r.returncode == 0, r.stderr
    scores = mb.infer(PHOTO, TEXTS, model=checkpoint).scores
    assert f"{max(scores):.4f}" in r.stdout.splitlines()[2]


def test_cli_offline_error_is_one_paragraph(tmp_path):
    r = cli("infer", PHOTO, "two cats", env={"HF_HUB_OFFLINE": "1", "MINIBRIDGE_HOME": str(tmp_path)})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "BridgeTower/bridgetower-base-itm-mlm" in r.stderr and str(tmp_path) in r.stderr
    assert "--model path/to/folder" in r.stderr and r.stderr.count("\n") == 1


def test_cli_bad_image_and_folder(checkpoint, tmp_path):
    r = cli("infer", tmp_path / "nope.jpg", "x", "--model", checkpoint)
    assert r.returncode == 1 and "no image file" in r.stderr and "Traceback" not in r.stderr
    r = cli("infer", PHOTO, "x", "--model", tmp_path)
    assert r.returncode == 1 and "config.json" in r.stderr and "Traceback" not in r.stderr


def test_cli_embed(checkpoint, tmp_path):
    out = tmp_path / "texts.npy"
    r = cli("embed", "--model", checkpoint, "--text", "a cat", "a dog", "--out", out)
    assert r.returncode == 0, r.stderr
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(checkpoint)
    enc = mb.BridgeTowerProcessor.from_pretrained(checkpoint)(text=["a cat", "a dog"], padding=True)
    np.testing.assert_array_equal(np.load(out), model.get_text_features(enc["input_ids"], enc["attention_mask"]))
    r = cli("embed", "--model", checkpoint, "--image", PHOTO)
    assert r.returncode == 0 and f"[{TINY_REAL_VOCAB['contrastive_hidden_size']}]" in r.stdout


def test_image_by_url(checkpoint):
    """An http(s) image is fetched (here from a server on loopback) and scores like the file itself."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PHOTO.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{PHOTO.name}"
        assert mb.infer(url, TEXTS, model=checkpoint).scores == mb.infer(PHOTO, TEXTS, model=checkpoint).scores
        with pytest.raises(OSError, match="could not download the image"):
            mb.infer(url.replace(PHOTO.name, "missing.png"), TEXTS, model=checkpoint)
    finally:
        server.shutdown()


# ---- minibridge random-checkpoint: a checkpoint to run offline ------------------------------------------


def test_random_checkpoint_command_writes_a_marked_checkpoint_that_loads(tmp_path):
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    out = tmp_path / "weights" / "random-tiny"  # the parent is made too
    r = cli("random-checkpoint", out, "--size", "tiny", "--tokenizer", ROBERTA, "--seed", 5)
    assert r.returncode == 0, r.stderr
    assert f"MINIBRIDGE_MODEL={out} jupyter lab notebooks/" in r.stdout  # the launch line is printed
    assert sorted(p.name for p in tmp_path.joinpath("weights").iterdir()) == ["random-tiny"]  # no .partial left
    config = json.loads((out / "config.json").read_text())
    assert config[RANDOM_MARK]["seed"] == 5 and "noise" in config[RANDOM_MARK]["note"]
    assert random_mark(out) == config[RANDOM_MARK]["note"]
    # The stored weights are random_weights of the tiny architecture with the real vocabulary, all heads.
    expected = random_weights(BridgeTowerConfig.from_dict(TINY_REAL_VOCAB), ("itm", "mlm", "itc"), 5)
    stored = {k.removeprefix("bridgetower."): v for k, v in read_checkpoint(out).items()}
    assert sorted(stored) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(stored[key], value, err_msg=key)
    # It opens like a Hub checkpoint, and infer says that its numbers are noise.
    tokenizer = mb.RobertaTokenizer.from_pretrained(out)
    assert tokenizer("a cat on a mat")["input_ids"] == mb.RobertaTokenizer.from_pretrained(ROBERTA)("a cat on a mat")["input_ids"]
    result = mb.infer(PHOTO, ["a cat", "a dog"], model=out)
    assert result.note == config[RANDOM_MARK]["note"]
    assert str(result).splitlines()[-1] == f"  note: {result.note}"  # after the table, so the table reads as before


def test_trained_checkpoints_carry_no_random_note(checkpoint, tmp_path):
    folder = tmp_path / "trained"
    folder.mkdir()
    config = json.loads((checkpoint / "config.json").read_text())
    del config[RANDOM_MARK]  # as a real checkpoint's config.json
    (folder / "config.json").write_text(json.dumps(config))
    assert random_mark(folder) is None and random_mark(checkpoint) is not None
    assert random_mark(tmp_path / "nowhere") is None


def test_random_checkpoint_without_tokenizer_says_where_to_get_one(tmp_path):
    out = tmp_path / "out"
    r = cli("random-checkpoint", out, "--size", "tiny", env={"MINIBRIDGE_HOME": str(tmp_path / "empty")})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    for words in ("vocab.json", "merges.txt", "--tokenizer DIR", "roberta-base", "minibridge download"):
        assert words in r.stderr, (words, r.stderr)
    assert list(tmp_path.iterdir()) == [], "nothing may be written when the command fails"
    (tmp_path / "empty").mkdir()
    r = cli("random-checkpoint", tmp_path / "weights" / "out", "--size", "tiny", "--tokenizer", tmp_path / "empty")
    assert r.returncode == 1 and "holds no RoBERTa tokenizer files" in r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["empty"], "a failed run must leave no folder behind"


def test_random_checkpoint_finds_the_tokenizer_of_a_downloaded_checkpoint(tmp_path):
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    download = tmp_path / "home" / "BridgeTower--bridgetower-base-itm-mlm" / "main"
    download.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(ROBERTA / name, download / name)
    r = cli("random-checkpoint", tmp_path / "out", "--size", "tiny", "--heads", "itm",
            env={"MINIBRIDGE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    assert str(download) in r.stdout and (tmp_path / "out" / "merges.txt").is_file()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [
        "BridgeTowerForImageAndTextRetrieval"]


def test_random_checkpoint_never_overwrites_what_is_not_a_checkpoint(tmp_path):
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("three years of work")
    for extra in ([], ["--force"]):
        r = cli("random-checkpoint", notes, "--size", "tiny", "--tokenizer", ROBERTA, *extra)
        assert r.returncode == 1 and "exists and is not empty" in r.stderr
        assert [p.name for p in notes.iterdir()] == ["thesis.txt"]
    out = tmp_path / "ckpt"
    assert cli("random-checkpoint", out, "--size", "tiny", "--heads", "itm", "--tokenizer", ROBERTA).returncode == 0
    r = cli("random-checkpoint", out, "--size", "tiny", "--heads", "itm", "--tokenizer", ROBERTA)
    assert r.returncode == 1 and "--force" in r.stderr
    r = cli("random-checkpoint", out, "--size", "tiny", "--heads", "mlm", "--seed", 1, "--tokenizer", ROBERTA, "--force")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BridgeTowerForMaskedLM"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "notes"]
