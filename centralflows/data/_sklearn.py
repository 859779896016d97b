import sklearn.datasets
from jax.typing import DTypeLike

from .._options import Range, at_least, between, declare
from ._dataset import Dataset, float_dtype, split


def make_moons(
    *,
    n: int = 200,
    n_test: int = 100,
    noise: float = 0.2,
    seed: int = 0,
    dtype: DTypeLike | None = None,
) -> Dataset:
    """scikit-learn's two interleaving half circles in the plane, a binary task.

    **Arguments:**

    - `n`, `n_test`: numbers of training and test points (drawn together, then split).
    - `noise`: standard deviation of the Gaussian noise added to the points.
    - `seed`: seed of the draw.
    - `dtype`: floating dtype of the inputs (float64 under x64, else float32, by default).

    **Returns:**

    A binary [`centralflows.data.Dataset`][] with 2-d inputs.
    """
    x, y = sklearn.datasets.make_moons(n + n_test, noise=noise, random_state=seed)
    return split(x, y, n, input_dtype=float_dtype(dtype), num_classes=2, binary=True)


def make_circles(
    *,
    n: int = 200,
    n_test: int = 100,
    noise: float = 0.2,
    factor: float = 0.8,
    seed: int = 0,
    dtype: DTypeLike | None = None,
) -> Dataset:
    """scikit-learn's two concentric circles in the plane, a binary task.

    **Arguments:**

    - `n`, `n_test`: numbers of training and test points (drawn together, then split).
    - `noise`: standard deviation of the Gaussian noise added to the points.
    - `factor`: radius of the inner circle relative to the outer one, in `(0, 1)`.
    - `seed`: seed of the draw.
    - `dtype`: floating dtype of the inputs (float64 under x64, else float32, by default).

    **Returns:**

    A binary [`centralflows.data.Dataset`][] with 2-d inputs.
    """
    x, y = sklearn.datasets.make_circles(n + n_test, noise=noise, factor=factor, random_state=seed)
    return split(x, y, n, input_dtype=float_dtype(dtype), num_classes=2, binary=True)


def make_classification(
    *,
    n: int = 100,
    n_test: int = 100,
    classes: int = 2,
    features: int = 20,
    seed: int = 0,
    dtype: DTypeLike | None = None,
) -> Dataset:
    """scikit-learn's synthetic classification problem: Gaussian clusters (two per
    class) on the vertices of a 5-d hypercube, embedded among `features` features.

    **Arguments:**

    - `n`, `n_test`: numbers of training and test points (drawn together, then split).
    - `classes`: number of classes, 2 to 16.
    - `features`: input dimension, at least 5 (5 informative ones).
    - `seed`: seed of the draw.
    - `dtype`: floating dtype of the inputs (float64 under x64, else float32, by default).

    **Returns:**

    A [`centralflows.data.Dataset`][] with `features`-d inputs and `classes` classes.
    """
    x, y = sklearn.datasets.make_classification(
        n + n_test,
        n_features=features,
        n_informative=5,
        n_classes=classes,
        random_state=seed,
    )
    return split(x, y, n, input_dtype=float_dtype(dtype), num_classes=classes)


_SIZES = dict(n=at_least(1), n_test=at_least(0))
MOONS_OPTIONS = declare(make_moons, **_SIZES, noise=at_least(0.0))
CIRCLES_OPTIONS = declare(
    make_circles,
    **_SIZES,
    noise=at_least(0.0),
    factor=Range("a float in the open interval (0, 1)", lambda v: 0 < v < 1),
)
CLASSIFICATION_OPTIONS = declare(
    make_classification, **_SIZES, classes=between(2, 16), features=at_least(5)
)
