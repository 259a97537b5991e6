"""The transformers-style classes: a thin shell over the functional core in model.py and heads.py.

    model = BridgeTowerForImageAndTextRetrieval.from_pretrained("weights/bridgetower-base-itm-mlm")
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    out.logits                      # [B, 2]

Each class checks its inputs at the boundary (so a mistake is named here, not discovered as a
broadcasting error deep inside), runs the core, and packs the reference's output fields.

One deliberate difference from transformers: every array is batch-first, including the image
hidden states, which the reference returns sequence-first ([L, B, Dv]).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import array_module, is_cupy, keep_freed_memory, release_freed_memory, to_device, to_numpy
from .config import BridgeTowerConfig, ConfigError
from .heads import contrastive_loss, itm_logits, mlm_logits
from .model import (Bridged, Trace, bridgetower, cross_embedding, cross_modal, image_bridged, image_embedding,
                    text_bridged, text_embedding, text_tower, vision_tower)
from .ops import cross_entropy, softmax
from .weights import (WeightsError, check_weights, expected_shapes, head_shapes, heads_in, read_checkpoint, to_flat,
                      to_tree, write_checkpoint)


# ---- outputs -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class _Extras:
    """Present only when asked for (output_hidden_states=True / output_attentions=True).

    hidden_states: (text, image, cross) as in the reference: text is depth+1 × [B, T, Dt], image is
        depth+1 × [B, L, Dv] (batch-first, *not* the reference's [L, B, Dv]), cross is N × (text, image).
    attentions: N × ([B, H, T, T], [B, H, L, L]), the cross-modal layers' self-attention, as the reference.
    Beyond the reference, with output_attentions=True:
    cross_attentions: N × ([B, H, T, L] text→image, [B, H, L, T] image→text)
    text_attentions: depth × [B, H, T, T] (RoBERTa layers); vision_attentions: depth × [B, Hv, L, L] (ViT
        blocks); depth = the towers' number of layers, L = image tokens.
    """

    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None
    text_attentions: tuple | None = None
    vision_attentions: tuple | None = None


@dataclass(kw_only=True)
class BridgeTowerModelOutput(_Extras):
    text_features: object  # [B, T, D]
    image_features: object  # [B, L, D]
    pooler_output: object  # [B, 2D]


@dataclass(kw_only=True)
class ImageTextMatchingOutput(_Extras):
    logits: object  # [B, 2]; index 1 = match
    loss: object = None  # scalar, with labels


@dataclass(kw_only=True)
class MaskedLMOutput(_Extras):
    logits: object  # [B, T, V]
    loss: object = None  # scalar, with labels


@dataclass(kw_only=True)
class ContrastiveOutput(_Extras):
    logits: object  # [B, 3, C]: text, image and cross embeddings stacked (not similarities)
    text_embeds: object  # [B, C], L2-normalised
    image_embeds: object  # [B, C]
    cross_embeds: object  # [B, C]
    logit_scale: object  # scalar: exp of the stored log-scale, the factor the loss multiplies by
    loss: object = None  # scalar, with return_loss=True


# ---- the classes -------------------------------------------------------------------------------


class BridgeTowerModel:
    """The backbone: two towers, bridges and the cross-modal stack. Outputs features and pooler."""

    head = "model"  # which head's parameters the checkpoint must hold (weights.head_shapes)
    reads = "all"  # what the head reads of the last cross-modal layer (model.READS)

    def __init__(self, config, params):
        self.config = config
        self.params = params  # nested dict with the checkpoint's names, "bridgetower." prefix removed
        self.source_config = None  # the config.json dict it was loaded from: save_pretrained keeps its fields

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None, device="cpu"):
        """Load a checkpoint: a local folder in the Hub layout (config.json + model.safetensors), or a
        Hub repo id such as "BridgeTower/bridgetower-base-itm-mlm", downloaded once (see hub.py).

        A folder with only pytorch_model.bin is converted to model.safetensors first, without torch.
        device: "cpu" (NumPy, memory-mapped, nothing copied) or "cuda" (CuPy). On the CPU under Linux
        it also sets this process's malloc to keep large freed blocks for the next pass
        (backend.keep_freed_memory; MINIBRIDGE_KEEP_FREED_MEMORY=0 opts out).
        """
        return cls.from_checkpoint(open_checkpoint(name_or_path, revision, cache_dir), device)

    @classmethod
    def from_checkpoint(cls, checkpoint, device="cpu"):
        """This class's model from an opened `Checkpoint` (several classes can share one opening)."""
        config = checkpoint.config
        cls._check_config(config)
        if cls.head != "model" and cls.head not in checkpoint.heads:
            own = head_shapes(config, cls.head)
            keys = {k.removeprefix("bridgetower.") for k in checkpoint.tensors}
            missing = [f"{k} {own[k]}" for k in own if k not in keys]
            saved_as = ", ".join(config.architectures) or "an unnamed class"
            raise WeightsError(f"{checkpoint.folder} holds no {cls.__name__} head: missing {len(missing)} "
                               f"tensor(s) of it, e.g. {', '.join(missing[:2])}; it was saved as {saved_as}. "
                               "Load it with that class, or with BridgeTowerModel for the backbone alone.")
        tree = to_tree(check_weights(checkpoint.tensors, config, cls.head, source=str(checkpoint.folder)))
        if cls.head == "mlm" and config.tie_word_embeddings:  # the decoder *is* the embedding matrix
            tree["mlm_score"]["decoder"] = {"weight": tree["text_model"]["embeddings"]["word_embeddings"]["weight"]}
        model = cls(config, tree)
        model.source_config = _config_dict(checkpoint.folder / "config.json")
        if device == "cpu":
            keep_freed_memory()  # its forward passes reuse the large arrays they free (backend.py)
        return model.to(device) if device != "cpu" else model

    @classmethod
    def _check_config(cls, config):
        pass

    def to(self, device):
        """This model with its weights on `device` ("cpu" or "cuda")."""
        self.params = to_device(self.params, device)
        return self

    # -- the weights by name: saving, and the optimiser (optim.py) --

    def parameter_names(self):
        """{name as saved: key in self.params} for every weight the model uses.

        The names are those of model.safetensors, state_dict, loss_and_grads and AdamW (checkpoint_name);
        the keys are the tree's, dotted (weights.to_flat / to_tree). Left out, as transformers saves: the
        RoBERTa pooler (never used) and a tied MLM decoder (it is the word-embedding matrix).
        """
        return {self.checkpoint_name(key): key for key in expected_shapes(self.config, self.head)}

    def state_dict(self):
        """{name as saved: array} of every weight the model uses: the model's own arrays, not copies."""
        flat = to_flat(self.params)
        return {name: flat[key] for name, key in self.parameter_names().items()}

    def save_pretrained(self, folder):
        """Write config.json and model.safetensors (state_dict, float32) into `folder`: the Hub layout that
        transformers' and minibridge's from_pretrained load. Returns the folder as a Path.

        config.json is the one the model was loaded from (no field lost) with the model's config and class
        over it. A folder of other files is refused (FileExistsError); a checkpoint folder, the model's own
        included, gets its two files replaced and its other weight files (a pytorch_model.bin, shards)
        removed, so that no loader reads the old weights (weights.write_checkpoint).
        """
        tensors = {name: to_numpy(a) for name, a in self.state_dict().items()}
        return write_checkpoint(folder, self._config_to_save(), tensors)

    def _config_to_save(self):
        config = json.loads(json.dumps(self.source_config or {}))  # a deep copy
        mine = {k: v for k, v in self.config.to_dict().items() if v is not None}
        for tower in ("text_config", "vision_config"):
            mine[tower] = {**(config.get(tower) or {}), **mine[tower]}
        config.update(mine, model_type="bridgetower", architectures=[type(self).__name__])
        config.pop("torch_dtype", None)  # the older name of dtype
        config["dtype"] = "float32"  # what model.safetensors holds: transformers loads the weights as such
        return config

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, pixel_mask=None,
                interpolate_pos_encoding=False, output_hidden_states=False, output_attentions=False):
        """input_ids [B, T] int, attention_mask [B, T] (default all ones), pixel_values [B, 3, H, W].

        pixel_mask is accepted and ignored, as in the reference (images are never padded).
        """
        feats, extras = self._backbone(input_ids, attention_mask, pixel_values, interpolate_pos_encoding,
                                       output_hidden_states, output_attentions)
        return self._output(feats, extras)

    def _output(self, feats, extras):
        """The output object from the backbone's features (each head class has its own)."""
        return BridgeTowerModelOutput(text_features=feats["text_features"], image_features=feats["image_features"],
                                      pooler_output=feats["pooler_output"], **extras)

    # -- pairs: each tower once per distinct input, the cross-modal stack per pair --

    def encode_text(self, input_ids=None, attention_mask=None):
        """The text tower alone, keeping what the bridges read: [B, T] ids -> model.Bridged.

        With encode_image and forward_pairs: one text against many images runs the text tower once.
        """
        input_ids, attention_mask = check_text(self.config.text_config, input_ids, attention_mask)
        return text_bridged(self.params, self.config, self._here(input_ids), self._here(attention_mask))

    def encode_image(self, pixel_values=None, interpolate_pos_encoding=False):
        """The vision tower alone, keeping what the bridges read: [B, 3, H, W] -> model.Bridged."""
        pixel_values = check_pixels(self.config.vision_config, pixel_values, interpolate_pos_encoding)
        return image_bridged(self.params, self.config, self._here(pixel_values), interpolate_pos_encoding)

    def forward_pairs(self, text, image, text_rows=None, image_rows=None):
        """The head's output for pairs of already encoded texts and images (encode_text, encode_image).

        text: the Bridged of Nt texts (it holds their mask); image: the Bridged of Ni images. Pair k
        joins text text_rows[k] with image image_rows[k] (None for both: row k of each, Nt = Ni).
        Only the cross-modal layers run here, once per pair. Equal to forward on the same pairs.
        """
        text_rows, image_rows = check_pairs(self.config, text, image, text_rows, image_rows)
        pairs = None if text_rows is None else (self._here(text_rows), self._here(image_rows))
        feats = cross_modal(self.params, self.config, text, image, self.reads, pairs=pairs)
        rows = pairs or (slice(None), slice(None))
        # the contrastive head reads position 0 of each tower's last layer: only that is picked for the pairs
        feats.update(text_last=text.last[:, :1][rows[0]], image_last=image.last[:, :1][rows[1]])  # [P, 1, Dt|Dv]
        return self._output(feats, {})

    # -- shared plumbing --

    def _xp(self):
        """numpy or cupy: wherever the weights are."""
        return array_module(self.params["token_type_embeddings"]["weight"])

    def _here(self, x):
        """An input array moved to where the weights are (a CuPy input to a CPU model comes back)."""
        xp = self._xp()
        return xp.asarray(to_numpy(x)) if xp is np else xp.asarray(x)

    def _backbone(self, input_ids, attention_mask, pixel_values, interpolate_pos_encoding,
                  output_hidden_states, output_attentions):
        input_ids, attention_mask, pixel_values = check_inputs(
            self.config, input_ids, attention_mask, pixel_values, interpolate_pos_encoding)
        trace = Trace(keep_hidden=output_hidden_states, keep_attentions=output_attentions)
        # The last layer computes only the rows the head reads, unless every row's states are asked for.
        read = "all" if output_hidden_states or output_attentions else self.reads
        feats = bridgetower(self.params, self.config, self._here(input_ids), self._here(attention_mask),
                            self._here(pixel_values), interpolate_pos_encoding, trace, read)
        extras = {}
        if output_hidden_states:
            extras["hidden_states"] = (tuple(trace.text_hidden), tuple(trace.image_hidden), tuple(trace.cross_hidden))
        if output_attentions:
            extras["attentions"] = tuple(trace.cross_self_attentions)
            extras["cross_attentions"] = tuple(trace.cross_attentions)
            extras["text_attentions"] = tuple(trace.text_attentions)
            extras["vision_attentions"] = tuple(trace.vision_attentions)
        return feats, extras


    # -- gradients (backward/model.py) --

    def loss_and_grads(self, input_ids=None, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None,
                       trainable=None):
        """The head's loss and the gradient of every weight it depends on, computed by hand (backward/).

        Inputs as forward (pixel_mask accepted and ignored); labels as forward's (ITM [B] in {0, 1}; MLM [B, T], -100 ignored; the
        contrastive head takes none). trainable: None (all weights), a list of name prefixes, or a
        function name -> bool; frozen weights get no gradient, and the backward stops below the lowest
        trainable layer. Returns (loss, grads): grads {name: array of that weight's shape}, named
        as in model.safetensors (the head classes prefix the backbone with "bridgetower.").

        A tied MLM decoder (tie_word_embeddings) is the word-embedding matrix, one weight saved under the
        embedding's name, whose gradient sums both uses. A `trainable` that selects the decoder's name
        (mlm_score.decoder.weight) but not the word embeddings is refused (ValueError), rather than the
        decoder silently left frozen: add the word embeddings to train it, or name the rest of the head.
        """
        from .backward.model import loss_and_grads

        if self.head == "model":
            raise TypeError("BridgeTowerModel has no loss; use BridgeTowerForImageAndTextRetrieval, "
                            "BridgeTowerForMaskedLM or BridgeTowerForContrastiveLearning")
        input_ids, attention_mask, pixel_values = check_inputs(self.config, input_ids, attention_mask, pixel_values,
                                                               False)
        labels = self._check_training_labels(labels, input_ids.shape)
        keep = _trainable_rule(trainable)
        self._check_tied_decoder(keep, trainable)
        loss, grads = loss_and_grads(self.params, self.config, self.head, self._here(input_ids),
                                     self._here(attention_mask), self._here(pixel_values),
                                     None if labels is None else self._here(labels),
                                     trainable=lambda key: keep(self.checkpoint_name(key)))
        return loss, {self.checkpoint_name(key): g for key, g in grads.items()}

    def _check_tied_decoder(self, keep, trainable):
        """Refuse a `trainable` that would train a tied decoder but not the embedding matrix it is."""
        if self.head != "mlm" or not self.config.tie_word_embeddings:
            return
        embedding = self.checkpoint_name("text_model.embeddings.word_embeddings.weight")
        if keep("mlm_score.decoder.weight") and not keep(embedding):
            raise ValueError(
                f"trainable={trainable!r} selects mlm_score.decoder.weight, but this model ties its MLM decoder "
                f"to the word embeddings (tie_word_embeddings): it is {embedding}, one weight, which trainable "
                f"leaves frozen. To train it, add {embedding.removesuffix('.weight')!r} to trainable (its "
                "gradient sums the decoder's and the embedding lookup's, and the backward runs down to the "
                "embeddings); to keep it frozen, name the rest of the head: ['mlm_score.transform', 'mlm_score.bias'].")

    def _check_training_labels(self, labels, shape):
        if self.head == "itc":
            if labels is not None:
                raise TypeError("the contrastive loss takes no labels: the i-th text goes with the i-th image")
            return None
        if labels is None:
            raise TypeError(f"{type(self).__name__}.loss_and_grads needs labels: "
                            + ("[B] in {0, 1}" if self.head == "itm" else "[B, T] token ids, -100 = ignored"))
        if self.head == "itm":
            return check_labels(labels, shape[:1], 2, "labels", allow_ignore=False)
        return check_labels(labels, shape, self.config.text_config.vocab_size, "labels", allow_ignore=True)

    def checkpoint_name(self, key):
        """The name a weight (unprefixed, as in self.params) has in this class's model.safetensors:
        a head class saves its backbone under "bridgetower.", its own head's weights without it."""
        own = head_shapes(self.config, self.head)
        return key if self.head == "model" or key in own else "bridgetower." + key


def _trainable_rule(trainable):
    """None, name prefixes, or a function -> a function name -> bool."""
    if trainable is None:
        return lambda name: True
    if callable(trainable):
        return trainable
    if isinstance(trainable, str):
        trainable = [trainable]
    prefixes = tuple(trainable)
    if not all(isinstance(s, str) for s in prefixes):
        raise TypeError(f"trainable must be None, a function of a weight's name, or name prefixes; got {trainable!r}")
    return lambda name: name.startswith(prefixes)


class BridgeTowerForImageAndTextRetrieval(BridgeTowerModel):
    """Image-text matching (ITM): does this text describe this image? logits [B, 2], index 1 = yes."""

    head = "itm"
    reads = "first"  # the poolers read position 0 of each stream

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None,
                interpolate_pos_encoding=False, output_hidden_states=False, output_attentions=False):
        """As BridgeTowerModel.forward; labels [B] in {0, 1} adds the cross-entropy loss."""
        feats, extras = self._backbone(input_ids, attention_mask, pixel_values, interpolate_pos_encoding,
                                       output_hidden_states, output_attentions)
        out = self._output(feats, extras)
        if labels is not None:
            labels = check_labels(labels, (out.logits.shape[0],), 2, "labels", allow_ignore=False)
            out.loss = cross_entropy(out.logits, array_module(out.logits).asarray(labels))
        return out

    def _output(self, feats, extras):
        return ImageTextMatchingOutput(logits=itm_logits(self.params["itm_score"], feats["pooler_output"]),  # [B, 2]
                                       **extras)

    def score_pairs(self, input_ids=None, attention_mask=None, pixel_values=None, batch_size=32,
                    interpolate_pos_encoding=False):
        """Every image against every text: the match probability softmax(logits)[1], [images, texts].

        input_ids [N, T] (attention_mask [N, T]) and pixel_values [I, 3, H, W]: each tower runs once
        per text and once per image; the cross-modal layers run once per pair, batch_size pairs at a
        time (memory stays that of batch_size pairs and the encoded inputs). interpolate_pos_encoding
        as in forward.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        text = self.encode_text(input_ids, attention_mask)
        image = self.encode_image(pixel_values, interpolate_pos_encoding)
        n_images, n_texts = image.last.shape[0], text.last.shape[0]
        image_rows, text_rows = np.divmod(np.arange(n_images * n_texts), n_texts)  # pair k: (k // N, k % N)
        scores = []
        for start in range(0, n_images * n_texts, batch_size):
            rows = slice(start, start + batch_size)
            logits = self.forward_pairs(text, image, text_rows[rows], image_rows[rows]).logits  # [b, 2]
            scores.append(to_numpy(softmax(logits))[:, 1])
        del text, image
        release_freed_memory()  # what the batches freed goes back to the system (backend.keep_freed_memory)
        return np.concatenate(scores).reshape(n_images, n_texts)


class BridgeTowerForMaskedLM(BridgeTowerModel):
    """Masked language modelling: vocabulary scores for every text position, logits [B, T, V]."""

    head = "mlm"
    reads = "text"  # the MLM head reads the text stream alone

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, pixel_mask=None, labels=None,
                interpolate_pos_encoding=False, output_hidden_states=False, output_attentions=False):
        """As BridgeTowerModel.forward; labels [B, T] (token ids, -100 = ignore) adds the mean loss."""
        feats, extras = self._backbone(input_ids, attention_mask, pixel_values, interpolate_pos_encoding,
                                       output_hidden_states, output_attentions)
        out = self._output(feats, extras)
        if labels is not None:
            V = self.config.text_config.vocab_size
            labels = check_labels(labels, out.logits.shape[:2], V, "labels", allow_ignore=True)
            xp = array_module(out.logits)
            out.loss = cross_entropy(out.logits.reshape(-1, V), xp.asarray(labels).reshape(-1))  # [B·T, V]
        return out

    def _output(self, feats, extras):
        return MaskedLMOutput(logits=mlm_logits(self.params["mlm_score"], feats["text_features"],  # [B, T, V]
                                                self.config.layer_norm_eps), **extras)


class BridgeTowerForContrastiveLearning(BridgeTowerModel):
    """Contrastive (ITC) head: L2-normalised text, image and cross-modal embeddings, [B, C] each."""

    head = "itc"
    reads = "first"  # the poolers read position 0 of each stream

    @classmethod
    def _check_config(cls, config):
        if config.contrastive_hidden_size is None or config.logit_scale_init_value is None:
            raise ConfigError("BridgeTowerForContrastiveLearning needs contrastive_hidden_size and "
                              "logit_scale_init_value in config.json (bridgetower.md §1.3); this config has "
                              f"contrastive_hidden_size={config.contrastive_hidden_size}, "
                              f"logit_scale_init_value={config.logit_scale_init_value}")
        if not config.share_cross_modal_transformer_layers:
            raise ConfigError("unsupported config: share_cross_modal_transformer_layers=False with the "
                              "contrastive head, which calls the shared image transform (bridgetower.md §10.5)")
        if config.vision_config.hidden_size != config.hidden_size:
            raise ConfigError(f"unsupported config: vision_config.hidden_size={config.vision_config.hidden_size}"
                              f" != hidden_size={config.hidden_size} with the contrastive head (bridgetower.md §7.3)")

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, pixel_mask=None, return_loss=False,
                interpolate_pos_encoding=False, output_hidden_states=False, output_attentions=False):
        """As BridgeTowerModel.forward; return_loss=True adds the 3-term contrastive loss (labels = arange(B))."""
        feats, extras = self._backbone(input_ids, attention_mask, pixel_values, interpolate_pos_encoding,
                                       output_hidden_states, output_attentions)
        out = self._output(feats, extras)
        if return_loss:
            out.loss = contrastive_loss(out.text_embeds, out.image_embeds, out.cross_embeds, out.logit_scale)
        return out

    def _output(self, feats, extras):
        p = self.params
        text = text_embedding(p, feats["text_last"])  # [B, C]
        image = image_embedding(p, self.config, feats["image_last"])  # [B, C]
        cross = cross_embedding(p, feats["pooler_output"])  # [B, C]
        xp = array_module(text)
        scale = xp.exp(p["logit_scale"])  # stored in log space
        return ContrastiveOutput(logits=xp.stack([text, image, cross], axis=-2), text_embeds=text,  # 3 × [B, C] -> [B, 3, C]
                                 image_embeds=image, cross_embeds=cross, logit_scale=scale, **extras)

    def get_text_features(self, input_ids=None, attention_mask=None):
        """Text embeddings alone, running only the text tower: [B, T] ids -> [B, C], L2-normalised.

        Exactly the `text_embeds` of the full forward pass, which reads the raw last RoBERTa layer.
        """
        input_ids, attention_mask = check_text(self.config.text_config, input_ids, attention_mask)
        t = text_tower(self.params, self.config, self._here(input_ids), self._here(attention_mask))  # [B, T, Dt]
        return text_embedding(self.params, t)

    def get_image_features(self, pixel_values=None, interpolate_pos_encoding=False):
        """Image embeddings alone, running only the vision tower: [B, 3, H, W] -> [B, C], L2-normalised.

        Exactly the `image_embeds` of the full forward pass.
        """
        pixel_values = check_pixels(self.config.vision_config, pixel_values, interpolate_pos_encoding)
        v = vision_tower(self.params, self.config, self._here(pixel_values), interpolate_pos_encoding)  # [B, L, Dv]
        return image_embedding(self.params, self.config, v)


# ---- opening a checkpoint ----------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint: its folder, config, tensors (memory-mapped, not yet checked) and task heads."""

    folder: Path
    config: BridgeTowerConfig
    tensors: dict  # {key as stored: array}
    heads: tuple  # the task heads it holds, e.g. ("itm", "mlm") (weights.heads_in)


def _config_dict(path):
    """A config.json as a dict (save_pretrained keeps its fields), or None when it cannot be read."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def open_checkpoint(name_or_path, revision=None, cache_dir=None):
    """Open a checkpoint folder or Hub id: downloaded if need be, a lone pytorch_model.bin converted
    to safetensors, the tensors memory-mapped. Returns a Checkpoint."""
    from .convert import ensure_safetensors
    from .hub import resolve

    folder = resolve(name_or_path, revision, cache_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json; expected a checkpoint folder in the "
                                "Hugging Face layout (config.json + model.safetensors)")
    config = BridgeTowerConfig.from_json_file(folder / "config.json")
    ensure_safetensors(folder)
    tensors = read_checkpoint(folder)
    return Checkpoint(folder, config, tensors, heads_in(config, tensors))


# ---- input checks at the boundary --------------------------------------------------------------


def check_inputs(cfg, input_ids, attention_mask, pixel_values, interpolate_pos_encoding):
    """Validated (input_ids [B, T] int64, attention_mask [B, T], pixel_values [B, C, H, W] float32);
    every problem is named with what came."""
    input_ids, attention_mask = check_text(cfg.text_config, input_ids, attention_mask)
    pixel_values = check_pixels(cfg.vision_config, pixel_values, interpolate_pos_encoding)
    if pixel_values.shape[0] != input_ids.shape[0]:
        raise ValueError(f"text and image batches differ: {input_ids.shape[0]} texts but "
                         f"{pixel_values.shape[0]} images")
    return input_ids, attention_mask, pixel_values


def check_pairs(cfg, text, image, text_rows, image_rows):
    """Validated (text_rows, image_rows) for forward_pairs: text and image are encode_text's and
    encode_image's model.Bridged for this architecture; rows are both None (row k with row k) or
    1-D integer indices into them, one per pair."""
    for side, encoded in (("text", text), ("image", image)):
        if not isinstance(encoded, Bridged):
            raise TypeError(f"{side} must be what encode_{side} returns (a model.Bridged), "
                            f"got {type(encoded).__name__}")
        if encoded.side != side:
            raise ValueError(f"{side} must be encoded {side}s (encode_{side}), got encoded {encoded.side}s: "
                             "forward_pairs takes the texts first, then the images")
        tower = (cfg.text_config if side == "text" else cfg.vision_config).hidden_size
        got = (len(encoded.states), encoded.states[0].shape[-1] if encoded.states else None, encoded.last.shape[-1])
        if got != (cfg.num_hidden_layers, cfg.hidden_size, tower):
            raise ValueError(f"{side} was encoded by another architecture: {got[0]} bridge input(s) of width {got[1]} "
                             f"from a tower of width {got[2]}; this model reads {cfg.num_hidden_layers} of width "
                             f"{cfg.hidden_size} from a tower of width {tower}. Use this model's encode_{side}")
    n_texts, n_images = text.last.shape[0], image.last.shape[0]
    if (text_rows is None) != (image_rows is None):
        raise ValueError("pass text_rows and image_rows together (pair k: text text_rows[k], image image_rows[k]), "
                         "or neither (text k with image k)")
    if text_rows is None:
        if n_texts != n_images:
            raise ValueError(f"got {n_texts} texts and {n_images} images to pair; pass text_rows and image_rows of "
                             "one length (pair k: text text_rows[k], image image_rows[k])")
        return None, None
    text_rows = _check_rows(text_rows, n_texts, "text_rows", "texts")
    image_rows = _check_rows(image_rows, n_images, "image_rows", "images")
    if text_rows.shape != image_rows.shape:
        raise ValueError(f"text_rows and image_rows must be of one length, one entry per pair; got "
                         f"{text_rows.shape[0]} and {image_rows.shape[0]}")
    return text_rows, image_rows


def _check_rows(rows, n, name, what):
    """None, or 1-D integer indices in [0, n): which encoded input each pair reads."""
    if rows is None:
        return None
    rows = _as_array(rows, name)
    if rows.ndim != 1 or rows.shape[0] == 0:
        raise ValueError(f"{name} must be 1-D [pairs], one index per pair, got shape {tuple(rows.shape)}")
    if rows.dtype.kind not in "iu":  # subtle: booleans would select rows as a mask, floats are no index
        raise TypeError(f"{name} must be integer indices of the {n} encoded {what}, got dtype {rows.dtype}")
    lo, hi = int(rows.min()), int(rows.max())
    if lo < 0 or hi >= n:  # subtle: NumPy would count -1 from the end
        raise ValueError(f"{name} holds {lo if lo < 0 else hi}, outside the {n} encoded {what} (0 to {n - 1})")
    return rows


def check_text(tc, input_ids, attention_mask):
    """Validated (input_ids [B, T] int64, attention_mask [B, T]) for the text config `tc`."""
    if input_ids is None:
        raise TypeError("input_ids is required: an integer array of shape [batch, tokens] (see RobertaTokenizer)")
    input_ids = _as_array(input_ids, "input_ids")
    if input_ids.dtype.kind not in "iu":
        raise TypeError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [batch, tokens], got shape {tuple(input_ids.shape)}"
                         + ("; for one text use input_ids[None]" if input_ids.ndim == 1 else ""))
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"input_ids must hold at least one token per text, got shape {(B, T)}")
    if T > tc.max_text_length:
        raise ValueError(f"the text has {T} tokens but the model takes at most {tc.max_text_length} "
                         f"(max_position_embeddings={tc.max_position_embeddings}); tokenize with truncation=True")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= tc.vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids holds id {bad}, outside the vocabulary [0, {tc.vocab_size})")
    input_ids = input_ids.astype(np.int64, copy=False)

    if attention_mask is None:
        attention_mask = np.ones((B, T), dtype=np.int64)
    attention_mask = _as_array(attention_mask, "attention_mask")
    if tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask must have the shape of input_ids {(B, T)}, got {tuple(attention_mask.shape)}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    return input_ids, attention_mask


def check_pixels(vc, pixel_values, interpolate_pos_encoding):
    """Validated pixel_values [B, C, H, W] float32 for the vision config `vc`."""
    if pixel_values is None:
        raise TypeError(f"pixel_values is required: a float array [batch, {vc.num_channels}, "
                        f"{vc.image_size}, {vc.image_size}] (see BridgeTowerImageProcessor)")
    pixel_values = _as_array(pixel_values, "pixel_values")
    if pixel_values.dtype.kind != "f":
        raise TypeError(f"pixel_values must be floating point (normalised pixels), got dtype {pixel_values.dtype}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != vc.num_channels:
        raise ValueError(f"pixel_values must have shape [batch, {vc.num_channels}, height, width], "
                         f"got {tuple(pixel_values.shape)}")
    H, W = pixel_values.shape[2:]
    if interpolate_pos_encoding:
        if H < vc.patch_size or W < vc.patch_size:
            raise ValueError(f"images must be at least one patch ({vc.patch_size} pixels) on each side, got {H}×{W}")
    elif (H, W) != (vc.image_size, vc.image_size):
        raise ValueError(f"this model takes {vc.image_size}×{vc.image_size} images, got {H}×{W}; resize them "
                         "(BridgeTowerImageProcessor) or pass interpolate_pos_encoding=True")
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values holds no image (batch size 0)")
    if not bool(array_module(pixel_values).isfinite(pixel_values).all()):
        raise ValueError("pixel_values holds NaN or infinity; expected finite normalised pixels "
                         "(BridgeTowerImageProcessor makes them)")
    if interpolate_pos_encoding:
        _check_attention_memory(vc, pixel_values.shape)
    return pixel_values.astype(np.float32, copy=False)


class TooLargeError(MemoryError):
    """An input that would need more memory than the machine has: refused before any work starts."""


def _check_attention_memory(vc, shape):
    """Refuse, before any layer runs, images whose self-attention would not fit in memory.

    With interpolate_pos_encoding the image may be any size, and attention grows with the square of
    its tokens: a 1024-pixel image in 16-pixel patches is 4,097 tokens, so each ViT layer holds
    scores [B, heads, 4097, 4097] float32, 0.8 GB per image (the probabilities overwrite them, ops.attention).
    (With output_attentions every layer's are kept, and more is needed than this checks.)
    """
    B, _, H, W = shape
    tokens = (H // vc.patch_size) * (W // vc.patch_size) + 1
    need = B * vc.num_attention_heads * tokens * tokens * 4  # float32 scores
    available = available_memory()
    if available is not None and need > available:
        raise TooLargeError(f"{B} image(s) of {H}×{W} pixels are {tokens} tokens each; the vision tower's attention "
                            f"would need {need / 1e9:.1f} GB at once and this machine has {available / 1e9:.1f} GB "
                            "available. Use smaller images (or fewer per call).")


def available_memory():
    """Bytes of memory the system can still give this process (Linux: MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_labels(labels, shape, num_classes, name, allow_ignore):
    """Validated integer labels of the given shape, in [0, num_classes) (or -100 where allowed)."""
    labels = _as_array(labels, name)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    ok = (labels >= 0) & (labels < num_classes)
    if allow_ignore:
        ok |= labels == -100
    if not bool(ok.all()):
        allowed = f"[0, {num_classes})" + (" or -100 (ignored)" if allow_ignore else "")
        raise ValueError(f"{name} must be in {allowed}, found {int(labels[~ok][0])}")
    return labels.astype(np.int64, copy=False)


def _as_array(x, name):
    if is_cupy(x):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name} must be an array, got {type(x).__name__} ({e})") from None
