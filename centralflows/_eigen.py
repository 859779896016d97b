"""Top eigenpairs of the effective Hessian P⁻¹H, matrix-free and warm-started."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

Vector = Float[Array, " n"]
Vectors = Float[Array, "k n"]
Columns = Float[Array, "n m"]

# The smallest relative residual asked of LOBPCG, in machine epsilons: in float32 its
# residuals stall near 5e-6 (40 eps) on small MLPs, where 100 eps was not always met.
TOL_FLOOR = 1000


def _floored(tol, dtype):
    """The relative residual tolerance `tol`, floored at `TOL_FLOOR` epsilons of `dtype`."""
    return jnp.maximum(tol, TOL_FLOOR * jnp.finfo(dtype).eps)


class EigConfig(eqx.Module):
    """How eigenpairs are tracked (config section `[eig]`).

    **Arguments:**

    - `frequency`: recompute every this many steps.
    - `track_threshold`: grow the tracked set while its smallest eigenvalue exceeds this
      (in effective units, where 2 is the stability threshold).
    - `initial_neigs`: number of eigenpairs tracked at the start.
    - `max_neigs`: never track more than this many.
    - `tol`: LOBPCG stops when every residual ‖Av − θv‖ is below `tol` times the top
      eigenvalue's magnitude (floored at 1000 machine epsilons).
    - `max_iters`: LOBPCG iteration cap per call.
    """

    frequency: int = 1
    track_threshold: float = 1.5
    initial_neigs: int = 1
    max_neigs: int = 8
    tol: float = 1e-5
    max_iters: int = 100

    def __check_init__(self):
        for name in ("frequency", "initial_neigs", "max_neigs", "max_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"`eig.{name}` must be >= 1, got {getattr(self, name)}.")
        if self.initial_neigs > self.max_neigs:
            raise ValueError(
                f"`eig.initial_neigs` ({self.initial_neigs}) exceeds `eig.max_neigs` "
                f"({self.max_neigs})."
            )
        if not self.tol > 0 or not self.track_threshold > 0:
            raise ValueError("`eig.tol` and `eig.track_threshold` must be > 0.")


class EigenState(eqx.Module):
    r"""Tracked generalized eigenpairs $H u_i = \lambda_i P u_i$, $U P U^\top = I$.

    `vectors` holds the $u_i$ as rows, `values` the $\lambda_i$ in descending order,
    `residuals` $\|A v_i - \lambda_i v_i\|$ for the symmetric form
    $A = P^{-1/2} H P^{-1/2}$, $v_i = P^{1/2} u_i$; `iterations` and `hvps` count the
    work of the call that produced it.
    """

    vectors: Vectors
    values: Float[Array, " k"]
    residuals: Float[Array, " k"]
    iterations: Int[Array, ""]
    hvps: Int[Array, ""]
    converged: Bool[Array, ""]  # every residual within tolerance

    @property
    def num(self) -> int:
        """The number of tracked eigenpairs (static)."""
        return self.values.shape[0]


def _orthonormal_basis(gram: Float[Array, "m m"]) -> Float[Array, "m m"]:
    """Columns W with WᵀGW = I on the numerically nonsingular part of G, zero elsewhere."""
    d, q = jnp.linalg.eigh(gram)
    keep = d > 1e3 * jnp.finfo(gram.dtype).eps * jnp.max(d)
    return q * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, d, 1)), 0)


def _rayleigh_ritz(x: Columns, ax: Columns) -> tuple[Float[Array, " k"], Columns, Columns]:
    """Ritz pairs in the span of orthonormal `x` given `A x`: `(theta, x, ax)`, rotated
    so that `theta` is descending. Costs no products."""
    gram = x.T @ ax
    theta, y = jnp.linalg.eigh((gram + gram.T) / 2)
    theta, y = theta[::-1], y[:, ::-1]
    return theta, x @ y, ax @ y


def lobpcg(
    matvec: Callable[[Columns], Columns],
    x0: Float[Array, "n k"],
    *,
    tol: float,
    max_iters: int,
    refresh_every: int = 4,
) -> tuple[
    Float[Array, " k"], Float[Array, "n k"], Float[Array, " k"], Int[Array, ""], Int[Array, ""]
]:
    """Top-k eigenpairs of a symmetric operator by block LOBPCG.

    An iteration costs k products, `AR` for the residual block: `AX` and `AP` are carried
    from the Rayleigh–Ritz step. Carried, they drift from `A X` and `A P` by round-off
    that the Gram matrix's whitening amplifies (carried for good, they gave Ritz values
    of 1e68 on digits after a track event added a random vector, and no convergence in
    float32), so they are recomputed (2k products) every `refresh_every` iterations and
    wherever the carried residuals meet the tolerance, followed by a Rayleigh–Ritz step
    in the span of X. Only such fresh iterates are returned or tested for convergence:
    the one with the smallest largest residual, since once the residuals reach round-off
    further iterations only add noise. The Rayleigh–Ritz step works in the span of
    `[X, R, P]` through its Gram matrix, dropping numerically dependent directions.

    **Arguments:**

    - `matvec`: applies A to the columns of an `(n, m)` array.
    - `x0`: `(n, k)` initial guess (need not be orthonormal).
    - `tol`: stop when all residual norms are below `tol · max|θ|` (floored at
      `TOL_FLOOR` machine epsilons).
    - `max_iters`: iteration cap.
    - `refresh_every`: iterations between fresh products `AX`, `AP`.

    **Returns:** `(theta, x, residual_norms, iterations, products)`, eigenvalues
    descending; `products` counts the columns `matvec` was applied to.
    """
    k = x0.shape[1]
    x, _ = jnp.linalg.qr(x0)
    theta, x, ax = _rayleigh_ritz(x, matvec(x))
    zeros = jnp.zeros_like(x)
    tol = _floored(tol, x.dtype)

    def residual_norms(x, ax, theta):
        return jnp.linalg.norm(ax - x * theta, axis=0)

    def relative(theta, rnorm):
        return jnp.max(rnorm) / jnp.max(jnp.abs(theta))

    def cond(carry):
        i, *_, best, _ = carry
        return (i < max_iters) & (relative(best[0], best[2]) > tol)

    def body(carry):
        i, x, ax, p, ap, theta, best, products = carry
        r = ax - x * theta
        r = r - x @ (x.T @ r)
        # Soft locking: a converged column's residual is round-off, left out of the basis.
        norms = jnp.linalg.norm(r, axis=0)
        active = norms > tol * jnp.max(jnp.abs(theta))
        r = jnp.where(active, r / jnp.where(active, norms, 1), 0)
        ar = matvec(r)
        s = jnp.concatenate([x, r, p], axis=1)
        as_ = jnp.concatenate([ax, ar, ap], axis=1)
        w = _orthonormal_basis(s.T @ s)
        kt = w.T @ (s.T @ as_) @ w
        kt = (kt + kt.T) / 2
        dropped = jnp.all(w == 0, axis=0)
        kt = kt - jnp.diag(jnp.where(dropped, 1 + 2 * jnp.max(jnp.abs(kt)), 0))
        ritz, y = jnp.linalg.eigh(kt)
        theta = ritz[::-1][:k]
        c = w @ y[:, ::-1][:, :k]
        x, ax = s @ c, as_ @ c
        scale = jnp.maximum(jnp.linalg.norm(s[:, k:] @ c[k:], axis=0), jnp.finfo(x.dtype).tiny)
        p, ap = s[:, k:] @ c[k:] / scale, as_[:, k:] @ c[k:] / scale
        carried = relative(theta, residual_norms(x, ax, theta))
        fresh = ((i + 1) % refresh_every == 0) | (carried <= tol) | (i + 1 >= max_iters)

        def recompute(x, ax, p, ap, theta):
            theta, x, ax = _rayleigh_ritz(x, matvec(x))
            return x, ax, p, matvec(p), theta

        x, ax, p, ap, theta = jax.lax.cond(fresh, recompute, lambda *a: a, x, ax, p, ap, theta)
        rnorm = residual_norms(x, ax, theta)
        better = fresh & (relative(theta, rnorm) < relative(best[0], best[2]))
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (theta, x, rnorm), best)
        products = products + k + jnp.where(fresh, 2 * k, 0)
        return i + 1, x, ax, p, ap, theta, best, products

    best = (theta, x, residual_norms(x, ax, theta))
    init = (jnp.array(0), x, ax, zeros, zeros, theta, best, jnp.array(k))
    i, *_, (theta, x, rnorm), products = jax.lax.while_loop(cond, body, init)
    return theta, x, rnorm, i, products


def preconditioner_diagonal(preconditioner: lx.AbstractLinearOperator) -> Vector:
    """The diagonal of a diagonal preconditioner (the only kind supported so far)."""
    if not lx.is_diagonal(preconditioner):
        raise NotImplementedError(
            "Eigen tracking supports diagonal preconditioners only; got "
            f"{type(preconditioner).__name__} without a diagonal tag."
        )
    return lx.diagonal(preconditioner)


def track_eigs(
    hvps: Callable[[Vectors], Vectors],
    p_diag: Vector,
    previous: Vectors,
    config: EigConfig,
) -> EigenState:
    """Top generalized eigenpairs `H u = λ P u`, warm-started from `previous`.

    Solves the symmetric problem for $A = P^{-1/2} H P^{-1/2}$ matrix-free by LOBPCG,
    starting from $P^{1/2}$ `previous`; problems with n < 5k use a dense `eigh`.

    **Arguments:**

    - `hvps`: `V -> H V` on rows (Hessian-vector products, batched).
    - `p_diag`: the diagonal of P.
    - `previous`: `(k, n)` initial guess (the last tracked vectors, or random).
    - `config`: tolerances.

    **Returns:** an `EigenState` with P-orthonormal `vectors`.
    """
    k, n = previous.shape
    inv_sqrt = 1 / jnp.sqrt(p_diag)
    matvec = lambda cols: (hvps((cols * inv_sqrt[:, None]).T) * inv_sqrt).T
    if n < 5 * k:
        dense = matvec(jnp.eye(n, dtype=previous.dtype))
        values, vecs = jnp.linalg.eigh((dense + dense.T) / 2)
        theta, x = values[::-1][:k], vecs[:, ::-1][:, :k]
        rnorm = jnp.linalg.norm(dense @ x - x * theta, axis=0)
        iterations, count = jnp.array(0), jnp.array(n)
    else:
        x0 = (previous / inv_sqrt).T
        theta, x, rnorm, iterations, count = lobpcg(
            matvec, x0, tol=config.tol, max_iters=config.max_iters
        )
    tol = _floored(config.tol, x.dtype) * jnp.max(jnp.abs(theta))
    converged = jnp.all(rnorm <= tol)
    return EigenState(x.T * inv_sqrt, theta, rnorm, iterations, count, converged)


def random_vectors(key: PRNGKeyArray, num: int, n: int, dtype) -> Vectors:
    """`num` random unit rows, to start or extend a tracked set."""
    v = jr.normal(key, (num, n), dtype)
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)


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
    structure = jax.ShapeDtypeStruct(w.shape, w.dtype)

    def solve(value, r):
        def matvec(x):  # positive definite: λ_i − λ_j > 0 off the span, 1 on it
            off = off_span(x)
            return value * off - off_span(scaled_hvp(off)) + (x - off)

        operator = lx.FunctionLinearOperator(matvec, structure, lx.positive_semidefinite_tag)
        solver = lx.CG(rtol=1e-10, atol=1e-12, max_steps=10 * w.size + 100)
        # throw=True keeps a host callback here, in the derivative's programs only: a
        # convergence test on the tangent's solve is not linear in it, so it cannot
        # be written as data and transposed.
        return lx.linear_solve(operator, off_span(r / root), solver).value

    return basis, jax.vmap(solve)(values, rhs) / root
