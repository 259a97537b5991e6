"""The loader: memory-mapped, complete, and loud about every missing, unknown or misshapen tensor."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minibridge as mb
from minibridge.weights import WeightsError, expected_shapes, read_checkpoint, read_safetensors, to_tree

from helpers import FIXTURES

TINY = FIXTURES / "tiny"


def write_variant(tmp_path, edit, source=TINY):
    """A copy of a fixture checkpoint with its tensor dict passed through `edit`."""
    shutil.copy(source / "config.json", tmp_path / "config.json")
    tensors = load_file(source / "model.safetensors")
    save_file(edit(dict(tensors)), tmp_path / "model.safetensors")
    return tmp_path


def test_tree_keeps_checkpoint_names():
    tree = to_tree({"a.b.0.c": 1, "a.b.1.c": 2, "a.d": 3})
    assert tree == {"a": {"b": [{"c": 1}, {"c": 2}], "d": 3}}


def test_memory_mapped_read_only_views():
    flat = read_safetensors(TINY / "model.safetensors")
    w = flat["bridgetower.text_model.embeddings.word_embeddings.weight"]
    assert w.dtype == np.float32 and not w.flags.writeable and not w.flags.owndata
    np.testing.assert_array_equal(w, load_file(TINY / "model.safetensors")[
        "bridgetower.text_model.embeddings.word_embeddings.weight"])


def test_prefixed_and_unprefixed_checkpoints_load():
    prefixed = mb.BridgeTowerModel.from_pretrained(TINY)
    bare = mb.BridgeTowerModel.from_pretrained(FIXTURES / "tiny-interpolate-bare")
    for m in (prefixed, bare):
        assert set(m.params) >= {"text_model", "vision_model", "cross_modal_text_layers", "token_type_embeddings"}
        assert "bridgetower" not in m.params
    # bare has separate vision LayerNorms (share_layernorm=False): loaded, unused
    assert len(bare.params["vision_model"]["visual"]["ln_separate"]) == bare.config.depth


def test_each_head_adds_its_own_keys():
    cfg = mb.BridgeTowerConfig.from_json_file(TINY / "config.json")
    n_model = len(expected_shapes(cfg, "model"))
    assert len(expected_shapes(cfg, "itm")) == n_model + 2
    assert len(expected_shapes(cfg, "mlm")) == n_model + 6
    assert len(expected_shapes(cfg, "itc")) == n_model + 7


def test_base_key_inventory_matches_spec():
    # bridgetower.md §7.4: BridgeTowerModel has 695 keys and 326,347,008 parameters (base), ITM 697, MLM 701, ITC 702.
    cfg = mb.BridgeTowerConfig.from_dict({"contrastive_hidden_size": 512, "logit_scale_init_value": 2.6592})
    s = expected_shapes(cfg, "model")
    n_params = sum(int(np.prod(v)) for v in s.values())
    # + the unused text pooler (2 keys, 590,592 params), which we allow but do not require
    assert len(s) + 2 == 695 and n_params + 768 * 768 + 768 == 326_347_008
    assert [len(expected_shapes(cfg, h)) + 2 for h in ("itm", "mlm", "itc")] == [697, 701, 702]


def test_missing_key_is_named(tmp_path):
    key = "bridgetower.cross_modal_image_link_tower.0.LayerNorm.bias"
    folder = write_variant(tmp_path, lambda t: {k: v for k, v in t.items() if k != key})
    with pytest.raises(WeightsError, match=r"missing 1 tensor.*cross_modal_image_link_tower\.0\.LayerNorm\.bias \(64,\)"):
        mb.BridgeTowerModel.from_pretrained(folder)


def test_missing_head_key_is_named(tmp_path):
    folder = write_variant(tmp_path, lambda t: {k: v for k, v in t.items() if k != "itm_score.fc.weight"})
    with pytest.raises(WeightsError, match=r"missing 1 tensor.*itm_score\.fc\.weight \(2, 128\)"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)


def test_checkpoint_without_the_head_says_which_class_it_was(tmp_path):
    folder = write_variant(tmp_path, lambda t: {k: v for k, v in t.items() if not k.startswith("itm_score")})
    mb.BridgeTowerForMaskedLM.from_pretrained(folder)  # the other head is still complete
    with pytest.raises(WeightsError, match="holds no BridgeTowerForImageAndTextRetrieval head.*saved as "
                       "BridgeTowerModel, BridgeTowerForImageAndTextRetrieval"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    with pytest.raises(WeightsError, match="holds no BridgeTowerForMaskedLM head.*saved as BridgeTowerModel"):
        mb.BridgeTowerForMaskedLM.from_pretrained(FIXTURES / "tiny-interpolate-bare")


def test_unexpected_key_is_named(tmp_path):
    folder = write_variant(tmp_path, lambda t: {**t, "bridgetower.extra_layer.weight": np.zeros((3, 4), np.float32)})
    with pytest.raises(WeightsError, match=r"does not account for: extra_layer\.weight \(3, 4\)"):
        mb.BridgeTowerModel.from_pretrained(folder)


def test_unknown_key_of_the_loaded_head_is_an_error(tmp_path):
    # A sibling head's keys are allowed (checkpoints hold several heads), but not unknown keys of this head.
    folder = write_variant(tmp_path, lambda t: {**t, "itm_score.fc.extra": np.zeros(2, np.float32)})
    mb.BridgeTowerForMaskedLM.from_pretrained(folder)
    with pytest.raises(WeightsError, match=r"does not account for: itm_score\.fc\.extra \(2,\)"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)


def test_allow_listed_extras_load(tmp_path):
    extras = {"bridgetower.text_model.embeddings.position_ids": np.arange(40)[None],
              "bridgetower.text_model.embeddings.token_type_ids": np.zeros((1, 40), np.int64),
              "bridgetower.text_model.pooler.dense.weight": np.zeros((64, 64), np.float32),
              "bridgetower.text_model.pooler.dense.bias": np.zeros(64, np.float32)}
    folder = write_variant(tmp_path, lambda t: {**t, **extras})
    mb.BridgeTowerModel.from_pretrained(folder)


def test_shape_mismatch_is_named(tmp_path):
    key = "bridgetower.token_type_embeddings.weight"
    folder = write_variant(tmp_path, lambda t: {**t, key: np.zeros((3, 64), np.float32)})
    with pytest.raises(WeightsError, match=r"token_type_embeddings\.weight has shape \(3, 64\), the config implies \(2, 64\)"):
        mb.BridgeTowerModel.from_pretrained(folder)


def test_same_key_with_and_without_prefix(tmp_path):
    key = "token_type_embeddings.weight"
    folder = write_variant(tmp_path, lambda t: {**t, key: t["bridgetower." + key]})
    with pytest.raises(WeightsError, match="both with and without"):
        mb.BridgeTowerModel.from_pretrained(folder)


def test_truncated_file(tmp_path):
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    data = (TINY / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors file.*truncated"):
        mb.BridgeTowerModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 a zip, e.g. pytorch_model.bin", b"\xff" * 64])
def test_not_safetensors(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_safetensors(tmp_path / "model.safetensors")


def test_no_weights_or_no_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        mb.BridgeTowerModel.from_pretrained(tmp_path)
    shutil.copy(TINY / "config.json", tmp_path / "config.json")
    with pytest.raises(WeightsError, match="no model.safetensors"):
        mb.BridgeTowerModel.from_pretrained(tmp_path)


def test_sharded_checkpoint(tmp_path):
    tensors = load_file(TINY / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    flat = read_checkpoint(tmp_path)
    assert sorted(flat) == keys
    for k in keys:
        np.testing.assert_array_equal(flat[k], tensors[k])


def test_half_precision_checkpoints_become_float32(tmp_path):
    # Written by hand, since safetensors.numpy has no bfloat16: header length, JSON header, raw bytes.
    f16 = np.array([1.5, -2.25], np.float16).tobytes()
    bf16 = (np.array([3.0, -0.5], np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    header = json.dumps({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
                         "b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "x.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + f16 + bf16)
    flat = read_safetensors(tmp_path / "x.safetensors")
    np.testing.assert_array_equal(flat["a"], [1.5, -2.25])
    np.testing.assert_array_equal(flat["b"], [3.0, -0.5])
    assert flat["a"].dtype == flat["b"].dtype == np.float32
