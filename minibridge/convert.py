"""Convert: read a PyTorch pytorch_model.bin without torch, and without running it; write model.safetensors.

    tensors = read_torch_bin("weights/x/pytorch_model.bin")   # {"bridgetower.text_model...": np.ndarray}
    convert_folder("weights/x")                               # -> weights/x/model.safetensors

What torch.save (torch >= 1.6) writes is a zip archive:
    <prefix>/data.pkl     a pickle of the state dict. Each tensor in it is a call
                          torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...), and each
                          storage a "persistent id" ("storage", torch.FloatStorage, key, device, numel)
    <prefix>/data/<key>   the raw bytes of storage <key>
    <prefix>/byteorder    "little" or "big" (absent in older files: little)
Unpickling normally imports and calls whatever the pickle names: `os.system` as readily as torch's
rebuild function. So our unpickler knows a short allow-list of names, gives each a NumPy stand-in,
and refuses every other name before anything is called.
"""

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .weights import WeightsError


class ConvertError(WeightsError):
    """A pytorch_model.bin that cannot (or must not) be read."""


# torch storage types -> the dtype of their bytes (bfloat16: NumPy has none; read as uint16, then widened)
_STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "u2",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}


class _StorageType(str):
    """Stand-in for torch.FloatStorage & co.: only its name is needed to read the bytes."""


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
            state = _unpickle(archive, path)
    except ConvertError:
        raise
    # A damaged file fails in many ways: a missing zip directory, a bad CRC, a pickle cut short or
    # calling our stand-ins with arguments of the wrong kind.
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, TypeError, ValueError, IndexError) as e:
        raise ConvertError(f"{path} is a damaged or truncated torch archive ({type(e).__name__}: {e}); "
                           "download it again.") from None
    return _check_state_dict(state, path)


def _unpickle(archive, path):
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ConvertError(f"{path} is a zip archive but not a torch checkpoint: expected one <prefix>/data.pkl, "
                           f"found {pickles or 'none'}")
    prefix = pickles[0].removesuffix("data.pkl")  # "archive/" or the saved file's stem
    names = set(archive.namelist())
    byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
    pickled = io.BytesIO(archive.read(pickles[0]))  # small: the tensors' bytes are separate entries
    return _Unpickler(pickled, archive, prefix, "<" if byteorder == "little" else ">", path).load()


class _Unpickler(pickle.Unpickler):
    """An unpickler that rebuilds tensors as NumPy arrays and refuses every global not on its list."""

    def __init__(self, file, archive, prefix, byteorder, path):
        super().__init__(file)
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path
        self.storages = {}  # key -> (type, array): tensors that share a storage share one read of its bytes

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
        """('storage', type, key, device, numel) -> the storage's elements as a 1-D array."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise ConvertError(f"{self.path}: unexpected persistent id {pid!r} in its pickle")
        _, storage_type, key, _device, numel = pid
        if key not in self.storages:
            self.storages[key] = storage_type, self._read_storage(storage_type, key, numel)
        read_as, storage = self.storages[key]
        if read_as != storage_type:
            raise ConvertError(f"{self.path}: storage {key} is read both as {read_as} and as {storage_type}")
        return storage

    def _read_storage(self, storage_type, key, numel):
        dtype = np.dtype(_STORAGE_DTYPES[storage_type]).newbyteorder(self.byteorder)
        try:
            data = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise ConvertError(f"{self.path}: storage {key} is missing from the archive (truncated?)") from None
        if len(data) < numel * dtype.itemsize:
            raise ConvertError(f"{self.path}: storage {key} holds {len(data)} bytes; "
                               f"{numel} × {storage_type} need {numel * dtype.itemsize}")
        storage = np.frombuffer(data, dtype=dtype, count=numel)  # a read-only view: no copy
        if storage_type == "BFloat16Storage":  # bf16 is the top half of a float32: widening is exact
            return (storage.astype(np.uint32) << 16).view(np.float32)
        return storage if dtype.isnative else storage.astype(dtype.newbyteorder("="))


def _rebuild_tensor(storage, storage_offset, size, stride, *_requires_grad_hooks_metadata):
    """torch._utils._rebuild_tensor_v2 in NumPy: `size` elements of `storage` from `storage_offset`, `stride` apart."""
    if not isinstance(storage, np.ndarray):
        raise ConvertError(f"a tensor in the pickle is built from {type(storage).__name__}, not a storage")
    size, stride = tuple(size), tuple(stride)
    if 0 in size:
        return np.zeros(size, storage.dtype)
    item = storage.itemsize
    try:  # NumPy checks that every element addressed lies inside the storage
        arr = np.ndarray(size, storage.dtype, buffer=storage, offset=storage_offset * item,
                         strides=tuple(s * item for s in stride))
    except (ValueError, TypeError) as e:
        raise ConvertError(f"a tensor of size {size}, stride {stride} at offset {storage_offset} does not fit its "
                           f"storage of {storage.size} elements ({e})") from None
    whole = storage_offset == 0 and arr.size == storage.size and arr.flags.c_contiguous
    # A part of a storage is copied: safetensors needs contiguous bytes, and a copy frees the rest.
    # subtle: tensors that are the same whole storage (tied weights) stay one array under two keys;
    # safetensors writes each key's bytes separately, so the file holds two copies, as it must.
    return arr if whole else np.ascontiguousarray(arr)


def _rebuild_parameter(data, *_requires_grad_hooks_state):
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is its data for us."""
    return data


# The only globals a pickled state dict names (torch >= 1.6), each with its NumPy stand-in.
_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,  # a state dict's container: a dict, no code
}


def _check_state_dict(state, path):
    """The unpickled object as {str: array}; anything else (a whole model, an optimizer) is refused."""
    if not isinstance(state, dict):
        raise ConvertError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise ConvertError(f"{path}: entry {bad[0]!r} is not a named tensor; expected a flat state dict")
    return dict(state)


# ---- writing model.safetensors ---------------------------------------------------------------------


def convert_folder(folder):
    """Write <folder>/model.safetensors from <folder>/pytorch_model.bin (same keys); returns its path.

    The file appears whole or not at all: it is written under a temporary name in the same folder and
    renamed, which is atomic, so an interrupted conversion never leaves a half file that looks done.
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
        os.replace(partial, target)
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
