"""The embedding job on Ray Data: a pool of actors, each holding one loaded model, writes the same index.

    pip install "minibridge[scale]"        # ray[data]
    minibridge embed --model M --image photos/ --out photos.index --ray --actors 4
    minibridge embed --model M --image photos/ --out photos.index --ray --address ray://head:10001
    report = embed_on_ray(["photos/"], "image", model=M, out="photos.index", actors=4)

This process (the driver) lists the inputs, hands them to Ray Data in order, and writes the shards
and the manifest itself with index.IndexWriter, as embedding.embed_collection does; each actor
loads the checkpoint once (its weights memory-mapped, so actors on one machine share the pages),
then reads and embeds the batches it is given. Without an address, a local Ray is started for the
run and stopped after it; with one, the job runs on that cluster, whose workers must see the inputs
and the checkpoint at the same paths (a shared filesystem, or URLs and a Hub id).

subtle: an actor gets batch_size *inputs*, and an unreadable one drops out of its batch there, while
the single-process job fills every batch with batch_size *readable* inputs. Where a bad input shifts
the batches, a row has other neighbours in its matrix products, which can change float32 sums in the
last bit: the vectors then equal the single-process run's within 1e-6, not to the bit.
"""

import logging
import time

import numpy as np

from .embedding import EmbedReport, Embedder, ExtraNeeded, Progress, collect_inputs, describe, shard_sizes
from .index import IndexWriter


class EmbedActor:
    """One Ray actor: a model loaded once, then batches {"position", "input"} → {"position", "ok",
    "reason", "vector" [b, C]} (a zero vector where ok is False; reason says why)."""

    def __init__(self, model, kind, revision=None, truncation=False, max_length=None):
        self.embedder = Embedder(model, kind, revision, truncation, max_length)

    def __call__(self, batch):
        loaded, ok, reasons = [], [], []
        for x in batch["input"]:
            try:
                loaded.append(self.embedder.load(str(x)))
                ok.append(True), reasons.append("")
            except (OSError, ValueError) as e:  # as embedding.batches: skipped, with the reason
                ok.append(False), reasons.append(" ".join(str(e).split()))
        ok = np.array(ok, dtype=bool)
        vectors = np.zeros((len(ok), self.embedder.dim), dtype=np.float32)  # [b, C]
        if loaded:
            vectors[ok] = self.embedder.embed(loaded)
        return {"position": batch["position"], "ok": ok, "reason": np.array(reasons, dtype=object), "vector": vectors}


def embed_on_ray(inputs, kind, model, out, batch_size=None, shard_size=None, resume=False, revision=None,
                 truncation=False, max_length=None, column=None, progress=True, address=None, actors=2):
    """embedding.embed_collection on Ray Data: the same arguments and index, plus address (a Ray
    cluster; None starts a local one, or uses the Ray this process has already started) and
    actors (how many model-holding actors). Returns an EmbedReport."""
    ray = _import_ray()
    start_time = time.monotonic()
    items, notes = collect_inputs(inputs, kind, column)
    embedder = Embedder(model, kind, revision, truncation, max_length)  # checks the checkpoint before Ray starts
    batch_size, shard_size = shard_sizes(out, resume, batch_size, shard_size)
    writer = IndexWriter(out, describe(embedder, model, revision, items, batch_size, shard_size), resume=resume)
    start = writer.inputs_done
    if start < len(items):
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, logging_level="warning", log_to_driver=False)
        context, log = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
        saved = context.execution_options.preserve_order, context.enable_progress_bars, log.level
        log.setLevel(logging.ERROR)  # not Ray Data's notes on each stage: our progress bar says how far it is
        context.execution_options.preserve_order = True  # rows come back in input order: the shards' order
        context.enable_progress_bars = False  # ours below counts the same inputs
        try:
            rows = ray.data.from_items([{"position": p, "input": items[p]} for p in range(start, len(items))])
            embedded = rows.map_batches(EmbedActor, batch_size=batch_size, batch_format="numpy",
                                        compute=ray.data.ActorPoolStrategy(size=actors),
                                        fn_constructor_kwargs=dict(model=model, kind=kind, revision=revision,
                                                                   truncation=truncation, max_length=max_length))
            with Progress(len(items), start, f"{kind}s", enabled=progress) as bar:
                for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                    _write(writer, items, batch)
                    bar.update(len(batch["ok"]))
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars, level = saved
            log.setLevel(level)
            if started:
                ray.shutdown()
    writer.finish(len(items))
    return EmbedReport.of(writer, len(items), start, start_time, notes)


def _write(writer, items, batch):
    """One batch of EmbedActor's output into the index: its rows, and its skipped inputs."""
    ok, positions = batch["ok"], batch["position"].tolist()
    for p, good, reason in zip(positions, ok.tolist(), batch["reason"].tolist()):
        if not good:
            writer.skip(p, items[p], reason)
    kept = [p for p, good in zip(positions, ok.tolist()) if good]
    if kept:
        writer.add(batch["vector"][ok], [items[p] for p in kept], kept)


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ExtraNeeded('--ray needs Ray Data, which is not installed: pip install "minibridge[scale]" '
                          '(or pip install "ray[data]")') from None
    return ray
