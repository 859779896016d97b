import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from centralflows.data import Dataset, load_digits
from centralflows.models import MLP, accuracy, cross_entropy, mse


def test_digits_shapes_dtypes_labels():
    data = load_digits(n=300, n_test=100, dtype=jnp.float32)
    assert isinstance(data, Dataset)
    assert data.x_train.shape == (300, 64) and data.y_train.shape == (300,)
    assert data.x_test is not None and data.y_test is not None
    assert data.x_test.shape == (100, 64) and data.y_test.shape == (100,)
    assert data.num_classes == data.out_size == 10 and not data.binary
    assert data.image_shape == (1, 8, 8)
    for array in (data.x_train, data.x_test):
        assert array.dtype == jnp.float32
    for y in (data.y_train, data.y_test):
        assert y.dtype == jnp.int32
        assert jnp.all((y >= 0) & (y < 10))
    # Every digit occurs in a shuffled sample of 300.
    assert jnp.all(jnp.bincount(data.y_train, length=10) > 0)


def test_digits_default_dtype():
    data = load_digits(n=10, n_test=0)
    assert data.x_train.dtype == jax.dtypes.canonicalize_dtype(jnp.float64)
    assert data.x_test is None and data.y_test is None


def test_digits_standardized():
    data = load_digits(n=500, n_test=200, dtype=jnp.float32)
    x = np.asarray(data.x_train, dtype=np.float64)
    std = x.std(axis=0)
    # float32 rounding of values of order 1.
    assert np.allclose(x.mean(axis=0), 0.0, atol=1e-5)
    # Features constant on the train split (border pixels) are only centred.
    constant = std < 1e-6
    assert 0 < constant.sum() < 64
    assert np.allclose(std[~constant], 1.0, atol=1e-5)
    assert np.all(x[:, constant] == 0)
    # The test split uses the train statistics, so is only roughly standardized.
    assert not np.allclose(np.asarray(data.x_test).mean(axis=0), 0.0, atol=1e-5)


def test_digits_deterministic():
    a = load_digits(n=50, n_test=20, seed=3)
    b = load_digits(n=50, n_test=20, seed=3)
    c = load_digits(n=50, n_test=20, seed=4)
    assert eqx.tree_equal(a, b)
    assert not jnp.array_equal(a.y_train, c.y_train)
    # The shuffle does not depend on the split sizes.
    d = load_digits(n=70, n_test=0, seed=3)
    assert jnp.array_equal(d.y_train, jnp.concatenate([a.y_train, a.y_test]))


def test_digits_class_filtering():
    data = load_digits(n=300, n_test=60, classes=3)
    assert data.num_classes == 3
    assert data.y_train.shape == (300,) and data.y_test.shape == (60,)
    assert jnp.array_equal(jnp.unique(data.y_train), jnp.arange(3))
    # Digits 0, 1, 2 number 178 + 182 + 177 = 537.
    load_digits(n=500, n_test=37, classes=3)
    with pytest.raises(ValueError, match="537"):
        load_digits(n=500, n_test=38, classes=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=1500, n_test=500), "1797"),
        (dict(n=0), "`n`"),
        (dict(n_test=-1), "n_test"),
        (dict(classes=1), "classes"),
        (dict(classes=11), "classes"),
    ],
)
def test_digits_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_digits(**kwargs)


def test_mlp_output_shape_and_dtype():
    model = MLP(64, 10, key=jr.key(0), dtype=jnp.float32)
    x = jnp.ones((5, 64), jnp.float32)
    out = jax.vmap(model)(x)
    assert out.shape == (5, 10) and out.dtype == jnp.float32
    assert model(x[0]).shape == (10,)
    assert MLP(4, 3, key=jr.key(0)).layers[0].weight.dtype == (
        jax.dtypes.canonicalize_dtype(jnp.float64)
    )


@pytest.mark.parametrize("width, depth", [(32, 2), (7, 1), (5, 3), (4, 0)])
def test_mlp_parameter_count(width, depth):
    d, c = 64, 10
    model = MLP(d, c, width=width, depth=depth, key=jr.key(0))
    count = sum(p.size for p in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
    if depth == 0:
        expected = (d + 1) * c
    else:
        expected = (d + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * c
    assert count == expected
    assert len(model.layers) == depth + 1


def test_mlp_deterministic_from_key():
    a = MLP(8, 3, width=6, key=jr.key(1))
    b = MLP(8, 3, width=6, key=jr.key(1))
    c = MLP(8, 3, width=6, key=jr.key(2))
    assert eqx.tree_equal(a, b)
    assert not jnp.array_equal(a.layers[0].weight, c.layers[0].weight)
    # Each layer gets its own key.
    assert not jnp.array_equal(a.layers[1].weight[:, :6], a.layers[0].weight[:, :6])


@pytest.mark.parametrize(
    "name, fn",
    [
        ("tanh", jnp.tanh),
        ("relu", jax.nn.relu),
        ("gelu", jax.nn.gelu),
        ("softplus", jax.nn.softplus),
        ("silu", jax.nn.silu),
    ],
)
def test_mlp_activation(name, fn):
    model = MLP(3, 2, width=4, depth=1, activation=name, key=jr.key(0))
    x = jnp.array([0.5, -1.0, 2.0])
    first, last = model.layers
    expected = last.weight @ fn(first.weight @ x + first.bias) + last.bias
    assert jnp.allclose(model(x), expected)


def test_mlp_bad_activation():
    with pytest.raises(ValueError, match="'tanh', 'relu', 'gelu', 'softplus', 'silu'"):
        MLP(3, 2, activation="sigmoid", key=jr.key(0))


def test_mse():
    outputs = jnp.array([1.0, 2.0, -1.0])
    target = jnp.array([0.0, 1.0, 0.0])
    # 0.5 * (1 + 1 + 1)
    assert jnp.allclose(mse(outputs, target), 1.5)
    assert mse(target, target) == 0


def test_cross_entropy():
    target = jnp.array([0.0, 1.0, 0.0])
    # Equal logits: -log(1/3).
    assert jnp.allclose(cross_entropy(jnp.zeros(3), target), jnp.log(3.0))
    outputs = jnp.array([1.0, 2.0, 3.0])
    expected = -(2.0 - np.log(np.exp(1.0) + np.exp(2.0) + np.exp(3.0)))
    assert jnp.allclose(cross_entropy(outputs, target), expected)
    # Stable for large logits.
    assert jnp.allclose(cross_entropy(jnp.array([0.0, 1000.0, 0.0]), target), 0.0)


def test_accuracy():
    target = jnp.array([0.0, 1.0, 0.0])
    outputs = jnp.array([0.1, 0.9, 0.3])
    right = accuracy(outputs, target)
    wrong = accuracy(jnp.array([0.1, 0.2, 0.3]), target)
    assert right == 1.0 and wrong == 0.0
    assert right.dtype == outputs.dtype
    batch = jax.vmap(accuracy)(jnp.eye(3), jnp.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1]]))
    assert jnp.array_equal(batch, jnp.array([1.0, 0.0, 1.0]))
