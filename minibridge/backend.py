"""How the array code runs: on NumPy or CuPy, and on the CPU in cache-sized blocks of rows.

The one module that knows CuPy exists. Every function in minibridge takes its array module from
the data it is given (CONTRIBUTING.md habit 6):

    xp = array_module(x)        # numpy for NumPy arrays, cupy for CuPy arrays
    y = xp.exp(x)

so the same code runs on the CPU and, when the weights were moved with `to_device`, on a GPU.
There is no global "current backend" to forget to reset.

It is also the one place of minibridge's speed techniques: `rowwise` (below), by which the primitives
in ops.py, written as their formulas, run a block of rows at a time; and `keep_freed_memory`, by which
the large arrays a layer frees are reused by the next instead of going back to the operating system
(until `release_freed_memory` hands them back: score_pairs and infer call it before they return).
"""

import ctypes
import functools
import os
import sys

import numpy as np


def is_cupy(x):
    """True when `x` is a CuPy array (without importing CuPy)."""
    return type(x).__module__.startswith("cupy")


def array_module(x):
    """numpy, or cupy when `x` is a CuPy array (without importing cupy otherwise)."""
    if is_cupy(x):
        import cupy

        return cupy
    return np


def to_numpy(x):
    """A NumPy array from a NumPy or CuPy array (a no-op for NumPy)."""
    return x.get() if is_cupy(x) else x


def gpu_available():
    """True when CuPy is installed and sees at least one GPU."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


def to_device(tree, device):
    """Copy a (nested dict / list) tree of arrays to `device`: "cpu" (NumPy) or "cuda" (CuPy)."""
    if device == "cpu":
        convert = to_numpy
    elif device in ("cuda", "gpu"):
        try:
            import cupy
        except ImportError as e:
            raise ImportError(
                'device="cuda" needs CuPy: pip install "minibridge[gpu]" (or the cupy wheel for your CUDA)'
            ) from e
        convert = cupy.asarray
    else:
        raise ValueError(f'device must be "cpu" or "cuda" (the current CuPy device; pick another with '
                         f'`with cupy.cuda.Device(i):`), got {device!r}')
    done = {}  # id -> converted array: a tied weight (one array, two names) stays one array

    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if id(node) not in done:
            done[id(node)] = convert(node)
        return done[id(node)]

    return walk(tree)


# ---- memory the forward pass frees is memory it reuses ----------------------------------------------
#
# A forward pass makes and frees the same large arrays layer after layer (attention scores at batch
# 8: 40 MB; the MLP's hidden layer: 32 MB). glibc's malloc hands every block above 32 MB straight
# back to the operating system when freed, and the next layer's array of that size then comes as
# fresh pages, each zeroed by the kernel on first touch: 4 ms per 40 MB array, measured on a 2-core VM,
# several times that when the machine is busy. `keep_freed_memory` raises malloc's two thresholds so
# that such blocks stay in the process for the next layer; `release_freed_memory` hands what is free
# back to the operating system. The calls that run many passes (score_pairs, infer) call it before
# they return; a single forward or loss_and_grads does not (trimming after every forward cost 4-7%),
# so between those calls the process keeps up to one pass's freed memory (about 230 MB after a
# batch-8 forward of the base model). The peak is the same either way (the arrays are the same).
# subtle: malloc's settings are the process's, not minibridge's: they apply to every library in it.
# Only glibc (Linux) has mallopt; elsewhere, or with MINIBRIDGE_KEEP_FREED_MEMORY=0, nothing changes.

KEEP_BYTES = 1 << 30  # blocks up to 1 GiB are reused, and up to 1 GiB of free memory is kept
_libc = None


def keep_freed_memory():
    """Make glibc's malloc keep large freed blocks for reuse (once per process); True if it now does."""
    global _libc
    if _libc is not None or os.environ.get("MINIBRIDGE_KEEP_FREED_MEMORY", "1") == "0" \
            or not sys.platform.startswith("linux"):
        return _libc is not None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): its own rules apply
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    if libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES):
        _libc = libc
    return _libc is not None


def release_freed_memory():
    """Hand the free memory malloc kept (keep_freed_memory) back to the operating system."""
    if _libc is not None:
        _libc.malloc_trim(0)


# ---- the speed technique: row blocks ----------------------------------------------------------
#
# NumPy runs each elementwise operation as a separate pass over memory, with a temporary array for
# each intermediate result. On a big array (GELU on [8, 325, 3072] is 8 M numbers, 32 MB) a chain of
# such passes spends its time moving data through memory, not computing. Run on a block of rows
# small enough to stay in the CPU cache, the same chain of operations reads and writes cache
# instead. Measured on a 2-core Intel Xeon VM (NumPy 2.4.6, float32, the base model's shapes at
# batch 8; benchmarks/bench_rowwise.py, results in benchmarks/results/2026-12-01-rowwise.txt): GELU
# 2.7-2.8x, QuickGELU 1.6-1.7x, softmax 1.5-1.6x, LayerNorm 1.1-1.2x faster (two runs) than the formula
# on the whole array.

BLOCK_NUMBERS = 1 << 15  # numbers per block: 32 K float32 (128 KB), a few of which fit in a core's L2


def rowwise(fn):
    """Decorator: run `fn(x, ...)` on blocks of rows of x (all axes but the last flattened).

    fn must work row by row: elementwise, or along the last axis only. The result is the same array
    the formula gives on the whole of x (tests/test_ops.py checks it; `fn.__wrapped__` is the plain
    formula). The wrapped function also takes `out=`: an array of x's shape to write into, which may
    be x itself (in place). On a GPU (CuPy) fn runs once on the whole array: there, one big kernel
    per step is the fast way.
    """

    @functools.wraps(fn)
    def blocked(x, *args, out=None, **kwargs):
        x = array_module(x).asarray(x)
        if is_cupy(x) or x.size <= BLOCK_NUMBERS:
            y = fn(x, *args, **kwargs)
            if out is None:
                return y
            out[...] = y
            return out
        x = np.ascontiguousarray(x)  # subtle: the row view below must not be a copy (a transposed input)
        rows = x.reshape(-1, x.shape[-1])  # [N, last], a view
        step = max(1, BLOCK_NUMBERS // x.shape[-1])
        first = fn(rows[:step], *args, **kwargs)  # its dtype is the output's, as for the whole array
        out = np.empty(x.shape, first.dtype) if out is None else out
        assert out.flags.c_contiguous and out.shape == x.shape, "rowwise writes into a C-contiguous out of x's shape"
        out_rows = out.reshape(-1, x.shape[-1])  # [N, last], a view
        out_rows[:step] = first
        for start in range(step, rows.shape[0], step):
            out_rows[start : start + step] = fn(rows[start : start + step], *args, **kwargs)
        return out

    return blocked
