"""The semidefinite complementarity problem that pins down the oscillation covariance."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._eigen import below

Matrix = Float[Array, "k k"]
Operator = Float[Array, "k k k k"]
Rank = int | Int[Array, ""]


def _sym(x: Matrix) -> Matrix:
    return (x + x.T) / 2


def apply_operator(operator: Operator, x: Matrix) -> Matrix:
    """`B[X]_ij = Σ_lm B_ijlm X_lm`."""
    return jnp.einsum("ijlm,lm->ij", operator, x)


def _spectral_map(d, q, f, df, dy):
    """`Q f(D) Qᵀ` and its derivative along `dy` by Löwner's formula: `Q (Γ ∘ Qᵀ dY Q) Qᵀ`
    with divided differences Γ of f, and f's mean slope `df` where eigenvalues meet
    (well defined at repeated eigenvalues, where jnp.linalg.eigh's own rule is not)."""
    gap = d[:, None] - d[None, :]
    close = jnp.abs(gap) <= 1e3 * jnp.finfo(d.dtype).eps * (1 + jnp.max(jnp.abs(d), initial=0.0))
    divided = (f[:, None] - f[None, :]) / jnp.where(close, 1, gap)
    gamma = jnp.where(close, (df[:, None] + df[None, :]) / 2, divided)
    return (q * f) @ q.T, q @ (gamma * (q.T @ _sym(dy) @ q)) @ q.T


@jax.custom_jvp
def psd_projection(y: Matrix) -> Matrix:
    """The nearest positive semidefinite matrix to the symmetric part of `y` (Frobenius)."""
    d, q = jnp.linalg.eigh(_sym(y))
    return (q * jnp.maximum(d, 0)) @ q.T


@psd_projection.defjvp
def _psd_projection_jvp(primals, tangents):
    (y,), (dy,) = primals, tangents
    d, q = jnp.linalg.eigh(_sym(y))
    return _spectral_map(d, q, jnp.maximum(d, 0), (d > 0).astype(d.dtype), dy)


def _kept(d, rank: Rank):
    return jnp.arange(d.size) >= d.size - rank  # eigh sorts ascending


@jax.custom_jvp
def rank_projection(y: Matrix, rank: Rank) -> Matrix:
    """The symmetric part of `y` truncated to its `rank` largest eigenpairs, whatever
    their sign: the PSD projection where exactly `rank` eigenvalues are positive, and its
    smooth continuation past where one of them changes sign."""
    d, q = jnp.linalg.eigh(_sym(y))
    return (q * jnp.where(_kept(d, rank), d, 0)) @ q.T


@rank_projection.defjvp
def _rank_projection_jvp(primals, tangents):
    (y, rank), (dy, _) = primals, tangents
    d, q = jnp.linalg.eigh(_sym(y))
    kept = _kept(d, rank)
    return _spectral_map(d, q, jnp.where(kept, d, 0), kept.astype(d.dtype), dy)


def _implicit_root(
    residual: Callable[[Matrix, PyTree], Matrix], root: Matrix, params: PyTree
) -> Matrix:
    """`root`, a zero of `residual(·, params)` found without derivatives, with the
    implicit function theorem's derivative in `params`: `dX = −(∂F/∂X)⁺ (∂F/∂p) dp`,
    the pseudo-inverse of the k²×k² Jacobian by SVD. (optimistix's implicit adjoint
    would do the same through lineax, whose checks call back to the host: such programs
    cannot be kept in the persistent compilation cache.) `residual` must close over no
    traced values: pass them in `params`."""

    @jax.custom_jvp
    def solution(root, params):
        del params
        return root

    @solution.defjvp
    def _solution_jvp(primals, tangents):
        (root, params), (_, dparams) = primals, tangents
        _, rhs = jax.jvp(lambda p: residual(root, p), (params,), (dparams,))
        jacobian = jax.jacfwd(lambda x: residual(x, params))(root).reshape(root.size, -1)
        dx = -jnp.linalg.pinv(jacobian) @ rhs.reshape(-1)
        return root, dx.reshape(root.shape)

    return solution(jax.lax.stop_gradient(root), params)


def _newton_root(
    residual: Callable[[Matrix, PyTree], Matrix],
    x0: Matrix,
    params: PyTree,
    max_steps: int,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> tuple[Matrix, optx.RESULTS]:
    """A root of `residual(·, params)` by Newton's method (optimistix) from `x0`,
    symmetrized, differentiable in `params` by `_implicit_root`."""
    frozen, x0 = jax.lax.stop_gradient((params, x0))
    solution = optx.root_find(
        lambda x, _: residual(x, frozen),
        optx.Newton(rtol=rtol, atol=atol),
        x0,
        max_steps=max_steps,
        throw=False,
    )
    return _implicit_root(residual, _sym(solution.value), params), solution.result


class SDCPSolution(eqx.Module):
    """The solution `X` of an SDCP, its natural residual and optimistix's result code."""

    X: Matrix
    residual: Float[Array, ""]
    result: optx.RESULTS


def _regularized(operator: Operator) -> Operator:
    # A tiny multiple of the identity makes X unique where B is singular (e.g. on
    # off-diagonal entries that no third derivative couples), moving the solution by
    # O(1e-10) relative, and keeps Newton's Jacobian invertible.
    k = operator.shape[0]
    scale = jnp.max(jnp.abs(operator), initial=0.0)
    identity = jnp.einsum("il,jm->ijlm", jnp.eye(k), jnp.eye(k))
    return operator + 1e-10 * scale * identity


def natural_residual(
    x: Matrix, alpha: Matrix, operator: Operator, rank: Rank | None = None
) -> Matrix:
    """`X − Π_PSD(X − (α + B[X]))`: zero exactly at a solution of the SDCP. With `rank`,
    `Π_PSD` is replaced by `rank_projection` (the SDCP's branch of that active rank)."""
    z = x - alpha - apply_operator(operator, x)
    return x - (psd_projection(z) if rank is None else rank_projection(z, rank))


@eqx.filter_jit
def sdcp_solve(
    alpha: Matrix,
    operator: Operator,
    *,
    x0: Matrix | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int = 64,
) -> SDCPSolution:
    r"""Solve `X ⪰ 0, α + B[X] ⪰ 0, ⟨X, α + B[X]⟩ = 0` for symmetric k×k `X`.

    For k = 1 this is the closed form `X = max(0, −α/B)`. For k > 1, Newton's method
    (optimistix) on the natural residual `X − Π_PSD(X − α − B[X])`, started from the
    diagonal closed form (or `x0`); differentiable by the implicit function theorem
    where the active set is locally constant. `B` is the operator's tensor `B_ijlm`;
    for the central flow it is positive semidefinite, making this the optimality
    condition of `min_{X⪰0} ½⟨X, B[X]⟩ + ⟨α, X⟩`.

    **Arguments:**

    - `alpha`: symmetric `(k, k)` constant term.
    - `operator`: `(k, k, k, k)` tensor of the linear term.
    - `x0`: optional warm start.
    - `rtol`, `atol`, `max_steps`: Newton's tolerances and step cap.

    **Returns:** an `SDCPSolution`; `residual` is the max-norm of the natural residual.
    """
    k = alpha.shape[0]
    operator = _regularized(operator)
    diagonal = jnp.einsum("iiii->i", operator)
    safe = jnp.where(diagonal > 0, diagonal, 1)
    guess = jnp.diag(jnp.where(diagonal > 0, jnp.maximum(0, -jnp.diag(alpha) / safe), 0))
    if k <= 1:  # closed form (k = 0: nothing is critical)
        x, result = guess, optx.RESULTS.successful
    else:
        x0 = guess if x0 is None else x0
        residual = lambda x, p: natural_residual(x, *p)
        x, result = _newton_root(residual, x0, (alpha, operator), max_steps, rtol, atol)
    residual = jnp.max(jnp.abs(natural_residual(x, alpha, operator)), initial=0.0)
    return SDCPSolution(x, residual, result)


def pad_sdcp(
    alpha: Matrix, operator: Operator, critical: Bool[Array, " k"]
) -> tuple[Matrix, Operator]:
    """An SDCP padded past its `critical` rows to a fixed size: `α` is the identity and
    `B` a multiple of it (of the size of the critical block's entries, which sets the
    regularization) on every entry with a padding row or column (where `B` computed at
    the padded size is zero), so the padding's block is decoupled and its solution zero."""
    both = critical[:, None] & critical[None, :]
    eye = jnp.eye(len(critical), dtype=alpha.dtype)
    real = both[:, :, None, None] & both[None, None]
    scale = jnp.max(jnp.where(real, jnp.abs(operator), 0), initial=0.0)
    identity = jnp.where(scale > 0, scale, 1) * jnp.einsum("il,jm->ijlm", eye, eye)
    operator = jnp.where(both[:, :, None, None], operator, identity)
    return jnp.where(both, alpha, eye), operator


def complementarity_margins(
    x: Matrix, alpha: Matrix, operator: Operator, critical: Bool[Array, " k"] | None = None
) -> Float[Array, " k"]:
    """The eigenvalues of `X − (α + B[X])`, descending. At a solution of the SDCP of rank
    r, the r first are X's positive eigenvalues and the rest are minus those of
    `α + B[X]` on X's kernel: the active rank changes where one of them reaches 0. Of a
    padded SDCP (`pad_sdcp`) only the `critical` rows count: the padding's come last."""
    z = _sym(x - alpha - apply_operator(_regularized(operator), x))
    if critical is not None:
        both = critical[:, None] & critical[None, :]
        z = jnp.where(both, z, 0)
        z = z - jnp.diag(jnp.where(critical, 0, below(z)))
    return jnp.linalg.eigvalsh(z)[::-1]


def rank_branch(alpha: Matrix, operator: Operator, rank: Rank, x0: Matrix) -> Matrix:
    """The SDCP's solution with its active rank held at `rank`: the root of
    `X − Π_r(X − α − B[X])` near `x0`, with `Π_r` the truncation to the `rank` largest
    eigenpairs (`rank_projection`). It is the SDCP's solution while that has rank
    `rank`, and continues it smoothly past a change of rank, where its
    `complementarity_margins` change sign (the conditions of the active-rank events).

    **Arguments:**

    - `alpha`, `operator`: the SDCP, as for `sdcp_solve`.
    - `rank`: the active rank to hold (an int, or a traced one).
    - `x0`: the starting point, e.g. the SDCP's solution.

    **Returns:** the `(k, k)` solution on the branch.
    """
    if isinstance(rank, int) and rank == 0:
        return jnp.zeros_like(alpha)
    residual = lambda x, p: natural_residual(x, *p)
    return _newton_root(residual, x0, (alpha, _regularized(operator), rank), 64)[0]
