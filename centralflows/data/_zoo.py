import functools
from collections.abc import Callable
from typing import NamedTuple

from .._options import Inputs, Option
from . import _cifar10, _digits, _sequences, _sklearn
from ._dataset import Dataset
from ._declared import DECLARED


class DatasetSpec(NamedTuple):
    """A named dataset: its loader, the loader's declared options and the inputs it gives.

    The loader is called as `load(**options, seed=...)` (and `dtype=...` unless the
    inputs are tokens).
    """

    load: Callable[..., Dataset]
    options: dict[str, Option]
    inputs: Inputs


_LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": _digits.load_digits,
    "cifar10": _cifar10.load_cifar10,
    **{
        task: functools.partial(_sequences.make_sequence_task, task)
        for task in ("sorting", "copying")
    },
    **{
        name: functools.partial(_sklearn.make_sklearn, name)
        for name in ("moons", "circles", "classification")
    },
}

# The options are declared in `_declared.py`, jax-free, for the command line.
DATASETS: dict[str, DatasetSpec] = {
    name: DatasetSpec(_LOADERS[name], declared.options, declared.inputs)
    for name, declared in DECLARED.items()
}
