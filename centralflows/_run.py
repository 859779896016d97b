"""Advance several processes side by side in compiled chunks and log them to a run file."""

import dataclasses
import datetime
import difflib
import hashlib
import importlib.metadata
import itertools
import json
import pathlib
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree, Scalar
from tqdm.auto import tqdm

from ._cache import enable_compilation_cache
from ._discrete import discrete_steps
from ._eigen import EigConfig, preconditioner_diagonal
from ._flow_processes import FLOW_PROCESSES, STATIONARY_TOLERANCE
from ._integrate import FlowOptions
from ._objective import Objective
from ._optimizers import AbstractOptimizer
from ._process_names import PROCESS_NAMES
from ._processes import PROCESSES, AbstractProcess, grow
from ._regimes import SolverError, last_finite
from ._runfile import (
    Checkpoint,
    Run,
    RunWriter,
    SeriesSpec,
    check_writable,
    load_checkpoint,
    load_run,
)
from ._solve import prepare
from ._stop import StopReason, describe_stop, is_failure, stop_code, stop_messages, stop_reason_of

_PACKAGES = ("centralflows", "jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix")
_PACKAGES += ("numpy", "h5py")

_CENTRAL_OPTIONS = ("central", "central_no_penalty", "central_stationary")  # use `central=`


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
        if name not in PROCESS_NAMES:
            close = difflib.get_close_matches(str(name), PROCESS_NAMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown process {name!r}{hint} Valid processes: {', '.join(PROCESS_NAMES)}."
            )
    if len(set(processes)) != len(processes):
        raise ValueError(f"`processes` lists a process twice: {list(processes)}.")
    return tuple(sorted(processes, key=PROCESS_NAMES.index))


def _pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(sorted(names), 2))


def _nan_like(f: Callable, *args) -> PyTree:
    """Arrays shaped like what `f(*args)` returns, without computing it: NaN, or zero
    where the dtype has no NaN (counts of work, such as eigensolver iterations, done by
    a step that was skipped)."""

    def fill(s):
        return jnp.full(s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0, s.dtype)

    return jtu.tree_map(fill, jax.eval_shape(f, *args))


@eqx.filter_jit
def _advance_chunk(
    processes: tuple[AbstractProcess, ...],
    states: tuple[PyTree, ...],
    t0: Scalar,
    t_stop: Scalar,
    length: int,
    limit: Scalar,
):
    """Advance the discrete-time processes through times `t0 .. t0+length-1` in one
    compiled scan; times ≥ `t_stop` are skipped (states unchanged, records NaN), so
    that one program serves every chunk, however the run is cut into chunks.

    **Returns:** `(states, records)`, records holding each process's series and `"w"`.
    """

    def advance(process, state, t):
        """`process.advance`, skipped (no products, no eigen tracking) once stopped."""

        def stopped(state):
            return state, *_nan_like(process.advance, state, t)[1:]

        running = jnp.isnan(state.stop_time)
        return jax.lax.cond(running, lambda s: process.advance(s, t), stopped, state)

    def live(states, t):
        new_states, records = [], {}
        for process, state in zip(processes, states):
            new, position, record = advance(process, state, t)
            record = {**record, "w": position}
            # A process whose loss or parameters turn non-finite, or whose loss exceeds
            # `limit`, stops there (logged as is at that step, NaN afterwards); the
            # others go on.
            running = jnp.isnan(state.stop_time)
            loss = record["train_loss"]
            finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(position)) & (loss <= limit)
            stop_time = jnp.where(running & ~finite, t.astype(position.dtype), state.stop_time)
            keep = running & finite
            new = jtu.tree_map(lambda a, b: jnp.where(keep, a, b), new, state)
            new = eqx.tree_at(lambda s: s.stop_time, new, stop_time)
            record["stop_time"] = stop_time
            record["stop_reason"] = jnp.where(
                jnp.isnan(stop_time), jnp.nan, stop_code(StopReason.diverged)
            )
            new_states.append(new)
            records[process.name] = record
        return tuple(new_states), records

    def skip(states, t):
        return states, _nan_like(live, states, t)[1]

    def body(states, t):
        return jax.lax.cond(t < t_stop, live, skip, states, t)

    times = t0 + jnp.arange(length)
    return jax.lax.scan(body, states, times)


def _advance_flows(flows, states, t0: int, rows: int, limit: float = np.inf):
    """Advance the flows through times `t0 .. t0+rows-1`, one unit of time per call; a
    flow whose loss exceeds `limit` stops there, as diverged."""
    records = {flow.name: [] for flow in flows}
    states = list(states)
    for t in range(t0, t0 + rows):
        for i, flow in enumerate(flows):
            states[i], position, record = flow.advance_unit(states[i], t)
            if float(record["train_loss"]) > limit:
                states[i] = flow.stop(states[i], float(t), StopReason.diverged)
                record["stop_time"] = np.asarray(t, float)
                record["stop_reason"] = np.asarray(stop_code(StopReason.diverged))
            records[flow.name].append({**record, "w": np.asarray(position)})
    stacked = {
        name: {field: np.stack([r[field] for r in rows_]) for field in rows_[0]}
        for name, rows_ in records.items()
    }
    return tuple(states), stacked


_SDCP_TOLERANCE = 1e-6  # max-norm of the natural residual
_PROBLEM_KINDS = ("eig", "sdcp", "stationary")  # the kinds of `_solver_problems`


def _solver_problems(records, t0: int, warm_start: int) -> list[tuple[str, str, str]]:
    """`(process, kind, message)` for a chunk's eigensolves that did not converge, SDCP
    solves above tolerance and failed solves of the stationary ν̄."""
    problems = []
    for name, record in records.items():
        if "train_loss" not in record:  # distances, deltas
            continue
        finite = np.isfinite(record["train_loss"])  # a diverged step is reported as such

        def report(kind, bad, describe):
            if np.any(finite & bad):
                rows = np.flatnonzero(finite & bad)
                where = f"at {len(rows)} step(s) from step {warm_start + t0 + rows[0]}"
                problems.append((name, kind, describe(rows, where)))

        report(
            "eig",
            record["eig_converged"] == 0,
            lambda rows, where: (
                f"LOBPCG did not converge {where} (see eig_residuals; raise eig.max_iters or "
                "eig.tol)"
            ),
        )
        if "sdcp_residual" in record:  # NaN counts as a failure
            residual = record["sdcp_residual"]
            report(
                "sdcp",
                ~(residual <= _SDCP_TOLERANCE),
                lambda rows, where: (
                    f"the SDCP residual exceeded {_SDCP_TOLERANCE:g} {where} (max "
                    f"{np.max(residual[rows]):.3g}; NaN if the SDCP's data were not finite)"
                ),
            )
        if "stationary_nu_cosine" in record:
            report(
                "stationary",
                np.isnan(record["stationary_nu_cosine"]),
                lambda rows, where: (
                    f"the solve of the stationary ν̄ failed {where} (Josephy–Newton's step "
                    f"limit, or a residual above {STATIONARY_TOLERANCE:g}: see "
                    "stationary_nu_residual); stationary_nu_cosine, _distance and _sharpness "
                    "are NaN there"
                ),
            )
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
    for record in records.values():  # another flow's (`central_no_penalty`): unused
        for field in [field for field in record if field.startswith("_")]:
            del record[field]
    return out


def _series_specs(records: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, SeriesSpec]:
    """One series per logged field, of the width the chunk's records have (eigenvalue
    series: `eig.max_neigs`, NaN past the tracked count)."""
    return {
        f"{group}/{field}": SeriesSpec(tuple(values.shape[1:]))
        for group, fields in records.items()
        for field, values in fields.items()
    }


def _progress_summary(flat: Mapping[str, np.ndarray], name: str) -> dict[str, str]:
    """Latest loss and effective sharpness of one process, for the progress bar."""
    loss = last_finite(flat[f"{name}/train_loss"])
    sharpness = last_finite(flat[f"{name}/effective_hessian_eigs"][:, 0])
    return {"loss": f"{loss:.4g}", "S_eff": f"{sharpness:.3f}"}


def _warm_start(objective, optimizer, w, opt_state, steps: int):
    """`steps` optimizer steps from `(w, opt_state)`, checked to stay finite."""
    (w, opt_state), _ = discrete_steps(objective, optimizer, w, opt_state, steps)
    if not bool(jnp.isfinite(objective.value(w))):
        raise ValueError(
            f"The loss is not finite after the {steps} warm-start steps: the optimizer "
            "diverged (is the learning rate too large?)."
        )
    return w, opt_state


@eqx.filter_jit
def _initial_states(scanned, flows, key, w, opt_state) -> tuple[tuple, tuple]:
    """The states at time 0 of the `scanned` and `flows` processes, each from its own
    key split off `key`."""
    keys = jr.split(key, len(scanned) + len(flows))
    scanned_states = tuple(p.init(w, k, opt_state) for p, k in zip(scanned, keys))
    flow_keys = keys[len(scanned) :]
    return scanned_states, tuple(p.init(w, k, opt_state) for p, k in zip(flows, flow_keys))


def _check_schedule_values(optimizer: AbstractOptimizer, last: int, dtype) -> None:
    """Reject a learning-rate schedule that is not positive and finite at every step
    `1 … last` (in the compiled steps an invalid value becomes NaN, see
    `check_hyperparameter`)."""
    if not callable(optimizer.lr):
        return
    counts = jnp.arange(1, last + 1, dtype=dtype)
    rates = np.asarray(jax.vmap(optimizer.learning_rate)(counts))
    bad = np.flatnonzero(~(np.isfinite(rates) & (rates > 0)))
    if bad.size:
        step = int(bad[0]) + 1
        value = float(optimizer.lr(jnp.asarray(step, dtype)))
        raise ValueError(
            f"The learning-rate schedule must be > 0 and finite at every step; at step "
            f"{step} it is {value!r}."
        )


@eqx.filter_jit
def _start_values(objective: Objective, optimizer: AbstractOptimizer, w: jax.Array):
    """What `_check_start` checks, in one program: whether `w` is finite, the loss and
    gradient at `w`, the optimizer's initial state there, and in how many coordinates
    the preconditioner after the first step is not positive and finite."""
    finite = jnp.all(jnp.isfinite(w))
    loss, grad = objective.value_and_grad(w)
    opt_state = optimizer.init(w, grad)
    p_diag = preconditioner_diagonal(optimizer.preconditioner(optimizer.update(opt_state, grad), w))
    return finite, loss, opt_state, jnp.sum(~(jnp.isfinite(p_diag) & (p_diag > 0)))


def _check_start(
    objective: Objective, optimizer: AbstractOptimizer, w: jax.Array, last_step: int
) -> tuple[Scalar, PyTree]:
    """Reject a start where the loss, the preconditioner or the learning-rate schedule
    (up to step `last_step`) is unusable, before any work.

    **Returns:** the loss and the optimizer's initial state at `w`.
    """
    _check_schedule_values(optimizer, last_step, w.dtype)
    shape = eqx.filter_eval_shape(objective.value, w).shape
    if shape != ():
        raise ValueError(f"The loss must return a scalar; it returned shape {shape}.")
    finite, loss, opt_state, bad = _start_values(objective, optimizer, w)
    if not bool(finite):
        raise ValueError("The initial parameters `w0` contain non-finite values.")
    if not np.isfinite(float(loss)):
        raise ValueError(f"The loss at `w0` is not finite ({float(loss)}).")
    if int(bad):
        raise ValueError(
            f"The preconditioner after the first step is singular in {int(bad)} of {w.size} "
            "coordinates (e.g. RMSProp with `eps=0` where the gradient is exactly zero); "
            "use `eps > 0`."
        )
    return loss, opt_state


def _check_divergence_factor(divergence_factor: Any) -> None:
    if divergence_factor is not None and not (
        isinstance(divergence_factor, int | float)
        and not isinstance(divergence_factor, bool)
        and divergence_factor > 1
    ):
        raise ValueError(
            f"`divergence_factor` must be a number > 1 or None, got {divergence_factor!r}."
        )


def _loss_limit(divergence_factor: float | None, loss0: Scalar) -> float:
    """The loss past which a process stops as diverged: `divergence_factor` times
    |L(w0)| (no limit without a factor, or where L(w0) = 0)."""
    limit = np.inf if divergence_factor is None else divergence_factor * abs(float(loss0))
    return limit or np.inf


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_int(name: str, value: Any, minimum: int, note: str = "") -> None:
    if not _is_int(value, minimum):
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"`{name}` must be {kind}{note}, got {value!r}.")


def _check_schedule(every: int, at: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    _check_int("checkpoint_every", every, 0, " (0: only at the end)")
    at = tuple(at)
    if not all(_is_int(s, 1) for s in at):
        raise ValueError(f"`checkpoint_at` must hold positive integers, got {list(at)!r}.")
    return every, tuple(sorted(set(at)))


def _is_checkpoint(t: int, every: int, at: tuple[int, ...]) -> bool:
    return (every > 0 and t % every == 0) or t in at


def _chunk_end(t: int, num_rows: int, chunk: int, every: int, at: tuple[int, ...]) -> int:
    """Where the chunk starting at row `t` ends: the next multiple of `chunk`, checkpoint
    step or the end, whichever comes first."""
    ends = [(t // chunk + 1) * chunk, num_rows, *(s for s in at if s > t)]
    if every:
        ends.append((t // every + 1) * every)
    return min(ends)


def _fingerprint(w: jax.Array, loss0: Scalar) -> str:
    """The sha256 of the flat initial parameters and the loss there."""
    digest = hashlib.sha256(np.asarray(w).tobytes())
    digest.update(np.asarray(loss0).tobytes())
    return digest.hexdigest()


def _json(value: Any) -> Any:
    """`value` as it reads back from a run file's JSON attributes."""
    return json.loads(json.dumps(value))


# Items of a run's setup added after run files were first written, with the value that
# a file written before holds implicitly.
_SETUP_DEFAULTS = {"devices": 1}
_SETUP_HINTS = {
    "devices": " (the devices the examples are split over: `Objective.sharded`, "
    "`[run] devices`; sums split otherwise differ in round-off, so the continuation would "
    "not be the same run)",
}


def _check_compatible(path: pathlib.Path, stored: Mapping[str, Any], given: Mapping[str, Any]):
    """Raise naming every item of `given` that differs from the run file's `stored`."""
    stored = {**_SETUP_DEFAULTS, **stored}
    differences = [
        f"  - {name}: the file has {stored.get(name)!r}, this call gives {value!r}"
        + _SETUP_HINTS.get(name, "")
        for name, value in given.items()
        if stored.get(name) != value
    ]
    if differences:
        raise ValueError(
            f"Cannot resume {str(path)!r}: this call does not set up the run in the file; "
            "it differs in\n" + "\n".join(differences)
        )


def _loop_arrays(names, failed: set, warned: set) -> list[np.ndarray]:
    """What the loop itself carries across a checkpoint: which processes have stopped
    with a failure, and which solver problems have been warned about."""
    return [
        np.array([name in failed for name in names]),
        np.array([[(name, kind) in warned for kind in _PROBLEM_KINDS] for name in names]),
    ]


def _resume_point(
    path: pathlib.Path, setup: Mapping[str, Any], steps: int | None
) -> tuple[Run, Checkpoint, int]:
    """The run file to resume (attributes only), its checkpoint and the steps to run
    (`steps`, by default the file's), checked to be the run that `setup` describes."""
    stored = load_run(path, series=False)
    checkpoint = load_checkpoint(path)
    if checkpoint is None:
        raise ValueError(
            f"{str(path)!r} holds no checkpoint to resume from (the run was stopped "
            "before its first one, or written by an older centralflows); start it again "
            "with `overwrite=True`."
        )
    _check_compatible(path, stored.attrs, setup)
    steps = stored.attrs["steps"] if steps is None else steps
    if steps + 1 < stored.steps_done:
        raise ValueError(
            f"Cannot resume {str(path)!r} to {steps} steps: it already holds steps 0 "
            f"to {stored.steps_done - 1}, and rows are never dropped."
        )
    if stored.attrs["versions"] != package_versions():
        warnings.warn(
            f"{str(path)!r} was written with other package versions "
            f"({stored.attrs['versions']}); its continuation may differ in the last "
            "bits from an uninterrupted run.",
            stacklevel=3,
        )
    return stored, checkpoint, steps


def _restore(
    template: PyTree, checkpoint: Checkpoint, names: Sequence[str], path: pathlib.Path
) -> tuple[PyTree, set[str], set[tuple[str, str]]]:
    """The process states (shaped like `template`) and the loop's `failed` and `warned`
    sets saved in `checkpoint`."""
    leaves, treedef = jtu.tree_flatten(template)
    arrays = checkpoint.arrays
    if len(arrays) != len(leaves) + 2 or any(
        a.dtype != leaf.dtype or a.shape != leaf.shape for a, leaf in zip(arrays, leaves)
    ):
        raise ValueError(
            f"The checkpoint in {str(path)!r} does not hold the state of processes "
            f"{list(names)} with this optimizer."
        )
    states = jtu.tree_unflatten(treedef, [jnp.asarray(a) for a in arrays[:-2]])
    stopped, solver_warned = arrays[-2:]
    failed = {name for name, flag in zip(names, stopped) if flag}
    warned = {
        (name, kind)
        for name, flags in zip(names, solver_warned)
        for kind, flag in zip(_PROBLEM_KINDS, flags)
        if flag
    }
    return states, failed, warned


def run(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    *,
    steps: int | None = None,
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
    divergence_factor: float | None = None,
    strict: bool = False,
    checkpoint_every: int = 100,
    checkpoint_at: Sequence[int] = (),
    resume: bool = False,
    compilation_cache: str | pathlib.Path | bool = True,
) -> Run:
    """Run processes side by side from `w0` for `steps` optimizer steps, logging every step.

    Times `0, 1, …, steps` are logged (`steps + 1` rows); with `warm_start = n`, row t is
    optimizer step n + t. All processes advance together in chunks, which end at the
    multiples of `chunk` and at the checkpoint steps (the discrete-time processes in one
    compiled scan, the flows one unit of time per compiled segment); after each chunk the
    run file is flushed. Tracked eigenpairs are added where the smallest exceeds
    `eig.track_threshold` (for the discrete-time processes, at the multiples of `chunk`).

    A checkpoint holds every process's full state (parameters, optimizer state, tracked
    eigenpairs, step size, event and stop state) and is written to the run file, atomically,
    at the checkpoint steps and at the end. With `resume=True` a run continues from the
    checkpoint of the file `out`: it then computes exactly what the uninterrupted run
    computes (bit-identical series, on the same machine and package versions), whether it
    resumes a killed run or extends a finished one to more `steps`.

    **Arguments:**

    - `loss`: an [`centralflows.Objective`][] or a function of the parameter pytree.
    - `w0`: initial parameters (any pytree).
    - `optimizer`: e.g. `GD(lr=0.1)`, `RMSProp(lr=1e-3, beta2=0.99)`.
    - `steps`: number of optimizer steps (when resuming, default: the file's).
    - `processes`: any of `"discrete"`, `"midpoint"`, `"central"`,
      `"central_no_penalty"` (the central flow without its curvature penalty; not for
      GD), `"stable"`.
    - `eig`: eigen-tracking settings.
    - `save_w_every`: also store the (flat) parameters every this many steps.
    - `central`, `stable`: how the central (and `central_no_penalty`) and stable flows
      are integrated.
    - `out`: the run file to write (`None`: a temporary file, read back and deleted).
      In a program of several processes (`jax.distributed.initialize`), process 0
      writes it; the others (which read its checkpoint to resume) each write a temporary
      file, read back and deleted, holding the rows this call computed.
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
      and why, see [`centralflows.StopReason`][]), and the others go on.
    - `divergence_factor`: also stop a process as diverged (see `stop_on_divergence`)
      where its loss exceeds this many times `|L(w0)|`, the loss at `w0` (a float > 1;
      `None`: only a non-finite loss or iterate stops a process). Past that point an
      iterate usually explodes, and eigen tracking on it only costs time.
    - `strict`: raise `SolverError` (after writing the chunk) when LOBPCG did not converge,
      an SDCP residual exceeds 1e-6 or a solve of the stationary ν̄ failed, instead of
      warning once per process. Either way the `eig_converged`, `sdcp_residual` and
      `stationary_nu_residual` series record every step.
    - `checkpoint_every`: write a checkpoint at every multiple of this many steps
      (0: only at the end). A checkpoint at step t holds the state at time t, from
      which rows t onwards are computed.
    - `checkpoint_at`: further steps (≥ 1) at which to write a checkpoint.
    - `resume`: continue the run in `out` from its checkpoint, with the same problem
      and settings (checked before any computation: a `ValueError` names every
      difference). Rows written after the checkpoint are recomputed.
    - `compilation_cache`: the directory of JAX's persistent compilation cache, which
      lets a new process skip compiling what an earlier one compiled; `True` (default)
      for `$CENTRALFLOWS_CACHE_DIR` or `~/.cache/centralflows/jax`, `False` to leave
      JAX's configuration alone (see `centralflows.enable_compilation_cache`).

    **Returns:** the [`centralflows.Run`][]: `run[process][field]` is a numpy series.
    """
    if steps is None and not resume:
        raise ValueError("`steps` is required (only a resumed run defaults to the file's).")
    if steps is not None:
        _check_int("steps", steps, 1)
    _check_int("chunk", chunk, 1)
    if save_w_every is not None:
        _check_int("save_w_every", save_w_every, 1)
    _check_int("warm_start", warm_start, 0)
    every, at = _check_schedule(checkpoint_every, checkpoint_at)
    if resume and out is None:
        raise ValueError("`resume=True` needs `out`, the run file to continue.")
    if resume and overwrite:
        raise ValueError("`resume=True` continues the run file `out`; drop `overwrite=True`.")
    _check_divergence_factor(divergence_factor)
    names = _check_processes(processes)
    for name in names:
        if name in FLOW_PROCESSES:
            FLOW_PROCESSES[name].check_optimizer(optimizer)
    # In a program of several processes (`jax.distributed.initialize`), each runs this
    # same call; process 0 alone writes `out`, the others a temporary file.
    writes_out = jax.process_index() == 0
    if out is not None and writes_out:
        check_writable(out)  # before any computation
    enable_compilation_cache(compilation_cache)
    # The file records the optimizer as given; its scalars as arrays compute the run, so
    # that runs differing only in hyperparameters (a sweep over η) share compiled programs.
    given = optimizer
    objective, optimizer, w, _ = prepare(loss, w0, optimizer, None)
    loss0, opt_state = _check_start(objective, optimizer, w, warm_start + (steps or 0) + 1)
    key = jr.key(0) if key is None else key
    limit = _loss_limit(divergence_factor, loss0)
    # What a resumed run must share with the run in the file.
    setup = _json(
        {
            "processes": list(names),
            "optimizer": repr(given),
            "eig": dataclasses.asdict(eig),
            "central": repr(central) if set(_CENTRAL_OPTIONS) & set(names) else None,
            "stable": repr(stable) if "stable" in names else None,
            "dtype": str(w.dtype),
            "num_params": int(w.size),
            "devices": objective.num_devices,
            "warm_start": warm_start,
            "chunk": chunk,
            "save_w_every": save_w_every,
            "key": np.asarray(jr.key_data(key)).tolist(),
            "start_sha256": _fingerprint(w, loss0),  # of w0 and the loss there
            "divergence_factor": divergence_factor,
        }
    )
    schedule = {"every": every, "at": list(at)}
    path = pathlib.Path(out) if out is not None else None
    stored = checkpoint = None
    if resume:
        assert path is not None
        stored, checkpoint, steps = _resume_point(path, setup, steps)
        if checkpoint.step == steps + 1 == stored.num_rows:
            warnings.warn(
                f"{str(path)!r} is already complete at {steps} steps; nothing to do.",
                stacklevel=2,
            )
            return load_run(path)
    elif path is not None and path.exists() and not overwrite and writes_out:
        raise FileExistsError(
            f"Run file {str(path)!r} already exists; pass `overwrite=True` "
            "(`--overwrite` on the command line) to replace it."
        )
    assert steps is not None
    if warm_start and not resume:
        w, opt_state = _warm_start(objective, optimizer, w, opt_state, warm_start)

    scanned = tuple(PROCESSES[n](objective, optimizer, eig) for n in names if n in PROCESSES)
    options = {**dict.fromkeys(_CENTRAL_OPTIONS, central), "stable": stable}
    flows = tuple(
        FLOW_PROCESSES[n](objective, optimizer, eig, options[n])
        for n in names
        if n in FLOW_PROCESSES
    )
    num_rows = steps + 1
    if checkpoint is None:
        states = _initial_states(scanned, flows, key, w, opt_state)
        failed, warned, t = set(), set(), 0
    else:
        template = eqx.filter_eval_shape(_initial_states, scanned, flows, key, w, opt_state)
        states, failed, warned = _restore(template, checkpoint, names, path)
        t = checkpoint.step
    scanned_states, flow_states = states
    file_attrs = {
        **(attrs or {}),
        "created": datetime.datetime.now(datetime.UTC).isoformat(),
        "versions": package_versions(),
        "steps": steps,
        "stop_reasons": stop_messages(),
        "checkpoint": schedule,
        **setup,
    }

    with (
        tempfile.TemporaryDirectory() as tmp,
        tqdm(total=steps, initial=min(t, steps), disable=not progress, unit="step") as bar,
    ):
        path = path if path is not None and writes_out else pathlib.Path(tmp) / "run.h5"
        writer = None
        if stored is not None and checkpoint is not None and writes_out:
            resumed = stored.attrs.get("resumed", []) + [
                {
                    "from_step": checkpoint.step,
                    "steps": steps,
                    "at": datetime.datetime.now(datetime.UTC).isoformat(),
                    "versions": package_versions(),
                }
            ]
            writer = RunWriter.reopen(
                path,
                num_rows=num_rows,
                attrs={**(attrs or {}), "steps": steps, "checkpoint": schedule, "resumed": resumed},
            )
        try:
            while t < num_rows:
                end = _chunk_end(t, num_rows, chunk, every, at)
                rows = end - t
                records = {}
                if scanned:
                    if t > 0 and t % chunk == 0:
                        scanned_states = tuple(grow(p, s) for p, s in zip(scanned, scanned_states))
                    scanned_states, scan_records = _advance_chunk(
                        scanned,
                        scanned_states,
                        *jax.device_put((t, end)),
                        chunk,
                        np.asarray(limit, w.dtype),
                    )
                    for name, fields in scan_records.items():
                        records[name] = {f: np.asarray(v)[:rows] for f, v in fields.items()}
                if flows:
                    flow_states, flow_records = _advance_flows(flows, flow_states, t, rows, limit)
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
                    writer = RunWriter.create(
                        path,
                        num_rows=num_rows,
                        series=_series_specs(records),
                        attrs=file_attrs,
                        overwrite=overwrite,
                        checkpoint=jtu.tree_leaves((scanned_states, flow_states))
                        + _loop_arrays(names, failed, warned),
                    )
                writer.write(t, flat)
                t = end
                bar.update(min(t, steps) - bar.n)
                bar.set_postfix(_progress_summary(flat, names[0]))
                known_failures = len(failed)
                for name in names:  # stop codes persist, so the chunk's last row tells
                    code, when = records[name]["stop_reason"][-1], records[name]["stop_time"][-1]
                    if np.isnan(code) or name in failed:
                        continue
                    reason = stop_reason_of(int(code))
                    if is_failure(reason):
                        failed.add(name)
                        message = describe_stop(warm_start + when, reason)
                        warnings.warn(f"{name} {message}.", stacklevel=2)
                for name, kind, message in _solver_problems(records, t - rows, warm_start):
                    if strict:
                        raise SolverError(f"{name}: {message} (run file {str(path)!r}).")
                    if (name, kind) not in warned:
                        warned.add((name, kind))
                        warnings.warn(f"{name}: {message}; warned once.", stacklevel=2)
                halt = stop_on_divergence and len(failed) > known_failures
                if halt or t == num_rows or _is_checkpoint(t, every, at):
                    leaves = jtu.tree_leaves((scanned_states, flow_states))
                    arrays = [np.asarray(leaf) for leaf in leaves]
                    writer.write_checkpoint(t, arrays + _loop_arrays(names, failed, warned))
                if halt:
                    break
        finally:
            if writer is not None:
                writer.close()
        return load_run(path)
