"""backend.rowwise, measured: each row-wise primitive in cache-sized row blocks vs its plain formula on
the whole array (`fn.__wrapped__`), on the shapes of the base model at batch 8. Not a test; run

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_rowwise.py

Both forms compute the same numbers (tests/test_ops.py); this says what the blocks buy. Rounds
alternate the two forms; the best of each is reported with the spread of the ratio over rounds.
"""

import platform
import time

import numpy as np

from minibridge import ops

ROUNDS = 7


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def once(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main():
    rng = np.random.default_rng(0)
    ln = {"weight": rng.standard_normal(768).astype(np.float32), "bias": rng.standard_normal(768).astype(np.float32)}
    cases = [  # (name, primitive, input, extra arguments): the base model's biggest calls at batch 8
        ("gelu [8, 325, 3072]", ops.gelu, rng.standard_normal((8, 325, 3072), dtype=np.float32), ()),
        ("quick_gelu [8, 325, 3072]", ops.quick_gelu, rng.standard_normal((8, 325, 3072), dtype=np.float32), ()),
        ("layer_norm [8, 325, 768]", ops.layer_norm, rng.standard_normal((8, 325, 768), dtype=np.float32), (ln, 1e-5)),
        ("softmax [8, 12, 325, 325]", ops.softmax, rng.standard_normal((8, 12, 325, 325), dtype=np.float32), ()),
    ]
    print(f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores, NumPy {np.__version__}; best of {ROUNDS}")
    print(f"{'':28} {'plain (ms)':>11} {'rowwise (ms)':>13} {'speed-up':>9} {'range over rounds':>18}")
    for name, fn, x, args in cases:
        plain, blocked = [], []
        for _ in range(ROUNDS):
            plain.append(once(fn.__wrapped__, x, *args))
            blocked.append(once(fn, x, *args))
        ratios = np.array(plain) / np.array(blocked)
        print(f"{name:28} {min(plain) * 1e3:11.1f} {min(blocked) * 1e3:13.1f} {min(plain) / min(blocked):8.1f}x "
              f"{ratios.min():8.1f}x – {ratios.max():.1f}x")


if __name__ == "__main__":
    main()
