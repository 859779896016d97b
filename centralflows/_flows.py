"""Stable and central flows: vector fields `(t, y, args) -> dy/dt` for diffrax."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from ._eigen import below, masked_products, preconditioner_diagonal
from ._objective import Objective
from ._optimizers import GD, AbstractOptimizer
from ._sdcp import SDCPSolution, held_at_rank, pad_sdcp, sdcp_solve

Vector = Float[Array, " n"]
Basis = Float[Array, "m n"]


class FlowState(eqx.Module):
    """The state a flow integrates: parameters and optimizer state."""

    w: Vector
    opt_state: PyTree


def _direction(optimizer: AbstractOptimizer, state: FlowState, vector: Vector) -> Vector:
    """`P(s)⁻¹ v` (`throw=False`: a check would be a host callback)."""
    preconditioner = optimizer.preconditioner(state.opt_state, state.w)
    return lx.linear_solve(preconditioner, vector, throw=False).value


def modified_correction(
    objective: Objective, optimizer: AbstractOptimizer, y: FlowState, direction: Vector
) -> Vector:
    r"""The second-order term of the optimizer's modified equation, `−½ P⁻¹ H P⁻¹ ∇L`,
    given `direction = P⁻¹∇L` (one Hessian-vector product).

    Backward error analysis: the step `w⁺ = w + f(w)` is followed to O(‖f‖³) per step
    by `dw/dt = f − ½ f′f`, here with `f = −P⁻¹∇L` and `f′ = −P⁻¹H`. For GD this is
    the gradient flow of the modified loss `L + (η/4)‖∇L‖²`, and one unit of the
    corrected flow meets one GD step to O(η³) where gradient flow is O(η²) off.

    `P` is frozen over the step, which is exact for GD (at a constant learning rate)
    and for any fixed preconditioner. For Scalar RMSProp and RMSProp, whose `ν` moves
    during the step, this is the correction of the step at the current `ν`: the
    cross terms of the full expansion through `ν`'s change (`−½ P⁻¹ (dP[ds/dt]) P⁻¹ ∇L`
    and the `ν` component's own second-order term) are left out, since they are of
    order `(1−β₂)` times the step, the order at which the flow's drift itself (written
    for the post-update `ν`) already departs from the discrete EMA.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{barrett2021implicit,
          title={Implicit Gradient Regularization},
          author={Barrett, David G. T. and Dherin, Benoit},
          booktitle={International Conference on Learning Representations},
          year={2021}}
        ```
    """
    hessian_direction = objective.hvp(y.w, direction)
    return -0.5 * _direction(optimizer, y, hessian_direction)


class StableFlow(eqx.Module):
    r"""The flow the optimizer would follow without oscillating (for GD, gradient flow).

    $dw/dt = -P(s)^{-1}\nabla L(w)$, $ds/dt = f(s, \nabla L(w))$ (the paper's stable flow,
    defined in its Scalar RMSProp and RMSProp parts). With `modified=True`, `dw/dt`
    gains the modified-equation term `−½ P⁻¹ H P⁻¹ ∇L` (`modified_correction`), so that
    it tracks the optimizer's iterates to second order in the step (for GD: the gradient
    flow of `L + (η/4)‖∇L‖²`), at one more Hessian-vector product per evaluation.
    """

    objective: Objective
    optimizer: AbstractOptimizer
    modified: bool = eqx.field(default=False, static=True)

    def __call__(self, t: Scalar, y: FlowState, args) -> FlowState:
        del t, args
        grad = self.objective.grad(y.w)
        drift = self.optimizer.drift(y.opt_state, grad)
        direction = _direction(self.optimizer, y, grad)
        dw = -direction
        if self.modified:
            dw = dw + modified_correction(self.objective, self.optimizer, y, direction)
        return FlowState(dw, drift)


class RitzPairs(eqx.Module):
    """Rayleigh–Ritz pairs of `H u = λ P u` in a frozen basis: values descending,
    vectors P-orthonormal, with their Hessian products. As many rows as the basis; those
    past its used rows hold NaN values and zero vectors."""

    values: Float[Array, " m"]
    vectors: Basis
    hessian_vectors: Basis


def used_rows(basis: Basis) -> Bool[Array, " m"]:
    """The rows of a basis that are in use: a basis is padded to a fixed number of rows
    (so that one compiled program serves every size) with zero rows, which cost no
    products."""
    return jnp.any(basis != 0, axis=1)


def hessian_rows(objective: Objective, w: Vector, basis: Basis, used: Bool[Array, " m"]) -> Basis:
    """`H(w) v` for the `used` rows `v` of `basis` (zero for the others, at no cost),
    from one linearisation of the gradient (`masked_products`)."""
    _, hvp = jax.linearize(objective.grad, w)
    products = masked_products(jax.vmap(hvp, in_axes=1, out_axes=1))
    return products(basis.T, used)[0].T


def ritz_pairs(
    hessian_basis: Basis, basis: Basis, p_diag: Vector, used: Bool[Array, " m"] | None = None
) -> RitzPairs:
    """Rayleigh–Ritz for `H u = λ P u` in the span of the `used` rows of `basis`, given
    `H · basis` on them.

    **Arguments:**

    - `hessian_basis`: rows `H v_a` (any values in unused rows).
    - `basis`: rows `v_a` (the used ones linearly independent).
    - `p_diag`: the diagonal of P.
    - `used`: which rows to use (default: the nonzero ones, `used_rows`).

    **Returns:** `RitzPairs` (values descending), the pairs of the used rows first.
    """
    used = used_rows(basis) if used is None else used
    both = used[:, None] & used[None, :]
    basis, hessian_basis = (jnp.where(used[:, None], x, 0) for x in (basis, hessian_basis))
    a = jnp.where(both, basis @ hessian_basis.T, 0)
    a = (a + a.T) / 2
    gram = jnp.where(both, (basis * p_diag) @ basis.T, jnp.eye(len(used), dtype=a.dtype))
    chol = jnp.linalg.cholesky((gram + gram.T) / 2)
    inner = jax.scipy.linalg.solve_triangular(chol, a, lower=True)
    inner = jax.scipy.linalg.solve_triangular(chol, inner.T, lower=True)
    inner = (inner + inner.T) / 2
    # Unused rows: a block of their own, shifted below every used Ritz value, each by
    # another amount: `eigh`'s derivative divides by the gaps between eigenvalues, and
    # equal ones made it NaN (a flow's gradient through 3 critical directions of 8 rows).
    shift = below(inner) + jnp.arange(len(used), dtype=inner.dtype)
    values, z = jnp.linalg.eigh(inner - jnp.diag(jnp.where(used, 0, shift)))
    coefficients = jax.scipy.linalg.solve_triangular(chol.T, z[:, ::-1], lower=False)
    values = jnp.where(jnp.arange(len(used)) < jnp.sum(used), values[::-1], jnp.nan)
    return RitzPairs(values, coefficients.T @ basis, coefficients.T @ hessian_basis)


def ritz_at(
    objective: Objective, optimizer: AbstractOptimizer, y: FlowState, basis: Basis
) -> RitzPairs:
    """Rayleigh–Ritz pairs of the effective Hessian at `y` in the span of the used rows
    of `basis`."""
    p_diag = preconditioner_diagonal(optimizer.preconditioner(y.opt_state, y.w))
    used = used_rows(basis)
    return ritz_pairs(hessian_rows(objective, y.w, basis, used), basis, p_diag, used)


def half_mixed_derivative(f, x: Vector, h_a: Vector, h_b: Vector) -> PyTree:
    """`½ ∂²/∂a∂b f(x + a h_a + b h_b)` at `a = b = 0`, by forward mode: summed against
    `E[δ_a δ_b]`, the second-order mean of `f(x + δ)` beyond `f(x)`."""
    inner = lambda a: jax.jvp(lambda b: f(x + a * h_a + b * h_b), (0.0,), (1.0,))[1]
    return jtu.tree_map(lambda v: v / 2, jax.jvp(inner, (0.0,), (1.0,))[1])


def check_penalty_free(optimizer: AbstractOptimizer) -> None:
    """Refuse the central flow without its curvature penalty for `optimizer` where it
    is undefined: with GD's fixed preconditioner, X reaches `dM/dt` only through the
    penalty, so without it `B = 0` and the stability constraint cannot be held."""
    if isinstance(optimizer, GD):
        raise ValueError(
            "The central flow without its curvature penalty (`central_no_penalty`) is "
            "undefined for GD: GD's preconditioner I/η does not depend on the gradient, "
            "so without the penalty ½∇⟨H, Σ⟩ the oscillation cannot lower the effective "
            "sharpness (B = 0) and S_eff cannot be held at 2. Without the penalty GD "
            "follows gradient flow: run the `stable` process. The ablation needs an "
            "adaptive optimizer (ScalarRMSProp, RMSProp)."
        )


class CriticalSpace(eqx.Module):
    """The critical directions of a central flow at a point, as `CentralFlow.terms`
    uses them: rows past `num_critical` (`critical` false) are zero."""

    critical: Bool[Array, " m"]
    ritz: RitzPairs  # all Ritz pairs of the basis used (the critical ones first)
    vectors: Basis  # U: the critical Ritz vectors, P-orthonormal
    hessian_vectors: Basis  # H U
    third: Float[Array, "m m n"]  # G_ij = ∇_w(u_iᵀ H(w) u_j)
    loss: Scalar
    grad: Vector


class CentralTerms(eqx.Module):
    """Everything the central flow computes at one point (for logging and predictions)."""

    derivative: FlowState
    ritz: RitzPairs
    X: Float[Array, "k k"]
    sdcp: SDCPSolution
    loss: Scalar
    grad_norm_sq: Scalar
    predicted_loss: Scalar
    predicted_grad_norm_sq: Scalar
    sigma_trace: Scalar
    alpha: Float[Array, "k k"]
    operator: Float[Array, "k k k k"]
    correction: Vector  # the modified-equation term in dw/dt (zero unless `modified`)


class CentralFlow(eqx.Module):
    r"""The time-averaged trajectory of an optimizer at the edge of stability.

    Models the iterates as `w̄(t) + δ` with `E δδᵀ = Σ = U X Uᵀ` on the `num_critical`
    top eigenvectors `U` (Rayleigh–Ritz in a basis frozen for the segment, passed as
    `args`, padded with zero rows to a fixed size), and averages the update to second
    order (paper eqs. 19, 26 and 34 for GD, Scalar RMSProp and RMSProp; arXiv v2):

    - `dw/dt = −P⁻¹[∇L + ½∇⟨H, Σ⟩]`,
    - `ds/dt = f(s, ∇L) + ½ ∇²_g f[HΣH]`,

    with `X` from the stabilized complementarity problem `X ⪰ 0`, `α + B[X] ⪰ 0`,
    `⟨X, α + B[X]⟩ = 0`, where `dM/dt = a + B[X]` for `M = Uᵀ(2P − H)U` and
    `α = a + M/τ` (Baumgarte relaxation with time constant `tau`).

    With `penalty=False` the implicit curvature penalty `½∇⟨H, Σ⟩` is left out of
    `dw/dt` (the paper's ablation of "acceleration via regularization") while `X` still
    solves the SDCP: `X` then reaches `dM/dt` only through `ds/dt`, i.e. through the
    preconditioner, `B[X] = 2 Uᵀ (∂P/∂s)[½∇²_g f[HΣH]] U`. An adaptive preconditioner
    (Scalar RMSProp, RMSProp) still holds `S_eff ≤ 2` by growing ν ("implicit step size
    selection" without the regularization); for GD `B = 0` and the constraint cannot be
    held, so `penalty=False` with `GD` is refused (its penalty-free flow is the stable
    flow).

    With `modified=True`, `dw/dt` also gains the modified-equation term of the stable
    directions: `−½ P⁻¹ H P⁻¹ ∇L` (`modified_correction`) with its components along
    the critical directions removed in the P-inner product, `c − U Uᵀ P c`. Along the
    critical directions the optimizer oscillates and the step expansion behind the term
    does not hold; before the edge of stability nothing is critical and the whole term
    applies, so that the flow tracks the optimizer to second order in the step from its
    first one. The term enters `dM/dt` like the rest of `dw/dt`, so `X` still holds the
    stability constraint.

    With `rank`, `X` is held on the SDCP's branch of that active rank (`rank_branch`):
    the SDCP's solution while it has that rank, continued smoothly past a change of it.
    Between two changes of rank this is the same flow, but a solver stage evaluated off
    the path cannot switch `X`'s rank (where it does, the step's derivative takes the
    other branch's over the whole step): a replay differentiates the flow in this form.

    ??? cite "Reference"
        ```bibtex
        @inproceedings{cohen2025central,
          title={Understanding Optimization in Deep Learning with Central Flows},
          author={Cohen, Jeremy and Damian, Alex and Talwalkar, Ameet and Kolter, Zico
                  and Lee, Jason D.},
          booktitle={International Conference on Learning Representations},
          year={2025}}
        ```
    """

    objective: Objective
    optimizer: AbstractOptimizer
    tau: float | Scalar
    num_critical: int | Int[Array, ""]  # at most the basis's rows; may be traced
    rank: int | Int[Array, ""] | None = None  # X's rank held (None: X solves the SDCP)
    penalty: bool = eqx.field(default=True, static=True)
    modified: bool = eqx.field(default=False, static=True)

    def __check_init__(self):
        if not self.penalty:
            check_penalty_free(self.optimizer)

    def critical_space(self, y: FlowState, basis: Basis) -> CriticalSpace:
        """The critical directions at `y` (the top `num_critical` Ritz pairs in `basis`)
        and what the flow needs of `w` along them: the gradient and the third-order terms."""
        size = basis.shape[0]
        k = self.num_critical
        critical = jnp.arange(size) < k
        w, s = y.w, y.opt_state
        loss, grad = self.objective.value_and_grad(w)
        p_diag = preconditioner_diagonal(self.optimizer.preconditioner(s, w))
        used = used_rows(basis) & (k > 0)  # the Ritz pairs serve the critical space only
        # While something is critical, over half the basis's rows are used (the rest are
        # zero), so one batch is the cheapest way to multiply them; masked products would
        # also compile them one at a time, a second copy of the products in every program
        # that holds the terms.
        products = jax.lax.cond(
            k > 0, lambda: self.objective.hvps(w, basis), lambda: jnp.zeros_like(basis)
        )
        ritz = ritz_pairs(products, basis, p_diag, used)
        u, hu = (jnp.where(critical[:, None], x, 0) for x in (ritz.vectors, ritz.hessian_vectors))

        # G_ij = ∇_w(u_iᵀ H(w) u_j) with U held fixed, one third-order product per pair
        # i ≤ j < k (the ½∇⟨H, Σ⟩ of paper eqs. 19 and 34): the gradient of a Hessian-vector
        # product contraction.
        # Rematerialised under differentiation: reverse mode through the map would
        # otherwise keep every pair's intermediates, zeros for the skipped ones, and
        # transpose them all (at k = 0 on the digits MLP, 50 times the forward's time).
        third_order = eqx.filter_checkpoint(self.objective.third_order)
        rows, cols = jnp.triu_indices(size)
        zero = jnp.zeros_like(w)
        pair = lambda i, j: jax.lax.cond(j < k, lambda: third_order(w, u[i], u[j]), lambda: zero)
        pairs = jax.lax.map(lambda ij: pair(*ij), (rows, cols))
        third = jnp.zeros((size, size, w.size), w.dtype).at[rows, cols].set(pairs)
        third = third.at[cols, rows].set(pairs)
        return CriticalSpace(critical, ritz, u, hu, third, loss, grad)

    def rates(
        self, w: Vector, s: PyTree, space: CriticalSpace, correction: Vector
    ) -> Callable[[Float[Array, "k k"]], tuple[Vector, PyTree, Float[Array, "k k"]]]:
        """`X -> (dw/dt, ds/dt, dM/dt)` at `(w, s)` for `Σ = Uᵀ X U` on the critical
        vectors `U` of `space` (held fixed: `dM/dt = 2 Uᵀ dP U − Uᵀ dH U`), affine in `X`."""
        grad, u, third = space.grad, space.vectors, space.third
        p_fn = lambda state: preconditioner_diagonal(self.optimizer.preconditioner(state, w))
        p_diag = p_fn(s)
        drift = lambda g: self.optimizer.drift(s, g)
        # ½ ∂²/∂a∂b f(s, g + a h_i + b h_j): the E_δ correction for g → g + Hδ.
        second_order_drift = lambda h_i, h_j: half_mixed_derivative(drift, grad, h_i, h_j)
        hu = space.hessian_vectors
        drift_pairs = jax.vmap(jax.vmap(second_order_drift, (None, 0)), (0, None))(hu, hu)
        base_drift = drift(grad)

        def rates(x):
            penalty = 0.5 * jnp.einsum("ij,ijn->n", x, third) if self.penalty else 0
            dw = -(grad + penalty) / p_diag + correction
            ds = jtu.tree_map(
                lambda d0, d2: d0 + jnp.einsum("ij,ij...->...", x, d2), base_drift, drift_pairs
            )
            dp = jax.jvp(p_fn, (s,), (ds,))[1]
            dm = 2 * (u * dp) @ u.T - jnp.einsum("ijn,n->ij", third, dw)
            return dw, ds, dm

        return rates

    def terms(self, y: FlowState, basis: Basis) -> CentralTerms:
        """All terms of the central flow at `y`, with the critical space from `basis`.

        The matrices (`X`, `alpha`, `operator`) have as many rows as `basis`; those past
        `num_critical` are padding (X zero there), and cost no products.
        """
        w, s = y.w, y.opt_state
        space = self.critical_space(y, basis)
        critical, ritz, u, hu = space.critical, space.ritz, space.vectors, space.hessian_vectors
        lam = jnp.where(critical, ritz.values, 0)
        p_diag = preconditioner_diagonal(self.optimizer.preconditioner(s, w))
        grad, loss = space.grad, space.loss

        correction = jnp.zeros_like(w)
        if self.modified:
            # Stable directions only: P-orthogonal to the critical ones (UᵀPU = I).
            correction = modified_correction(self.objective, self.optimizer, y, grad / p_diag)
            correction = correction - ((u * p_diag) @ correction) @ u

        rates = self.rates(w, s, space, correction)
        size = len(critical)
        zero = jnp.zeros((size, size), w.dtype)
        a = rates(zero)[2]
        operator = jax.jacfwd(lambda x: rates(x)[2])(zero)
        operator = (operator + jnp.swapaxes(operator, 2, 3)) / 2
        m = jnp.diag(2 - lam)  # Uᵀ(2P − H)U with UᵀPU = I, UᵀHU = Λ
        alpha, operator = pad_sdcp(a + m / self.tau, operator, critical)
        sdcp = sdcp_solve(alpha, operator)
        x = held_at_rank(alpha, operator, sdcp, self.rank)
        dw, ds, _ = rates(x)
        hh = hu @ hu.T
        return CentralTerms(
            derivative=FlowState(dw, ds),
            ritz=ritz,
            X=x,
            sdcp=sdcp,
            loss=loss,
            grad_norm_sq=jnp.sum(grad**2),
            predicted_loss=loss + 0.5 * jnp.sum(x * jnp.diag(lam)),  # L + ½ tr(ΛX)
            predicted_grad_norm_sq=jnp.sum(grad**2) + jnp.sum(x * hh),  # ‖∇L‖² + tr(HΣH)
            sigma_trace=jnp.sum(x * (u @ u.T)),
            alpha=alpha,
            operator=operator,
            correction=correction,
        )

    def __call__(self, t: Scalar, y: FlowState, args: Basis) -> FlowState:
        del t
        return self.terms(y, args).derivative
