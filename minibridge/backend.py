"""The one module that knows CuPy exists.

Every function in minibridge takes its array module from the data it is given (STYLE habit 6):

    xp = array_module(x)        # numpy for NumPy arrays, cupy for CuPy arrays
    y = xp.exp(x)

so the same code runs on the CPU and, when the weights were moved with `to_device`, on a GPU.
There is no global "current backend" to forget to reset.
"""

import numpy as np


def array_module(x):
    """numpy, or cupy when `x` is a CuPy array (without importing cupy otherwise)."""
    if type(x).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_numpy(x):
    """A NumPy array from a NumPy or CuPy array (a no-op for NumPy)."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return x


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
