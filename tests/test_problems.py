"""The built-in problems (`centralflows.problems`) against their closed forms, and the
`[problem]` config section that runs them."""

import functools
import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import centralflows as cf
from centralflows._config import ConfigError, validate_config
from centralflows.cli import main
from centralflows.problems import PROBLEMS, LeastSquares, Quartic, Toy

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
