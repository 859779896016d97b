"""Processes advanced side by side at integer times: the discrete optimizer and its midpoints."""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree, Scalar

from ._eigen import (
    EigConfig,
    EigenState,
    preconditioner_diagonal,
    random_vectors,
    track_eigs,
)
from ._objective import Objective
from ._optimizers import AbstractOptimizer

Vector = Float[Array, " n"]
Record = dict[str, Array]


class Tracking(eqx.Module):
    """The eigenpairs a process tracks: of P⁻¹H (`effective`) and, when P is not a
    multiple of the identity, of H itself (`raw`)."""

    effective: EigenState
    raw: EigenState | None


def _empty_eigs(key: PRNGKeyArray, num: int, n: int, dtype) -> EigenState:
    nan = jnp.full((num,), jnp.nan, dtype)
    zero = jnp.array(0)
    return EigenState(random_vectors(key, num, n, dtype), nan, nan, zero, zero, jnp.array(True))


def init_tracking(
    key: PRNGKeyArray, optimizer: AbstractOptimizer, w: Vector, config: EigConfig
) -> Tracking:
    """Random starting vectors for `config.initial_neigs` eigenpairs."""
    k_eff, k_raw = jr.split(key)
    effective = _empty_eigs(k_eff, config.initial_neigs, w.size, w.dtype)
    raw = None
    if not optimizer.scalar_preconditioner:
        raw = _empty_eigs(k_raw, config.initial_neigs, w.size, w.dtype)
    return Tracking(effective, raw)


def initial_opt_state(
    optimizer: AbstractOptimizer, objective: Objective, w0: Vector, opt_state: PyTree | None
) -> PyTree:
    """`opt_state`, or when it is `None` the optimizer's initial state at `w0`."""
    return optimizer.init(w0, objective.grad(w0)) if opt_state is None else opt_state


@eqx.filter_jit
def refresh_tracking(
    tracking: Tracking,
    objective: Objective,
    w: Vector,
    p_diag: Vector,
    config: EigConfig,
) -> Tracking:
    """Recompute the tracked eigenpairs at `w`, warm-started from the previous ones.

    Compiled on its own, so every process shares one program per tracked-set size.
    """
    hvps = lambda vs: objective.hvps(w, vs)
    effective = track_eigs(hvps, p_diag, tracking.effective.vectors, config)
    raw = tracking.raw
    if raw is not None:
        raw = track_eigs(hvps, jnp.ones_like(p_diag), raw.vectors, config)
    return Tracking(effective, raw)


def eig_record(tracking: Tracking, p_diag: Vector, computed) -> Record:
    """The logged eigen series; NaN on steps where nothing was recomputed."""
    nan_unless = lambda x: jnp.where(computed, x, jnp.nan)
    effective = tracking.effective
    if tracking.raw is None:  # P = p·I: the raw eigenvalues are p times the effective ones
        raw_values = effective.values * p_diag[0]
    else:
        raw_values = tracking.raw.values
    return {
        "effective_hessian_eigs": nan_unless(effective.values),
        "hessian_eigs": nan_unless(raw_values),
        "eig_residuals": nan_unless(effective.residuals),
        "eig_converged": nan_unless(effective.converged.astype(p_diag.dtype)),
        "eig_hvps": nan_unless(effective.hvps.astype(p_diag.dtype)),
    }


def above_threshold(values, threshold):
    """`values > threshold`, with a relative slack of 1e-7 for an eigenvalue that an event
    just stopped on, at the threshold."""
    return values > threshold * (1 - 1e-7)


def grow_tracking(tracking: Tracking, key: PRNGKeyArray, config: EigConfig) -> Tracking | None:
    """One more tracked eigenpair where the smallest tracked one exceeds the threshold.

    **Returns:** the extended tracking, or `None` when nothing needs to grow.
    """
    grown = False
    parts = []
    for eigs, threshold in ((tracking.effective, config.track_threshold), (tracking.raw, None)):
        if eigs is None:
            parts.append(None)
            continue
        if threshold is None:  # raw eigenpairs follow the effective count
            target = parts[0].num
        else:
            smallest = float(eigs.values[-1])
            needs = jnp.isfinite(smallest) and above_threshold(smallest, threshold)
            target = eigs.num + 1 if needs and eigs.num < config.max_neigs else eigs.num
        if target > eigs.num:
            grown = True
            n, dtype = eigs.vectors.shape[1], eigs.vectors.dtype
            extra = random_vectors(key, target - eigs.num, n, dtype)
            pad = jnp.full((target - eigs.num,), jnp.nan, eigs.values.dtype)
            eigs = EigenState(
                jnp.concatenate([eigs.vectors, extra]),
                jnp.concatenate([eigs.values, pad]),
                jnp.concatenate([eigs.residuals, pad]),
                eigs.iterations,
                eigs.hvps,
                eigs.converged,
            )
        parts.append(eigs)
    return Tracking(*parts) if grown else None


class AbstractProcess(eqx.Module):
    """A trajectory observed at integer times, advanced one unit of time per call."""

    name: ClassVar[str]
    objective: eqx.AbstractVar[Objective]
    optimizer: eqx.AbstractVar[AbstractOptimizer]
    eig: eqx.AbstractVar[EigConfig]

    @abc.abstractmethod
    def init(self, w0: Vector, key: PRNGKeyArray, opt_state: PyTree | None = None) -> PyTree:
        """The state at time 0, with optimizer state `opt_state` (default: the
        optimizer's initial state at `w0`)."""

    @abc.abstractmethod
    def advance(self, state: PyTree, t: Int[Array, ""]) -> tuple[PyTree, Vector, Record]:
        """Log time `t` and advance to `t + 1`.

        **Returns:** `(next_state, position_at_t, record_at_t)`.
        """

    @abc.abstractmethod
    def observed_point(self, state: PyTree) -> tuple[Vector, Vector]:
        """The logged position at the state's time and its preconditioner diagonal."""

    def retrack(self, state: PyTree, tracking: Tracking) -> PyTree:
        """`state` with `tracking` (e.g. grown by one vector) recomputed at its position."""
        w, p_diag = _observed_point(self, state)
        tracking = refresh_tracking(tracking, self.objective, w, p_diag, self.eig)
        return eqx.tree_at(lambda s: s.tracking, state, tracking)

    def _observe(
        self,
        w: Vector,
        grad: Vector,
        p_diag: Vector,
        opt_state: PyTree,
        tracking: Tracking,
        t: Int[Array, ""],
    ) -> tuple[Tracking, Record]:
        """Everything logged about the point `w`, refreshing eigenpairs every `frequency` steps."""
        computed = t % self.eig.frequency == 0
        tracking = jax.lax.cond(
            computed,
            lambda tr: refresh_tracking(tr, self.objective, w, p_diag, self.eig),
            lambda tr: tr,
            tracking,
        )
        record = dict(self.objective.metrics(w))
        record["grad_norm_sq"] = jnp.sum(grad**2)
        summary = self.optimizer.summary(opt_state)
        record.update({f"opt.{k}": jnp.asarray(v, w.dtype) for k, v in summary.items()})
        record.update(eig_record(tracking, p_diag, computed))
        return tracking, record

    def _step(self, w: Vector, opt_state: PyTree):
        """Gradient, next iterate, next state and the diagonal of the applied P(s_{t+1})."""
        grad = self.objective.grad(w)
        w_next, opt_next = self.optimizer.step(w, opt_state, grad)
        p_diag = preconditioner_diagonal(self.optimizer.preconditioner(opt_next, w))
        return grad, w_next, opt_next, p_diag


@eqx.filter_jit
def _observed_point(process: AbstractProcess, state: PyTree) -> tuple[Vector, Vector]:
    """`process.observed_point(state)`, one program per process type and state shape."""
    return process.observed_point(state)


class DiscreteState(eqx.Module):
    """The discrete optimizer at time t."""

    w: Vector
    opt_state: PyTree
    tracking: Tracking
    stop_time: Scalar  # the step whose loss or parameters were non-finite; NaN before


class Discrete(AbstractProcess):
    """The optimizer's own iterates `w_t`; step t is logged with the P(s_{t+1}) it applies."""

    objective: Objective
    optimizer: AbstractOptimizer
    eig: EigConfig
    name: ClassVar[str] = "discrete"

    def init(self, w0, key, opt_state=None) -> DiscreteState:
        opt_state = initial_opt_state(self.optimizer, self.objective, w0, opt_state)
        tracking = init_tracking(key, self.optimizer, w0, self.eig)
        return DiscreteState(w0, opt_state, tracking, jnp.array(jnp.nan, w0.dtype))

    def advance(self, state: DiscreteState, t):
        grad, w_next, opt_next, p_diag = self._step(state.w, state.opt_state)
        tracking, record = self._observe(state.w, grad, p_diag, opt_next, state.tracking, t)
        return DiscreteState(w_next, opt_next, tracking, state.stop_time), state.w, record

    def observed_point(self, state: DiscreteState):
        return state.w, self._step(state.w, state.opt_state)[3]


class MidpointState(eqx.Module):
    """The discrete run at time t with its previous iterate, for the midpoint at t."""

    w_prev: Vector
    w: Vector
    opt_state: PyTree
    tracking: Tracking
    stop_time: Scalar  # as for `DiscreteState`


class Midpoint(AbstractProcess):
    """Second-order midpoints `w*_t = (w_{t−1} + 2w_t + w_{t+1})/4` of the discrete run.

    The run is started with `w_{−1} = 2w_0 − w_1`, so that `w*_0 = w_0`. Eigenpairs at
    `w*_t` use the preconditioner that step t applies.
    """

    objective: Objective
    optimizer: AbstractOptimizer
    eig: EigConfig
    name: ClassVar[str] = "midpoint"

    def init(self, w0, key, opt_state=None) -> MidpointState:
        opt_state = initial_opt_state(self.optimizer, self.objective, w0, opt_state)
        w1 = self._step(w0, opt_state)[1]
        tracking = init_tracking(key, self.optimizer, w0, self.eig)
        return MidpointState(2 * w0 - w1, w0, opt_state, tracking, jnp.array(jnp.nan, w0.dtype))

    def _midpoint(self, state: MidpointState):
        _, w_next, opt_next, p_diag = self._step(state.w, state.opt_state)
        return (state.w_prev + 2 * state.w + w_next) / 4, w_next, opt_next, p_diag

    def advance(self, state: MidpointState, t):
        mid, w_next, opt_next, p_diag = self._midpoint(state)
        grad = self.objective.grad(mid)
        tracking, record = self._observe(mid, grad, p_diag, opt_next, state.tracking, t)
        return MidpointState(state.w, w_next, opt_next, tracking, state.stop_time), mid, record

    def observed_point(self, state: MidpointState):
        mid, _, _, p_diag = self._midpoint(state)
        return mid, p_diag


def grow(process, state: PyTree, key: PRNGKeyArray) -> PyTree:
    """Add tracked eigenpairs while the smallest one exceeds the tracking threshold."""
    while (tracking := grow_tracking(state.tracking, key, process.eig)) is not None:
        key = jr.split(key)[0]
        state = process.retrack(state, tracking)
    return state


PROCESSES: dict[str, type[AbstractProcess]] = {"discrete": Discrete, "midpoint": Midpoint}
