"""RMSProp's stationary preconditioner: the fixed point of a central flow's ν dynamics."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, Scalar

from ._flows import Basis, CentralFlow, FlowState, half_mixed_derivative, hessian_rows
from ._optimizers import AbstractOptimizer, RMSProp, ScalarRMSProp

Vector = Float[Array, " n"]
Gram = Float[Array, "m m"]


class StationaryNu(eqx.Module):
    """`ν̄(w)`, where a central flow's ν would stop moving, and how well it solves its
    fixed-point equation: `residual` is `max|ν̄ − E[g²]| / max|ν̄|`, with `E[g²]` the
    flow's time-averaged squared gradient at `(w, ν̄)`."""

    nu: Scalar | Vector
    residual: Scalar
    result: optx.RESULTS


def has_stationary_nu(optimizer: AbstractOptimizer) -> bool:
    """Whether `optimizer`'s state is an EMA ν of squared gradients (the RMSProp family)."""
    return isinstance(optimizer, ScalarRMSProp | RMSProp)


def _mean_square(optimizer, grad: Vector, hessian_basis: Float[Array, "m n"], y: Gram):
    """`E[g²]` for `g = ∇L + Hδ`, `E δδᵀ = Bᵀ Y B` with `B` the basis: `g²` (Scalar
    RMSProp: `‖g‖²`) plus `½∇²(g²)[HΣH] = Σ_ab Y_ab ½∂_a∂_b (g²)` along `H b_a, H b_b`."""
    square = optimizer._square  # the quantity ν averages
    second = lambda h_a, h_b: half_mixed_derivative(square, grad, h_a, h_b)
    pairs = jax.vmap(jax.vmap(second, (None, 0)), (0, None))(hessian_basis, hessian_basis)
    return square(grad) + jnp.einsum("ab,ab...->...", y, pairs)


def stationary_nu(flow: CentralFlow, y: FlowState, basis: Basis) -> StationaryNu:
    r"""The stationary ν of a central flow at `y.w`: `ν̄ = E[g²] = ∇L² + diag(HΣH)`
    (Scalar RMSProp: `‖∇L‖² + tr(HΣH)`), where Σ is the flow's at `(w, ν̄)` (paper
    eqs. 26 and 34 with dν/dt = 0; for RMSProp, the stationary preconditioner of eq. 35).

    Σ is held in the span `S` of the flow's critical directions at `y` (the first
    `flow.num_critical` Ritz vectors in `basis`): at ν̄ the critical directions are the
    Rayleigh–Ritz vectors in `S`. (With the guard directions too, a direction just
    below the threshold can overtake a critical one as ν moves, and the fixed point of
    a fixed critical count need not exist.)

    Σ depends on ν̄ through P, so this is a fixed point. It is solved in `S`'s
    coordinates, where it is small: with `Σ = Vᵀ Y V` (`V` the critical vectors at `y`,
    `Y = Cᵀ X C` for the Ritz coefficients `C` at ν), `Y = Φ(Y)` for `Y = L Lᵀ` (so
    that ν stays positive), as a least-squares problem in `L` by Levenberg–Marquardt
    (optimistix) from `Φ(0)`, the largest `Y` (Φ decreases with `Y`). A plain
    fixed-point iteration diverges (`X` responds to ν with a gain of order
    `1/(τ(1 − β₂))`), and Newton's method cycles across the kink where `X` turns 0.

    **Arguments:**

    - `flow`: a `CentralFlow` (with or without its penalty) of a Scalar RMSProp or
      RMSProp optimizer.
    - `y`: the point; only `y.w` and ν's count (for bias correction) are used.
    - `basis`: the frozen basis the flow works in (zero rows are padding).

    **Returns:** a `StationaryNu`.
    """
    if not has_stationary_nu(flow.optimizer):
        raise ValueError(
            f"The stationary ν is defined for Scalar RMSProp and RMSProp, not {flow.optimizer!r}."
        )
    w, state = y.w, y.opt_state
    grad = flow.objective.grad(w)
    critical = jnp.arange(basis.shape[0]) < flow.num_critical
    span = jnp.where(critical[:, None], flow.terms(y, basis).ritz.vectors, 0)
    hessian_span = hessian_rows(flow.objective, w, span, critical)
    both = critical[:, None] & critical[None, :]
    gram = jnp.where(both, span @ span.T, jnp.eye(len(critical), dtype=w.dtype))

    def covariance(nu) -> tuple[Gram, Gram]:
        """`Y` of the flow's Σ at `(w, nu)`, and a factor `L` of it, `Y = L Lᵀ`
        (`C = U Vᵀ (V Vᵀ)⁻¹` as `U = C V`)."""
        terms = flow.terms(FlowState(w, eqx.tree_at(lambda s: s.nu, state, nu)), span)
        vectors = jnp.where(critical[:, None], terms.ritz.vectors, 0)
        coefficients = jnp.linalg.solve(gram, span @ vectors.T).T
        d, q = jnp.linalg.eigh(terms.X)
        factor = coefficients.T @ (q * jnp.sqrt(jnp.maximum(d, 0)))
        return coefficients.T @ terms.X @ coefficients, factor

    mean_square = lambda cov: _mean_square(flow.optimizer, grad, hessian_span, cov)
    largest, factor = covariance(mean_square(jnp.zeros_like(gram)))
    tol = float(jnp.finfo(w.dtype).eps) ** 0.5

    def solve(factor):
        solution = optx.least_squares(
            lambda f, _: f @ f.T - covariance(mean_square(f @ f.T))[0],
            optx.LevenbergMarquardt(rtol=tol, atol=tol * jnp.max(jnp.abs(largest))),
            factor,
            max_steps=64,
            throw=False,
        )
        return solution.value, solution.result

    # Σ = 0 even at the smallest ν, ∇L² (nothing critical, or stable there): ν̄ = ∇L².
    # Two or more critical directions are not solved for (NaN): their Ritz values are
    # equal at the edge of stability, where the Ritz vectors have no derivative.
    skip = lambda f: (
        jnp.where(flow.num_critical > 1, jnp.nan, f),
        optx.RESULTS.where(
            flow.num_critical > 1,
            optx.RESULTS.nonlinear_max_steps_reached,
            optx.RESULTS.successful,
        ),
    )
    unstable = jnp.any(largest != 0) & (flow.num_critical == 1)
    factor, result = jax.lax.cond(unstable, solve, skip, factor)
    nu = mean_square(factor @ factor.T)
    residual = jnp.max(jnp.abs(nu - mean_square(covariance(nu)[0]))) / jnp.max(jnp.abs(nu))
    return StationaryNu(nu, residual, result)
