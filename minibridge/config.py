"""Configuration: config.json of a BridgeTower checkpoint as three frozen dataclasses (bridgetower.md §1).

    cfg = BridgeTowerConfig.from_json_file("weights/bridgetower-base/config.json")
    cfg.text_config.num_hidden_layers   # 12
    cfg.num_hidden_layers               # 6 cross-modal layers

Fields that change the forward pass are kept (and a few noted as inert); the rest of config.json (dropout rates, init
factors, training leftovers such as max_text_len) is read and ignored, as the reference does.
Flags that the reference accepts but cannot run are refused here, by name, rather than crashing
deep inside the forward pass.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that minibridge (and the reference) cannot run."""


# Three architectures as config.json dicts (fields left out take the defaults below).
# BASE and LARGE are the published ones (bridgetower.md §1.4). TINY is the one small model that the
# tests, the parity fixtures, the course assignments and offline notebook runs build on (each
# through `derived`, changing only what its purpose needs): three layers per tower, the top two
# bridged (so one layer runs alone and one bridge per side), 12-pixel images in 4-pixel patches (1 + 9 tokens),
# D = Dv = 128, so that the vision tower has two heads (CLIP heads are 64 wide) and the
# contrastive head runs (it needs Dv = D, bridgetower.md §10.5); every head.
TINY = {
    "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "link_tower_type": "add",
    "share_cross_modal_transformer_layers": True, "layer_norm_eps": 1e-5,
    "contrastive_hidden_size": 16, "logit_scale_init_value": 2.6592,
    "text_config": {"vocab_size": 50, "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
                    "intermediate_size": 64, "max_position_embeddings": 16, "layer_norm_eps": 1e-5,
                    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
    "vision_config": {"hidden_size": 128, "num_hidden_layers": 3, "patch_size": 4, "image_size": 12,
                      "layer_norm_eps": 1e-5},
}
BASE = {"contrastive_hidden_size": 512, "logit_scale_init_value": 2.6592}  # every other field a default
LARGE = {"hidden_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 16,
         "contrastive_hidden_size": 512, "logit_scale_init_value": 2.6592,
         "text_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                         "intermediate_size": 4096},
         "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14, "image_size": 294}}


def derived(config, **changes):
    """A copy of a config dict with some fields changed; text_config / vision_config are merged, not replaced.

        derived(TINY, link_tower_type="scaled_add", text_config={"vocab_size": 50265})
    """
    out = json.loads(json.dumps(config))  # a deep copy
    for key, value in changes.items():
        if key in ("text_config", "vision_config"):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out



# TINY with RoBERTa's real vocabulary and positions, so that the real tokenizer's ids fit it: what
# `minibridge random-checkpoint --size tiny` writes, and what tests run the real tokenizer through.
TINY_REAL_VOCAB = derived(TINY, text_config={"vocab_size": 50265, "max_position_embeddings": 514})

@dataclass(frozen=True)
class BridgeTowerVisionConfig:
    """The CLIP ViT image tower. Heads = hidden_size // 64 and MLP width = 4·hidden_size are fixed."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_channels: int = 3
    patch_size: int = 16
    image_size: int = 288  # sets the position table: (image_size // patch_size)² + 1 rows
    layer_norm_eps: float = 1e-5
    share_layernorm: bool = True  # False adds ln_separate.*, which BridgeTowerModel never uses
    remove_last_layer: bool = False  # True crashes the reference (bridgetower.md §10.3): refused
    stop_gradient: bool = False  # training only; no effect on inference

    @property
    def num_attention_heads(self):
        return self.hidden_size // 64  # hard-coded in the reference: CLIP heads are 64 wide

    @property
    def num_positions(self):
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + CLS


@dataclass(frozen=True)
class BridgeTowerTextConfig:
    """The RoBERTa text tower; its heads and FFN width are also those of the cross-modal layers."""

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514  # ids 2..513: the longest text is 512 tokens
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2

    @property
    def max_text_length(self):
        # subtle: RoBERTa position ids start at pad_token_id + 1 = 2, so two rows are never used.
        return self.max_position_embeddings - self.pad_token_id - 1


@dataclass(frozen=True)
class BridgeTowerConfig:
    """The whole model: the two towers plus the cross-modal stack and heads."""

    text_config: BridgeTowerTextConfig = field(default_factory=BridgeTowerTextConfig)
    vision_config: BridgeTowerVisionConfig = field(default_factory=BridgeTowerVisionConfig)
    hidden_size: int = 768  # width of the cross-modal space
    num_hidden_layers: int = 6  # cross-modal layers = bridged top layers of each tower
    hidden_act: str = "gelu"  # only the MLM head's transform uses it
    layer_norm_eps: float = 1e-5
    link_tower_type: str = "add"  # "add" | "scaled_add" | "interpolate"
    share_cross_modal_transformer_layers: bool = True  # shares only the two input Linears (bridgetower.md §1.3)
    share_link_tower_layers: bool = False  # True crashes the reference: refused
    tie_word_embeddings: bool = False  # True: the MLM decoder is the word-embedding matrix
    init_layernorm_from_vision_encoder: bool = False
    # Not declared by the reference's config class, but read from config.json by the ITC head:
    contrastive_hidden_size: int | None = None
    logit_scale_init_value: float | None = None
    architectures: tuple = ()

    @property
    def depth(self):
        """Layers per tower (the vision tower has as many as the text tower; `validate` checks it)."""
        return self.text_config.num_hidden_layers

    @property
    def first_bridged_layer(self):
        """depth − N: the 0-based index of the first tower layer that feeds the cross-modal stack.

        Layers 0 … first_bridged_layer − 1 run alone; layer first_bridged_layer + l feeds cross-modal layer l.
        """
        return self.depth - self.num_hidden_layers

    # ---- reading ------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        # Legacy checkpoints carry text_config_dict / vision_config_dict; the reference ignores them.
        text = BridgeTowerTextConfig(**_pick(BridgeTowerTextConfig, d.get("text_config") or {}))
        vision = BridgeTowerVisionConfig(**_pick(BridgeTowerVisionConfig, d.get("vision_config") or {}))
        top = _pick(cls, d, skip=("text_config", "vision_config"))
        cfg = cls(text_config=text, vision_config=vision, **top)
        cfg.validate()
        return cfg

    @classmethod
    def from_json_file(cls, path):
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path} should hold a JSON object, found {type(d).__name__}")
        return cls.from_dict(d)

    def to_dict(self):
        return dataclasses.asdict(self)

    # ---- what the reference cannot run --------------------------------------------------------

    def validate(self):
        t, v = self.text_config, self.vision_config

        def refuse(flag, why):
            raise ConfigError(f"unsupported config: {flag}. {why}")

        if self.share_link_tower_layers:
            refuse("share_link_tower_layers=True", "The reference builds one link tower and then indexes it "
                   "per layer, which crashes (bridgetower.md §10.3); no checkpoint uses it.")
        if v.remove_last_layer:
            refuse("vision_config.remove_last_layer=True", "BridgeTowerModel indexes every vision block, so "
                   "the reference crashes with an IndexError (bridgetower.md §10.3).")
        if self.init_layernorm_from_vision_encoder and not v.share_layernorm:
            refuse("init_layernorm_from_vision_encoder=True with vision_config.share_layernorm=False",
                   "The reference crashes on it (AttributeError cross_modal_ln_separate, bridgetower.md §10.3).")
        if v.num_hidden_layers != t.num_hidden_layers:
            refuse(f"vision_config.num_hidden_layers={v.num_hidden_layers} != "
                   f"text_config.num_hidden_layers={t.num_hidden_layers}",
                   "BridgeTowerModel walks both towers with one layer index (bridgetower.md §10.4).")
        if not 1 <= self.num_hidden_layers <= t.num_hidden_layers:
            refuse(f"num_hidden_layers={self.num_hidden_layers}",
                   f"The cross-modal depth must be between 1 and the tower depth {t.num_hidden_layers}.")
        if t.hidden_size != self.hidden_size:
            refuse(f"text_config.hidden_size={t.hidden_size} != hidden_size={self.hidden_size}",
                   "The cross-modal layers are built from text_config, so the widths must agree.")
        if self.link_tower_type not in ("add", "scaled_add", "interpolate"):
            refuse(f"link_tower_type={self.link_tower_type!r}", 'Expected "add", "scaled_add" or "interpolate".')
        for name, act in (("text_config.hidden_act", t.hidden_act), ("hidden_act", self.hidden_act)):
            if act != "gelu":
                refuse(f"{name}={act!r}", 'Every published checkpoint uses "gelu" (exact, erf); '
                       "minibridge implements only that one.")
        if t.num_attention_heads < 1 or t.hidden_size % t.num_attention_heads:
            refuse(f"text_config.num_attention_heads={t.num_attention_heads}",
                   f"It must divide text_config.hidden_size={t.hidden_size}.")
        if v.hidden_size < 64 or v.hidden_size % 64:
            refuse(f"vision_config.hidden_size={v.hidden_size}", "It must be a multiple of 64 (CLIP heads are 64 wide).")
        sizes = {"hidden_size": self.hidden_size, "text_config.vocab_size": t.vocab_size,
                 "text_config.num_hidden_layers": t.num_hidden_layers, "text_config.intermediate_size": t.intermediate_size,
                 "text_config.num_attention_heads": t.num_attention_heads, "text_config.type_vocab_size": t.type_vocab_size,
                 "text_config.max_position_embeddings": t.max_position_embeddings - t.pad_token_id - 1,
                 "vision_config.patch_size": v.patch_size, "vision_config.image_size": v.image_size,
                 "vision_config.num_channels": v.num_channels}
        for name, value in sizes.items():
            if value < 1:
                refuse(f"{name} (too small)", "Every size must be at least 1 (and the position table must "
                       "hold a token past the pad id).")
        if v.patch_size > v.image_size:
            refuse(f"vision_config.patch_size={v.patch_size} > image_size={v.image_size}", "An image must hold a patch.")


def _pick(klass, d, skip=()):
    """The entries of `d` that are fields of `klass`, with their types checked; the rest is ignored."""
    out = {}
    for f in dataclasses.fields(klass):
        if f.name in skip or f.name not in d or d[f.name] is None and f.default is not None:
            continue
        value = d[f.name]
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"config field {f.name} should be an integer, found {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"config field {f.name} should be true or false, found {value!r}")
        if kind == "float" and not isinstance(value, (int, float)):
            raise ConfigError(f"config field {f.name} should be a number, found {value!r}")
        if kind == "int | None" and value is not None and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ConfigError(f"config field {f.name} should be an integer, found {value!r}")
        if kind == "float | None" and value is not None and not (isinstance(value, (int, float))
                                                                  and not isinstance(value, bool)):
            raise ConfigError(f"config field {f.name} should be a number, found {value!r}")
        if kind == "tuple":  # architectures: a list of class names (a bare string is one name)
            value = (value,) if isinstance(value, str) else tuple(value or ())
        out[f.name] = float(value) if kind == "float" else value
    return out
