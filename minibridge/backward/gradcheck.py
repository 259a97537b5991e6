"""Checking a backward pass by finite differences: the numerical gradient and the relative error.

The way CS231n checks every hand-written `*_backward`: nudge each input number by ±eps, see how a
scalar function moves, and compare that slope with the analytic gradient, in float64.

    num = numerical_gradient(lambda x: (quick_gelu(x) * dy).sum(), x)  # x, dy: float64 arrays
    print(f"relative error {rel_error(num, quick_gelu_backward(x, dy)):.1e}")  # below 1e-7: right

The scalar (f(x) · dy).sum() has gradient exactly `f_backward(x, dy)`, so any f with an array
output is checked this way, with a random dy. f must compute in float64 throughout: one float32
step (ops.gelu's erf, ops.cross_entropy's returned loss) rounds f by ~1e-7, which the division by
2·eps turns into an error of ~0.1 in the slope.
"""

import numpy as np

from ..backend import to_numpy


def numerical_gradient(f, x, eps=1e-6):
    """∂f/∂x by central differences (f(x + eps) − f(x − eps)) / 2eps, one number of x at a time.

    f: a function of an array returning one number; x: the point, any shape (a float64 copy is
    nudged, so x itself is left as it was). Returns the gradient, float64, of x's shape.
    Costs 2 · x.size calls of f: for small inputs only.
    """
    x = np.array(to_numpy(x), dtype=np.float64)  # a copy: nudged in place below
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f(x)
        x[i] = old - eps
        down = f(x)
        x[i] = old
        if np.size(up) != 1:
            raise ValueError(f"numerical_gradient needs f(x) to be one number (e.g. (f(x) * dy).sum()), "
                             f"got an array of shape {np.shape(up)}")
        # subtle: in float64 eps = 1e-6 balances the two errors, the O(eps²) of the formula and
        # the rounding of f (about 1e-16 · |f| / eps); float32 rounding would swamp the slope.
        grad[i] = (float(up) - float(down)) / (2 * eps)
    return grad


def rel_error(a, b):
    """max|a − b| / max(|a| + |b|): the relative error between two gradients, one number.

    Rough guide in float64 (CS231n): below 1e-7 the gradient is right; 1e-7 to 1e-4, look again
    (acceptable near a kink such as ReLU's); above 1e-2 it is wrong. 0 when both are all zero.
    """
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    scale = (np.abs(a) + np.abs(b)).max(initial=0.0)
    return float(np.abs(a - b).max(initial=0.0) / scale) if scale > 0 else 0.0
