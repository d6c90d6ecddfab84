"""Loss gradients and Hessian-vector products against central differences,
and the Numba loss kernels against the NumPy reference."""
import numpy as np
import pytest

from tinymeta.gradcheck import numerical_gradient, numerical_hvp, rel_error
from tinymeta.nn import kernels as K
from tinymeta.nn.losses import get_loss, softmax

pytestmark = pytest.mark.kernels


def _targets(name, rng, n, m):
    return rng.integers(0, m, n) if name == "xent" else rng.standard_normal((n, m))


@pytest.mark.parametrize("name", ["mse", "xent"])
def test_gradient_matches_central_differences(name, rng):
    loss = get_loss(name)
    out, y = rng.standard_normal((6, 4)), _targets(name, rng, 6, 4)
    f = lambda o: loss.value_and_grad(o.reshape(6, 4), y)[0]  # noqa: E731
    assert rel_error(loss.value_and_grad(out, y)[1].ravel(), numerical_gradient(f, out.ravel())) < 1e-9


@pytest.mark.parametrize("name", ["mse", "xent"])
def test_hvp_matches_differences_of_gradients(name, rng):
    loss = get_loss(name)
    out, y, v = rng.standard_normal((6, 4)), _targets(name, rng, 6, 4), rng.standard_normal((6, 4))
    g = lambda o: loss.value_and_grad(o.reshape(6, 4), y)[1].ravel()  # noqa: E731
    assert rel_error(loss.hvp(out, y, v).ravel(), numerical_hvp(g, out.ravel(), v.ravel())) < 1e-9


def test_mse_is_mean_over_samples_of_sum_over_outputs():
    out, Y = np.array([[1.0, 2.0], [0.0, 0.0]]), np.zeros((2, 2))
    assert get_loss("mse").value_and_grad(out, Y)[0] == pytest.approx((1 + 4) / 2)


def test_xent_is_stable_for_huge_logits():
    value, grad = get_loss("xent").value_and_grad(np.array([[1000.0, -1000.0, 0.0]]), np.array([1]))
    assert value == pytest.approx(2000.0) and np.all(np.isfinite(grad))


def test_xent_equals_log_softmax_definition(rng):
    out, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    expected = -np.mean(np.log(softmax(out)[np.arange(5), y]))
    assert get_loss("xent").value_and_grad(out, y)[0] == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernels_match_reference(dtype, rng):
    out, Y, v = (rng.standard_normal((6, 4)).astype(dtype) for _ in range(3))
    labels = rng.integers(0, 4, 6)
    tol = 1e-13 if dtype == "float64" else 1e-6
    dout, ddot, P = np.empty_like(out), np.empty_like(out), np.empty_like(out)
    value, grad = get_loss("mse").value_and_grad(out, Y)
    assert K.mse_kernel(out, Y, dout) == pytest.approx(value, rel=tol)
    assert rel_error(dout, grad) < tol
    K.mse_r_kernel(v, ddot)
    assert rel_error(ddot, get_loss("mse").hvp(out, Y, v)) < tol
    value, grad = get_loss("xent").value_and_grad(out.astype(np.float64), labels)
    assert K.xent_kernel(out, labels, dout, P) == pytest.approx(value, rel=tol)
    assert rel_error(dout, grad) < tol
    K.xent_r_kernel(P, v, ddot)
    assert rel_error(ddot, get_loss("xent").hvp(out.astype(np.float64), labels, v.astype(np.float64))) < tol


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="loss must be one of .* got 'hinge'"):
        get_loss("hinge")
