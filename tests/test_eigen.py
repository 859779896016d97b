import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

import centralflows as cf
from centralflows._eigen import (
    grow_tracking,
    init_tracking,
    lobpcg,
    masked_products,
    preconditioner_diagonal,
    random_vectors,
    refresh_tracking,
)
from centralflows._eigen._lobpcg import _orthonormal_columns
from centralflows._eigen._tracking import path_coefficient, predicted_vectors
from centralflows.internal import count_compiles

from .helpers import OPTIMIZERS, advance_state, dense_hessian, small_mlp_objective

CONFIG = cf.EigConfig(tol=1e-10, max_iters=500)


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("k", [1, 3])
def test_effective_eigs_match_dense(optimizer, k, getkey):
    objective, w0 = small_mlp_objective()
    w, state = advance_state(optimizer, objective, w0)
    p = preconditioner_diagonal(optimizer.preconditioner(state, w))
    assert w.size > 5 * k  # the matrix-free LOBPCG path
    eigs = cf.track_eigs(
        lambda vs: objective.hvps(w, vs), p, random_vectors(getkey(), k, w.size, w.dtype), CONFIG
    )
    hessian = np.asarray(dense_hessian(objective, w))
    # Generalized problem H u = λ P u, solved densely.
    values, vectors = scipy.linalg.eigh(hessian, np.diag(np.asarray(p)))
    np.testing.assert_allclose(eigs.values, values[::-1][:k], rtol=1e-8)
    u = np.asarray(eigs.vectors)
    np.testing.assert_allclose(u @ np.diag(p) @ u.T, np.eye(k), atol=1e-10)  # UᵀPU = I
    residual = u @ hessian - eigs.values[:, None] * u * np.asarray(p)
    assert np.abs(residual).max() < 1e-6 * np.abs(values).max()
    # The same eigenvectors up to sign (eigenvalues here are simple).
    overlap = np.abs(np.sum(u * np.asarray(p) * vectors[:, ::-1][:, :k].T, axis=1))
    np.testing.assert_allclose(overlap, 1, atol=1e-6)
    assert np.all(np.asarray(eigs.residuals) < 1e-8)


def test_tiny_problem_uses_dense_solve():
    # n = 4 < 5k: no LOBPCG; exact eigenpairs of a known matrix.
    a = jnp.diag(jnp.array([4.0, 3.0, 2.0, 1.0]))
    p = jnp.array([2.0, 1.0, 1.0, 4.0])
    eigs = cf.track_eigs(lambda vs: vs @ a, p, jnp.ones((2, 4)), CONFIG)
    np.testing.assert_allclose(eigs.values, [3.0, 2.0], rtol=1e-12)
    assert int(eigs.hvps) == 4


def test_lobpcg_on_known_spectrum(getkey):
    n = 300
    q, _ = jnp.linalg.qr(jr.normal(getkey(), (n, n)))
    spectrum = jnp.linspace(-5.0, 10.0, n)
    a = (q * spectrum) @ q.T
    theta, x, residuals, iterations, products = lobpcg(
        lambda v: a @ v, jr.normal(getkey(), (n, 4)), tol=1e-10, max_iters=500
    )
    np.testing.assert_allclose(theta, spectrum[::-1][:4], rtol=1e-9)
    np.testing.assert_allclose(x.T @ x, np.eye(4), atol=1e-10)
    assert 10 < int(iterations) < 500
    residuals = jnp.linalg.norm(a @ x - x * theta, axis=0)
    assert float(jnp.max(residuals)) <= 1e-10 * 10  # the returned iterate's true residuals
    # AX and AP are carried: k products per iteration, 2k more every 4th and at the end
    # (3k per iteration when recomputed every time).
    assert int(products) <= 4 * (1 + iterations + 2 * (iterations // 4 + 1))
    # Started at the answer, the first Rayleigh–Ritz step already meets the tolerance.
    theta0, _, _, iterations0, products0 = lobpcg(
        lambda v: a @ v,
        q[:, n - 4 :][:, ::-1] @ jr.normal(getkey(), (4, 4)),
        tol=1e-10,
        max_iters=500,
    )
    assert (int(iterations0), int(products0)) == (0, 4)
    np.testing.assert_allclose(theta0, spectrum[::-1][:4], rtol=1e-12)


@pytest.mark.parametrize("duplicate", [False, True])
def test_orthonormal_columns_span_the_active_columns_in_order(duplicate, getkey):
    # Cholesky QR (or, with a repeated column, Householder QR): orthonormal active
    # columns, column j in the span of the first j + 1 as with QR, the inactive ones zero.
    n, k, count = 300, 5, 4
    x = jr.normal(getkey(), (n, k))
    if duplicate:  # a singular Gram matrix, where Cholesky QR cannot work
        x = x.at[:, 1].set(x[:, 0])
    q = np.asarray(_orthonormal_columns(x, jnp.arange(k) < count))
    np.testing.assert_allclose(q[:, :count].T @ q[:, :count], np.eye(count), atol=1e-13)
    assert np.all(q[:, count:] == 0)
    if not duplicate:
        reference = np.linalg.qr(np.asarray(x)[:, :count])[0]
        np.testing.assert_allclose(np.abs(reference.T @ q[:, :count]), np.eye(count), atol=1e-12)


def test_lobpcg_trusts_the_residuals_of_one_step_from_fresh_products(getkey):
    # Started near the top eigenvectors of a well separated spectrum, one iteration meets
    # the tolerance: its carried AX, one rotation of exact products, is not recomputed
    # (k products for the start, k for the residual block), and the residuals it
    # reports are the true ones to round-off.
    n, k = 200, 3
    q, _ = jnp.linalg.qr(jr.normal(getkey(), (n, n)))
    spectrum = jnp.concatenate([jnp.linspace(-0.1, 0.1, n - k), jnp.array([8.0, 9.0, 10.0])])
    a = (q * spectrum) @ q.T
    x0 = q[:, n - k :][:, ::-1] + 1e-3 * jr.normal(getkey(), (n, k))
    theta, x, residuals, iterations, products = lobpcg(lambda v: a @ v, x0, tol=1e-3, max_iters=50)
    assert (int(iterations), int(products)) == (1, 2 * k)
    true = jnp.linalg.norm(a @ x - x * theta, axis=0)
    np.testing.assert_allclose(residuals, true, rtol=0, atol=1e-12)
    assert float(jnp.max(true)) <= 1e-3 * 10
    np.testing.assert_allclose(theta, spectrum[::-1][:k], rtol=1e-5)


def test_lobpcg_soft_locked_columns_cost_no_residual_products(getkey):
    # Columns started at exact eigenvectors have converged from the first step: they
    # cost products in the fresh recomputes of AX and AP only, not in the residual
    # block, and `products` counts the columns actually multiplied.
    n, k = 200, 3
    q, _ = jnp.linalg.qr(jr.normal(getkey(), (n, n)))
    spectrum = jnp.linspace(0.0, 10.0, n)
    a = (q * spectrum) @ q.T
    applied = []

    def matvec(v):
        jax.debug.callback(lambda v: applied.append(v.shape[1]), v)
        return a @ v

    x0 = jnp.concatenate([q[:, -2:], jr.normal(getkey(), (n, 1))], axis=1)
    theta, _, _, iterations, products = lobpcg(matvec, x0, tol=1e-10, max_iters=500)
    np.testing.assert_allclose(theta, spectrum[::-1][:k], rtol=1e-9)
    iterations, products = int(iterations), int(products)
    assert products == sum(applied)
    assert iterations > 8
    fresh = iterations // 4 + 1  # every 4th iteration and the last
    assert products <= k * (1 + 2 * fresh) + iterations  # one residual product each


def _recording_matvec(a):
    """`v -> a v`, and the list of the widths of the blocks it was applied to."""
    applied = []

    def matvec(v):
        jax.debug.callback(lambda v: applied.append(v.shape[1]), v)
        return a @ v

    return matvec, applied


@pytest.mark.parametrize("mask", [(0, 0, 0, 0), (0, 1, 0, 0), (1, 0, 1, 0), (1, 1, 0, 1)])
def test_masked_products_multiply_the_masked_columns_alone_or_the_block_at_once(mask, getkey):
    # At most half the columns on: one product per masked column; more: one batch of the
    # whole block. Either way A c on the masked columns, zero elsewhere, and the count
    # of masked columns.
    n, m = 30, 4
    a = jr.normal(getkey(), (n, n))
    a = a + a.T
    cols = jr.normal(getkey(), (n, m))
    mask = jnp.asarray(mask, bool)
    matvec, applied = _recording_matvec(a)
    out, products = jax.jit(masked_products(matvec))(cols, mask)
    jax.effects_barrier()
    num = int(jnp.sum(mask))
    np.testing.assert_allclose(out, jnp.where(mask, a @ cols, 0), rtol=1e-12, atol=1e-12)
    assert int(products) == num
    assert applied == ([m] if 2 * num > m else [1] * num)


def test_masked_products_of_a_narrow_block_are_one_at_a_time():
    a = jnp.diag(jnp.arange(1.0, 6.0))
    matvec, applied = _recording_matvec(a)
    cols = jnp.ones((5, 2))
    out, products = jax.jit(masked_products(matvec))(cols, jnp.array([True, True]))
    jax.effects_barrier()
    np.testing.assert_allclose(out, a @ cols)
    assert int(products) == 2 and applied == [1, 1]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: type(o).__name__)
def test_warm_start_needs_fewer_hvps(optimizer, getkey):
    objective, w = small_mlp_objective(num=60, width=16)
    w, state = advance_state(optimizer, objective, w)
    config = cf.EigConfig(max_iters=500)  # the default tolerance
    p = preconditioner_diagonal(optimizer.preconditioner(state, w))
    hvps = lambda x: lambda vs: objective.hvps(x, vs)
    k = 2
    first = cf.track_eigs(hvps(w), p, random_vectors(getkey(), k, w.size, w.dtype), config)
    # A nearby point, as between two logged times of a smooth trajectory. Measured here:
    # warm 6-12 HVPs against cold 32-44 (k = 2, default tolerance).
    w_next = w - 1e-3 * objective.grad(w) / jnp.linalg.norm(objective.grad(w))
    p_next = p
    cold = cf.track_eigs(hvps(w_next), p_next, random_vectors(getkey(), k, w.size, w.dtype), config)
    warm = cf.track_eigs(hvps(w_next), p_next, first.vectors, config)
    # Each is within ‖r‖²/gap of the truth, ‖r‖ ≤ tol·θ_max (Rayleigh quotient error).
    theta = np.asarray(cold.values)
    bound = 2 * (config.tol * theta[0]) ** 2 / (theta[0] - theta[1])
    np.testing.assert_allclose(warm.values, cold.values, rtol=0, atol=bound)
    assert int(warm.hvps) * 2 <= int(cold.hvps), (int(warm.hvps), int(cold.hvps))


def test_path_coefficient_places_the_point_on_the_line_through_the_last_two(getkey):
    last, before, off = (jr.normal(getkey(), (5,)) for _ in range(3))
    step = last - before
    off = off - jnp.vdot(off, step) / jnp.vdot(step, step) * step  # orthogonal to the line
    for alpha in (-1.0, -0.3, 0.0, 0.7, 1.0):
        w = last + alpha * step + off
        np.testing.assert_allclose(path_coefficient(w, last, before), alpha, atol=1e-12)
    assert float(path_coefficient(last + 3 * step, last, before)) == 1.0  # clipped
    nowhere = jnp.full(5, jnp.nan)
    assert float(path_coefficient(last, nowhere, nowhere)) == 0.0  # no refresh yet
    assert float(path_coefficient(last + step, last, last)) == 0.0  # no step between them


def _rotated(theta, dim=6):
    """Orthonormal rows: the top two eigenvectors of `diag(3, 2, 1, ...)` turned by
    `theta` in the planes (0, 2) and (1, 3)."""
    c, s = np.cos(theta), np.sin(theta)
    v = np.zeros((2, dim))
    v[0, [0, 2]] = c, s
    v[1, [1, 3]] = c, -s
    return jnp.asarray(v)


def test_predicted_vectors_extrapolate_a_smooth_path_and_return_to_an_oscillations_start():
    # Eigenvectors turning at a constant rate: the prediction from the last two (one of
    # them with the sign flipped and the pair swapped, as a solver may return them) is
    # second-order accurate, where the last vectors are first-order.
    p = jnp.ones(6)
    before = _rotated(0.0)[::-1] * jnp.array([[-1.0], [1.0]])

    def errors(h):
        """Distances from the span at 2h of the last span (at h) and of the prediction."""
        last, target = _rotated(h), _rotated(2 * h)
        error = lambda v: float(jnp.linalg.norm(target - (target @ v.T) @ v))
        return error(last), error(predicted_vectors(last, before, 1.0, p, 2))

    (plain, predicted), (plain_half, predicted_half) = errors(0.01), errors(0.005)
    np.testing.assert_allclose(plain / plain_half, 2, rtol=1e-3)  # first order
    np.testing.assert_allclose(predicted / predicted_half, 4, rtol=1e-3)  # second order
    assert predicted < 0.05 * plain
    last = _rotated(0.01)
    # Back at the point before (an iterate oscillating about the edge of stability):
    # the vectors there, in the last ones' order and signs; α = 0 changes nothing.
    back = predicted_vectors(last, before, -1.0, p, 2)
    np.testing.assert_allclose(back, _rotated(0.0), atol=1e-12)
    assert bool(jnp.all(predicted_vectors(last, before, 0.0, p, 2) == last))
    # Rows past the tracked count are left as they were.
    np.testing.assert_array_equal(predicted_vectors(last, before, 1.0, p, 1)[1], last[1])


@pytest.mark.slow  # 26 s (12 refreshes, each against a plain solve)
def test_refreshes_along_a_path_start_from_the_prediction():
    # GD iterates on the small MLP: each refresh warm-started from the prediction costs
    # fewer products than from the last vectors alone, and finds the same eigenpairs.
    objective, w = small_mlp_objective()
    optimizer = cf.GD(lr=0.05)
    config = cf.EigConfig(initial_neigs=3, max_neigs=3, max_iters=500)
    p = jnp.full(w.size, 1 / 0.05)
    tracking = init_tracking(jr.key(0), optimizer, w, config)
    predicted, plain = [], []
    for step in range(12):
        last = tracking.effective.vectors
        tracking = refresh_tracking(tracking, objective, w, p, config)
        if step >= 2:
            alone = cf.track_eigs(lambda vs: objective.hvps(w, vs), p, last, config)
            predicted.append(int(tracking.effective.hvps))
            plain.append(int(alone.hvps))
            theta = np.asarray(alone.values)
            bound = 2 * (config.tol * theta[0]) ** 2 / np.min(np.abs(np.diff(theta)))
            np.testing.assert_allclose(tracking.effective.values, theta, rtol=0, atol=bound)
        w = w - 0.05 * objective.grad(w)
    assert sum(predicted) < 0.8 * sum(plain), (predicted, plain)


def test_tracking_grows_past_threshold(getkey):
    # Effective spectrum (diagonal) 3, 2.5, 1.8, 1.0, 0.5, ...: with threshold 1.5 the
    # tracked set must grow to include 1.0, the first eigenvalue below the threshold.
    spectrum = jnp.concatenate([jnp.array([3.0, 2.5, 1.8, 1.0]), jnp.linspace(0.5, 0.0, 36)])

    objective = cf.Objective.from_function(lambda w: 0.5 * jnp.sum(spectrum * w**2), spectrum)
    optimizer = cf.GD(lr=1.0)
    w = jnp.ones(40)
    config = cf.EigConfig(tol=1e-10, max_iters=500, track_threshold=1.5, max_neigs=6)
    tracking = init_tracking(getkey(), optimizer, w, config)
    p = jnp.ones(40)
    tracking = refresh_tracking(tracking, objective, w, p, config)
    sizes = [int(tracking.effective.count)]
    while (grown := grow_tracking(tracking, config)) is not None:
        tracking = refresh_tracking(grown, objective, w, p, config)
        sizes.append(int(tracking.effective.count))
    assert sizes == [1, 2, 3, 4]
    values = tracking.effective.values  # room for max_neigs, NaN past the tracked count
    np.testing.assert_allclose(values, [3.0, 2.5, 1.8, 1.0, np.nan, np.nan], rtol=1e-9)


def test_a_tracked_count_below_capacity_costs_its_own_products_in_one_program(getkey):
    # Tracked sets are padded to eig.max_neigs rows: every count shares one compiled
    # program, does the work of an unpadded solve of its width (the same iterations and
    # products: none for the padding) and leaves the untracked rows as they were.
    objective, w0 = small_mlp_objective()
    optimizer = cf.RMSProp(lr=0.01, beta2=0.9)
    w, state = advance_state(optimizer, objective, w0)
    p = preconditioner_diagonal(optimizer.preconditioner(state, w))
    # At tol = 1e-10 a residual can land within rounding of the tolerance, and the two
    # programs' round-off then differ by an iteration (seen for counts 3 and 4).
    config = cf.EigConfig(tol=1e-8, max_iters=500, max_neigs=4)
    assert w.size > 5 * config.max_neigs  # the matrix-free LOBPCG path
    start = init_tracking(getkey(), optimizer, w, config)
    hessian = np.asarray(dense_hessian(objective, w))
    exact = scipy.linalg.eigh(hessian, np.diag(np.asarray(p)), eigvals_only=True)[::-1]
    compiled = []
    for count in (1, 2, 3, 4):
        tracking = eqx.tree_at(
            lambda t: (t.effective.count, t.raw.count), start, (jnp.array(count),) * 2
        )
        with count_compiles() as compiles:
            eigs = refresh_tracking(tracking, objective, w, p, config).effective
        compiled.append(compiles.compiled)
        alone = cf.track_eigs(
            lambda vs: objective.hvps(w, vs), p, start.effective.vectors[:count], config
        )
        assert (int(eigs.iterations), int(eigs.hvps)) == (int(alone.iterations), int(alone.hvps))
        assert bool(eigs.converged)
        np.testing.assert_allclose(eigs.values[:count], exact[:count], rtol=2e-5)
        assert np.all(np.isnan(eigs.values[count:])) and np.all(np.isnan(eigs.residuals[count:]))
        np.testing.assert_array_equal(eigs.vectors[count:], start.effective.vectors[count:])
    assert compiled[0] >= 1 and compiled[1:] == [0, 0, 0]


def test_raw_eigs_tracked_for_diagonal_preconditioner(getkey):
    objective, w0 = small_mlp_objective()
    optimizer = cf.RMSProp(lr=0.01, beta2=0.9)
    w, state = advance_state(optimizer, objective, w0)
    tracking = init_tracking(getkey(), optimizer, w, CONFIG)
    assert tracking.raw is not None
    p = preconditioner_diagonal(optimizer.preconditioner(state, w))
    tracking = refresh_tracking(tracking, objective, w, p, CONFIG)
    top = np.linalg.eigvalsh(np.asarray(dense_hessian(objective, w)))[-1]
    np.testing.assert_allclose(tracking.raw.values[0], top, rtol=1e-8)


def test_eig_config_rejects_bad_values():
    with pytest.raises(ValueError, match="frequency"):
        cf.EigConfig(frequency=0)
    with pytest.raises(ValueError, match="initial_neigs"):
        cf.EigConfig(initial_neigs=5, max_neigs=2)


def test_lobpcg_stays_accurate_after_a_track_event():
    # A block near converged eigenvectors plus one random vector (as after a track event
    # grows the tracked set). With AX carried between iterations instead of recomputed,
    # the Ritz values grew to 6e110 here (1e68 on digits) within the 500 iterations.
    rng = np.random.default_rng(0)
    n, k = 300, 6
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    top = np.array([2.0, 1.99, 1.72, 1.57, 1.5, 1.42])
    a = jnp.asarray(q * np.concatenate([top, rng.uniform(-0.5, 1.4, n - k)]) @ q.T)
    x0 = np.concatenate([q[:, :5] + 1e-9 * rng.normal(size=(n, 5)), rng.normal(size=(n, 1))], 1)
    theta, x, rnorm, iterations, _ = lobpcg(
        lambda c: a @ c, jnp.asarray(x0), tol=0.0, max_iters=500
    )
    np.testing.assert_allclose(theta, top, rtol=1e-10)
    residuals = jnp.linalg.norm(a @ x - x * theta, axis=0)
    np.testing.assert_allclose(rnorm, residuals, rtol=1e-6, atol=1e-12)
    assert int(iterations) < 500 and float(jnp.max(rnorm)) <= 1000 * np.finfo(np.float64).eps * 2


@pytest.mark.parametrize("seed", [1, 6, 14, 15, 17])
def test_lobpcg_converges_in_float32_after_a_track_event(seed):
    # As above in float32, on a spectrum like the small MLP's of test_resume. With AP
    # carried between iterations, these seeds ran all 200 iterations and ended with
    # residuals of 3e-4 to 2e-3 (and Ritz values above the top eigenvalue on the MLP).
    rng = np.random.default_rng(seed)
    n, k = 75, 3
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    top = np.array([0.92, 0.855, 0.843, 0.646, 0.508])
    a = jnp.asarray(q * np.concatenate([top, rng.uniform(-0.3, 0.45, n - 5)]) @ q.T, jnp.float32)
    x0 = np.concatenate([q[:, :2] + 1e-4 * rng.normal(size=(n, 2)), rng.normal(size=(n, 1))], 1)
    theta, x, rnorm, iterations, _ = lobpcg(
        lambda c: a @ c, jnp.asarray(x0, jnp.float32), tol=1e-9, max_iters=200
    )
    assert int(iterations) < 200
    assert float(jnp.max(rnorm)) <= 1000 * np.finfo(np.float32).eps * 0.92
    np.testing.assert_allclose(theta, top[:k], rtol=1e-5)
