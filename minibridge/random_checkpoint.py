"""Random BridgeTower checkpoints in the Hub layout, made without torch or the network.

    save_random_checkpoint("/tmp/tiny", config=TINY, tokenizer_dir="path/with/tokenizer.json")

The benchmark uses this to time the published architectures when no real checkpoint is present,
the notebooks to run offline, and the tests to exercise the Hub-layout path end to end. The
weights are noise (every parameter, LayerNorms included), so the outputs mean nothing.
"""

import json
import shutil
from pathlib import Path

import numpy as np

from .config import BridgeTowerConfig
from .weights import expected_shapes, head_shapes

# A small config of every published flag's default: 4 layers per tower, 3 bridged, real vocabulary
# size (so the real roberta tokenizer files work with it), 32-pixel images in 8-pixel patches.
TINY = {"hidden_size": 64, "num_hidden_layers": 3, "contrastive_hidden_size": 32, "logit_scale_init_value": 2.6592,
        "text_config": {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128},
        "vision_config": {"hidden_size": 64, "num_hidden_layers": 4, "patch_size": 8, "image_size": 32}}

# The published base architecture (bridgetower-base-itm-mlm) and large one (-large-itm-mlm-itc).
BASE = {"contrastive_hidden_size": 512, "logit_scale_init_value": 2.6592}
LARGE = {"hidden_size": 1024, "contrastive_hidden_size": 512, "logit_scale_init_value": 2.6592,
         "text_config": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                         "intermediate_size": 4096},
         "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24, "patch_size": 14, "image_size": 294}}

ARCHITECTURES = {"itm": "BridgeTowerForImageAndTextRetrieval", "mlm": "BridgeTowerForMaskedLM",
                 "itc": "BridgeTowerForContrastiveLearning"}


def save_random_checkpoint(folder, config=TINY, heads=("itm", "mlm", "itc"), seed=0, tokenizer_dir=None):
    """Write config.json, model.safetensors (backbone + the given heads, `bridgetower.`-prefixed) and
    preprocessor_config.json to `folder`; copy tokenizer.json / vocab.json / merges.txt from
    `tokenizer_dir` if given. Returns the folder."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = BridgeTowerConfig.from_dict(config)
    if "itc" in heads and (cfg.contrastive_hidden_size is None or cfg.logit_scale_init_value is None):
        raise ValueError("the itc head needs contrastive_hidden_size and logit_scale_init_value in the config")
    rng = np.random.default_rng(seed)
    tensors = {"bridgetower." + k: _init(k, s, rng, cfg) for k, s in expected_shapes(cfg, "model").items()}
    for head in heads:  # as the transformers head classes save them: backbone prefixed, head keys not
        tensors.update({k: _init(k, s, rng, cfg) for k, s in head_shapes(cfg, head).items()})
    tmp = folder / "model.safetensors.partial"
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(folder / "model.safetensors")  # never leave half a file behind
    finally:
        tmp.unlink(missing_ok=True)

    written = dict(config, architectures=[ARCHITECTURES[h] for h in heads], model_type="bridgetower")
    (folder / "config.json").write_text(json.dumps(written, indent=2))
    size = cfg.vision_config.image_size
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": size}, "crop_size": {"shortest_edge": size},
         "size_divisor": min(32, size), "image_processor_type": "BridgeTowerImageProcessor"}, indent=2))
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "vocab.json", "merges.txt"):
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copy(Path(tokenizer_dir) / name, folder / name)
    return folder


def _init(key, shape, rng, cfg):
    """Noise around what training leaves: LayerNorm weights near 1, the log-scale near its init, the rest near 0."""
    if key == "logit_scale":
        return np.asarray(cfg.logit_scale_init_value + 0.1 * rng.standard_normal(), dtype=np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    parts = key.split(".")
    if parts[-1] == "weight" and any("layernorm" in p.lower() or p.startswith("ln_") for p in parts):
        return 1.0 + 0.1 * x
    return 0.05 * x if len(shape) >= 2 else 0.1 * x
