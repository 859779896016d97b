"""`discrete_run` and `discrete_losses`: the discrete optimizer along its trajectory, in one
scan."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import centralflows as cf

from .helpers import small_mlp_objective

CURVATURES = jnp.array([0.5, 1.0, 3.0])


def quadratic(w):
    return 0.5 * jnp.sum(CURVATURES * w["a"] ** 2)


W0 = {"a": jnp.array([1.0, -2.0, 0.5])}


def test_gd_on_a_quadratic_matches_the_closed_form():
    # w_k = (1 − η h)^k w_0 along each curvature h (η h = 1.5 at h = 3: oscillating,
    # below the threshold 2).
    lr, steps = 0.5, 12
    losses = cf.discrete_losses(quadratic, W0, cf.GD(lr), steps)
    k = np.arange(steps + 1)[:, None]
    exact = 0.5 * np.sum(CURVATURES * ((1 - lr * CURVATURES) ** k * W0["a"]) ** 2, axis=1)
    assert losses.shape == (steps + 1,)
    np.testing.assert_allclose(losses, exact, rtol=1e-12)


def test_matches_the_run_files_discrete_process(tmp_path):
    objective, w0 = small_mlp_objective()
    optimizer = cf.RMSProp(0.01, beta2=0.9, eps=1e-6)
    run = cf.run(
        objective,
        w0,
        optimizer,
        steps=8,
        out=tmp_path / "run.h5",
        processes=("discrete",),
        progress=False,
    )
    losses = cf.discrete_losses(objective, w0, optimizer, 8)
    np.testing.assert_allclose(losses, run["discrete"]["train_loss"], rtol=1e-6)


def test_a_sweep_compiles_once_and_vmaps(caplog):
    cf.discrete_losses(quadratic, W0, cf.GD(0.1), 5)
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        cf.discrete_losses(quadratic, W0, cf.GD(0.2), 5)
    assert not [r for r in caplog.records if r.getMessage().startswith("Compiling")]
    lrs = jnp.array([0.1, 0.2, 0.6])
    swept = jax.vmap(lambda lr: cf.discrete_losses(quadratic, W0, cf.GD(lr), 5))(lrs)
    for lr, row in zip(lrs, swept):
        np.testing.assert_allclose(row, cf.discrete_losses(quadratic, W0, cf.GD(lr), 5))


def test_the_warm_start_state_is_used():
    # Starting from the state after 3 steps continues the 8-step run.
    optimizer = cf.RMSProp(0.05, beta2=0.9)
    grad = jax.grad(quadratic)
    w, state = W0, optimizer.init(W0["a"], grad(W0)["a"])
    for _ in range(3):
        a, state = optimizer.step(w["a"], state, grad(w)["a"])
        w = {"a": a}
    full = cf.discrete_losses(quadratic, W0, optimizer, 8)
    rest = cf.discrete_losses(quadratic, w, optimizer, 5, opt_state0=state)
    np.testing.assert_allclose(rest, full[3:], rtol=1e-12)
    # ... and the run's last iterate and state are the loop's.
    head = cf.discrete_run(quadratic, W0, optimizer, 3)
    np.testing.assert_allclose(head.w["a"], w["a"], rtol=1e-12)
    for got, want in zip(jax.tree.leaves(head.opt_state), jax.tree.leaves(state)):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    tail = cf.discrete_run(quadratic, head.w, optimizer, 5, opt_state0=head.opt_state)
    np.testing.assert_allclose(tail.losses, full[3:], rtol=1e-12)


def test_the_last_iterate_is_differentiable_in_the_learning_rate():
    # w_k = (1 − η h)^k w_0, so dw_k/dη = −k h (1 − η h)^(k−1) w_0.
    lr, steps = 0.3, 7
    last = jax.jacfwd(lambda lr: cf.discrete_run(quadratic, W0, cf.GD(lr), steps).w["a"])(lr)
    rev = jax.jacrev(lambda lr: cf.discrete_run(quadratic, W0, cf.GD(lr), steps).w["a"])(lr)
    exact = -steps * CURVATURES * (1 - lr * CURVATURES) ** (steps - 1) * W0["a"]
    np.testing.assert_allclose(last, exact, rtol=1e-10)
    np.testing.assert_allclose(rev, exact, rtol=1e-10)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="`steps`"):
        cf.discrete_losses(quadratic, W0, cf.GD(0.1), -1)
    with pytest.raises(ValueError, match="`steps`"):
        cf.discrete_losses(quadratic, W0, cf.GD(0.1), 2.5)
    objective, w0 = small_mlp_objective()
    with pytest.raises(ValueError, match="parameters"):
        cf.discrete_losses(objective, w0[:-1], cf.GD(0.1), 3)
    with pytest.raises(ValueError, match="opt_state0"):
        cf.discrete_losses(quadratic, W0, cf.RMSProp(0.1), 3, opt_state0=cf.GD(0.1).init(w0, w0))
    with pytest.raises(ValueError, match="lr"):
        cf.discrete_losses(quadratic, W0, cf.GD(-0.1), 3)
