"""Saving (BridgeTowerModel.state_dict / save_pretrained, weights.write_checkpoint): the names are the ones
transformers saves, transformers loads what minibridge saved and computes the same outputs, minibridge
reloads it bit for bit, and nothing but a checkpoint is ever overwritten or left half written."""

import json

import numpy as np
import pytest

import minibridge as mb
from helpers import HEAD_CLASSES, compare, run_mine
from minibridge.config import TINY, derived
from minibridge.weights import WeightsError, random_weights, save_random_checkpoint, to_flat, to_tree

HEADS = ["itm", "mlm", "itc"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint of random weights holding every head, as a multi-head Hub checkpoint does."""
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY, seed=5)


def set_weight(model, name, value):
    """Replace one weight, named as state_dict names it, in the model's tree."""
    *path, last = model.parameter_names()[name].split(".")
    node = model.params
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[last] = value


def changed_model(head, checkpoint):
    """The head's model with a few weights changed: its head, a cross-modal layer, the embeddings."""
    model = HEAD_CLASSES[head].from_pretrained(checkpoint)
    weights = model.state_dict()
    names = [next(n for n in weights if not n.startswith("bridgetower.")),  # the head's first tensor
             "bridgetower.cross_modal_text_layers.1.crossattention.self.query.weight",
             "bridgetower.text_model.embeddings.word_embeddings.weight"]
    if head == "itc":
        names.append("logit_scale")  # the 0-d one
    rng = np.random.default_rng(6)
    for name in names:
        set_weight(model, name, weights[name] + np.float32(0.05) * rng.standard_normal(weights[name].shape, np.float32))
    return model, names


def labels_for(head, inputs):
    if head == "itm":
        return np.array([1, 0, 1])
    if head == "mlm":
        labels = inputs["input_ids"].copy()
        labels[:, ::2] = -100
        labels[inputs["attention_mask"] == 0] = -100
        return labels
    return None


@pytest.mark.parametrize("head", ["model", *HEADS, "mlm-tied"])
def test_state_dict_names_are_the_ones_transformers_saves(head, tmp_path):
    pytest.importorskip("transformers", reason="the comparison needs the reference extra")
    import reference as ref

    config = derived(TINY, tie_word_embeddings=True) if head == "mlm-tied" else TINY
    head = head.removesuffix("-tied")
    folder = save_random_checkpoint(tmp_path, config, heads=[h for h in HEADS if h == head] or ["itm"])
    mine = {n: tuple(a.shape) for n, a in HEAD_CLASSES[head].from_pretrained(folder).state_dict().items()}
    theirs = {n: tuple(t.shape) for n, t in ref.build(config, [head], seed=0)[head].state_dict().items()}
    left_out = {n for n in theirs if ".text_model.pooler." in f".{n}"}  # built, never used (bridgetower.md §3)
    if config.get("tie_word_embeddings") and head == "mlm":
        left_out.add("mlm_score.decoder.weight")  # the word-embedding matrix; transformers does not save it twice
    assert mine == {n: s for n, s in theirs.items() if n not in left_out}


def test_parameter_names_map_the_tree_both_ways(checkpoint):
    for head in ["model", *HEADS]:
        model = HEAD_CLASSES[head].from_pretrained(checkpoint)
        names = model.parameter_names()  # {name as saved: key in the tree}
        flat = to_flat(model.params)
        assert len(set(names.values())) == len(names)
        assert all(model.state_dict()[name] is flat[key] for name, key in names.items())
        assert all(model.checkpoint_name(key) == name for name, key in names.items())
        assert to_flat(to_tree(flat)).keys() == flat.keys()


@pytest.mark.parametrize("head", HEADS)
def test_a_saved_model_loads_in_transformers_with_the_same_outputs(head, checkpoint, tmp_path):
    pytest.importorskip("transformers", reason="the comparison needs the reference extra (torch, transformers)")
    import reference as ref

    model, changed = changed_model(head, checkpoint)
    model.save_pretrained(tmp_path)
    theirs, info = ref.HEAD_CLASSES[head].from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert set(info["missing_keys"]) == {f"bridgetower.text_model.pooler.dense.{w}" for w in ("weight", "bias")}, info
    # (the RoBERTa pooler, which BridgeTower builds and never uses: transformers fills it with noise)
    saved = {n: t.detach().numpy() for n, t in theirs.state_dict().items()}
    assert all(np.array_equal(saved[n], model.state_dict()[n]) for n in changed)

    inputs = ref.make_inputs(TINY, lengths=[5, 9, 3], seed=7)
    labels = labels_for(head, inputs)
    expected = ref.run({head: theirs.eval()}, inputs, head, labels=labels, return_loss=head == "itc")
    errors = compare(run_mine(model, head, inputs, labels, keep=True), expected, f"saved {head}")
    print(head, info["missing_keys"], f"logits {errors['logits']:.2g}, worst {max(errors.values()):.2g} of {len(errors)} outputs")
    assert "logits" in errors and "loss" in errors


@pytest.mark.parametrize("head", ["model", *HEADS])
def test_minibridge_reloads_what_it_saved_bit_for_bit(head, checkpoint, tmp_path):
    model, _ = changed_model(head, checkpoint) if head != "model" else (HEAD_CLASSES[head].from_pretrained(checkpoint), [])
    model.save_pretrained(tmp_path)
    reloaded = HEAD_CLASSES[head].from_pretrained(tmp_path).state_dict()
    mine = model.state_dict()
    assert reloaded.keys() == mine.keys()
    for name, a in mine.items():
        assert reloaded[name].dtype == np.float32 and reloaded[name].shape == a.shape
        assert np.array_equal(reloaded[name], a), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    (tmp_path / "ordinary").write_text("a file made the ordinary way, for comparison")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == modes["ordinary"], modes  # not safetensors' 0o600


def test_config_json_keeps_every_field_of_the_loaded_one(checkpoint, tmp_path):
    source = json.loads((checkpoint / "config.json").read_text())
    mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["BridgeTowerForImageAndTextRetrieval"]
    assert saved["model_type"] == "bridgetower" and saved["dtype"] == "float32"
    for key, value in source.items():
        if key in ("text_config", "vision_config"):
            assert value.items() <= saved[key].items(), key
        elif key != "architectures":
            assert saved[key] == value, key
    assert mb.BridgeTowerConfig.from_dict(saved) == mb.BridgeTowerConfig.from_dict(
        {**source, "architectures": ["BridgeTowerForImageAndTextRetrieval"]})


def test_a_model_made_in_memory_saves_its_config(tmp_path):
    config = mb.BridgeTowerConfig.from_dict(derived(TINY, link_tower_type="scaled_add"))
    model = mb.BridgeTowerForImageAndTextRetrieval(config, to_tree(random_weights(config, ["itm"], seed=8)))
    model.save_pretrained(tmp_path / "new" / "folder")
    reloaded = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "new" / "folder")
    assert reloaded.config == config.__class__.from_dict({**config.to_dict(),
                                                          "architectures": ["BridgeTowerForImageAndTextRetrieval"]})


def test_saving_over_the_folder_it_was_loaded_from(tmp_path):
    """The model's arrays are views of the file that the save replaces: the rename keeps the old data mapped."""
    folder = save_random_checkpoint(tmp_path, TINY, heads=["itm"], seed=9)
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(3, 50, (2, 6)), "pixel_values": rng.standard_normal((2, 3, 12, 12), np.float32)}
    set_weight(model, "itm_score.fc.bias", np.array([0.5, -0.5], np.float32))
    logits = model(**inputs).logits
    model.save_pretrained(folder)
    assert np.array_equal(model(**inputs).logits, logits)  # the model still reads the weights it had
    reloaded = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    assert all(np.array_equal(reloaded.state_dict()[n], a) for n, a in model.state_dict().items())
    assert np.array_equal(reloaded(**inputs).logits, logits)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]


@pytest.mark.parametrize("what", ["other files", "another model", "a file"])
def test_a_folder_that_is_not_a_checkpoint_is_refused(what, checkpoint, tmp_path):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    target = tmp_path / "target"
    if what == "a file":
        target.write_text("notes")
        message = f"{target} is a file; expected a folder"
    else:
        target.mkdir()
        (target / "notes.txt").write_text("my notes")
        message = f"{target} holds 1 file.*notes.txt.* and no config.json; expected an empty folder or a checkpoint"
        if what == "another model":
            (target / "config.json").write_text(json.dumps({"model_type": "bert"}))
            message = f"{target / 'config.json'} is the config of another model \\(model_type 'bert'\\), expected \"bridgetower\""
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(FileExistsError, match=message):
        model.save_pretrained(target)
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()) == before


def test_a_failure_while_writing_leaves_the_folder_as_it_was(checkpoint, tmp_path, monkeypatch):
    import safetensors.numpy

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device", filename)

    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path / "old")
    before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    for target in (tmp_path / "old", tmp_path / "new"):
        with pytest.raises(OSError, match="No space left on device"):
            model.save_pretrained(target)
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
    assert not (tmp_path / "new").exists()


def test_non_finite_weights_are_refused_by_name_before_writing(checkpoint, tmp_path):
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    set_weight(model, "itm_score.fc.bias", np.array([np.nan, 1.0], np.float32))
    with pytest.raises(WeightsError, match=f"the weights to save in {tmp_path / 'out'}: 1 parameter.* NaN or infinite "
                                           r"values: itm_score.fc.bias: 1 of 2 values \(first at \(0,\)"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def shard(folder, names=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")):
    """Turn a checkpoint's model.safetensors into shards + model.safetensors.index.json, as transformers
    saves a large model."""
    from minibridge.weights import read_safetensors, write_safetensors

    tensors = {k: np.array(v) for k, v in read_safetensors(folder / "model.safetensors").items()}
    keys = sorted(tensors)
    weight_map = {k: names[i * len(names) // len(keys)] for i, k in enumerate(keys)}
    for name in names:
        write_safetensors(folder / name, {k: tensors[k] for k in keys if weight_map[k] == name})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "model.safetensors").unlink()


def test_saving_over_a_sharded_checkpoint_removes_its_shards(tmp_path):
    """The old shards and their index would be a second model in the folder: they go once the new file is
    in place, and the model loaded from them (memory-mapped) keeps working."""
    folder = save_random_checkpoint(tmp_path, TINY, heads=["itm"], seed=10)
    shard(folder)
    (folder / "README.md").write_text("a model card")
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)  # read from the shards
    rng = np.random.default_rng(1)
    inputs = {"input_ids": rng.integers(3, 50, (2, 6)), "pixel_values": rng.standard_normal((2, 3, 12, 12), np.float32)}
    set_weight(model, "itm_score.fc.bias", np.array([0.5, -0.5], np.float32))
    logits = model(**inputs).logits
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                        "preprocessor_config.json"]
    assert np.array_equal(model(**inputs).logits, logits)  # its arrays still map the removed shards
    assert np.array_equal(mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)(**inputs).logits, logits)


def test_saving_over_a_checkpoint_removes_its_pytorch_model_bin(checkpoint, tmp_path):
    """transformers reads pytorch_model.bin (or its sharded index) with use_safetensors=False: old weights."""
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    target = tmp_path / "target"
    model.save_pretrained(target)
    for name in ("pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"):
        (target / name).write_bytes(b"old weights")
    (target / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {
        "a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}))
    (target / "vocab.json").write_text("{}")
    model.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]


def test_an_index_naming_other_files_removes_only_weight_files(checkpoint, tmp_path):
    """An index's weight_map can name anything: only .bin / .safetensors files go, never the new
    model.safetensors, never a file outside the folder (read_index refuses such a name)."""
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    target = tmp_path / "target"
    model.save_pretrained(target)
    (target / "notes.txt").write_text("mine")
    (target / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model.safetensors", "b": "config.json", "c": "notes.txt", "d": "old.safetensors"}}))
    (target / "old.safetensors").write_bytes(b"old")
    (tmp_path / "outside.bin").write_bytes(b"not the checkpoint's")
    (target / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"a": "../outside.bin"}}))
    model.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert (tmp_path / "outside.bin").read_bytes() == b"not the checkpoint's"
    reloaded = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(target).state_dict()
    assert all(np.array_equal(reloaded[n], a) for n, a in model.state_dict().items())


def test_an_old_weight_file_that_cannot_be_removed_is_named(checkpoint, tmp_path, monkeypatch):
    """(Windows cannot remove a file another process maps.) The new checkpoint is written; the error says
    which old file is left and why it matters."""
    from pathlib import Path

    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"old weights")
    real_unlink = Path.unlink

    def locked(path, missing_ok=False):
        if path.name == "pytorch_model.bin":
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", locked)
    with pytest.raises(OSError, match=f"saved {tmp_path / 'model.safetensors'}, but could not remove the old "
                                      r"pytorch_model.bin beside it \(Permission denied\); delete it, or a loader may "
                                      "read the old weights"):
        model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "pytorch_model.bin"]
