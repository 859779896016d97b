import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from centralflows import _sdcp
from centralflows._sdcp import (
    _regularized,
    apply_operator,
    complementarity_margins,
    held_at_rank,
    natural_residual,
    psd_projection,
    rank_branch,
    rank_projection,
    sdcp_solve,
    smoothed_psd_projection,
)


def random_instance(seed, k, rank=None):
    """α symmetric; B[X]_ij = Σ_r (G_r)_ij ⟨G_r, X⟩: PSD like the central flow's, and
    positive definite for the default (full) rank."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, k))
    alpha = (a + a.T) / 2
    rank = rank or k * (k + 1) // 2
    g = rng.normal(size=(rank, k, k))
    g = (g + np.transpose(g, (0, 2, 1))) / 2
    operator = np.einsum("rij,rlm->ijlm", g, g)
    return jnp.asarray(alpha), jnp.asarray(operator)


def decoupled_instance(seed, k):
    """As in the central flow when no third derivative couples two directions:
    G_ij = 0 for i ≠ j, so B is singular on the off-diagonal entries (and α is diagonal)."""
    rng = np.random.default_rng(seed)
    g = np.zeros((k, k, k))
    g[:, np.arange(k), np.arange(k)] = rng.normal(size=(k, k))  # G_ii = Σ_r g_ri e_r
    operator = np.einsum("ijr,lmr->ijlm", g, g) + 0.1 * np.einsum(
        "il,jm,ij->ijlm", np.eye(k), np.eye(k), np.eye(k)
    )
    return jnp.asarray(np.diag(rng.normal(size=k))), jnp.asarray(operator)


def check_kkt(alpha, operator, sol):
    x = np.asarray(sol.X)
    y = np.asarray(alpha + apply_operator(operator, sol.X))
    # Relative to the problem's size: the solver regularizes B by 1e-10·max|B|.
    scale = (1 + np.abs(alpha).max()) * (1 + np.abs(operator).max() * np.abs(x).max())
    np.testing.assert_allclose(x, x.T, atol=1e-12 * scale)
    assert np.linalg.eigvalsh(x).min() >= -1e-9 * scale  # X ⪰ 0
    assert np.linalg.eigvalsh((y + y.T) / 2).min() >= -1e-9 * scale  # α + B[X] ⪰ 0
    # Complementarity. The regularization moves α + B[X] by up to 1e-10·max|B|·|X|, so
    # ⟨X, α + B[X]⟩ by that times |X|: seed 4413, k = 1 (B = 1e-6, X = 8e4) gives 6.9e-7.
    assert abs(np.sum(x * y)) <= 1e-8 * scale**2 * (1 + np.abs(x).max())
    assert float(sol.residual) <= 1e-9 * scale


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), k=st.integers(2, 4))
def test_decoupled_singular_instances_satisfy_kkt(seed, k):
    alpha, operator = decoupled_instance(seed, k)
    check_kkt(alpha, operator, sdcp_solve(alpha, operator))


@pytest.mark.parametrize(
    "instance, seed, k",
    [
        # Newton alone (`newton_alone` below) ends at max_steps with the residual in the
        # comment, for 4468 in a 3-cycle of iterates. Found by the property tests with
        # random seeds, and over seeds 0–999 at k = 4–6.
        (decoupled_instance, 4468, 3),  # 3.3e3
        (decoupled_instance, 30122970, 4),  # 0.58
        (decoupled_instance, 1789505227, 4),  # 0.27
        (decoupled_instance, 495300372, 4),  # 4.0e-7
        (decoupled_instance, 126, 4),  # 5.9e-6
        (decoupled_instance, 531, 5),  # 2.1
        (decoupled_instance, 985, 6),  # 0.65
        (decoupled_instance, 351, 6),  # 3.1e-3
        (random_instance, 31, 4),  # 0.49, with B positive definite
    ],
)
def test_instances_where_newton_alone_fails(instance, seed, k):
    alpha, operator = instance(seed, k)
    check_kkt(alpha, operator, sdcp_solve(alpha, operator))


@eqx.filter_jit
def newton_alone(alpha, operator, x0):
    """optimistix's Newton on the natural residual, as `sdcp_solve` before its smoothing."""
    residual = lambda x, p: natural_residual(x, *p)
    solver = optx.Newton(rtol=1e-10, atol=1e-12)
    args = (alpha, _regularized(operator))
    return optx.root_find(residual, solver, x0, args, max_steps=64, throw=False)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), k=st.integers(2, 4))
def test_newtons_steps_are_taken_where_newton_converges(seed, k):
    # The smoothing phase costs nothing where Newton converges: its steps, and its X.
    alpha, operator = random_instance(seed, k)
    x0 = jnp.zeros_like(alpha)
    newton = newton_alone(alpha, operator, x0)
    assume(newton.result == optx.RESULTS.successful)
    sol = sdcp_solve(alpha, operator, x0=x0)
    assert int(sol.num_steps) == int(newton.stats["num_steps"])
    assert sol.result == optx.RESULTS.successful
    np.testing.assert_allclose(sol.X, newton.value, rtol=1e-12, atol=1e-14)  # LU's rounding


@pytest.mark.parametrize("seed, k", [(31, 4), (2, 5), (3, 8)])
def test_float32(seed, k):
    # Positive definite instances (the first one Newton alone does not solve, see above)
    # with the default tolerances below float32's rounding: the residual at its rounding
    # error, and the solve converged there rather than running to its step limit.
    alpha, operator = random_instance(seed, k)
    with jax.enable_x64(False):
        sol = sdcp_solve(alpha.astype(jnp.float32), operator.astype(jnp.float32))
    assert sol.X.dtype == jnp.float32
    scale = (1 + np.abs(alpha).max()) * (1 + np.abs(operator).max() * np.abs(sol.X).max())
    assert float(sol.residual) <= 100 * np.finfo(np.float32).eps * scale
    assert sol.result == optx.RESULTS.successful
    assert int(sol.num_steps) < 64  # the default max_steps
    np.testing.assert_allclose(sol.X, sdcp_solve(alpha, operator).X, atol=1e-4)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), k=st.integers(1, 4))
def test_solution_satisfies_kkt(seed, k):
    alpha, operator = random_instance(seed, k)
    check_kkt(alpha, operator, sdcp_solve(alpha, operator))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(alpha=st.floats(-5, 5), b=st.floats(0.01, 10))
def test_closed_form_k1(alpha, b):
    sol = sdcp_solve(jnp.array([[alpha]]), jnp.array([[[[b]]]]))
    # rel 1e-9: the solver adds 1e-10·|B| to B (see sdcp_solve).
    assert float(sol.X[0, 0]) == pytest.approx(max(0.0, -alpha / b), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_general_path_agrees_with_closed_form_on_decoupled_problems(seed):
    # A diagonal operator decouples the diagonal entries: X_ii = max(0, −α_ii/B_iiii),
    # and off-diagonal α must vanish for that to be exact.
    rng = np.random.default_rng(seed)
    k = 3
    alpha = jnp.diag(jnp.asarray(rng.normal(size=k)))
    b = rng.uniform(0.5, 2.0, size=(k, k))
    b = (b + b.T) / 2
    operator = jnp.einsum("il,jm,ij->ijlm", jnp.eye(k), jnp.eye(k), jnp.asarray(b))
    sol = sdcp_solve(alpha, operator)
    closed = [
        sdcp_solve(
            alpha[i : i + 1, i : i + 1], operator[i : i + 1, i : i + 1, i : i + 1, i : i + 1]
        ).X[0, 0]
        for i in range(k)
    ]
    np.testing.assert_allclose(jnp.diag(sol.X), closed, atol=1e-12)
    np.testing.assert_allclose(sol.X - jnp.diag(jnp.diag(sol.X)), 0, atol=1e-12)


def test_projection_derivative_matches_finite_differences_at_a_repeated_eigenvalue():
    y = jnp.diag(jnp.array([1.0, 1.0, -0.5]))  # repeated eigenvalue 1
    dy = jnp.array([[0.3, 0.1, -0.2], [0.1, -0.4, 0.5], [-0.2, 0.5, 0.2]])
    _, jvp = jax.jvp(psd_projection, (y,), (dy,))
    h = 1e-6
    fd = (psd_projection(y + h * dy) - psd_projection(y - h * dy)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, atol=1e-8)
    assert np.all(np.isfinite(jvp))


def test_implicit_derivative_matches_finite_differences():
    alpha, operator = random_instance(7, 3)
    f = lambda s: jnp.sum(sdcp_solve(alpha * s, operator).X ** 2)
    grad = jax.grad(f)(1.0)
    h = 1e-6
    fd = (f(1.0 + h) - f(1.0 - h)) / (2 * h)
    assert float(grad) == pytest.approx(float(fd), rel=1e-5)
    assert (
        float(jnp.abs(natural_residual(sdcp_solve(alpha, operator).X, alpha, operator)).max())
        < 1e-10
    )


def test_smoothed_projection_is_the_projection_at_zero_and_its_derivative_matches():
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(4, 4)))
    y = jnp.asarray(q @ np.diag([1.0, 1.0, -0.5, 0.0]) @ q.T)  # repeated, and zero
    dy = jnp.asarray(np.random.default_rng(6).normal(size=(4, 4)))
    np.testing.assert_allclose(smoothed_psd_projection(y, 0.0), psd_projection(y), atol=1e-15)
    f = lambda m, e: smoothed_psd_projection(m, e)
    _, jvp = jax.jvp(f, (y, 0.3), (dy, 0.7))
    h = 1e-6
    fd = (f(y + h * dy, 0.3 + h * 0.7) - f(y - h * dy, 0.3 - h * 0.7)) / (2 * h)
    np.testing.assert_allclose(jvp, fd, atol=1e-8)


def test_rank_projection_derivative_matches_finite_differences():
    # Rank 2 of eigenvalues (1, 1, −0.5, −2): a repeated kept pair, and a kept negative one
    # at rank 3 (the continuation past a sign change).
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(4, 4)))
    y = jnp.asarray(q @ np.diag([1.0, 1.0, -0.5, -2.0]) @ q.T)
    dy = jnp.asarray(np.random.default_rng(4).normal(size=(4, 4)))
    for rank in (2, 3):
        _, jvp = jax.jvp(lambda m: rank_projection(m, rank), (y,), (dy,))
        h = 1e-6
        fd = (rank_projection(y + h * dy, rank) - rank_projection(y - h * dy, rank)) / (2 * h)
        np.testing.assert_allclose(jvp, fd, atol=1e-8)
    np.testing.assert_allclose(rank_projection(y, 2), psd_projection(y), atol=1e-14)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31), k=st.integers(2, 4))
def test_the_rank_branch_is_the_solution_at_its_own_rank(seed, k):
    alpha, operator = random_instance(seed, k)
    sol = sdcp_solve(alpha, operator)
    margins = complementarity_margins(sol.X, alpha, operator)
    rank = int(np.sum(np.asarray(margins) > 0))
    # X's eigenvalues, then minus those of α + B[X] (both PSD, complementary).
    x_eigs = np.linalg.eigvalsh(np.asarray(sol.X))[::-1]
    np.testing.assert_allclose(margins[:rank], x_eigs[:rank], rtol=1e-8, atol=1e-10)
    assert np.all(np.asarray(margins[rank:]) <= 1e-10)
    branch = rank_branch(alpha, operator, rank, sol.X + 1e-3 * jnp.eye(k))
    np.testing.assert_allclose(branch, sol.X, atol=1e-9)


@pytest.mark.parametrize("seed, k", [(31, 4), (2, 5), (3, 8)])
def test_the_rank_branch_in_float32_stops_at_its_rounding_error(monkeypatch, seed, k):
    # From the SDCP's solution, at its own rank and to the residual the SDCP reached,
    # Newton's first step lands on the branch; to the default tolerance, below float32's
    # rounding, it would take all 64.
    alpha, operator = random_instance(seed, k)
    evaluations = []
    counted = lambda x, *p: (
        jax.debug.callback(lambda: evaluations.append(1)),
        natural_residual(x, *p),
    )[1]
    monkeypatch.setattr(_sdcp, "natural_residual", counted)
    with jax.enable_x64(False):
        alpha, operator = alpha.astype(jnp.float32), operator.astype(jnp.float32)
        sol = sdcp_solve(alpha, operator)
        rank = int(np.sum(np.asarray(complementarity_margins(sol.X, alpha, operator)) > 0))
        evaluations.clear()
        branch = held_at_rank(alpha, operator, sol, rank)
    assert branch.dtype == jnp.float32
    np.testing.assert_allclose(branch, sol.X, rtol=1e-5, atol=1e-5)
    assert 0 < len(evaluations) <= 4


def test_the_rank_branch_continues_past_a_change_of_rank():
    # Decoupled: X = diag(max(0, −α_i / b_i)). On the rank-2 branch X_22 = −α_22 / b_2
    # whatever its sign, so the deactivation margin −z_2 crosses 0 exactly where α_22 does;
    # on the rank-1 branch the activation margin z_2 = −α_22 crosses 0 there too.
    b = jnp.array([2.0, 4.0])
    operator = jnp.einsum("il,jm,ij,i->ijlm", jnp.eye(2), jnp.eye(2), jnp.eye(2), b)
    for a22 in (-0.2, 0.2):
        alpha = jnp.diag(jnp.array([-1.0, a22]))
        x = sdcp_solve(alpha, operator).X
        rank2 = complementarity_margins(rank_branch(alpha, operator, 2, x), alpha, operator)
        rank1 = complementarity_margins(rank_branch(alpha, operator, 1, x), alpha, operator)
        np.testing.assert_allclose(rank2, [0.5, -a22 / 4], rtol=1e-8)  # z = X's eigenvalues
        np.testing.assert_allclose(rank1, [0.5, -a22], rtol=1e-8)  # z = (X_11, −α_22)


def test_the_implicit_derivatives_have_no_host_callback():
    # A host callback in a program keeps it out of the persistent compilation cache
    # (optimistix's implicit adjoint checks its linear solve with one).
    alpha, operator = random_instance(7, 3)
    solve = lambda a: sdcp_solve(a, operator).X
    branch = lambda a: rank_branch(a, operator, 1, sdcp_solve(alpha, operator).X)
    for f in (solve, branch):
        reverse = jax.jit(lambda a: jax.vjp(f, a)[1](jnp.eye(3))).lower(alpha).as_text()
        forward = jax.jit(lambda a: jax.jvp(f, (a,), (alpha,))[1]).lower(alpha).as_text()
        assert "callback" not in reverse and "callback" not in forward
    # The rank branch's derivative is the implicit one: finite differences agree.
    da = jax.jvp(branch, (alpha,), (alpha,))[1]
    h = 1e-6
    fd = (branch(alpha * (1 + h)) - branch(alpha * (1 - h))) / (2 * h)
    np.testing.assert_allclose(da, fd, rtol=1e-5, atol=1e-7)
