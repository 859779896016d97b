from collections.abc import Callable
from typing import Literal, NamedTuple

from .._options import Option
from . import _cifar10, _digits, _sequences, _sklearn
from ._dataset import Dataset


class DatasetSpec(NamedTuple):
    """A named dataset: its loader, the loader's declared options and the inputs it gives.

    The loader is called as `load(**options, seed=...)` (and `dtype=...` unless the
    inputs are tokens).
    """

    load: Callable[..., Dataset]
    options: dict[str, Option]
    inputs: Literal["vectors", "images", "tokens"]


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(_digits.load_digits, _digits.OPTIONS, "images"),
    "cifar10": DatasetSpec(_cifar10.load_cifar10, _cifar10.OPTIONS, "images"),
    "sorting": DatasetSpec(_sequences.make_sorting, _sequences.SORTING_OPTIONS, "tokens"),
    "copying": DatasetSpec(_sequences.make_copying, _sequences.COPYING_OPTIONS, "tokens"),
    "moons": DatasetSpec(_sklearn.make_moons, _sklearn.MOONS_OPTIONS, "vectors"),
    "circles": DatasetSpec(_sklearn.make_circles, _sklearn.CIRCLES_OPTIONS, "vectors"),
    "classification": DatasetSpec(
        _sklearn.make_classification, _sklearn.CLASSIFICATION_OPTIONS, "vectors"
    ),
}
