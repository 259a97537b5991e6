"""Reference tooling: build BridgeTower models with transformers, set their weights, run them.

Used by make_fixtures.py (to write the committed fixtures), make_snapshots.py (the course's
reference outputs), the live parity tests and test_convert.py. Needs the `reference` extra (torch,
transformers); nothing in minibridge imports this.

Every parameter is set from minibridge's one random-weight rule (weights.random_weights): noise
everywhere, LayerNorm weights and biases included (a freshly initialised LayerNorm is weight 1,
bias 0, which would hide a skipped or swapped LayerNorm).
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import minibridge as mb
from minibridge.weights import random_weights
from transformers import (
    BridgeTowerConfig,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerModel,
)

HEAD_CLASSES = {
    "model": BridgeTowerModel,
    "itm": BridgeTowerForImageAndTextRetrieval,
    "mlm": BridgeTowerForMaskedLM,
    "itc": BridgeTowerForContrastiveLearning,
}


def build(config_dict, heads, seed):
    """{head: eval-mode transformers model}, all heads sharing one backbone, every tensor set from
    minibridge's one random-weight rule (weights.random_weights)."""
    config = BridgeTowerConfig(**json.loads(json.dumps(config_dict)))
    flat = random_weights(mb.BridgeTowerConfig.from_dict(config_dict), [h for h in heads if h != "model"], seed)
    return {head: load_weights(HEAD_CLASSES[head](config).eval(), flat) for head in heads}


def load_weights(model, flat):
    """Set a transformers BridgeTower model's tensors from {unprefixed key: array}; returns the model.

    Every tensor the model holds is set, except the RoBERTa pooler, which the reference builds but
    never uses (bridgetower.md §3), and an MLM decoder tied to the word embeddings (set through them).
    """
    own = model.state_dict()
    state = {}
    for key, value in flat.items():
        name = key if key in own else "bridgetower." + key
        if name in own:  # (a sibling head's keys are not this model's)
            state[name] = torch.from_numpy(value)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(model.config, "tie_word_embeddings", False)
    left = [k for k in missing if not k.removeprefix("bridgetower.").startswith("text_model.pooler.")
            and not (tied and k == "mlm_score.decoder.weight")]
    assert not unexpected and not left, (left, unexpected)
    return model


def state_dict_numpy(models, prefixed=True):
    """One flat {key: np.ndarray} holding the backbone and every head, as in a multi-head Hub checkpoint."""
    out = {}
    for head, m in models.items():
        for k, v in m.state_dict().items():
            if head == "model" and prefixed:
                k = "bridgetower." + k
            elif head != "model" and not prefixed:
                k = k.removeprefix("bridgetower.")
            out[k] = v.detach().numpy()
    return out


def save_checkpoint(models, folder, prefixed=True):
    """Write config.json + model.safetensors (Hub layout) holding every head's parameters."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first = next(iter(models.values()))
    cfg = first.config.to_dict()
    cfg["architectures"] = [type(m).__name__ for m in models.values()]
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    # clone(): tied weights share storage, which safetensors refuses to write twice
    tensors = {k: torch.from_numpy(v).clone() for k, v in state_dict_numpy(models, prefixed).items()}
    if cfg.get("tie_word_embeddings"):  # transformers does not save the tied copy either
        tensors.pop("mlm_score.decoder.weight", None)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def make_inputs(config_dict, lengths, image_hw=None, seed=0):
    """Random ids (<s> … </s>, right-padded to the longest), their mask and normalised-looking pixels."""
    rng = np.random.default_rng(seed)
    text, vision = config_dict.get("text_config", {}), config_dict.get("vision_config", {})
    V = text.get("vocab_size", 50265)
    T = max(lengths)
    ids = np.ones((len(lengths), T), dtype=np.int64)  # pad id 1
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(3, V, size=n)
        ids[b, 0], ids[b, n - 1] = 0, 2
        mask[b, :n] = 1
    size = vision.get("image_size", 288)
    h, w = image_hw or (size, size)
    pixels = rng.standard_normal((len(lengths), vision.get("num_channels", 3), h, w)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


class _AttentionHooks:
    """Capture what the reference computes but does not return: every attention map (bridgetower.md §6)."""

    def __init__(self, core):
        self.maps = {}
        self.handles = []
        for name, mod in core.named_modules():
            kind = type(mod).__name__
            if kind == "BridgeTowerAttention":
                self.handles.append(mod.register_forward_hook(self._keep(name)))
            elif kind == "MultiheadAttention":
                self.handles.append(mod.register_forward_hook(self._vision(name, mod)))

    def _keep(self, name):
        def hook(mod, args, out):
            self.maps[name] = out[1].detach().numpy()
        return hook

    def _vision(self, name, mod):
        def hook(m, args, out):
            x = args[0]  # [L, B, Dv], sequence-first
            with torch.no_grad():
                w = torch.nn.functional.multi_head_attention_forward(
                    x, x, x, m.embed_dim, m.num_heads, m.in_proj_weight, m.in_proj_bias, None, None, False,
                    0.0, m.out_proj.weight, m.out_proj.bias, training=False, need_weights=True,
                    average_attn_weights=False)[1]
            self.maps[name] = w.numpy()
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def run(models, inputs, head, interpolate=False, labels=None, return_loss=False, attention_maps=False):
    """Reference outputs of one head as {name: np.ndarray} (hidden states kept in the reference's layout)."""
    # "model" may be run as the backbone of a head model (saves building a second full-size copy)
    m = models[head] if head in models else next(iter(models.values())).bridgetower
    kw = {k: torch.from_numpy(v) for k, v in inputs.items()}
    if interpolate:
        kw["interpolate_pos_encoding"] = True
    if labels is not None:
        kw["labels"] = torch.from_numpy(labels)
    if return_loss:
        kw["return_loss"] = True
    core = m if head == "model" else m.bridgetower
    hooks = _AttentionHooks(core) if attention_maps else None
    with torch.no_grad():
        out = m(**kw, output_hidden_states=True, output_attentions=True)
    res = {}
    for k in ("text_features", "image_features", "pooler_output", "logits", "loss", "text_embeds",
              "image_embeds", "cross_embeds"):
        v = getattr(out, k, None)
        if v is not None:
            res[k] = v.detach().numpy()
    if head == "itc":
        res["logit_scale"] = m.logit_scale.exp().detach().numpy()
    text_h, image_h, cross_h = out.hidden_states
    for i, h in enumerate(text_h):
        res[f"hidden_states.text.{i}"] = h.numpy()
    for i, h in enumerate(image_h):
        res[f"hidden_states.image.{i}"] = h.numpy()  # [L, B, Dv]: sequence-first in the reference
    for i, (x, y) in enumerate(cross_h):
        res[f"hidden_states.cross.{i}.text"] = x.numpy()
        res[f"hidden_states.cross.{i}.image"] = y.numpy()
    for i, (a, b) in enumerate(out.attentions):
        res[f"attentions.{i}.text"] = a.numpy()
        res[f"attentions.{i}.image"] = b.numpy()
    if hooks:
        hooks.close()
        L = len(text_h) - 1
        for i in range(L):
            res[f"text_attentions.{i}"] = hooks.maps[f"text_model.encoder.layer.{i}.attention"]
            res[f"vision_attentions.{i}"] = hooks.maps[f"vision_model.visual.transformer.resblocks.{i}.attn"]
        for i in range(len(cross_h)):
            res[f"cross_attentions.{i}.text"] = hooks.maps[f"cross_modal_text_layers.{i}.crossattention"]
            res[f"cross_attentions.{i}.image"] = hooks.maps[f"cross_modal_image_layers.{i}.crossattention"]
    return res
