"""minibridge.index: the on-disk format (shards + manifest), reading it back, and exact cosine search.

No model here: the writer is fed hand-made vectors, so each expected answer is known.
"""

import json

import numpy as np
import pytest

from minibridge.index import Index, IndexFormatError, IndexWriter, ShardedVectors

DIM = 8


def header(**changes):
    h = {"kind": "image", "model": "m", "revision": None, "config_sha256": "c", "preprocessing": {"size": 288},
         "dim": DIM, "batch_size": 4, "shard_size": 8, "inputs": {"count": 20, "sha256": "s"}}
    return {**h, **changes}


def write(folder, vectors, skip=(), **changes):
    """An index of `vectors` (row i has id "item i"), the inputs in `skip` skipped; batches of 4 rows."""
    writer = IndexWriter(folder, header(**changes))
    rows = [i for i in range(len(vectors) + len(skip)) if i not in skip]
    for p in skip:
        writer.skip(p, f"item {p}", "cannot read it:\nbroken")
    for start in range(0, len(rows), 4):
        some = rows[start:start + 4]
        writer.add(vectors[start:start + len(some)], [f"item {p}" for p in some], some)
    writer.finish(len(vectors) + len(skip))
    return Index.open(folder)


def test_rows_shards_and_ids_read_back(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(18, DIM)).astype(np.float32)
    index = write(tmp_path / "i", vectors, skip=(3, 10))
    assert [s["rows"] for s in index.manifest["shards"]] == [8, 8, 2]  # fixed-size shards, the last short
    assert all(isinstance(s, np.memmap) for s in index.vectors.shards)
    assert index.ids == [f"item {p}" for p in range(20) if p not in (3, 10)]
    np.testing.assert_array_equal(np.asarray(index.vectors), vectors)
    np.testing.assert_array_equal(index.vectors[9], vectors[9])  # one row, in the second shard
    np.testing.assert_array_equal(index.vectors[5:12], vectors[5:12])  # across a shard boundary
    np.testing.assert_array_equal(index.vectors[[17, 0, -1]], vectors[[17, 0, -1]])
    np.testing.assert_array_equal(index.vectors[2:4, 1], vectors[2:4, 1])
    assert index.vectors.shape == (18, DIM) and len(index) == 18
    with pytest.raises(IndexError, match="row 18 is out of range for an index of 18 rows"):
        index.vectors[18]
    assert index.skipped == [("item 3", "cannot read it: broken"), ("item 10", "cannot read it: broken")]
    report = (tmp_path / "i" / "skipped.tsv").read_text().splitlines()
    assert report == ["input\treason", "item 3\tcannot read it: broken", "item 10\tcannot read it: broken"]
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == [
        "ids-00000.json", "ids-00001.json", "ids-00002.json", "manifest.json", "skipped.tsv",
        "vectors-00000.npy", "vectors-00001.npy", "vectors-00002.npy"]  # no temporary file left


def brute_force(vectors, queries, k):
    """Top-k by cosine, highest first, lower row first on a tie: sorting every row."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ v.T.astype(np.float64)  # [Q, N]
    rows = np.array([sorted(range(len(v)), key=lambda r: (-s[r], r))[:k] for s in scores])
    return np.take_along_axis(scores, rows, 1), rows


@pytest.mark.parametrize("k", [1, 5, 8, 30])
def test_search_equals_brute_force_over_all_rows(tmp_path, k):
    rng = np.random.default_rng(k)
    vectors = rng.normal(size=(27, DIM)).astype(np.float32) * rng.uniform(0.5, 3, (27, 1)).astype(np.float32)
    index = write(tmp_path / "i", vectors)
    queries = rng.normal(size=(4, DIM)).astype(np.float32)
    hits = index.search(queries, k)
    scores, rows = brute_force(vectors, queries, k)
    assert hits.rows.tolist() == rows.tolist()  # cosine: the rows' lengths do not matter
    np.testing.assert_allclose(hits.scores, scores, atol=1e-6)  # float32 dot products vs float64
    assert hits.scores.shape == (4, min(k, 27)) and hits.ids[0] == [f"item {r}" for r in rows[0]]


def test_search_finds_the_planted_rows(tmp_path):
    """Each query points along one axis; the rows planted near that axis, in three shards, come first."""
    rng = np.random.default_rng(1)
    vectors = rng.normal(0, 0.05, (24, DIM)).astype(np.float32) + 0.3
    planted = {2: 0, 11: 0, 20: 3}  # row: axis
    for row, axis in planted.items():
        vectors[row, axis] += 10
    vectors[20, 3] += 5  # the most aligned of all
    index = write(tmp_path / "i", vectors)
    hits = index.search(np.eye(DIM, dtype=np.float32)[[0, 3]] * 7, k=2)
    assert sorted(hits.rows[0].tolist()) == [2, 11] and hits.rows[1, 0] == 20
    assert hits.ids[1][0] == "item 20" and hits.scores[1, 0] > 0.99
    same = write(tmp_path / "ties", np.ones((10, DIM), np.float32))
    assert same.search(np.ones(DIM), k=3).rows.tolist() == [[0, 1, 2]]  # equal scores: row order


def test_resume_from_another_folder_says_where_the_index_was_made(tmp_path):
    """Relative input paths are kept as given, so from another folder the same command names other
    inputs; the refusal should say so, not leave the user to guess."""
    IndexWriter(tmp_path / "i", header(base_dir="/home/me/photos"))
    moved = header(base_dir="/home/me", inputs={"count": 20, "sha256": "t"})
    with pytest.raises(IndexFormatError, match=r"other names or another order\); relative paths are read from the "
                                               r"folder a run starts in: the index was made in /home/me/photos, "
                                               r"this run is in /home/me\."):
        IndexWriter(tmp_path / "i", moved, resume=True)


def test_equal_scores_keep_row_order_within_a_shard(tmp_path):
    """A collection of copies (the same photo twice gives the same vector): ties at the k-th score
    must go to the lowest rows, as a full sort would, whatever the shard size."""
    rng = np.random.default_rng(2)
    distinct = rng.normal(size=(3, DIM)).astype(np.float32)
    vectors = distinct[rng.integers(0, 3, 100)]  # [100, C]: each row a copy of one of three vectors
    queries = np.concatenate([distinct, rng.normal(size=(2, DIM)).astype(np.float32)])
    index = write(tmp_path / "i", vectors, shard_size=64, batch_size=4)
    for k in (1, 5, 20, 40, 100):
        scores, rows = brute_force(vectors, queries, k)
        assert index.search(queries, k).rows.tolist() == rows.tolist(), f"k = {k}"


def test_search_refuses_a_wrong_query(tmp_path):
    index = write(tmp_path / "i", np.ones((4, DIM), np.float32))
    with pytest.raises(ValueError, match=r"query vectors must be \[C\] or \[Q, C\] with C = 8 \(the index's "
                                         r"dimension\), got shape \(2, 5\)"):
        index.search(np.ones((2, 5)), 3)
    with pytest.raises(ValueError, match="a query vector is zero"):
        index.search(np.zeros(DIM), 3)
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        index.search(np.ones(DIM), 0)


def test_open_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none'} is not a minibridge index"):
        Index.open(tmp_path / "none")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"name": "a web app"}')
    with pytest.raises(IndexFormatError, match='is not a minibridge index manifest'):
        Index.open(tmp_path / "other")
    write(tmp_path / "i", np.ones((12, DIM), np.float32))
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    (tmp_path / "edited").mkdir()
    (tmp_path / "edited" / "manifest.json").write_text(json.dumps({**manifest, "shards": None, "dim": None}))
    with pytest.raises(IndexFormatError, match=r"edited/manifest.json: expected \"dim\" as an integer, \"shards\" "
                                               r"as a list; found null, null"):
        Index.open(tmp_path / "edited")
    np.save(tmp_path / "i" / "vectors-00001.npy", np.ones((3, DIM), np.float32))  # shortened by hand
    with pytest.raises(IndexFormatError, match=r"vectors-00001.npy: expected \[4, 8\] float32 as the manifest "
                                               r"says, found \[3, 8\] float32"):
        Index.open(tmp_path / "i")
    (tmp_path / "i" / "vectors-00001.npy").unlink()
    with pytest.raises(IndexFormatError, match="vectors-00001.npy is missing; the manifest lists it"):
        Index.open(tmp_path / "i")


def test_a_new_index_refuses_a_folder_in_use(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="photos exists and is not empty; choose a new folder"):
        IndexWriter(tmp_path / "photos", header())
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["a.jpg"]


def test_resume_keeps_the_listed_shards_and_refuses_another_run(tmp_path):
    folder = tmp_path / "i"
    writer = IndexWriter(folder, header())
    writer.add(np.ones((8, DIM), np.float32), [f"item {p}" for p in range(8)], list(range(8)))  # shard 0
    writer.skip(8, "item 8", "bad")
    more = list(range(9, 13))
    writer.add(np.ones((4, DIM), np.float32), [f"item {p}" for p in more], more)  # not a whole shard yet
    (folder / "vectors-00001.npy.partial").write_bytes(b"half")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs_done"] == 8 and manifest["skipped"] == []  # the skip is after the shard

    with pytest.raises(IndexFormatError,
                       match=r"cannot resume .*: it was made with dim = 8, and this run has dim = 16"):
        IndexWriter(folder, header(dim=16), resume=True)
    with pytest.raises(IndexFormatError, match="made from 20 inputs and this run names 20 \\(the same number, but "
                                               "other names or another order\\)"):
        IndexWriter(folder, header(inputs={"count": 20, "sha256": "t"}), resume=True)
    again = IndexWriter(folder, header(), resume=True)
    assert again.inputs_done == 8 and not (folder / "vectors-00001.npy.partial").exists()


def test_reading_rows_copies_only_the_rows_asked_for(tmp_path):
    """Slices, lists and masks read like NumPy's, each read a new in-memory array, and memory holds
    the rows read, not one entry per row of the index."""
    import tracemalloc

    vectors = np.random.default_rng(3).normal(size=(18, DIM)).astype(np.float32)
    index = write(tmp_path / "i", vectors)  # shards of 8, 8 and 2 rows
    mask = np.arange(18) % 3 == 0
    for key in [5, -1, slice(None), slice(5, 12), slice(-5, None), slice(12, 5), slice(None, None, 3),
                slice(16, 2, -4), [17, 0, -1], [], mask, (slice(2, 11), 1), (slice(None),), ([[1, 9], [16, 0]], 3)]:
        got = index.vectors[key]
        np.testing.assert_array_equal(got, vectors[key], err_msg=f"vectors[{key!r}]")
        assert type(got) is np.ndarray and got.dtype == np.float32 and got.flags.writeable, key
    with pytest.raises(IndexError, match="row -19 is out of range for an index of 18 rows"):
        index.vectors[[0, -19]]
    with pytest.raises(IndexError, match=r"a boolean mask of the rows needs 18 entries, got 4"):
        index.vectors[mask[:4]]
    with pytest.raises(ValueError, match="the rows are in 3 shard files: reading them as one array copies them"):
        np.asarray(index.vectors, copy=False)
    assert np.asarray(index.vectors, dtype=np.float64).dtype == np.float64

    # 10 million rows of 8 floats (320 MB if they were real) that take no memory: broadcast views
    huge = ShardedVectors([np.broadcast_to(np.float32(s), (10 ** 6, DIM)) for s in range(10)], 10 ** 6, DIM)
    tracemalloc.start()
    try:
        few = huge[4_999_998:5_000_002]  # across the boundary of shards 4 and 5
        many = huge[:30_000]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert few[:, 0].tolist() == [4, 4, 5, 5] and many.shape == (30_000, DIM)
    assert peak < 2 * many.nbytes, f"{peak / 1e6:.1f} MB traced to read {many.nbytes / 1e6:.1f} MB of rows"


def test_sharded_vectors_of_no_rows():
    empty = ShardedVectors([], 8, DIM)
    assert np.asarray(empty).shape == (0, DIM) and empty[[]].shape == (0, DIM)
