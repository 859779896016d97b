"""The built-in problems (`centralflows.problems`) against their closed forms, and the
`[problem]` config section that runs them."""

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import centralflows as cf
from centralflows._config import ConfigError, validate_config
from centralflows.cli import main
from centralflows.problems import PROBLEMS, LeastSquares, Quartic, ScalarFactorisation, Toy

from .test_flows import ETA, OPTIONS, S0, T_STAR, TAU, Y_STAR, B, C, toy_loss

# --- the toy -------------------------------------------------------------------------------


def test_toy_is_the_toy_of_the_flow_tests(getkey):
    toy = Toy(s0=S0, b=B, c=C)
    for _ in range(3):
        x, y = jr.normal(getkey(), (2,))
        w = {"x": x, "y": y}
        assert float(toy(w)) == pytest.approx(float(toy_loss(w)), rel=1e-14)
    assert toy.onset_time(ETA) == pytest.approx(T_STAR, rel=1e-14)
    assert toy.rest_point(ETA) == pytest.approx(Y_STAR, rel=1e-14)


# Onset at t* = (y0 − y*)/(ηb) = 20 for y* = (s0 − 2/η)/c = −1: a short flow.
FAST_TOY = Toy(s0=3.0, b=0.1, c=1.0)


# 26 s. test_flows.py's toy tests check the same onset, rest point, variance and predicted
# loss on the same loss, which test_toy_is_the_toy_of_the_flow_tests ties to `Toy`.
@pytest.mark.slow
def test_toy_central_flow_onset_and_rest():
    toy = FAST_TOY
    t_star = toy.onset_time(ETA)
    assert t_star == pytest.approx(20.0)
    sol = cf.central_flow(toy, toy.w0, cf.GD(ETA), 30, saveat=[0, 10, 30], options=OPTIONS)
    # Gradient flow before the onset: y(t) = y0 − ηbt.
    np.testing.assert_allclose(sol.w["y"][:2], -ETA * toy.b * np.array([0, 10]), atol=1e-12)
    # The relaxed constraint activates τ before the sharpness would reach 2 (see
    # tests/test_flows.py); the event is located on Tsit5's dense output (to ~1e-7).
    assert float(sol.eos_onset) == pytest.approx(t_star - TAU, abs=1e-4)
    # At rest (10 steps after the onset, 40 relaxation times): y*, σ² = 2b/c (X = σ²/η),
    # and the predicted loss b y* + 2b/(ηc), to the solver's tolerances.
    assert float(sol.w["y"][-1]) == pytest.approx(toy.rest_point(ETA), abs=1e-6)
    assert float(sol.predicted_variances[-1, 0]) * ETA == pytest.approx(
        toy.oscillation_variance, rel=1e-5
    )
    assert toy.oscillation_variance == pytest.approx(2 * toy.b / toy.c)
    assert float(sol.predicted_loss[-1]) == pytest.approx(toy.predicted_loss(ETA), rel=1e-5)


def test_toy_onset_from_off_the_line_is_within_the_stated_bound():
    # From x0 ≠ 0 the onset comes later, by at most c x0²/(4ηb a(y0)) (here 0.0167).
    toy = Toy(s0=3.0, b=0.1, c=1.0, x0=0.1)
    bound = toy.c * toy.x0**2 / (4 * ETA * toy.b * toy.s0)
    sol = cf.stable_flow(toy, toy.w0, cf.GD(ETA), 21, options=OPTIONS)
    delay = float(sol.eos_onset) - toy.onset_time(ETA)
    assert 0 < delay <= bound * (1 + 1e-3), (delay, bound)


# --- least squares -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def least_squares():
    return LeastSquares(n=20, d=50, key=jr.key(0))


def test_least_squares_tracked_sharpness_is_the_dense_one(least_squares):
    problem = least_squares
    A, n = problem.inputs, problem.inputs.shape[0]
    dense = float(jnp.linalg.eigvalsh(A.T @ A / n)[-1])
    assert float(problem.sharpness()) == pytest.approx(dense, rel=1e-12)
    # The Hessian is AᵀA/n at every w: at w0 = 0 and at a random w.
    for w in (problem.w0, [jr.normal(jr.key(1), (50,))]):
        hessian = jax.hessian(lambda v: problem([v]))(w[0])
        np.testing.assert_allclose(hessian, A.T @ A / n, atol=1e-12)
    # The eigen tracking (LOBPCG: d = 50 > 5k) finds η λ_max along the gradient flow.
    lr = 0.3
    sol = cf.stable_flow(problem, problem.w0, cf.GD(lr), 3, saveat=[0, 3])
    np.testing.assert_allclose(sol.effective_sharpness, lr * dense, rtol=1e-6)


def test_least_squares_gd_is_monotone_exactly_below_the_threshold(least_squares):
    problem = least_squares
    threshold = 2 / float(problem.sharpness())
    below = cf.discrete_losses(problem, problem.w0, cf.GD(0.95 * threshold), 200)
    # Each eigencomponent of the residual shrinks by |1 − ηλ| < 1; the loss falls at
    # every step until it reaches round-off.
    assert np.all(np.diff(below) <= 1e-15 * below[0])
    assert float(below[-1]) < 1e-6 * float(below[0])
    above = cf.discrete_losses(problem, problem.w0, cf.GD(1.05 * threshold), 200)
    assert np.any(np.diff(above) > 0)
    assert float(above[-1]) > float(above[0])  # it diverges along the top eigenvector


def test_deep_linear_network_is_least_squares_of_the_product():
    deep = LeastSquares(n=6, d=10, depth=3, width=4, key=jr.key(2))
    assert [w.shape for w in deep.w0] == [(10, 4), (4, 4), (4,)]
    beta = functools.reduce(jnp.matmul, deep.w0)
    residual = deep.inputs @ beta - deep.targets
    assert float(deep(deep.w0)) == pytest.approx(float(residual @ residual / 12), rel=1e-12)
    # Unlike depth 1, the Hessian changes with w.
    objective = cf.Objective.from_function(deep, deep.w0)
    w0 = jax.flatten_util.ravel_pytree(deep.w0)[0]
    h0, h1 = (jax.hessian(objective.value)(w) for w in (w0, 2 * w0))
    assert not np.allclose(h0, h1)


# --- the scalar factorisation --------------------------------------------------------------

FACTORISATION = ScalarFactorisation()  # y = 1, from (a, b) = (1.5, 0.5)


def _imbalance(w):
    return np.asarray(w["a"]) ** 2 - np.asarray(w["b"]) ** 2


def test_scalar_factorisation_sharpness_on_the_minima_and_imbalance_update(getkey):
    problem = ScalarFactorisation(y=2.0)
    hessian = jax.hessian(lambda v: problem({"a": v[0], "b": v[1]}))
    for a in (0.5, 2**0.5, 3.0):  # on M = {ab = y}: the Hessian is (b, a)(b, a)ᵀ
        w = jnp.array([a, problem.y / a])
        sharpness = float(jnp.linalg.eigvalsh(hessian(w))[-1])
        assert sharpness == pytest.approx(problem.sharpness_at_minimum(a**2 - w[1] ** 2))
    assert problem.sharpness_at_minimum(0.0) == 2 * problem.y == 2 / problem.critical_lr
    # One GD step multiplies the imbalance q = a² − b² by 1 − η²r², r = ab − y, exactly.
    lr = 0.3
    for _ in range(3):
        a, b = jr.normal(getkey(), (2,))
        w = {"a": a, "b": b}
        step = cf.discrete_run(problem, w, cf.GD(lr), 1).w
        r = float(a * b) - problem.y
        np.testing.assert_allclose(_imbalance(step), _imbalance(w) * (1 - lr**2 * r**2), rtol=1e-12)


def test_scalar_factorisation_subcritical_rate_is_that_of_the_limit_minimum():
    # ηy < 1. From (1.5, 0.5) gradient flow ends at the sharpness √(q0² + 4y²) = 2.83: for
    # η = 0.5 that is stable and GD's loss falls at every step; for η ≥ 0.8 it is not, GD
    # oscillates first, and its oscillation lowers the imbalance until ηS < 2.
    problem = FACTORISATION
    flow_limit = problem.sharpness_at_minimum(float(_imbalance(problem.w0)))
    lrs = jnp.array([0.5, 0.8, 0.9, 0.95])
    run = jax.vmap(lambda lr: cf.discrete_run(problem, problem.w0, cf.GD(lr), 2000))(lrs)
    for lr, losses, q in zip(np.asarray(lrs), np.asarray(run.losses), _imbalance(run.w)):
        assert losses[-1] < 1e-28  # a global minimum
        limit = problem.sharpness_at_minimum(q)
        assert problem.sharpness_at_minimum(0.0) < limit and lr * limit < 2
        # The residual r = ±√(2L) shrinks by |1 − ηS∞| per step, measured where it is
        # small (higher-order terms ~ r) but far above round-off (~1e-16/r).
        window = (losses[:-1] < 1e-14) & (losses[1:] > 1e-22)
        ratios = np.sqrt(losses[1:][window] / losses[:-1][window])
        assert window.sum() >= 8
        np.testing.assert_allclose(ratios, abs(1 - lr * limit), rtol=1e-4)
        if lr * flow_limit < 2:
            assert np.all(np.diff(losses) <= 0) and limit == pytest.approx(flow_limit, rel=0.01)
        else:
            assert np.any(np.diff(losses) > 0) and 1.8 < lr * limit < 2


def test_scalar_factorisation_critical_loss_is_a_power_law():
    # ηy = 1 for y = 2 (η = 0.5), from the default start scaled by √y, and from the
    # balanced start a = b = 1: k L_k → y²/4 and y²/8. The approach to the law is slow
    # (relative error 2% at k = 1e5 from the unbalanced start), hence the tolerances.
    problem = ScalarFactorisation(y=2.0)
    starts = {"a": jnp.array([1.5 * 2**0.5, 1.0]), "b": jnp.array([0.5 * 2**0.5, 1.0])}
    steps = 100_000
    run = jax.vmap(lambda w: cf.discrete_run(problem, w, cf.GD(problem.critical_lr), steps))(starts)
    unbalanced, balanced = np.asarray(run.losses)
    assert steps * unbalanced[-1] == pytest.approx(steps * problem.critical_loss(steps), rel=0.03)
    assert steps * balanced[-1] == pytest.approx(steps * problem.critical_loss(steps) / 2, rel=3e-3)
    slope = math.log10(unbalanced[steps] / unbalanced[steps // 10])
    assert slope == pytest.approx(-1, abs=0.05)  # L ∝ k^-1, |r| ∝ k^(-1/2)
    # The imbalance goes to 0 (the flattest minimum) as a power law too: q² k → 2y².
    q_unbalanced, q_balanced = _imbalance(run.w)
    assert steps * q_unbalanced**2 == pytest.approx(2 * problem.y**2, rel=0.03)
    assert q_balanced == 0


def test_scalar_factorisation_supercritical_converges_to_the_period_two_orbit():
    problem = FACTORISATION
    lrs = [1.05, 1.1, 1.15]  # 1 < ηy < √5 − 1: the orbit is stable
    early, late = 40, 120  # the distance at 120 steps is above round-off for these η

    def distances(steps):
        def distance(lr):
            w = cf.discrete_run(problem, problem.w0, cf.GD(lr), steps).w
            x1, x2 = problem.period_two_orbit(lr)  # even steps near one of the points
            return min(math.hypot(w["a"] - x, w["b"] - x) for x in (x1, x2))

        return np.array([float(distance(lr)) for lr in lrs])

    d_early, d_late = distances(early), distances(late)
    measured = (d_late / d_early) ** (1 / (late - early))
    predicted = np.array([problem.period_two_rate(lr) for lr in lrs])
    np.testing.assert_allclose(measured, predicted, rtol=1e-3)
    # The losses alternate between ½r_1² and ½r_2², r_i = x_i² − y, whose mean is
    # (y² − 1/η²)/4.
    for lr in lrs:
        losses = np.asarray(cf.discrete_losses(problem, problem.w0, cf.GD(lr), 2000))
        orbit = [0.5 * (x**2 - problem.y) ** 2 for x in problem.period_two_orbit(lr)]
        np.testing.assert_allclose(sorted(losses[-2:]), sorted(orbit), rtol=1e-10)
        assert np.mean(orbit) == pytest.approx((problem.y**2 - 1 / lr**2) / 4)
    # Beyond ηy = √5 − 1 = 1.236 the multiplier along a = b is below −1 and the orbit
    # has doubled: at η = 1.24 the losses repeat every 4 steps, not every 2.
    assert problem.period_two_multipliers(1.24)[0] < -1 < problem.period_two_multipliers(1.23)[0]
    losses = np.asarray(cf.discrete_losses(problem, problem.w0, cf.GD(1.24), 4000))[-8:]
    np.testing.assert_allclose(losses[4:], losses[:4], rtol=1e-9)
    assert np.all(np.abs(losses[2:4] / losses[:2] - 1) > 0.01)


# 12 s on an idle machine, 30 s on a busy one: compiling the central flow for this loss.
# scripts/figures/factorisation_regimes.py solves and prints the same flows at more η.
@pytest.mark.slow
def test_scalar_factorisation_central_flow_ends_at_sharpness_two_over_lr():
    # Sub-critical with a transient (η = 0.9): the central flow ends at the minimum with
    # ηS = 2 exactly, q = √(4/η² − 4y²); GD's limit is flatter. Super-critical (η = 1.1):
    # it rests on the balanced line where ηS = 2, at x² = (y + 2/η)/3, with
    # σ² = 4(y − 1/η)/9 and predicted loss 2(y² − 1/η²)/9: 8/9 of GD's mean loss on its
    # orbit (the flow's cubic expansion misses the loss's fourth derivative).
    problem = FACTORISATION
    sub = cf.central_flow(problem, problem.w0, cf.GD(0.9), 60)
    assert float(sub.effective_sharpness[-1]) == pytest.approx(2, abs=1e-6)
    assert float(_imbalance(sub.w)[-1]) == pytest.approx(math.sqrt(4 / 0.9**2 - 4), rel=1e-4)
    lr, y = 1.1, problem.y
    sup = cf.central_flow(problem, problem.w0, cf.GD(lr), 100)
    rest = math.sqrt((y + 2 / lr) / 3)
    np.testing.assert_allclose([sup.w["a"][-1], sup.w["b"][-1]], rest, rtol=1e-4)
    variance = float(sup.predicted_variances[-1, 0]) * lr  # X = σ²/η
    assert variance == pytest.approx(4 * (y - 1 / lr) / 9, rel=1e-4)
    assert float(sup.predicted_loss[-1]) == pytest.approx(2 * (y**2 - 1 / lr**2) / 9, rel=1e-4)


# --- the quartic ---------------------------------------------------------------------------


def test_quartic_critical_points():
    quartic = Quartic()
    grad = jax.grad(quartic)
    for x in (quartic.global_minimum, quartic.maximum, quartic.local_minimum):
        assert abs(float(grad(jnp.asarray(x)))) < 1e-12
    assert quartic.global_minimum == pytest.approx((9 - math.sqrt(33)) / 8)
    assert float(quartic(jnp.asarray(3.0))) == pytest.approx(1.62276)
    assert float(quartic(jnp.asarray(quartic.global_minimum))) == pytest.approx(0, abs=1e-6)
    curvature = jax.grad(grad)
    assert float(curvature(jnp.asarray(3.0))) == pytest.approx(12)


def test_quartic_flow_stops_at_the_local_minimum_and_gd_jumps_out():
    quartic = Quartic()
    # Gradient flow: −ηL'' ≈ −1.2 per unit of time near 3, so 40 units get to 1e-20.
    sol = cf.stable_flow(quartic, quartic.w0, cf.GD(0.1), 40)
    assert float(sol.w[-1]) == pytest.approx(quartic.local_minimum, abs=1e-8)
    # GD at η = 0.1: the first step goes to 4 − 31η = 0.9, past the maximum at 1.843,
    # then converges to the global minimum, where ηL'' = 1.49 < 2 is stable.
    jumps = cf.discrete_run(quartic, quartic.w0, cf.GD(0.1), 100)
    assert float(jumps.losses[1]) == pytest.approx(float(quartic(jnp.asarray(0.9))))
    assert float(jumps.w) == pytest.approx(quartic.global_minimum, abs=1e-8)
    # With a small step GD stays in the basin of 3, as the flow does.
    stays = cf.discrete_run(quartic, quartic.w0, cf.GD(0.05), 100)
    assert float(stays.w) == pytest.approx(quartic.local_minimum, abs=1e-8)


def _quartic_derivatives(x: float) -> tuple[float, float, float]:
    """L'(x), L''(x), L'''(x) of the quartic."""
    return 4 * x**3 - 21 * x**2 + 30 * x - 9, 12 * x**2 - 42 * x + 30, 24 * x - 42


def sign_descent(lr: float) -> cf.RMSProp:
    """RMSProp with β₂ → 0, which is sign descent x ← x − η sign(L'(x)): with β₂ = 1e-16,
    to a relative β₂ ν/g² per step (below 1e-12 on the quartic's orbits)."""
    return cf.RMSProp(lr, beta2=1e-16)


def _sign_descent_orbit(lr: float) -> set[float]:
    """Sign descent's period-2 orbit from x0 = 4 (docs/problems.md): it steps left by η
    while L' > 0, until the first 4 − Kη where L' < 0, i.e. in (x_max, 3) or below the
    global minimum, and then alternates between 4 − (K − 1)η and 4 − Kη."""
    if lr < 4 - Quartic.maximum:  # the first point below 3 lies in (x_max, 3)
        k = math.floor(1 / lr) + 1
    elif lr < 4 - Quartic.global_minimum:  # 4 − η in (x_g, x_max), 4 − 2η < 0 < x_g
        k = 2
    else:  # 4 − η < x_g
        k = 1
    return {4 - (k - 1) * lr, 4 - k * lr}


def test_quartic_sign_descent_crosses_the_maximum_iff_its_first_step_does():
    quartic = Quartic()
    lrs = [0.3, 0.45, 1.5, 2.1, 2.2, 2.5, 3.0, 3.8]  # 4 − x_max = 2.157, 4 − x_g = 3.593
    ends = [
        jax.vmap(lambda lr: cf.discrete_run(quartic, quartic.w0, sign_descent(lr), n).w)(
            jnp.array(lrs)
        )
        for n in (40, 41)
    ]
    for lr, *orbit in zip(lrs, *map(np.asarray, ends)):
        expected = sorted(_sign_descent_orbit(lr))
        np.testing.assert_allclose(sorted(orbit), expected, rtol=1e-10)
        crossed = min(expected) < quartic.maximum
        assert crossed == (lr > 4 - quartic.maximum)


def test_quartic_rmsprop_first_step_is_the_lr_and_decides_the_minimum():
    # ν starts at g0² (or at 0 with bias correction, ν̂1 = g0²): the first step is η.
    quartic = Quartic()
    lrs = jnp.array([0.1, 1.0, 2.1, 2.2, 2.5, 3.0])
    for beta2, bias_correction in [(0.9, False), (0.999, False), (0.99, True)]:
        rmsprop = lambda lr: cf.RMSProp(lr, beta2=beta2, bias_correction=bias_correction)
        first = jax.vmap(lambda lr: cf.discrete_run(quartic, quartic.w0, rmsprop(lr), 1).w)(lrs)
        np.testing.assert_allclose(first, 4 - lrs, rtol=1e-14)
    # With β₂ = 0.999 it ends where the first step went: at 3 from 4 − η > x_max, at the
    # global minimum from below (4 − η < x_max iff η > 2.157).
    rmsprop = lambda lr: cf.RMSProp(lr, beta2=0.999)
    ends = jax.vmap(lambda lr: cf.discrete_run(quartic, quartic.w0, rmsprop(lr), 1000).w)(lrs)
    expected = np.where(4 - lrs > quartic.maximum, 3.0, quartic.global_minimum)
    np.testing.assert_allclose(ends, expected, rtol=1e-10)


def _rmsprop_at_the_local_minimum(lr):
    """RMSProp (β₂ = 0.9) from x = 3.001 with ν0 a hundredth of ν at the edge of stability
    (√ν = ηL''(3)/2): unstable at once."""
    quartic, optimizer = Quartic(), cf.RMSProp(lr, beta2=0.9)
    w0 = jnp.asarray(3.001)
    state = optimizer.init(w0[None], jax.grad(quartic)(w0)[None])
    nu0 = jnp.full((1,), (6 * lr) ** 2 / 100)  # ν of the flat parameter vector
    return quartic, w0, optimizer, eqx.tree_at(lambda s: s.nu, state, nu0)


def test_quartic_rmsprop_oscillates_about_the_local_minimum_by_exactly_the_lr():
    # A period-2 orbit x_a, x_b of RMSProp in 1D has ν = g² at both points, so
    # |L'(x_a)| = |L'(x_b)| and |x_a − x_b| = η. For a quartic L'(x̄ ± η/2) sum to
    # 2L'(x̄) + (η²/4)L'''(x̄): the centre x̄ solves L'(x̄) + ½ (η²/4) L'''(x̄) = 0, the central
    # flow's rest condition with σ² = η²/4.
    lr = 0.1
    quartic, w0, optimizer, state = _rmsprop_at_the_local_minimum(lr)
    x_a, x_b = (
        float(cf.discrete_run(quartic, w0, optimizer, n, opt_state0=state).w) for n in (2000, 2001)
    )
    assert abs(x_a - x_b) == pytest.approx(lr, rel=1e-12)
    (g_a, *_), (g_b, *_) = _quartic_derivatives(x_a), _quartic_derivatives(x_b)
    assert g_a == pytest.approx(-g_b, rel=1e-10)
    centre = (x_a + x_b) / 2
    slope, _, third = _quartic_derivatives(centre)
    assert slope + 0.5 * lr**2 / 4 * third == pytest.approx(0, abs=1e-12)
    assert centre - 3 == pytest.approx(-1.25 * lr**2 / 4, rel=0.01)  # L'''/L'' = 30/12


# 45 to 60 s: compiling RMSProp's central flow for the quartic.
@pytest.mark.slow
def test_quartic_rmsprop_central_flow_rests_where_the_orbit_is_centred():
    # The flow holds the effective sharpness at 2 with ν = L'² + L''²σ² and √ν = ηL''/2, so
    # σ² = η²/4 − (L'/L'')², a relative (ηL'''/4L'')² ≈ 0.4% below the orbit's η²/4.
    lr = 0.1
    quartic, w0, optimizer, state = _rmsprop_at_the_local_minimum(lr)
    sol = cf.central_flow(quartic, w0, optimizer, 40, opt_state0=state)
    x = float(sol.w[-1])
    slope, curvature, third = _quartic_derivatives(x)
    nu = float(sol.opt_state.nu[-1, 0])
    variance = float(sol.predicted_variances[-1, 0]) * lr / math.sqrt(nu)  # Σ = X P⁻¹
    assert float(sol.effective_sharpness[-1]) == pytest.approx(2, abs=1e-6)
    assert math.sqrt(nu) == pytest.approx(lr * curvature / 2, rel=1e-6)
    assert slope + 0.5 * variance * third == pytest.approx(0, abs=1e-8)
    assert variance == pytest.approx(lr**2 / 4 - (slope / curvature) ** 2, rel=1e-5)
    orbit = [cf.discrete_run(quartic, w0, optimizer, n, opt_state0=state) for n in (2000, 2001)]
    mean_loss = np.mean([float(quartic(run.w)) for run in orbit])
    assert float(sol.predicted_loss[-1]) == pytest.approx(mean_loss, rel=1e-4)


# --- configs -------------------------------------------------------------------------------


def test_problem_configs_validate_and_replace_data_and_model():
    cfg = validate_config({"opt": {"lr": 0.5}, "problem": {"name": "toy", "b": 1}})
    assert "data" not in cfg and "model" not in cfg
    assert cfg["problem"] == {"name": "toy", "s0": 1.0, "b": 1.0, "c": 1.0, "x0": 0.0, "y0": 0.0}
    for name, spec in PROBLEMS.items():
        cfg = validate_config({"opt": {"lr": 0.1}, "problem": {"name": name}})
        assert cfg["problem"] == {"name": name, **{k: o.default for k, o in spec.options.items()}}


@pytest.mark.parametrize(
    "problem, extra, message",
    [
        ({"name": "toyy"}, {}, 'problem.name = "toyy" is invalid; expected one of "toy"'),
        ({"name": "toy", "s1": 3}, {}, "unknown key 'problem.s1'"),
        ({"name": "least_squares", "dd": 3}, {}, "did you mean 'problem.d'"),
        ({"name": "toy", "b": -1}, {}, "problem.b = -1 is invalid; expected a float > 0"),
        ({"name": "quartic", "x0": "4"}, {}, 'problem.x0 = "4" has the wrong type'),
        ({}, {}, "missing required key 'problem.name'"),
        ({"name": "toy"}, {"data": {"n": 10}}, "[problem] replaces [data] and [model]"),
    ],
)
def test_bad_problem_configs_are_refused(problem, extra, message):
    with pytest.raises(ConfigError) as error:
        validate_config({"opt": {"lr": 0.5}, "problem": problem, **extra})
    assert message in str(error.value)


def test_the_cli_runs_a_problem_config(tmp_path, capsys):
    argv = ["run", "configs/gd-quartic.toml", "--out", str(tmp_path), "--name", "q", "--quiet"]
    assert main([*argv, "--runs", "discrete", "--steps", "5"]) == 0
    run = cf.load_run(tmp_path / "q.h5")
    assert run.config["problem"] == {"name": "quartic", "x0": 4.0}
    loss = run["discrete"]["train_loss"]
    assert float(loss[0]) == pytest.approx(4 * 3 * 1 + 1.62276)  # L(4)
    assert float(loss[1]) == pytest.approx(float(Quartic()(jnp.asarray(0.9))))
    capsys.readouterr()
    assert main(["run", "configs/gd-toy.toml", "--dry-run"]) == 0
    assert "problem: toy, 2 parameters" in capsys.readouterr().out
