import numpy as np
import sklearn.datasets
from jax.typing import DTypeLike

from ._dataset import Dataset, float_dtype, split


def load_digits(
    *,
    n: int = 1000,
    n_test: int = 500,
    classes: int = 10,
    seed: int = 0,
    dtype: DTypeLike | None = None,
) -> Dataset:
    """Loads scikit-learn's 8x8 handwritten digits (1797 images, shipped with
    scikit-learn, so nothing is downloaded).

    Only the digits `0, ..., classes - 1` are kept. The examples are shuffled
    deterministically from `seed`; the first `n` form the training split and the next
    `n_test` the test split. Each of the 64 pixel features is standardised with the
    mean and standard deviation of the training split (a feature constant on the
    training split is only centred).

    **Arguments:**

    - `n`: number of training examples, at least 1.
    - `n_test`: number of test examples; 0 gives no test split.
    - `classes`: number of classes kept, between 2 and 10.
    - `seed`: seed of the shuffle.
    - `dtype`: floating dtype of the inputs. Defaults to float64 if JAX's x64 mode
        is enabled and float32 otherwise.

    **Returns:**

    A [`centralflows.data.Dataset`][] with flat inputs of dimension 64 (images of shape
    `(1, 8, 8)`) and labels in `0, ..., classes - 1`.
    """
    if n < 1:
        raise ValueError(f"`n` must be at least 1, got {n}.")
    if n_test < 0:
        raise ValueError(f"`n_test` must be non-negative, got {n_test}.")
    if not 2 <= classes <= 10:
        raise ValueError(f"`classes` must be between 2 and 10, got {classes}.")
    digits = sklearn.datasets.load_digits()
    keep = digits.target < classes
    inputs, labels = digits.data[keep], digits.target[keep]
    available = len(labels)
    if n + n_test > available:
        raise ValueError(
            f"`n + n_test = {n + n_test}` exceeds the {available} digits "
            f"images available with `classes={classes}`."
        )
    order = np.random.RandomState(seed).permutation(available)[: n + n_test]
    inputs, labels = inputs[order], labels[order]
    mean = inputs[:n].mean(axis=0)
    std = inputs[:n].std(axis=0)
    inputs = (inputs - mean) / np.where(std == 0, 1.0, std)
    return split(
        inputs,
        labels,
        n,
        input_dtype=float_dtype(dtype),
        num_classes=classes,
        image_shape=(1, 8, 8),
    )
