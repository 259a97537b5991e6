"""The gradient checker (backward/gradcheck.py) on functions whose gradient is known by hand."""

import numpy as np
import pytest

from minibridge.backward.gradcheck import numerical_gradient, rel_error


def test_numerical_gradient_of_a_cube_is_three_squares():
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]], dtype=np.float32)
    num = numerical_gradient(lambda x: (x**3).sum(), x)
    assert num.dtype == np.float64 and num.shape == x.shape
    np.testing.assert_allclose(num, 3 * x.astype(np.float64) ** 2, rtol=1e-8, atol=1e-8)


def test_numerical_gradient_leaves_x_as_it_was():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    numerical_gradient(lambda x: (x * x).sum(), x)
    np.testing.assert_array_equal(x, np.arange(6).reshape(2, 3))


def test_numerical_gradient_refuses_an_array_valued_f():
    with pytest.raises(ValueError, match=r"one number .*\(f\(x\) \* dy\)\.sum\(\).* shape \(3,\)"):
        numerical_gradient(np.tanh, np.zeros(3))


def test_rel_error_is_max_difference_over_max_sum():
    a, b = np.array([1.0, -2.0, 4.0]), np.array([1.0, -2.5, 4.0])
    assert rel_error(a, b) == pytest.approx(0.5 / 8.0)  # max|a − b| = 0.5, max(|a| + |b|) = 8
    assert rel_error(a, a) == 0.0
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0  # not 0/0


def test_the_docstring_example():
    """gradcheck's docstring example: QuickGELU's backward against central differences, below 1e-7."""
    from minibridge.backward.ops import quick_gelu_backward
    from minibridge.ops import quick_gelu

    r = np.random.default_rng(0)
    x, dy = r.standard_normal((3, 4)), r.standard_normal((3, 4))
    num = numerical_gradient(lambda x: (quick_gelu(x) * dy).sum(), x)
    assert rel_error(num, quick_gelu_backward(x, dy)) < 1e-7
    assert rel_error(num, 2 * quick_gelu_backward(x, dy)) > 0.1  # a wrong gradient is far off
