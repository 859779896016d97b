"""Advance several processes side by side in compiled chunks and log them to a run file."""

import dataclasses
import datetime
import difflib
import importlib.metadata
import itertools
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree, Scalar
from tqdm.auto import tqdm

from ._eigen import EigConfig
from ._objective import Objective
from ._optimizers import AbstractOptimizer
from ._processes import PROCESSES, AbstractProcess, grow_tracking
from ._runfile import Run, RunWriter, SeriesSpec, load_run

_VARIABLE_WIDTH = ("effective_hessian_eigs", "hessian_eigs", "eig_residuals")
_PACKAGES = ("centralflows", "jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix")
_PACKAGES += ("numpy", "h5py")


def package_versions() -> dict[str, str]:
    """Versions of the packages a run depends on, recorded in every run file."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _check_processes(processes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(processes, str):
        processes = (processes,)
    if not processes:
        raise ValueError("`processes` must name at least one process.")
    for name in processes:
        if name not in PROCESSES:
            close = difflib.get_close_matches(str(name), PROCESSES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown process {name!r}{hint} Valid processes: {', '.join(PROCESSES)}."
            )
    if len(set(processes)) != len(processes):
        raise ValueError(f"`processes` lists a process twice: {list(processes)}.")
    return tuple(sorted(processes, key=list(PROCESSES).index))


def _pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(sorted(names), 2))


@eqx.filter_jit
def _advance_chunk(
    processes: tuple[AbstractProcess, ...],
    states: tuple[PyTree, ...],
    t0: Scalar,
    t_stop: Scalar,
    length: int,
    keep_positions: bool,
):
    """Advance every process through times `t0 .. t0+length-1`; times ≥ `t_stop` are no-ops."""

    def body(states, t):
        new_states, positions, records = [], {}, {}
        for process, state in zip(processes, states):
            new, position, record = process.advance(state, t)
            new = jtu.tree_map(lambda a, b: jnp.where(t < t_stop, a, b), new, state)
            new_states.append(new)
            positions[process.name] = position
            records[process.name] = record
        records["distances"] = {
            f"{a}-{b}": jnp.linalg.norm(positions[a] - positions[b])
            for a, b in _pairs(positions)
        }
        if keep_positions:
            for name, position in positions.items():
                records[name]["w"] = position
        return tuple(new_states), records

    times = t0 + jnp.arange(length)
    return jax.lax.scan(body, states, times)


def _series_specs(records: PyTree) -> dict[str, SeriesSpec]:
    specs = {}
    for group, fields in records.items():
        for field, shape in fields.items():
            row = tuple(shape.shape[1:])
            if field in _VARIABLE_WIDTH:
                row = (None,)
            specs[f"{group}/{field}"] = SeriesSpec(row)
    return specs


def _grow(process: AbstractProcess, state: PyTree, key: PRNGKeyArray) -> PyTree:
    """Add tracked eigenpairs while the smallest one exceeds the tracking threshold."""
    retrack = eqx.filter_jit(process.retrack)
    while (tracking := grow_tracking(state.tracking, key, process.eig)) is not None:
        key = jr.split(key)[0]
        state = retrack(state, tracking)
    return state


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else float("nan")


def _progress_summary(flat: Mapping[str, np.ndarray], name: str) -> dict[str, str]:
    """Latest loss and effective sharpness of one process, for the progress bar."""
    loss = _last_finite(flat[f"{name}/train_loss"])
    sharpness = _last_finite(flat[f"{name}/effective_hessian_eigs"][:, 0])
    return {"loss": f"{loss:.4g}", "S_eff": f"{sharpness:.3f}"}


def _check_start(objective: Objective, w: jax.Array) -> None:
    if not bool(jnp.all(jnp.isfinite(w))):
        raise ValueError("The initial parameters `w0` contain non-finite values.")
    loss = objective.value(w)
    if loss.shape != ():
        raise ValueError(f"The loss must return a scalar; it returned shape {loss.shape}.")
    if not bool(jnp.isfinite(loss)):
        raise ValueError(f"The loss at `w0` is not finite ({float(loss)}).")


def run(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    *,
    steps: int,
    processes: Sequence[str] = ("discrete",),
    eig: EigConfig = EigConfig(),
    save_w_every: int | None = None,
    out: str | pathlib.Path | None = None,
    overwrite: bool = False,
    chunk: int = 25,
    key: PRNGKeyArray | None = None,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Run:
    """Run processes side by side from `w0` for `steps` optimizer steps, logging every step.

    Times `0, 1, …, steps` are logged (`steps + 1` rows). All processes advance together
    in compiled chunks of `chunk` steps; between chunks the run file is flushed and
    tracked eigenpairs are added where the smallest exceeds `eig.track_threshold`.

    **Arguments:**

    - `loss`: an [`centralflows.Objective`][] or a function of the parameter pytree.
    - `w0`: initial parameters (any pytree).
    - `optimizer`: e.g. `GD(lr=0.1)`, `RMSProp(lr=1e-3, beta2=0.99)`.
    - `steps`: number of optimizer steps.
    - `processes`: any of `"discrete"`, `"midpoint"`.
    - `eig`: eigen-tracking settings.
    - `save_w_every`: also store the (flat) parameters every this many steps.
    - `out`: the run file to write (`None`: a temporary file, read back and deleted).
    - `overwrite`: replace an existing `out`.
    - `chunk`: steps per compiled chunk.
    - `key`: PRNG key for the initial eigenvector guesses (default `jr.key(0)`).
    - `attrs`: extra attributes for the run file (e.g. the config).
    - `progress`: show a progress bar.

    **Returns:** the [`centralflows.Run`][]: `run[process][field]` is a numpy series.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    if chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer, got {chunk!r}.")
    if save_w_every is not None and save_w_every < 1:
        raise ValueError(f"`save_w_every` must be a positive integer, got {save_w_every!r}.")
    names = _check_processes(processes)
    objective = loss if isinstance(loss, Objective) else Objective.from_function(loss, w0)
    w, _ = jfu.ravel_pytree(w0)
    if w.shape != (objective.num_params,):
        raise ValueError(
            f"`w0` has {w.size} parameters, which does not match the objective's "
            f"{objective.num_params}."
        )
    _check_start(objective, w)
    key = jr.key(0) if key is None else key

    procs = tuple(PROCESSES[name](objective, optimizer, eig) for name in names)
    keys = jr.split(key, len(procs) + 1)
    states = tuple(p.init(w, k) for p, k in zip(procs, keys[1:]))
    num_rows = steps + 1
    chunk = min(chunk, num_rows)
    keep = save_w_every is not None
    _, shapes = eqx.filter_eval_shape(
        _advance_chunk, procs, states, jnp.asarray(0), jnp.asarray(num_rows), chunk, keep
    )
    series = _series_specs(shapes)
    file_attrs = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "versions": package_versions(),
        "processes": list(names),
        "steps": steps,
        "optimizer": repr(optimizer),
        "eig": dataclasses.asdict(eig),
        "dtype": str(w.dtype),
        "num_params": int(w.size),
        **(attrs or {}),
    }

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(out) if out is not None else pathlib.Path(tmp) / "run.h5"
        with RunWriter.create(
            path, num_rows=num_rows, series=series, attrs=file_attrs, overwrite=overwrite
        ) as writer, tqdm(total=steps, disable=not progress, unit="step") as bar:
            t = 0
            while t < num_rows:
                states, records = _advance_chunk(
                    procs, states, jnp.asarray(t), jnp.asarray(num_rows), chunk, keep
                )
                rows = min(chunk, num_rows - t)
                flat = {
                    f"{group}/{field}": np.asarray(values)[:rows]
                    for group, fields in records.items()
                    for field, values in fields.items()
                }
                if keep:
                    for name in names:
                        skipped = (t + np.arange(rows)) % save_w_every != 0
                        flat[f"{name}/w"] = np.where(skipped[:, None], np.nan, flat[f"{name}/w"])
                writer.write(t, flat)
                t += rows
                states = tuple(
                    _grow(p, s, jr.fold_in(keys[0], t)) for p, s in zip(procs, states)
                )
                bar.update(min(rows, steps - bar.n))
                bar.set_postfix(_progress_summary(flat, names[0]))
        return load_run(path)
