"""Convert: read a PyTorch pytorch_model.bin without torch, and without running it; write model.safetensors.

    tensors = read_torch_bin("weights/x/pytorch_model.bin")   # {"bridgetower.text_model...": np.ndarray}
    convert_folder("weights/x")                               # -> weights/x/model.safetensors

What torch.save (torch >= 1.6) writes is a zip archive:
    <prefix>/data.pkl     a pickle of the state dict. Each tensor in it is a call
                          torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), and each
                          storage a "persistent id" ("storage", torch.FloatStorage, key, device, numel)
    <prefix>/data/<key>   the raw bytes of storage <key>, stored uncompressed
    <prefix>/byteorder    "little" or "big" (absent in older files: little)
Unpickling normally imports and calls whatever the pickle names: `os.system` as readily as torch's
rebuild function. So our unpickler knows a short allow-list of names, gives each a NumPy stand-in,
and refuses every other name before anything is called.

A hostile file can also ask for more memory or disk than it is worth: a tensor of 20000 x 20000 with
stride 0 over 6 floats, or a 1 MB zip entry that inflates to 1 GiB. So reading happens in two steps:
the pickle is read into plain records (_Storage, _Tensor) that hold no data, every record is checked
against limits derived from the file itself, and only then are the storages' bytes read.
"""

import filecmp
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .weights import WeightsError, make_ordinary


class ConvertError(WeightsError):
    """A pytorch_model.bin that cannot (or must not) be read."""


# torch storage types -> the dtype of their bytes (bfloat16: NumPy has none; read as uint16, then widened)
_STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "u2",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}

# The tensors read, and the tensors written, may each total at most MAX_GROWTH times the .bin's size.
# subtle: torch stores tensor bytes uncompressed, so a real checkpoint converts to about its own size
# (a little more when weights are tied: saved once, written once per name; twice for bfloat16, widened
# to float32). Far more means a zip bomb or tensors forged to reuse their bytes. Settable, for a genuine
# file that needs more: minibridge.convert.MAX_GROWTH = 10.
MAX_GROWTH = 4

# Tensor names that safetensors keeps for itself: such a file could be written but never read back.
RESERVED_NAMES = {"__metadata__"}


class _StorageType(str):
    """Stand-in for torch.FloatStorage & co.: only its name is needed to read the bytes."""


class _Record:
    """A plain record the unpickler makes; a pickle may not edit it afterwards (its BUILD opcode)."""

    __slots__ = ()

    def __setstate__(self, state):
        # subtle: without this, BUILD could rewrite a tensor's size after it was checked, through setattr.
        raise ValueError(f"the pickle tries to edit a {type(self).__name__[1:].lower()} after making it "
                         "(BUILD opcode); no torch checkpoint does that")


class _Storage(_Record):
    """One storage of the archive, not yet read: <prefix>/data/<key> holds numel elements of dtype."""

    __slots__ = ("key", "type", "dtype", "numel")

    def __init__(self, key, storage_type, dtype, numel):
        self.key, self.type, self.dtype, self.numel = key, storage_type, dtype, numel


class _Tensor(_Record):
    """A tensor as the pickle describes it: `size` elements of `storage`, `stride` apart, from `offset`."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def read_torch_bin(path):
    """{key: array} of a torch.save'd state dict (the zip format of torch >= 1.6), read without torch.

    Tensors keep their dtype, except bfloat16, returned as float32 (exact: bf16 is the top half of a
    float32, and NumPy has no bf16). A tensor that is a whole storage is a read-only view of the
    file's bytes; one that is part of a storage (a slice, a transpose) is its own contiguous copy.
    """
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:1] == b"\x80":  # a bare pickle: torch.save before 1.6 (or _use_new_zipfile_serialization=False)
        raise ConvertError(f"{path} is in torch's legacy (pre-1.6) format, which minibridge does not read; "
                           "re-save it with torch >= 1.6 (torch.save(torch.load(path), path)) or use a "
                           "model.safetensors instead.")
    if magic != b"PK\x03\x04":
        raise ConvertError(f"{path} is not a PyTorch checkpoint (a torch.save zip archive); it may be "
                           "truncated, an HTML error page saved by mistake, or another format.")
    try:
        with zipfile.ZipFile(path) as archive:
            reader = _Reader(archive, path)
            tensors = _check_state_dict(reader.unpickle(), path)
            reader.check_sizes(tensors)
            return {key: reader.array(t) for key, t in tensors.items()}
    except ConvertError:
        raise
    except MemoryError:
        raise ConvertError(f"{path}: ran out of memory while reading it: it claims an object (a tensor, or a "
                           "string in its pickle) larger than this machine's memory; damaged or forged?") from None
    # A damaged or forged file fails in many ways: a missing zip directory (BadZipFile), a bad CRC or
    # deflate stream (zlib.error), an encrypted entry (RuntimeError), a pickle cut short (EOFError,
    # UnpicklingError), nested too deep (RecursionError) or calling our stand-ins with arguments of the
    # wrong kind (TypeError, ValueError, IndexError, KeyError, OverflowError, struct.error). Each is the
    # file's fault, and said so; any other exception would be minibridge's own bug, and keeps its traceback.
    except (zipfile.BadZipFile, zlib.error, RuntimeError, EOFError, pickle.UnpicklingError, TypeError, ValueError,
            IndexError, KeyError, OverflowError, struct.error) as e:
        raise ConvertError(f"{path} is a damaged or truncated torch archive ({type(e).__name__}: {e}); "
                           "download it again.") from None


class _Reader:
    """Reads one torch archive: its pickle into records, then the storages those records use."""

    def __init__(self, archive, path):
        self.archive, self.path = archive, path
        # subtle: the limit comes from the file itself: what we read or write is at most MAX_GROWTH times it.
        self.limit = MAX_GROWTH * path.stat().st_size
        self.arrays = {}  # storage key -> its elements, read once: tensors that share a storage share it

    def unpickle(self):
        """The unpickled state dict, its tensors as _Tensor records (no tensor data read yet)."""
        names = self.archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ConvertError(f"{self.path} is a zip archive but not a torch checkpoint: expected one "
                               f"<prefix>/data.pkl, found {pickles or 'none'}")
        self.prefix = pickles[0].removesuffix("data.pkl")  # "archive/" or the saved file's stem
        self.byteorder = "<"
        if self.prefix + "byteorder" in names:
            with self.archive.open(self.prefix + "byteorder") as f:
                order = f.read(16)  # bounded: it is one word
            if order.strip() not in (b"little", b"big"):
                raise ConvertError(f"{self.path}: {self.prefix}byteorder should say little or big, "
                                   f"it says {order[:16]!r}")
            self.byteorder = "<" if order.strip() == b"little" else ">"
        info = self.archive.getinfo(pickles[0])
        if info.file_size > self.limit:
            raise ConvertError(f"{self.path}: its {pickles[0]} claims {info.file_size:,} bytes, more than "
                               f"{MAX_GROWTH} times the file ({self.limit // MAX_GROWTH:,} bytes): a zip bomb? "
                               "A state dict's pickle holds names and shapes only.")
        pickled = self._read(info)
        return _Unpickler(io.BytesIO(pickled), self.path).load()

    def check_sizes(self, tensors):
        """Refuse tensors that reuse their storage's elements, leave it, or total too many bytes."""
        for key, t in tensors.items():
            _check_layout(key, t, self.path)
        storages = {t.storage.key: t.storage for t in tensors.values()}
        read = sum(s.numel * s.dtype.itemsize for s in storages.values())
        written = sum(math.prod(t.size) * _output_itemsize(t.storage) for t in tensors.values())
        size = self.limit // MAX_GROWTH
        for verb, n in (("read", read), ("write", written)):
            if n > self.limit:
                raise ConvertError(
                    f"{self.path}: converting it would {verb} {n:,} bytes of tensors, {n / max(size, 1):,.0f} times "
                    f"the file's own {size:,} bytes; minibridge refuses more than {MAX_GROWTH} times. torch "
                    "stores tensors uncompressed, so a genuine checkpoint converts to about its own size, and "
                    "this one looks like a zip bomb. If you trust it, raise minibridge.convert.MAX_GROWTH.")

    def array(self, t):
        """The tensor record `t` as a NumPy array (its layout checked by check_sizes)."""
        storage = self._storage(t.storage)
        if 0 in t.size:
            return np.zeros(t.size, storage.dtype)
        item = storage.itemsize
        arr = np.ndarray(t.size, storage.dtype, buffer=storage, offset=t.offset * item,
                         strides=tuple(s * item for s in t.stride))
        whole = t.offset == 0 and arr.size == storage.size and arr.flags.c_contiguous
        # A part of a storage is copied: safetensors needs contiguous bytes, and a copy frees the rest.
        # subtle: tensors that are the same whole storage (tied weights) stay one array under two keys;
        # safetensors writes each key's bytes separately, so the file holds two copies, as it must.
        return arr if whole else np.ascontiguousarray(arr)

    def _storage(self, s):
        """The elements of storage record `s`, as a 1-D array (read from the archive once)."""
        if s.key not in self.arrays:
            name = f"{self.prefix}data/{s.key}"
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise ConvertError(f"{self.path}: storage {s.key} is missing from the archive (truncated?)") from None
            dtype = s.dtype.newbyteorder(self.byteorder)
            need = s.numel * dtype.itemsize
            # subtle: checked before reading: an entry may claim (and inflate to) far more than its tensors use.
            if info.file_size != need:
                raise ConvertError(f"{self.path}: storage entry {name} holds {info.file_size:,} bytes; "
                                   f"{s.numel:,} x {s.type} need exactly {need:,}")
            storage = np.frombuffer(self._read(info), dtype=dtype)  # a read-only view: no copy
            if s.type == "BFloat16Storage":  # bf16 is the top half of a float32: widening is exact
                storage = (storage.astype(np.uint32) << 16).view(np.float32)
            elif not dtype.isnative:
                storage = storage.astype(dtype.newbyteorder("="))
            self.arrays[s.key] = storage
        return self.arrays[s.key]

    def _read(self, info):
        """The bytes of zip entry `info`: exactly as many as it declares, or ConvertError."""
        # subtle: no compressor makes data much longer (deflate adds under 0.1%), so a stream far longer
        # than the size its header declares would inflate past that size: the header lies. Refused unread.
        if info.compress_size > info.file_size + info.file_size // 64 + 1024:
            raise ConvertError(f"{self.path}: zip entry {info.filename} declares {info.file_size:,} bytes but "
                               f"its stream of {info.compress_size:,} bytes would inflate to more: a zip bomb?")
        with self.archive.open(info) as f:
            # subtle: read(n) inflates at most n bytes. A bare read() (or archive.read) inflates the whole
            # stream before cutting it to the declared size: 1 GiB in memory behind a header saying 24 bytes.
            data = f.read(info.file_size)
        if len(data) != info.file_size:
            raise ConvertError(f"{self.path}: zip entry {info.filename} declares {info.file_size:,} bytes "
                               f"but holds only {len(data):,} (truncated?)")
        return data


def _output_itemsize(storage):
    return 4 if storage.type == "BFloat16Storage" else storage.dtype.itemsize  # bf16 is written as float32


def _check_layout(key, t, path):
    """Refuse a tensor whose elements are not distinct elements inside its storage.

    subtle: torch's views (slices, transposes, narrowing) have positive strides, each step larger than
    the reach of the smaller ones; a zero stride (an expanded tensor) or overlapping strides would let
    6 stored floats become 400 million written ones. A tensor so laid out is never a saved parameter.
    """
    if math.prod(t.size) == 0:
        return  # an empty tensor reads nothing
    reach = 0  # how far, in elements, the dimensions checked so far reach from the first element
    for stride, size in sorted((st, sz) for sz, st in zip(t.size, t.stride) if sz > 1):
        if stride < 0:
            raise ConvertError(f"{path}: tensor {key!r} of size {t.size}, stride {t.stride} has a negative stride, "
                               "which torch never writes")
        if stride <= reach:
            raise ConvertError(f"{path}: tensor {key!r} of size {t.size}, stride {t.stride} reuses elements of its "
                               "storage (a zero or overlapping stride); a saved parameter's elements are distinct")
        reach += stride * (size - 1)
    if t.offset + reach >= t.storage.numel:
        raise ConvertError(f"{path}: tensor {key!r} of size {t.size}, stride {t.stride} at offset {t.offset} "
                           f"does not fit its storage of {t.storage.numel:,} elements")


class _Unpickler(pickle.Unpickler):
    """An unpickler that rebuilds tensors as _Tensor records and refuses every global not on its list."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.storages = {}  # key -> _Storage: every use of a key must agree on its type and size

    def find_class(self, module, name):
        # subtle: this is the only way a pickle reaches code; whatever is not returned here cannot run.
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage"):
            raise ConvertError(f"{self.path} holds tensors of type torch.{name}, which minibridge does not read")
        raise ConvertError(f"{self.path} tried to run code: its pickle asks for {module}.{name}, which no "
                           "checkpoint of tensors needs. minibridge refused to load it and executed nothing "
                           "from it. Use a model.safetensors, or a pytorch_model.bin from a source you trust.")

    def persistent_load(self, pid):
        """('storage', type, key, device, numel) -> a _Storage record (its bytes are read later)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _is_count(pid[4])):
            raise ConvertError(f"{self.path}: unexpected persistent id {_short(pid)} in its pickle; expected "
                               "('storage', <torch storage type>, <key>, <device>, <number of elements>)")
        _, storage_type, key, _device, numel = pid
        storage = self.storages.setdefault(key, _Storage(key, str(storage_type),
                                                         np.dtype(_STORAGE_DTYPES[storage_type]), numel))
        if (storage.type, storage.numel) != (storage_type, numel):
            raise ConvertError(f"{self.path}: storage {key} is read both as {storage.numel} x {storage.type} "
                               f"and as {numel} x {storage_type}")
        return storage


def _is_count(n):
    return type(n) is int and n >= 0  # subtle: not isinstance: True is an int too


def _short(obj):
    text = repr(obj)
    return text if len(text) <= 200 else text[:200] + "..."


def _rebuild_tensor(storage, storage_offset, size, stride, *_requires_grad_hooks_metadata):
    """torch._utils._rebuild_tensor_v2, as a _Tensor record: `size` elements of `storage`, `stride` apart."""
    if not isinstance(storage, _Storage):
        raise ValueError(f"a tensor in the pickle is built from {type(storage).__name__}, not a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= 64
            and all(map(_is_count, size + (storage_offset,))) and all(type(s) is int for s in stride)):
        raise ValueError(f"a tensor in the pickle has size {_short(size)}, stride {_short(stride)}, offset "
                         f"{_short(storage_offset)}; expected a size and a stride of as many integers (at most "
                         "64), sizes and offset >= 0")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_requires_grad_hooks_state):
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its data for us."""
    return data


# The only globals a pickled state dict names (torch >= 1.6), each with its stand-in.
_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,  # a state dict's container: a dict, no code
}


def _check_state_dict(state, path):
    """The unpickled object as {str: _Tensor}; anything else (a whole model, an optimizer) is refused."""
    if not isinstance(state, dict):
        raise ConvertError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, _Tensor))]
    if bad:
        raise ConvertError(f"{path}: entry {_short(bad[0])} is not a named tensor; expected a flat state dict")
    for key in state:
        if key in RESERVED_NAMES:
            raise ConvertError(f"{path}: a tensor is named {key!r}, a name safetensors reserves for the "
                               "file's metadata; such a model.safetensors could never be read back")
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ConvertError(f"{path}: tensor name {key!r} is not valid text (UTF-8), as safetensors "
                               "requires") from None
    return dict(state)


# ---- writing model.safetensors ---------------------------------------------------------------------


def convert_folder(folder, force=False):
    """Write <folder>/model.safetensors from <folder>/pytorch_model.bin (same keys); returns its path.

    An existing, different model.safetensors is kept, with an error, unless force=True (an identical
    one is left as it is). The file appears whole or not at all: it is written under a temporary name
    in the same folder and renamed, which is atomic, so a failed or interrupted conversion never
    leaves a half file that looks done, nor any temporary file.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    source, target = folder / "pytorch_model.bin", folder / "model.safetensors"
    if not source.is_file():
        raise ConvertError(f"{folder} has no pytorch_model.bin to convert")
    tensors = read_torch_bin(source)
    partial = folder / f".model.safetensors.{os.getpid()}.partial"  # per process: two converters never collide
    try:
        save_file(tensors, str(partial), metadata={"format": "pt"})
        make_ordinary(partial)
        # subtle: compared after writing, so that converting twice is harmless and only a real difference stops us.
        if target.exists() and not force and not filecmp.cmp(partial, target, shallow=False):
            raise ConvertError(f"{target} already exists and differs from the conversion of {source.name}; "
                               "minibridge does not overwrite it. Delete it, or pass force=True "
                               "(minibridge convert --force) to replace it.")
        os.replace(partial, target)
    except MemoryError:
        raise ConvertError(f"{source}: ran out of memory while writing {target.name}; its tensors are "
                           "larger than this machine's memory") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def ensure_safetensors(folder):
    """The folder, after converting its pytorch_model.bin if it has no model.safetensors (nor an index) yet."""
    folder = Path(folder)
    has_safetensors = (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    if not has_safetensors and (folder / "pytorch_model.bin").is_file():
        convert_folder(folder)
    return folder
