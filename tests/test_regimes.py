"""The regime of a run (`centralflows._regimes`)."""

import math

import numpy as np
import pytest

from centralflows._regimes import REGIMES, classify, classify_runs

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
