import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, Int, Shaped

IGNORE = -1
"""The label of a position that carries no target (e.g. the prompt of a sequence task)."""


class Dataset(eqx.Module):
    """A supervised dataset held as arrays, with integer labels.

    A label is a class index in `0, ..., num_classes - 1` (for a binary task `0` or `1`,
    with a single model output), or [`centralflows.data.IGNORE`][] for a sequence
    position without a target. Image inputs are kept flat where the model may be an MLP;
    `image_shape` says how an image model reshapes them.
    """

    x_train: Shaped[Array, "n_train ..."]
    y_train: Int[Array, "n_train ..."]
    x_test: Shaped[Array, "n_test ..."] | None
    y_test: Int[Array, "n_test ..."] | None
    num_classes: int = eqx.field(static=True)
    binary: bool = eqx.field(static=True, default=False)
    image_shape: tuple[int, ...] | None = eqx.field(static=True, default=None)
    vocab: int | None = eqx.field(static=True, default=None)

    @property
    def out_size(self) -> int:
        """The model's outputs per example (or per position): 1 for a binary task."""
        return 1 if self.binary else self.num_classes


Dataset.__init__.__doc__ = """**Arguments:**

- `x_train`: training inputs, one per row (floats, or integer tokens for a sequence task).
- `y_train`: training labels.
- `x_test`: test inputs, or `None` for no test split.
- `y_test`: test labels, or `None` for no test split.
- `num_classes`: the number of classes `c` (2 for a binary task).
- `binary`: whether the task is binary, with one output whose sign is the prediction.
- `image_shape`: `(channels, height, width)` of an image, or `None` if the inputs are
    not images.
- `vocab`: the number of distinct input tokens of a sequence task, else `None`.
"""


def float_dtype(dtype: DTypeLike | None) -> DTypeLike:
    """`dtype`, or float64 if JAX's x64 mode is enabled and float32 otherwise."""
    return jax.dtypes.canonicalize_dtype(jnp.float64) if dtype is None else dtype


def split(
    inputs: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    input_dtype: DTypeLike,
    **kwargs,
) -> Dataset:
    """The first `n` rows as the training split and the rest as the test split.

    **Arguments:**

    - `inputs`, `labels`: all examples, training ones first.
    - `n`: the number of training examples.
    - `input_dtype`: the dtype of the inputs on the device.
    - `kwargs`: the static fields of [`centralflows.data.Dataset`][].

    **Returns:**

    A [`centralflows.data.Dataset`][]; without test split when there are no more rows.
    """
    # Split on the host and `device_put`: slicing device arrays, and `jnp.asarray`,
    # would compile a program per shape.
    x = np.asarray(inputs, dtype=input_dtype)
    y = np.asarray(labels, dtype=np.int32)
    if len(labels) == n:
        return Dataset(jax.device_put(x), jax.device_put(y), None, None, **kwargs)
    return Dataset(*jax.device_put((x[:n], y[:n], x[n:], y[n:])), **kwargs)
