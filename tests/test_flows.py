import logging
import warnings

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import centralflows as cf
from centralflows import _flow_processes, _flows
from centralflows._flow_processes import FLOW_PROCESSES
from centralflows._flows import FlowState

from .helpers import leaving_loss, small_mlp_objective

# The analytic toy of DESIGN §6: L = ½ a(y) x² + b y, a(y) = s0 − c y.
S0, C, B, ETA, TAU = 1.0, 1.0, 0.1, 0.5, 0.25
Y_STAR = (S0 - 2 / ETA) / C  # where η a(y*) = 2
T_STAR = (2 / ETA - S0) / (C * ETA * B)  # gradient flow from y = 0 reaches y* at t = 60


def toy_loss(w):
    return 0.5 * (S0 - C * w["y"]) * w["x"] ** 2 + B * w["y"]


TOY_W0 = {"x": jnp.array(0.0), "y": jnp.array(0.0)}
OPTIONS = cf.FlowOptions(
    dfx.Tsit5(), tau=TAU, stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-10)
)


@pytest.fixture(scope="module")
def toy_central():
    return cf.central_flow(
        toy_loss, TOY_W0, cf.GD(ETA), 100, saveat=[0, 30, 59, 61, 100], options=OPTIONS
    )


def test_toy_stable_flow_is_gradient_flow():
    sol = cf.stable_flow(toy_loss, TOY_W0, cf.GD(ETA), 80, saveat=[0, 40, 80], options=OPTIONS)
    # dy/dt = −ηb: y(t) = −ηbt; the sharpness η a(y) crosses 2 at t* exactly.
    np.testing.assert_allclose(sol.w["y"], -ETA * B * np.array([0, 40, 80]), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        sol.effective_sharpness, ETA * (S0 + C * ETA * B * np.array([0, 40, 80])), rtol=1e-9
    )
    assert float(sol.eos_onset) == pytest.approx(T_STAR, abs=1e-4)


def test_flows_integrate_to_real_times():
    # t1 and the save times need not be integers: y(t) = −ηbt before EOS.
    times = [0.5, 2.25, 12.5]
    for solve in (cf.stable_flow, cf.central_flow):
        sol = solve(toy_loss, TOY_W0, cf.GD(ETA), 12.5, saveat=times, options=OPTIONS)
        np.testing.assert_array_equal(sol.ts, times)
        np.testing.assert_allclose(sol.w["y"], -ETA * B * np.array(times), rtol=1e-9)
        # Units between integers, split at the save times: 0 – 0.5 – 1 … 2 – 2.25 – 3 … 12.5.
        assert len(sol.stats["segments"]) == 15
    with pytest.raises(ValueError, match="t1"):
        cf.stable_flow(toy_loss, TOY_W0, cf.GD(ETA), float("inf"))
    for saveat in ([2.0, 1.0], [0.5, 0.5], [-0.5], [13.0]):
        with pytest.raises(ValueError, match="saveat"):
            cf.stable_flow(toy_loss, TOY_W0, cf.GD(ETA), 12.5, saveat=saveat)


def test_toy_central_flow_onset_and_rest(toy_central):
    sol = toy_central
    # Before EOS the central flow is gradient flow.
    np.testing.assert_allclose(sol.w["y"][:3], -ETA * B * np.array([0, 30, 59]), rtol=1e-9)
    assert np.all(np.isnan(sol.predicted_variances[:2, 0]))
    # With sharpening at rate dλ/dt = cη²b, the relaxed constraint activates when
    # (2 − λ)/τ equals that rate: τ before the sharpness would reach 2.
    # Located on Tsit5's dense output, whose interpolant is accurate to ~1e-7 here.
    assert float(sol.eos_onset) == pytest.approx(T_STAR - TAU, abs=1e-4)
    assert np.isnan(float(sol.stop_time)) and bool(sol.stop_reason == cf.StopReason.running)
    # At rest: y = y*, S_eff = 2, Σ = σ² e_x eₓᵀ with σ² = 2b/c, i.e. X = σ²/η.
    assert float(sol.w["y"][-1]) == pytest.approx(Y_STAR, abs=1e-6)
    assert float(sol.effective_sharpness[-1]) == pytest.approx(2.0, abs=1e-6)
    assert float(sol.predicted_variances[-1, 0]) * ETA == pytest.approx(2 * B / C, rel=1e-5)
    assert float(sol.predicted_loss[-1]) == pytest.approx(B * Y_STAR + 2 * B / (ETA * C), rel=1e-5)


def test_a_sweep_over_the_learning_rate_compiles_once(toy_central, caplog):
    # `toy_central` compiled the flow's programs at η = 0.5; another η reuses them all.
    with jax.log_compiles(), caplog.at_level(logging.WARNING, logger="jax"):
        cf.central_flow(
            toy_loss, TOY_W0, cf.GD(0.55), 100, saveat=[0, 30, 59, 61, 100], options=OPTIONS
        )
        jax.jit(lambda x: x + 1)(1.0)  # a program that is new, so the log is seen
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert len(compiled) == 1 and "<lambda>" in compiled[0], compiled


def test_toy_central_vector_field_vanishes_at_equilibrium():
    objective = cf.Objective.from_function(toy_loss, TOY_W0)
    optimizer = cf.GD(ETA)
    w = jnp.array([0.0, Y_STAR])
    y = FlowState(w, optimizer.init(w, objective.grad(w)))
    terms = cf.CentralFlow(objective, optimizer, TAU, 1).terms(y, jnp.eye(2))
    np.testing.assert_allclose(terms.derivative.w, 0, atol=1e-10)
    # B regularized by 1e-10
    assert float(terms.X[0, 0]) * ETA == pytest.approx(2 * B / C, rel=1e-9)
    assert float(terms.sdcp.residual) < 1e-12


def test_a_unit_with_too_many_events_stops_the_flow_rather_than_skip_time(monkeypatch):
    monkeypatch.setattr(_flow_processes, "_MAX_SEGMENTS", 1)  # the first event is too many
    # The first event: the tracked eigenvalue ηa = 0.5 + η²b t crosses 1.51 at t = 40.4
    # (not at an integer time, where it could as well be seen at the unit's start).
    eig = cf.EigConfig(track_threshold=1.51)
    t_event = (1.51 - ETA * S0) / (C * ETA**2 * B)
    sol = cf.central_flow(
        toy_loss, TOY_W0, cf.GD(ETA), 70, saveat=[0, 40, 70], eig=eig, options=OPTIONS
    )
    assert float(sol.stop_time) == pytest.approx(t_event, abs=1e-6)
    assert bool(sol.stop_reason == cf.StopReason.chatter)
    assert cf.StopReason[sol.stop_reason].startswith("too many events")
    # The last save holds the state at the stop, not a state past the skipped time.
    assert float(sol.w["y"][-1]) == pytest.approx(-ETA * B * t_event, abs=1e-6)


@pytest.mark.parametrize("flow", [cf.central_flow, cf.stable_flow])
def test_parameters_in_another_precision_than_jax_default_are_refused(flow):
    w0 = {k: v.astype(jnp.float32) for k, v in TOY_W0.items()}  # the suite runs in float64
    with pytest.raises(ValueError, match="default float precision.*`w0` is float32"):
        flow(toy_loss, w0, cf.GD(ETA), 10)


def test_watched_conditions_at_a_step_end_come_from_its_last_stage():
    # dw/dt = −w from w = 1; the condition e^{−1/2} − w rises through 0 at t = 1/2. With a
    # `watch` giving the conditions with the vector field, Bosh3's last stage (at the
    # step's end) gives them there: only the bisection and naming the event evaluate them.
    calls = {"conditions": 0}
    count = lambda: calls.__setitem__("conditions", calls["conditions"] + 1)

    values = lambda y: jnp.stack([np.exp(-0.5) - y.w[0], -jnp.inf])

    def conditions(y, basis):
        jax.debug.callback(count)
        return values(y)

    field = lambda t, y, basis: FlowState(-y.w, jnp.zeros(1))
    watch = lambda y, basis: (field(None, y, basis), values(y))
    options = cf.FlowOptions(stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-10))
    y0, basis = FlowState(jnp.ones(1), jnp.zeros(1)), jnp.zeros((1, 1))
    ends, counts = [], []
    for w in (None, watch):
        calls["conditions"] = 0
        end = _flow_processes.integrate_segment(
            field, y0, 0.0, 2.0, 0.1, basis, options, conditions, watch=w
        )
        ends.append(end)
        counts.append(calls["conditions"])
    plain, watched = ends
    assert int(plain.event) == int(watched.event) == 0
    assert int(plain.steps) == int(watched.steps) > 5
    np.testing.assert_allclose([plain.t, watched.t], 0.5, atol=1e-8)
    assert float(plain.t) == float(watched.t)
    np.testing.assert_array_equal(plain.y.w, watched.y.w)
    # Without the watch: once at the start and after every step (accepted or rejected).
    assert counts[0] - counts[1] == 1 + int(plain.steps)
    assert counts[1] > 0  # the bisection still evaluates them inside the step


def two_direction_loss(w):
    # Two oscillating directions x1, x2 whose sharpnesses both depend on y1, y2.
    a1 = 1.0 - 1.0 * w[2] - 0.5 * w[3]
    a2 = 0.8 - 0.5 * w[2] - 1.0 * w[3]
    return 0.5 * a1 * w[0] ** 2 + 0.5 * a2 * w[1] ** 2 + 0.1 * (w[2] + w[3])


def test_two_directions_become_critical_and_active_at_the_closed_form_times(monkeypatch):
    # GD from 0: ẏ = −ηb(1, 1), so ηa1 = 0.5 + ε t and ηa2 = 0.4 + ε t, ε = 0.0375. The
    # onset is where (2 − ηa1)/τ = ε (as for the toy): t1 = 39.75, with m = 2 − ηa1 =
    # ετ. At EOS on x1 alone, ηȧ1 = m1/τ with m1 = m e^{−(t − t1)/τ}, and eliminating σ1²
    # gives ηȧ2 = η²(0.03) + 0.8 ηȧ1. So ηa2 reaches the SDCP threshold 1.95 (x2 enters
    # the critical set) at t1 + (1.95 − ηa2(t1) − 0.8m)/(0.03η²), and X gains its second
    # direction where (2 − ηa2)/τ = 0.03η², at t1 + (2 − 0.03η²τ − ηa2(t1) − 0.8m)/(0.03η²)
    # (dropping e^{−27}).
    objective = cf.Objective.from_function(two_direction_loss, jnp.zeros(4))
    process = FLOW_PROCESSES["central"](
        objective, cf.GD(jnp.asarray(ETA)), cf.EigConfig(initial_neigs=2), OPTIONS
    )
    traced = []  # the basis of each segment program traced (compiled)
    integrate = _flow_processes.integrate_segment
    counting = lambda field, y, t0, t1, dt, basis, *args: (
        traced.append(basis.shape) or integrate(field, y, t0, t1, dt, basis, *args)
    )
    monkeypatch.setattr(_flow_processes, "integrate_segment", counting)
    state, trace = process.init(jnp.zeros(4), jr.key(0)), []
    for t in range(200):
        if t == 50:
            before_activation = state
        state, _, _ = process.advance_unit(state, t, trace)
    events = [
        (s.event.kind.value, s.t1)
        for s in trace
        if s.event is not None and s.event.kind.value != "track"
    ]
    # Events and the critical count are data: one segment program, whatever events it
    # arms and however many directions are critical (here 0, 1 and 2, and 4 combinations
    # of armed events at the counts 1 and 2).
    assert traced == [(4, 4)]
    # A segment takes its first stage and its events' initial values from the observed
    # terms: it ends where one that evaluates them itself does, here at X's activation.
    observed = process.observe_now(before_activation, 50)
    k = observed.num_critical
    assert k == 2 and observed.terms is not None
    armed = process.arm(observed.events, k, observed.state.y.w)
    y, dt, basis = observed.state.y, observed.state.dt, process.basis(observed.state, k)
    args = (y, dt, basis, jnp.asarray(50.0), jnp.asarray(200.0), _flow_processes.critical_count(k))
    args += (armed, jnp.asarray(jnp.inf))
    known, evaluated = process.segment(*args, observed.terms), process.segment(*args)
    fired = process.fired_event(observed.events, k, int(known.event))
    assert fired is not None and fired.kind.value == "activate" and 50 < float(known.t) < 60
    for a, b in zip(jax.tree.leaves(known), jax.tree.leaves(evaluated)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    eps = ETA**2 * 0.15
    t1 = (1.5 - eps * TAU) / eps
    m, a2, rate = eps * TAU, 0.4 + eps * t1, 0.03 * ETA**2
    expected = [
        ("enter", (1.95 - 0.5) / eps),  # x1 enters at ηa1 = 1.95
        ("onset", t1),
        ("enter", t1 + (1.95 - a2 - 0.8 * m) / rate),
        ("activate", t1 + (2 - rate * TAU - a2 - 0.8 * m) / rate),
    ]
    assert [kind for kind, _ in events] == [kind for kind, _ in expected]
    np.testing.assert_allclose([t for _, t in events], [t for _, t in expected], atol=2e-4)
    # Equilibrium: both sharpnesses at 2/η and x1² = x2² = 2b/(c + d) = 0.2/1.5.
    _, k, _, record, _ = process.observe_now(state, 200)
    assert k == 2
    np.testing.assert_allclose(record["predicted_variances"][:2] * ETA, 0.2 / 1.5, rtol=1e-4)
    w = np.asarray(state.y.w)
    np.testing.assert_allclose(
        [ETA * (1 - w[2] - 0.5 * w[3]), ETA * (0.8 - 0.5 * w[2] - w[3])], 2, rtol=1e-5
    )


def test_the_oscillation_deactivates_at_the_closed_form_time():
    # GD with η = 1 from 0: ẏ = k(3 − z), ż = k(3 − y), so y = z = 3(1 − e^{−kt}). The
    # onset is where (1 − y)/τ = k(3 − y). After it, m = 1 − y = m1 e^{−(t − t1)/τ} and
    # ż = k(2 + m), while σ² makes up ẏ = m/τ. σ² = 0 (X loses its direction) where
    # k(3 − z) = m/τ, z = y1 + 2k(t − t1) + k m1 τ (e^{−(t − t1)/τ} dropped: e^{−400}).
    # The crossing is slow (σ² falls by 1.6e-3 a unit), so the event time is 25 times as
    # sensitive as z: at rtol 1e-8 it is 1.6e-3 late, at 1e-10 3e-5.
    k = 0.02
    objective = cf.Objective.from_function(leaving_loss, jnp.zeros(3))
    options = cf.FlowOptions(
        dfx.Tsit5(), tau=TAU, stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12)
    )
    process = FLOW_PROCESSES["central"](
        objective, cf.GD(jnp.asarray(1.0)), cf.EigConfig(initial_neigs=1), options
    )
    state, trace = process.init(jnp.zeros(3), jr.key(0)), []
    for t in range(100):
        state, _, _ = process.advance_unit(state, t, trace)
    events = [
        (s.event.kind.value, s.t1)
        for s in trace
        if s.event is not None and s.event.kind.value != "track"
    ]
    y1 = (1 - 3 * TAU * k) / (1 - TAU * k)
    t1 = -np.log(1 - y1 / 3) / k
    m1 = 1 - y1
    expected = [
        ("enter", -np.log(1 - 0.95 / 3) / k),  # ηa = 1 + y reaches 1.95
        ("onset", t1),
        ("deactivate", t1 + (3 - y1 - k * m1 * TAU) / (2 * k)),
    ]
    assert [kind for kind, _ in events] == [kind for kind, _ in expected]
    np.testing.assert_allclose([t for _, t in events], [t for _, t in expected], atol=1e-4)
    # After it, the stable flow: y falls (ẏ = k(3 − z) < 0), and X stays 0.
    _, _, _, record, _ = process.observe_now(state, 100)
    assert float(state.y.w[1]) < 1 - 1e-3
    assert np.all(np.nan_to_num(np.asarray(record["predicted_variances"])) == 0)


@pytest.mark.slow  # 30 s; tests/test_cli.py::test_flows_from_the_command_line checks it too
def test_below_threshold_central_equals_stable():
    objective, w0 = small_mlp_objective()
    optimizer = cf.GD(lr=0.05)  # effective sharpness stays far below 2
    central = cf.central_flow(objective, w0, optimizer, 20, saveat=[0, 10, 20], options=OPTIONS)
    stable = cf.stable_flow(objective, w0, optimizer, 20, saveat=[0, 10, 20], options=OPTIONS)
    assert float(jnp.max(central.effective_sharpness)) < 1.0
    # The central flow caps its steps at its relaxation rate 1/τ (`FlowOptions.max_step`),
    # so the two take different steps and agree to the solver's tolerance (measured 2e-11).
    np.testing.assert_allclose(
        central.w, stable.w, rtol=1e-10, atol=OPTIONS.stepsize_controller.atol
    )
    assert np.all(np.isnan(central.predicted_variances))
    np.testing.assert_allclose(central.predicted_loss, central.loss)
    assert np.isnan(float(central.eos_onset))


@pytest.mark.slow  # 104 s
def test_small_ritz_basis_agrees_with_the_whole_tracked_basis():
    # Inside a unit of time the vector field works in the critical vectors plus `guard`
    # more; with every tracked vector instead, the path through EOS is the same.
    objective, w0 = small_mlp_objective()
    optimizer = cf.GD(lr=0.9)
    saveat = [0, 40, 50]
    small = cf.central_flow(
        objective, w0, optimizer, 50, saveat=saveat, options=cf.FlowOptions(guard=2)
    )
    whole = cf.central_flow(
        objective, w0, optimizer, 50, saveat=saveat, options=cf.FlowOptions(guard=8)
    )
    assert float(whole.eos_onset) < 45 and bool(jnp.any(whole.predicted_variances[-1] > 0))
    moved = float(jnp.max(jnp.abs(whole.w[-1] - w0)))
    # Measured: 3.6e-5 of a 0.65 move over 60 units.
    assert float(jnp.max(jnp.abs(small.w - whole.w))) < 1e-3 * moved
    np.testing.assert_allclose(small.eos_onset, whole.eos_onset, atol=1e-3)


@pytest.mark.slow  # 123 s
def test_euler_parity_mode_converges_to_the_adaptive_flow():
    # Start just before EOS from a GD iterate; Euler with dt = τ = 1/n is first order in
    # 1/n towards the τ → 0 flow (approximated by the adaptive solver with small τ).
    objective, w0 = small_mlp_objective()
    optimizer = cf.GD(lr=0.9)
    start = jnp.asarray(
        cf.run(objective, w0, optimizer, steps=40, save_w_every=40, progress=False)["discrete"][
            "w"
        ][40]
    )
    fine = cf.FlowOptions(
        dfx.Tsit5(), tau=1 / 32, stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-10)
    )
    reference = cf.central_flow(objective, start, optimizer, 15, options=fine)
    assert float(reference.eos_onset) < 15  # the comparison covers the EOS phase
    errors = [
        float(
            jnp.linalg.norm(
                cf.central_flow(objective, start, optimizer, 15, options=cf.FlowOptions.euler(n)).w
                - reference.w
            )
        )
        for n in (2, 4, 8)
    ]
    # Measured: 3.2e-3, 1.6e-3, 8.1e-4: halving with each doubling.
    assert errors[0] > errors[1] > errors[2]
    assert 1.6 < errors[0] / errors[1] < 2.5 and 1.6 < errors[1] / errors[2] < 2.5


@pytest.mark.parametrize(
    "optimizer, steps",
    [
        # GD through EOS on the digits MLP is tests/test_cli.py's default job
        pytest.param(cf.GD(lr=0.9), 80, marks=pytest.mark.slow),
        (cf.ScalarRMSProp(lr=0.05, beta2=0.9, eps=1e-8), 90),
        (cf.RMSProp(lr=0.003, beta2=0.9, eps=1e-8), 100),
    ],
    ids=["GD", "ScalarRMSProp", "RMSProp"],
)
def test_all_optimizers_run_through_eos_on_a_small_net(optimizer, steps):
    objective, w0 = small_mlp_objective()
    run = cf.run(
        objective, w0, optimizer, steps=steps, processes=("discrete", "central"), progress=False
    )
    central = run["central"]
    for name in ("discrete", "central"):
        assert np.all(np.isfinite(run[name]["train_loss"])), name
    onset = float(central["eos_time"][-1])
    assert np.isfinite(onset) and onset < steps - 20
    after = central["effective_hessian_eigs"][int(onset) + 5 :, 0]
    assert np.median(np.abs(after - 2)) < 0.01  # the central flow holds S_eff at 2
    assert np.all(central["sdcp_residual"][np.isfinite(central["sdcp_residual"])] < 1e-8)
    assert np.all(np.isfinite(run["distances"]["central-discrete"]))
    if isinstance(optimizer, cf.ScalarRMSProp):
        # Paper eq. 28: at EOS the effective step size η/(√ν + ε) equals 2/S(w).
        product = central["opt.effective_step_size"] * central["hessian_eigs"][:, 0]
        np.testing.assert_allclose(product[int(onset) + 5 :], 2.0, rtol=0.02)


# Three directions x_i with sharpnesses a_i = s_i − c y_i, all sharpening at one rate along
# gradient flow y_i(t) = −ηbt: η a_i(t) = η s_i + cη²bt, the eigenvalues of P⁻¹H at x = 0.
ETA_S, RATE = np.array([1.05, 0.8, 0.7]), C * ETA**2 * 0.5


def three_direction_loss(w):
    x, y = w[:3], w[3:]
    return 0.5 * jnp.sum((ETA_S / ETA - C * y) * x**2) + 0.5 * jnp.sum(y)


@pytest.mark.parametrize("name", ["central", "stable"])
def test_tracked_set_grows_where_its_smallest_eigenvalue_crosses_the_threshold(name):
    # η a_1, η a_2 cross 1.5 at t = 3.6 and 5.6; η a_3 at 6.4, when max_neigs are tracked.
    eig = cf.EigConfig(track_threshold=1.5, max_neigs=3)
    objective = cf.Objective.from_function(three_direction_loss, jnp.zeros(6))
    process = FLOW_PROCESSES[name](objective, cf.GD(ETA), eig, cf.FlowOptions())
    state, trace, tracked = process.init(jnp.zeros(6), jr.key(0)), [], []
    for t in range(7):
        state, _, record = process.advance_unit(state, t, trace)
        tracked.append(int(state.tracking.effective.count))
        assert record["segments"] == 1 + (t in (3, 5))
    events = [(s.event.kind.value, s.t1) for s in trace if s.event is not None]
    assert [kind for kind, _ in events] == ["track", "track"]
    # The solution is linear in t, so Tsit5's dense output is exact: the crossing is
    # located to the bisection's tolerance (1e-9).
    np.testing.assert_allclose([t for _, t in events], (1.5 - ETA_S[:2]) / RATE, atol=1e-8)
    assert tracked == [1, 1, 1, 2, 2, 3, 3]  # grown at 3.6 and 5.6, not at 4 and 6
    np.testing.assert_allclose(state.y.w[3:], -ETA * 0.5 * 7, rtol=1e-12)


@pytest.mark.parametrize("max_neigs", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_a_tracked_set_that_is_all_critical_warns(max_neigs):
    # η a_1 reaches the edge at t = 7.35 (onset), η a_2 and η a_3 reach sdcp_threshold =
    # 1.95 at t = 9.2 and 10. With 2 tracked, both critical from 9.2: a third might be.
    # With 4, three at most are critical.
    eig = cf.EigConfig(track_threshold=1.5, max_neigs=max_neigs)
    objective = cf.Objective.from_function(three_direction_loss, jnp.zeros(6))
    process = FLOW_PROCESSES["central"](objective, cf.GD(ETA), eig, cf.FlowOptions())
    state = process.init(jnp.zeros(6), jr.key(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in range(9 if max_neigs == 2 else 12):
            state, _, _ = process.advance_unit(state, t)
    if max_neigs == 2:
        with pytest.warns(UserWarning, match=r"All eig\.max_neigs = 2 tracked .* critical"):
            process.advance_unit(state, 9)
    assert int(state.tracking.effective.count) == max_neigs


def test_ritz_pairs_differentiate_with_several_unused_rows():
    # The unused rows of a basis are shifted below the used Ritz values; shifted by one
    # amount they gave `eigh` equal eigenvalues, whose derivative (divided by their gap)
    # was NaN: a flow's gradient through 3 critical directions in 8 rows.
    key1, key2 = jr.split(jr.key(0))
    a = jr.normal(key1, (6, 6))
    hessian = a @ a.T
    used = jnp.array([True, True, True, False, False, False])
    basis = jnp.where(used[:, None], jnp.linalg.qr(jr.normal(key2, (6, 6)))[0][:, :6].T, 0)
    p_diag = jnp.linspace(1.0, 2.0, 6)

    def top(scale):
        pairs = _flows.ritz_pairs(basis @ (scale * hessian), basis, p_diag, used)
        return jnp.concatenate([pairs.values[:3], pairs.hessian_vectors[:3].ravel() ** 2])

    derivative = jax.jacrev(top)(1.0)
    assert bool(jnp.all(jnp.isfinite(derivative)))
    difference = (top(1.0 + 1e-6) - top(1.0 - 1e-6)) / 2e-6
    np.testing.assert_allclose(derivative, difference, rtol=1e-6, atol=1e-8)
