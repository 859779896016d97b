"""RMSProp's stationary preconditioner, the fixed point of a central flow's ν dynamics,
and the stationary flow, the central flow with ν held there."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, Int, Scalar

from ._eigen import preconditioner_diagonal
from ._flows import (
    Basis,
    CentralFlow,
    CentralTerms,
    CriticalSpace,
    FlowState,
    half_mixed_derivative,
    used_rows,
)
from ._optimizers import AbstractOptimizer, RMSProp, ScalarRMSProp
from ._sdcp import apply_operator, pad_sdcp, psd_projection, sdcp_solve

Vector = Float[Array, " n"]
Matrix = Float[Array, "m m"]


class StationaryNu(eqx.Module):
    """`ν̄(w)`, where a central flow's ν stops moving, with `X`, its Σ = Uᵀ X U on the
    Ritz vectors `U` of the flow's basis at the given point. `residual` is how well ν̄ solves its
    fixed-point equation: `max|ν̄ − E[g²]| / max|ν̄|`, with `E[g²]` from the flow's own
    Σ at `(w, ν̄)`; `num_steps` the Josephy–Newton steps taken."""

    nu: Scalar | Vector
    X: Matrix
    residual: Scalar
    result: optx.RESULTS
    num_steps: Int[Array, ""]


def has_stationary_nu(optimizer: AbstractOptimizer) -> bool:
    """Whether `optimizer`'s state is an EMA ν of squared gradients (the RMSProp family)."""
    return isinstance(optimizer, ScalarRMSProp | RMSProp)


def check_stationary(optimizer: AbstractOptimizer) -> None:
    """Refuse the stationary ν (and flow) for an optimizer without an EMA ν (GD)."""
    if not has_stationary_nu(optimizer):
        raise ValueError(
            "The stationary preconditioner ν̄(w) and the stationary flow "
            "(`central_stationary`) are defined for Scalar RMSProp and RMSProp, whose state "
            f"is an EMA ν of squared gradients, not for {type(optimizer).__name__}: GD has no "
            "ν to hold at a fixed point (its central flow is the `central` process)."
        )


def _mean_square(optimizer, grad: Vector, hessian_vectors: Basis, x: Matrix):
    """`E[g²]` for `g = ∇L + Hδ`, `E δδᵀ = Uᵀ X U` with rows `H u_a` given: `g²` (Scalar
    RMSProp: `‖g‖²`) plus `½∇²(g²)[HΣH] = Σ_ab X_ab ½∂_a∂_b (g²)` along `H u_a, H u_b`
    (paper eqs. 26 and 34: `∇L² + diag(HΣH)`)."""
    square = optimizer._square  # the quantity ν averages
    second = lambda h_a, h_b: half_mixed_derivative(square, grad, h_a, h_b)
    pairs = jax.vmap(jax.vmap(second, (None, 0)), (0, None))(hessian_vectors, hessian_vectors)
    # ≥ g² for X ⪰ 0; floored at 0, which float32 round-off can cross where g and H u vanish.
    return jnp.maximum(square(grad) + jnp.einsum("ab,ab...->...", x, pairs), 0)


def _with_nu(state, nu):
    return eqx.tree_at(lambda s: s.nu, state, nu)


def _flow_sdcp(flow: CentralFlow, w: Vector, state, space: CriticalSpace):
    """The flow's SDCP at `(w, state)` in the fixed coordinates `U` of `space`, as
    `X -> α + B[X]` with `α = dM/dt|_{X=0} + M/τ`, `M = Uᵀ(2P − H)U` (`U` need not be
    P-orthonormal here: the SDCP is covariant under `X -> Cᵀ X C`)."""
    u, hu = space.vectors, space.hessian_vectors
    rates = flow.rates(w, state, space, jnp.zeros_like(w))
    p_diag = preconditioner_diagonal(flow.optimizer.preconditioner(state, w))
    m = 2 * (u * p_diag) @ u.T - (u @ hu.T + hu @ u.T) / 2
    return lambda x: rates(x)[2] + m / flow.tau  # dM/dt is affine in X: a + B[X]


def _linearized(field, x: Matrix, critical) -> tuple[Matrix, Float[Array, "m m m m"]]:
    """`(α, B)` of `field` (`X -> α + B[X]`, affine or not) linearized at `x`, padded."""
    value, operator = field(x), jax.jacfwd(field)(x)
    operator = (operator + jnp.swapaxes(operator, 2, 3)) / 2
    alpha = value - apply_operator(operator, x)
    return pad_sdcp((alpha + alpha.T) / 2, operator, critical)


def stationary_nu(
    flow: CentralFlow, y: FlowState, basis: Basis, *, max_steps: int = 32
) -> StationaryNu:
    r"""The stationary ν of a central flow at `y.w`: `ν̄ = E[g²] = ∇L² + diag(HΣH)`
    (Scalar RMSProp: `‖∇L‖² + tr(HΣH)`), where Σ is the flow's at `(w, ν̄)` (paper
    eqs. 26 and 34 with dν/dt = 0; for RMSProp, the stationary preconditioner of eq. 35,
    here with the flow's relaxed constraint).

    Σ is held in the span of the used rows of `basis` (the tracked directions the flow
    works in, critical and guard ones), as `Σ = Uᵀ X U` with `U` the Ritz vectors of
    `basis` at `y` (at `y`'s ν), and complementarity decides where `X` is active: at ν̄
    a guard direction can turn critical, which a span of the critical ones at `y` alone
    would miss. With `ν(X) = E[g²]` for that Σ, `dν/dt = 0` and the stationary point is
    the solution of a nonlinear complementarity problem in `X` alone:

    `X ⪰ 0`, `F(X) ⪰ 0`, `⟨X, F(X)⟩ = 0`, `F(X) = α(ν(X)) + B(ν(X))[X]`,

    with `α`, `B` the flow's SDCP at `(w, ν(X))` in the fixed coordinates `U`. It is
    solved by the Josephy–Newton method: each step solves the SDCP of `F` linearized at
    the current `X` (`sdcp_solve`), from `X = 0`. Nothing here differentiates an
    eigendecomposition, so equal critical eigenvalues (two or more critical directions
    at the edge of stability) are no obstacle. The cost is one gradient, one
    Hessian-vector product per used row and one third-order product per pair of them,
    and per step a Jacobian of `F` (no further products).

    ??? cite "Reference"
        ```bibtex
        @article{josephy1979newton,
          title={Newton's method for generalized equations},
          author={Josephy, Norman H.},
          journal={Technical Summary Report 1965, Mathematics Research Center,
                   University of Wisconsin--Madison},
          year={1979}
        }
        ```

    **Arguments:**

    - `flow`: a `CentralFlow` (with or without its penalty, without `modified`) of a
      Scalar RMSProp or RMSProp optimizer; its `num_critical` is not used.
    - `y`: the point; `y.w`, ν's count (bias correction, schedules) and, for the Ritz
      vectors `U`, ν.
    - `basis`: the frozen basis the flow works in (zero rows are padding).
    - `max_steps`: the most Josephy–Newton steps.

    **Returns:** a `StationaryNu`.
    """
    check_stationary(flow.optimizer)
    if flow.modified:
        raise ValueError(
            "The stationary ν is defined for the central flow without the modified-equation "
            "term (`modified=False`): the term's preconditioner would move with ν."
        )
    w, state = y.w, y.opt_state
    flow = dataclasses.replace(flow, num_critical=jnp.sum(used_rows(basis)))
    space = flow.critical_space(y, basis)
    critical = space.critical
    mean_square = lambda x: _mean_square(flow.optimizer, space.grad, space.hessian_vectors, x)
    # F(X): the flow's SDCP at (w, ν(X)), applied to X.
    field = lambda x: _flow_sdcp(flow, w, _with_nu(state, mean_square(x)), space)(x)
    tol = float(jnp.finfo(w.dtype).eps) ** 0.5

    def step(carry):
        x, _, num_steps = carry
        new = psd_projection(sdcp_solve(*_linearized(field, x, critical)).X)
        return new, new - x, num_steps + 1

    def running(carry):
        x, diff, num_steps = carry
        moving = jnp.max(jnp.abs(diff)) > tol * jnp.maximum(jnp.max(jnp.abs(x)), tol)
        return moving & (num_steps < max_steps)

    # From the flow's own X at y: where ν is near ν̄ (along a flow), F is near-affine there.
    zero = jnp.zeros((len(critical),) * 2, w.dtype)
    x0 = psd_projection(
        sdcp_solve(*_linearized(_flow_sdcp(flow, w, state, space), zero, critical)).X
    )
    start = (x0, jnp.full_like(zero, jnp.inf), jnp.array(0))
    x, _, num_steps = jax.lax.while_loop(running, step, start)
    nu = mean_square(x)
    # The fixed-point equation, checked through the flow's own SDCP at ν̄.
    at_nu = _flow_sdcp(flow, w, _with_nu(state, nu), space)
    flow_x = sdcp_solve(*_linearized(at_nu, jnp.zeros_like(x), critical)).X
    residual = jnp.max(jnp.abs(nu - mean_square(flow_x))) / jnp.max(jnp.abs(nu))
    result = optx.RESULTS.where(
        num_steps < max_steps, optx.RESULTS.successful, optx.RESULTS.nonlinear_max_steps_reached
    )
    return StationaryNu(nu, x, residual, result, num_steps)


class StationaryFlow(eqx.Module):
    r"""RMSProp's stationary flow: the central flow with ν held at its stationary value
    ν̄(w) (`stationary_nu`) at every `w`, so that its state is `w` alone:

    `dw/dt = −P(ν̄)⁻¹[∇L + ½∇⟨H, Σ̄⟩]`, with Σ̄ the flow's Σ at `(w, ν̄(w))`

    (paper eq. 35's preconditioner in eq. 34). Its `ds/dt` is zero but for the step
    counter (`dν/dt = 0` at ν̄); the ν carried in its state is ν̄ where a caller last set
    it and only chooses the critical directions. One evaluation costs about two of the
    central flow's: the stationary ν, then the central flow's terms at `(w, ν̄)`.
    """

    central: CentralFlow

    def terms(self, y: FlowState, basis: Basis) -> CentralTerms:
        """The central flow's terms at `(w, ν̄(w))`, with `dν/dt` zero."""
        nu = stationary_nu(self.central, y, basis).nu
        terms = self.central.terms(FlowState(y.w, _with_nu(y.opt_state, nu)), basis)
        drift = _with_nu(terms.derivative.opt_state, jnp.zeros_like(nu))
        return eqx.tree_at(lambda t: t.derivative.opt_state, terms, drift)

    def __call__(self, t: Scalar, y: FlowState, args: Basis) -> FlowState:
        del t
        return self.terms(y, args).derivative
