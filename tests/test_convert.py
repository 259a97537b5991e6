"""convert: pytorch_model.bin read without torch, bit for bit; a pickle that runs code is refused.

The parity test writes a tiny BridgeTower checkpoint with torch, then reads and converts it in a
child process in which `import torch` fails, so nothing can quietly fall back on torch.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minibridge as mb
from minibridge.config import TINY
from minibridge.convert import ConvertError, convert_folder, ensure_safetensors, read_torch_bin

ROOT = Path(__file__).resolve().parents[1]

# The child: torch blocked before anything is imported, then read, convert, load and run.
CHILD = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None  # `import torch` now raises ImportError
    import numpy as np
    import minibridge as mb
    from minibridge.convert import convert_folder, read_torch_bin

    folder, out = sys.argv[1], sys.argv[2]
    np.savez(f"{out}/tensors.npz", **read_torch_bin(f"{folder}/pytorch_model.bin"))
    convert_folder(folder)
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    np.save(f"{out}/logits.npy", model(**dict(np.load(f"{out}/inputs.npz"))).logits)
    assert sys.modules["torch"] is None, "something imported torch"
""")


def run_without_torch(script, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """The same tiny ITM model saved twice: by torch.save as a .bin, and by transformers as safetensors."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import reference as ref

    cfg = TINY
    model = ref.build(cfg, ["itm", "mlm"], seed=7)["itm"]
    root = tmp_path_factory.mktemp("tiny")
    as_bin, as_safetensors = root / "bin", root / "safetensors"
    model.save_pretrained(as_safetensors)  # transformers 5 writes safetensors only (safe_serialization is gone)
    as_bin.mkdir()
    (as_bin / "config.json").write_bytes((as_safetensors / "config.json").read_bytes())
    state = model.state_dict()
    torch.save(state, as_bin / "pytorch_model.bin")
    inputs = ref.make_inputs(cfg, [7, 4], seed=3)
    return as_bin, as_safetensors, {k: v.numpy() for k, v in state.items()}, inputs


def test_bin_without_torch_is_bit_identical_and_loads(tiny_checkpoints, tmp_path):
    as_bin, as_safetensors, state, inputs = tiny_checkpoints
    np.savez(tmp_path / "inputs.npz", **inputs)
    run_without_torch(CHILD, as_bin, tmp_path)

    mine = dict(np.load(tmp_path / "tensors.npz"))
    assert sorted(mine) == sorted(state)
    for key, ref in state.items():
        assert mine[key].dtype == ref.dtype, f"{key}: dtype mine {mine[key].dtype} vs torch {ref.dtype}"
        np.testing.assert_array_equal(mine[key], ref, err_msg=key)

    from safetensors import safe_open
    with safe_open(str(as_bin / "model.safetensors"), framework="numpy") as f:
        assert sorted(f.keys()) == sorted(state)  # the checkpoint's own names
        assert f.metadata() == {"format": "pt"}

    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(as_safetensors)
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), model(**inputs).logits)


def test_storage_layouts_and_dtypes(tmp_path):
    """Offsets, strides, shared storages, every dtype; tied tensors become separate copies in the file."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    tensors = {
        "w": w, "tied": w, "transposed": w.t(), "rows": w[2:5], "column": w[:, 1], "flat_view": w.view(-1)[3:11],
        "f16": torch.randn(3, 5, generator=g).half(), "bf16": torch.randn(4, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(), "i64": torch.arange(7), "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16), "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3),
        "parameter": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    }
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    mine = read_torch_bin(tmp_path / "pytorch_model.bin")
    assert list(mine) == list(tensors)
    for key, t in tensors.items():
        ref = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()  # bf16 -> f32
        assert mine[key].dtype == ref.dtype and mine[key].shape == ref.shape, key
        np.testing.assert_array_equal(mine[key], ref, err_msg=key)

    target = convert_folder(tmp_path)
    from safetensors.numpy import load_file
    written = load_file(str(target))
    for key in tensors:
        np.testing.assert_array_equal(written[key], mine[key], err_msg=key)
    header = json.loads(target.read_bytes()[8:8 + int.from_bytes(target.read_bytes()[:8], "little")])
    assert header["w"]["data_offsets"] != header["tied"]["data_offsets"]  # two copies, not one shared


def test_big_endian_archive(tmp_path):
    """byteorder "big" (torch.save on a big-endian machine): bytes swapped back to native."""
    torch = pytest.importorskip("torch")
    w = torch.randn(3, 2)
    torch.save({"w": w}, tmp_path / "little.bin")
    with zipfile.ZipFile(tmp_path / "little.bin") as src, zipfile.ZipFile(tmp_path / "big.bin", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(name, data)
    np.testing.assert_array_equal(read_torch_bin(tmp_path / "big.bin")["w"], w.numpy())


# ---- refusing what must not be read -----------------------------------------------------------------


class _RunsCommand:
    """What a malicious checkpoint does: unpickling it calls os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_torch_like_zip(path, payload):
    """A zip laid out as torch.save writes one, holding `payload` as its data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes both reach find_class
def test_pickle_that_runs_code_is_refused(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    payload = pickle.dumps({"weight": _RunsCommand(f"touch {marker}")}, protocol=protocol)
    write_torch_like_zip(tmp_path / "pytorch_model.bin", payload)
    (tmp_path / "config.json").write_text("{}")

    with pytest.raises(ConvertError, match=r"tried to run code: its pickle asks for (posix|os|nt)\.system"):
        read_torch_bin(tmp_path / "pytorch_model.bin")
    with pytest.raises(ConvertError, match="tried to run code"):
        convert_folder(tmp_path)
    assert not marker.exists(), "the command in the pickle was executed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "pytorch_model.bin"]  # nothing written


def test_the_malicious_payload_is_live(tmp_path):
    """Control: an ordinary unpickler does run it, so the refusal above is what protects us."""
    marker = tmp_path / "MARKER"
    pickle.loads(pickle.dumps(_RunsCommand(f"touch {marker}")))
    assert marker.exists()


def test_not_a_checkpoint(tmp_path):
    html = tmp_path / "pytorch_model.bin"
    html.write_text("<!DOCTYPE html><html>Rate limited</html>")
    with pytest.raises(ConvertError, match="is not a PyTorch checkpoint"):
        read_torch_bin(html)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ConvertError, match="not a torch checkpoint: expected one <prefix>/data.pkl"):
        read_torch_bin(other)
    with pytest.raises(ConvertError, match="has no pytorch_model.bin"):
        convert_folder(tmp_path / "nowhere")


def test_truncated_file_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    full = tmp_path / "full.bin"
    torch.save({"w": torch.randn(64, 64)}, full)
    data = full.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConvertError, match="damaged or truncated"):
        read_torch_bin(cut)


def test_legacy_format_is_refused_plainly(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.randn(2)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(ConvertError, match="legacy"):
        read_torch_bin(tmp_path / "old.bin")


# ---- writing atomically ------------------------------------------------------------------------------


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.randn(3)}, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").write_bytes(b"the previous, complete file")

    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a fi")
        raise OSError("No space left on device")

    import safetensors.numpy
    monkeypatch.setattr(safetensors.numpy, "save_file", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        convert_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "pytorch_model.bin"]
    assert (tmp_path / "model.safetensors").read_bytes() == b"the previous, complete file"


def test_ensure_safetensors_converts_once(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.randn(3)}, tmp_path / "pytorch_model.bin")
    assert ensure_safetensors(tmp_path) == tmp_path
    made = (tmp_path / "model.safetensors").stat().st_mtime_ns
    (tmp_path / "pytorch_model.bin").write_bytes(b"no longer read")  # a second call must not read it
    ensure_safetensors(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == made
