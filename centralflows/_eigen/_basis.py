"""The tracked eigenbasis as a differentiable function of the point and the problem."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from ._solve import Vector, Vectors


def _cg_or_nan(matvec, b):
    """CG on the positive definite `matvec`, NaN where it did not converge (an eigenvalue
    above the basis's smallest left out of it makes the operator indefinite).

    Under `lax.custom_linear_solve` this is never differentiated nor transposed (its
    transpose is another call, on the cotangent), so the check is data, not a host
    callback: the derivative's programs stay storable in the compilation cache."""
    structure = jax.ShapeDtypeStruct(b.shape, b.dtype)
    operator = lx.FunctionLinearOperator(matvec, structure, lx.positive_semidefinite_tag)
    solver = lx.CG(rtol=1e-10, atol=1e-12, max_steps=10 * b.size + 100)
    solution = lx.linear_solve(operator, b, solver, throw=False)
    converged = solution.result == lx.RESULTS.successful
    return jnp.where(converged, solution.value, jnp.nan)


@eqx.filter_custom_jvp
def eigenbasis(objective, w: Vector, p_diag: Vector, *, basis: Vectors) -> Vectors:
    """The top eigenvectors `basis` of `H(w) u = λ P u` (P-orthonormal rows, e.g. from
    `track_eigs`) as a differentiable function of the objective's arrays, `w` and P.

    The primal is `basis` itself. Its derivative is that of the invariant subspace it
    spans: each row moves out of the span by the matrix-free solve
    `(H − λ_i P) dv_i = −(dH − λ_i dP) v_i` restricted to the P-orthogonal complement
    (positive definite there when every eigenvalue above the untracked ones is in the
    basis); the motion within the span is left out, as everything downstream uses the
    span only (Rayleigh–Ritz).

    **Arguments:**

    - `objective`: the `Objective` (its floating-point arrays may carry tangents).
    - `w`: the point.
    - `p_diag`: the diagonal of P.
    - `basis`: `(b, n)` P-orthonormal top eigenvectors at `w` (not differentiated).

    **Returns:** `basis`.
    """
    del objective, w, p_diag
    return basis


@eigenbasis.def_jvp
def _eigenbasis_jvp(primals, tangents, *, basis):
    objective, w, p_diag = primals
    t_objective, t_w, t_p = tangents
    hessian_basis, d_hessian_basis = eqx.filter_jvp(
        lambda o, x: o.hvps(x, basis), (objective, w), (t_objective, t_w)
    )
    values = jnp.sum(basis * hessian_basis, axis=1)  # vᵀHv with vᵀPv = 1
    rhs = jnp.zeros_like(basis) if d_hessian_basis is None else d_hessian_basis
    if t_p is not None:
        rhs = rhs - values[:, None] * t_p * basis
    # In P^{1/2} coordinates the problem is symmetric: (λ_i − Ĥ) ẑ_i = Q̂ D⁻¹ g_i with
    # D = P^{1/2}, Q̂ the projector off the span of D V, and dv_i = D⁻¹ ẑ_i.
    root = jnp.sqrt(p_diag)
    scaled = basis * root
    off_span = lambda x: x - scaled.T @ (scaled @ x)
    _, hvp = jax.linearize(objective.grad, w)
    scaled_hvp = lambda x: hvp(x / root) / root

    def solve(value, r):
        def matvec(x):  # positive definite: λ_i − λ_j > 0 off the span, 1 on it
            off = off_span(x)
            return value * off - off_span(scaled_hvp(off)) + (x - off)

        return jax.lax.custom_linear_solve(matvec, off_span(r / root), _cg_or_nan, symmetric=True)

    return basis, jax.vmap(solve)(values, rhs) / root
