"""Top eigenpairs of the effective Hessian P⁻¹H, matrix-free and warm-started."""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._lobpcg import floored_tol, lobpcg

Vector = Float[Array, " n"]
Vectors = Float[Array, "k n"]


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
    tol: float = 1e-3
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

    The arrays have a fixed number of rows, the `capacity`, of which the first `count`
    are tracked: `vectors` holds the $u_i$ as rows, `values` the $\lambda_i$ in
    descending order, `residuals` $\|A v_i - \lambda_i v_i\|$ for the symmetric form
    $A = P^{-1/2} H P^{-1/2}$, $v_i = P^{1/2} u_i$. The untracked rows hold the vectors
    that tracking one more eigenpair starts from, with NaN values and residuals. Since
    the shapes do not depend on `count`, one compiled program serves every tracked count.
    `iterations` and `hvps` count the work of the call that produced it.
    """

    vectors: Vectors
    values: Float[Array, " k"]
    residuals: Float[Array, " k"]
    count: Int[Array, ""]
    iterations: Int[Array, ""]
    hvps: Int[Array, ""]
    converged: Bool[Array, ""]  # every tracked residual within tolerance

    @property
    def capacity(self) -> int:
        """The most eigenpairs this state can track (static)."""
        return self.values.shape[0]

    @property
    def active(self) -> Bool[Array, " k"]:
        """Which rows are tracked."""
        return jnp.arange(self.capacity) < self.count


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
    count: Int[Array, ""] | int | None = None,
    iterate: Bool[Array, ""] | bool = True,
) -> EigenState:
    """Top generalized eigenpairs `H u = λ P u`, warm-started from `previous`.

    Solves the symmetric problem for $A = P^{-1/2} H P^{-1/2}$ matrix-free by LOBPCG,
    starting from $P^{1/2}$ `previous`; problems with n < 5k use a dense `eigh`.

    **Arguments:**

    - `hvps`: `V -> H V` on rows (Hessian-vector products, batched).
    - `p_diag`: the diagonal of P.
    - `previous`: `(k, n)` initial guess (the last tracked vectors, or random).
    - `config`: tolerances.
    - `count`: how many of the k rows to track (may be traced; default: all k). The
      others cost no products and are returned as they are.
    - `iterate`: `False` (may be traced) for the Rayleigh–Ritz pairs in the span of
      `previous` alone, at `count` products, without LOBPCG iterations (the dense path
      is exact either way).

    **Returns:** an `EigenState` with P-orthonormal tracked `vectors`.
    """
    k, n = previous.shape
    count = k if count is None else count
    active = jnp.arange(k) < count
    inv_sqrt = 1 / jnp.sqrt(p_diag)
    matvec = lambda cols: (hvps((cols * inv_sqrt[:, None]).T) * inv_sqrt).T
    if n < 5 * k:
        dense = matvec(jnp.eye(n, dtype=previous.dtype))
        values, vecs = jnp.linalg.eigh((dense + dense.T) / 2)
        theta, x = values[::-1][:k], vecs[:, ::-1][:, :k]
        rnorm = jnp.linalg.norm(dense @ x - x * theta, axis=0)
        if n < k:  # room for more rows than the problem has eigenpairs
            theta, rnorm = jnp.pad(theta, (0, k - n)), jnp.pad(rnorm, (0, k - n))
            x = jnp.pad(x, ((0, 0), (0, k - n)))
        iterations, products = jnp.array(0), jnp.array(n)
    else:
        x0 = (previous / inv_sqrt).T
        theta, x, rnorm, iterations, products = lobpcg(
            matvec,
            x0,
            tol=config.tol,
            max_iters=jnp.where(iterate, config.max_iters, 0),
            count=count,
        )
    tol = floored_tol(config.tol, x.dtype) * jnp.max(jnp.where(active, jnp.abs(theta), 0))
    converged = jnp.all(jnp.where(active, rnorm <= tol, True))
    vectors = jnp.where(active[:, None], x.T * inv_sqrt, previous)
    nan_unless = lambda v: jnp.where(active, v, jnp.nan)
    counts = (jnp.asarray(c, jnp.int32) for c in (count, iterations, products))
    return EigenState(vectors, nan_unless(theta), nan_unless(rnorm), *counts, converged)


def random_vectors(key: PRNGKeyArray, num: int, n: int, dtype) -> Vectors:
    """`num` random unit rows, to start or extend a tracked set."""
    v = jr.normal(key, (num, n), dtype)
    return v / jnp.linalg.norm(v, axis=1, keepdims=True)
