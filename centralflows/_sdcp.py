"""The semidefinite complementarity problem that pins down the oscillation covariance."""

import dataclasses
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
Scalar = float | Float[Array, ""]


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
def smoothed_psd_projection(y: Matrix, smoothing: Scalar) -> Matrix:
    """`Q φ_ε(D) Qᵀ` for the symmetric part `Q D Qᵀ` of `y`, with `φ_ε(t) = (t + √(t² + 4ε²))/2`
    the Chen–Harker–Kanzow–Smale smoothing of `max(t, 0)` by `ε = smoothing`: smooth in
    `(y, ε)` for `ε ≠ 0`, and the PSD projection at `ε = 0`."""
    d, q = jnp.linalg.eigh(_sym(y))
    return (q * (d + jnp.hypot(d, 2 * smoothing)) / 2) @ q.T


@smoothed_psd_projection.defjvp
def _smoothed_psd_projection_jvp(primals, tangents):
    (y, smoothing), (dy, dsmoothing) = primals, tangents
    d, q = jnp.linalg.eigh(_sym(y))
    r = jnp.hypot(d, 2 * smoothing)
    safe = jnp.where(r > 0, r, 1)  # r = 0 only where d = ε = 0: there φ's slopes are taken 0
    slope = jnp.where(r > 0, (1 + d / safe) / 2, 0)
    out, dout = _spectral_map(d, q, (d + r) / 2, slope, dy)
    return out, dout + (q * (2 * smoothing / safe * dsmoothing)) @ q.T


def psd_projection(y: Matrix) -> Matrix:
    """The nearest positive semidefinite matrix to the symmetric part of `y` (Frobenius)."""
    return smoothed_psd_projection(y, 0.0)


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
    atol: float | Float[Array, ""] = 1e-12,
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
    """The solution `X` of an SDCP, its natural residual, optimistix's result code and the
    number of steps taken."""

    X: Matrix
    residual: Float[Array, ""]
    result: optx.RESULTS
    num_steps: Int[Array, ""]


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


def _smoothed_residual(smoothing: Scalar, x: Matrix, alpha: Matrix, operator: Operator) -> Matrix:
    """`X − Π_ε(X − (α + B[X]))` with `Π_ε` the `smoothed_psd_projection`: the natural
    residual at `ε = 0`, smooth in `(ε, X)` for `ε ≠ 0`."""
    z = x - alpha - apply_operator(operator, x)
    return x - smoothed_psd_projection(z, smoothing)


class _SmoothingNewtonState(eqx.Module):
    x: Matrix
    smoothing: Float[Array, ""]  # ε: 0 in the Newton phase
    target: Float[Array, ""]  # ε̄: 0 in the Newton phase, then ‖F‖ where it ended
    best_x: Matrix  # the Newton phase's iterate of least ‖F‖², and that ‖F‖²
    best_merit: Float[Array, ""]
    stale: Int[Array, ""]  # Newton steps since best_merit last decreased
    diff: Matrix  # the last step, and max(ε, |F_ε|) where it was taken
    previous_residual: Float[Array, ""]
    earlier_residual: Float[Array, ""]  # the step before's `previous_residual`
    num_steps: Int[Array, ""]
    stalled: Bool[Array, ""]


def _rounding(x: Matrix, alpha: Matrix, operator: Operator) -> Float[Array, ""]:
    """The rounding error of the natural residual `X − Π(X − α − B[X])` at `x`."""
    z = x - alpha - apply_operator(operator, x)
    return 100 * jnp.finfo(x.dtype).eps * (jnp.linalg.norm(x) + jnp.linalg.norm(z))


def _smoothing_newton(
    alpha: Matrix, operator: Operator, x0: Matrix, max_steps: int, rtol: float, atol: float
) -> tuple[Matrix, optx.RESULTS, Int[Array, ""]]:
    """A zero of the natural residual `F` from `x0`: Newton's method with full steps until
    `‖F‖²` has not decreased below its least value for `patience` steps (while above the
    rounding error of `F`), then, from the iterate `X_b` of that least value, Qi, Sun and
    Zhou's smoothing Newton method: Newton on `(ε, F_ε(X)) = 0` (`_smoothed_residual`),
    the smoothing pulled towards `β ε̄` with `ε̄ = ‖F(X_b)‖` and `β = γ min(1, ψ/ε̄²)`, and an
    Armijo search on `ψ = ε² + ‖F_ε(X)‖²`. It stops on optimistix's Cauchy criterion
    (`successful`), when no searched step decreases `ψ` (`nonlinear_divergence`), or
    after `max_steps`; each step costs a Jacobian and a k²×k² solve."""
    patience = 16  # fewer cut short Newton's transients where B is nearly singular
    gamma, sigma, max_halvings = 0.2, 1e-4, 30
    # Jacobians, and the values as their aux.
    newton_jacobian = jax.jacfwd(
        lambda x: (natural_residual(x, alpha, operator),) * 2, has_aux=True
    )
    residual = lambda e, x: _smoothed_residual(e, x, alpha, operator)
    jacobian = jax.jacfwd(lambda e, x: (residual(e, x),) * 2, argnums=(0, 1), has_aux=True)
    solve = lambda a, b: jnp.linalg.solve(a.reshape(b.size, b.size), b.reshape(-1))

    def newton_step(state):
        x = state.x
        f_x, f = newton_jacobian(x)
        new_x = x - solve(f_x, f).reshape(x.shape)
        # The watchdog: back to the best iterate, smoothed, once Newton stops progressing.
        merit = jnp.sum(f**2)
        rounding = _rounding(x, alpha, operator)
        improved = (merit < (1 - sigma) * state.best_merit) | (merit <= rounding**2)
        best_x = jnp.where(improved, x, state.best_x)
        best_merit = jnp.where(improved, merit, state.best_merit)
        stale = jnp.where(improved, 0, state.stale + 1)
        switch = (stale >= patience) | ~jnp.isfinite(merit)
        target = jnp.where(switch, jnp.sqrt(best_merit), 0)
        new_x = jnp.where(switch, best_x, new_x)
        return dataclasses.replace(
            state,
            x=new_x,
            smoothing=target,
            target=target,
            best_x=best_x,
            best_merit=best_merit,
            stale=stale,
            diff=new_x - x,
            previous_residual=jnp.max(jnp.abs(f)),
            earlier_residual=state.previous_residual,
            num_steps=state.num_steps + 1,
        )

    def smoothing_step(state):
        x, e, target = state.x, state.smoothing, state.target
        (f_e, f_x), f = jacobian(e, x)
        psi = e**2 + jnp.sum(f**2)
        de = gamma * jnp.minimum(1, psi / target**2) * target - e
        dx = -solve(f_x, f + de * f_e).reshape(x.shape)
        # Armijo backtracking on ψ.
        decreased = lambda t, f_t: (
            (e + t * de) ** 2 + jnp.sum(f_t**2) <= (1 - 2 * sigma * (1 - gamma) * t) * psi
        )

        def searching(search):
            t, f_t, halvings = search
            return ~decreased(t, f_t) & (halvings < max_halvings)

        def halve(search):
            t, _, halvings = search
            return t / 2, residual(e + t / 2 * de, x + t / 2 * dx), halvings + 1

        full = (jnp.ones((), x.dtype), residual(e + de, x + dx), jnp.array(0))
        t, f_t, _ = jax.lax.while_loop(searching, halve, full)
        accepted = decreased(t, f_t)
        t = jnp.where(accepted, t, 0)
        return dataclasses.replace(
            state,
            x=x + t * dx,
            smoothing=e + t * de,
            diff=t * dx,
            previous_residual=jnp.maximum(e, jnp.max(jnp.abs(f))),
            earlier_residual=state.previous_residual,
            num_steps=state.num_steps + 1,
            stalled=~accepted,
        )

    def converged(state):
        small_step = jnp.max(jnp.abs(state.diff) / (atol + rtol * jnp.abs(state.x))) < 1
        # At the residual's rounding error Newton stops converging (in float32 far above
        # the default atol): a step that did not halve a residual below that is the end.
        residual, earlier = state.previous_residual, state.earlier_residual
        rounded = (residual < _rounding(state.x, alpha, operator)) & (residual > earlier / 2)
        return (small_step & (residual < atol)) | rounded

    def not_done(state):
        return ~converged(state) & ~state.stalled & (state.num_steps < max_steps)

    zero, inf = jnp.zeros((), x0.dtype), jnp.full((), jnp.inf, x0.dtype)
    never = jnp.full_like(x0, jnp.inf)
    init = _SmoothingNewtonState(
        x0, zero, zero, x0, inf, jnp.array(0), never, inf, inf, jnp.array(0), jnp.array(False)
    )
    newton = jax.lax.while_loop(lambda s: not_done(s) & (s.target == 0), newton_step, init)
    final = jax.lax.while_loop(not_done, smoothing_step, newton)
    result = optx.RESULTS.where(
        converged(final),
        optx.RESULTS.successful,
        optx.RESULTS.where(
            final.stalled,
            optx.RESULTS.nonlinear_divergence,
            optx.RESULTS.nonlinear_max_steps_reached,
        ),
    )
    return final.x, result, final.num_steps


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

    For k = 1 this is the closed form `X = max(0, −α/B)`. For k > 1, Newton's method on
    the natural residual `X − Π_PSD(X − α − B[X])`, started from the diagonal closed form
    (or `x0`) and, where it stops making progress (a cycle, or a nearly singular `B`),
    continued from its best iterate by the smoothing Newton method of Qi, Sun and Zhou
    (`Π_PSD`'s `max(d, 0)` on the eigenvalues replaced by `(d + √(d² + 4ε²))/2`, with a
    line search as `ε → 0`), globally convergent for monotone `B`; differentiable by the
    implicit function theorem where the active set is locally constant. `B` is the
    operator's tensor `B_ijlm`; for the central flow it is positive semidefinite, making
    this the optimality condition of `min_{X⪰0} ½⟨X, B[X]⟩ + ⟨α, X⟩`.

    ??? cite "Reference"
        ```bibtex
        @article{qi2000smoothing,
          title={A new look at smoothing {N}ewton methods for nonlinear complementarity
                 problems and box constrained variational inequalities},
          author={Qi, Liqun and Sun, Defeng and Zhou, Guanglu},
          journal={Mathematical Programming},
          volume={87},
          number={1},
          pages={1--35},
          year={2000}
        }
        @article{sun2004squared,
          title={Quadratic convergence of a squared smoothing {N}ewton method for
                 nonsmooth matrix equations and its applications in semidefinite
                 optimization problems},
          author={Sun, Jie and Sun, Defeng and Qi, Liqun},
          journal={SIAM Journal on Optimization},
          volume={14},
          number={3},
          pages={783--806},
          year={2004}
        }
        ```

    **Arguments:**

    - `alpha`: symmetric `(k, k)` constant term.
    - `operator`: `(k, k, k, k)` tensor of the linear term.
    - `x0`: optional warm start.
    - `rtol`, `atol`, `max_steps`: the tolerances of optimistix's Cauchy criterion
        (`|ΔX| < atol + rtol·|X|` and `|residual| < atol`) and the cap on all steps. The
        solve also ends where a residual below its rounding error (as in float32, above
        the default `atol`) fails to halve.

    **Returns:** an `SDCPSolution`; `residual` is the max-norm of the natural residual,
    `result` `nonlinear_divergence` where the line search found no decrease (at the
    rounding error, or stalled).
    """
    k = alpha.shape[0]
    operator = _regularized(operator)
    diagonal = jnp.einsum("iiii->i", operator)
    safe = jnp.where(diagonal > 0, diagonal, 1)
    guess = jnp.diag(jnp.where(diagonal > 0, jnp.maximum(0, -jnp.diag(alpha) / safe), 0))
    if k <= 1:  # closed form (k = 0: nothing is critical)
        x, result, num_steps = guess, optx.RESULTS.successful, jnp.array(0)
    else:
        frozen, x0 = jax.lax.stop_gradient(((alpha, operator), guess if x0 is None else x0))
        x, result, num_steps = _smoothing_newton(*frozen, x0, max_steps, rtol, atol)
        residual = lambda x, p: natural_residual(x, *p)
        x = _implicit_root(residual, _sym(x), (alpha, operator))
    residual = jnp.max(jnp.abs(natural_residual(x, alpha, operator)), initial=0.0)
    return SDCPSolution(x, residual, result, num_steps)


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


def rank_branch(
    alpha: Matrix,
    operator: Operator,
    rank: Rank,
    x0: Matrix,
    atol: float | Float[Array, ""] = 1e-12,
) -> Matrix:
    """The SDCP's solution with its active rank held at `rank`: the root of
    `X − Π_r(X − α − B[X])` near `x0`, with `Π_r` the truncation to the `rank` largest
    eigenpairs (`rank_projection`). It is the SDCP's solution while that has rank
    `rank`, and continues it smoothly past a change of rank, where its
    `complementarity_margins` change sign (the conditions of the active-rank events).

    **Arguments:**

    - `alpha`, `operator`: the SDCP, as for `sdcp_solve`.
    - `rank`: the active rank to hold (an int, or a traced one).
    - `x0`: the starting point, e.g. the SDCP's solution.
    - `atol`: Newton's tolerance on the residual (`rtol` is 1e-10, or 100 ε of the
      dtype where larger); from an SDCP's solution, the residual it reached
      (`sdcp_tolerance`), which in float32 is far above the default.

    **Returns:** the `(k, k)` solution on the branch.
    """
    if isinstance(rank, int) and rank == 0:
        return jnp.zeros_like(alpha)
    residual = lambda x, p: natural_residual(x, *p)
    rtol = max(1e-10, 100 * float(jnp.finfo(alpha.dtype).eps))
    atol = jax.lax.stop_gradient(atol)
    return _newton_root(residual, x0, (alpha, _regularized(operator), rank), 64, rtol, atol)[0]


def sdcp_tolerance(solution: SDCPSolution) -> Float[Array, ""]:
    """`rank_branch`'s tolerance from `solution`: ten times the residual it reached, and
    at least the default 1e-12 (float64's solves reach below it, float32's not)."""
    return jnp.maximum(1e-12, 10 * solution.residual)


def held_at_rank(
    alpha: Matrix, operator: Operator, solution: SDCPSolution, rank: Rank | None
) -> Matrix:
    """`solution`'s `X`, or with `rank` given its continuation on that active rank's
    branch (`rank_branch`, to the accuracy the solve reached: `sdcp_tolerance`)."""
    if rank is None:
        return solution.X
    return rank_branch(alpha, operator, rank, solution.X, sdcp_tolerance(solution))
