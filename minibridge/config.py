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
import math
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
        if d.get("model_type") not in (None, "bridgetower"):
            raise ConfigError(f'model_type={d["model_type"]!r}: this is the config of another model; '
                              'expected "bridgetower"')
        for key in ("text_config", "vision_config"):
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ConfigError(f"config field {key} should be an object of the tower's fields, found {d[key]!r}")
        # Legacy checkpoints carry text_config_dict / vision_config_dict; the reference ignores them.
        text = BridgeTowerTextConfig(**_pick(BridgeTowerTextConfig, d.get("text_config") or {}, "text_config."))
        vision = BridgeTowerVisionConfig(**_pick(BridgeTowerVisionConfig, d.get("vision_config") or {}, "vision_config."))
        top = _pick(cls, d, skip=("text_config", "vision_config"))
        cfg = cls(text_config=text, vision_config=vision, **top)
        cfg.validate()
        return cfg

    @classmethod
    def from_json_file(cls, path):
        """Read a config.json; every error names the file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text, so not a config.json: {e}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path} should hold a JSON object, found {type(d).__name__}")
        # subtle: every field has a default, so `{}` (or another model's config) would load as
        # bridgetower-base and the weights would be blamed later. A file must say what it is.
        if not {"model_type", "text_config", "vision_config"} & set(d):
            found = f"only the keys {sorted(d)[:8]}" if d else "an empty object"
            raise ConfigError(f'{path} is not a BridgeTower config: expected "model_type": "bridgetower" '
                              f"or text_config / vision_config, found {found}")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self):
        return dataclasses.asdict(self)

    # ---- what the reference cannot run --------------------------------------------------------

    def validate(self):
        t, v = self.text_config, self.vision_config

        def refuse(flag, why):
            raise ConfigError(f"unsupported config: {flag}. {why}")

        def invalid(flag, why):
            raise ConfigError(f"invalid config: {flag}. {why}")

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
                 "vision_config.patch_size": v.patch_size, "vision_config.image_size": v.image_size,
                 **({} if self.contrastive_hidden_size is None else {"contrastive_hidden_size": self.contrastive_hidden_size})}
        for name, value in sizes.items():
            if value < 1:
                invalid(f"{name}={value}", "Every size must be at least 1.")
        if v.patch_size > v.image_size:
            refuse(f"vision_config.patch_size={v.patch_size} > image_size={v.image_size}", "An image must hold a patch.")
        if v.num_channels != 3:
            refuse(f"vision_config.num_channels={v.num_channels}", "The image processor (minibridge's and "
                   "transformers') always makes RGB, 3 channels, which such a model refuses; every published "
                   "checkpoint has 3.")
        for name, eps in (("layer_norm_eps", self.layer_norm_eps), ("text_config.layer_norm_eps", t.layer_norm_eps),
                          ("vision_config.layer_norm_eps", v.layer_norm_eps)):
            if not 0 < eps < 1:  # (NaN fails too)
                invalid(f"{name}={eps}", "LayerNorm's eps must be small and positive (1e-5 in every published "
                        "checkpoint): a negative one takes the root of a negative number (NaN scores), and "
                        "one of 1 or more outweighs the variance, so the layer no longer normalises.")
        if self.logit_scale_init_value is not None and not math.isfinite(self.logit_scale_init_value):
            invalid(f"logit_scale_init_value={self.logit_scale_init_value}", "Expected a finite number (2.6592 = ln 1/0.07).")
        for name, token in (("pad_token_id", t.pad_token_id), ("bos_token_id", t.bos_token_id),
                            ("eos_token_id", t.eos_token_id)):
            if not 0 <= token < t.vocab_size:
                invalid(f"text_config.{name}={token}", f"A token id must be in the vocabulary: 0 … {t.vocab_size - 1}.")
        if t.max_position_embeddings < t.pad_token_id + 2:
            invalid(f"text_config.max_position_embeddings={t.max_position_embeddings}", "Position ids start at "
                    f"pad_token_id + 1 = {t.pad_token_id + 1}, so the table needs at least {t.pad_token_id + 2} rows.")


def _pick(klass, d, prefix="", skip=()):
    """The entries of `d` that are fields of `klass`, with their types checked; the rest is ignored.

    prefix ("text_config.") makes the errors name the field as it sits in config.json.
    """
    out = {}
    for f in dataclasses.fields(klass):
        if f.name in skip or f.name not in d or d[f.name] is None and f.default is not None:
            continue
        value, name = d[f.name], prefix + f.name
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        is_int = isinstance(value, int) and not isinstance(value, bool)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (kind == "int" and not is_int) or (kind == "int | None" and value is not None and not is_int):
            raise ConfigError(f"config field {name} should be an integer, found {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"config field {name} should be true or false, found {value!r}")
        if (kind == "float" and not is_number) or (kind == "float | None" and value is not None and not is_number):
            raise ConfigError(f"config field {name} should be a number, found {value!r}")
        if kind == "tuple" and not isinstance(value, (str, list, tuple)):
            raise ConfigError(f"config field {name} should be a list of class names, found {value!r}")
        if kind == "tuple":  # architectures: a list of class names (a bare string is one name)
            value = (value,) if isinstance(value, str) else tuple(value or ())
        out[f.name] = float(value) if kind == "float" else value
    return out
