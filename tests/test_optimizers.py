"""Tests for the optimizers GD, ScalarRMSProp and RMSProp (DESIGN §2)."""

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from centralflows import GD, AbstractOptimizer, RMSProp, ScalarRMSProp  # noqa: E402

# A diagonal quadratic L = ½ wᵀ A w with known curvatures.
A_DIAG = np.array([0.5, 1.0, 2.0, 3.5])
W0 = np.array([1.0, -2.0, 0.5, 3.0])

# A non-diagonal SPD quadratic for the RMSProp comparisons (gradients mix coordinates).
_M = np.array(
    [
        [2.0, 0.3, -0.1, 0.0],
        [0.3, 1.0, 0.2, 0.1],
        [-0.1, 0.2, 0.5, -0.2],
        [0.0, 0.1, -0.2, 3.0],
    ]
)


def _diag_grad(w):
    return jnp.asarray(A_DIAG) * w


def _run(opt, grad_fn, w0, steps):
    """`steps` optimizer steps from w0; returns the iterates and states."""
    w = jnp.asarray(w0)
    state = opt.init(w, grad_fn(w))
    ws, states = [w], [state]
    for _ in range(steps):
        w, state = opt.step(w, state, grad_fn(w))
        ws.append(w)
        states.append(state)
    return ws, states


# ---------------------------------------------------------------------------
# GD.


def test_gd_closed_form_on_quadratic():
    lr, k = 0.3, 12
    ws, states = _run(GD(lr), _diag_grad, W0, k)
    for t, w in enumerate(ws):
        expected = (1 - lr * A_DIAG) ** t * W0
        # Each step is one multiply-add per coordinate: round-off ~1e-16 per step.
        np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-14)
        assert float(states[t].count) == t


def test_gd_schedule_uses_post_update_count():
    """w_{t+1} = w_t − η(t+1) ∇L(w_t): the counter is incremented by `update` before P is
    evaluated, so the first step uses η(1), not η(0) (DESIGN §2: P(s_{t+1}))."""
    schedule = lambda t: 0.4 / (1.0 + 0.5 * t)
    k = 8
    ws, _ = _run(GD(schedule), _diag_grad, W0, k)
    post = W0.copy()
    pre = W0.copy()
    for t in range(1, k + 1):
        post = (1 - schedule(t) * A_DIAG) * post
        pre = (1 - schedule(t - 1) * A_DIAG) * pre
        np.testing.assert_allclose(ws[t], post, rtol=1e-12, atol=1e-14)
    # The convention matters: the pre-update count would give a visibly different result.
    assert np.max(np.abs(pre - post)) > 1e-3


def test_gd_preconditioner_and_summary():
    lr = 0.25
    opt = GD(lr)
    w = jnp.asarray(W0)
    g = _diag_grad(w)
    state = opt.update(opt.init(w, g), g)
    P = opt.preconditioner(state, w)
    assert isinstance(P, lx.DiagonalLinearOperator)
    np.testing.assert_allclose(P.diagonal, np.full(4, 1 / lr), rtol=1e-15)
    np.testing.assert_allclose(opt.diagonal(state), 1 / lr, rtol=1e-15)
    assert set(opt.summary(state)) == {"lr"}
    np.testing.assert_allclose(opt.summary(state)["lr"], lr, rtol=1e-15)
    # Drift: the counter advances at unit speed (time is measured in steps).
    assert float(opt.drift(state, g).count) == 1.0


# ---------------------------------------------------------------------------
# RMSProp family versus a hand-written numpy reference (DESIGN §2).


def _numpy_rmsprop(w0, lr, beta2, eps, bias_correction, scalar, steps):
    sq = (lambda g: np.sum(g**2)) if scalar else (lambda g: g**2)
    w = np.array(w0, dtype=np.float64)
    g0 = _M @ w
    nu = np.zeros_like(sq(g0)) if bias_correction else sq(g0)
    ws, nus, diags = [w.copy()], [nu], [None]
    for t in range(1, steps + 1):
        eta = lr(t) if callable(lr) else lr
        g = _M @ w
        nu = beta2 * nu + (1 - beta2) * sq(g)
        nu_hat = nu / (1 - beta2**t) if bias_correction else nu
        p = (np.sqrt(nu_hat) + eps) / eta
        w = w - g / p
        ws.append(w.copy())
        nus.append(nu)
        diags.append(p)
    return ws, nus, diags


@pytest.mark.parametrize("cls", [ScalarRMSProp, RMSProp])
@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-2])
def test_rmsprop_matches_numpy(cls, bias_correction, eps):
    lr, beta2, k = 0.05, 0.9, 7
    opt = cls(lr, beta2=beta2, eps=eps, bias_correction=bias_correction)
    grad = lambda w: jnp.asarray(_M) @ w
    ws, states = _run(opt, grad, W0, k)
    ref_ws, ref_nus, ref_diags = _numpy_rmsprop(
        W0, lr, beta2, eps, bias_correction, cls is ScalarRMSProp, k
    )
    # Same arithmetic in a possibly different order: float64 round-off over 7 steps.
    for t in range(k + 1):
        np.testing.assert_allclose(ws[t], ref_ws[t], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(states[t].nu, ref_nus[t], rtol=1e-12, atol=1e-14)
        assert float(states[t].count) == t
        if t > 0:
            np.testing.assert_allclose(opt.diagonal(states[t]), ref_diags[t], rtol=1e-12)
    assert np.shape(states[0].nu) == (() if cls is ScalarRMSProp else (4,))


def test_rmsprop_schedule_matches_numpy():
    schedule = lambda t: 0.05 * 0.9**t
    opt = RMSProp(schedule, beta2=0.8, eps=1e-3, bias_correction=True)
    grad = lambda w: jnp.asarray(_M) @ w
    ws, _ = _run(opt, grad, W0, 5)
    ref_ws, _, _ = _numpy_rmsprop(W0, schedule, 0.8, 1e-3, True, False, 5)
    for t in range(6):
        np.testing.assert_allclose(ws[t], ref_ws[t], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [ScalarRMSProp, RMSProp])
def test_rmsprop_initial_state(cls):
    w = jnp.asarray(W0)
    g = jnp.array([0.5, -1.0, 2.0, 0.0])
    sq = np.sum(np.asarray(g) ** 2) if cls is ScalarRMSProp else np.asarray(g) ** 2
    # Without bias correction ν₀ = g₀² (P defined at t = 0); with it ν₀ = 0.
    s = cls(0.1).init(w, g)
    np.testing.assert_array_equal(s.nu, sq)
    assert float(s.count) == 0.0
    s = cls(0.1, bias_correction=True).init(w, g)
    np.testing.assert_array_equal(s.nu, np.zeros_like(sq))
    assert float(s.count) == 0.0


@pytest.mark.parametrize("cls", [GD, ScalarRMSProp, RMSProp])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_preconditioner_is_diagonal_operator_and_step_solves_it(cls, bias_correction):
    kwargs = {"beta2": 0.7, "eps": 1e-3, "bias_correction": bias_correction}
    if cls is GD:
        kwargs = {}
    opt = cls(0.1, **kwargs)
    w = jnp.asarray(W0)
    g0 = jnp.asarray(_M) @ w
    state = opt.init(w, g0)
    w1, state = opt.step(w, state, g0)  # move somewhere non-trivial
    g = jnp.asarray(_M) @ w1
    w2, state2 = opt.step(w1, state, g)
    P = opt.preconditioner(state2, w1)
    assert isinstance(P, lx.DiagonalLinearOperator)
    expected_diag = np.broadcast_to(np.asarray(opt.diagonal(state2)), (4,))
    np.testing.assert_array_equal(P.diagonal, expected_diag)
    assert np.all(expected_diag > 0)
    np.testing.assert_allclose(P.as_matrix(), np.diag(expected_diag), rtol=1e-15)
    # The step is w − P(s⁺)⁻¹ g with s⁺ = update(s, g) ...
    direction = lx.linear_solve(P, g).value
    np.testing.assert_allclose(w1 - w2, direction, rtol=1e-13, atol=1e-15)
    # ... and the diagonal fast path agrees with the generic lineax path of the base class.
    w2_generic, _ = AbstractOptimizer.step(opt, w1, state, g)
    np.testing.assert_allclose(w2_generic, w2, rtol=1e-13, atol=1e-15)


# ---------------------------------------------------------------------------
# Drift (DESIGN §2: EMA written on the post-update value).


@pytest.mark.parametrize("cls", [ScalarRMSProp, RMSProp])
@pytest.mark.parametrize("beta2", [0.1, 0.3, 0.99])
def test_rmsprop_drift(cls, beta2):
    opt = cls(0.1, beta2=beta2)
    w = jnp.asarray(W0)
    g0 = jnp.array([0.5, -1.0, 2.0, 0.3])
    g = jnp.array([1.5, 0.2, -0.7, 1.0])
    sq = jnp.sum(g**2) if cls is ScalarRMSProp else g**2
    state = opt.init(w, g0)
    d = opt.drift(state, g)
    np.testing.assert_allclose(d.nu, (1 - beta2) / beta2 * (sq - state.nu), rtol=1e-14)
    assert float(d.count) == 1.0
    new = opt.update(state, g)
    # ν_t − ν_{t−1} = (1−β₂)/β₂ (g_t² − ν_t): the drift at the *updated* state equals the
    # discrete increment; equivalently the increment is β₂ × drift at the old state.
    # Exact algebra; float64 round-off only (relative to the size of the terms).
    scale = float(jnp.max(jnp.abs(sq))) + float(jnp.max(jnp.abs(state.nu)))
    np.testing.assert_allclose(new.nu - state.nu, opt.drift(new, g).nu, atol=1e-13 * scale)
    np.testing.assert_allclose(new.nu - state.nu, beta2 * d.nu, atol=1e-13 * scale)
    assert float(new.count - state.count) == float(opt.drift(new, g).count) == 1.0


# ---------------------------------------------------------------------------
# Summaries.


def test_scalar_rmsprop_summary():
    lr, eps = 0.1, 1e-2
    opt = ScalarRMSProp(lr, beta2=0.9, eps=eps, bias_correction=True)
    w = jnp.asarray(W0)
    g = jnp.asarray(_M) @ w
    state = opt.update(opt.init(w, g), g)
    out = opt.summary(state)
    assert set(out) == {"lr", "nu", "effective_step_size"}
    nu = 0.1 * float(jnp.sum(g**2))
    nu_hat = nu / (1 - 0.9)
    np.testing.assert_allclose(out["lr"], lr, rtol=1e-15)
    np.testing.assert_allclose(out["nu"], nu, rtol=1e-13)
    ess = lr / (np.sqrt(nu_hat) + eps)
    np.testing.assert_allclose(out["effective_step_size"], ess, rtol=1e-13)


def test_rmsprop_summary():
    lr, eps = 0.1, 1e-2
    opt = RMSProp(lr, beta2=0.9, eps=eps)
    w = jnp.asarray(W0)
    g0 = jnp.array([0.5, -1.0, 2.0, 0.3])
    g = jnp.array([1.5, 0.2, -0.7, 1.0])
    state = opt.update(opt.init(w, g0), g)
    out = opt.summary(state)
    assert set(out) == {"lr", "nu_l1", "ess_mean", "ess_harmonic_mean"}
    nu = 0.9 * np.asarray(g0) ** 2 + 0.1 * np.asarray(g) ** 2
    ess = lr / (np.sqrt(nu) + eps)
    np.testing.assert_allclose(out["lr"], lr, rtol=1e-15)
    np.testing.assert_allclose(out["nu_l1"], np.sum(np.abs(nu)), rtol=1e-13)
    np.testing.assert_allclose(out["ess_mean"], np.mean(ess), rtol=1e-13)
    harmonic = len(ess) / np.sum(1 / ess)
    np.testing.assert_allclose(out["ess_harmonic_mean"], harmonic, rtol=1e-13)
    # Non-uniform ν: the two means must differ (so each is really checked).
    assert abs(float(out["ess_mean"]) - float(out["ess_harmonic_mean"])) > 1e-3


# ---------------------------------------------------------------------------
# Hyperparameter validation.


@pytest.mark.parametrize("cls", [GD, ScalarRMSProp, RMSProp])
@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_invalid_lr_raises(cls, lr):
    with pytest.raises(ValueError, match="lr"):
        cls(lr)


@pytest.mark.parametrize("cls", [ScalarRMSProp, RMSProp])
@pytest.mark.parametrize("beta2", [0.0, 1.0, 1.5, -0.1, float("nan")])
def test_invalid_beta2_raises(cls, beta2):
    with pytest.raises(ValueError, match="beta2"):
        cls(0.1, beta2=beta2)


@pytest.mark.parametrize("cls", [ScalarRMSProp, RMSProp])
@pytest.mark.parametrize("eps", [-1e-8, -1.0, float("inf")])
def test_invalid_eps_raises(cls, eps):
    with pytest.raises(ValueError, match="eps"):
        cls(0.1, eps=eps)


def test_valid_boundary_hyperparameters_accepted():
    # eps = 0 and β₂ close to the ends of (0, 1) are valid.
    RMSProp(1e-6, beta2=1e-6, eps=0.0)
    ScalarRMSProp(10.0, beta2=0.999999, eps=0.0)
    GD(jnp.asarray(0.2))


def _gd_loss_after_3_steps(lr):
    opt = GD(lr=lr)
    w = jnp.asarray(W0)
    state = opt.init(w, _diag_grad(w))
    for _ in range(3):
        w, state = opt.step(w, state, _diag_grad(w))
    return 0.5 * jnp.sum(jnp.asarray(A_DIAG) * w**2)


def test_grad_wrt_traced_lr():
    lr = 0.1
    g = jax.grad(_gd_loss_after_3_steps)(lr)
    assert np.isfinite(float(g))
    # Closed form: L(η) = Σ ½ a (1 − η a)^6 w0², dL/dη = −Σ 3 a² (1 − η a)^5 w0².
    exact = -np.sum(3 * A_DIAG**2 * (1 - lr * A_DIAG) ** 5 * W0**2)
    np.testing.assert_allclose(g, exact, rtol=1e-12)
    h = 1e-6  # central difference: O(h²) truncation ≈ 1e-12, round-off ≈ 1e-10 relative
    fd = (_gd_loss_after_3_steps(lr + h) - _gd_loss_after_3_steps(lr - h)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-7)
    # Also under jit.
    g_jit = jax.jit(jax.grad(_gd_loss_after_3_steps))(lr)
    np.testing.assert_allclose(g_jit, exact, rtol=1e-12)


def test_grad_wrt_traced_beta2_and_eps():
    def loss(beta2, eps):
        opt = RMSProp(0.05, beta2=beta2, eps=eps, bias_correction=True)
        grad = lambda w: jnp.asarray(_M) @ w
        ws, _ = _run(opt, grad, W0, 3)
        return 0.5 * ws[-1] @ (jnp.asarray(_M) @ ws[-1])

    gb, ge = jax.grad(loss, argnums=(0, 1))(0.8, 1e-2)
    h = 1e-6  # central differences, ~1e-9 relative accuracy
    fd_b = (loss(0.8 + h, 1e-2) - loss(0.8 - h, 1e-2)) / (2 * h)
    fd_e = (loss(0.8, 1e-2 + h) - loss(0.8, 1e-2 - h)) / (2 * h)
    np.testing.assert_allclose(gb, fd_b, rtol=1e-6)
    np.testing.assert_allclose(ge, fd_e, rtol=1e-6)
    assert abs(float(gb)) > 1e-6 and abs(float(ge)) > 1e-6


def test_invalid_traced_lr_gives_nan():
    # Traced values are checked without a host callback: an invalid one poisons the step.
    w = jnp.asarray(W0)
    state = GD(0.1).init(w, w)
    f = jax.jit(lambda lr: GD(lr=lr).step(w, state, _diag_grad(w))[0])
    np.testing.assert_allclose(f(0.1), (1 - 0.1 * A_DIAG) * W0, rtol=1e-14)  # valid: fine
    assert np.all(np.isnan(f(-1.0)))


@pytest.mark.parametrize("name, value", [("beta2", 1.5), ("beta2", 0.0), ("eps", -1.0)])
def test_invalid_traced_rmsprop_hyperparameter_gives_nan(name, value):
    w = jnp.asarray(W0)
    g = _diag_grad(w)
    state = RMSProp(0.1).init(w, g)
    # Every hyperparameter is traced (a Python float checked inside jit hits the bug of
    # `test_construct_inside_jit_with_python_floats`).
    hyper = {"lr": 0.1, "beta2": 0.9, "eps": 1e-3}

    @jax.jit
    def f(hyper):
        return RMSProp(**hyper).step(w, state, g)[0]

    assert np.all(np.isfinite(f(hyper)))  # valid traced values: fine
    assert np.all(np.isnan(f({**hyper, name: value})))


def test_traced_infinite_lr_gives_nan():
    w = jnp.asarray(W0)
    state = GD(0.1).init(w, w)
    f = jax.jit(lambda lr: GD(lr=lr).step(w, state, _diag_grad(w))[0])
    assert np.all(np.isnan(f(jnp.inf)))  # not −inf · g, which would look like divergence


def test_construct_inside_jit_with_python_floats():
    w = jnp.asarray(W0)
    g = _diag_grad(w)

    @jax.jit
    def f(lr):
        opt = RMSProp(lr)  # beta2, eps: Python-float defaults
        return opt.step(w, opt.init(w, g), g)[0]

    assert np.all(np.isfinite(f(0.1)))


# ---------------------------------------------------------------------------
# Schedules.


def test_negative_schedule_raises_when_used():
    schedule = lambda t: 0.25 - 0.1 * t  # η(1) = 0.15, η(2) = 0.05, η(3) = −0.05
    opt = GD(schedule)  # a callable cannot be checked at construction
    w = jnp.asarray(W0)
    state = opt.init(w, _diag_grad(w))
    for _ in range(2):
        w, state = opt.step(w, state, _diag_grad(w))
    with pytest.raises(ValueError, match="lr"):
        opt.step(w, state, _diag_grad(w))
    # Under jit the counter is traced: the step is NaN instead (`cf.run` checks a
    # schedule at every step before it starts, see test_run).
    step = jax.jit(opt.step)
    assert np.all(np.isnan(step(w, state, _diag_grad(w))[0]))
    # A schedule reaching exactly zero is rejected too (η must be > 0, not ≥ 0).
    zero = GD(lambda t: 0.2 - 0.1 * t)  # η(2) == 0.0 exactly in floating point
    s2 = zero.update(zero.update(zero.init(w, w), w), w)
    with pytest.raises(ValueError, match="lr"):
        zero.diagonal(s2)
    assert np.isnan(jax.jit(zero.diagonal)(s2))
    # And for RMSProp likewise (the schedule is read through the same path).
    ropt = RMSProp(schedule, beta2=0.9)
    rstate = ropt.update(ropt.update(ropt.init(w, w), w), w)  # count = 2
    with pytest.raises(ValueError, match="lr"):
        ropt.step(w, rstate, w)


class _Decay(eqx.Module):
    lr0: float

    def __call__(self, t):
        return self.lr0 / (1.0 + 0.5 * t)


def test_differentiable_module_schedule():
    def loss(lr0):
        opt = GD(_Decay(lr0))
        w = jnp.asarray(W0)
        state = opt.init(w, w)
        for _ in range(3):
            w, state = opt.step(w, state, _diag_grad(w))
        return 0.5 * jnp.sum(jnp.asarray(A_DIAG) * w**2)

    lr0 = 0.3
    g = jax.grad(loss)(lr0)
    h = 1e-6  # central difference, ~1e-10 relative accuracy
    np.testing.assert_allclose(g, (loss(lr0 + h) - loss(lr0 - h)) / (2 * h), rtol=1e-7)
    # Closed form of the iterate with η(t) = lr0 / (1 + t/2), t = 1, 2, 3.
    factors = np.prod([1 - lr0 / (1 + 0.5 * t) * A_DIAG for t in (1, 2, 3)], axis=0)
    expected = 0.5 * np.sum(A_DIAG * (factors * W0) ** 2)
    np.testing.assert_allclose(loss(lr0), expected, rtol=1e-13)


def test_rmsprop_preconditioner_is_differentiable_where_nu_is_zero():
    # A parameter the loss never moves (e.g. the weight of an always-blank pixel) keeps
    # ν = 0; the central flow differentiates P(s) along ds/dt, which is 0 there. With a
    # plain √ν that is inf · 0 = NaN, which made the SDCP data NaN and X = 0 (the flow
    # then let the effective sharpness rise past 2).
    optimizer = RMSProp(lr=0.01, beta2=0.99, eps=1e-8)
    nu = jnp.array([0.0, 4.0])
    diagonal = lambda nu: optimizer.diagonal(type(optimizer.init(nu, nu))(jnp.array(3.0), nu))
    value, tangent = jax.jvp(diagonal, (nu,), (jnp.array([0.0, 1.0]),))
    np.testing.assert_allclose(value, (jnp.sqrt(nu) + 1e-8) / 0.01)
    np.testing.assert_allclose(tangent, [0.0, 1 / (2 * 2.0) / 0.01])
