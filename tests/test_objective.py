"""Tests for `centralflows.Objective`: values, derivatives, chunking, metrics."""

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.flatten_util as jfu  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from centralflows import Objective  # noqa: E402
from centralflows._objective import objective_and_start  # noqa: E402

# ---------------------------------------------------------------------------
# A tiny tanh MLP (4 -> 7 -> 2, 51 parameters) with a per-example MSE loss.


def _mlp(p, x):
    h = jnp.tanh(x @ p["W1"] + p["b1"])
    return h @ p["W2"] + p["b2"]


def _mse(p, x, y):
    return 0.5 * jnp.sum((_mlp(p, x) - y) ** 2)


def _params(key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "W1": jax.random.normal(k1, (4, 7)) / 2.0,
        "b1": 0.1 * jax.random.normal(k2, (7,)),
        "W2": jax.random.normal(k3, (7, 2)) / jnp.sqrt(7.0),
        "b2": 0.1 * jax.random.normal(k4, (2,)),
    }


def _data(key, num):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (num, 4)), jax.random.normal(ky, (num, 2))


@pytest.fixture(scope="module")
def problem():
    key = jax.random.PRNGKey(0)
    kp, kd, kw = jax.random.split(key, 3)
    params = _params(kp)
    obj = Objective.supervised(_mse, params, _data(kd, 20))
    w0, _ = jfu.ravel_pytree(params)
    # Move away from the initial point so nothing is special about it.
    w = w0 + 0.3 * jax.random.normal(kw, w0.shape)
    return obj, w


# Jitted entry points: eager dispatch of the many small ops is far slower than compiling.
_value = eqx.filter_jit(lambda obj, w: obj.value(w))
_grad = eqx.filter_jit(lambda obj, w: obj.grad(w))
_hvp = eqx.filter_jit(lambda obj, w, v: obj.hvp(w, v))
_hvps = eqx.filter_jit(lambda obj, w, vs: obj.hvps(w, vs))
_third = eqx.filter_jit(lambda obj, w, u, v: obj.third_order(w, u, v))


def _rel(a, b):
    """Norm-wise relative error ‖a − b‖ / ‖b‖."""
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ---------------------------------------------------------------------------
# Hessian-vector products.


def test_parameter_count(problem):
    obj, w = problem
    assert w.shape == (51,)
    assert w.dtype == jnp.float64


def test_value_is_mean_of_example_losses(problem):
    obj, w = problem
    params = obj.unravel(w)
    x, y = obj.train
    expected = np.mean([float(_mse(params, x[i], y[i])) for i in range(x.shape[0])])
    # Same sum in a different order: float64 round-off only.
    np.testing.assert_allclose(float(obj.value(w)), expected, rtol=1e-13)


def test_hvp_matches_dense_hessian(problem):
    obj, w = problem
    hess = jax.jit(jax.hessian(obj.value))(w)
    assert np.linalg.norm(hess) > 1e-2  # not a degenerate problem
    vs = jax.random.normal(jax.random.PRNGKey(1), (3, w.size))
    for v in vs:
        # Both are exact AD in float64; only round-off separates them.
        assert _rel(_hvp(obj, w, v), hess @ v) < 1e-12
    assert _rel(_hvps(obj, w, vs), vs @ hess.T) < 1e-12
    # The batched rows agree with one-at-a-time HVPs.
    assert _rel(_hvps(obj, w, vs)[1], _hvp(obj, w, vs[1])) < 1e-13


def test_grad_matches_value_and_grad(problem):
    obj, w = problem
    value, grad = obj.value_and_grad(w)
    np.testing.assert_allclose(value, obj.value(w), rtol=1e-14)
    np.testing.assert_allclose(grad, jax.grad(obj.value)(w), rtol=1e-13, atol=1e-15)
    # And the gradient is what finite differences say (step 1e-5, O(h²) ≈ 1e-10).
    d = jax.random.normal(jax.random.PRNGKey(7), w.shape)
    h = 1e-5
    fd = (_value(obj, w + h * d) - _value(obj, w - h * d)) / (2 * h)
    np.testing.assert_allclose(jnp.vdot(grad, d), fd, rtol=1e-7)


# ---------------------------------------------------------------------------
# Third-order terms.


def test_third_order_matches_finite_differences(problem):
    obj, w = problem
    ku, kv, kd = jax.random.split(jax.random.PRNGKey(2), 3)
    u = jax.random.normal(ku, w.shape)
    v = jax.random.normal(kv, w.shape)
    t = _third(obj, w, u, v)
    assert np.linalg.norm(t) > 1e-2
    h = 1e-4
    for d in jax.random.normal(kd, (3, w.size)):
        f = lambda s: jnp.vdot(u, _hvp(obj, w + s * d, v))
        fd = (f(h) - f(-h)) / (2 * h)
        # Central differences: truncation O(h²) ≈ 1e-8 relative, round-off ≈ 1e-12.
        np.testing.assert_allclose(jnp.vdot(t, d), fd, rtol=1e-6, atol=1e-9)


def test_third_order_matches_dense_third_derivative(problem):
    obj, w = problem
    ku, kv = jax.random.split(jax.random.PRNGKey(3))
    u = jax.random.normal(ku, w.shape)
    v = jax.random.normal(kv, w.shape)
    tensor = jax.jit(jax.jacfwd(jax.hessian(obj.value)))(w)  # T[a, b, c] = ∂a∂b∂c L
    expected = jnp.einsum("abc,a,b->c", tensor, u, v)
    assert _rel(_third(obj, w, u, v), expected) < 1e-11  # exact AD, round-off only


def test_third_order_symmetric_in_u_v(problem):
    obj, w = problem
    ku, kv = jax.random.split(jax.random.PRNGKey(4))
    u = jax.random.normal(ku, w.shape)
    v = jax.random.normal(kv, w.shape)
    a = _third(obj, w, u, v)
    b = _third(obj, w, v, u)
    # Mathematically identical (H is symmetric); round-off only.
    assert _rel(a, b) < 1e-12
    # ... and genuinely bilinear: scaling u scales the result.
    assert _rel(_third(obj, w, 2.5 * u, v), 2.5 * a) < 1e-13


# ---------------------------------------------------------------------------
# Chunked accumulation.


def _acc(p, x, y):
    return (jnp.argmax(_mlp(p, x)) == jnp.argmax(y)).astype(x.dtype)


@eqx.filter_jit
def _everything(obj, w, vs, u, v):
    value, grad = obj.value_and_grad(w)
    return {
        "value": value,
        "grad": grad,
        "hvps": obj.hvps(w, vs),
        "third": obj.third_order(w, u, v),
        "metrics": obj.metrics(w),
    }


@pytest.fixture(scope="module")
def chunk_reference():
    key = jax.random.PRNGKey(5)
    kp, kd, kt, kv = jax.random.split(key, 4)
    params = _params(kp)
    w, _ = jfu.ravel_pytree(params)
    vs = jax.random.normal(kv, (3, w.size))
    return params, w, vs, kd, kt


@pytest.mark.parametrize(
    "num, chunk",
    [(37, 1), (37, 5), (37, 37), (37, 100)],
)
def test_chunked_matches_unchunked(chunk_reference, num, chunk):
    params, w, vs, kd, kt = chunk_reference
    train = _data(kd, num)
    test = _data(kt, 13)  # a test split smaller than some chunk sizes
    make = lambda c: Objective.supervised(
        _mse, params, train, test=test, example_accuracy=_acc, chunk_size=c
    )
    chunked, full = make(chunk), make(None)
    # Chunking is actually in effect whenever the chunk is smaller than the data.
    assert chunked.chunk_size == (chunk if chunk < num else None)
    a = _everything(chunked, w, vs, vs[0], vs[1])
    b = _everything(full, w, vs, vs[0], vs[1])
    # Only the summation order differs: float64 round-off, ~1e-15 per term.
    for name in ("value", "grad", "hvps", "third"):
        assert _rel(a[name], b[name]) < 1e-12, name
    assert set(a["metrics"]) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    for name in a["metrics"]:
        np.testing.assert_allclose(a["metrics"][name], b["metrics"][name], rtol=1e-12)
    # Accuracy is a fraction of whole examples (padding contributes nothing).
    correct = float(a["metrics"]["train_acc"]) * num
    assert np.isclose(correct, round(correct))


def _temp_bytes(objective: Objective, w) -> dict[str, int]:
    """XLA's temporary buffers (compiled memory analysis, nothing run) of the gradient,
    three batched HVPs and a third-order term."""
    arrays, static = eqx.partition(objective, eqx.is_array)
    vs = jnp.ones((3, w.size))
    programs = {
        "grad": (lambda o, w, vs: o.grad(w)),
        "hvps": (lambda o, w, vs: o.hvps(w, vs)),
        "third": (lambda o, w, vs: o.third_order(w, vs[0], vs[1])),
    }
    out = {}
    for name, fn in programs.items():
        jitted = jax.jit(lambda a, w, vs, fn=fn: fn(eqx.combine(a, static), w, vs))
        out[name] = jitted.lower(arrays, w, vs).compile().memory_analysis().temp_size_in_bytes
    return out


def test_chunks_bound_the_memory_of_derivatives():
    # A wide layer (2 inputs -> 512 tanh units) makes each example's intermediates 256
    # times its data: with chunks of 25, 16 times the examples must leave the derivatives'
    # temporary memory (which may copy the data once) about the same; all at once it grows
    # with them (which shows the measure sees intermediates).
    key = jax.random.key(0)
    params = {"W1": jnp.ones((2, 512)) / 2, "b1": jnp.zeros(512), "W2": jnp.ones((512, 1)) / 512}
    params["b2"] = jnp.zeros(1)
    w = jfu.ravel_pytree(params)[0]
    temp = {}
    for num in (100, 1600):
        x = jax.random.normal(key, (num, 2))
        data = (x, jnp.sum(x, axis=1, keepdims=True))
        for chunk in (25, None):
            objective = Objective.supervised(_mse, params, data, chunk_size=chunk)
            temp[num, chunk] = _temp_bytes(objective, w)
    data_bytes = 1600 * 3 * 8
    for name in ("grad", "hvps", "third"):
        assert temp[1600, None][name] > 8 * temp[100, None][name], (name, temp)
        assert temp[1600, 25][name] < 1.5 * temp[100, 25][name] + 2 * data_bytes, (name, temp)


def _normalized_mse(p, x, y):
    # Inputs normalised to unit length: a common preprocessing, NaN at x = 0.
    return _mse(p, x / jnp.linalg.norm(x), y)


def test_chunk_padding_does_not_poison_result(chunk_reference):
    params, w, _, kd, _ = chunk_reference
    train = _data(kd, 37)
    full = Objective.supervised(_normalized_mse, params, train)
    chunked = Objective.supervised(_normalized_mse, params, train, chunk_size=5)
    assert np.isfinite(float(full.value(w)))
    np.testing.assert_allclose(chunked.value(w), full.value(w), rtol=1e-12)


# ---------------------------------------------------------------------------
# from_function on a pytree, unravel.


def _closed_form_loss(p):
    return jnp.sum(p["a"] ** 2 * p["b"]) + jnp.sin(p["c"]) * jnp.sum(p["b"])


def _closed_form_grad(p):
    return {
        "a": 2 * p["a"] * p["b"],
        "b": jnp.sum(p["a"] ** 2, axis=0) + jnp.sin(p["c"]),
        "c": jnp.cos(p["c"]) * jnp.sum(p["b"]),
    }


def test_from_function_gradient_on_pytree():
    params = {
        "a": jnp.arange(6.0).reshape(2, 3) / 3 - 0.5,
        "b": jnp.array([0.5, -1.0, 2.0]),
        "c": jnp.array(0.7),
    }
    obj = Objective.from_function(_closed_form_loss, params)
    w, unravel = jfu.ravel_pytree(params)
    assert w.shape == (10,)
    np.testing.assert_allclose(obj.value(w), _closed_form_loss(params), rtol=1e-15)
    expected, _ = jfu.ravel_pytree(_closed_form_grad(params))
    np.testing.assert_allclose(obj.grad(w), expected, rtol=1e-14, atol=1e-15)
    # Hessian of this polynomial-trig function, densely, versus hvp.
    hess = jax.jit(jax.hessian(obj.value))(w)
    v = jnp.linspace(-1.0, 1.0, 10)
    np.testing.assert_allclose(_hvp(obj, w, v), hess @ v, rtol=1e-13, atol=1e-14)
    # Metrics: only the train loss without data.
    assert set(obj.metrics(w)) == {"train_loss"}
    np.testing.assert_allclose(obj.metrics(w)["train_loss"], _closed_form_loss(params))


def test_unravel_round_trips():
    params = {
        "a": jnp.arange(6.0).reshape(2, 3),
        "b": jnp.array([0.5, -1.0, 2.0]),
        "c": jnp.array(0.7),
    }
    obj = Objective.from_function(_closed_form_loss, params)
    w, _ = jfu.ravel_pytree(params)
    back = obj.unravel(w)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for key in params:
        assert back[key].shape == params[key].shape
        np.testing.assert_array_equal(back[key], params[key])
    w2 = jnp.arange(10.0) * 1.5
    np.testing.assert_array_equal(jfu.ravel_pytree(obj.unravel(w2))[0], w2)


# ---------------------------------------------------------------------------
# Metrics on a hand-made example.


def _lin_loss(p, x, y):
    return (jnp.dot(p["w"], x) - y) ** 2


def _lin_acc(p, x, y):
    return (jnp.sign(jnp.dot(p["w"], x)) == y).astype(x.dtype)


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_metrics_hand_made(chunk_size):
    params = {"w": jnp.array([1.0, -1.0])}
    # Scores w·x: 2, -1, 0.5, -3 ; labels +1, -1, -1, +1 -> 2 of 4 correct.
    x = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.0, 3.0]])
    y = jnp.array([1.0, -1.0, -1.0, 1.0])
    # Test scores: 1, 1, -2 ; labels +1, +1, -1 -> all correct.
    xt = jnp.array([[1.0, 0.0], [2.0, 1.0], [0.0, 2.0]])
    yt = jnp.array([1.0, 1.0, -1.0])
    obj = Objective.supervised(
        _lin_loss,
        params,
        (x, y),
        test=(xt, yt),
        example_accuracy=_lin_acc,
        chunk_size=chunk_size,
    )
    w = jnp.array([1.0, -1.0])
    m = obj.metrics(w)
    assert set(m) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    # Train residuals 1, 0, 1.5, -4 -> mean square (1 + 0 + 2.25 + 16) / 4.
    np.testing.assert_allclose(m["train_loss"], 19.25 / 4, rtol=1e-15)
    np.testing.assert_allclose(m["train_acc"], 0.5, rtol=1e-15)
    # Test residuals 0, 0, -1 -> 1/3.
    np.testing.assert_allclose(m["test_loss"], 1 / 3, rtol=1e-15)
    np.testing.assert_allclose(m["test_acc"], 1.0, rtol=1e-15)
    np.testing.assert_allclose(m["train_loss"], obj.value(w), rtol=1e-15)


def test_metrics_without_accuracy_or_test():
    params = {"w": jnp.array([1.0, -1.0])}
    x = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    y = jnp.array([1.0, -1.0])
    obj = Objective.supervised(_lin_loss, params, (x, y))
    m = obj.metrics(jnp.array([1.0, -1.0]))
    assert set(m) == {"train_loss"}
    np.testing.assert_allclose(m["train_loss"], 0.5, rtol=1e-15)


# ---------------------------------------------------------------------------
# Validation at the API boundary.


def test_mismatched_examples_raise():
    params = {"w": jnp.zeros(2)}
    x, y = jnp.zeros((5, 2)), jnp.zeros(4)
    with pytest.raises(ValueError, match="train"):
        Objective.supervised(_lin_loss, params, (x, y))
    with pytest.raises(ValueError, match="test"):
        Objective.supervised(
            _lin_loss,
            params,
            (jnp.zeros((4, 2)), y),
            test=(jnp.zeros((3, 2)), jnp.zeros(2)),
        )


@pytest.mark.parametrize("chunk_size", [0, -1, -10])
def test_invalid_chunk_size_raises(chunk_size):
    params = {"w": jnp.zeros(2)}
    with pytest.raises(ValueError, match="chunk_size"):
        Objective.supervised(
            _lin_loss, params, (jnp.zeros((4, 2)), jnp.zeros(4)), chunk_size=chunk_size
        )


def test_a_start_from_weak_typed_scalars_is_strongly_typed():
    # Else the first segment (weak-typed state) and the next (strongly typed) would be
    # two compiled programs.
    w0 = {"x": jnp.array(0.0), "y": jnp.array(1.0)}
    assert jfu.ravel_pytree(w0)[0].weak_type
    objective, w, unravel = objective_and_start(lambda p: p["x"] ** 2 + p["y"], w0)
    assert not w.weak_type and w.dtype == jnp.zeros(()).dtype
    np.testing.assert_array_equal(w, [0.0, 1.0])
    assert float(objective.value(w)) == 1.0 and float(unravel(w)["y"]) == 1.0
    with pytest.raises(ValueError, match="parameters; the objective has"):
        objective_and_start(objective, {"x": jnp.zeros(3)})
