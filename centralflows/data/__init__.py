"""The datasets of the zoo, imported on first use (see `centralflows._lazy`); `_declared`
holds their config options without jax."""

from typing import TYPE_CHECKING

from .._lazy import attach

if TYPE_CHECKING:
    from ._cifar10 import load_cifar10 as load_cifar10
    from ._cifar10 import locate_cifar10 as locate_cifar10
    from ._dataset import IGNORE as IGNORE
    from ._dataset import Dataset as Dataset
    from ._digits import load_digits as load_digits
    from ._sequences import make_sequence_task as make_sequence_task
    from ._sklearn import make_sklearn as make_sklearn
    from ._zoo import DATASETS as DATASETS
    from ._zoo import DatasetSpec as DatasetSpec

_EXPORTS = {
    "load_cifar10": "._cifar10",
    "locate_cifar10": "._cifar10",
    "IGNORE": "._dataset",
    "Dataset": "._dataset",
    "load_digits": "._digits",
    "make_sequence_task": "._sequences",
    "make_sklearn": "._sklearn",
    "DATASETS": "._zoo",
    "DatasetSpec": "._zoo",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = attach(__name__, _EXPORTS)
