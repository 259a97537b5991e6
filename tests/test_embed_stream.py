"""minibridge.embedding: `minibridge embed --out INDEX_DIR` streams a collection into an index.

The issue's "must show", on a folder of 400 photos with a corrupt file, a zero-byte file and a text
file named .jpg, batch size 16: the peak memory does not grow with the number of photos; the vectors
equal get_image_features of the same photos; the bad files are listed with their reasons; a run
killed midway and resumed gives exactly the index of an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minibridge as mb
from minibridge.embedding import ExtraNeeded, collect_inputs, embed_collection
from minibridge.index import Index, IndexFormatError

from embed_helpers import BAD_FILES, CHILD_ENV, add_bad_files, cli, make_checkpoint, make_photos
from helpers import assert_close
from paths import ROBERTA

# The streamed vectors come from batches of 16 readable images, the reference's from batches of 50:
# float32 sums in another blocking differ by ~1e-7; 1e-5 is the bound, well under a real
# mistake (a wrong crop or normalisation moves the unit vectors by 1e-2 or more).
PARITY_TOL = 1e-5
BATCH, SHARD = 16, 32  # 32 rows a shard: 13 shards for 400 photos, so a kill lands midway

# The child process that embeds a folder and reports its peak memory (resource.getrusage: kB on Linux).
MEASURE = """
import json, resource, sys
from minibridge.embedding import embed_collection
report = embed_collection([sys.argv[1]], "image", model=sys.argv[2], out=sys.argv[3], batch_size=16,
                          shard_size=32, progress=False)
print(json.dumps({"rows": report.rows, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = make_photos(folder, 400)
    add_bad_files(folder)
    return folder, paths


def _measure(folder, checkpoint, out):
    r = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(checkpoint), str(out)], capture_output=True,
                       text=True, timeout=300, env=CHILD_ENV)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def uninterrupted(photos, checkpoint, tmp_path_factory):
    """The 400-photo folder embedded in one run, in a child process that reports its peak memory."""
    out = tmp_path_factory.mktemp("runs") / "whole.index"
    return out, _measure(photos[0], checkpoint, out)


def test_peak_memory_does_not_grow_with_the_collection(photos, checkpoint, uninterrupted, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for path in photos[1][:100]:
        os.link(path, small / path.name)
    few = _measure(small, checkpoint, tmp_path / "small.index")
    many = uninterrupted[1]
    assert (few["rows"], many["rows"]) == (100, 400)
    print(f"peak RSS: 100 photos {few['peak_mb']:.0f} MB, 400 photos {many['peak_mb']:.0f} MB")
    # Holding the 300 extra photos' pixels would add 300 MB (1 MB each at 288 px) and their decoded
    # JPEGs 70 MB more; what does grow (their names, one shard of 32 × 16 floats) is kilobytes.
    assert many["peak_mb"] - few["peak_mb"] < 30, (few, many)


def test_vectors_equal_get_image_features(photos, checkpoint, uninterrupted):
    index = Index.open(uninterrupted[0])
    paths = [str(p) for p in photos[1]]
    assert sorted(index.ids) == sorted(paths) and len(index) == 400
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(checkpoint)
    processor = mb.BridgeTowerImageProcessor.from_pretrained(checkpoint)
    # Photo i is a byte-for-byte copy of photo i % 8 (make_photos), so 8 forward passes give the
    # reference of every row, and each row is checked against the file its id names.
    reference = model.get_image_features(processor(paths[:8])["pixel_values"])  # [8, C]
    expected = np.stack([reference[int(Path(i).stem[2:]) % 8] for i in index.ids])  # [400, C]
    assert_close(index.vectors[:], expected, "the index's rows", tol=PARITY_TOL)
    assert all(isinstance(shard, np.memmap) for shard in index.vectors.shards)


def test_bad_files_are_skipped_and_listed_with_reasons(photos, uninterrupted):
    folder, out = photos[0], uninterrupted[0]
    index = Index.open(out)
    skipped = dict(index.skipped)
    assert sorted(skipped) == sorted(str(folder / name) for name in BAD_FILES)
    for name, (_, says) in BAD_FILES.items():
        reason = skipped[str(folder / name)]
        assert "cannot read" in reason and name in reason and says in reason.lower(), reason
    lines = (out / "skipped.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "input\treason" and sorted(line.split("\t")[0] for line in lines[1:]) == sorted(skipped)
    assert index.complete and index.manifest["inputs_done"] == 403


def _same_index(a, b):
    a, b = Index.open(a), Index.open(b)
    assert a.ids == b.ids and a.skipped == b.skipped
    assert [s["rows"] for s in a.manifest["shards"]] == [s["rows"] for s in b.manifest["shards"]]
    assert np.array_equal(np.asarray(a.vectors), np.asarray(b.vectors)), "the vectors differ"  # to the bit


def test_killed_run_resumed_gives_the_uninterrupted_index(photos, checkpoint, uninterrupted, tmp_path):
    """SIGKILL (no clean-up of any kind) once two shards are written; --resume finishes the job.

    SIGKILL leaves whatever was on disk at that instant; stale files of two other instants are added."""
    out = tmp_path / "killed.index"
    args = [sys.executable, "-m", "minibridge", "embed", "--model", str(checkpoint), "--image", str(photos[0]),
            "--out", str(out), "--batch-size", str(BATCH), "--shard-size", str(SHARD), "--no-progress"]
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CHILD_ENV)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and run.poll() is None:
            try:
                if len(json.loads((out / "manifest.json").read_text())["shards"]) >= 2:
                    break
            except (OSError, ValueError):  # not written yet
                pass
            time.sleep(0.005)
        if run.poll() is None:
            os.kill(run.pid, signal.SIGKILL)
    finally:
        run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    stopped = json.loads((out / "manifest.json").read_text())
    assert not stopped["complete"] and 2 <= len(stopped["shards"]) < 13
    assert len(Index.open(out)) == len(stopped["shards"]) * SHARD  # the finished shards open as they are
    with pytest.raises(FileExistsError, match="--resume"):  # without --resume the folder is not overwritten
        embed_collection([photos[0]], "image", model=checkpoint, out=out, batch_size=BATCH, shard_size=SHARD)
    # What a crash at another instant leaves: a shard half-written under its temporary name, and one
    # complete on disk but not yet in the manifest. Neither may be taken for part of the index.
    following = len(stopped["shards"])
    (out / f"vectors-{following:05d}.npy.partial").write_bytes(b"\x93NUMPY half a header")
    np.save(out / f"vectors-{following + 1:05d}.npy", np.full((SHARD, 16), 7, np.float32))
    (out / f"ids-{following + 1:05d}.json").write_text('["stale"]')

    r = cli("embed", "--model", checkpoint, "--image", photos[0], "--out", out, "--resume", "--no-progress")
    assert r.returncode == 3, r.stderr  # 3: complete, with skipped inputs
    assert "400 of 403 inputs embedded" in r.stdout and "skipped 3 input(s)" in r.stdout
    assert not list(out.glob("*.partial"))
    _same_index(out, uninterrupted[0])


def test_interrupted_run_says_how_to_continue(checkpoint, tmp_path, monkeypatch, capsys):
    """^C (KeyboardInterrupt) during the second batch: exit 130, and a line that says --resume continues."""
    from minibridge import __main__
    from minibridge.embedding import Embedder

    make_photos(tmp_path / "p", 5)
    embed, calls = Embedder.embed, []

    def interrupted_on_the_second_batch(self, loaded):
        calls.append(len(loaded))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return embed(self, loaded)

    monkeypatch.setattr(Embedder, "embed", interrupted_on_the_second_batch)
    out = tmp_path / "i"
    status = __main__.main(["embed", "--model", str(checkpoint), "--image", str(tmp_path / "p"), "--out", str(out),
                            "--batch-size", "2", "--shard-size", "2", "--no-progress"])
    assert status == 130 and len(Index.open(out)) == 2
    err = capsys.readouterr().err
    assert f"minibridge embed: interrupted; {out} keeps the 2 inputs done of 5: run the same command with --resume " \
           "to continue" in err, err


def test_resume_refuses_an_index_of_other_inputs_or_another_model(photos, checkpoint, uninterrupted, tmp_path):
    other = make_checkpoint(tmp_path / "other", seed=1)
    photo = photos[1][0]
    with pytest.raises(IndexFormatError, match=f'it was made with model = "{checkpoint}", and this run has model') as e:
        embed_collection([photos[0]], "image", model=other, out=uninterrupted[0], resume=True)
    assert str(uninterrupted[0]) in str(e.value)
    with pytest.raises(IndexFormatError, match="made from 403 inputs and this run names 1"):
        embed_collection([photo], "image", model=checkpoint, out=uninterrupted[0], resume=True)
    with pytest.raises(IndexFormatError, match="batch_size = 16, and this run has batch_size = 8"):
        embed_collection([photos[0]], "image", model=checkpoint, out=uninterrupted[0], resume=True, batch_size=8)
    r = cli("embed", "--model", other, "--image", photos[0], "--out", uninterrupted[0], "--resume")
    assert r.returncode == 1 and "cannot resume" in r.stderr and "Traceback" not in r.stderr


def test_a_finished_index_resumed_does_nothing(photos, checkpoint, uninterrupted):
    before = (uninterrupted[0] / "manifest.json").read_text()
    report = embed_collection([photos[0]], "image", model=checkpoint, out=uninterrupted[0], resume=True,
                              progress=False)
    assert report.read_now == 0 and report.rows == 400 and len(report.skipped) == 3
    assert (uninterrupted[0] / "manifest.json").read_text() == before


def test_file_names_that_are_not_utf8(checkpoint, tmp_path):
    """Old cameras and zip files leave Latin-1 names (b"caf\\xe9.jpg"); Linux keeps the bytes and Python
    reads them as lone surrogates ("caf\\udce9.jpg"). They are embedded, listed and read back by name."""
    folder = tmp_path / "p"
    first, second = make_photos(folder, 2, distinct=1)  # two copies of one photo
    latin = os.fsdecode(bytes(folder) + b"/caf\xe9.jpg")
    os.rename(second, latin)
    (folder / os.fsdecode(b"d\xe9j\xe0 vu.jpg")).write_bytes(b"")  # and one that is skipped
    out = tmp_path / "i"
    # PYTHONIOENCODING=utf-8: stdout strict, as under most UTF-8 locales (C.UTF-8 lets surrogates through)
    r = cli("embed", "--model", checkpoint, "--image", folder, "--out", out, "--no-progress",
            env={"PYTHONIOENCODING": "utf-8"}, errors="surrogateescape")
    assert r.returncode == 3, r.stderr  # complete, one input skipped
    index = Index.open(out)
    assert index.ids == [latin, str(first)]  # sorted by name: "c" before "i"
    assert_close(index.vectors[0], index.vectors[1], "two copies of one photo", tol=PARITY_TOL)
    [(skipped, reason)] = index.skipped
    assert os.fsencode(skipped) == bytes(folder) + b"/d\xe9j\xe0 vu.jpg" and "cannot read" in reason
    assert os.fsencode(skipped) in (out / "skipped.tsv").read_bytes()  # the name's own bytes
    assert f"the first: {skipped}: cannot read" in r.stdout  # printed with its own bytes too
    if (ROBERTA / "vocab.json").is_file():  # search prints the ids: as a table, and as JSON with \\u escapes
        r = cli("search", out, "a cat", env={"PYTHONIOENCODING": "utf-8"}, errors="surrogateescape")
        assert r.returncode == 0 and latin in r.stdout, r.stderr
        r = cli("search", out, "a cat", "--json", env={"PYTHONIOENCODING": "utf-8"})
        assert r.returncode == 0 and {x["id"] for x in json.loads(r.stdout)["results"]} == set(index.ids), r.stderr


# ---- inputs: folders, globs, text files, tables ---------------------------------------------------


def test_inputs_from_folders_globs_and_tables(tmp_path):
    paths = make_photos(tmp_path / "p", 4)
    (tmp_path / "p" / ".hidden.jpg").write_bytes(paths[0].read_bytes())  # e.g. macOS's ._ files
    (tmp_path / "p" / "notes.md").write_text("not an image")
    table = tmp_path / "list.csv"
    table.write_text("name,file\na,p/im0001.jpg\nb,\nc,http://example.com/x.png\n")
    found, notes = collect_inputs([tmp_path / "p", str(tmp_path / "p" / "*.jpg"), table], "image", column="file")
    assert found == [str(p) for p in paths] + ["http://example.com/x.png"]  # each file once, in order
    assert any("named more than once" in n for n in notes) and any("1 empty cell" in n for n in notes)
    texts = ["~ roughly two cats", "x" * 5000, "two/three of a cake"]  # a user name? too long a name? a path?
    assert collect_inputs(texts, "text") == (texts, [])


@pytest.mark.parametrize("arguments, kind, column, error, says", [
    (["nope/"], "image", None, FileNotFoundError, "no file or folder nope/"),
    (["nothing-*.jpg"], "image", None, FileNotFoundError, "no file matches the pattern nothing-*.jpg"),
    (["captions.txt"], "text", None, FileNotFoundError, "there is no file captions.txt"),
    (["{empty}"], "image", None, ValueError, "holds no image files"),
    (["{table}"], "text", None, ValueError, "with --column NAME (its columns: id, caption)"),
    (["{table}"], "text", "text", ValueError, "has no column 'text' (--column); its columns: id, caption"),
    (["a cat"], "text", "caption", ValueError, "--column caption names a column of a table, but no .csv"),
    (["{latin1}"], "text", None, ValueError, "is not UTF-8 text"),
])
def test_bad_arguments_are_refused_naming_them(tmp_path, monkeypatch, arguments, kind, column, error, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "t.csv").write_text("id,caption\n1,a cat\n")
    (tmp_path / "l.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    names = {"{empty}": "empty", "{table}": "t.csv", "{latin1}": "l.txt"}
    with pytest.raises(error) as e:
        collect_inputs([names.get(a, a) for a in arguments], kind, column)
    assert says in str(e.value)


def test_parquet_column_and_a_clear_error_without_pyarrow(tmp_path, monkeypatch):
    table = tmp_path / "t.parquet"
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        table.write_bytes(b"PAR1")
    else:
        pq.write_table(pyarrow.table({"caption": ["a cat", None, "a dog"]}), table)
        assert collect_inputs([table], "text", column="caption")[0] == ["a cat", "a dog"]
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ExtraNeeded, match=f"reading {table} needs pyarrow, which is not installed: `pip install "):
        collect_inputs([table], "text", column="caption")


@pytest.fixture(scope="module")
def text_checkpoint(checkpoint):
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    return checkpoint


def test_texts_from_a_file_a_table_and_the_command_line(text_checkpoint, tmp_path):
    captions = [f"photo number {i} of a {'red' if i % 2 else 'blue'} thing" for i in range(20)]
    (tmp_path / "captions.txt").write_text("\n".join(captions[:12]) + "\n\n   \n", encoding="utf-8")
    (tmp_path / "more.csv").write_text("id,caption\n" + "".join(f"{i},{c}\n" for i, c in enumerate(captions[12:19])))
    long_text = " ".join(["word"] * 600)  # 602 tokens with <s> and </s>: over the 512 the model takes
    out = tmp_path / "texts.index"
    r = cli("embed", "--model", text_checkpoint, "--text", tmp_path / "captions.txt", tmp_path / "more.csv",
            long_text, captions[19], "--column", "caption", "--out", out, "--batch-size", 4, "--no-progress")
    assert r.returncode == 3, r.stderr
    index = Index.open(out)
    assert index.ids == captions and index.kind == "text"
    [(text, reason)] = index.skipped
    assert text == long_text and "602 tokens long" in reason and "over the limit of 512" in reason
    assert "--truncation" in reason
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(text_checkpoint)
    enc = mb.RobertaTokenizer.from_pretrained(text_checkpoint)(captions, padding=True, return_tensors="np")
    assert_close(index.vectors[:], model.get_text_features(enc["input_ids"], enc["attention_mask"]), "texts",
                 tol=PARITY_TOL)


def test_truncation_and_max_length(text_checkpoint, tmp_path):
    from minibridge.embedding import embed_inputs

    long_text = " ".join(["word"] * 600)
    model = mb.BridgeTowerForContrastiveLearning.from_pretrained(text_checkpoint)
    enc = mb.RobertaTokenizer.from_pretrained(text_checkpoint)(long_text, truncation=True, max_length=40,
                                                                   return_tensors="np")
    assert enc["input_ids"].shape == (1, 40)
    cut = embed_inputs([long_text], "text", text_checkpoint, truncation=True, max_length=40)
    assert_close(cut, model.get_text_features(enc["input_ids"]), "a text cut to 40 tokens", tol=PARITY_TOL)
    with pytest.raises(ValueError, match="max_length must be from 2 .* to the model's limit of 512 tokens, got 1000"):
        embed_collection(["a cat"], "text", model=text_checkpoint, out=tmp_path / "i", max_length=1000)
    assert not (tmp_path / "i").exists()


def test_plain_progress_line_without_tqdm(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    make_photos(tmp_path / "p", 5)
    report = embed_collection([tmp_path / "p"], "image", model=checkpoint, out=tmp_path / "i", batch_size=2)
    err = capsys.readouterr().err
    assert report.rows == 5 and "5/5 images" in err and "/s  ETA" in err, err


def test_npy_output_still_needs_every_input(checkpoint, tmp_path):
    """--out FILE.npy keeps the one-array behaviour: rows aligned with the inputs, so a bad one is an error."""
    paths = make_photos(tmp_path / "p", 3)
    (tmp_path / "p" / "bad.jpg").write_bytes(b"")
    r = cli("embed", "--model", checkpoint, "--image", *paths, "--out", tmp_path / "v.npy")
    assert r.returncode == 0 and np.load(tmp_path / "v.npy").shape == (3, 16)
    r = cli("embed", "--model", checkpoint, "--image", tmp_path / "p", "--out", tmp_path / "w.npy")
    assert r.returncode == 1 and "bad.jpg" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w.npy").exists()
    r = cli("embed", "--model", checkpoint, "--image", *paths, "--out", tmp_path / "x.npy", "--resume")
    assert r.returncode == 1 and "--resume needs --out INDEX_DIR" in r.stderr
