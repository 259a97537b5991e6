"""Weights: memory-mapped safetensors in, a nested dict keyed by the checkpoint's own names out (bridgetower.md §7).

    flat = read_safetensors("weights/bridgetower-base/model.safetensors")   # {"a.b.0.c": array}
    tree = to_tree(flat)                                                     # tree["a"]["b"][0]["c"]

Nothing is copied at load time: each float32 array is a read-only view into the mapped file, and the
operating system pages weights in as they are read. Loading reads every weight once, to refuse NaN and
infinity by name (`check_numbers`): 0.2 s for the 1.5 GB base checkpoint once the file is cached.
The loader proves completeness (CONTRIBUTING.md habit 3): `expected_shapes` lists every parameter
the config implies, and `check_weights` refuses a missing key, an unknown key or a wrong shape by
name; `heads_in` says which task heads a checkpoint holds. For tests, benchmarks and running
offline, `random_weights` and `save_random_checkpoint` make a checkpoint of noise without torch.
`write_checkpoint` saves one (BridgeTowerModel.save_pretrained); `to_flat` undoes `to_tree`.
"""

import json
import mmap
import os
import re
import shutil
from pathlib import Path

import numpy as np


class WeightsError(ValueError):
    """A checkpoint whose files or tensors do not fit the model."""


# safetensors dtype names -> NumPy dtypes we can view the bytes as.
_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": np.uint16}


def read_safetensors(path):
    """{key: array} of one .safetensors file, memory-mapped (read-only views, no copy).

    The `safetensors` library first validates the file (header, offsets, size); we then map the
    file ourselves because its NumPy reader copies every tensor into memory, which for the base
    checkpoint means 1.3 GB and a second of reading before the first forward pass.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e}); "
                           "it may be truncated or of another format") from None
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
    start = 8 + header_len  # tensor offsets count from the end of the header
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise WeightsError(f"{path}: tensor {key} has dtype {info['dtype']}, which minibridge cannot read")
        dtype = np.dtype(_DTYPES[info["dtype"]])
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.frombuffer(buf, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin)
        out[key] = _float32(arr.reshape(shape), info["dtype"])
    return out


def _float32(arr, dtype_name):
    """Float tensors as float32 (the model's dtype); F32 stays a zero-copy view."""
    if dtype_name == "BF16":  # bfloat16 is the top half of a float32
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if dtype_name in ("F16", "F64"):
        return arr.astype(np.float32)
    return arr


def read_checkpoint(folder):
    """{key: array} of a checkpoint folder: model.safetensors, or a sharded model.safetensors.index.json."""
    folder = Path(folder)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if index.is_file():
        weight_map = read_index(index)
        out = {}
        for shard in sorted(set(weight_map.values())):
            tensors = read_safetensors(folder / shard)
            out.update({k: v for k, v in tensors.items() if weight_map.get(k) == shard})
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise WeightsError(f"{index} lists tensors that its shards do not hold, e.g. {missing[:3]}")
        return out
    raise WeightsError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def read_index(index):
    """The weight_map {tensor name: shard file name} of a model.safetensors.index.json; each shard a plain
    file name beside the index (WeightsError otherwise)."""
    try:
        content = json.loads(index.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise WeightsError(f"{index} is not UTF-8 text ({e}); expected a safetensors index (JSON)") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{index} is not valid JSON ({e}); expected a safetensors index") from None
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise WeightsError(f'{index}: expected an object with a "weight_map" of tensor name -> shard file name, '
                           f"found {type(weight_map if isinstance(content, dict) else content).__name__}")
    for shard in weight_map.values():
        # subtle: by name, not by resolving: in the Hugging Face cache every shard is a symlink to
        # ../../blobs, while a name such as "../x" or "/x" would make the index read files it does not own.
        if not (isinstance(shard, str) and shard not in ("", ".", "..") and Path(shard).name == shard
                and "\\" not in shard and "\0" not in shard):
            raise WeightsError(f"{index} names shard {shard!r}; expected a plain file name in {index.parent} "
                               "(no folders, no '..', not absolute)")
    return weight_map


# ---- what the config implies ------------------------------------------------------------------

HEADS = ("model", "itm", "mlm", "itc")


def expected_shapes(cfg, head="model"):
    """{key: shape} of every parameter of BridgeTowerModel (unprefixed) plus the given head's (bridgetower.md §7.4)."""
    t, v, D, N = cfg.text_config, cfg.vision_config, cfg.hidden_size, cfg.num_hidden_layers
    Dt, Dv, F = t.hidden_size, v.hidden_size, t.intermediate_size
    s = {}

    def lin(name, n_out, n_in, bias=True):
        s[f"{name}.weight"] = (n_out, n_in)
        if bias:
            s[f"{name}.bias"] = (n_out,)

    def ln(name, n):
        s[f"{name}.weight"] = (n,)
        s[f"{name}.bias"] = (n,)

    def bert_layer(name, cross):
        for part in ("attention",) + (("crossattention",) if cross else ()):
            for proj in ("query", "key", "value"):
                lin(f"{name}.{part}.self.{proj}", Dt, Dt)
            lin(f"{name}.{part}.output.dense", Dt, Dt)
            ln(f"{name}.{part}.output.LayerNorm", Dt)
        lin(f"{name}.intermediate.dense", F, Dt)
        lin(f"{name}.output.dense", Dt, F)
        ln(f"{name}.output.LayerNorm", Dt)

    # vision tower (CLIP ViT)
    vis = "vision_model.visual"
    s[f"{vis}.embeddings.class_embedding"] = (Dv,)
    s[f"{vis}.embeddings.patch_embedding.weight"] = (Dv, v.num_channels, v.patch_size, v.patch_size)
    s[f"{vis}.embeddings.position_embedding.weight"] = (v.num_positions, Dv)
    ln(f"{vis}.ln_pre", Dv)
    ln(f"{vis}.ln_post", Dv)
    for i in range(v.num_hidden_layers):
        blk = f"{vis}.transformer.resblocks.{i}"
        s[f"{blk}.attn.in_proj_weight"] = (3 * Dv, Dv)
        s[f"{blk}.attn.in_proj_bias"] = (3 * Dv,)
        lin(f"{blk}.attn.out_proj", Dv, Dv)
        ln(f"{blk}.ln_1", Dv)
        lin(f"{blk}.mlp.c_fc", 4 * Dv, Dv)
        lin(f"{blk}.mlp.c_proj", Dv, 4 * Dv)
        ln(f"{blk}.ln_2", Dv)
    if not v.share_layernorm:  # present in such checkpoints, never used by BridgeTowerModel
        for i in range(v.num_hidden_layers):
            ln(f"{vis}.ln_separate.{i}", Dv)

    # text tower (RoBERTa)
    s["text_model.embeddings.word_embeddings.weight"] = (t.vocab_size, Dt)
    s["text_model.embeddings.position_embeddings.weight"] = (t.max_position_embeddings, Dt)
    s["text_model.embeddings.token_type_embeddings.weight"] = (t.type_vocab_size, Dt)
    ln("text_model.embeddings.LayerNorm", Dt)
    for i in range(t.num_hidden_layers):
        bert_layer(f"text_model.encoder.layer.{i}", cross=False)

    # bridges and cross-modal layers
    if cfg.share_cross_modal_transformer_layers:
        lin("cross_modal_text_transform", D, Dt)
        lin("cross_modal_image_transform", D, Dv)
    else:
        for i in range(N):
            lin(f"cross_modal_text_transform.{i}", D, Dt)
            lin(f"cross_modal_image_transform.{i}", D, Dv)
    s["token_type_embeddings.weight"] = (2, D)
    ln("cross_modal_text_layernorm", D)
    ln("cross_modal_image_layernorm", D)
    for side in ("text", "image"):
        for i in range(N - 1):
            ln(f"cross_modal_{side}_link_tower.{i}.LayerNorm", D)
            if cfg.link_tower_type == "scaled_add":
                s[f"cross_modal_{side}_link_tower.{i}.scaled_factor"] = ()
            elif cfg.link_tower_type == "interpolate":
                s[f"cross_modal_{side}_link_tower.{i}.beta"] = ()
        for i in range(N):
            bert_layer(f"cross_modal_{side}_layers.{i}", cross=True)
        lin(f"cross_modal_{side}_pooler.dense", D, D)

    s.update(head_shapes(cfg, head))
    return s


def head_shapes(cfg, head):
    """{key: shape} of one head's own parameters (keys as stored: no `bridgetower.` prefix)."""
    D, V, C = cfg.hidden_size, cfg.text_config.vocab_size, cfg.contrastive_hidden_size
    if head == "model":
        return {}
    if head == "itm":
        return {"itm_score.fc.weight": (2, 2 * D), "itm_score.fc.bias": (2,)}
    if head == "mlm":
        s = {"mlm_score.transform.dense.weight": (D, D), "mlm_score.transform.dense.bias": (D,),
             "mlm_score.transform.LayerNorm.weight": (D,), "mlm_score.transform.LayerNorm.bias": (D,),
             "mlm_score.bias": (V,)}
        if not cfg.tie_word_embeddings:  # tied: the decoder *is* the word-embedding matrix
            s["mlm_score.decoder.weight"] = (V, D)
        return s
    if head == "itc":
        return {"itc_text_head.fc.weight": (C, D), "itc_text_head.fc.bias": (C,),
                "itc_image_head.fc.weight": (C, D), "itc_image_head.fc.bias": (C,),
                "itc_cross_modal_head.fc.weight": (C, 2 * D), "itc_cross_modal_head.fc.bias": (C,),
                "logit_scale": ()}
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


def heads_in(cfg, keys):
    """The task heads ("itm", "mlm", "itc") a checkpoint holds whole: all of their own keys are among
    `keys` (prefixed or not), and for "itc" the config gives its sizes. Shapes are `check_weights`' job."""
    keys = {k.removeprefix("bridgetower.") for k in keys}
    return tuple(h for h in HEADS if h != "model" and (h != "itc" or cfg.contrastive_hidden_size is not None)
                 and set(head_shapes(cfg, h)) <= keys)


# Keys a checkpoint may hold that no minibridge class reads. Anything else unexpected is an error.
_ALLOWED_EXTRA = re.compile(
    r"text_model\.pooler\.dense\.(weight|bias)"  # RoBERTa's pooler: built, saved, never used (bridgetower.md §3)
    r"|(text_model|vision_model\.visual)\.embeddings\.(position_ids|token_type_ids)"  # legacy buffers
    r"|(itm_score|mlm_score|itc_\w+_head)\..+|logit_scale"  # a sibling head: checkpoints train several
)


def check_weights(flat, cfg, head="model", source="checkpoint"):
    """The checkpoint's tensors, unprefixed, checked against `expected_shapes`; raises WeightsError.

    Accepts keys with and without the `bridgetower.` prefix that the head classes add (bridgetower.md §7).
    """
    weights = {}
    for key, arr in flat.items():
        key = key.removeprefix("bridgetower.")
        if key in weights:
            raise WeightsError(f"{source}: {key} appears both with and without the 'bridgetower.' prefix")
        weights[key] = arr
    if head == "mlm" and cfg.tie_word_embeddings:
        weights.pop("mlm_score.decoder.weight", None)  # if saved at all, it is a copy of the embeddings

    expected = expected_shapes(cfg, head)
    own = tuple(k.split(".")[0] for k in head_shapes(cfg, head))  # this head's prefixes: no unknown keys there
    missing = [k for k in expected if k not in weights]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise WeightsError(f"{source} is missing {len(missing)} tensor(s) that the config implies: "
                           + ", ".join(f"{k} {expected[k]}" for k in missing[:5]) + more)
    unexpected = [k for k in weights if k not in expected
                  and (not _ALLOWED_EXTRA.fullmatch(k) or k.split(".")[0] in own)]
    if unexpected:
        raise WeightsError(f"{source} holds tensor(s) the config does not account for: "
                           + ", ".join(f"{k} {tuple(weights[k].shape)}" for k in unexpected[:5])
                           + ("; is it a BridgeTower checkpoint of this config?"))
    for key, shape in expected.items():
        found = tuple(weights[key].shape)
        if found != shape:
            raise WeightsError(f"{source}: {key} has shape {found}, the config implies {shape}")
    return check_numbers({k: weights[k] for k in expected}, source)


def check_numbers(weights, source="checkpoint"):
    """The parameters as finite float32 arrays: other floats cast, integer/bool or NaN/Inf refused by name.

    Float32 stays as is (a memory-mapped view); float16/bfloat16/float64 become float32 (read_safetensors
    widens bf16 and f16 already). Integers would crash in a ufunc later, or turn the outputs into float64.
    """
    not_float = [k for k, a in weights.items() if not np.issubdtype(a.dtype, np.floating)]
    if not_float:
        raise WeightsError(f"{source}: parameters must be floating point; "
                           + ", ".join(f"{k} ({weights[k].dtype})" for k in not_float[:5])
                           + (f" (and {len(not_float) - 5} more)" if len(not_float) > 5 else "") + " are not")
    weights = {k: a if a.dtype == np.float32 else a.astype(np.float32) for k, a in weights.items()}
    bad = []
    for key, a in weights.items():
        # subtle: a float32 sum is NaN or Inf when any element is, reads each byte once and makes no
        # temporary (~0.1 s for the 1.3 GB base checkpoint). It can also overflow to Inf on large finite
        # values, so only a non-finite sum is followed by the exact count.
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.sum(a)
        if not np.isfinite(total):
            nonfinite = ~np.isfinite(a)
            if nonfinite.any():
                first = np.unravel_index(np.argmax(nonfinite), a.shape)
                bad.append(f"{key}: {np.count_nonzero(nonfinite)} of {a.size} values (first at "
                           f"{tuple(int(i) for i in first)}, {a[first]})")
    if bad:
        raise WeightsError(f"{source}: {len(bad)} parameter(s) hold NaN or infinite values: " + "; ".join(bad[:5])
                           + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))
    return weights


def to_tree(flat):
    """Dotted keys -> nested dicts, numbered segments -> lists: "a.0.b" -> tree["a"][0]["b"] (CONTRIBUTING.md habit 2)."""
    root = {}
    for key, value in flat.items():
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if not isinstance(node, dict):
        return node
    node = {k: _lists(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node):
        return [node[str(i)] for i in range(len(node))]
    return node


def to_flat(tree):
    """Nested dicts and lists -> dotted keys, the inverse of to_tree: tree["a"][0]["b"] -> "a.0.b"."""
    flat = {}

    def walk(node, key):
        if isinstance(node, (dict, list)):
            for k, v in (node.items() if isinstance(node, dict) else enumerate(node)):
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = node

    walk(tree, "")
    return flat


# ---- random weights: for tests, benchmarks and running offline ---------------------------------


def random_weights(cfg, heads=("itm", "mlm", "itc"), seed=0):
    """{key: float32 array} of the backbone and the given heads: noise around what training leaves.

    LayerNorm weights near 1, the contrastive logit_scale near its initial value, everything else
    near 0: matrices and embeddings with std 0.05, vectors and scalars 0.1 (uniform noise). Small weights keep activations small, so that LayerNorm's eps
    (1e-5) is visible at the parity tolerances. Every tensor is noise, LayerNorms included: a
    LayerNorm left at weight 1, bias 0 would hide a skipped or swapped LayerNorm. Keys unprefixed.
    subtle: np.random.RandomState's stream is frozen by NumPy's compatibility policy, and uniform
    draws are pure integer arithmetic, so these are the same numbers on every platform and version
    (the course's snapshots rely on it).
    """
    shapes = dict(expected_shapes(cfg, "model"))
    for head in heads:
        shapes.update(head_shapes(cfg, head))
    rng = np.random.RandomState(seed)
    flat = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = (rng.random_sample(shape) * 2 - 1) * 3**0.5  # uniform with unit std
        parts = key.split(".")
        if parts[-1] == "weight" and any("layernorm" in p.lower() or p.startswith("ln_") for p in parts):
            value = 1.0 + 0.1 * noise
        elif key == "logit_scale":  # a log-space scale: near its initial value, as after training starts
            value = cfg.logit_scale_init_value + 0.1 * noise
        else:
            value = (0.05 if len(shape) >= 2 else 0.1) * noise
        flat[key] = np.asarray(value, dtype=np.float32)
    return flat


_ARCHITECTURES = {"itm": "BridgeTowerForImageAndTextRetrieval", "mlm": "BridgeTowerForMaskedLM",
                  "itc": "BridgeTowerForContrastiveLearning"}


# The config.json key that marks a checkpoint of random_weights, so that nothing drawn or printed
# from it passes for a trained model's behaviour (the notebooks stamp their figures, infer says so).
RANDOM_MARK = "minibridge_random_weights"
RANDOM_NOTE = ("random weights made by minibridge (weights.random_weights): every output and picture of "
               "this checkpoint is noise, not what a trained BridgeTower computes")
# Either file set is enough for tokenizer.RobertaTokenizer.from_pretrained.
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


def random_mark(folder):
    """The note config.json carries when `folder` holds a checkpoint of random weights, else None."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    mark = config.get(RANDOM_MARK) if isinstance(config, dict) else None
    return mark.get("note", RANDOM_NOTE) if isinstance(mark, dict) else None


def check_tokenizer_dir(folder):
    """Path(folder) if it holds RoBERTa's tokenizer files (TOKENIZER_FILES), else FileNotFoundError."""
    folder = Path(folder)
    if not any(all((folder / name).is_file() for name in group) for group in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} holds no RoBERTa tokenizer files: expected vocab.json and merges.txt, "
                                "or tokenizer.json")
    return folder


def save_random_checkpoint(folder, config, heads=("itm", "mlm", "itc"), seed=0, tokenizer_dir=None):
    """Write a checkpoint of `random_weights` in the Hub layout, made without torch or the network.

    folder gets config.json (`config`, a config.json dict such as config.TINY or config.BASE, with
    "architectures" naming the heads and RANDOM_MARK saying it is noise), model.safetensors
    (backbone keys `bridgetower.`-prefixed, head keys not, as transformers saves a head class) and
    preprocessor_config.json; with `tokenizer_dir`, its RoBERTa tokenizer files (TOKENIZER_FILES:
    vocab.json + merges.txt, and tokenizer.json when there) are copied too. The outputs of such a
    model mean nothing. Returns the folder. (`minibridge random-checkpoint` is the command line.)
    """
    from .config import BridgeTowerConfig

    cfg = BridgeTowerConfig.from_dict(config)
    if "itc" in heads and (cfg.contrastive_hidden_size is None or cfg.logit_scale_init_value is None):
        raise ValueError("the itc head needs contrastive_hidden_size and logit_scale_init_value in the config")
    if tokenizer_dir is not None:
        tokenizer_dir = check_tokenizer_dir(tokenizer_dir)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    own = {k for h in heads for k in head_shapes(cfg, h)}
    tensors = {(k if k in own else "bridgetower." + k): v for k, v in random_weights(cfg, heads, seed).items()}
    write_safetensors(folder / "model.safetensors", tensors)

    written = dict(config, architectures=[_ARCHITECTURES[h] for h in heads], model_type="bridgetower")
    written[RANDOM_MARK] = {"seed": seed, "note": RANDOM_NOTE}
    (folder / "config.json").write_text(json.dumps(written, indent=2))
    size = cfg.vision_config.image_size
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": size}, "crop_size": {"shortest_edge": size},
         "size_divisor": min(32, size), "image_processor_type": "BridgeTowerImageProcessor"}, indent=2))
    if tokenizer_dir is not None:
        for name in {name for group in TOKENIZER_FILES for name in group}:
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, folder / name)  # contents only, not read-only modes
    return folder


def write_safetensors(path, tensors):
    """Write {name: array} to `path` as safetensors, with the "format": "pt" metadata that transformers
    requires, under a temporary name renamed at the end (never half a file), readable like any new file."""
    from safetensors.numpy import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    # subtle: safetensors writes each array's memory as it lies, so a strided view (a transpose) must be
    # made contiguous first, or its bytes would be saved in the wrong order. (Not np.ascontiguousarray,
    # which turns a 0-d array such as logit_scale into shape (1,).)
    tensors = {k: np.asarray(v, order="C") for k, v in tensors.items()}
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        make_ordinary(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_checkpoint(folder, config, tensors):
    """Write a checkpoint in the Hub layout: `config` (a config.json dict) and `tensors` ({name: array},
    saved as float32; NaN or infinity refused by name, as loading would) into `folder`. Returns the folder.

    The folder is made if need be. One that holds files but no BridgeTower checkpoint is refused
    (FileExistsError), so that nothing else is overwritten; a checkpoint's config.json and model.safetensors
    are replaced. Both files are written under temporary names and renamed at the end (the weights, then
    config.json), so a failure while writing leaves the folder as it was. The renames keep a model
    memory-mapped from the old file working. Then the old checkpoint's other weight files, which a loader
    could read instead of the new one, are removed: pytorch_model.bin, and a sharded index with the shards
    it names (STALE_WEIGHTS); a model memory-mapped from those shards keeps working.
    """
    folder = Path(folder)
    _check_save_folder(folder)
    tensors = check_numbers(tensors, source=f"the weights to save in {folder}")
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    config_tmp = folder / "config.json.partial"
    try:
        config_tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        write_safetensors(folder / "model.safetensors", tensors)
        config_tmp.replace(folder / "config.json")
    except BaseException:
        config_tmp.unlink(missing_ok=True)
        if made and not any(folder.iterdir()):
            folder.rmdir()
        raise
    # subtle: removed, not refused: the folder is a checkpoint being replaced, and the old weights left
    # beside the new are a second model, which transformers loads with use_safetensors=False (the .bin),
    # and an upload or another tool may take for the real one.
    _remove_stale_weights(folder)
    return folder


# A checkpoint's weight files other than model.safetensors: what write_checkpoint removes once it is written.
STALE_WEIGHTS = ("pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _remove_stale_weights(folder):
    """Remove STALE_WEIGHTS from `folder`, each index with the shards it names (read_index: plain names)."""
    stale = []
    for name in STALE_WEIGHTS:
        path = folder / name
        if name.endswith(".index.json") and path.is_file():
            try:
                stale += [folder / shard for shard in sorted(set(read_index(path).values()))]
            except WeightsError:
                pass  # an unreadable index names no shards; it goes, so nothing reads them
        stale.append(path)
    for path in stale:
        # never the file just written, nor anything but weight files (an index could name any file)
        weights = path.name in STALE_WEIGHTS or path.name.endswith((".bin", ".safetensors"))
        if weights and path.name != "model.safetensors" and path.is_file():
            try:
                path.unlink()
            except OSError as e:
                raise OSError(f"saved {folder / 'model.safetensors'}, but could not remove the old {path.name} "
                              f"beside it ({e.strerror}); delete it, or a loader may read the old weights") from e


def _check_save_folder(folder):
    """Refuse to save into a file, or into a folder of other files that holds no BridgeTower checkpoint."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; expected a folder to save the checkpoint in")
    if not folder.is_dir():
        return
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return
    what = f"{len(names)} file(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
    config = folder / "config.json"
    if not config.is_file():
        raise FileExistsError(f"{folder} holds {what} and no config.json; expected an empty folder or a "
                              "checkpoint folder to replace. Save into another folder, or empty this one.")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as e:  # not UTF-8 or not JSON; or JSON but not an object
        model_type = f"unreadable ({type(e).__name__})"
    if model_type != "bridgetower":
        raise FileExistsError(f"{config} is the config of another model (model_type {model_type!r}), expected "
                              '"bridgetower" to replace; save into another folder, or empty this one.')


def make_ordinary(path):
    """Give a file safetensors wrote (always private, 0o600) the mode any new file gets: 0o666 less the
    umask, usually 0o644, so it reads like the checkpoint's other files."""
    path.chmod(0o666 & ~_umask())


def _umask():
    try:  # Linux shows it; elsewhere reading the umask means setting it
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        # subtle: for the moment between these two calls the umask is 0 for every thread of the process
        umask = os.umask(0o022)
        os.umask(umask)
        return umask
