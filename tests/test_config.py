"""config.json -> frozen dataclasses; flags the reference cannot run are refused by name."""

import dataclasses
import json

import pytest

from minibridge import BridgeTowerConfig, ConfigError

from helpers import FIXTURES


def test_defaults_are_the_base_checkpoint():
    cfg = BridgeTowerConfig.from_dict({})
    assert cfg.text_config.num_hidden_layers == 12 and cfg.num_hidden_layers == 6
    assert cfg.first_bridged_layer == 6 and cfg.depth == 12
    assert cfg.vision_config.num_positions == 325  # 18×18 patches + CLS (bridgetower.md §1.4)
    assert cfg.vision_config.num_attention_heads == 12
    assert cfg.text_config.max_text_length == 512


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        BridgeTowerConfig.from_dict({}).hidden_size = 3


def test_contrastive_extras_and_large_sizes_are_read():
    cfg = BridgeTowerConfig.from_dict({
        "hidden_size": 1024, "contrastive_hidden_size": 512, "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                        "intermediate_size": 4096},
        "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14, "image_size": 294},
        "drop_rate": 0.1, "max_text_len": 50, "text_config_dict": None,  # inert keys found on the Hub
    })
    assert cfg.contrastive_hidden_size == 512 and cfg.logit_scale_init_value == pytest.approx(2.6592)
    assert cfg.vision_config.num_positions == 442 and cfg.first_bridged_layer == 18
    assert cfg.vision_config.num_attention_heads == 16


def test_reads_what_transformers_wrote():
    cfg = BridgeTowerConfig.from_json_file(FIXTURES / "tiny-scaled-untied-transforms" / "config.json")
    assert cfg.link_tower_type == "scaled_add" and cfg.tie_word_embeddings
    assert not cfg.share_cross_modal_transformer_layers and cfg.num_hidden_layers == 3 and cfg.depth == 4


@pytest.mark.parametrize("overrides, flag", [
    ({"share_link_tower_layers": True}, "share_link_tower_layers"),
    ({"vision_config": {"remove_last_layer": True}}, "remove_last_layer"),
    ({"init_layernorm_from_vision_encoder": True, "vision_config": {"share_layernorm": False}},
     "init_layernorm_from_vision_encoder"),
    ({"vision_config": {"num_hidden_layers": 6}}, "vision_config.num_hidden_layers=6"),
    ({"link_tower_type": "concat"}, "link_tower_type='concat'"),
    ({"num_hidden_layers": 13}, "num_hidden_layers=13"),
    ({"text_config": {"hidden_act": "relu"}}, "text_config.hidden_act='relu'"),
    ({"hidden_size": 512}, "hidden_size=512"),
    ({"vision_config": {"hidden_size": 100}}, "vision_config.hidden_size=100"),
])
def test_unsupported_flags_are_refused_by_name(overrides, flag):
    with pytest.raises(ConfigError, match="unsupported config") as e:
        BridgeTowerConfig.from_dict(overrides)
    assert flag in str(e.value)


def test_init_layernorm_flag_alone_is_fine():
    # It only acts (and crashes the reference) together with share_layernorm=False.
    assert BridgeTowerConfig.from_dict({"init_layernorm_from_vision_encoder": True}).init_layernorm_from_vision_encoder


def test_wrong_types_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="num_hidden_layers should be an integer"):
        BridgeTowerConfig.from_dict({"num_hidden_layers": "6"})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BridgeTowerConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        BridgeTowerConfig.from_json_file(tmp_path / "config.json")
