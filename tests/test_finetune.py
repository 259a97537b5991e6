"""`minibridge finetune` and minibridge.finetune (issue 12, part 3), on a tiny random checkpoint with the
real tokenizer and a few of the shared photos with made-up captions."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import minibridge as mb
from minibridge import finetune
from minibridge.weights import save_random_checkpoint

from helpers import ROBERTA, TINY_REAL_VOCAB
from paths import PHOTOS

NAMES = ["000000205401.jpg", "000000349860.jpg", "000000126107.jpg", "000000165518.jpg", "skimage_rocket.jpg"]
CAPTIONS = ["a man riding a horse", "two cats asleep on a couch", "a bowl of fruit on a table",
            "a red bus in the street", "a rocket on its launch pad"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if not (ROBERTA / "tokenizer.json").is_file() or not all((PHOTOS / n).is_file() for n in NAMES):
        pytest.skip(f"needs the real tokenizer files and photos in {PHOTOS.parent}")
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY_REAL_VOCAB, seed=3, tokenizer_dir=ROBERTA)


@pytest.fixture
def data(tmp_path):
    """The photos copied into tmp_path/photos with a caption file each, and photos.csv beside them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, caption in zip(NAMES, CAPTIONS):
        shutil.copyfile(PHOTOS / name, folder / name)
        (folder / name).with_suffix(".txt").write_text(caption + "\n")
    rows = "".join(f'photos/{n},"{c}"\n' for n, c in zip(NAMES, CAPTIONS))
    (tmp_path / "photos.csv").write_text("image,caption\n" + rows)
    return tmp_path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "minibridge", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_csv_and_folder_give_the_same_pairs(data):
    from_csv = finetune.read_pairs(data / "photos.csv")
    assert sorted(from_csv) == finetune.read_pairs(data / "photos")  # a folder is read in name order
    assert from_csv == [(str(data / "photos" / n), c) for n, c in zip(NAMES, CAPTIONS)]


def test_the_command_writes_a_checkpoint_that_infer_runs(checkpoint, data):
    out = data / "tuned"
    r = cli("finetune", data / "photos.csv", "--model", checkpoint, "--out", out, "--epochs", 2,
            "--batch-size", 2, "--lr", "1e-4", "--save-every", 2)
    assert r.returncode == 0, r.stderr
    # stderr is a pipe here, not a terminal: one line per step (3 steps per epoch), no \r
    lines = r.stderr.splitlines()
    assert len(lines) == 6 and "\r" not in r.stderr, r.stderr
    assert lines[0].startswith("epoch 1/2 step 1/3 loss ") and lines[-1].startswith("epoch 2/2 step 3/3 loss ")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "merges.txt", "preprocessor_config.json", "tokenizer.json", "vocab.json"])
    before = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint).state_dict()
    after = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(out).state_dict()
    assert not np.array_equal(before["itm_score.fc.weight"], after["itm_score.fc.weight"])
    r = cli("infer", "--model", out, data / "photos" / NAMES[0], "a man on a horse")
    assert r.returncode == 0 and "image-text matching" in r.stdout, r.stderr


def _balanced_itm_loss(model, processor, pairs):
    """The ITM loss over every image x every caption, the n true pairs weighted as the n(n-1) others."""
    n = len(pairs)
    enc = processor(images=[i for i, _ in pairs for _ in pairs], text=[c for _ in pairs for _, c in pairs],
                    padding=True)
    labels = np.eye(n, dtype=int).ravel()  # [n*n]: image a with caption b fits when a == b
    logits = np.asarray(model(**enc).logits, np.float64)  # [n*n, 2]
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    weight = np.where(labels == 1, n - 1, 1)
    return -(log_p[np.arange(n * n), labels] * weight).sum() / weight.sum()


@pytest.mark.parametrize("head", ["itm", "itc"])
def test_the_loss_falls_over_epochs(checkpoint, data, head):
    cls = {"itm": mb.BridgeTowerForImageAndTextRetrieval, "itc": mb.BridgeTowerForContrastiveLearning}[head]
    model, processor = cls.from_pretrained(checkpoint), mb.BridgeTowerProcessor.from_pretrained(checkpoint)
    pairs = finetune.read_pairs(data / "photos")
    before = _balanced_itm_loss(model, processor, pairs) if head == "itm" else None
    # batch = all 5 pairs: one step per epoch, so each epoch's mean is its one loss. (A tiny random model
    # learns ITM slowly: measured 0.707 -> 0.688 here; ITC 2.06 -> 1.52.)
    losses = finetune.train(model, processor, pairs, epochs=10, batch_size=5, lr=1e-4, log=None)
    assert len(losses) == 10
    assert losses[-1] < losses[0], losses
    if head == "itm":  # the same on fixed pairs, free of which negatives were drawn (measured 0.699 -> 0.690)
        assert _balanced_itm_loss(model, processor, pairs) < before - 0.003


def test_negatives_are_never_a_true_pair(data):
    pairs = finetune.read_pairs(data / "photos.csv")
    pairs.append((pairs[0][0], "another caption of the first photo"))  # an image with two captions
    true = set(pairs)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        for images, captions, labels in finetune.batches(pairs, 4, rng):
            k = len(images) // 2
            assert labels.tolist() == [1] * k + [0] * k and images[:k] == images[k:]
            assert all((i, c) in true for i, c in zip(images[:k], captions[:k]))
            assert not any((i, c) in true for i, c in zip(images[k:], captions[k:]))
            seen.update(zip(images[k:], captions[k:]))
    assert len(seen) == len({i for i, _ in pairs}) * len({c for _, c in pairs}) - len(pairs)  # every negative drawn
    one = [b[1] for b in finetune.batches(pairs, 4, np.random.default_rng(7))]
    assert one == [b[1] for b in finetune.batches(pairs, 4, np.random.default_rng(7))]  # seeded
    with pytest.raises(ValueError, match="every caption belongs to .*a.jpg: no negative"):
        list(finetune.batches([("a.jpg", "x"), ("a.jpg", "y")], 2, rng))


@pytest.mark.parametrize("train, changes", [("heads", ("itm_score",)),
                                            ("cross", ("itm_score", "bridgetower.cross_modal"))])
def test_frozen_weights_stay_bit_identical(checkpoint, data, train, changes):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    before = {name: np.array(w) for name, w in model.state_dict().items()}  # copies
    finetune.train(model, mb.BridgeTowerProcessor.from_pretrained(checkpoint), finetune.read_pairs(data / "photos"),
                   batch_size=5, lr=1e-3, train=train, log=None)
    after = model.state_dict()
    moved = {name for name in before if not np.array_equal(before[name], after[name])}
    assert moved and all(name.startswith(changes) for name in moved), sorted(moved)
    assert any(name.startswith(changes[-1]) for name in moved)


def test_progress_rewrites_one_line_on_a_terminal(checkpoint, data):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log = Terminal()
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    finetune.train(model, mb.BridgeTowerProcessor.from_pretrained(checkpoint), finetune.read_pairs(data / "photos"),
                   batch_size=3, train="heads", log=log)
    text = log.getvalue()
    assert text.count("\r") == 2 and text.count("\n") == 1 and text.endswith("\n")  # 2 steps, one line kept
    assert text.startswith("\repoch 1/1 step 1/2 loss ") and "\repoch 1/1 step 2/2 loss " in text


def test_mlm_is_refused(checkpoint, data):
    r = cli("finetune", data / "photos", "--model", checkpoint, "--out", data / "out", "--task", "mlm")
    assert r.returncode == 2 and "invalid choice: 'mlm'" in r.stderr
    model = mb.BridgeTowerForMaskedLM.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="ITM or the contrastive .* BridgeTowerForMaskedLM"):
        finetune.train(model, mb.BridgeTowerProcessor.from_pretrained(checkpoint), [("a", "b"), ("c", "d")])


def _missing_image(d):
    with open(d / "photos.csv", "a") as f:
        f.write("photos/nowhere.jpg,a photo that is not there\n")
    return d / "photos.csv", r"photos\.csv, line 7: no image file at .*nowhere\.jpg"


def _empty_caption(d):
    (d / "photos.csv").write_text(f"image,caption\nphotos/{NAMES[0]},a horse\nphotos/{NAMES[1]},  \n")
    return d / "photos.csv", r"photos\.csv, line 3: the caption of .*349860\.jpg is empty"


def _wrong_header(d):
    (d / "photos.csv").write_text(f"path,text\nphotos/{NAMES[0]},a horse\n")
    return d / "photos.csv", r"photos\.csv: expected a CSV file whose header is `image,caption`, got 'path,text'"


def _one_pair(d):
    (d / "photos.csv").write_text(f"image,caption\nphotos/{NAMES[0]},a horse\n")
    return d / "photos.csv", r"photos\.csv holds 1 image-caption pair\(s\); fine-tuning needs at least 2"


def _no_caption_file(d):
    (d / "photos" / NAMES[2]).with_suffix(".txt").unlink()
    return d / "photos", r"126107\.jpg has no caption file: expected 000000126107\.txt beside it"


def _empty_caption_file(d):
    (d / "photos" / NAMES[2]).with_suffix(".txt").write_text(" \n")
    return d / "photos", r"126107\.txt is empty; expected the caption of 000000126107\.jpg"


@pytest.mark.parametrize("make", [_missing_image, _empty_caption, _wrong_header, _one_pair, _no_caption_file,
                                  _empty_caption_file])
def test_bad_data_is_refused_by_file_and_line(checkpoint, data, make):
    path, message = make(data)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        finetune.read_pairs(path)
    r = cli("finetune", path, "--model", checkpoint, "--out", data / "out")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("minibridge finetune: ")
    assert not (data / "out").exists()


def test_an_out_folder_of_other_files_is_refused_before_training(checkpoint, data):
    out = data / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me")
    r = cli("finetune", data / "photos", "--model", checkpoint, "--out", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "holds 1 file(s) (todo.txt) and no config.json" in r.stderr and "epoch" not in r.stderr
    assert [p.name for p in out.iterdir()] == ["todo.txt"]


@pytest.mark.parametrize("n", range(2, 12))
@pytest.mark.parametrize("batch_size", [2, 3, 4, 5])
def test_an_itc_epoch_never_has_a_batch_of_one_pair(n, batch_size):
    """The contrastive loss of one pair is 0: a step on it would only decay the weights. A last batch of
    one pair joins the one before; every pair is still seen once per epoch."""
    pairs = [(f"{i}.jpg", f"caption {i}") for i in range(n)]
    sizes, seen = [], []
    for images, captions, labels in finetune.batches(pairs, batch_size, np.random.default_rng(0), negatives=False):
        assert labels is None and len(images) == len(captions)
        sizes.append(len(images))
        seen += list(zip(images, captions))
    assert min(sizes) >= 2 and max(sizes) <= batch_size + 1, sizes
    assert sorted(seen) == sorted(pairs)
    if n % batch_size == 1 and n > batch_size:
        assert sizes[-1] == batch_size + 1, sizes
    # ITM keeps its last batch of one pair: with its negative it is two rows, both labels
    itm = [len(b[0]) for b in finetune.batches(pairs, batch_size, np.random.default_rng(0))]
    assert itm == [2 * min(batch_size, n - s) for s in range(0, n, batch_size)]


def test_itc_batches_of_fewer_than_two_pairs_are_refused():
    pairs = [("a.jpg", "a cat"), ("b.jpg", "a dog")]
    with pytest.raises(ValueError, match=r"contrastive \(ITC\) loss needs batches of at least 2 pairs .* got batch_size 1"):
        list(finetune.batches(pairs, 1, np.random.default_rng(0), negatives=False))
    with pytest.raises(ValueError, match=r"contrastive \(ITC\) loss needs at least 2 image-caption pairs, got 1"):
        list(finetune.batches(pairs[:1], 4, np.random.default_rng(0), negatives=False))


def test_itc_training_takes_no_step_on_a_single_pair(checkpoint, data):
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(checkpoint)
    processor = mb.BridgeTowerProcessor.from_pretrained(checkpoint)
    pairs = finetune.read_pairs(data / "photos")  # 5 pairs: batches of 2 and 3
    log = io.StringIO()
    losses = finetune.train(model, processor, pairs, epochs=2, batch_size=2, lr=1e-4, train="heads", log=log)
    assert len(losses) == 4 and min(losses) > 0.1, losses  # (one pair's loss would be 0.0)
    assert log.getvalue().count("step 2/2 ") == 2 and "step 3/" not in log.getvalue(), log.getvalue()

    before = {n: np.array(w) for n, w in model.state_dict().items()}
    for bad_pairs, batch_size, message in [(pairs, 1, "at least 2 pairs .* got batch_size 1"),
                                           (pairs[:1], 8, "at least 2 image-caption pairs, got 1")]:
        with pytest.raises(ValueError, match=message):
            finetune.train(model, processor, bad_pairs, batch_size=batch_size, log=None)
    assert all(np.array_equal(w, before[n]) for n, w in model.state_dict().items())  # refused before any step
    r = cli("finetune", data / "photos", "--model", checkpoint, "--out", data / "out", "--task", "itc",
            "--batch-size", 1)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "epoch" not in r.stderr, r.stderr
    assert r.stderr.startswith("minibridge finetune: the contrastive (ITC) loss needs batches of at least 2 pairs")
    assert not (data / "out").exists()


def test_the_command_refuses_itc_batches_of_one_before_loading_the_model(data, tmp_path):
    """The command checks the ITC batch size right after reading the data: the model named is never opened."""
    missing_model = tmp_path / "no-such-model"
    r = cli("finetune", data / "photos.csv", "--model", missing_model, "--out", data / "tuned", "--task", "itc",
            "--batch-size", 1)
    assert r.returncode == 1, r.stderr
    assert "needs batches of at least 2 pairs" in r.stderr and "got batch_size 1" in r.stderr, r.stderr
    assert str(missing_model) not in r.stderr and not (data / "tuned").exists()
