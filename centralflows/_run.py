"""Advance several processes side by side in compiled chunks and log them to a run file."""

import dataclasses
import datetime
import difflib
import importlib.metadata
import itertools
import pathlib
import tempfile
import warnings
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

from ._eigen import EigConfig, preconditioner_diagonal
from ._flow_processes import FLOW_PROCESSES
from ._integrate import FlowOptions
from ._objective import Objective
from ._optimizers import AbstractOptimizer
from ._processes import PROCESSES, AbstractProcess, grow
from ._regimes import STOP_REASONS, SolverError, describe_stop, last_finite
from ._runfile import Run, RunWriter, SeriesSpec, load_run

_VARIABLE_WIDTH = ("effective_hessian_eigs", "hessian_eigs", "eig_residuals", "predicted_variances")
_PACKAGES = ("centralflows", "jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix")
_PACKAGES += ("numpy", "h5py")
_ALL_PROCESSES = ("discrete", "midpoint", "central", "stable")


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
        if name not in _ALL_PROCESSES:
            close = difflib.get_close_matches(str(name), _ALL_PROCESSES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown process {name!r}{hint} Valid processes: {', '.join(_ALL_PROCESSES)}."
            )
    if len(set(processes)) != len(processes):
        raise ValueError(f"`processes` lists a process twice: {list(processes)}.")
    return tuple(sorted(processes, key=_ALL_PROCESSES.index))


def _pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(sorted(names), 2))


@eqx.filter_jit
def _advance_chunk(
    processes: tuple[AbstractProcess, ...],
    states: tuple[PyTree, ...],
    t0: Scalar,
    t_stop: Scalar,
    length: int,
):
    """Advance the discrete-time processes through times `t0 .. t0+length-1` in one
    compiled scan; times ≥ `t_stop` are no-ops.

    **Returns:** `(states, records)`, records holding each process's series and `"w"`.
    """

    def body(states, t):
        new_states, records = [], {}
        for process, state in zip(processes, states):
            new, position, record = process.advance(state, t)
            record = {**record, "w": position}
            # A process whose loss or parameters turn non-finite stops there (logged as
            # is at that step, NaN afterwards); the others go on.
            running = jnp.isnan(state.stop_time)
            finite = jnp.isfinite(record["train_loss"]) & jnp.all(jnp.isfinite(position))
            stop_time = jnp.where(running & ~finite, t.astype(position.dtype), state.stop_time)
            keep = (t < t_stop) & running & finite
            new = jtu.tree_map(lambda a, b: jnp.where(keep, a, b), new, state)
            new = eqx.tree_at(lambda s: s.stop_time, new, stop_time)
            record = jtu.tree_map(lambda x: jnp.where(running, x, jnp.nan), record)
            record["stop_time"] = stop_time
            record["stop_reason"] = jnp.where(jnp.isnan(stop_time), jnp.nan, 1.0)
            new_states.append(new)
            records[process.name] = record
        return tuple(new_states), records

    times = t0 + jnp.arange(length)
    return jax.lax.scan(body, states, times)


def _advance_flows(flows, states, t0: int, rows: int, key: PRNGKeyArray):
    """Advance the flows through times `t0 .. t0+rows-1`, one unit of time per call."""
    records = {flow.name: [] for flow in flows}
    states = list(states)
    for t in range(t0, t0 + rows):
        for i, flow in enumerate(flows):
            states[i], position, record = flow.advance_unit(states[i], t, jr.fold_in(key, t))
            records[flow.name].append({**record, "w": np.asarray(position)})
    stacked = {
        name: {field: _stack_padded([r[field] for r in rows_]) for field in rows_[0]}
        for name, rows_ in records.items()
    }
    return tuple(states), stacked


def _stack_padded(rows: list[np.ndarray]) -> np.ndarray:
    """Stack rows whose leading axis may differ (the tracked set grew), padding with NaN."""
    width = max((row.shape[0] for row in rows if row.ndim), default=0)
    padded = [
        np.pad(row.astype(float), [(0, width - row.shape[0])] + [(0, 0)] * (row.ndim - 1),
               constant_values=np.nan) if row.ndim else row
        for row in rows
    ]
    return np.stack(padded)


_SDCP_TOLERANCE = 1e-6  # max-norm of the natural residual


def _solver_problems(records, t0: int, warm_start: int) -> list[tuple[str, str, str]]:
    """`(process, kind, message)` for a chunk's eigensolves that did not converge and
    SDCP solves above tolerance."""
    problems = []
    for name, record in records.items():
        if "train_loss" not in record:  # distances, deltas
            continue
        finite = np.isfinite(record["train_loss"])  # a diverged step is reported as such
        unconverged = finite & (record["eig_converged"] == 0)
        if np.any(unconverged):
            rows = np.flatnonzero(unconverged)
            problems.append((name, "eig", (
                f"LOBPCG did not converge at {len(rows)} step(s) from step "
                f"{warm_start + t0 + rows[0]} (see eig_residuals; raise eig.max_iters or "
                "eig.tol)"
            )))
        if "sdcp_residual" in record:  # NaN counts as a failure
            residual = record["sdcp_residual"]
            bad = finite & ~(residual <= _SDCP_TOLERANCE)
            if np.any(bad):
                rows = np.flatnonzero(bad)
                problems.append((name, "sdcp", (
                    f"the SDCP residual exceeded {_SDCP_TOLERANCE:g} at {len(rows)} step(s) "
                    f"from step {warm_start + t0 + rows[0]} (max {np.max(residual[rows]):.3g}; "
                    "NaN if the SDCP's data were not finite)"
                )))
    return problems


@np.errstate(over="ignore", invalid="ignore")  # inf at a diverged step is what we log
def _cross_process(records: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Distances between every pair of processes, and the central flow's deltas
    `Uᵀ P (w − w_central)` along its critical directions (their squares average to X)."""
    out = {"distances": {}}
    for a, b in _pairs(records):
        out["distances"][f"{a}-{b}"] = np.linalg.norm(records[a]["w"] - records[b]["w"], axis=1)
    central = records.get("central")
    if central is not None:
        u, p = central.pop("_critical_vectors"), central.pop("_p_diag")
        out["deltas"] = {
            name: np.einsum("tkn,tn->tk", u, p * (rec["w"] - central["w"]))
            for name, rec in records.items()
            if name in ("discrete", "midpoint")
        }
        if not out["deltas"]:
            del out["deltas"]
    return out


def _series_specs(records: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, SeriesSpec]:
    """One series per logged field; eigenvalue-like fields may grow in width."""
    specs = {}
    for group, fields in records.items():
        for field, values in fields.items():
            row = tuple(values.shape[1:])
            if field in _VARIABLE_WIDTH or group == "deltas":
                row = (None,)
            specs[f"{group}/{field}"] = SeriesSpec(row)
    return specs


def _progress_summary(flat: Mapping[str, np.ndarray], name: str) -> dict[str, str]:
    """Latest loss and effective sharpness of one process, for the progress bar."""
    loss = last_finite(flat[f"{name}/train_loss"])
    sharpness = last_finite(flat[f"{name}/effective_hessian_eigs"][:, 0])
    return {"loss": f"{loss:.4g}", "S_eff": f"{sharpness:.3f}"}


@eqx.filter_jit
def _warm_start_steps(objective, optimizer, w, opt_state, steps):
    def body(_, carry):
        return optimizer.step(*carry, objective.grad(carry[0]))

    return jax.lax.fori_loop(0, steps, body, (w, opt_state))


def _warm_start(objective, optimizer, w, opt_state, steps: int):
    """`steps` optimizer steps from `(w, opt_state)`, checked to stay finite."""
    w, opt_state = _warm_start_steps(objective, optimizer, w, opt_state, steps)
    if not bool(jnp.isfinite(objective.value(w))):
        raise ValueError(
            f"The loss is not finite after the {steps} warm-start steps: the optimizer "
            "diverged (is the learning rate too large?)."
        )
    return w, opt_state


def _check_start(objective: Objective, optimizer: AbstractOptimizer, w: jax.Array) -> None:
    """Reject a start where the loss or the preconditioner is unusable, before any work."""
    if not bool(jnp.all(jnp.isfinite(w))):
        raise ValueError("The initial parameters `w0` contain non-finite values.")
    loss = objective.value(w)
    if loss.shape != ():
        raise ValueError(f"The loss must return a scalar; it returned shape {loss.shape}.")
    if not bool(jnp.isfinite(loss)):
        raise ValueError(f"The loss at `w0` is not finite ({float(loss)}).")
    grad = objective.grad(w)
    state = optimizer.update(optimizer.init(w, grad), grad)
    p_diag = preconditioner_diagonal(optimizer.preconditioner(state, w))
    bad = int(jnp.sum(~(jnp.isfinite(p_diag) & (p_diag > 0))))
    if bad:
        raise ValueError(
            f"The preconditioner after the first step is singular in {bad} of {w.size} "
            "coordinates (e.g. RMSProp with `eps=0` where the gradient is exactly zero); "
            "use `eps > 0`."
        )


def run(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    *,
    steps: int,
    processes: Sequence[str] = ("discrete",),
    eig: EigConfig = EigConfig(),
    save_w_every: int | None = None,
    central: FlowOptions = FlowOptions(),
    stable: FlowOptions = FlowOptions(),
    out: str | pathlib.Path | None = None,
    overwrite: bool = False,
    chunk: int = 25,
    key: PRNGKeyArray | None = None,
    attrs: Mapping[str, Any] | None = None,
    progress: bool = True,
    warm_start: int = 0,
    stop_on_divergence: bool = False,
    strict: bool = False,
) -> Run:
    """Run processes side by side from `w0` for `steps` optimizer steps, logging every step.

    Times `0, 1, …, steps` are logged (`steps + 1` rows); with `warm_start = n`, row t is
    optimizer step n + t. All processes advance together
    in chunks of `chunk` steps (the discrete-time ones in one compiled scan, the flows
    one unit of time per compiled segment); after each chunk the run file is flushed.
    Tracked eigenpairs are added where the smallest exceeds `eig.track_threshold`.

    **Arguments:**

    - `loss`: an [`centralflows.Objective`][] or a function of the parameter pytree.
    - `w0`: initial parameters (any pytree).
    - `optimizer`: e.g. `GD(lr=0.1)`, `RMSProp(lr=1e-3, beta2=0.99)`.
    - `steps`: number of optimizer steps.
    - `processes`: any of `"discrete"`, `"midpoint"`, `"central"`, `"stable"`.
    - `eig`: eigen-tracking settings.
    - `save_w_every`: also store the (flat) parameters every this many steps.
    - `central`, `stable`: how the central and stable flows are integrated.
    - `out`: the run file to write (`None`: a temporary file, read back and deleted).
    - `overwrite`: replace an existing `out`.
    - `chunk`: steps per compiled chunk.
    - `key`: PRNG key for the initial eigenvector guesses (default `jr.key(0)`).
    - `attrs`: extra attributes for the run file (e.g. the config).
    - `progress`: show a progress bar.
    - `warm_start`: first take this many optimizer steps from `w0`, unlogged; every
      process then starts from the iterate and optimizer state reached (like the reference
      code's `--warm-start`: start the flows close to the edge of stability, or past an
      initial transient).
    - `stop_on_divergence`: end the whole run after the chunk in which a process's loss
      or parameters became non-finite (or a flow's solver failed). By default only that
      process stops, with a warning (its `stop_time` and `stop_reason` series say when
      and why, see `centralflows.STOP_REASONS`), and the others go on.
    - `strict`: raise `SolverError` (after writing the chunk) when LOBPCG did not converge
      or an SDCP residual exceeds 1e-6, instead of warning once per process. Either way
      the `eig_converged` and `sdcp_residual` series record every step.

    **Returns:** the [`centralflows.Run`][]: `run[process][field]` is a numpy series.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    if chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer, got {chunk!r}.")
    if save_w_every is not None and save_w_every < 1:
        raise ValueError(f"`save_w_every` must be a positive integer, got {save_w_every!r}.")
    if isinstance(warm_start, bool) or not isinstance(warm_start, int) or warm_start < 0:
        raise ValueError(f"`warm_start` must be a non-negative integer, got {warm_start!r}.")
    names = _check_processes(processes)
    objective = loss if isinstance(loss, Objective) else Objective.from_function(loss, w0)
    w, _ = jfu.ravel_pytree(w0)
    if w.shape != (objective.num_params,):
        raise ValueError(
            f"`w0` has {w.size} parameters, which does not match the objective's "
            f"{objective.num_params}."
        )
    _check_start(objective, optimizer, w)
    key = jr.key(0) if key is None else key
    opt_state = optimizer.init(w, objective.grad(w))
    if warm_start:
        w, opt_state = _warm_start(objective, optimizer, w, opt_state, warm_start)

    path = pathlib.Path(out) if out is not None else None
    if path is not None and path.exists() and not overwrite:
        raise FileExistsError(
            f"Run file {str(path)!r} already exists; pass `overwrite=True` "
            "(`--overwrite` on the command line) to replace it."
        )
    scanned = tuple(PROCESSES[n](objective, optimizer, eig) for n in names if n in PROCESSES)
    options = {"central": central, "stable": stable}
    flows = tuple(
        FLOW_PROCESSES[n](objective, optimizer, eig, options[n])
        for n in names
        if n in FLOW_PROCESSES
    )
    keys = jr.split(key, len(names) + 1)
    scanned_states = tuple(p.init(w, k, opt_state) for p, k in zip(scanned, keys[1:]))
    flow_states = tuple(
        p.init(w, k, opt_state) for p, k in zip(flows, keys[1 + len(scanned) :])
    )
    num_rows = steps + 1
    chunk = min(chunk, num_rows)
    file_attrs = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "versions": package_versions(),
        "processes": list(names),
        "steps": steps,
        "optimizer": repr(optimizer),
        "eig": dataclasses.asdict(eig),
        "central": repr(central) if "central" in names else None,
        "stable": repr(stable) if "stable" in names else None,
        "dtype": str(w.dtype),
        "num_params": int(w.size),
        "warm_start": warm_start,
        "stop_reasons": {str(code): reason for code, reason in STOP_REASONS.items()},
        **(attrs or {}),
    }

    with tempfile.TemporaryDirectory() as tmp, tqdm(
        total=steps, disable=not progress, unit="step"
    ) as bar:
        path = path if path is not None else pathlib.Path(tmp) / "run.h5"
        writer = None
        failed, warned = set(), set()
        t = 0
        try:
            while t < num_rows:
                rows = min(chunk, num_rows - t)
                records = {}
                if scanned:
                    scanned_states, scan_records = _advance_chunk(
                        scanned, scanned_states, jnp.asarray(t), jnp.asarray(num_rows), chunk
                    )
                    for name, fields in scan_records.items():
                        records[name] = {f: np.asarray(v)[:rows] for f, v in fields.items()}
                    scanned_states = tuple(
                        grow(p, s, jr.fold_in(jr.fold_in(keys[0], 0), t))
                        for p, s in zip(scanned, scanned_states)
                    )
                if flows:
                    flow_states, flow_records = _advance_flows(
                        flows, flow_states, t, rows, jr.fold_in(jr.fold_in(keys[0], 1), t)
                    )
                    records.update(flow_records)
                records.update(_cross_process(records))
                for name in names:
                    positions = records[name].pop("w")
                    if save_w_every is not None:
                        skipped = (t + np.arange(rows)) % save_w_every != 0
                        records[name]["w"] = np.where(skipped[:, None], np.nan, positions)
                flat = {
                    f"{group}/{field}": values
                    for group, fields in records.items()
                    for field, values in fields.items()
                }
                if writer is None:
                    specs = _series_specs(records)
                    writer = RunWriter.create(
                        path, num_rows=num_rows, series=specs, attrs=file_attrs,
                        overwrite=overwrite,
                    )
                writer.write(t, flat)
                t += rows
                bar.update(min(rows, steps - bar.n))
                bar.set_postfix(_progress_summary(flat, names[0]))
                for name in names:  # stop codes persist, so the chunk's last row tells
                    code, when = records[name]["stop_reason"][-1], records[name]["stop_time"][-1]
                    if code in (1, 2) and name not in failed:
                        failed.add(name)
                        message = describe_stop(warm_start + when, int(code))
                        warnings.warn(f"{name} {message}.", stacklevel=2)
                if failed and stop_on_divergence:
                    break
                for name, kind, message in _solver_problems(records, t - rows, warm_start):
                    if strict:
                        raise SolverError(f"{name}: {message} (run file {str(path)!r}).")
                    if (name, kind) not in warned:
                        warned.add((name, kind))
                        warnings.warn(f"{name}: {message}; warned once.", stacklevel=2)
        finally:
            if writer is not None:
                writer.close()
        return load_run(path)
