import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import sklearn.datasets
from jax.typing import DTypeLike
from jaxtyping import Array, Float


class Dataset(eqx.Module):
    """A supervised dataset held as arrays, with one-hot float targets.

    The same one-hot targets serve both the squared loss and cross-entropy.
    """

    x_train: Float[Array, "n_train d"]
    y_train: Float[Array, "n_train c"]
    x_test: Float[Array, "n_test d"] | None
    y_test: Float[Array, "n_test c"] | None
    num_classes: int = eqx.field(static=True)


Dataset.__init__.__doc__ = """**Arguments:**

- `x_train`: training inputs, one row per example.
- `y_train`: one-hot training targets.
- `x_test`: test inputs, or `None` for no test split.
- `y_test`: one-hot test targets, or `None` for no test split.
- `num_classes`: the number of classes `c`.
"""


def load_digits(
    *,
    n_train: int = 1000,
    n_test: int = 500,
    classes: int = 10,
    seed: int = 0,
    dtype: DTypeLike | None = None,
) -> Dataset:
    """Loads scikit-learn's 8x8 handwritten digits (1797 images, shipped with
    scikit-learn, so nothing is downloaded).

    Only the digits `0, ..., classes - 1` are kept. The examples are shuffled
    deterministically from `seed`; the first `n_train` form the training split and
    the next `n_test` the test split. Each of the 64 pixel features is standardised
    with the mean and standard deviation of the training split (a feature constant
    on the training split is only centred).

    **Arguments:**

    - `n_train`: number of training examples, at least 1.
    - `n_test`: number of test examples; 0 gives no test split.
    - `classes`: number of classes kept, between 2 and 10.
    - `seed`: seed of the shuffle.
    - `dtype`: floating dtype of the arrays. Defaults to float64 if JAX's x64 mode
        is enabled and float32 otherwise.

    **Returns:**

    A [`centralflows.data.Dataset`][] with inputs of dimension 64 and one-hot
    targets of dimension `classes`.
    """
    if n_train < 1:
        raise ValueError(f"`n_train` must be at least 1, got {n_train}.")
    if n_test < 0:
        raise ValueError(f"`n_test` must be non-negative, got {n_test}.")
    if not 2 <= classes <= 10:
        raise ValueError(f"`classes` must be between 2 and 10, got {classes}.")
    digits = sklearn.datasets.load_digits()
    keep = digits.target < classes
    inputs, labels = digits.data[keep], digits.target[keep]
    available = len(labels)
    if n_train + n_test > available:
        raise ValueError(
            f"`n_train + n_test = {n_train + n_test}` exceeds the {available} digits "
            f"images available with `classes={classes}`."
        )
    order = np.random.RandomState(seed).permutation(available)[: n_train + n_test]
    inputs, labels = inputs[order], labels[order]
    mean = inputs[:n_train].mean(axis=0)
    std = inputs[:n_train].std(axis=0)
    inputs = (inputs - mean) / np.where(std == 0, 1.0, std)
    targets = np.eye(classes)[labels]
    if dtype is None:
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    x_train = jnp.asarray(inputs[:n_train], dtype=dtype)
    y_train = jnp.asarray(targets[:n_train], dtype=dtype)
    if n_test == 0:
        x_test = y_test = None
    else:
        x_test = jnp.asarray(inputs[n_train:], dtype=dtype)
        y_test = jnp.asarray(targets[n_train:], dtype=dtype)
    return Dataset(x_train, y_train, x_test, y_test, num_classes=classes)
