import os
import pathlib
import pickle
import tarfile

import numpy as np
from jax.typing import DTypeLike

from ._dataset import Dataset, float_dtype, split

ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ENV = "CENTRALFLOWS_DATA"
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = "test_batch"
# The per-channel mean and standard deviation of the 50000 training images, in [0, 1].
_MEAN = np.array([0.49139968, 0.48215827, 0.44653124])
_STD = np.array([0.24703233, 0.24348505, 0.26158768])


def locate_cifar10(path: str | os.PathLike = "") -> pathlib.Path:
    """Where the CIFAR-10 python archive (or its extracted folder) is.

    **Arguments:**

    - `path`: the archive `cifar-10-python.tar.gz`, the folder `cifar-10-batches-py`,
        or a directory holding either; empty: the environment variable
        `CENTRALFLOWS_DATA`.

    **Returns:**

    The archive or the extracted folder. Raises `FileNotFoundError`, naming where it
    looked and how to get the archive, if neither is there.
    """
    given = str(path) or os.environ.get(ENV, "")
    if not given:
        raise FileNotFoundError(
            f"CIFAR-10 needs `data.path` (or the environment variable {ENV}) to name "
            f"{ARCHIVE} or its extracted folder {FOLDER}; download the archive from {URL}."
        )
    root = pathlib.Path(given).expanduser()
    for candidate in (root, root / ARCHIVE, root / FOLDER):
        if candidate.is_file() and candidate.name.endswith((".tar.gz", ".tgz")):
            return candidate
        if (candidate / _TEST).is_file():
            return candidate
    raise FileNotFoundError(
        f"CIFAR-10 not found at {root} (looked for {ARCHIVE} or a folder {FOLDER} "
        f"holding {_TEST}); download the archive from {URL} and give its path (or its "
        f"folder's) as `data.path` or in {ENV}."
    )


def _read_batches(location: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every batch of the archive or folder: name -> (uint8 images (N, 3072), labels)."""
    wanted = (*_TRAIN, _TEST)
    raw = {}
    if location.is_dir():
        for name in wanted:
            with open(location / name, "rb") as f:
                raw[name] = pickle.load(f, encoding="bytes")
    else:
        with tarfile.open(location, "r:gz") as archive:
            for member in archive:
                name = pathlib.PurePosixPath(member.name).name
                if member.isfile() and name in wanted:
                    raw[name] = pickle.load(archive.extractfile(member), encoding="bytes")
    missing = [name for name in wanted if name not in raw]
    if missing:
        raise FileNotFoundError(f"{location} lacks the CIFAR-10 batches {', '.join(missing)}.")
    return {
        name: (np.asarray(batch[b"data"], np.uint8), np.asarray(batch[b"labels"]))
        for name, batch in raw.items()
    }


def _first_per_class(labels: np.ndarray, total: int, classes: int, split_name: str) -> np.ndarray:
    """Indices of the first examples of each class, `total` in all, as even as possible."""
    counts = [total // classes + (i < total % classes) for i in range(classes)]
    chosen = []
    for label, count in enumerate(counts):
        where = np.flatnonzero(labels == label)
        if count > len(where):
            raise ValueError(
                f"CIFAR-10's {split_name} split has {len(where)} images of class {label}; "
                f"{count} were asked for."
            )
        chosen.append(where[:count])
    return np.concatenate(chosen)


def load_cifar10(
    *,
    path: str = "",
    n: int = 1000,
    n_test: int = 1000,
    classes: int | str = 10,
    seed: int = 0,
    dtype: DTypeLike | None = None,
) -> Dataset:
    """Loads a subset of CIFAR-10 from the standard python archive (nothing is downloaded).

    The training split is the first `n` training images of the classes `0, ..., classes
    - 1` (as many of each as possible, in the archive's order, then shuffled from
    `seed`), the test split the first `n_test` test images of those classes. Pixels are
    scaled to `[0, 1]` and normalised per channel with the training set's mean and
    standard deviation. With `classes="binary"` the task is airplane (label 0) against
    automobile (label 1), with one model output.

    **Arguments:**

    - `path`: the archive or its folder; see [`centralflows.data.locate_cifar10`][].
    - `n`: number of training examples.
    - `n_test`: number of test examples; 0 gives no test split.
    - `classes`: number of classes kept (2 to 10), or `"binary"`.
    - `seed`: seed of the shuffle of the training split.
    - `dtype`: floating dtype of the inputs (float64 under x64, else float32, by default).

    **Returns:**

    A [`centralflows.data.Dataset`][] with flat inputs of dimension 3072 (images of
    shape `(3, 32, 32)`, channels first).
    """
    binary = classes == "binary"
    count = 2 if binary else classes
    if not (binary or (isinstance(count, int) and 2 <= count <= 10)):
        raise ValueError(f"`classes` must be 2 to 10 or 'binary', got {classes!r}.")
    batches = _read_batches(locate_cifar10(path))
    train_x = np.concatenate([batches[name][0] for name in _TRAIN])
    train_y = np.concatenate([batches[name][1] for name in _TRAIN])
    test_x, test_y = batches[_TEST]
    keep = _first_per_class(train_y, n, count, "training")
    keep = keep[np.random.RandomState(seed).permutation(len(keep))]
    keep_test = _first_per_class(test_y, n_test, count, "test")
    images = np.concatenate([train_x[keep], test_x[keep_test]]).reshape(-1, 3, 32 * 32)
    images = (images / 255.0 - _MEAN[:, None]) / _STD[:, None]
    labels = np.concatenate([train_y[keep], test_y[keep_test]])
    return split(
        images.reshape(len(labels), -1),
        labels,
        n,
        input_dtype=float_dtype(dtype),
        num_classes=count,
        binary=binary,
        image_shape=(3, 32, 32),
    )
