"""The standalone flow API: `central_flow(...)` and `stable_flow(...)`."""

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar

from ._cache import enable_compilation_cache
from ._eigen import EigConfig
from ._flow_processes import AbstractFlowProcess, CentralFlowProcess, StableFlowProcess
from ._flows import FlowState
from ._integrate import FlowOptions
from ._objective import Objective, objective_and_start
from ._optimizers import AbstractOptimizer
from ._processes import initial_opt_state
from ._replay import Observation, replay
from ._stop import StopReason


class FlowSolution(eqx.Module):
    """A flow observed at the times `ts`.

    - `ts`: the save times.
    - `w`: parameters at each save time, as pytrees shaped like `w0` (leading time axis).
    - `opt_state`: the optimizer state at each save time.
    - `loss`, `effective_sharpness`: the training loss and top eigenvalue of P⁻¹H.
    - `predicted_loss`, `predicted_variances`: the central flow's predictions for the
      time-averaged loss and the oscillation variances (eigenvalues of X; NaN beyond the
      critical ones). For the stable flow these are the loss and NaN.
    - `eos_onset`: when the edge of stability began (NaN if it did not): for the central
      flow, when the stability constraint became active; for the stable flow, when its
      effective sharpness crossed 2.
    - `stop_time`, `stop_reason`: where the flow was stopped (NaN if it ran to the end)
      and why, a [`centralflows.StopReason`][] (`running` if it ran to the end). Saves
      after `stop_time` repeat the state it stopped in.
    - `stats`: solver steps, right-hand-side evaluations and segments per interval
      integrated: the units of time between integers, split at the save times.
    """

    ts: Float[Array, " T"]
    w: PyTree
    opt_state: PyTree
    loss: Float[Array, " T"]
    effective_sharpness: Float[Array, " T"]
    predicted_loss: Float[Array, " T"]
    predicted_variances: Float[Array, "T k"]
    eos_onset: Scalar
    stop_time: Scalar
    stop_reason: StopReason
    stats: dict[str, Array]


def _check_times(t1: float, saveat: Sequence[float] | None) -> list[float]:
    """The save times (`[t1]` by default), checked: `t1` finite and >= 0, `saveat`
    increasing in [0, t1]."""
    real = lambda t: (
        isinstance(t, int | float | np.integer | np.floating) and not isinstance(t, bool)
    )
    if not real(t1) or not (0 <= t1 < np.inf):
        raise ValueError(f"`t1` must be a finite time >= 0, got {t1!r}.")
    ts = [t1] if saveat is None else list(saveat)
    if (
        not all(real(t) for t in ts)
        or any(not 0 <= t <= t1 for t in ts)
        or any(b <= a for a, b in zip(ts, ts[1:]))
    ):
        raise ValueError(f"`saveat` must be increasing times in [0, t1], got {saveat!r}.")
    return [float(t) for t in ts]


def _has_tracers(tree: PyTree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves(tree))


def _concrete(tree: PyTree) -> PyTree:
    """`tree` with its arrays' primal values: the concrete values a solve plans from."""
    tree = jtu.tree_map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, tree)
    if _has_tracers(tree):
        raise ValueError(
            "A flow plans its segments (critical sets, events, tracked eigenpairs) from "
            "concrete values, so it cannot run under `jax.jit` or `jax.vmap`; call it "
            "eagerly. `jax.grad`, `jax.jacfwd` and `jax.jvp` work."
        )
    return tree


def _scalars_as_arrays(tree: PyTree, dtype) -> PyTree:
    """`tree` with its scalars (hyperparameters such as `GD(0.5)`'s η: Python floats,
    weakly typed or other-precision arrays) as arrays of `dtype`, so that compiled code
    takes them as inputs of one type, and a sweep over η compiles once."""

    def array(x):
        scalar = isinstance(x, float) or (eqx.is_inexact_array(x) and jnp.ndim(x) == 0)
        return jnp.asarray(x, dtype) if scalar else x

    return jtu.tree_map(array, tree)


def _check_opt_state(
    optimizer: AbstractOptimizer, w: Float[Array, " n"], opt_state: PyTree
) -> None:
    """Refuse an initial optimizer state unlike the one `optimizer.init` makes."""
    expected = eqx.filter_eval_shape(optimizer.init, w, w)
    shape = lambda tree: jtu.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)
    try:
        same = shape(expected) == shape(opt_state)
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(
            f"`opt_state0` must be shaped like {type(optimizer).__name__}'s state "
            f"{shape(expected)}, got {shape(opt_state)}."
        )


def prepare(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    opt_state0: PyTree | None,
) -> tuple[Objective, AbstractOptimizer, Float[Array, " n"], Callable]:
    """The objective, the optimizer (its scalars as arrays) and the flat start with its
    unravelling, checked against each other (parameter count, dtype, `opt_state0`)."""
    objective, w, unravel = objective_and_start(loss, w0)
    objective, optimizer = _scalars_as_arrays((objective, optimizer), w.dtype)
    if opt_state0 is not None:
        _check_opt_state(optimizer, w, opt_state0)
    return objective, optimizer, w, unravel


def _solve(
    cls: type[AbstractFlowProcess],
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    t1: float,
    saveat: Sequence[float] | None,
    eig: EigConfig,
    options: FlowOptions,
    key: PRNGKeyArray | None,
    opt_state0: PyTree | None,
) -> FlowSolution:
    enable_compilation_cache()
    ts = _check_times(t1, saveat)
    objective, optimizer, w, unravel_w0 = prepare(loss, w0, optimizer, opt_state0)
    leaves = jtu.tree_leaves((objective, optimizer, w, opt_state0))
    traced = _has_tracers(leaves)
    key = jr.key(0) if key is None else key
    process = cls(*_concrete((objective, optimizer)), eig, options)
    state = process.init(_concrete(w), key, _concrete(opt_state0))
    trace = [] if traced else None
    saved, records, stats = [], [], []
    # Unit intervals between integer times (where the tracked eigenpairs are refreshed),
    # split at the save times.
    stops = sorted({*range(math.ceil(t1)), *ts, t1})
    for t, end in zip(stops, [*stops[1:], None]):
        observed = None  # the unit starting at a save time starts from its observation
        if t in ts:
            observed = process.observe_now(state, t)
            state, k, _, record, _ = observed
            saved.append(state.y)
            records.append(record)
            if traced:
                trace.append(Observation(k, process.basis(state, k)))
        if end is not None:
            state, _, record = process.advance_unit(state, t, trace, end, observed)
            stats.append(record)
    width = max(r.get("predicted_variances", jnp.zeros(1)).size for r in records)
    eos_onset, stop_time = state.eos_time, state.stop_time
    if traced:
        replayed = cls(objective, optimizer, eig, options)
        y0 = FlowState(w, initial_opt_state(optimizer, objective, w, opt_state0))
        observed, times = replay(replayed, y0, trace)
        saved = [y for y, _ in observed]
        records = [record for _, record in observed]
        eos_onset = times.get("onset", times.get("eos", eos_onset))
        if bool(state.stop_reason == StopReason.sharpness_ceiling):
            stop_time = times.get("ceiling", stop_time)

    def variances(r):
        v = r.get("predicted_variances", jnp.full(width, jnp.nan))
        return jnp.pad(jnp.asarray(v), (0, width - v.size), constant_values=jnp.nan)

    def sharpness(r):
        return r["effective_sharpness"] if traced else r["effective_hessian_eigs"][0]

    stacked = jtu.tree_map(lambda *xs: jnp.stack(xs), *saved)
    return FlowSolution(
        ts=jnp.asarray(ts, w.dtype),
        w=jax.vmap(unravel_w0)(stacked.w),
        opt_state=stacked.opt_state,
        loss=jnp.stack([jnp.asarray(r["train_loss"]) for r in records]),
        effective_sharpness=jnp.stack([jnp.asarray(sharpness(r)) for r in records]),
        predicted_loss=jnp.stack(
            [jnp.asarray(r.get("predicted_loss", r["train_loss"])) for r in records]
        ),
        predicted_variances=jnp.stack([variances(r) for r in records]),
        eos_onset=eos_onset,
        stop_time=stop_time,
        stop_reason=state.stop_reason,
        stats={
            name: jnp.asarray([r[name] for r in stats])
            for name in ("solver_steps", "rejected_steps", "rhs_evals", "segments")
        },
    )


def central_flow(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    t1: float,
    *,
    saveat: Sequence[float] | None = None,
    eig: EigConfig = EigConfig(),
    options: FlowOptions = FlowOptions(),
    key: PRNGKeyArray | None = None,
    opt_state0: PyTree | None = None,
) -> FlowSolution:
    """Integrate the central flow of `optimizer` on `loss` from `w0` to time `t1`.

    Time is measured in optimizer steps. Eigenpairs of the effective Hessian are tracked
    by LOBPCG at every integer time; between them, the flow (a diffrax solve per unit of
    time, ended early by events) uses Rayleigh–Ritz in the frozen tracked basis.

    **Arguments:**

    - `loss`: an `Objective` or a function of the parameter pytree.
    - `w0`: initial parameters.
    - `optimizer`: `GD`, `ScalarRMSProp` or `RMSProp`.
    - `t1`: final time (the tracked eigenpairs are recomputed at every integer time).
    - `saveat`: increasing times in `[0, t1]` to save at (default: `[t1]`).
    - `eig`: eigen-tracking settings.
    - `options`: solver, tolerances, relaxation time `tau`; `FlowOptions.euler(n)` for
      the reference scheme.
    - `key`: PRNG key for the initial eigenvector guesses.
    - `opt_state0`: the optimizer's state at `w0` (default: `optimizer.init` there), e.g.
      an RMSProp ν after a few discrete warm-up steps.

    **Returns:** a `FlowSolution`.

    **Differentiation.** `jax.grad`, `jax.jacrev`, `jax.jacfwd` and `jax.jvp` work with
    respect to the optimizer's float fields (`lr`, `beta2`, `eps`), `w0`, `opt_state0`
    and the arrays of `loss` (an `Objective`'s data, or the leaves of a callable pytree
    such as `jax.tree_util.Partial(fn, strength=λ)`). The flow is first solved with
    concrete values, recording its discrete decisions (critical sets, events, tracked bases);
    that solve is then replayed with the traced inputs: eigenvectors are differentiated
    implicitly (`eigenbasis`), the SDCP implicitly, each segment in the solver steps the
    solve took, event times by the implicit function theorem. Not under `jax.jit` or
    `jax.vmap`: planning needs concrete values.

    Turns on JAX's persistent compilation cache (`centralflows.enable_compilation_cache`;
    `CENTRALFLOWS_CACHE_DIR=off` keeps it off), so that a new process reuses the
    programs compiled before.
    """
    return _solve(
        CentralFlowProcess, loss, w0, optimizer, t1, saveat, eig, options, key, opt_state0
    )


def stable_flow(
    loss: Objective | Callable[[PyTree], Scalar],
    w0: PyTree,
    optimizer: AbstractOptimizer,
    t1: float,
    *,
    saveat: Sequence[float] | None = None,
    eig: EigConfig = EigConfig(),
    options: FlowOptions = FlowOptions(),
    key: PRNGKeyArray | None = None,
    opt_state0: PyTree | None = None,
) -> FlowSolution:
    """Integrate the stable flow `dw/dt = −P⁻¹∇L` (gradient flow for GD) to time `t1`.

    Arguments, returns and differentiation as for [`centralflows.central_flow`][]; the
    flow stops (see `stop_time`) once its effective sharpness exceeds `options.max_seff`.
    """
    return _solve(StableFlowProcess, loss, w0, optimizer, t1, saveat, eig, options, key, opt_state0)
