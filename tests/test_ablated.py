"""The central flow without its curvature penalty, and RMSProp's stationary ν."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest
import scipy.optimize

import centralflows as cf
from centralflows import _flow_processes
from centralflows._config import ConfigError, load_config
from centralflows._experiment import (
    make_eig_config,
    make_flow_options,
    make_optimizer,
    make_problem,
)
from centralflows._flows import CentralFlow, FlowState
from centralflows._integrate import FlowOptions
from centralflows._run import _solver_problems
from centralflows._stationary import StationaryNu, stationary_nu

from .helpers import dense_hessian, small_mlp_objective

# The toy L = ½ a(y) x² + b y, a(y) = s0 − c y, at x = 0 under Scalar RMSProp (eps = 0),
# where H = diag(a, 0), ∇L = (0, b), P = √ν/η and the effective sharpness is λ = a q,
# q = η/√ν. With u = √q eₓ (uᵀPu = 1), Σ = X u uᵀ and c₂ = (1 − β₂)/β₂:
#   dν/dt = c₂(b² + a² q X − ν),  dy/dt = −q(b − ½ c q X)  (no penalty: −q b),
#   dM/dt = dν/ν + c q dy/dt  (M = 2 − λ),
# so α = c₂(b² − ν)/ν − c q² b + (2 − λ)/τ and B = c₂ a² q/ν + ½ c² q³ (no penalty:
# c₂ a² q/ν), X = max(0, −α/B).
S0, C, B, ETA, BETA2, TAU = 1.0, 1.0, 0.1, 0.05, 0.9, 0.25
C2 = (1 - BETA2) / BETA2


def toy_loss(w):
    return 0.5 * (S0 - C * w[1]) * w[0] ** 2 + B * w[1]


def toy_closed_form(y, nu, penalty):
    a, q = S0 - C * y, ETA / np.sqrt(nu)
    alpha = C2 * (B**2 - nu) / nu - C * q**2 * B + (2 - a * q) / TAU
    operator = C2 * a**2 * q / nu + (0.5 * C**2 * q**3 if penalty else 0)
    x = max(0.0, -alpha / operator)
    dy = -q * (B - (0.5 * C * q * x if penalty else 0))
    return x, dy, C2 * (B**2 + a**2 * q * x - nu)


def toy_point(y, nu):
    objective = cf.Objective.from_function(toy_loss, jnp.zeros(2))
    optimizer = cf.ScalarRMSProp(lr=ETA, beta2=BETA2)
    w = jnp.array([0.0, y])
    state = optimizer.init(w, objective.grad(w))
    state = type(state)(state.count, jnp.asarray(nu))
    return objective, optimizer, FlowState(w, state)


@pytest.mark.parametrize("penalty", [True, False])
def test_toy_vector_field_is_the_closed_form(penalty):
    # λ = η a/√ν = 0.05 · 2.5/0.06 ≈ 2.08: past the edge, X > 0.
    objective, optimizer, y = toy_point(-1.5, 0.0036)
    flow = CentralFlow(objective, optimizer, TAU, 1, penalty=penalty)
    terms = flow.terms(y, jnp.array([[1.0, 0.0], [0.0, 0.0]]))
    x, dy, dnu = toy_closed_form(-1.5, 0.0036, penalty)
    assert x > 0
    # B is regularized by 1e-10 relative (sdcp_solve): agreement to ~1e-9.
    np.testing.assert_allclose(terms.X[0, 0], x, rtol=1e-8)
    np.testing.assert_allclose(terms.derivative.w, [0.0, dy], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(terms.derivative.opt_state.nu, dnu, rtol=1e-8)


@pytest.mark.parametrize("penalty", [True, False])
def test_toy_stationary_nu_is_the_root_of_the_closed_form(penalty):
    objective, optimizer, y = toy_point(-1.5, 0.0036)
    flow = CentralFlow(objective, optimizer, TAU, 1, penalty=penalty)
    solution = stationary_nu(flow, y, jnp.array([[1.0, 0.0], [0.0, 0.0]]))
    assert solution.result == optx.RESULTS.successful
    assert float(solution.residual) < 1e-10
    # dν/dt = 0 in the closed form: an independent scalar root (brentq).
    root = scipy.optimize.brentq(lambda nu: toy_closed_form(-1.5, nu, penalty)[2], B**2, 1.0)
    np.testing.assert_allclose(solution.nu, root, rtol=1e-8)
    # And the flow's own ν drift vanishes there.
    y_bar = FlowState(y.w, type(y.opt_state)(y.opt_state.count, solution.nu))
    drift = flow.terms(y_bar, jnp.array([[1.0, 0.0], [0.0, 0.0]])).derivative.opt_state.nu
    assert abs(float(drift)) < 1e-10 * C2 * float(solution.nu)


@pytest.mark.slow  # 10 s
def test_stationary_nu_solves_its_fixed_point_with_two_active_directions():
    # The small MLP at w0 with ν = ∇L² (RMSProp's initial state), at an η that puts the
    # second effective eigenvalue at 8: ν̄ holds two directions (X of rank 2), whose Ritz
    # values meet near 2, where the Ritz vectors are ill-defined.
    objective, w0 = small_mlp_objective(seed=1)
    grad = objective.grad(w0)
    root = jnp.sqrt(jnp.sqrt(grad**2) + 1e-8)  # (η P)^½ at ν = ∇L²
    values, vectors = jnp.linalg.eigh(dense_hessian(objective, w0) / jnp.outer(root, root))
    optimizer = cf.RMSProp(lr=8 / float(values[-2]), beta2=BETA2, eps=1e-8)
    basis = (vectors[:, :-5:-1] / root[:, None]).T  # the top four eigenvectors of P⁻¹H
    y = FlowState(w0, optimizer.init(w0, grad))
    flow = CentralFlow(objective, optimizer, TAU, 4)
    solution = stationary_nu(flow, y, basis)
    assert solution.result == optx.RESULTS.successful
    assert float(solution.residual) < 1e-8
    variances = np.linalg.eigvalsh(solution.X)
    assert np.sum(variances > 1e-3 * variances[-1]) == 2
    # The flow's own terms at ν̄ (Rayleigh–Ritz at P(ν̄), its SDCP) see ν stop.
    y_bar = FlowState(w0, eqx.tree_at(lambda s: s.nu, y.opt_state, solution.nu))
    terms = flow.terms(y_bar, basis)
    drift = terms.derivative.opt_state.nu
    assert float(jnp.max(jnp.abs(drift))) < 1e-8 * C2 * float(jnp.max(solution.nu))
    assert np.sum(np.linalg.eigvalsh(terms.X) > 1e-3 * variances[-1]) == 2
    assert abs(float(terms.ritz.values[1]) - 2) < 0.1


def check_refused_for_gd(monkeypatch, config, process, match):
    """`cf.run` refuses `process` for GD before computing anything, and the config
    `config` (written here, GD on the toy) refuses it when loaded."""
    monkeypatch.setattr(
        "centralflows._run._check_start", lambda *a: pytest.fail("computed before refusing")
    )
    with pytest.raises(ValueError, match=match):
        cf.run(toy_loss, jnp.zeros(2), cf.GD(0.1), steps=5, processes=[process])
    config.write_text('[opt]\nname = "gd"\nlr = 0.1\n[problem]\nname = "toy"\n')
    with pytest.raises(ConfigError, match=f'"{process}", which is undefined'):
        load_config(config, [f'run.processes=["{process}"]'])


def test_the_ablated_flow_is_refused_for_gd_before_any_computation(monkeypatch, tmp_path):
    objective = cf.Objective.from_function(toy_loss, jnp.zeros(2))
    with pytest.raises(ValueError, match="undefined for GD.*`stable`"):
        CentralFlow(objective, cf.GD(0.1), TAU, 1, penalty=False)
    check_refused_for_gd(
        monkeypatch, tmp_path / "gd.toml", "central_no_penalty", "undefined for GD"
    )


def test_the_stationary_flow_is_refused_for_gd_before_any_computation(monkeypatch, tmp_path):
    objective = cf.Objective.from_function(toy_loss, jnp.zeros(2))
    with pytest.raises(ValueError, match="not for GD: GD has no ν"):
        stationary_nu(CentralFlow(objective, cf.GD(0.1), TAU, 1), None, jnp.eye(2))
    config = tmp_path / "gd.toml"
    check_refused_for_gd(monkeypatch, config, "central_stationary", "not for GD")
    config.write_text(config.read_text().replace('"gd"\nlr = 0.1', '"rmsprop"\nlr = 0.1'))
    with pytest.raises(ConfigError, match="defined without the modified-equation term"):
        load_config(config, ['run.processes=["central_stationary"]', "central.modified=true"])


@pytest.mark.slow  # two flows on digits: 2¼-4 min on a shared 2-core CPU, mostly compiling
def test_without_the_penalty_the_digits_mlp_holds_the_edge_and_trains_slower():
    # The digits MLP of rmsprop-mlp-digits-small.toml, halved (100 images, width 16) at
    # twice the learning rate: both flows start at the edge (10 warm-up steps). With this
    # float64 draw of the network the loss without the penalty is 0.16% lower at step 2,
    # then higher from step 7 on, by 0.14% at step 10 and 0.39% at 20, the gap growing
    # (float32's draw: 1.0% and 2.5%); the flows' error is of order rtol = 1e-5.
    config = pathlib.Path(__file__).parents[1] / "configs" / "rmsprop-mlp-digits-small.toml"
    cfg = load_config(config, ["opt.lr=0.006", "data.n=100", "model.width=16"])
    objective, w0 = make_problem(cfg)
    run = cf.run(
        objective,
        w0,
        make_optimizer(cfg["opt"]),
        steps=20,
        processes=["central", "central_no_penalty"],
        eig=make_eig_config(cfg["eig"]),
        central=make_flow_options(cfg)[0],
        warm_start=cfg["run"]["warm_start"],
        progress=False,
    )
    central, ablated = run["central"], run["central_no_penalty"]
    for flow in (central, ablated):
        assert flow["eos_time"][-1] == 0
        np.testing.assert_allclose(flow["effective_hessian_eigs"][5:, 0], 2, atol=0.01)
    ratio = ablated["train_loss"] / central["train_loss"]
    assert ratio[-1] > 1.002, ratio
    assert np.all(np.diff(ratio[8:]) > 0), ratio  # the gap grows


@pytest.mark.slow  # 37 s; the digits ablation (also slow) checks the same and more
def test_the_ablated_rmsprop_flow_holds_the_edge_of_stability():
    objective, w0 = small_mlp_objective()
    optimizer = cf.RMSProp(lr=0.003, beta2=0.9, eps=1e-8)
    run = cf.run(
        objective, w0, optimizer, steps=80, processes=["central_no_penalty"], progress=False
    )
    flow = run["central_no_penalty"]
    onset = float(flow["eos_time"][-1])
    assert np.isfinite(onset) and onset < 70
    # Without the penalty, ν alone holds the constraint: S_eff stays at 2.
    after = flow["effective_hessian_eigs"][int(onset) + 5 :, 0]
    assert np.median(np.abs(after - 2)) < 0.01
    assert np.all(flow["sdcp_residual"][np.isfinite(flow["sdcp_residual"])] < 1e-8)
    assert np.all(np.isfinite(flow["train_loss"]))


@pytest.mark.slow  # the stationary flow's programs take minutes to compile on a shared CPU
def test_the_stationary_flow_holds_the_edge_and_the_central_flow_logs_its_distance():
    # At η = 0.02 RMSProp's initial ν = ∇L² puts S_eff at 5.7: ν̄(w0) holds it at 2.
    objective, w0 = small_mlp_objective()
    optimizer = cf.RMSProp(lr=0.02, beta2=BETA2, eps=1e-8)
    run = cf.run(
        objective,
        w0,
        optimizer,
        steps=2,
        processes=["central", "central_stationary"],
        central=FlowOptions(stationary_nu=True),
        progress=False,
    )
    central, stationary = run["central"], run["central_stationary"]
    assert central["effective_hessian_eigs"][0, 0] > 5
    # ν = ν̄(w) at every step: S_eff at 2, up to the relaxation's offset.
    np.testing.assert_allclose(stationary["effective_hessian_eigs"][:, 0], 2, atol=0.1)
    assert stationary["eos_time"][-1] == 0
    # The central flow's log of ν̄ at w0 is the stationary flow's start (both by sweeps of
    # LOBPCG, to its tolerance, from different starting vectors).
    np.testing.assert_allclose(
        central["stationary_nu_sharpness"][0], stationary["effective_hessian_eigs"][0, 0], rtol=1e-3
    )
    assert np.all(central["stationary_nu_residual"] < 1e-6)
    cosine = central["stationary_nu_cosine"]
    assert np.all((cosine > 0) & (cosine <= 1 + 1e-12))
    # ν = ∇L² starts next to ν̄(w0) (X raises few coordinates), then lags as ν̄ follows
    # the falling gradient (float32: ‖ν − ν̄‖/‖ν̄‖ 0.001, 0.88, 2.3 at t = 0, 1, 2).
    distance = central["stationary_nu_distance"]
    assert distance[0] < 0.01 and distance[-1] > 0.5


@pytest.mark.parametrize(
    "residual, result",
    [(0.8, optx.RESULTS.successful), (1e-9, optx.RESULTS.nonlinear_max_steps_reached)],
)
def test_a_failed_solve_of_the_stationary_nu_is_logged_as_such(monkeypatch, residual, result):
    # A solve of ν̄ that reached Josephy–Newton's step limit, or whose residual is above
    # STATIONARY_TOLERANCE, logs its residual and NaN for the rest (not a wrong cosine),
    # and `_solver_problems` reports it (the run warns once, or with `strict` raises).
    objective, optimizer, y = toy_point(-1.5, 0.0036)
    options = FlowOptions(tau=TAU, stationary_nu=True)
    process = _flow_processes.CentralFlowProcess(objective, optimizer, cf.EigConfig(), options)
    state = process.init(y.w, jax.random.key(0), y.opt_state)
    failed = StationaryNu(
        jnp.asarray(0.004), jnp.zeros((2, 2)), jnp.asarray(residual), result, jnp.asarray(32)
    )
    monkeypatch.setattr(type(process), "stationary_point", lambda self, state: (state, failed))
    record = process._stationary_record(state)
    assert float(record["stationary_nu_residual"]) == residual
    for name in ("cosine", "distance", "sharpness"):
        assert np.isnan(record[f"stationary_nu_{name}"])
    rows = {name: np.asarray([value]) for name, value in record.items()}
    rows.update(train_loss=np.ones(1), eig_converged=np.ones(1), sdcp_residual=np.zeros(1))
    [(name, kind, message)] = _solver_problems({"central": rows}, 0, 10)
    assert (name, kind) == ("central", "stationary")
    assert message.startswith("the solve of the stationary ν̄ failed at 1 step(s) from step 10")
