"""Optimizers written as preconditioned gradient descent."""

import abc
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from equinox import AbstractClassVar, AbstractVar
from jaxtyping import Array, ArrayLike, Float, Scalar

Vector = Float[Array, " n"]
Schedule = Callable[[Scalar], Scalar]
_State = TypeVar("_State")


def check_hyperparameter(name: str, value, bad, requirement: str):
    """Reject an invalid hyperparameter, whether it is a Python number or a traced value.

    A concrete value that fails raises `ValueError` at once; a traced value (e.g. under
    `jax.grad`) that fails becomes NaN, so that the run reports non-finite results: a
    run-time check would be a host callback, which keeps programs out of JAX's
    persistent compilation cache.

    **Arguments:**

    - `name`: the hyperparameter's name, for the message.
    - `value`: the value (float, array or tracer).
    - `bad`: `value -> bool array`, true where the value is invalid.
    - `requirement`: what a valid value satisfies, e.g. `"> 0"`.

    **Returns:** `value` (a callable as it is, anything else as an array).
    """
    if callable(value):
        return value
    if isinstance(value, jax.core.Tracer):
        return jnp.where(bad(value) | ~jnp.isfinite(value), jnp.nan, value)
    concrete = np.asarray(value)
    if np.any(bad(concrete)) or not np.all(np.isfinite(concrete)):
        raise ValueError(f"`{name}` must be {requirement} and finite, got {value!r}.")
    # A Python number stays weakly typed, so it does not promote float32 parameters.
    return jax.device_put(value if isinstance(value, (int, float)) else concrete)


class AbstractOptimizer(eqx.Module, Generic[_State]):
    r"""An optimizer as preconditioned gradient descent (as the paper writes RMSProp, eq. 31).

    State `s`, state update `s⁺ = u(s, g)` and SPD preconditioner `P(s)`:
    $s_{t+1} = u(s_t, \nabla L(w_t))$, $w_{t+1} = w_t - P(s_{t+1})^{-1}\nabla L(w_t)$.
    The continuous-time drift `ds/dt = f(s, g)` drives the flows.
    """

    lr: AbstractVar[float | ArrayLike | Schedule]
    scalar_preconditioner: AbstractClassVar[bool]

    def learning_rate(self, t: Scalar) -> Scalar:
        """The learning rate η(t): a constant, or a schedule evaluated at step `t`."""
        lr = self.lr(t) if callable(self.lr) else self.lr
        return check_hyperparameter("lr", lr, lambda x: x <= 0, "> 0")

    @abc.abstractmethod
    def init(self, w: Vector, grad: Vector) -> _State:
        """The initial state, given the initial parameters and gradient."""

    @abc.abstractmethod
    def update(self, state: _State, grad: Vector) -> _State:
        """The discrete state update `s⁺ = u(s, g)`."""

    @abc.abstractmethod
    def drift(self, state: _State, grad: Vector) -> _State:
        """The continuous drift `ds/dt = f(s, g)` (a tangent with the state's structure)."""

    @abc.abstractmethod
    def preconditioner(self, state: _State, w: Vector) -> lx.AbstractLinearOperator:
        """The SPD preconditioner `P(s)` acting on vectors shaped like `w`."""

    @abc.abstractmethod
    def summary(self, state: _State) -> dict[str, Scalar]:
        """Scalar summaries of the state, logged as `opt.<name>`."""

    def step(self, w: Vector, state: _State, grad: Vector) -> tuple[Vector, _State]:
        """One optimizer step: update the state, then `w ← w − P(s⁺)⁻¹ g`."""
        state = self.update(state, grad)
        direction = lx.linear_solve(self.preconditioner(state, w), grad, throw=False).value
        return w - direction, state


class AbstractDiagonalOptimizer(AbstractOptimizer[_State]):
    """An optimizer whose preconditioner is diagonal, `P = diag(p)`."""

    @abc.abstractmethod
    def diagonal(self, state: _State) -> Scalar | Vector:
        """The diagonal of `P(s)`: a scalar (a multiple of the identity) or a vector."""

    def preconditioner(self, state: _State, w: Vector) -> lx.DiagonalLinearOperator:
        diagonal = jnp.broadcast_to(self.diagonal(state), w.shape).astype(w.dtype)
        return lx.DiagonalLinearOperator(diagonal)

    def step(self, w: Vector, state: _State, grad: Vector) -> tuple[Vector, _State]:
        state = self.update(state, grad)
        return w - grad / self.diagonal(state), state


class GDState(eqx.Module):
    """Gradient descent's state: the step counter (continuous time for flows)."""

    count: Float[Array, ""]


class GD(AbstractDiagonalOptimizer[GDState]):
    """Gradient descent, `P = I/η(t)`, with a constant or scheduled learning rate."""

    lr: float | ArrayLike | Schedule
    scalar_preconditioner: ClassVar[bool] = True

    def __check_init__(self):
        check_hyperparameter("lr", self.lr, lambda x: x <= 0, "> 0")

    def init(self, w: Vector, grad: Vector) -> GDState:
        del grad
        return GDState(jnp.zeros((), w.dtype))

    def update(self, state: GDState, grad: Vector) -> GDState:
        del grad
        return GDState(state.count + 1)

    def drift(self, state: GDState, grad: Vector) -> GDState:
        del grad
        return GDState(jnp.ones_like(state.count))

    def diagonal(self, state: GDState) -> Scalar:
        return 1 / self.learning_rate(state.count)

    def summary(self, state: GDState) -> dict[str, Scalar]:
        return {"lr": self.learning_rate(state.count)}


GD.__init__.__doc__ = """**Arguments:**

- `lr`: the learning rate η > 0, or a schedule `t -> η(t)` (e.g. an `equinox.Module`,
  whose float leaves can then be differentiated).
"""
