from collections.abc import Callable
from typing import Literal

import numpy as np
import sklearn.datasets
from jax.typing import DTypeLike

from ._dataset import Dataset, float_dtype, split

# Each generator draws `total` points from `seed` and its own keyword parameters, and
# returns the inputs, the labels and the number of classes (2 for a binary task).
_Draw = Callable[..., tuple[np.ndarray, np.ndarray, int]]


def _moons(total: int, seed: int, *, noise: float = 0.2):
    return (*sklearn.datasets.make_moons(total, noise=noise, random_state=seed), 2)


def _circles(total: int, seed: int, *, noise: float = 0.2, factor: float = 0.8):
    return (
        *sklearn.datasets.make_circles(total, noise=noise, factor=factor, random_state=seed),
        2,
    )


def _classification(total: int, seed: int, *, classes: int = 2, features: int = 20):
    x, y = sklearn.datasets.make_classification(
        total, n_features=features, n_informative=5, n_classes=classes, random_state=seed
    )
    return x, y, classes


# name -> (generator, whether the task is binary)
_GENERATORS: dict[str, tuple[_Draw, bool]] = {
    "moons": (_moons, True),
    "circles": (_circles, True),
    "classification": (_classification, False),
}


def make_sklearn(
    name: Literal["moons", "circles", "classification"],
    *,
    n: int = 200,
    n_test: int = 100,
    seed: int = 0,
    dtype: DTypeLike | None = None,
    **parameters,
) -> Dataset:
    """One of scikit-learn's synthetic datasets, drawn once and split into train and test.

    - `"moons"`: two interleaving half circles in the plane, a binary task. Parameter
        `noise = 0.2`: the standard deviation of the Gaussian noise added to the points.
    - `"circles"`: two concentric circles in the plane, a binary task. Parameters
        `noise = 0.2` and `factor = 0.8`: the inner circle's radius relative to the
        outer one, in `(0, 1)`.
    - `"classification"`: Gaussian clusters (two per class) on the vertices of a 5-d
        hypercube, embedded among `features` features. Parameters `classes = 2` (2 to
        16) and `features = 20` (at least 5, the informative ones).

    **Arguments:**

    - `name`: the dataset.
    - `n`, `n_test`: numbers of training and test points (drawn together, then split).
    - `seed`: seed of the draw.
    - `dtype`: floating dtype of the inputs (float64 under x64, else float32, by default).
    - `parameters`: the dataset's own parameters, above.

    **Returns:**

    A [`centralflows.data.Dataset`][] with 2-d inputs (`features`-d for
    `"classification"`), binary for the moons and the circles.
    """
    if name not in _GENERATORS:
        raise ValueError(
            f"Unknown dataset {name!r}; the scikit-learn datasets are "
            f"{', '.join(map(repr, _GENERATORS))}."
        )
    draw, binary = _GENERATORS[name]
    x, y, classes = draw(n + n_test, seed, **parameters)
    return split(x, y, n, input_dtype=float_dtype(dtype), num_classes=classes, binary=binary)
