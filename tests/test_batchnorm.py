"""Batch normalisation's VJP, JVP and R-backward against central differences."""
import numpy as np

from tinymeta import gradcheck as gc
from tinymeta.nn.batchnorm import normalize, normalize_apply, normalize_r_backward


def _case(rng, n=5, d=4):
    return rng.standard_normal((n, d)) * 2 + 1, rng.standard_normal((n, d)), rng.standard_normal((n, d))


def test_normalised_columns_have_zero_mean_and_unit_variance_up_to_eps(rng):
    A = rng.standard_normal((50, 3)) * 10 + 4
    X_hat, sigma = normalize(A, eps=0.0)
    assert np.allclose(X_hat.mean(axis=0), 0, atol=1e-14) and np.allclose(X_hat.std(axis=0), 1)
    assert np.allclose(sigma, A.std(axis=0))


def test_vjp_matches_finite_differences(rng):
    A, G, _ = _case(rng)
    X_hat, sigma = normalize(A)
    f = lambda a: np.sum(normalize(a.reshape(A.shape))[0] * G)  # noqa: E731
    assert gc.rel_error(normalize_apply(X_hat, sigma, G).ravel(), gc.numerical_gradient(f, A.ravel())) < 1e-9


def test_jvp_is_the_same_symmetric_operator(rng):
    A, A_dot, _ = _case(rng)
    X_hat, sigma = normalize(A)
    numeric = gc.numerical_jvp(lambda a: normalize(a)[0], A, A_dot)
    assert gc.rel_error(normalize_apply(X_hat, sigma, A_dot), numeric) < 1e-9


def test_r_backward_matches_finite_differences_of_the_vjp(rng):
    A, A_dot, dX_hat = _case(rng)
    dX_hat_dot = rng.standard_normal(A.shape)
    X_hat, sigma = normalize(A)
    got = normalize_r_backward(X_hat, sigma, A_dot, dX_hat, dX_hat_dot)

    def vjp(eps_dir):  # dA at (A + r A_dot) for cotangent dX_hat + r dX_hat_dot, as a function of r
        a = A + eps_dir * A_dot
        return normalize_apply(*normalize(a), dX_hat + eps_dir * dX_hat_dot)

    numeric = (vjp(1e-5) - vjp(-1e-5)) / 2e-5
    assert gc.rel_error(got, numeric) < 1e-8


def test_single_row_normalises_to_zero_without_nan():
    X_hat, sigma = normalize(np.array([[3.0, -1.0]]))
    assert np.all(X_hat == 0) and np.all(np.isfinite(sigma))
