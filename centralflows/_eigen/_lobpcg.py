"""Block LOBPCG for the top eigenpairs of a symmetric operator, matrix-free."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

Columns = Float[Array, "n m"]

# The smallest relative residual asked of LOBPCG, in machine epsilons: in float32 its
# residuals stall near 5e-6 (40 eps) on small MLPs, where 100 eps was not always met.
TOL_FLOOR = 1000


def floored_tol(tol, dtype):
    """The relative residual tolerance `tol`, floored at `TOL_FLOOR` epsilons of `dtype`."""
    return jnp.maximum(tol, TOL_FLOOR * jnp.finfo(dtype).eps)


def _orthonormal_basis(gram: Float[Array, "m m"]) -> Float[Array, "m m"]:
    """Columns W with WᵀGW = I on the numerically nonsingular part of G, zero elsewhere."""
    d, q = jnp.linalg.eigh(gram)
    keep = d > 1e3 * jnp.finfo(gram.dtype).eps * jnp.max(d)
    return q * jnp.where(keep, 1 / jnp.sqrt(jnp.where(keep, d, 1)), 0)


def _orthonormal_columns(x: Columns, active: Bool[Array, " k"]) -> Columns:
    """Orthonormal columns spanning the `active` columns of `x`, in their order (column j
    in the span of the first j + 1; the others zero): Cholesky QR, twice, where their
    Gram matrix is well conditioned (`x` is a warm start: orthonormal, or nearly), else
    Householder QR. On the digits MLP's 3466 × 8 block, XLA:CPU's Householder QR took
    48 ms, as much as 25 Hessian-vector products; Cholesky QR takes under 1 ms."""
    k = x.shape[1]
    norms = jnp.linalg.norm(x, axis=0)
    scaled = jnp.where(active & (norms > 0), x / jnp.where(norms > 0, norms, 1), 0)
    both = active[:, None] & active[None, :]
    eye = jnp.eye(k, dtype=x.dtype)

    def gram(x):
        return jnp.where(both, x.T @ x, eye)

    def cholesky_qr(x):
        lower = jnp.linalg.cholesky(gram(x))
        return x @ jax.scipy.linalg.solve_triangular(lower, eye, lower=True).T

    def householder_qr(x):
        return jnp.where(active, jnp.linalg.qr(x)[0], 0)

    d = jnp.linalg.eigvalsh(gram(scaled))
    well_conditioned = d[0] > jnp.sqrt(jnp.finfo(x.dtype).eps) * d[-1]
    return jax.lax.cond(
        well_conditioned, lambda x: cholesky_qr(cholesky_qr(x)), householder_qr, scaled
    )


def _rayleigh_ritz(
    x: Columns, ax: Columns, active: Bool[Array, " k"]
) -> tuple[Float[Array, " k"], Columns, Columns]:
    """Ritz pairs in the span of the `active` columns of `x` (orthonormal; the others
    zero) given `A x`: `(theta, x, ax)`, rotated so that `theta` is descending over the
    active columns, which stay first; inactive columns stay zero with `theta` 0. Costs
    no products."""
    gram = x.T @ ax
    gram = (gram + gram.T) / 2
    theta, y = jnp.linalg.eigh(gram - jnp.diag(jnp.where(active, 0, below(gram))))
    theta, y = theta[::-1], y[:, ::-1]
    return jnp.where(active, theta, 0), x @ y, ax @ y


def below(matrix: Float[Array, "m m"]) -> Float[Array, ""]:
    """A shift that moves an eigenvalue of the symmetric `matrix` below all of its others
    (subtracted from a diagonal entry whose row and column are otherwise zero)."""
    return 1 + 2 * jnp.max(jnp.abs(matrix))


# The narrowest block multiplied in one batch: a batch of 2 saves little, and each
# batched branch compiles its own products (on the digits MLP, LOBPCG's program took
# 2.6 s to compile without batches, 2.8 s with them at width 8, 3.0 s at widths 2 and 8).
_MIN_BATCH = 3


def masked_products(
    matvec: Callable[[Columns], Columns],
) -> Callable[[Columns, Bool[Array, " m"]], tuple[Columns, Int[Array, ""]]]:
    """`(cols, mask) -> (A cols, products)`: `matvec` on the `mask`ed columns (zero
    elsewhere), so that a block padded to a fixed width, or with converged columns,
    costs products for the others alone. Where at most half the columns are masked, or
    the block is narrower than `_MIN_BATCH`, they are multiplied one at a time (the
    others cost nothing), else the whole block in one batch: on the 2-core CPU, 8 columns
    of the digits MLP one at a time took 1.6 times one batch of 8
    (`benchmarks/masked_products.py`), and batches gain more on a GPU.
    `products` counts the masked columns (a batch also multiplies the others, as zeros:
    they cost time, not Hessian-vector products in the count)."""

    def apply(cols, mask):
        def column(c, on):
            return jax.lax.cond(on, lambda c: matvec(c[:, None])[:, 0], jnp.zeros_like, c)

        def one_at_a_time(cols):
            return jax.lax.map(lambda args: column(*args), (cols.T, mask)).T, num

        def batched(cols):
            return jnp.where(mask, matvec(jnp.where(mask, cols, 0)), 0), num

        num = jnp.sum(mask, dtype=jnp.int32)
        if cols.shape[1] < _MIN_BATCH:
            return one_at_a_time(cols)
        return jax.lax.cond(2 * num > cols.shape[1], batched, one_at_a_time, cols)

    return apply


Solution = tuple[
    Float[Array, " k"], Float[Array, "n k"], Float[Array, " k"], Int[Array, ""], Int[Array, ""]
]


def _widths(k: int) -> list[int]:
    """The block widths LOBPCG's algebra runs at for k columns: 2 (where k > 2) and k.
    Each width is a branch of the compiled program (about 1 s more to compile); the
    counts 1 and 2 are the common ones before the edge of stability."""
    return sorted({min(2, k), k})


def lobpcg(
    matvec: Callable[[Columns], Columns],
    x0: Float[Array, "n k"],
    *,
    tol: float,
    max_iters: int | Int[Array, ""],
    count: Int[Array, ""] | int | None = None,
    refresh_every: int = 4,
) -> Solution:
    """Top eigenpairs of a symmetric operator by block LOBPCG.

    The block has a fixed width k of which the first `count` columns are active (traced,
    so one compiled program serves every count up to k); the others cost no products and
    come back zero, with eigenvalue and residual 0. The dense algebra of an iteration
    costs about as much as a Hessian-vector product of the digits MLP at k = 8, so for a
    `count` of 1 or 2 it runs on the first two columns only (a branch of a
    `lax.switch`).

    An iteration costs one product per active column that has not converged (`AR` for
    the residual block; converged columns are soft-locked): `AX` and `AP` are carried
    from the Rayleigh–Ritz step. Carried, they drift from `A X` and `A P` by round-off
    that the Gram matrix's whitening amplifies (carried for good, they gave Ritz values
    of 1e68 on digits after a track event added a random vector, and no convergence in
    float32), so they are recomputed every `refresh_every` iterations and wherever the
    carried residuals meet the tolerance (`count` products for `AX`, then a Rayleigh–Ritz
    step in the span of X, and `count` more for `AP` unless that iterate ends the
    solve). The exception is an iteration that started from fresh products: its
    carried `AX` is one rotation of exact products (off by round-off times the whitening,
    at most 1/√(1000 ε)), so its carried residuals are trusted. Only fresh or trusted
    iterates are returned or tested for convergence: the one with the smallest largest
    residual, since once the residuals reach round-off further iterations only add
    noise. The Rayleigh–Ritz step works in the span of `[X, R, P]`
    through its Gram matrix, dropping numerically dependent directions.

    **Arguments:**

    - `matvec`: applies A to the columns of an `(n, m)` array.
    - `x0`: `(n, k)` initial guess (its active columns need not be orthonormal).
    - `tol`: stop when all residual norms are below `tol · max|θ|` (floored at
      `TOL_FLOOR` machine epsilons).
    - `max_iters`: iteration cap (may be traced; 0: the Rayleigh–Ritz pairs of `x0`).
    - `count`: the number of active columns, 1 to k (default k: all).
    - `refresh_every`: iterations between fresh products `AX`, `AP`.

    **Returns:** `(theta, x, residual_norms, iterations, products)`, eigenvalues
    descending; `products` counts the products of active columns (`masked_products`).
    """
    k = x0.shape[1]
    solve = lambda x0: _lobpcg(matvec, x0, tol, max_iters, count, refresh_every)
    if count is None or k == 1:
        return solve(x0)

    def at_width(width):
        def branch(x0):
            theta, x, rnorm, iterations, products = solve(x0[:, :width])
            pad = lambda v: jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, k - width)])
            return pad(theta), pad(x), pad(rnorm), iterations, products

        return branch

    widths = _widths(k)
    index = jnp.searchsorted(jnp.asarray(widths), count)  # the first width >= count
    return jax.lax.switch(index, [at_width(w) for w in widths], x0)


def _lobpcg(matvec, x0, tol, max_iters, count, refresh_every) -> Solution:
    """`lobpcg` at the width of `x0`."""
    k = x0.shape[1]
    active = jnp.ones(k, bool) if count is None else jnp.arange(k) < count
    products_of = masked_products(matvec)
    x = _orthonormal_columns(x0, active)
    ax, products = products_of(x, active)
    theta, x, ax = _rayleigh_ritz(x, ax, active)
    zeros = jnp.zeros_like(x)
    tol = floored_tol(tol, x.dtype)

    def residual_norms(x, ax, theta):
        return jnp.linalg.norm(ax - x * theta, axis=0)

    def relative(theta, rnorm):
        return jnp.max(rnorm) / jnp.max(jnp.abs(theta))

    def cond(carry):
        i, *_, best, _, _ = carry
        return (i < max_iters) & (relative(best[0], best[2]) > tol)

    def body(carry):
        i, x, ax, p, ap, theta, best, products, started_fresh = carry
        r = ax - x * theta
        r = r - x @ (x.T @ r)
        # Soft locking: a converged column's residual is round-off, left out of the
        # basis, and costs no product.
        norms = jnp.linalg.norm(r, axis=0)
        converging = active & (norms > tol * jnp.max(jnp.abs(theta)))
        r = jnp.where(converging, r / jnp.where(converging, norms, 1), 0)
        ar, spent = products_of(r, converging)
        s = jnp.concatenate([x, r, p], axis=1)
        as_ = jnp.concatenate([ax, ar, ap], axis=1)
        w = _orthonormal_basis(s.T @ s)
        kt = w.T @ (s.T @ as_) @ w
        kt = (kt + kt.T) / 2
        dropped = jnp.all(w == 0, axis=0)
        ritz, y = jnp.linalg.eigh(kt - jnp.diag(jnp.where(dropped, below(kt), 0)))
        # The top `count` Ritz pairs; the inactive columns stay zero.
        theta = jnp.where(active, ritz[::-1][:k], 0)
        c = jnp.where(active, w @ y[:, ::-1][:, :k], 0)
        x, ax = s @ c, as_ @ c
        p = s[:, k:] @ c[k:]
        scale = jnp.maximum(jnp.linalg.norm(p, axis=0), jnp.finfo(x.dtype).tiny)
        p, ap = p / scale, as_[:, k:] @ c[k:] / scale
        carried = relative(theta, residual_norms(x, ax, theta))
        last = i + 1 >= max_iters
        trusted = started_fresh & (carried <= tol)
        fresh = ~trusted & (((i + 1) % refresh_every == 0) | (carried <= tol) | last)

        def recompute(x, ax, p, ap, theta):
            ax, spent_x = products_of(x, active)
            theta, x, ax = _rayleigh_ritz(x, ax, active)
            # A P is only needed if the loop goes on.
            done = last | (relative(theta, residual_norms(x, ax, theta)) <= tol)
            ap, spent_p = jax.lax.cond(
                done, lambda p: (ap, jnp.array(0, jnp.int32)), lambda p: products_of(p, active), p
            )
            return x, ax, p, ap, theta, spent_x + spent_p

        unchanged = lambda *a: (*a, jnp.array(0, jnp.int32))
        x, ax, p, ap, theta, spent_fresh = jax.lax.cond(
            fresh, recompute, unchanged, x, ax, p, ap, theta
        )
        rnorm = residual_norms(x, ax, theta)
        better = (fresh | trusted) & (relative(theta, rnorm) < relative(best[0], best[2]))
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (theta, x, rnorm), best)
        return i + 1, x, ax, p, ap, theta, best, products + spent + spent_fresh, fresh

    best = (theta, x, residual_norms(x, ax, theta))
    init = (jnp.array(0), x, ax, zeros, zeros, theta, best, products, jnp.array(True))
    i, *_, (theta, x, rnorm), products, _ = jax.lax.while_loop(cond, body, init)
    return theta, x, rnorm, i, products
