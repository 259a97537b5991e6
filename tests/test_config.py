"""config.json -> frozen dataclasses; flags the reference cannot run are refused by name."""

import dataclasses
import json

import pytest

import minibridge as mb
from minibridge import BridgeTowerConfig, ConfigError
from minibridge.config import TINY, derived
from minibridge.weights import save_random_checkpoint

from helpers import FIXTURES, HEAD_CLASSES, compare, run_mine


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


# ------------------------------------------------------------------ hostile config.json (issue 11)
def write(folder, content):
    """config.json in folder holding `content` (bytes as they are, anything else as JSON)."""
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


@pytest.mark.parametrize("content, message", [
    (b'{"hidden_size": 768, "name": "caf\xe9"}', "is not UTF-8 text, so not a config.json"),  # Latin-1, not UTF-8
    (b"{not json", "is not valid JSON"),
    ([1, 2], "should hold a JSON object, found list"),
    ({}, r'is not a BridgeTower config: expected "model_type": "bridgetower" or text_config / vision_config, '
         "found an empty object"),
    ({"hidden_size": 768, "n_layer": 12}, r"is not a BridgeTower config: .*found only the keys \['hidden_size', 'n_layer'\]"),
    ({"model_type": "clip", "text_config": {}}, r"model_type='clip': this is the config of another model; "
                                                 'expected "bridgetower"'),
    ({"model_type": "bridgetower", "text_config": "roberta-base"},
     "config field text_config should be an object of the tower's fields, found 'roberta-base'"),
    ({"model_type": "bridgetower", "vision_config": [1, 2]},
     r"config field vision_config should be an object of the tower's fields, found \[1, 2\]"),
    ({"model_type": "bridgetower", "layer_norm_eps": -1e-5}, r"invalid config: layer_norm_eps=-1e-05\. .*NaN"),
])
def test_bad_config_files_name_the_file(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as e:
        BridgeTowerConfig.from_json_file(path)
    assert str(path) in str(e.value)


def test_the_configs_the_project_writes_still_load(tmp_path):
    folders = sorted(p for p in FIXTURES.iterdir() if (p / "config.json").is_file())
    assert folders and all(BridgeTowerConfig.from_json_file(f / "config.json").depth >= 1 for f in folders)
    save_random_checkpoint(tmp_path / "random", TINY, heads=["itm"])
    assert BridgeTowerConfig.from_json_file(tmp_path / "random" / "config.json").hidden_size == 128
    # {"model_type": "bridgetower"} alone is the base architecture, as transformers reads it
    assert BridgeTowerConfig.from_json_file(write(tmp_path, {"model_type": "bridgetower"})).depth == 12


@pytest.mark.parametrize("changes, message", [
    ({"layer_norm_eps": -1e-5}, r"layer_norm_eps=-1e-05\. LayerNorm's eps must be small and positive"),
    ({"layer_norm_eps": 0}, r"layer_norm_eps=0.0\. "),
    ({"text_config": {"layer_norm_eps": 1.0}}, r"text_config.layer_norm_eps=1.0\. .*no longer normalises"),
    ({"vision_config": {"layer_norm_eps": float("nan")}}, r"vision_config.layer_norm_eps=nan\. "),
    ({"vision_config": {"layer_norm_eps": float("inf")}}, r"vision_config.layer_norm_eps=inf\. "),
    ({"layer_norm_eps": True}, r"config field layer_norm_eps should be a number, found True"),
    ({"text_config": {"layer_norm_eps": "1e-5"}}, r"config field text_config.layer_norm_eps should be a number"),
    ({"logit_scale_init_value": float("inf")}, r"logit_scale_init_value=inf\. Expected a finite number"),
    ({"vision_config": {"num_channels": 1}}, r"vision_config.num_channels=1\. The image processor .* always makes RGB"),
    ({"text_config": {"pad_token_id": 50}}, r"text_config.pad_token_id=50\. A token id must be in the vocabulary: 0 … 49"),
    ({"text_config": {"bos_token_id": -1}}, r"text_config.bos_token_id=-1\. A token id must be in the vocabulary"),
    ({"text_config": {"eos_token_id": 99}}, r"text_config.eos_token_id=99\. "),
    ({"text_config": {"max_position_embeddings": 2}}, r"text_config.max_position_embeddings=2\. .* at least 3 rows"),
    ({"contrastive_hidden_size": 0}, r"contrastive_hidden_size=0\. Every size must be at least 1"),
    ({"text_config": {"intermediate_size": 0}}, r"text_config.intermediate_size=0\. Every size must be at least 1"),
    ({"vision_config": {"image_size": -12}}, r"vision_config.image_size=-12\. Every size must be at least 1"),
    ({"text_config": {"vocab_size": 2.5}}, r"config field text_config.vocab_size should be an integer, found 2.5"),
    ({"architectures": 7}, r"config field architectures should be a list of class names, found 7"),
])
def test_numeric_fields_are_range_checked_by_name(tmp_path, changes, message):
    config = derived(TINY, **changes)
    with pytest.raises(ConfigError, match=message):
        BridgeTowerConfig.from_dict(config)
    path = write(tmp_path, dict(config, model_type="bridgetower"))  # NaN and Infinity as Python's json writes them
    with pytest.raises(ConfigError, match=message) as e:
        BridgeTowerConfig.from_json_file(path)
    assert str(path) in str(e.value)


def test_a_negative_eps_is_refused_before_any_score(tmp_path):
    """Before issue 11 a negative layer_norm_eps loaded, and every score came out NaN (exit status 0)."""
    save_random_checkpoint(tmp_path, TINY, heads=["itm"])
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["layer_norm_eps"] = -1e-5
    write(tmp_path, config)
    with pytest.raises(ConfigError, match=r"config.json: invalid config: text_config.layer_norm_eps=-1e-05"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path)


def test_each_layer_norm_eps_reaches_the_forward_pass(tmp_path):
    """Three different eps, none the 1e-5 default: the cross-modal layers, link towers and MLM head
    read the top one, the text tower text_config's, the vision tower vision_config's. The whole
    forward of every head must match transformers within TOL; ignoring any one eps (or reading it
    from the wrong config) moves the outputs by far more than TOL, so this test then fails."""
    pytest.importorskip("torch", reason="needs the reference extra: pip install -e '.[reference]'")
    pytest.importorskip("transformers", reason="needs the reference extra: pip install -e '.[reference]'")
    import reference as ref

    config = derived(TINY, layer_norm_eps=3e-2, text_config={"layer_norm_eps": 1e-2},
                     vision_config={"layer_norm_eps": 1e-1})
    heads = ["itm", "mlm", "itc"]
    models = ref.build(config, heads, seed=11)  # every parameter random, LayerNorms included
    ref.save_checkpoint(models, tmp_path)
    inputs = ref.make_inputs(config, [9, 6], seed=11)
    for head in heads:
        expected = ref.run(models, inputs, head, return_loss=head == "itc")
        out = run_mine(HEAD_CLASSES[head].from_pretrained(tmp_path), head, inputs, keep=True)
        # helpers.TOL (1e-4): here the worst output differs by < 1e-6; each eps ignored or read from the
        # wrong config moved the ITM logits by 5e-3 to 0.14 when planted (issue 11)
        compare(out, expected, f"three eps/{head}")
