"""Hostile checkpoint files (issue 11): each test builds the file itself, feeds it, and checks the refusal.

Conversion (minibridge.convert): zip bombs and forged strides stay small, refusals leave nothing behind,
reserved names, no silent overwrite. Loading (minibridge.weights): shard names that leave the folder,
parameters that are not floats or not finite. The unpickler: every dangerous global we can name, through
every opcode that reaches a global, is refused, and nothing runs.

The archives are built by hand (pickle opcodes and zip records as bytes), so that they can lie.
"""

import copyreg
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minibridge as mb
from minibridge import convert
from minibridge.config import TINY
from minibridge.convert import ConvertError, convert_folder, ensure_safetensors, read_torch_bin
from minibridge.weights import WeightsError, read_checkpoint, save_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


# ---- pickles by hand ---------------------------------------------------------------------------------


def text(s):
    """BINUNICODE: a str."""
    data = s.encode("utf-8", "surrogatepass")
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def integer(n):
    """BININT for what fits 4 bytes, else LONG1."""
    if -2**31 <= n < 2**31:
        return pickle.BININT + struct.pack("<i", n)
    data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def value(obj):
    """A str, int, tuple or list of them, as opcodes."""
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, int):
        return integer(obj)
    if isinstance(obj, tuple):
        return pickle.MARK + b"".join(map(value, obj)) + pickle.TUPLE
    if isinstance(obj, list):
        return pickle.EMPTY_LIST + pickle.MARK + b"".join(map(value, obj)) + pickle.APPENDS
    raise TypeError(obj)


def global_(module, name):
    """GLOBAL: what torch.save (protocol 2) writes to name a function or class."""
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def tensor(storage_key, numel, offset, size, stride, storage_type="FloatStorage"):
    """The opcodes of one tensor, as torch.save writes it: _rebuild_tensor_v2(persistent storage, ...)."""
    pid = (pickle.MARK + text("storage") + global_("torch", storage_type) + text(storage_key) + text("cpu")
           + integer(numel) + pickle.TUPLE + pickle.BINPERSID)
    return (global_("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + pid + integer(offset) + value(tuple(size))
            + value(tuple(stride)) + pickle.NEWFALSE + global_("collections", "OrderedDict") + pickle.EMPTY_TUPLE
            + pickle.REDUCE + pickle.TUPLE + pickle.REDUCE)


def state_dict(tensors):
    """data.pkl of {key: opcodes of its tensor}: PROTO 2, a dict, SETITEMS, STOP."""
    items = b"".join(text(k) + t for k, t in tensors.items())
    return b"\x80\x02" + pickle.EMPTY_DICT + pickle.MARK + items + pickle.SETITEMS + pickle.STOP


# ---- zip archives by hand ------------------------------------------------------------------------------


def deflated_zeros(size):
    """(deflate stream, CRC-32) of `size` zero bytes (a multiple of 1 MiB), made in milliseconds.

    subtle: after a full flush, deflate starts afresh, so each further MiB of zeros compresses to the
    same bytes: 1 GiB of zeros is ~1 MB of stream, built by repeating one block.
    """
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(mib, crc)
    return first + block * ((size >> 20) - 1) + c.flush(), crc


def write_zip(path, entries):
    """A zip archive of `entries`: (name, bytes) stored, or (name, stream, declared size, crc) deflated.

    Written record by record (local headers, central directory, end record), so that an entry can
    declare any size and hold any stream; zipfile itself would compute honest sizes.
    """
    local, central = bytearray(), bytearray()
    for entry in entries:
        name = entry[0].encode()
        if len(entry) == 2:
            data, method, size, crc = entry[1], zipfile.ZIP_STORED, len(entry[1]), zlib.crc32(entry[1])
        else:
            (_, data, size, crc), method = entry, zipfile.ZIP_DEFLATED
        fields = (20, 0, method, 0, 0x21, crc, len(data), size, len(name))  # version, flags, method, time, date
        central += struct.pack("<4s2H" "4H3L" "5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data),
                               size, len(name), 0, 0, 0, 0, 0, len(local)) + name
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", *fields, 0) + name + data
    n = len(entries)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), len(local), 0)
    Path(path).write_bytes(bytes(local + central + end))
    return path


def torch_zip(path, pickled, storages=(), byteorder=(("archive/byteorder", b"little"),)):
    """A torch.save-like archive: archive/data.pkl = `pickled`, then its storage entries (name, ...) as given."""
    return write_zip(path, [("archive/data.pkl", pickled), *byteorder, *storages])


def floats(*values):
    return np.array(values, np.float32).tobytes()


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


# ---- row 1: limits from the file itself --------------------------------------------------------------------


@pytest.mark.parametrize("size, stride, what", [
    ((20000, 20000), (0, 0), "reuses elements of its storage"),  # 6 floats -> 1.6 GB before
    ((100000, 100000), (0, 0), "reuses elements of its storage"),  # a raw MemoryError before
    ((4, 3), (0, 1), "reuses elements"),  # an expanded tensor
    ((3, 3), (1, 1), "reuses elements"),  # overlapping rows: 9 elements from 5
    ((2, 3), (2, 1), "reuses elements"),  # rows that overlap by one element
    ((3,), (-1,), "has a negative stride"),  # torch makes none
    ((3, 2), (2, 1), "does not fit its storage of 6 elements"),  # offset 1: one element past the end
    ((100000, 100000), (100000, 1), "does not fit its storage of 6 elements"),
])
def test_a_tensor_may_use_only_distinct_elements_of_its_storage(tmp_path, size, stride, what):
    offset = 1 if size == (3, 2) else 0
    pickled = state_dict({"w": tensor("0", 6, offset, size, stride)})
    bin_path = torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", floats(*range(6)))])
    with pytest.raises(ConvertError) as e:
        read_torch_bin(bin_path)
    assert str(bin_path) in str(e.value) and f"tensor 'w' of size {size}, stride {stride}" in str(e.value)
    assert what in str(e.value)
    with pytest.raises(ConvertError, match=what):
        convert_folder(tmp_path)
    assert listing(tmp_path) == ["pytorch_model.bin"]  # nothing written, nothing left


def test_ordinary_views_still_read(tmp_path):
    """Control for the layout rule: slices, transposes, offsets, size-1 dims with any stride, empty tensors."""
    w = np.arange(24, dtype=np.float32).reshape(6, 4)
    pickled = state_dict({"t": tensor("0", 24, 0, (4, 6), (1, 4)), "rows": tensor("0", 24, 8, (3, 4), (4, 1)),
                          "col": tensor("0", 24, 1, (6,), (4,)), "one": tensor("0", 24, 5, (1, 3), (0, 1)),
                          "empty": tensor("0", 24, 0, (0, 5), (0, 0))})
    mine = read_torch_bin(torch_zip(tmp_path / "x.bin", pickled, [("archive/data/0", w.tobytes())]))
    wants = {"t": w.T, "rows": w[2:5], "col": w[:, 1], "one": w.ravel()[5:8][None], "empty": np.zeros((0, 5))}
    for key, want in wants.items():
        np.testing.assert_array_equal(mine[key], want, err_msg=key)


def test_storage_entry_must_hold_exactly_its_declared_elements(tmp_path):
    pickled = state_dict({"w": tensor("0", 6, 0, (6,), (1,))})
    for data, holds in ((floats(*range(5)), "20"), (floats(*range(8)), "32")):
        bin_path = torch_zip(tmp_path / "x.bin", pickled, [("archive/data/0", data)])
        with pytest.raises(ConvertError, match=rf"x\.bin: storage entry archive/data/0 holds {holds} bytes; "
                                               r"6 x FloatStorage need exactly 24"):
            read_torch_bin(bin_path)


def test_tied_names_cannot_multiply_the_output(tmp_path):
    """One stored 256 KiB storage under 64 names would write 16 MiB: over 4x the file, refused before writing."""
    n = 1 << 16
    pickled = state_dict({f"w{i}": tensor("0", n, 0, (n,), (1,)) for i in range(64)})
    torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", bytes(4 * n))])
    with pytest.raises(ConvertError, match=r"would write 16,777,216 bytes of tensors, \d+ times the file's own "
                                           r"[\d,]+ bytes; minibridge refuses more than 4 times.*zip bomb"):
        convert_folder(tmp_path)
    assert listing(tmp_path) == ["pytorch_model.bin"]


def test_max_growth_is_settable(tmp_path, monkeypatch):
    n = 1 << 16
    pickled = state_dict({f"w{i}": tensor("0", n, 0, (n,), (1,)) for i in range(8)})  # 2 MiB from ~260 KB
    bin_path = torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", bytes(4 * n))])
    with pytest.raises(ConvertError, match="raise minibridge.convert.MAX_GROWTH"):
        read_torch_bin(bin_path)
    monkeypatch.setattr(convert, "MAX_GROWTH", 10)
    assert len(read_torch_bin(bin_path)) == 8


def test_a_pickle_that_claims_a_huge_object_is_a_clear_error(tmp_path):
    """BINBYTES8 announcing 1 TiB: the unpickler allocates first, and its raw MemoryError is not let through."""
    pickled = b"\x80\x04" + pickle.BINBYTES8 + struct.pack("<Q", 1 << 40) + b"tiny"
    bin_path = torch_zip(tmp_path / "pytorch_model.bin", pickled)
    # subtle: which error depends on the machine: without memory overcommit the 1 TiB allocation fails
    # (MemoryError); with it, or where pickle reads big objects in pieces, the 4 bytes there run out first.
    with pytest.raises(ConvertError, match=r"pytorch_model\.bin: (ran out of memory while reading it|is a damaged or truncated)"):
        read_torch_bin(bin_path)


def test_bad_byteorder_is_named(tmp_path):
    pickled = state_dict({"w": tensor("0", 1, 0, (1,), (1,))})
    bin_path = torch_zip(tmp_path / "x.bin", pickled, [("archive/data/0", floats(1))],
                         byteorder=[("archive/byteorder", b"middle")])
    with pytest.raises(ConvertError, match=r"x\.bin: archive/byteorder should say little or big, it says b'middle'"):
        read_torch_bin(bin_path)


# Each bomb is converted in a child process, which reports its peak memory: VmHWM, the high-water mark
# of its resident memory. subtle: not getrusage's ru_maxrss, which a child inherits from the process
# that forked it (pytest, at hundreds of MiB once torch is imported).
MEASURE = textwrap.dedent("""
    import json, sys
    from minibridge.convert import ConvertError, convert_folder
    try:
        convert_folder(sys.argv[1])
        error = None
    except ConvertError as e:
        error = str(e)
    status = open("/proc/self/status").read()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps({"error": error, "peak_mib": peak_kib / 1024}))
""")
PEAK_MIB = 100  # python + numpy + minibridge is ~35-45 MiB; reading a bomb would be 1024 MiB and up


def convert_in_child(folder):
    if not Path("/proc/self/status").is_file():
        pytest.skip("measures peak memory through /proc/self/status (Linux)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", MEASURE, str(folder)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]  # a raw traceback or a MemoryError fails here
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def gib_of_zeros():
    return deflated_zeros(GiB)  # ~1 MB of stream


def bomb(kind, zeros):
    """(data.pkl, storage entries, byteorder entries) of a ~1 MB .bin that inflates to 1 GiB somewhere."""
    stream, crc = zeros
    little = [("archive/byteorder", b"little")]
    small = state_dict({"w": tensor("0", 6, 0, (6,), (1,))})
    if kind == "honest storage":  # a 16384 x 16384 tensor whose storage entry is 1 GiB of deflated zeros
        pickled = state_dict({"w": tensor("0", GiB // 4, 0, (16384, 16384), (16384, 1))})
        return pickled, [("archive/data/0", stream, GiB, crc)], little
    if kind == "oversized storage":  # 6 floats declared by the pickle, 1 GiB by the zip entry
        return small, [("archive/data/0", stream, GiB, crc)], little
    if kind == "lying zip header":  # the entry declares 24 bytes (CRC of the whole), its stream inflates to 1 GiB
        return small, [("archive/data/0", stream, 24, crc)], little
    if kind == "lying zip header, forged CRC":  # the same, with the CRC of the 24 bytes declared
        return small, [("archive/data/0", stream, 24, zlib.crc32(bytes(24)))], little
    if kind == "pickle":  # data.pkl itself is the bomb
        return None, [], little
    if kind == "byteorder":
        return small, [("archive/data/0", floats(*range(6)))], [("archive/byteorder", stream, GiB, crc)]
    raise ValueError(kind)


@pytest.mark.parametrize("kind, refusal", [
    ("honest storage", r"would read 1,073,741,824 bytes of tensors, .* times the file's own"),
    ("oversized storage", r"storage entry archive/data/0 holds 1,073,741,824 bytes; 6 x FloatStorage need exactly 24"),
    ("lying zip header", r"zip entry archive/data/0 declares 24 bytes but its stream of 1,0\d\d,\d\d\d bytes "
                         r"would inflate to more: a zip bomb\?"),
    ("lying zip header, forged CRC", r"zip entry archive/data/0 declares 24 bytes but its stream"),
    ("pickle", r"its archive/data.pkl claims 1,073,741,824 bytes, more than 4 times the file"),
    ("byteorder", r"archive/byteorder should say little or big"),
])
def test_zip_bombs_are_refused_in_little_memory(tmp_path, gib_of_zeros, kind, refusal):
    pickled, storages, byteorder = bomb(kind, gib_of_zeros)
    entries = [("archive/data.pkl", gib_of_zeros[0], GiB, gib_of_zeros[1]) if pickled is None
               else ("archive/data.pkl", pickled), *byteorder, *storages]
    write_zip(tmp_path / "pytorch_model.bin", entries)
    assert (tmp_path / "pytorch_model.bin").stat().st_size < 1_100_000
    result = convert_in_child(tmp_path)
    assert result["error"] is not None, f"the {kind} bomb was converted"
    assert str(tmp_path / "pytorch_model.bin") in result["error"]
    assert re.search(refusal, result["error"]), result["error"]
    assert result["peak_mib"] < PEAK_MIB, f"peak memory {result['peak_mib']:.0f} MiB"
    assert listing(tmp_path) == ["pytorch_model.bin"]


@pytest.mark.parametrize("size", [(20000, 20000), (100000, 100000)])
def test_zero_stride_bomb_in_little_memory(tmp_path, size):
    pickled = state_dict({"w": tensor("0", 6, 0, size, (0, 0))})
    bin_path = torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", floats(*range(6)))])
    assert bin_path.stat().st_size < 1000
    result = convert_in_child(tmp_path)
    assert "reuses elements of its storage" in result["error"] and result["peak_mib"] < PEAK_MIB
    assert listing(tmp_path) == ["pytorch_model.bin"]


# ---- row 2: nothing left behind, ordinary permissions -------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_model_safetensors_gets_ordinary_permissions(tmp_path, umask):
    pickled = state_dict({"w": tensor("0", 2, 0, (2,), (1,))})
    torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", floats(1, 2))])
    old = os.umask(umask)
    try:
        target = convert_folder(tmp_path)
        (tmp_path / "other").write_text("an ordinary file, for comparison")
    finally:
        os.umask(old)
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~umask) == oct((tmp_path / "other").stat().st_mode & 0o777)
    np.testing.assert_array_equal(load_file(target)["w"], [1, 2])


def test_a_failure_after_writing_leaves_nothing(tmp_path, monkeypatch):
    """Out of memory inside safetensors: a ConvertError, and neither the partial file nor a target."""
    pickled = state_dict({"w": tensor("0", 2, 0, (2,), (1,))})
    torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", floats(1, 2))])

    def runs_out(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a fi")
        raise MemoryError

    import safetensors.numpy
    monkeypatch.setattr(safetensors.numpy, "save_file", runs_out)
    with pytest.raises(ConvertError, match=r"pytorch_model\.bin: ran out of memory while writing model\.safetensors"):
        convert_folder(tmp_path)
    assert listing(tmp_path) == ["pytorch_model.bin"]


# ---- row 3: names safetensors reserves -------------------------------------------------------------------------


@pytest.mark.parametrize("key, message", [
    ("__metadata__", "a tensor is named '__metadata__', a name safetensors reserves"),
    ("bad\ud800name", r"tensor name 'bad\\ud800name' is not valid text \(UTF-8\)"),
])
def test_names_safetensors_cannot_hold_are_refused(tmp_path, key, message):
    pickled = state_dict({"ok": tensor("0", 2, 0, (2,), (1,)), key: tensor("0", 2, 0, (2,), (1,))})
    torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", floats(1, 2))])
    with pytest.raises(ConvertError, match=message):
        convert_folder(tmp_path)
    assert listing(tmp_path) == ["pytorch_model.bin"]
    with pytest.raises(ConvertError, match=message):
        ensure_safetensors(tmp_path)  # what from_pretrained calls: refused every time, never a broken file
    assert listing(tmp_path) == ["pytorch_model.bin"]


# ---- row 4: no silent overwrite -----------------------------------------------------------------------------------


def test_an_existing_different_model_safetensors_is_kept_unless_forced(tmp_path):
    pickled = state_dict({"w": tensor("0", 2, 0, (2,), (1,))})
    torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", floats(1, 2))])
    save_file({"w": np.array([7, 8], np.float32)}, str(tmp_path / "model.safetensors"))
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(ConvertError) as e:
        convert_folder(tmp_path)
    message = str(e.value)
    assert str(tmp_path / "model.safetensors") in message and "already exists and differs" in message
    assert "force=True" in message and "--force" in message
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert listing(tmp_path) == ["model.safetensors", "pytorch_model.bin"]  # no partial file either

    convert_folder(tmp_path, force=True)
    np.testing.assert_array_equal(load_file(tmp_path / "model.safetensors")["w"], [1, 2])
    made = (tmp_path / "model.safetensors").stat()
    convert_folder(tmp_path)  # the same conversion again: nothing to lose, so no error, file untouched
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == made.st_mtime_ns
    assert listing(tmp_path) == ["model.safetensors", "pytorch_model.bin"]


def test_the_convert_command_keeps_a_different_file_unless_forced(tmp_path):
    """Before: `minibridge convert FOLDER` silently replaced a different model.safetensors (exit 0)."""
    pickled = state_dict({"w": tensor("0", 2, 0, (2,), (1,))})
    torch_zip(tmp_path / "pytorch_model.bin", pickled, [("archive/data/0", floats(1, 2))])
    save_file({"w": np.array([7, 8], np.float32)}, str(tmp_path / "model.safetensors"))
    before = (tmp_path / "model.safetensors").read_bytes()

    def command(*extra):
        return subprocess.run([sys.executable, "-m", "minibridge", "convert", str(tmp_path), *extra],
                              capture_output=True, text=True, timeout=120)

    r = command()
    assert r.returncode == 1 and "--force" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "model.safetensors").read_bytes() == before
    r = command("--force")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(load_file(tmp_path / "model.safetensors")["w"], [1, 2])
    assert listing(tmp_path) == ["model.safetensors", "pytorch_model.bin"]


# ---- row 5: a sharded index names files inside its folder only -----------------------------------------------


def sharded(folder, shard_name):
    """A tiny checkpoint split into two shards, the second renamed in the index to `shard_name`."""
    save_random_checkpoint(folder, TINY, heads=("itm",))
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[::2]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in keys[1::2]}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {k: ("model-00001-of-00002.safetensors" if i % 2 == 0 else shard_name) for i, k in enumerate(keys)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("name", ["../outside.safetensors", "../../outside.safetensors", "ABSOLUTE",
                                  "sub/../../outside.safetensors", "sub/model.safetensors", "..", "",
                                  "..\\outside.safetensors"])
def test_index_cannot_name_files_outside_its_folder(tmp_path, name):
    folder = tmp_path / "a" / "ckpt"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.safetensors"
    if name == "ABSOLUTE":
        name = str(outside)
    sharded(folder, name)
    # a readable shard really is there, so that only the rule can stop the read
    for place in (tmp_path / "outside.safetensors", tmp_path / "a" / "outside.safetensors"):
        (place).write_bytes((folder / "model-00002-of-00002.safetensors").read_bytes())
    index = folder / "model.safetensors.index.json"
    with pytest.raises(WeightsError) as e:
        read_checkpoint(folder)
    assert str(index) in str(e.value) and repr(name) in str(e.value)
    assert "expected a plain file name in" in str(e.value)
    with pytest.raises(WeightsError, match="expected a plain file name"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)


def test_a_plain_sharded_index_still_loads(tmp_path):
    folder = sharded(tmp_path, "model-00002-of-00002.safetensors")
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    assert model.params["itm_score"]["fc"]["weight"].shape == (2, 2 * TINY["hidden_size"])


@pytest.mark.parametrize("content, found", [
    (b'{"weight_map": {"a": "x.safetensors"}, "metadata": {"note": "caf\xe9"}}', "not UTF-8 text"),
    (b'{"weight_map": {"a": "x.safetensors",}}', "not valid JSON"),
    (b'["weight_map"]', "expected an object with a \"weight_map\" of tensor name -> shard file name"),
    (b'{"weight_map": ["x.safetensors"]}', "expected an object with a \"weight_map\""),
    (b'{"weight_map": {"a": 3}}', "names shard 3"),
])
def test_a_broken_index_is_named(tmp_path, content, found):
    (tmp_path / "model.safetensors.index.json").write_bytes(content)
    with pytest.raises(WeightsError) as e:
        read_checkpoint(tmp_path)
    assert str(tmp_path / "model.safetensors.index.json") in str(e.value) and found in str(e.value)


# ---- row 6: parameters are finite float32 ----------------------------------------------------------------------


def tiny_with(tmp_path, edit):
    """A tiny ITM checkpoint whose tensors went through `edit` (a dict -> dict function)."""
    save_random_checkpoint(tmp_path, TINY, heads=("itm",))
    tensors = edit(load_file(tmp_path / "model.safetensors"))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


NAN_KEY = "bridgetower.cross_modal_text_layers.0.attention.self.query.weight"
INT_KEY = "itm_score.fc.weight"


def with_nan(t):
    w = t[NAN_KEY].copy()
    w[0, 3], w[1, 0], w[2, 2] = np.nan, np.inf, -np.inf
    return {**t, NAN_KEY: w}


def with_int8(t):
    return {**t, INT_KEY: np.ones(t[INT_KEY].shape, np.int8)}


def test_non_finite_weights_are_refused_by_name(tmp_path):
    folder = tiny_with(tmp_path, with_nan)
    with pytest.raises(WeightsError) as e:
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    message = str(e.value)
    assert str(folder) in message and "NaN or infinite" in message
    n = TINY["hidden_size"] ** 2
    assert f"cross_modal_text_layers.0.attention.self.query.weight: 3 of {n} values (first at (0, 3), nan)" in message


def test_integer_parameters_are_refused_by_name(tmp_path):
    folder = tiny_with(tmp_path, with_int8)
    with pytest.raises(WeightsError, match=r"must be floating point.*itm_score\.fc\.weight \(int8\)"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)


def test_nan_and_int8_together_name_the_tensor(tmp_path):
    folder = tiny_with(tmp_path, lambda t: with_int8(with_nan(t)))
    with pytest.raises(WeightsError, match=r"itm_score\.fc\.weight \(int8\)"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({**tensors, INT_KEY: tensors[INT_KEY].astype(np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"query\.weight: 3 of \d+ values"):
        mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_every_integer_or_bool_dtype_is_refused(tmp_path, dtype):
    key = "bridgetower.token_type_embeddings.weight"
    folder = tiny_with(tmp_path, lambda t: {**t, key: np.zeros(t[key].shape, dtype)})
    with pytest.raises(WeightsError, match=rf"token_type_embeddings\.weight \({np.dtype(dtype).name}\)"):
        mb.BridgeTowerModel.from_pretrained(folder)


def test_float16_and_float64_become_float32_and_legacy_int_buffers_load(tmp_path):
    half, double = "bridgetower.token_type_embeddings.weight", "itm_score.fc.bias"
    folder = tiny_with(tmp_path, lambda t: {**t, half: t[half].astype(np.float16), double: t[double].astype(np.float64),
                                            "bridgetower.text_model.embeddings.position_ids": np.arange(40)[None]})
    model = mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)
    assert model.params["token_type_embeddings"]["weight"].dtype == np.float32
    assert model.params["itm_score"]["fc"]["bias"].dtype == np.float32


def test_finite_extreme_weights_load(tmp_path):
    """Values near float32's limit overflow a float32 sum to Inf; the exact count then finds them finite."""
    key = "bridgetower.cross_modal_text_layers.0.attention.self.query.weight"
    folder = tiny_with(tmp_path, lambda t: {**t, key: np.full(t[key].shape, 3e38, np.float32)})
    mb.BridgeTowerForImageAndTextRetrieval.from_pretrained(folder)


# ---- row 7: the unpickler against every global we can name ----------------------------------------------------


# (module, name, arguments): called with these, each that can would create the file MARKER.
MARKER = "MARKER"
DANGEROUS = [
    ("builtins", "getattr", ("os", "system")), ("builtins", "eval", (f"open({MARKER!r}, 'w')",)),
    ("builtins", "exec", (f"open({MARKER!r}, 'w')",)), ("builtins", "__import__", ("os",)),
    ("builtins", "open", (MARKER, "w")), ("builtins", "compile", ("1", MARKER, "eval")),
    ("builtins", "setattr", (MARKER, "x", 1)), ("builtins", "globals", ()),
    ("builtins", "breakpoint", ()), ("builtins", "input", ()), ("builtins", "type", (MARKER, (), ())),
    ("os", "system", (f"touch {MARKER}",)), ("os", "popen", (f"touch {MARKER}",)),
    ("os", "execv", ("/usr/bin/touch", ["touch", MARKER])), ("os", "remove", (MARKER,)),
    ("posix", "system", (f"touch {MARKER}",)), ("nt", "system", (f"touch {MARKER}",)),
    ("subprocess", "Popen", (["touch", MARKER],)), ("subprocess", "call", (["touch", MARKER],)),
    ("subprocess", "run", (["touch", MARKER],)), ("subprocess", "check_output", (["touch", MARKER],)),
    ("importlib", "import_module", ("os",)), ("pickle", "loads", (MARKER,)), ("_pickle", "loads", (MARKER,)),
    ("codecs", "encode", (MARKER, "rot13")), ("codecs", "decode", (MARKER, "rot13")),
    ("sys", "modules", ()), ("sys", "exit", (3,)), ("shutil", "rmtree", (MARKER,)),
    ("runpy", "run_path", (MARKER,)), ("torch", "load", (MARKER,)), ("torch._utils", "_rebuild_tensor", ()),
    ("torch._utils", "_rebuild_made_up", ()), ("torch.serialization", "load", (MARKER,)),
    ("numpy.core.multiarray", "_reconstruct", ()), ("numpy", "load", (MARKER,)),
    ("functools", "partial", ("os",)), ("operator", "attrgetter", ("system",)),
    ("operator", "itemgetter", (0,)), ("operator", "methodcaller", ("system", f"touch {MARKER}")),
    ("types", "FunctionType", ()), ("types", "CodeType", ()), ("copyreg", "_reconstructor", ()),
    ("collections", "namedtuple", ("T", "a")), ("collections", "defaultdict", ()),
    ("minibridge.convert", "convert_folder", (MARKER,)), ("minibridge.convert", "_GLOBALS", ()),
    ("__main__", "__builtins__", ()), ("webbrowser", "open", (MARKER,)), ("ctypes", "CDLL", (MARKER,)),
    ("torch", "UntypedStorage", ()),  # a storage type minibridge does not read: refused with its own message
]


def reaching(opcode, module, name, args):
    """A pickle that reaches module.name through `opcode`, then calls it with `args`."""
    call = value(tuple(args)) + pickle.REDUCE + pickle.STOP
    stack_global = text(module) + text(name) + pickle.STACK_GLOBAL
    if opcode == "GLOBAL proto 0":
        return global_(module, name) + call
    if opcode == "GLOBAL proto 2":
        return b"\x80\x02" + global_(module, name) + call
    if opcode == "STACK_GLOBAL":
        return b"\x80\x04" + stack_global + call
    if opcode == "INST":  # MARK args INST: find_class, then call with the args
        return pickle.MARK + b"".join(map(value, args)) + pickle.INST + f"{module}\n{name}\n".encode() + pickle.STOP
    if opcode == "OBJ":  # MARK class args OBJ
        return b"\x80\x04" + pickle.MARK + stack_global + b"".join(map(value, args)) + pickle.OBJ + pickle.STOP
    if opcode.startswith("EXT"):  # an extension code, registered with copyreg by the test
        return b"\x80\x02" + {"EXT1": pickle.EXT1 + bytes([EXT_CODES["EXT1"]]),
                              "EXT2": pickle.EXT2 + struct.pack("<H", EXT_CODES["EXT2"]),
                              "EXT4": pickle.EXT4 + struct.pack("<i", EXT_CODES["EXT4"])}[opcode] + call
    raise ValueError(opcode)


OPCODES = ["GLOBAL proto 0", "GLOBAL proto 2", "STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"]
EXT_CODES = {"EXT1": 0xF7, "EXT2": 0xFEDC, "EXT4": 0x7FFEDCBA}  # unused by anything else


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MARKER is a relative name: a payload that ran creates tmp_path/MARKER
    return tmp_path


def refused(tmp_path, pickled):
    """The ConvertError of reading a torch-like archive holding `pickled`; asserts that nothing ran."""
    bin_path = torch_zip(tmp_path / "pytorch_model.bin", pickled)
    with pytest.raises(ConvertError) as e:
        read_torch_bin(bin_path)
    assert not (tmp_path / MARKER).exists(), "the pickle's payload ran"
    assert str(bin_path) in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("opcode", OPCODES)
@pytest.mark.parametrize("module, name, args", DANGEROUS, ids=[f"{m}.{n}" for m, n, _ in DANGEROUS])
def test_every_dangerous_global_through_every_opcode_is_refused(in_tmp, opcode, module, name, args):
    code = EXT_CODES.get(opcode)
    if code is not None:
        copyreg.add_extension(module, name, code)
    try:
        message = refused(in_tmp, reaching(opcode, module, name, args))
    finally:
        if code is not None:
            copyreg.remove_extension(module, name, code)
    if (module, name) == ("torch", "UntypedStorage"):
        assert "holds tensors of type torch.UntypedStorage, which minibridge does not read" in message
    else:
        assert f"tried to run code: its pickle asks for {module}.{name}" in message and "executed nothing" in message


def test_the_payloads_are_live(in_tmp):
    """Control: an ordinary unpickler runs these very pickles (the harmless ones), so the refusals above matter."""
    for opcode in ("GLOBAL proto 0", "STACK_GLOBAL", "INST", "OBJ"):
        for module, name, args in [("builtins", "open", (MARKER, "w")),
                                   ("builtins", "exec", (f"open({MARKER!r}, 'w')",))]:
            pickle.loads(reaching(opcode, module, name, args))
            assert (in_tmp / MARKER).exists(), (opcode, name)
            (in_tmp / MARKER).unlink()
    copyreg.add_extension("builtins", "open", EXT_CODES["EXT2"])
    try:
        pickle.loads(reaching("EXT2", "builtins", "open", (MARKER, "w")))
    finally:
        copyreg.remove_extension("builtins", "open", EXT_CODES["EXT2"])
    assert (in_tmp / MARKER).exists()


def test_the_allow_list_is_exactly_four_names():
    """A name added to the allow-list (builtins.getattr, say) fails here first: each one is a way in."""
    assert set(convert._GLOBALS) == {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                                     ("torch._utils", "_rebuild_parameter_with_state"), ("collections", "OrderedDict")}
    assert convert._GLOBALS[("collections", "OrderedDict")] is __import__("collections").OrderedDict
    # The storage types resolve to plain strings (their names), nothing callable that does anything.
    unpickler = convert._Unpickler(__import__("io").BytesIO(b""), "x.bin")
    for storage_type in convert._STORAGE_DTYPES:
        found = unpickler.find_class("torch", storage_type)
        assert isinstance(found, str) and found == storage_type


FLOAT_STORAGE = pickle.MARK + text("storage") + global_("torch", "FloatStorage")  # the start of a storage's id


@pytest.mark.parametrize("pid", [
    text("storage"),  # a bare string
    value(("module", "0", "cpu", 6)),  # not a storage
    value(("storage", "FloatStorage", "0", "cpu", 6)),  # the type as a plain string, not torch.FloatStorage
    FLOAT_STORAGE + text("0") + text("cpu") + pickle.TUPLE,  # 4 items
    FLOAT_STORAGE + integer(0) + text("cpu") + integer(6) + pickle.TUPLE,  # the key an integer
    FLOAT_STORAGE + text("0") + text("cpu") + integer(-6) + pickle.TUPLE,
    FLOAT_STORAGE + text("0") + text("cpu") + pickle.NEWTRUE + pickle.TUPLE,
], ids=["bare string", "not a storage", "type as a plain string", "four items", "integer key", "negative numel",
        "numel True"])
def test_persistent_ids_that_are_not_storages_are_refused(in_tmp, pid):
    message = refused(in_tmp, b"\x80\x02" + pid + pickle.BINPERSID + pickle.STOP)
    assert "unexpected persistent id" in message and "expected ('storage', <torch storage type>" in message


@pytest.mark.parametrize("pickled, found", [
    # REDUCE on allowed stand-ins, with arguments no checkpoint has
    (b"\x80\x02" + global_("torch._utils", "_rebuild_tensor_v2") + value((MARKER, 0, (2,), (1,))) + pickle.REDUCE
     + pickle.STOP, "built from str, not a storage"),
    (state_dict({"w": tensor("0", 6, 0, (2,), (1, 1))}), "expected a size and a stride of as many integers"),
    (state_dict({"w": tensor("0", 6, 0, (2,) * 65, (1,) * 65)}), "(at most 64)"),
    (state_dict({"w": tensor("0", 6, -1, (2,), (1,))}), "offset -1"),
    # BUILD on a tensor record: would rewrite its size after the fact
    (b"\x80\x02" + pickle.EMPTY_DICT + text("w") + tensor("0", 6, 0, (6,), (1,))
     + pickle.MARK + text("size") + value((20000, 20000)) + pickle.DICT + pickle.BUILD + pickle.SETITEM + pickle.STOP,
     "tries to edit a tensor after making it (BUILD opcode)"),
    # BUILD with a slot state (None, {...}): the other way to set attributes
    (b"\x80\x02" + tensor("0", 6, 0, (6,), (1,)) + pickle.NONE + pickle.MARK + text("stride")
     + value((0,)) + pickle.DICT + pickle.TUPLE2 + pickle.BUILD + pickle.STOP, "tries to edit a tensor"),
    # BUILD on the state dict giving it a __setstate__, then BUILD again: that calls only a stand-in
    (b"\x80\x02" + global_("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK
     + text("__setstate__") + global_("torch._utils", "_rebuild_tensor_v2") + pickle.DICT + pickle.BUILD
     + text(f"touch {MARKER}") + pickle.BUILD + pickle.STOP, "damaged or truncated torch archive (TypeError"),
    # a whole object, not a state dict
    (b"\x80\x02" + value([1, 2]) + pickle.STOP, "holds a list, not a state dict of tensors"),
], ids=["REDUCE on a str", "stride of other length", "65 dimensions", "negative offset", "BUILD on a tensor",
        "BUILD slot state", "BUILD __setstate__", "a list"])
def test_allowed_names_cannot_be_misused(in_tmp, pickled, found):
    assert found in refused(in_tmp, pickled)
