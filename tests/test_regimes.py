"""The regime of a run (`centralflows._regimes`) and the regime map over a grid of runs."""

import math

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import centralflows as cf
from centralflows._regimes import REGIMES, classify, classify_runs
from centralflows.problems import LeastSquares, Toy

# --- classifying series ----------------------------------------------------------------------

STEPS = np.arange(200)
BELOW = np.full(200, 1.5)  # an effective sharpness that never reaches 2


def test_a_loss_that_starts_below_zero_is_not_read_as_diverged():
    # A loss unbounded below (the toy's kind) starting at −0.1 and falling: every value
    # exceeded 10 × L0 = −1, which the rule relative to L0 alone read as divergence.
    loss = -0.1 - 0.5 * (1 - np.exp(-STEPS / 30))
    assert classify(loss, BELOW).kind == "stable"
    # From 0 it is measured against how far it came down: after a descent of 0.6, a
    # rise of 2 to the end is no blow-up (9 × 0.6 is the limit), one to 10 is.
    loss = -0.6 * (1 - np.exp(-STEPS / 10))
    assert classify(loss + 2.0 * (STEPS >= 150), BELOW).kind == "stable"
    assert classify(np.where(STEPS >= 150, 10.0, loss), BELOW) == ("diverged", 150, None)


def test_a_spike_that_comes_back_is_not_divergence():
    # A loss near zero (1e-6, falling to 1e-9) with a catapult 100 times its start that
    # comes back down: not diverged. Cut at its peak, it is, from the first step above
    # 10 L0 (1e-4 e^(−d/3) > 1e-5 within d < 3 ln 10 = 6.9 steps of the peak at 100).
    loss = 1e-6 * np.exp(-STEPS / 30) + 1e-9
    spike = loss + 1e-4 * np.exp(-np.abs(STEPS - 100) / 3.0)
    assert classify(spike, BELOW).kind == "stable"
    assert classify(spike[:101], BELOW) == ("diverged", 94, None)


def test_divergence_of_a_positive_loss_is_ten_times_its_start():
    # Geometric growth: 1.1^t first exceeds 10 at t = 25; then overflow and NaN.
    loss = 1.1**STEPS
    loss[100], loss[101:] = np.inf, np.nan
    assert math.ceil(math.log(10) / math.log(1.1)) == 25
    assert classify(loss[:60], BELOW) == ("diverged", 25, None)
    assert classify_runs(loss[None], BELOW[None]).step[0] == 25  # NaN rows count as run
    assert classify(loss, BELOW) == ("diverged", 25, None)  # NaN at the end: not yet run


def test_edge_of_stability_and_unsettled():
    loss = np.exp(-STEPS / 50)
    rising = 1.0 + STEPS / 50  # reaches 2 at step 50
    hovering = np.where(STEPS < 50, rising, 2 + 0.05 * (-1.0) ** STEPS)
    regime = classify(loss, hovering)
    assert (regime.kind, regime.step) == ("edge of stability", 50)
    assert regime.hover == pytest.approx(2.0, abs=0.051)
    assert classify(loss, rising) == ("unsettled", 50, pytest.approx(np.median(rising[125:])))
    # The batch form agrees with one series at a time, whatever the batch's shape.
    losses = np.stack([loss, loss, 1.1**STEPS, loss, loss, -loss]).reshape(2, 3, -1)
    sharpness = np.stack([BELOW, hovering, BELOW, rising, hovering, BELOW]).reshape(2, 3, -1)
    batch = classify_runs(losses, sharpness)
    assert batch.code.shape == (2, 3)
    for index in np.ndindex(2, 3):
        one = classify(losses[index], sharpness[index])
        assert REGIMES[batch.code[index]] == one.kind
        assert batch.step[index] == (-1 if one.step is None else one.step)


# --- the regime map --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def least_squares():
    return LeastSquares(n=20, d=50, key=jr.key(0))


def exact_losses(problem: LeastSquares, lr: float, steps: int) -> np.ndarray:
    """GD's losses from w = 0 on least squares, in closed form: along each eigenvector
    of AAᵀ/n (eigenvalue λ) the residual is multiplied by 1 − ηλ at every step."""
    a, y = np.asarray(problem.inputs), np.asarray(problem.targets)
    n = a.shape[0]
    lam, u = np.linalg.eigh(a @ a.T / n)
    coefficients = (u.T @ y) ** 2
    factors = (1 - lr * lam[:, None]) ** (2 * np.arange(steps + 1))
    return coefficients @ factors / (2 * n)


def test_gd_on_least_squares_is_stable_below_two_over_lambda_and_diverges_above(
    least_squares,
):
    problem, steps = least_squares, 150
    lam = float(problem.sharpness())
    lrs = 2 / lam * np.array([0.5, 0.9, 0.98, 1.02, 1.1, 1.5])
    found = cf.regime_map(problem, problem.w0, cf.GD(0.1), steps, grid={"lr": lrs})
    assert found.regime.shape == (6,) and list(found.axes) == ["lr"]
    expected = ["stable"] * 3 + ["diverged"] * 3
    assert found.kinds.tolist() == expected
    # The Hessian is AᵀA/n everywhere: the effective sharpness is the constant ηλ (to
    # LOBPCG's tolerance, 1e-3 in residual, so ~1e-6 in the eigenvalue).
    np.testing.assert_allclose(found.sharpness, np.outer(lrs, np.full(steps + 1, lam)), rtol=1e-5)
    # The losses are the closed form's (to round-off: 1e-16 of L0 = 0.47 per step); above
    # 2/λ they grow past 10 L0 within the steps.
    for lr, losses in zip(lrs, found.losses):
        np.testing.assert_allclose(losses, exact_losses(problem, lr, steps), rtol=1e-9, atol=1e-14)
    assert np.all(found.final_loss[3:] > 10 * found.losses[3:, 0])
    assert np.all(found.onset[:3] == -1) and np.all(found.onset[3:] > 0)
    # Each run is the one `cf.run` logs with the same eigen settings.
    eig = cf.EigConfig(initial_neigs=1, max_neigs=1)
    for i in (1, 3):
        run = cf.run(problem, problem.w0, cf.GD(lrs[i]), steps=steps, eig=eig, progress=False)
        logged = run["discrete"]
        np.testing.assert_allclose(found.losses[i], logged["train_loss"], rtol=1e-12)
        sharpness = logged["effective_hessian_eigs"][:, 0]
        np.testing.assert_allclose(found.sharpness[i], sharpness, rtol=1e-12)


def test_gd_on_the_toy_reaches_the_edge_where_gradient_flow_does():
    # The toy from below zero (L0 = −0.0098): y falls by ηb per step while x ≈ 0, so GD's
    # effective sharpness η a(y) first reaches 2 at step ⌈t*⌉, t* = (y0 − y*)/(ηb). (Its
    # x² < 1e-4 delays that by under 0.1 step.) Sixty steps end before GD's first
    # catapult, which would be read as divergence at its peak.
    toy = Toy(s0=3.0, b=0.01, c=1.0, x0=0.01, y0=-1.0)
    lrs = np.array([0.3, 0.48, 0.49])
    found = cf.regime_map(toy, toy.w0, cf.GD(0.1), 60, grid={"lr": lrs})
    assert float(toy(toy.w0)) < 0
    assert toy.onset_time(0.3) > 60 and found.kinds[0] == "stable"
    for i in (1, 2):
        t_star = toy.onset_time(lrs[i])  # 34.7 and 16.7
        assert found.onset[i] == math.ceil(t_star)
        assert found.kinds[i] == "edge of stability"
    # One compiled program for every point: vmapped all at once it gives the same runs.
    batched = cf.regime_map(toy, toy.w0, cf.GD(0.1), 60, grid={"lr": lrs}, batch_size=None)
    np.testing.assert_allclose(batched.losses, found.losses, rtol=1e-12)


def test_a_map_over_two_hyperparameters(least_squares):
    problem = least_squares
    lrs, beta2s = np.array([0.01, 0.03]), np.array([0.9, 0.99, 0.999])
    optimizer = cf.RMSProp(0.01, eps=1e-8)
    found = cf.regime_map(problem, problem.w0, optimizer, 20, grid={"lr": lrs, "beta2": beta2s})
    assert found.losses.shape == (2, 3, 21) and found.regime.shape == (2, 3)
    assert [list(v) for v in found.axes.values()] == [list(lrs), list(beta2s)]
    alone = cf.RMSProp(float(lrs[1]), beta2=float(beta2s[2]), eps=1e-8)
    losses = cf.discrete_losses(problem, problem.w0, alone, 20)
    np.testing.assert_allclose(found.losses[1, 2], losses, rtol=1e-12)


def test_a_map_checks_its_grid(least_squares):
    problem = least_squares
    with pytest.raises(ValueError, match="no field 'learning_rate'"):
        cf.regime_map(problem, problem.w0, cf.GD(0.1), 5, grid={"learning_rate": [0.1]})
    with pytest.raises(ValueError, match="lr"):
        cf.regime_map(problem, problem.w0, cf.GD(0.1), 5, grid={"lr": [0.1, -0.1]})
    with pytest.raises(ValueError, match="1-D"):
        cf.regime_map(problem, problem.w0, cf.GD(0.1), 5, grid={"lr": jnp.ones((2, 2))})
