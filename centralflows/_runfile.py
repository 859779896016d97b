"""The HDF5 run file: named time series, one row per logged step, readable mid-run.

This layer knows nothing about the mathematics; it stores what it is given under the
names it is given (`discrete/train_loss`, `distances/discrete-midpoint`, ...), and a
checkpoint: a list of arrays, kept in two slots so that writing one is atomic.
"""

import contextlib
import difflib
import errno
import json
import math
import os
import pathlib
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import h5py
import numpy as np

from ._hdf5 import (
    Superblock,
    WriterBusyError,
    WriterLock,
    clear_stale_flags,
    is_disk_full,
    live_writer,
    open_patched,
    open_swmr,
    read_superblock,
)

_FORMAT = "centralflows-run"
_FORMAT_VERSION = 2  # 2: the `checkpoint` group
_RESERVED_ATTRS = ("format", "format_version", "json_keys")
_RESERVED_GROUPS = ("step", "checkpoint")
_FILL: dict[str, float | int] = {"float64": np.nan, "int64": -1}
_ROW_CHUNK = 256  # rows per chunk, at most
_CHUNK_BYTES = 1 << 20  # bytes per chunk, at most (large rows get fewer rows per chunk)
_VARIABLE_CHUNK = 16  # chunk length along a variable-width axis
_MIN_CHECKPOINT_CHUNK = 64  # elements per chunk of a checkpoint array, at least
_READ_ATTEMPTS = 20  # reads of a checkpoint that a running writer may replace meanwhile
_H5_ERRORS = (OSError, KeyError, RuntimeError)  # how h5py reports a damaged file
_LISTED = 6  # damaged items named in an error message, at most


class RunFileError(OSError):
    """Raised for a run file that is damaged: cut short (an interrupted copy, a full disk)
    or corrupt. The message names the file and says what is damaged;
    `load_run(path, salvage=True)` returns what is intact."""


_COPY_BYTES = 64 << 20  # about this many bytes per block of rows that `RunWriter.reopen` copies


class SeriesSpec(NamedTuple):
    """The per-row shape and dtype of one time series.

    **Arguments:**

    - `shape`: the shape of one row: `()` for a scalar, `(k,)` for a vector; a `None`
        entry is a variable-width axis that starts at width 1 and grows as wider rows
        are written.
    - `dtype`: `"float64"` (prefilled with NaN) or `"int64"` (prefilled with -1).
    """

    shape: tuple[int | None, ...]
    dtype: str = "float64"


def _check_specs(num_rows: int, series: Mapping[str, SeriesSpec]) -> None:
    if isinstance(num_rows, bool) or not isinstance(num_rows, int | np.integer) or num_rows < 1:
        raise ValueError(f"`num_rows` must be a positive integer, got {num_rows!r}.")
    for name, spec in series.items():
        parts = name.split("/") if isinstance(name, str) else []
        if len(parts) < 2 or not all(parts):
            raise ValueError(
                f"Series name {name!r} must be a path 'group/name' of non-empty parts, "
                "such as 'discrete/train_loss'."
            )
        if parts[0] in _RESERVED_GROUPS:
            raise ValueError(
                f"Series name {name!r}: {parts[0]!r} is reserved by the run-file format."
            )
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in series:
                raise ValueError(
                    f"Series {name!r} lies inside series {prefix!r}; a name cannot be "
                    "both a series and a group."
                )
        if not isinstance(spec, SeriesSpec):
            raise ValueError(f"Series {name!r}: expected a SeriesSpec, got {spec!r}.")
        if not isinstance(spec.shape, tuple) or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 1)
            for d in spec.shape
        ):
            raise ValueError(
                f"Series {name!r}: shape must be a tuple of positive ints or None, "
                f"got {spec.shape!r}."
            )
        if spec.dtype not in _FILL:
            raise ValueError(
                f"Series {name!r}: dtype must be one of {sorted(_FILL)}, got {spec.dtype!r}."
            )


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_attrs(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    encoded: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in attrs.items():
        if key in _RESERVED_ATTRS:
            raise ValueError(f"Attribute {key!r} is reserved by the run-file format.")
        if value is None or isinstance(value, dict | list | tuple):
            try:
                encoded[key] = json.dumps(value, default=_json_default)
            except TypeError as e:
                raise ValueError(f"Attribute {key!r} cannot be stored as JSON: {e}.") from e
            json_keys.append(key)
        elif isinstance(value, str) or np.asarray(value).dtype.kind in "biufc":
            encoded[key] = value
        else:
            raise ValueError(
                f"Attribute {key!r}: cannot store a {type(value).__name__}; use a "
                "number, string, numeric array, dict or list."
            )
    return encoded, json_keys


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    row_bytes = 8 * math.prod(shape[1:])
    rows = max(1, min(shape[0], _ROW_CHUNK, _CHUNK_BYTES // max(row_bytes, 1)))
    return (rows, *shape[1:])


class Checkpoint(NamedTuple):
    """A checkpoint read back from a run file: the `step` saved with it and its arrays."""

    step: int
    arrays: list[np.ndarray]


def _create_checkpoint(file: h5py.File, layout: Sequence[Any]) -> None:
    """Two slots of one resizable 1-D dataset per array, with a table of shapes, and
    `checkpoint/current` = `[slot, step]` (-1: none yet)."""
    ndim = max((len(a.shape) for a in layout), default=0)
    for slot in ("0", "1"):
        group = file.create_group(f"checkpoint/{slot}")
        group.create_dataset(
            "shapes", shape=(len(layout), max(ndim, 1)), dtype="int64", fillvalue=-1
        )
        for i, array in enumerate(layout):
            dtype = np.dtype(array.dtype)
            size = max(_MIN_CHECKPOINT_CHUNK, math.prod(array.shape))
            group.create_dataset(
                str(i),
                shape=(0,),
                maxshape=(None,),
                dtype=dtype,
                chunks=(min(size, _CHUNK_BYTES // dtype.itemsize),),
            )
    file.create_dataset("checkpoint/current", data=np.array([-1, -1], np.int64))


def _current(file: h5py.File) -> tuple[int, int]:
    """`(slot, step)` of the current checkpoint; `(-1, -1)` if there is none."""
    if "checkpoint" not in file:  # format version 1
        return (-1, -1)
    slot, step = file["checkpoint/current"][()]
    return int(slot), int(step)


def _read_checkpoint(file: h5py.File) -> Checkpoint | None:
    slot, step = _current(file)
    if slot < 0:
        return None
    group = file[f"checkpoint/{slot}"]
    arrays = []
    for i, shape in enumerate(group["shapes"][()]):
        arrays.append(group[str(i)][()].reshape(tuple(int(d) for d in shape if d >= 0)))
    return Checkpoint(step, arrays)


class RunWriter:
    """Writes a run file: one row per logged step, every series preallocated (NaN),
    readable during the run (SWMR).

    A writer holds a lock on the file (`.<name>.lock` beside it) until it is closed or its
    process dies, so that a second writer is refused, naming this one.
    """

    path: pathlib.Path
    num_rows: int

    def __init__(
        self,
        file: h5py.File,
        path: pathlib.Path,
        num_rows: int,
        series: Mapping[str, SeriesSpec],
        checkpoint_ndims: Sequence[int],
        lock: WriterLock | None = None,
    ):
        """Private: use [`RunWriter.create`][] or [`RunWriter.reopen`][]."""
        self._file = file
        self.path = path
        self.num_rows = num_rows
        self._series = dict(series)
        self._checkpoint_ndims = tuple(checkpoint_ndims)
        self._lock = lock
        self._rows_done = 0  # leading rows written, for messages
        self._failed = False

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        num_rows: int,
        series: Mapping[str, SeriesSpec],
        attrs: Mapping[str, Any],
        overwrite: bool = False,
        checkpoint: Sequence[Any] = (),
    ) -> "RunWriter":
        """Create a run file with every series preallocated and switch it to SWMR mode.

        **Arguments:**

        - `path`: where to write the file; parent directories are created.
        - `num_rows`: the number of rows (logged steps) every series holds.
        - `series`: maps HDF5 paths such as `"discrete/train_loss"` to their
            [`centralflows.SeriesSpec`][]; `"/step"` is always added.
        - `attrs`: root attributes; dicts, lists, tuples and `None` are stored as
            JSON (tuples come back as lists), numbers, strings and numeric arrays as
            themselves.
        - `overwrite`: whether to replace an existing file at `path` (never one that
            another live process is writing).
        - `checkpoint`: the arrays a checkpoint holds (arrays, or anything with `shape`
            and `dtype`): their number, dtypes and ranks are fixed here, their shapes may
            change from one checkpoint to the next. See `write_checkpoint`.

        **Returns:**

        An open `RunWriter`; close it (or use it as a context manager) when done.
        """
        path = pathlib.Path(path)
        _check_specs(num_rows, series)
        encoded_attrs, json_keys = _encode_attrs(attrs)
        exists_message = (
            f"Run file {str(path)!r} already exists; pass `overwrite=True` "
            "(`--overwrite` on the command line) to replace it."
        )
        if not overwrite and path.exists():
            raise FileExistsError(exists_message)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = WriterLock.acquire(path)
        try:
            return cls._build(
                path, path, lock, int(num_rows), series, encoded_attrs, json_keys, overwrite,
                checkpoint, exists_message,
            )  # fmt: skip
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _build(
        cls, target, path, lock, num_rows, series, encoded_attrs, json_keys, overwrite,
        checkpoint, exists_message="",
    ) -> "RunWriter":  # fmt: skip
        """Write a new run file at `target`, a writer of `path` holding `lock`."""
        try:
            file = h5py.File(target, "w" if overwrite else "w-", libver="latest")
        except FileExistsError as e:  # created by someone else since the check above
            raise FileExistsError(exists_message) from e
        except OSError as e:
            raise _disk_error(e, target, "creating it", None) from e
        try:
            file.create_dataset(
                "step",
                shape=(num_rows,),
                dtype="int64",
                chunks=_chunks((num_rows,)),
                fillvalue=-1,
            )
            for name, spec in series.items():
                shape = (num_rows, *(1 if d is None else d for d in spec.shape))
                chunk_row = (_VARIABLE_CHUNK if d is None else d for d in spec.shape)
                file.create_dataset(
                    name,
                    shape=shape,
                    maxshape=(num_rows, *spec.shape),
                    dtype=spec.dtype,
                    chunks=_chunks((num_rows, *chunk_row)),
                    fillvalue=_FILL[spec.dtype],
                )
            _create_checkpoint(file, checkpoint)
            file.attrs.update(encoded_attrs)
            file.attrs["json_keys"] = json.dumps(json_keys)
            file.attrs["format"] = _FORMAT
            file.attrs["format_version"] = _FORMAT_VERSION
            file.swmr_mode = True  # attributes cannot be written after this
        except BaseException as e:  # an I/O failure: leave no half-made run file behind
            with contextlib.suppress(Exception):
                file.close()
            pathlib.Path(target).unlink(missing_ok=True)
            if isinstance(e, OSError):
                raise _disk_error(e, path, "creating it", None) from e
            raise
        ndims = [len(a.shape) for a in checkpoint]
        return cls(file, pathlib.Path(path), num_rows, series, ndims, lock)

    @classmethod
    def reopen(
        cls, path: str | os.PathLike[str], *, num_rows: int, attrs: Mapping[str, Any]
    ) -> "RunWriter":
        """Reopen a run file for writing, with a new number of rows and attributes.

        The file is rebuilt beside itself (a temporary file in the same directory) with
        the same series and checkpoint layout, every row written so far and its current
        checkpoint, then moved over the old file in one atomic rename. Until then the old
        file is untouched, and if anything fails it stays as it was. This works on a file
        left behind by a killed writer (and clears its "open for writing" flag); a file
        that another live process writes is refused, naming it.

        **Arguments:**

        - `path`: the run file.
        - `num_rows`: the number of rows of the new file; at least the rows written.
        - `attrs`: attributes to add or replace (as for `create`).

        **Returns:**

        An open `RunWriter` on `path`.
        """
        path = pathlib.Path(path)
        if not path.exists():
            raise FileNotFoundError(f"No run file at {str(path)!r}.")
        lock = WriterLock.acquire(path)
        try:
            writer = cls._rebuild(path, lock, num_rows, attrs)
        except BaseException:
            lock.release()
            raise
        return writer

    @classmethod
    def _rebuild(cls, path, lock, num_rows, attrs) -> "RunWriter":
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed rebuild's
            stale.unlink(missing_ok=True)  # (we hold the lock: no live one's)
        old = load_run(path, series=False)
        done = old.steps_done
        if isinstance(num_rows, bool) or not isinstance(num_rows, int) or num_rows < done:
            raise ValueError(
                f"`num_rows` must be an integer of at least the {done} rows already "
                f"written to {str(path)!r} (rows are never dropped), got {num_rows!r}."
            )
        merged = {k: v for k, v in old.attrs.items() if k not in _RESERVED_ATTRS}
        merged.update(attrs)
        encoded_attrs, json_keys = _encode_attrs(merged)
        with _open_run(path) as (source, _):
            series = {}

            def add(name: str, obj: h5py.HLObject) -> None:
                if isinstance(obj, h5py.Dataset) and name.split("/")[0] not in _RESERVED_GROUPS:
                    series[name] = SeriesSpec(tuple(obj.maxshape[1:]), str(obj.dtype))

            try:
                source.visititems(add)
                checkpoint = _read_checkpoint(source)
                row_bytes = max(
                    (8 * math.prod(source[name].shape[1:]) for name in series), default=8
                )
            except _H5_ERRORS as error:
                raise _damaged(path) from error
            layout = () if checkpoint is None else checkpoint.arrays
            block = max(1, (_COPY_BYTES // row_bytes))
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            try:
                writer = cls._build(
                    temp, path, lock, num_rows, series, encoded_attrs, json_keys, True, layout
                )
                with contextlib.ExitStack() as on_error:
                    on_error.callback(writer._close_file)
                    for start in range(0, done, block):
                        stop = min(start + block, done)
                        try:
                            rows = {name: source[name][start:stop] for name in series}
                        except _H5_ERRORS as error:
                            raise _damaged(path) from error
                        writer.write(start, rows)
                    if checkpoint is not None:
                        writer.write_checkpoint(*checkpoint)
                    on_error.pop_all()
            except BaseException:
                pathlib.Path(temp).unlink(missing_ok=True)
                raise
        os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        os.replace(temp, path)
        return writer

    def _checkpoint_step(self) -> int:
        try:
            return _current(self._file)[1]
        except Exception:
            return -1

    def _fail(self, error: OSError, what: str) -> OSError:
        """The error to raise for a failed write: one that says what survives when the
        disk is full."""
        self._failed = True
        return _disk_error(error, self.path, what, (self._rows_done, self._checkpoint_step()))

    def write_checkpoint(self, step: int, arrays: Sequence[np.ndarray]) -> None:
        """Store a checkpoint atomically: the arrays go to the slot not in use, which is
        flushed before `checkpoint/current` points to it, so that a crash at any moment
        (or a full disk) leaves the previous checkpoint (or none) readable.

        **Arguments:**

        - `step`: a non-negative integer saved with the arrays (e.g. the next row).
        - `arrays`: as many arrays as the layout given to `create`, each of the same
            dtype and rank as there; any shape.

        **Returns:**

        Nothing.
        """
        if not self._file:
            raise ValueError(f"RunWriter for {str(self.path)!r} is closed.")
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"`step` must be a non-negative integer, got {step!r}.")
        arrays = [np.asarray(a) for a in arrays]
        if len(arrays) != len(self._checkpoint_ndims):
            raise ValueError(
                f"A checkpoint of {str(self.path)!r} holds {len(self._checkpoint_ndims)} "
                f"arrays, got {len(arrays)}."
            )
        current = self._file["checkpoint/current"]
        slot = 1 - int(current[0]) if current[0] >= 0 else 0
        group = self._file[f"checkpoint/{slot}"]
        for i, (array, ndim) in enumerate(zip(arrays, self._checkpoint_ndims)):
            if array.dtype != group[str(i)].dtype or array.ndim != ndim:
                raise ValueError(
                    f"Checkpoint array {i}: expected dtype {group[str(i)].dtype} and rank "
                    f"{ndim}, got {array.dtype} and shape {array.shape}."
                )
        shapes = np.full(group["shapes"].shape, -1, np.int64)
        try:
            for i, array in enumerate(arrays):
                dataset = group[str(i)]
                dataset.resize((array.size,))
                if array.size:
                    dataset[:] = array.ravel()
                shapes[i, : array.ndim] = array.shape
            group["shapes"][...] = shapes
            self._file.flush()
            current[...] = [slot, int(step)]
            self._file.flush()
        except OSError as error:
            raise self._fail(error, f"the checkpoint at step {step}") from error

    def write(self, start: int, rows: Mapping[str, np.ndarray]) -> None:
        """Write consecutive rows of some series, mark them in `/step`, and flush.

        **Arguments:**

        - `start`: the first row to write.
        - `rows`: maps series names to arrays whose first axis is rows; all must hold
            the same number of rows. Series left out keep their fill values. A
            variable-width axis grows to fit a wider array; a narrower one fills the
            leading columns and the rest of its rows is fill (NaN, or -1 for int64).

        **Returns:**

        Nothing.
        """
        if not self._file:
            raise ValueError(f"RunWriter for {str(self.path)!r} is closed.")
        if not rows:
            raise ValueError("`write` needs at least one series.")
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
            raise ValueError(f"`start` must be a non-negative integer, got {start!r}.")
        start = int(start)
        arrays: dict[str, np.ndarray] = {}
        for name, value in rows.items():
            if name not in self._series:
                close = difflib.get_close_matches(name, self._series, n=5, cutoff=0.5)
                raise KeyError(f"Unknown series {name!r}; close names: {close}.")
            spec = self._series[name]
            array = np.asarray(value)
            if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
                raise ValueError(
                    f"Series {name!r}: cannot store {array.dtype} values in a {spec.dtype} series."
                )
            if array.ndim != 1 + len(spec.shape) or any(
                d is not None and d != n for d, n in zip(spec.shape, array.shape[1:])
            ):
                raise ValueError(
                    f"Series {name!r}: expected an array of shape "
                    f"(rows, *{spec.shape}), got {array.shape}."
                )
            arrays[name] = array
        lengths = {name: len(array) for name, array in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Series in one `write` differ in row count: {lengths}.")
        stop = start + next(iter(lengths.values()))
        if stop > self.num_rows:
            raise ValueError(
                f"Rows [{start}, {stop}) do not fit in a run file of {self.num_rows} "
                f"rows (series {sorted(arrays)})."
            )
        try:
            for name, array in arrays.items():
                dataset = self._file[name]
                width = tuple(max(w, n) for w, n in zip(dataset.shape[1:], array.shape[1:]))
                if width != dataset.shape[1:]:
                    dataset.resize((self.num_rows, *width))
                if array.shape[1:] != width:
                    padded = np.full((len(array), *width), _FILL[self._series[name].dtype])
                    padded[tuple(slice(0, n) for n in array.shape)] = array
                    array = padded
                dataset[start:stop] = array
            # The rows reach the file before `/step` marks them: a flush writes chunks in
            # no set order, and a writer killed inside one flush must not mark unwritten rows.
            self._file.flush()
            self._file["step"][start:stop] = np.arange(start, stop)
            self._file.flush()
        except OSError as error:
            raise self._fail(error, f"rows {start} to {stop - 1}") from error
        if start <= self._rows_done:
            self._rows_done = max(self._rows_done, stop)

    def _close_file(self) -> None:
        if self._file:
            if self._failed:  # closing flushes again, and fails again: keep the first error
                with contextlib.suppress(Exception):
                    self._file.close()
            else:
                self._file.close()

    def close(self) -> None:
        """Close the file and release its lock; closing twice is harmless."""
        try:
            self._close_file()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _disk_error(
    error: OSError, path: pathlib.Path | str, what: str, kept: tuple[int, int] | None
) -> OSError:
    """`error`, or for a full disk an `OSError(ENOSPC)` saying what the file still holds."""
    if not is_disk_full(error):
        return error
    if kept is None:
        survives = "No run file was made"
    else:
        rows, step = kept
        checkpoint = (
            f"its previous checkpoint, at step {step}, survives: `centralflows run --resume "
            f"{path}` (or `resume=True`) continues from it once there is space"
            if step >= 0
            else "it holds no checkpoint yet, so the run must start again"
        )
        survives = f"The file keeps its first {rows} rows, and {checkpoint}"
    return OSError(
        errno.ENOSPC,
        f"The disk is full: writing {what} to run file {str(path)!r} failed. {survives}.",
    )


class Run(Mapping[str, Mapping[str, np.ndarray]]):
    """A finished or in-progress run read back from its file as numpy arrays.

    Indexing by a top-level group gives its series, with nested groups joined by `/`:
    `run["discrete"]["train_loss"]`, `run["distances"]["discrete-midpoint"]`.
    """

    path: pathlib.Path
    attrs: dict[str, Any]
    step: np.ndarray
    damaged: dict[str, str]

    def __init__(
        self,
        path: pathlib.Path,
        attrs: dict[str, Any],
        step: np.ndarray,
        groups: dict[str, dict[str, np.ndarray]],
        damaged: dict[str, str] | None = None,
    ):
        """Private: use [`centralflows.load_run`][]."""
        self.path = path
        self.attrs = attrs
        self.step = step
        self._groups = groups
        self.damaged = {} if damaged is None else damaged

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration (the `config` attribute), or `{}` if it has none."""
        return self.attrs.get("config", {})

    @property
    def num_rows(self) -> int:
        """The number of rows every series was preallocated with."""
        return len(self.step)

    @property
    def steps_done(self) -> int:
        """The number of leading rows written so far."""
        return _rows_done(self.step)

    def __getitem__(self, group: str) -> dict[str, np.ndarray]:
        try:
            return self._groups[group]
        except KeyError:
            raise KeyError(
                f"No group {group!r} in {str(self.path)!r}; groups: {list(self)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        damaged = f", damaged={list(self.damaged)}" if self.damaged else ""
        return (
            f"Run({str(self.path)!r}, steps_done={self.steps_done}/{self.num_rows}, "
            f"groups={list(self)}{damaged})"
        )


def _decode_attr(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _rows_done(step: np.ndarray) -> int:
    """The number of leading rows marked written in `/step`."""
    unwritten = np.flatnonzero(step < 0)
    return int(unwritten[0]) if len(unwritten) else len(step)


def _check_format(path: pathlib.Path, file: h5py.File) -> None:
    if file.attrs.get("format") != _FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a centralflows run file (its 'format' "
            f"attribute is {file.attrs.get('format')!r}, expected {_FORMAT!r})."
        )
    version = file.attrs["format_version"]
    if version > _FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has run-file format version {version}; this "
            f"centralflows reads up to version {_FORMAT_VERSION}. Upgrade it."
        )


def _superblock(path: pathlib.Path) -> Superblock | None:
    """The superblock of a run file; `None` for an HDF5 file of another layout (so not a
    run file); raises for a missing, foreign or damaged file."""
    if not path.exists():
        raise FileNotFoundError(f"No run file at {str(path)!r}.")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory, not a run file.")
    superblock = read_superblock(path)
    if isinstance(superblock, Superblock):
        return superblock
    if superblock == "it does not start with the HDF5 signature":
        raise ValueError(f"{str(path)!r} is not an HDF5 file, so not a centralflows run file.")
    if "superblock has version" in superblock:
        return None
    raise RunFileError(
        f"Run file {str(path)!r} is damaged: {superblock}; nothing in it can be read."
    )


@contextlib.contextmanager
def _open_run(path: pathlib.Path) -> Iterator[tuple[h5py.File, bool]]:
    """Open a run file for reading, checking that it is one: `(file, live)`, `live` when a
    writer is writing it (then in SWMR mode). A file whose writer was killed has its stale
    "open for writing" flag cleared first (if it may be written), so that afterwards it
    also opens with a plain `h5py.File(path, "r")`."""
    superblock = _superblock(path)
    if superblock is None:  # not written by RunWriter: a plain read says what it is
        with h5py.File(path, "r") as file:
            _check_format(path, file)
            yield file, False
        return
    live = superblock.flags != 0 and live_writer(path) is not None
    with contextlib.ExitStack() as stack:
        try:
            if live:
                file = stack.enter_context(open_swmr(path))
            elif clear_stale_flags(path):
                file = stack.enter_context(h5py.File(path, "r"))
            else:  # a killed writer's file that we may not write: read it as if closed
                file = stack.enter_context(open_patched(path, read_superblock(path)))
        except _H5_ERRORS as error:
            if live:
                raise OSError(
                    f"{str(path)!r} could not be opened while its writer is writing it "
                    f"({error}); read it again in a moment."
                ) from error
            raise _damaged(path) from error
        try:
            _check_format(path, file)
        except _H5_ERRORS as error:
            raise _damaged(path) from error
        yield file, live


def _read_attrs(file: h5py.File, lost: dict[str, str] | None = None) -> dict[str, Any]:
    """The root attributes, JSON decoded; with `lost`, those that cannot be read are
    noted there rather than raised."""
    try:
        keys = list(file.attrs)
        json_keys = set(json.loads(file.attrs["json_keys"]))
    except (*_H5_ERRORS, ValueError):
        if lost is None:
            raise
        lost["/ (attributes)"] = "the attributes (config, versions, ...) are lost"
        return {}
    attrs = {}
    for key in keys:
        if key == "json_keys":
            continue
        try:
            value = file.attrs[key]
            attrs[key] = json.loads(value) if key in json_keys else _decode_attr(value)
        except (*_H5_ERRORS, ValueError):
            if lost is None:
                raise
            lost[f"/ (attribute {key!r})"] = "lost"
    return attrs


def _group_series(arrays: Mapping[str, np.ndarray], done: int) -> dict[str, dict[str, np.ndarray]]:
    """The series of `arrays` (HDF5 paths) by top-level group, with the rows from `done`
    on shown as unwritten."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, values in arrays.items():
        group, _, key = name.partition("/")
        if key and group not in _RESERVED_GROUPS:
            values[done:] = _FILL[str(values.dtype)]
            groups.setdefault(group, {})[key] = values
    return groups


def _read_intact(dataset: h5py.Dataset, size: int) -> tuple[np.ndarray, str | None]:
    """What survives of a dataset in a file of `size` bytes (fill values elsewhere), and
    a note on what was lost, if anything."""
    values = np.full(dataset.shape, dataset.fillvalue, dataset.dtype)
    lost: list[tuple[int, int]] = []
    layout = dataset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CHUNKED:
        try:
            count = dataset.id.get_num_chunks()
            chunks = [dataset.id.get_chunk_info(i) for i in range(count)]
        except _H5_ERRORS:
            return values, "its index of chunks is lost"
        for info in chunks:
            region = tuple(
                slice(o, min(o + c, n))
                for o, c, n in zip(info.chunk_offset, dataset.chunks, dataset.shape)
            )
            if info.byte_offset is not None and info.byte_offset + info.size <= size:
                try:
                    values[region] = dataset[region]
                    continue
                except _H5_ERRORS:
                    pass
            first = region[0] if region else slice(0, 1)
            lost.append((first.start, first.stop))
    else:
        offset = dataset.id.get_offset() if layout == h5py.h5d.CONTIGUOUS else None
        if offset is None or offset + dataset.id.get_storage_size() <= size:
            try:
                values[...] = dataset[()]
            except _H5_ERRORS:
                lost.append((0, len(values) if values.ndim else 1))
        else:
            lost.append((0, len(values) if values.ndim else 1))
    if not lost:
        return values, None
    lost.sort()
    spans = ", ".join(f"{a}" if b - a == 1 else f"{a} to {b - 1}" for a, b in lost)
    return values, f"rows {spans} are lost"


def _survey(file: h5py.File, size: int, *, series: bool = True):
    """Every dataset that can be read (what survives of it) and what is lost, by name."""
    arrays: dict[str, np.ndarray] = {}
    lost: dict[str, str] = {}

    def walk(group: h5py.Group, prefix: str) -> None:
        try:
            names = list(group)
        except _H5_ERRORS:
            lost[prefix.rstrip("/") or "/"] = "its list of members is lost"
            return
        for name in names:
            full = prefix + name
            try:
                obj = group[name]
            except _H5_ERRORS:
                lost[full] = "its header is lost"
                continue
            if isinstance(obj, h5py.Group):
                walk(obj, full + "/")
            elif series or full.split("/")[0] in _RESERVED_GROUPS:
                arrays[full], why = _read_intact(obj, size)
                if why is not None:
                    lost[full] = why

    walk(file, "")
    return arrays, lost


def _checkpoint_state(arrays: Mapping[str, np.ndarray], lost: Mapping[str, str]) -> str:
    """Whether the current checkpoint survived, in words."""
    if "checkpoint/current" not in arrays or "checkpoint/current" in lost:
        return "the checkpoint is lost" if any(n.startswith("checkpoint") for n in lost) else ""
    slot, step = (int(v) for v in arrays["checkpoint/current"])
    if slot < 0:
        return "it holds no checkpoint"
    if any(n.startswith(f"checkpoint/{slot}") for n in lost) or not any(
        n.startswith(f"checkpoint/{slot}/") for n in arrays
    ):
        return f"its checkpoint (step {step}) is lost"
    return f"its checkpoint (step {step}) is intact"


def _what_is_lost(name: str, why: str) -> str:
    if why == "its list of members is lost":
        return f"group {name!r} and everything in it" if name != "/" else "every group"
    return f"{name} ({why})"


def _damaged(path: pathlib.Path) -> RunFileError:
    """A `RunFileError` saying what is damaged in `path`, which HDF5 failed to read."""
    superblock = read_superblock(path)
    if isinstance(superblock, str):
        return RunFileError(f"Run file {str(path)!r} is damaged: {superblock}.")
    if superblock.size < superblock.stored_eof:
        how = (
            f"it is cut short: {superblock.size} of its {superblock.stored_eof} bytes "
            "are there (an interrupted copy or download, or a full disk?)"
        )
    else:
        how = "its contents are corrupt"
    lost: dict[str, str] = {}
    try:
        with open_patched(path, superblock, whole=True) as file:
            _read_attrs(file, lost)
            arrays, more = _survey(file, superblock.size)
            lost.update(more)
    except _H5_ERRORS:
        arrays = {}
    names = [n for n in lost if not n.startswith("checkpoint")]
    intact = [n for n in arrays if not n.startswith("checkpoint") and n not in lost]
    if "step" not in intact or len(intact) < 2:
        return RunFileError(
            f"Run file {str(path)!r} is damaged: {how}; its series cannot be read "
            f"(lost: {'; '.join(_what_is_lost(n, lost[n]) for n in names[:_LISTED]) or 'all'})."
        )
    listed = "; ".join(_what_is_lost(n, lost[n]) for n in names[:_LISTED])
    listed += f"; and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    checkpoint = _checkpoint_state(arrays, lost)
    return RunFileError(
        f"Run file {str(path)!r} is damaged: {how}. Lost: {listed or 'no series'}. "
        f"Intact: /step and {len(intact) - 1} series"
        f"{'; ' + checkpoint if checkpoint else ''}. "
        "`centralflows.load_run(path, salvage=True)` returns what is intact."
    )


def _salvage(path: pathlib.Path, series: bool) -> Run:
    superblock = read_superblock(path)
    if isinstance(superblock, str):
        raise _damaged(path)
    try:
        with open_patched(path, superblock, whole=True) as file:
            lost: dict[str, str] = {}
            attrs = _read_attrs(file, lost)
            arrays, more = _survey(file, superblock.size, series=series)
            lost.update(more)
    except _H5_ERRORS as error:
        raise _damaged(path) from error
    if "step" not in arrays or "step" in lost:
        raise _damaged(path)
    step = arrays["step"]
    groups = _group_series(arrays, _rows_done(step))
    damaged = {n: why for n, why in lost.items() if not n.startswith("checkpoint")}
    return Run(path, attrs, step, groups, damaged)


def load_run(path: str | os.PathLike[str], *, series: bool = True, salvage: bool = False) -> Run:
    """Read every series of a run file into numpy arrays (SWMR read mode while a writer
    is running it; a killed writer's file is read, and its stale "open for writing" flag
    cleared).

    **Arguments:**

    - `path`: the run file.
    - `series`: whether to read the series; `False` reads only the attributes and
        `/step` (cheap for a large file).
    - `salvage`: for a damaged file (cut short, corrupt), return what is intact rather
        than raise: every series that can be read, with the rows that were lost shown as
        unwritten (NaN, or -1), the rows after the first lost `/step` row as unwritten
        too, and `Run.damaged` naming what was lost. A file that is not damaged reads as
        without it.

    **Returns:**

    A [`centralflows.Run`][] holding the attributes (JSON values decoded), `/step` and
    every series, grouped by top-level group.

    Raises `FileNotFoundError`, a `ValueError` for a file that is not a run file, and a
    [`centralflows.RunFileError`][] naming what is damaged in one that is.
    """
    path = pathlib.Path(path)
    try:
        return _load_run(path, series)
    except RunFileError:
        if not salvage:
            raise
    return _salvage(path, series)


def _load_run(path: pathlib.Path, series: bool) -> Run:
    with _open_run(path) as (file, live):
        try:
            attrs = _read_attrs(file)
            # `/step` first: the writer marks rows in `/step` after writing them, so every
            # row that `step` calls done is also done in the series read after it. Rows
            # past those (a write in flight, or cut short by a crash) are shown as unwritten.
            step = file["step"][()]
            arrays: dict[str, np.ndarray] = {}

            def read(name: str, obj: h5py.HLObject) -> None:
                if isinstance(obj, h5py.Dataset) and name.split("/")[0] not in _RESERVED_GROUPS:
                    arrays[name] = obj[()]

            if series:
                file.visititems(read)
        except _H5_ERRORS as error:
            if live:  # e.g. a dataset being created as we read
                raise OSError(
                    f"{path}: a series could not be read ({error}); if a run is creating "
                    "this file, read it again in a moment."
                ) from error
            raise _damaged(path) from error
    return Run(path, attrs, step, _group_series(arrays, _rows_done(step)))


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint | None:
    """Read the current checkpoint of a run file (also while a writer runs, or after one
    was killed).

    **Arguments:**

    - `path`: the run file.

    **Returns:**

    The [`centralflows.Checkpoint`][] last written completely, or `None` if there is none.

    Raises a [`centralflows.RunFileError`][] if the file is damaged.
    """
    path = pathlib.Path(path)
    for _ in range(_READ_ATTEMPTS):
        with _open_run(path) as (file, live):
            try:
                current = _current(file)
                checkpoint = _read_checkpoint(file)
            except (*_H5_ERRORS, ValueError) as error:
                if not live:  # nothing rewrites it: it is damaged
                    raise _damaged(path) from error
                continue  # its slot was being rewritten
        if not live:
            return checkpoint
        # A writer rewrites a slot only once `current` points to the other one, and steps
        # increase: the same `current` after the read means that nothing changed under it.
        with _open_run(path) as (file, _):
            if _current(file) == current:
                return checkpoint
    raise OSError(
        f"Could not read a consistent checkpoint from {str(path)!r} while its writer was "
        "replacing it; retry."
    )


def run_progress(path: str | os.PathLike[str]) -> tuple[int, int, int | None]:
    """How far a run file is, cheaply (no series, no checkpoint arrays are read):
    `(rows_done, num_rows, checkpoint_step)`, the last `None` where there is no checkpoint.
    The run is complete when all three are equal: every row is written and the final
    checkpoint too.

    Raises as [`centralflows.load_run`][] does.
    """
    path = pathlib.Path(path)
    with _open_run(path) as (file, _):
        try:
            step = file["step"][()]
            _, checkpoint = _current(file)
        except _H5_ERRORS as error:
            raise _damaged(path) from error
    return _rows_done(step), len(step), None if checkpoint < 0 else checkpoint


def check_writable(path: str | os.PathLike[str]) -> None:
    """Raise now, before any computation, if a run file cannot be written at `path`: its
    directory cannot be made or written, `path` is a directory, or another live process
    is writing it (a `WriterBusyError` naming that process).

    **Arguments:**

    - `path`: the run file to write (new, replaced or resumed).

    **Returns:**

    Nothing; the directory exists afterwards.
    """
    path = pathlib.Path(path)
    parent = path.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            f"Cannot write run file {str(path)!r}: {str(blocker)!r} is a file, not a directory",
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise type(error)(
            error.errno,
            f"Cannot write run file {str(path)!r}: directory {str(parent)!r} cannot be "
            f"{'written' if parent.is_dir() else 'made'} ({error.strerror})",
        ) from None
    if path.is_dir():
        raise IsADirectoryError(
            errno.EISDIR, f"Cannot write run file {str(path)!r}: it is a directory"
        )
    holder = live_writer(path)
    if holder is not None:
        raise WriterBusyError(
            f"Run file {str(path)!r} is being written by another process ({holder}); wait "
            "for it to finish or stop it."
        )
