"""minibridge.scale: `minibridge embed --ray` writes the index the single-process job writes.

Ray is an optional extra (pip install "minibridge[scale]"): without it these tests skip, but for the
one that checks the error saying to install it. One local Ray (2 CPUs) serves the whole module,
since starting Ray takes seconds.
"""

import sys

import numpy as np
import pytest

from minibridge.embedding import ExtraNeeded, embed_collection
from minibridge.index import Index

from embed_helpers import add_bad_files, make_checkpoint, make_photos
from paths import ROBERTA

# An actor's batch is batch_size inputs, the single-process job's batch_size readable inputs: past a
# skipped file the batches differ, and float32 sums over another batch may differ in the last bit.
RAY_TOL = 1e-6


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray", reason='needs Ray Data: pip install "minibridge[scale]"')
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _compare(single, on_ray):
    a, b = Index.open(single), Index.open(on_ray)
    assert a.ids == b.ids and a.skipped == b.skipped and a.complete and b.complete
    assert [s["rows"] for s in a.manifest["shards"]] == [s["rows"] for s in b.manifest["shards"]]
    identity = ("kind", "model", "config_sha256", "preprocessing", "dim", "batch_size", "shard_size", "inputs")
    assert {k: a.manifest[k] for k in identity} == {k: b.manifest[k] for k in identity}
    va, vb = np.asarray(a.vectors), np.asarray(b.vectors)
    worst = float(np.abs(va - vb).max())
    print(f"ray vs single process: max |difference| {worst:.3g}, bit-equal: {np.array_equal(va, vb)}")
    assert worst <= RAY_TOL, f"max |ray - single| = {worst:.3g} > {RAY_TOL}"


def test_ray_index_equals_the_single_process_index(ray, checkpoint, tmp_path):
    from minibridge.scale import embed_on_ray

    make_photos(tmp_path / "photos", 60)
    add_bad_files(tmp_path / "photos")  # 63 inputs: the bad ones fall mid-batch
    options = dict(kind="image", model=checkpoint, batch_size=8, shard_size=16, progress=False)
    single = embed_collection([tmp_path / "photos"], out=tmp_path / "single", **options)
    on_ray = embed_on_ray([tmp_path / "photos"], out=tmp_path / "ray", actors=2, **options)
    assert (on_ray.rows, len(on_ray.skipped)) == (single.rows, len(single.skipped)) == (60, 3)
    _compare(tmp_path / "single", tmp_path / "ray")


def test_ray_texts(ray, checkpoint, tmp_path):
    if not (ROBERTA / "vocab.json").is_file():
        pytest.skip(f"needs the real tokenizer files in {ROBERTA}")
    from minibridge.scale import embed_on_ray

    texts = [f"caption {i}: " + "a cat " * (i % 7) for i in range(30)] + [" ".join(["long"] * 600)]
    options = dict(kind="text", model=checkpoint, batch_size=4, shard_size=8, progress=False)
    embed_collection(texts, out=tmp_path / "single", **options)
    report = embed_on_ray(texts, out=tmp_path / "ray", actors=2, **options)
    assert report.rows == 30 and "602 tokens long" in report.skipped[0][1]
    _compare(tmp_path / "single", tmp_path / "ray")


def test_without_ray_the_error_says_what_to_install(checkpoint, tmp_path, monkeypatch):
    from minibridge.scale import embed_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ExtraNeeded, match=r'--ray needs Ray Data, which is not installed: pip install '
                                          r'"minibridge\[scale\]"'):
        embed_on_ray(["x.jpg"], "image", model=checkpoint, out=tmp_path / "i")
    assert not (tmp_path / "i").exists()
