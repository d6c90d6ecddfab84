"""The MLP spec: parameter layout, initialisation, configuration and the
errors a user gets for bad input."""
import numpy as np
import pytest

import tinymeta as tm


def test_layout_is_row_major_weights_then_bias_layer_by_layer():
    net = tm.MLP([2, 3, 1])
    theta = np.arange(net.n_params, dtype=float)
    (W0, b0), (W1, b1) = net.unflatten(theta)
    assert net.n_params == 2 * 3 + 3 + 3 * 1 + 1
    np.testing.assert_array_equal(W0, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(b0, [6, 7, 8])
    np.testing.assert_array_equal(W1, [[9], [10], [11]])
    np.testing.assert_array_equal(b1, [12])


def test_unflatten_returns_views():
    net = tm.MLP([2, 3, 1])
    theta = np.zeros(net.n_params)
    net.unflatten(theta)[1][0][2, 0] = 5.0
    assert theta[11] == 5.0


def test_forward_matches_the_layer_formula(rng):
    net = tm.MLP([3, 4, 2], activation="tanh")
    theta, X = net.init(rng), rng.standard_normal((5, 3))
    (W0, b0), (W1, b1) = net.unflatten(theta)
    expected = np.tanh(X @ W0 + b0) @ W1 + b1
    for backend in ("numpy", "numba"):
        np.testing.assert_allclose(net.replace(backend=backend).forward(theta, X), expected, rtol=1e-13)


@pytest.mark.parametrize("scheme,activation", [("he", "relu"), ("glorot", "tanh"), ("maml", "relu")])
def test_init_schemes_have_their_documented_statistics(scheme, activation, rng):
    net = tm.MLP([400, 300, 1], activation=activation)
    theta = net.init(rng, scheme=scheme)
    (W0, b0), _ = net.unflatten(theta)
    assert theta.dtype == np.float64 and theta.flags.c_contiguous
    assert np.all(b0 == 0)
    if scheme == "he":
        assert W0.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    elif scheme == "glorot":
        assert np.abs(W0).max() <= np.sqrt(6 / 700) and W0.std() == pytest.approx(np.sqrt(2 / 700), rel=0.02)
    else:
        assert np.abs(W0).max() <= 0.02 and W0.std() == pytest.approx(0.0088, rel=0.03)


def test_init_default_scheme_follows_activation(rng):
    relu, tanh = tm.MLP([50, 50, 1]), tm.MLP([50, 50, 1], activation="tanh")
    a = relu.init(np.random.default_rng(1))
    assert np.array_equal(a, relu.init(np.random.default_rng(1), scheme="he"))
    assert np.array_equal(tanh.init(np.random.default_rng(1)), tanh.init(np.random.default_rng(1), scheme="glorot"))


def test_init_same_seed_same_numbers():
    net = tm.MLP([1, 40, 40, 1])
    assert np.array_equal(net.init(np.random.default_rng(3)), net.init(np.random.default_rng(3)))


def test_init_float32():
    net = tm.MLP([1, 40, 1], dtype="float32")
    assert net.init(np.random.default_rng(0)).dtype == np.float32


def test_init_requires_a_generator():
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        tm.MLP([1, 2]).init(0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        tm.MLP([1, 2]).init(np.random.default_rng(0), scheme="xavier")


def test_config_round_trips_and_spec_is_frozen():
    net = tm.MLP([1, 40, 40, 1], activation="tanh", loss="mse", dtype=np.float32, backend="numpy")
    assert net.dtype == "float32"
    assert tm.MLP(**net.config()) == net
    assert tm.MLP(**net.replace(batchnorm=True).config()).batchnorm is True
    assert net.replace(dtype="float64").dtype == "float64"
    with pytest.raises(AttributeError):
        net.sizes = (1, 2)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(sizes=[1]), ValueError, "at least an input and an output"),
    (dict(sizes=[1, 0, 1]), ValueError, r"sizes\[1\] must be >= 1, got 0"),
    (dict(sizes=[1, 2.5]), TypeError, r"sizes\[1\] must be an integer"),
    (dict(sizes="12"), TypeError, "sizes must be a sequence"),
    (dict(sizes=[1, 2], activation="gelu"), ValueError, "activation must be one of"),
    (dict(sizes=[1, 2], loss="hinge"), ValueError, "loss must be one of"),
    (dict(sizes=[3, 1], loss="xent"), ValueError, "needs at least 2 outputs"),
    (dict(sizes=[1, 2], dtype="float16"), ValueError, "dtype must be one of"),
    (dict(sizes=[1, 2], dtype="nonsense"), ValueError, "dtype must be one of"),
    (dict(sizes=[1, 2], backend="jax"), ValueError, "backend must be one of"),
    (dict(sizes=[1, 2], batchnorm=1), TypeError, "batchnorm must be True or False, got 1"),
])
def test_bad_spec_raises_a_named_error(kwargs, error, message):
    with pytest.raises(error, match=message):
        tm.MLP(**kwargs)


@pytest.fixture(params=["numba", "numpy"])
def mse_net(request):
    return tm.MLP([2, 5, 1], backend=request.param)


def _good(net, rng, n=4):
    return net.init(rng), rng.standard_normal((n, net.sizes[0])), rng.standard_normal((n, net.sizes[-1]))


def test_wrong_theta_length(mse_net, rng):
    theta, X, y = _good(mse_net, rng)
    with pytest.raises(ValueError, match=r"theta must have shape \(21,\), got \(20,\)"):
        mse_net.loss(theta[:-1], X, y)


def test_wrong_X_width(mse_net, rng):
    theta, X, y = _good(mse_net, rng)
    with pytest.raises(ValueError, match=r"X must have shape \(n, 2\), got \(4, 3\)"):
        mse_net.forward(theta, np.ones((4, 3)))


def test_mismatched_y(mse_net, rng):
    theta, X, y = _good(mse_net, rng)
    with pytest.raises(ValueError, match=r"y must have shape \(4, 1\), got \(3, 1\)"):
        mse_net.loss_and_grad(theta, X, y[:3])
    with pytest.raises(ValueError, match=r"use y.reshape\(-1, 1\)"):
        mse_net.loss_and_grad(theta, X, y[:, 0])


@pytest.mark.parametrize("arg", ["theta", "X", "y", "v"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(mse_net, rng, arg, bad):
    theta, X, y = _good(mse_net, rng)
    args = dict(theta=theta, X=X, y=y, v=np.ones_like(theta))
    args[arg] = args[arg].copy()
    args[arg].flat[1] = bad
    with pytest.raises(ValueError, match=f"{arg} must be finite, got 1 non-finite"):
        mse_net.hvp(**args)


@pytest.mark.parametrize("dtype", [np.int64, np.complex128, object, bool])
def test_non_float_inputs_are_refused(mse_net, rng, dtype):
    theta, X, y = _good(mse_net, rng)
    with pytest.raises(TypeError, match="X must be a real floating-point array"):
        mse_net.forward(theta, X.astype(dtype))


def test_empty_batch_is_refused(mse_net, rng):
    theta, _, _ = _good(mse_net, rng)
    with pytest.raises(ValueError, match="X must not be empty"):
        mse_net.forward(theta, np.ones((0, 2)))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_labels_are_checked(backend, rng):
    net = tm.MLP([2, 5, 3], loss="xent", backend=backend)
    theta, X = net.init(rng), rng.standard_normal((4, 2))
    with pytest.raises(ValueError, match=r"labels in 0..2, got values from 0 to 3"):
        net.loss(theta, X, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels in 0..2, got values from -1"):
        net.loss(theta, X, np.array([0, 1, 2, -1]))
    with pytest.raises(TypeError, match="integer class labels, got dtype float64"):
        net.loss(theta, X, np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
        net.loss(theta, X, np.array([0, 1]))


def test_vjp_checks_dout(mse_net, rng):
    theta, X, _ = _good(mse_net, rng)
    with pytest.raises(ValueError, match=r"dout must have shape \(4, 1\), got \(4, 2\)"):
        mse_net.vjp(theta, X, np.ones((4, 2)))


def test_inputs_are_not_modified_and_may_be_strided_or_read_only(mse_net, rng):
    theta, X, y = _good(mse_net, rng)
    wide = np.zeros((4, 4))
    wide[:, ::2] = X
    strided = wide[:, ::2]
    frozen = theta.copy()
    frozen.flags.writeable = False
    before = strided.copy()
    expected = mse_net.loss_and_grad(theta, X, y)
    got = mse_net.loss_and_grad(frozen, strided, y)
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1])
    assert np.array_equal(strided, before)


def test_float32_inputs_are_converted_for_a_float64_net(rng):
    net = tm.MLP([2, 5, 1])
    theta, X, y = _good(net, rng)
    assert net.forward(theta, X.astype(np.float32)).dtype == np.float64
