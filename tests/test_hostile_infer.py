"""infer, the model's input checks and the command line against odd and hostile requests (issue 11).

Each test makes its odd input itself, on a tiny random checkpoint with the real tokenizer.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import minibridge as mb
from minibridge import modeling
from minibridge.weights import save_random_checkpoint

from helpers import ROBERTA, SHARED_DATA, TINY_REAL_VOCAB, assert_close

PHOTO = SHARED_DATA / "images" / "000000039769.png"
OTHER_PHOTO = SHARED_DATA / "images" / "000000000790.jpg"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if not (ROBERTA / "tokenizer.json").is_file() or not OTHER_PHOTO.is_file():
        pytest.skip(f"needs the real tokenizer files and photos in {SHARED_DATA} (../shared/data next to the checkout)")
    return save_random_checkpoint(tmp_path_factory.mktemp("ckpt"), TINY_REAL_VOCAB, seed=4, tokenizer_dir=ROBERTA)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "minibridge", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


# ---- images and texts pair the same way for every task --------------------------------------------


@pytest.mark.parametrize("task", ["itm", "itc"])
def test_several_images_and_one_text_score_every_image(checkpoint, task):
    """Before: task="itc" scored only the first image (and "itm" raised). Now one row per image."""
    result = mb.infer([PHOTO, OTHER_PHOTO], "two cats", model=checkpoint, task=task)
    alone = [mb.infer(p, "two cats", model=checkpoint, task=task).scores[0] for p in (PHOTO, OTHER_PHOTO)]
    # the same pairs, computed in another batch: float32 rounding apart
    assert_close(result.scores, alone, f"{task} scores of two images", tol=1e-5)
    assert result.images == [str(PHOTO), str(OTHER_PHOTO)] and result.texts == ["two cats"] * 2
    assert str(result).splitlines()[1].split() == ["rank", "score", "image", "text"]


@pytest.mark.parametrize("task", ["itm", "itc", "mlm"])
def test_images_and_texts_of_equal_number_pair_up(checkpoint, task):
    texts = ["a <mask> on a sofa", "a <mask> of food"]
    result = mb.infer([PHOTO, OTHER_PHOTO], texts, model=checkpoint, task=task)
    alone = [mb.infer(p, t, model=checkpoint, task=task) for p, t in zip((PHOTO, OTHER_PHOTO), texts)]
    if task == "mlm":
        assert result.filled == [r.filled[0] for r in alone]
    else:
        assert_close(result.scores, [r.scores[0] for r in alone], f"{task} paired scores", tol=1e-5)


def test_unpairable_numbers_are_refused(checkpoint):
    with pytest.raises(ValueError, match="got 2 images and 3 texts; pass one image"):
        mb.infer([PHOTO, OTHER_PHOTO], ["a", "b", "c"], model=checkpoint, task="itc")
    with pytest.raises(ValueError, match="empty list of images"):
        mb.infer([], "a", model=checkpoint)


# ---- long lists run in batches -----------------------------------------------------------------------


def test_long_lists_run_in_batches_of_batch_size(checkpoint, monkeypatch):
    """Before: 1,000 texts were one forward pass (~21.5 MB per text on the base model). Now every pass
    holds at most batch_size pairs, and the scores do not depend on the batch size."""
    texts = [f"caption number {k} of a photo" for k in range(23)]
    seen = []  # pairs per cross-modal pass (infer runs the towers once per text and image, then pairs)
    forward = mb.BridgeTowerForImageAndTextRetrieval.forward_pairs
    monkeypatch.setattr(mb.BridgeTowerForImageAndTextRetrieval, "forward_pairs",
                        lambda self, text, image, text_rows, image_rows:
                        seen.append(len(text_rows)) or forward(self, text, image, text_rows, image_rows))
    small = mb.infer(PHOTO, texts, model=checkpoint, task="itm", batch_size=5).scores
    assert seen == [5, 5, 5, 5, 3]
    seen.clear()
    whole = mb.infer(PHOTO, texts, model=checkpoint, task="itm", batch_size=64).scores
    assert seen == [23]
    assert_close(small, whole, "scores in batches of 5 vs one batch", tol=1e-5)  # padding differs: rounding only


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "3"])
def test_counts_must_be_positive_integers(checkpoint, value):
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        mb.infer(PHOTO, "a <mask>", model=checkpoint, top_k=value)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        mb.infer(PHOTO, "a cat", model=checkpoint, batch_size=value)


def test_numpy_integers_are_integers(checkpoint):
    """Before: top_k=np.int64(3) was refused while top_k=True was accepted."""
    result = mb.infer(PHOTO, "a <mask> on a sofa", model=checkpoint, top_k=np.int64(3), batch_size=np.int32(2))
    assert len(result.candidates[0][0]) == 3


# ---- long texts: truncation is offered where the error advises it -------------------------------------


def test_a_text_over_the_limit_is_refused_or_truncated(checkpoint):
    long_text = " ".join(["a cat"] * 300)  # 600 tokens: over the model's 512
    with pytest.raises(ValueError, match="602 tokens long"):
        mb.infer(PHOTO, long_text, model=checkpoint)
    cut = mb.infer(PHOTO, [long_text, long_text[:-3] + "dog"], model=checkpoint, truncation=True)
    assert cut.scores[0] == pytest.approx(cut.scores[1], abs=1e-6)  # they differ only past token 512
    short = mb.infer(PHOTO, long_text, model=checkpoint, truncation=True, max_length=8)
    tok = mb.RobertaTokenizer.from_pretrained(checkpoint)
    assert_close(short.scores, mb.infer(PHOTO, tok.decode(tok.encode(long_text)[1:7]), model=checkpoint).scores,
                 "max_length=8 equals the first 6 tokens", tol=1e-6)
    r = cli("infer", PHOTO, long_text, "--model", checkpoint)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "truncat" in r.stderr
    r = cli("infer", PHOTO, long_text, "--model", checkpoint, "--truncation", "--max-length", 8)
    assert r.returncode == 0, r.stderr
    assert f"{short.scores[0]:.4f}" in r.stdout


# ---- the model refuses inputs that can only give NaN, and attention that cannot fit --------------------


def test_non_finite_pixels_are_refused(checkpoint):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    pixels = np.zeros((1, 3, 12, 12), np.float32)
    pixels[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="pixel_values holds NaN or infinity"):
        model(input_ids=np.array([[0, 2]]), pixel_values=pixels)
    pixels[0, 1, 2, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        model(input_ids=np.array([[0, 2]]), pixel_values=pixels)


def test_attention_too_large_for_memory_is_refused_up_front(checkpoint, monkeypatch):
    """Before: 1024-px images with interpolate_pos_encoding tried to allocate GBs of attention at once."""
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(checkpoint)
    big = np.zeros((1, 3, 1024, 1024), np.float32)  # 4-px patches: 65,537 tokens: 2 heads × 65537² × 4 bytes
    monkeypatch.setattr(modeling, "available_memory", lambda: 24 * 10**9)  # a machine of this project's size
    with pytest.raises(modeling.TooLargeError, match=r"65537 tokens each.*would need 34\.4 GB.*has 24\.0 GB"):
        model.get_image_features(big, interpolate_pos_encoding=True)
    assert issubclass(modeling.TooLargeError, MemoryError)
    # The rule, on a size that would run: refused when the machine has less than it needs.
    monkeypatch.setattr(modeling, "available_memory", lambda: 100_000)  # 257 tokens need 528 kB
    with pytest.raises(MemoryError, match=r"0\.0 GB available"):
        model.get_image_features(np.zeros((1, 3, 64, 64), np.float32), interpolate_pos_encoding=True)
    monkeypatch.setattr(modeling, "available_memory", lambda: None)  # unknown: runs
    assert model.get_image_features(np.zeros((1, 3, 64, 64), np.float32), interpolate_pos_encoding=True).shape == (1, 16)
    monkeypatch.undo()
    assert modeling.available_memory() > 0  # the real reading, on Linux from /proc/meminfo


def test_only_a_refused_size_is_a_users_mistake_among_memory_errors():
    """The command line prints a refused size as one paragraph; a real out-of-memory crash keeps its traceback."""
    from minibridge import __main__ as cli_main

    assert cli_main._is_user_error(modeling.TooLargeError("too large"))
    assert not cli_main._is_user_error(MemoryError())


# ---- the command line: no traceback for bad input or ^C, --traceback anywhere ---------------------------


def test_traceback_flag_anywhere(checkpoint, tmp_path):
    for args in (["--traceback", "infer"], ["infer", "--traceback"]):
        r = cli(*args, PHOTO, "x", "--model", tmp_path / "nowhere")
        assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr, r.stderr
    r = cli("infer", PHOTO, "x", "--model", tmp_path / "nowhere")
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    r = cli("infer", "--model", checkpoint, PHOTO, "--", "--traceback")  # after --, a text like any other
    assert r.returncode == 0 and "--traceback" in r.stdout


# An import hook that raises KeyboardInterrupt when minibridge.modeling is imported, as ^C would while
# `minibridge` is still loading, then the start of the command as pip's console script writes it.
_INTERRUPTED_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "minibridge.modeling":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
sys.argv = ["minibridge", "infer", "cats.jpg", "a cat"]
from minibridge.__main__ import main
sys.exit(main())
"""


def test_ctrl_c_while_importing_exits_130_without_traceback():
    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_IMPORT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130 and r.stderr == "", r.stderr
    # a program that merely imports minibridge still gets the interrupt
    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_IMPORT.replace('"minibridge", "infer"', '"prog", "infer"')],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "KeyboardInterrupt" in r.stderr


def test_ctrl_c_while_running_exits_130(checkpoint, monkeypatch, capsys):
    from minibridge import __main__ as cli_main
    from minibridge import infer as infer_module  # noqa: F401 -- the function; its module is below

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["minibridge.infer"], "infer", interrupted)
    assert cli_main.main(["infer", str(PHOTO), "a cat", "--model", str(checkpoint)]) == 130
    assert capsys.readouterr().err == ""


def test_the_cli_default_model_is_infers_default():
    from minibridge import __main__ as cli_main

    assert cli_main.DEFAULT_MODEL == sys.modules["minibridge.infer"].DEFAULT_MODEL


def test_embed_takes_image_urls_as_infer_does(checkpoint, tmp_path):
    """Before: `embed --image URL` was refused ("no image file") though infer took URLs."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PHOTO.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"HTTP://127.0.0.1:{server.server_address[1]}/{PHOTO.name}"  # a scheme in capitals is a URL too
        r = cli("embed", "--model", checkpoint, "--image", url, PHOTO, "--out", tmp_path / "v.npy")
        assert r.returncode == 0, r.stderr
        by_url, by_path = np.load(tmp_path / "v.npy")
        np.testing.assert_array_equal(by_url, by_path)
        r = cli("embed", "--model", checkpoint, "--image", url.replace(PHOTO.name, "nope.png"))
        assert r.returncode == 1 and "Traceback" not in r.stderr and "nope.png" in r.stderr and "404" in r.stderr
    finally:
        server.shutdown()
