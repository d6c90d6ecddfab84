"""Each activation's first and second derivatives against central differences,
and the Numba scalar versions against the NumPy ones."""
import numpy as np
import pytest

from tinymeta.gradcheck import rel_error
from tinymeta.nn import ACTIVATIONS, get_activation
from tinymeta.nn import kernels as K

pytestmark = pytest.mark.kernels

EPS = 1e-5


def _points(rng):
    z = rng.uniform(-6, 6, 400)
    return z[np.abs(z) > 1e-3]  # away from the ReLU kink


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_first_derivative_matches_central_differences(name, rng):
    act, z = get_activation(name), _points(rng)
    numeric = (act.f(z + EPS) - act.f(z - EPS)) / (2 * EPS)
    assert rel_error(act.d1(z), numeric) < 1e-9


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_second_derivative_matches_central_differences(name, rng):
    act, z = get_activation(name), _points(rng)
    numeric = (act.d1(z + EPS) - act.d1(z - EPS)) / (2 * EPS)
    if name == "relu":
        assert np.all(act.d2(z) == 0) and np.all(numeric == 0)
    else:
        assert rel_error(act.d2(z), numeric) < 1e-9


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_kernel_scalars_match_numpy(name, rng):
    act = get_activation(name)
    z = np.concatenate([_points(rng), [-40.0, 40.0, 0.0]])
    for scalar, vector in ((K.act_f, act.f), (K.act_d1, act.d1), (K.act_d2, act.d2)):
        got = np.array([scalar(act.code, float(x)) for x in z])
        np.testing.assert_allclose(got, vector(z), rtol=1e-14, atol=1e-15)


def test_large_inputs_do_not_overflow():
    z = np.array([-1000.0, 1000.0])
    for act in ACTIVATIONS.values():
        for fn in (act.f, act.d1, act.d2):
            assert np.all(np.isfinite(fn(z)))


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="activation must be one of .* got 'gelu'"):
        get_activation("gelu")
