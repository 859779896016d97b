import functools
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
    **{
        task: DatasetSpec(
            functools.partial(_sequences.make_sequence_task, task), _sequences.OPTIONS, "tokens"
        )
        for task in ("sorting", "copying")
    },
    **{
        name: DatasetSpec(functools.partial(_sklearn.make_sklearn, name), options, "vectors")
        for name, options in _sklearn.OPTIONS.items()
    },
}
