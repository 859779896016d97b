"""Processes advanced side by side at integer times: the discrete optimizer and its midpoints."""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray, PyTree, Scalar

from ._custom_types import Record, Vector
from ._eigen import (
    EigConfig,
    Tracking,
    eig_record,
    grow_tracking,
    init_tracking,
    preconditioner_diagonal,
    refresh_tracking,
)
from ._objective import Objective
from ._optimizers import AbstractOptimizer


def initial_opt_state(
    optimizer: AbstractOptimizer, objective: Objective, w0: Vector, opt_state: PyTree | None
) -> PyTree:
    """`opt_state`, or when it is `None` the optimizer's initial state at `w0`."""
    return optimizer.init(w0, objective.grad(w0)) if opt_state is None else opt_state


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
        """Everything logged about the point `w`: eigenpairs solved by LOBPCG every
        `frequency` steps, and in between the Rayleigh–Ritz pairs in the tracked span."""
        solved = t % self.eig.frequency == 0
        tracking = refresh_tracking(tracking, self.objective, w, p_diag, self.eig, solved)
        record = dict(self.objective.metrics(w))
        record["grad_norm_sq"] = jnp.sum(grad**2)
        summary = self.optimizer.summary(opt_state)
        record.update({f"opt.{k}": jnp.asarray(v, w.dtype) for k, v in summary.items()})
        record.update(eig_record(tracking, p_diag, solved))
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


def grow(process, state: PyTree) -> PyTree:
    """Add tracked eigenpairs while the smallest one exceeds the tracking threshold."""
    while (tracking := grow_tracking(state.tracking, process.eig)) is not None:
        state = process.retrack(state, tracking)
    return state


PROCESSES: dict[str, type[AbstractProcess]] = {"discrete": Discrete, "midpoint": Midpoint}
