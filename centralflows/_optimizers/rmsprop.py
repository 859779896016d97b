"""Scalar RMSProp and RMSProp: gradient descent preconditioned by an EMA of squared gradients."""

import abc
from typing import ClassVar, Generic, TypeVar

import equinox as eqx
import jax.numpy as jnp
from equinox import AbstractVar
from jaxtyping import Array, ArrayLike, Float, Scalar

from .base import AbstractDiagonalOptimizer, Schedule, Vector, check_hyperparameter

_Nu = TypeVar("_Nu")


class RMSPropState(eqx.Module, Generic[_Nu]):
    """The EMA `nu` of squared gradients (a scalar for Scalar RMSProp) and the counter."""

    count: Float[Array, ""]
    nu: _Nu


class _AbstractRMSProp(AbstractDiagonalOptimizer[RMSPropState]):
    r"""`ν⁺ = β₂ν + (1−β₂)g²`, `P = (√ν̂ + ε)/η`, with `ν̂ = ν/(1−β₂^t)` if bias-corrected.

    Without bias correction ν starts at the squared initial gradient, so that `P` is
    well defined at `t = 0` for the flows; with it, ν starts at zero.
    """

    lr: AbstractVar[float | ArrayLike | Schedule]
    beta2: AbstractVar[float | ArrayLike]
    eps: AbstractVar[float | ArrayLike]
    bias_correction: AbstractVar[bool]

    def _check(self):
        check_hyperparameter("lr", self.lr, lambda x: x <= 0, "> 0")
        check_hyperparameter(
            "beta2", self.beta2, lambda x: (x <= 0) | (x >= 1), "in the open interval (0, 1)"
        )
        check_hyperparameter("eps", self.eps, lambda x: x < 0, ">= 0")

    @abc.abstractmethod
    def _square(self, grad: Vector):
        """`g²` as tracked by ν: the squared norm, or the elementwise square."""

    def _beta2(self) -> Scalar:
        return check_hyperparameter("beta2", self.beta2, lambda x: (x <= 0) | (x >= 1), "in (0, 1)")

    def init(self, w: Vector, grad: Vector) -> RMSPropState:
        nu = self._square(grad)
        if self.bias_correction:
            nu = jnp.zeros_like(nu)
        return RMSPropState(jnp.zeros((), w.dtype), nu)

    def update(self, state: RMSPropState, grad: Vector) -> RMSPropState:
        beta2 = self._beta2()
        nu = beta2 * state.nu + (1 - beta2) * self._square(grad)
        return RMSPropState(state.count + 1, nu)

    def drift(self, state: RMSPropState, grad: Vector) -> RMSPropState:
        # EMA on the post-update value: ν_t − ν_{t−1} = (1−β₂)/β₂ · (g_t² − ν_t).
        beta2 = self._beta2()
        rate = (1 - beta2) / beta2
        return RMSPropState(jnp.ones_like(state.count), rate * (self._square(grad) - state.nu))

    def _nu_hat(self, state: RMSPropState):
        if self.bias_correction:
            return state.nu / (1 - self._beta2() ** state.count)
        return state.nu

    def diagonal(self, state: RMSPropState):
        eps = check_hyperparameter("eps", self.eps, lambda x: x < 0, ">= 0")
        return (_sqrt(self._nu_hat(state)) + eps) / self.learning_rate(state.count)


def _sqrt(x):
    """√x with derivative 0, not inf, at x = 0: a parameter the loss never moves (e.g. the
    weight of a pixel that is always blank) has ν = 0, and the flows differentiate P(s)
    along ds/dt = 0 there, where inf · 0 would be NaN. A NaN (an invalid traced β₂, see
    `check_hyperparameter`) stays NaN."""
    zero = x == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, x)))


class ScalarRMSProp(_AbstractRMSProp):
    """Scalar RMSProp: one EMA `ν` of the squared gradient norm, effective step size η/(√ν̂+ε)."""

    lr: float | ArrayLike | Schedule
    beta2: float | ArrayLike = 0.99
    eps: float | ArrayLike = 0.0
    bias_correction: bool = eqx.field(default=False, static=True)
    scalar_preconditioner: ClassVar[bool] = True

    def __check_init__(self):
        self._check()

    def _square(self, grad: Vector) -> Scalar:
        return jnp.sum(grad**2)

    def summary(self, state: RMSPropState) -> dict[str, Scalar]:
        return {
            "lr": self.learning_rate(state.count),
            "nu": state.nu,
            "effective_step_size": 1 / self.diagonal(state),
        }


class RMSProp(_AbstractRMSProp):
    """RMSProp: a per-coordinate EMA `ν` of `g⊙g`, `P = diag(√ν̂ + ε)/η`."""

    lr: float | ArrayLike | Schedule
    beta2: float | ArrayLike = 0.99
    eps: float | ArrayLike = 0.0
    bias_correction: bool = eqx.field(default=False, static=True)
    scalar_preconditioner: ClassVar[bool] = False

    def __check_init__(self):
        self._check()

    def _square(self, grad: Vector) -> Vector:
        return grad**2

    def summary(self, state: RMSPropState) -> dict[str, Scalar]:
        ess = 1 / self.diagonal(state)
        return {
            "lr": self.learning_rate(state.count),
            "nu_l1": jnp.sum(state.nu),
            "ess_mean": jnp.mean(ess),
            "ess_harmonic_mean": 1 / jnp.mean(1 / ess),
        }


_DOC = """**Arguments:**

- `lr`: the learning rate η > 0, or a schedule `t -> η(t)`.
- `beta2`: the EMA decay β₂ ∈ (0, 1).
- `eps`: ε ≥ 0, added to √ν̂.
- `bias_correction`: divide ν by `1 − β₂^t`.
"""
ScalarRMSProp.__init__.__doc__ = _DOC
RMSProp.__init__.__doc__ = _DOC
