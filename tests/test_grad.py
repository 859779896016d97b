"""Differentiating flows with respect to hyperparameters, the start and the loss."""

import warnings

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import centralflows as cf
from centralflows import _replay
from centralflows._eigen import eigenbasis
from centralflows._flow_processes import PlannedSegment, StableFlowProcess
from centralflows._flows import FlowState
from centralflows._integrate import explicit_tableau
from centralflows._processes import initial_opt_state
from centralflows._solve import prepare

from .helpers import leaving_loss, small_mlp_objective

# The analytic toy of DESIGN §6, with its constants as leaves of the loss.
S0, C, B, ETA, TAU = 1.0, 1.0, 0.1, 0.5, 0.25
TOY = {"s0": S0, "c": C, "b": B}
OPTIONS = cf.FlowOptions(
    dfx.Tsit5(), tau=TAU, stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-10)
)


def toy_loss(w, s0, c, b):
    return 0.5 * (s0 - c * w["y"]) * w["x"] ** 2 + b * w["y"]


def toy_outcomes(lr, constants, y0, t1=30):
    """The central flow's y at t1 (at rest by then) and its EOS onset time."""
    loss = jax.tree_util.Partial(toy_loss, **constants)
    w0 = {"x": jnp.zeros_like(y0), "y": y0}
    sol = cf.central_flow(loss, w0, cf.GD(lr), t1, options=OPTIONS)
    return jnp.stack([sol.w["y"][-1], sol.eos_onset])


def toy_exact(lr, constants, y0):
    """At rest y* = (s0 − 2/η)/c; the relaxed constraint activates where
    η a(y) = 2 − τ c η² b, reached by gradient flow y(t) = y0 − ηbt."""
    s0, c, b = constants["s0"], constants["c"], constants["b"]
    y_onset = (s0 - (2 - TAU * c * lr**2 * b) / lr) / c
    return jnp.stack([(s0 - 2 / lr) / c, (y0 - y_onset) / (lr * b)])


ARGS = (ETA, TOY, jnp.array(-2.5))  # the onset at t = 9, at rest long before t1 = 30


@pytest.fixture(scope="module")
def toy_jacobian():
    """The toy's reverse-mode Jacobian, with the planned segments its replay checked
    against the memory-map limit (Linux's default, a process holding 2000 maps) and the
    memory-map warnings it raised."""
    seen = []
    check = _replay._check_map_limit
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(_replay, "_map_limit", lambda: 65530)
        patch.setattr(_replay, "_memory_maps", lambda: 2000)
        patch.setattr(
            _replay, "_check_map_limit", lambda segments: (seen.append(segments), check(segments))
        )
        jacobian = jax.jacrev(toy_outcomes, argnums=(0, 1, 2))(*ARGS)
    map_warnings = [w for w in caught if "vm.max_map_count" in str(w.message)]
    return jacobian, seen, map_warnings


def test_toy_reverse_mode_matches_the_closed_form(toy_jacobian):
    toy_jacobian, _, _ = toy_jacobian
    exact = jax.jacrev(toy_exact, argnums=(0, 1, 2))(*ARGS)
    flat = lambda jac: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(jac)])
    got, want = flat(toy_jacobian), flat(exact)
    # dy*/dη = 2/(cη²) = 8, d onset/db = −90, ...; the onset derivative is exact to the
    # event location, y* to its approach to rest.
    assert np.count_nonzero(want) == 8
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # 67 s; forward mode is checked by test_gradient_through_a_track_event
def test_toy_forward_mode_matches_reverse_mode(toy_jacobian):
    toy_jacobian, _, _ = toy_jacobian
    forward = jax.jacfwd(toy_outcomes, argnums=0)(*ARGS)
    np.testing.assert_allclose(forward, toy_jacobian[0], rtol=1e-8)


@pytest.mark.slow  # 111 s in a full run on 2 cores
def test_the_natural_spelling_at_default_tolerances_matches_the_closed_form():
    # At rest the loss is b y* = b (s0 − 2/η)/c, so dL/dη = 2b/(cη²). With the default
    # (looser) solver tolerances the replay once failed to bracket the onset at η = 0.6.
    loss = jax.tree_util.Partial(toy_loss, **TOY)
    w0 = {"x": jnp.array(0.0), "y": jnp.array(0.0)}
    grad = jax.grad(lambda lr: cf.central_flow(loss, w0, cf.GD(lr), 100).loss[-1])
    assert float(grad(0.6)) == pytest.approx(2 * B / (C * 0.6**2), rel=1e-5)


class LinearWarmup(eqx.Module):
    """η(t) = start + rate t: a schedule whose float fields are differentiated."""

    start: float
    rate: float

    def __call__(self, t):
        return self.start + self.rate * t


@pytest.mark.slow  # 123 s
def test_gradient_through_a_schedule_matches_the_closed_form():
    # With η rising, the toy stays at the edge once there: M = 2/η − a(y) decays at rate
    # 1/τ, so many τ after the onset (t ≈ 44) y(T) = (s0 − 2/η(T))/c, and
    # dy/d(start) = 2/(cη²), dy/d(rate) = 2T/(cη²) (measured: within 1e-8).
    loss = jax.tree_util.Partial(toy_loss, **TOY)
    w0 = {"x": jnp.array(0.0), "y": jnp.array(0.0)}

    def y_at_t1(start, rate):
        return cf.central_flow(loss, w0, cf.GD(LinearWarmup(start, rate)), 100, options=OPTIONS)

    solution = y_at_t1(0.5, 0.002)
    assert float(solution.eos_onset) < 50
    count = float(solution.opt_state.count[-1])  # the schedule's argument at T = 100
    exact = lambda start, rate: (S0 - 2 / (start + rate * count)) / C
    assert float(solution.w["y"][-1]) == pytest.approx(exact(0.5, 0.002), rel=1e-7)
    grads = jax.grad(lambda *p: y_at_t1(*p).w["y"][-1], argnums=(0, 1))(0.5, 0.002)
    want = jax.grad(exact, argnums=(0, 1))(0.5, 0.002)
    np.testing.assert_allclose(grads, want, rtol=1e-6)


@pytest.mark.slow  # 194 s for both
@pytest.mark.parametrize("bracketed", [True, False])
def test_gradient_through_a_deactivation_matches_finite_differences(bracketed, monkeypatch):
    # The three-parameter toy of tests/test_flows.py: onset at t ≈ 20, X loses its only
    # direction at t ≈ 70 (a "deactivate" event), then the stable flow. z at T = 90 w.r.t.
    # η and the loss's coupling k; measured 7e-6 and 9e-6 against central differences.
    # Unbracketed, the event is held at its planned time: the vector field is continuous
    # there (it does not depend on X's rank), so the jump that drops is small (measured:
    # η's derivative 1.6e-4 off).
    options = cf.FlowOptions(
        dfx.Tsit5(), tau=TAU, stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12)
    )
    eig = cf.EigConfig(initial_neigs=1)

    def solve(lr, k):
        loss = jax.tree_util.Partial(leaving_loss, k=k)
        return cf.central_flow(
            loss, jnp.zeros(3), cf.GD(lr), 90, saveat=[60, 90], options=options, eig=eig
        )

    solution = solve(1.0, 0.02)
    variances = np.nan_to_num(np.asarray(solution.predicted_variances)[:, 0])
    assert variances[0] > 0 and variances[1] == 0  # oscillating at 60, not at 90
    z_at_t1 = lambda lr, k: solve(lr, k).w[-1, 2]
    if not bracketed:  # the deactivation's condition seems always past it
        condition_and_rate = _replay._condition_and_rate

        def never_bracketed(process, events, num_critical, *args):
            value, rate, velocity = condition_and_rate(process, events, num_critical, *args)
            deactivating = events.armed[process.slots(num_critical).index("deactivate")]
            return jnp.where(deactivating, jnp.abs(value) + rate, value), rate, velocity

        monkeypatch.setattr(_replay, "_condition_and_rate", never_bracketed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = jax.grad(z_at_t1, argnums=(0, 1))(1.0, 0.02)
    held = [w for w in caught if "could not be bracketed" in str(w.message)]
    assert [str(w.message)[:40] for w in held] == (
        [] if bracketed else ["Replaying the 'deactivate' event at t = "]
    )
    monkeypatch.undo()
    for i, (value, h) in enumerate([(1.0, 1e-5), (0.02, 2e-7)]):
        plus, minus = [1.0, 0.02], [1.0, 0.02]
        plus[i], minus[i] = value + h, value - h
        fd = (z_at_t1(*plus) - z_at_t1(*minus)) / (2 * h)
        np.testing.assert_allclose(grads[i], fd, rtol=1e-4 if bracketed else 1e-3)


def _rising_second_curvature(w):
    # x: curvature 1.8; z: 0.2 + 1.4 tanh(y), rising through the track threshold 1.5 at
    # t = 1.654 as y climbs its unit slope (η = 1); below 2 throughout (no EOS).
    x, z, y = w
    return 0.9 * x**2 + 0.5 * (0.2 + 1.4 * jnp.tanh(y)) * z**2 - y


@pytest.mark.parametrize("bracketed", [True, False])
def test_gradient_through_a_track_event(bracketed, monkeypatch):
    # x(T) = x0 exp(−1.8 η T) whatever the event does, so dx/dη = −1.8 T x(T) exactly
    # (1.1e-6 off when bracketed; 2.8e-3 while the jump took f_before δ before the event).
    # Unbracketed (a track event whose condition creeps through the threshold), the
    # event's planned time is held fixed, with a warning, and there is no jump.
    options = cf.FlowOptions(
        dfx.Tsit5(), stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12)
    )
    w0 = jnp.array([0.1, 0.1, 0.0])

    def final(lr):
        return cf.stable_flow(_rising_second_curvature, w0, cf.GD(lr), 3, options=options).w[-1]

    planned = cf.stable_flow(_rising_second_curvature, w0, cf.GD(1.0), 3, options=options)
    assert list(planned.stats["segments"]) == [1, 2, 1]  # the track event in (1, 2)
    if not bracketed:
        monkeypatch.setattr(_replay, "_NEWTON_STEPS", 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, z, _ = jax.jacfwd(final)(1.0)
    held = [w for w in caught if "planned time is held fixed" in str(w.message)]
    assert len(held) == (0 if bracketed else 1)
    exact = -1.8 * 3 * float(final(1.0)[0])
    assert float(x) == pytest.approx(exact, rel=1e-5 if bracketed else 1e-6)
    h = 1e-5
    fd = (final(1.0 + h)[1] - final(1.0 - h)[1]) / (2 * h)
    np.testing.assert_allclose(z, fd, rtol=1e-5)


@pytest.mark.slow  # 70 s alone on 2 cores
def test_mlp_gradient_through_eos_matches_finite_differences():
    # From the gradient-flow point at t = 34, through the EOS onset (≈ 4.8 units later),
    # with respect to η and to the start along a random direction.
    objective, w0 = small_mlp_objective()
    options = cf.FlowOptions(
        dfx.Tsit5(), stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-11)
    )
    eig = cf.EigConfig(tol=1e-10, max_iters=500)
    lr = 0.9
    start = cf.stable_flow(objective, w0, cf.GD(lr), 34, options=options).w[-1]

    def outcome(lr, w):
        sol = cf.central_flow(objective, w, cf.GD(lr), 10, options=options, eig=eig)
        assert 2 < float(jax.lax.stop_gradient(sol.eos_onset)) < 8
        return sol.predicted_loss[-1]

    g_lr, g_w = jax.grad(outcome, argnums=(0, 1))(lr, start)
    direction = jax.random.normal(jax.random.key(3), start.shape)
    h = 1e-5
    fd_lr = (outcome(lr * (1 + h), start) - outcome(lr * (1 - h), start)) / (2 * h * lr)
    fd_w = (outcome(lr, start + h * direction) - outcome(lr, start - h * direction)) / (2 * h)
    np.testing.assert_allclose(g_lr, fd_lr, rtol=1e-4)
    np.testing.assert_allclose(jnp.vdot(g_w, direction), fd_w, rtol=1e-4)


@pytest.mark.slow  # 83 s alone on 2 cores: `pytest -m slow`
def test_rmsprop_gradient_through_eos_matches_finite_differences():
    # RMSProp on a small MLP, from its stable flow at t = 62 (S_eff = 1.6, with the flow's
    # ν as `opt_state0`), through the EOS onset: the predicted loss 12 units later w.r.t.
    # η, β₂, ε (P and its derivative enter the eigenvectors' and the SDCP's) and the start.
    objective, w0 = small_mlp_objective()
    options = cf.FlowOptions(
        dfx.Tsit5(), stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-11)
    )
    eig = cf.EigConfig(tol=1e-10, max_iters=500)
    hyper = (0.003, 0.9, 1e-4)
    warm = cf.stable_flow(objective, w0, cf.RMSProp(hyper[0], beta2=hyper[1], eps=hyper[2]), 62)
    start, nu = warm.w[-1], jax.tree_util.tree_map(lambda x: x[-1], warm.opt_state)

    def outcome(lr, beta2, eps, w):
        optimizer = cf.RMSProp(lr, beta2=beta2, eps=eps)
        sol = cf.central_flow(objective, w, optimizer, 12, options=options, eig=eig, opt_state0=nu)
        assert 2 < float(jax.lax.stop_gradient(sol.eos_onset)) < 10
        return sol.predicted_loss[-1]

    grads = jax.grad(outcome, argnums=(0, 1, 2, 3))(*hyper, start)
    direction = jax.random.normal(jax.random.key(3), start.shape)
    h = 1e-4
    for i, value in enumerate(hyper):
        step = h * (1 - value) if i == 1 else h * value
        up, down = list(hyper), list(hyper)
        up[i] += step
        down[i] -= step
        fd = (outcome(*up, start) - outcome(*down, start)) / (2 * step)
        np.testing.assert_allclose(grads[i], fd, rtol=5e-4)
    fd_w = (outcome(*hyper, start + h * direction) - outcome(*hyper, start - h * direction)) / (
        2 * h
    )
    np.testing.assert_allclose(jnp.vdot(grads[3], direction), fd_w, rtol=5e-4)


def test_a_start_state_unlike_the_optimizers_is_refused():
    rmsprop_state = cf.RMSProp(0.1).init(jnp.zeros(3), jnp.ones(3))
    loss = jax.tree_util.Partial(toy_loss, **TOY)
    w0 = {"x": jnp.array(0.0), "y": jnp.array(0.0)}
    with pytest.raises(ValueError, match="`opt_state0` must be shaped like GD's state"):
        cf.central_flow(loss, w0, cf.GD(ETA), 5, opt_state0=rmsprop_state)
    with pytest.raises(ValueError, match="`opt_state0` must be shaped like RMSProp's state"):
        cf.stable_flow(loss, w0, cf.RMSProp(0.1), 5, opt_state0=rmsprop_state)  # ν: 3 ≠ 2


def test_eigenbasis_derivative_matches_the_dense_eigenvectors():
    # The span of the top eigenvectors of H u = λ P u, differentiated matrix-free (CG on
    # the complement), against jnp.linalg.eigh on the dense problem.
    n, b = 12, 3
    m = jax.random.normal(jax.random.key(0), (n, n))

    def loss(w, a):
        return 0.5 * w @ a @ w + 0.1 * jnp.sum(w**4)

    def dense_top(a, w, p):
        d = 1 / jnp.sqrt(p)
        hessian = jax.hessian(loss)(w, a)
        _, vectors = jnp.linalg.eigh(d[:, None] * hessian * d[None, :])
        return (vectors[:, ::-1][:, :b] * d[:, None]).T

    projector = lambda v: v.T @ jnp.linalg.solve(v @ v.T, v)

    def matrix_free(a, w, p):
        basis = dense_top(*jax.lax.stop_gradient((a, w, p)))
        objective = cf.Objective.from_function(jax.tree_util.Partial(loss, a=a), w)
        return projector(eigenbasis(objective, w, p, basis=basis))

    args = ((m + m.T) / 2, jax.random.normal(jax.random.key(1), (n,)), jnp.linspace(1, 2, n))
    for i in range(3):
        tangent = [jnp.zeros_like(x) for x in args]
        tangent[i] = jax.random.normal(jax.random.key(10 + i), args[i].shape)
        got = jax.jvp(matrix_free, args, tuple(tangent))[1]
        want = jax.jvp(lambda *x: projector(dense_top(*x)), args, tuple(tangent))[1]
        assert float(jnp.max(jnp.abs(want))) > 0.1
        np.testing.assert_allclose(got, want, atol=1e-10)


def test_the_eigenbasis_derivative_has_no_host_callback():
    # A host callback in a program keeps it out of the persistent compilation cache; the
    # derivative's CG reports non-convergence as NaN instead, in forward and reverse mode.
    n = 6
    w, p = jnp.linspace(-1, 1, n), jnp.linspace(1, 2, n)
    objective = cf.Objective.from_function(lambda x: 0.5 * x @ x + 0.1 * jnp.sum(x**4), w)
    basis = jnp.eye(n)[:2]
    f = lambda w, p: eigenbasis(objective, w, p, basis=basis)
    forward = jax.jit(lambda w, p: jax.jvp(f, (w, p), (w, p))[1]).lower(w, p).as_text()
    reverse = jax.jit(lambda w, p: jax.vjp(f, w, p)[1](basis)).lower(w, p).as_text()
    assert "custom_linear_solve" in str(
        jax.make_jaxpr(lambda w, p: jax.jvp(f, (w, p), (w, p)))(w, p)
    )
    assert "callback" not in forward and "callback" not in reverse


def test_a_flow_under_jit_says_it_needs_concrete_values():
    with pytest.raises(ValueError, match="cannot run under `jax.jit`"):
        jax.jit(lambda lr: toy_outcomes(lr, TOY, jnp.array(0.0), 5))(ETA)


@pytest.mark.parametrize("solver", [dfx.Bosh3(), dfx.Tsit5(), dfx.Heun(), dfx.Euler()])
def test_the_replay_takes_the_planned_steps(solver, monkeypatch):
    # GD's stable flow on L = ½ a w² is linear, dw/dt = −η a w. To any time the replay
    # takes the planned steps that end before it and one cut at it, as diffrax's own
    # solver stepping to the same times; each planned step is taken once.
    objective, optimizer, w, _ = prepare(
        lambda w: 1.5 * w @ w, jnp.array([1.0, -2.0]), cf.GD(0.4), None
    )
    process = StableFlowProcess(objective, optimizer, cf.EigConfig(), cf.FlowOptions(solver))
    y0 = FlowState(w, initial_opt_state(optimizer, objective, w, None))
    basis = jnp.zeros((2, 2))
    segment = PlannedSegment(0.0, 1.0, (0.3, 0.7, 1.0), 0, basis, None)
    calls = []
    velocity = _replay._velocity
    monkeypatch.setattr(_replay, "_velocity", lambda *a: (calls.append(1), velocity(*a))[1])
    at = _replay._stepper(process, segment, y0, basis)
    tableau = explicit_tableau(solver)
    one_step = len(tableau.a) + (0 if tableau.fsal else 1)

    def stepped(times):
        return dfx.diffeqsolve(
            dfx.ODETerm(process.field(0)),
            solver,
            0.0,
            times[-1],
            None,
            y0,
            basis,
            stepsize_controller=dfx.StepTo(times),
        ).ys.w[-1]

    np.testing.assert_allclose(at(1.0).w, stepped([0.0, 0.3, 0.7, 1.0]), rtol=1e-14)
    assert len(calls) == 3 * one_step + (1 if tableau.fsal else 0)
    np.testing.assert_allclose(at(0.5).w, stepped([0.0, 0.3, 0.5]), rtol=1e-14)
    np.testing.assert_array_equal(at(0.7).w, at(0.7).w)
    before = len(calls)
    np.testing.assert_allclose(at(1.25).w, stepped([0.0, 0.3, 0.7, 1.0, 1.25]), rtol=1e-14)
    assert len(calls) == before + one_step
    np.testing.assert_array_equal(at(0.3).w, at(0.3 + 1e-14).w)  # no step of round-off


def _segments(structures: int) -> list[PlannedSegment]:
    """Planned segments of `structures` structures (one basis width each)."""
    return [
        PlannedSegment(0.0, 1.0, (1.0,), 1, jnp.zeros((m, 3)), None)
        for m in range(1, structures + 1)
    ]


def test_the_memory_map_warning_comes_where_the_replay_may_reach_the_limit(monkeypatch):
    monkeypatch.setattr(_replay, "_map_limit", lambda: 65530)  # Linux's default
    monkeypatch.setattr(_replay, "_memory_maps", lambda: 2000)
    assert len(_replay._structures(_segments(3) + _segments(2))) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _replay._check_map_limit(_segments(3))
    with pytest.warns(UserWarning, match=r"vm.max_map_count is 65530.*\(12 structures.*sysctl"):
        _replay._check_map_limit(_segments(12))
    monkeypatch.setattr(_replay, "_map_limit", lambda: None)  # not Linux
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _replay._check_map_limit(_segments(50))
    monkeypatch.setattr(_replay, "_map_limit", lambda: 65530)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # maps measured on CPU only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _replay._check_map_limit(_segments(50))


def test_a_toy_gradient_does_not_warn_about_memory_maps(toy_jacobian):
    # The toy's replay compiles a few structures: far from Linux's default limit in a
    # process that holds few maps (as a fresh one does).
    _, seen, map_warnings = toy_jacobian
    assert map_warnings == []
    assert len(seen) >= 1 and 1 <= len(_replay._structures(seen[0])) <= 4
