import pathlib

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import centralflows as cf
from centralflows.internal import count_compiles, stop_reason_of

from .helpers import dense_hessian, small_mlp_objective

EIG = cf.EigConfig(tol=1e-10, max_iters=300, initial_neigs=2)


@pytest.fixture(scope="module")
def gd_run():
    objective, w0 = small_mlp_objective()
    result = cf.run(
        objective,
        w0,
        cf.GD(lr=0.5),
        steps=12,
        processes=("discrete", "midpoint"),
        eig=EIG,
        save_w_every=1,
        chunk=5,  # several chunks, the last one partial
        progress=False,
    )
    return objective, w0, result


def test_discrete_matches_manual_loop(gd_run):
    objective, w0, result = gd_run
    w = w0
    for t in range(13):
        np.testing.assert_allclose(result["discrete"]["w"][t], w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            result["discrete"]["train_loss"][t], objective.value(w), rtol=1e-12
        )
        grad = objective.grad(w)
        np.testing.assert_allclose(
            result["discrete"]["grad_norm_sq"][t], jnp.sum(grad**2), rtol=1e-12
        )
        w = w - 0.5 * grad
    np.testing.assert_array_equal(result.step, np.arange(13))


def test_midpoint_is_second_order_average(gd_run):
    _, w0, result = gd_run
    wd, wm = result["discrete"]["w"], result["midpoint"]["w"]
    np.testing.assert_allclose(wm[0], w0, rtol=1e-12)
    for t in range(1, 12):
        expected = (wd[t - 1] + 2 * wd[t] + wd[t + 1]) / 4
        np.testing.assert_allclose(wm[t], expected, rtol=1e-12, atol=1e-14)
    distance = np.linalg.norm(wd - wm, axis=1)
    np.testing.assert_allclose(
        result["distances"]["discrete-midpoint"], distance, rtol=1e-10, atol=1e-14
    )
    assert distance[5] > 0  # the processes really differ


def test_logged_eigs_match_dense(gd_run):
    objective, _, result = gd_run
    for t in (0, 7, 12):
        w = result["discrete"]["w"][t]
        eigs = np.linalg.eigvalsh(np.asarray(dense_hessian(objective, jnp.asarray(w))))[::-1]
        np.testing.assert_allclose(result["discrete"]["hessian_eigs"][t, :2], eigs[:2], rtol=1e-8)
        np.testing.assert_allclose(
            result["discrete"]["effective_hessian_eigs"][t, :2], 0.5 * eigs[:2], rtol=1e-8
        )
    np.testing.assert_allclose(result["discrete"]["opt.lr"], 0.5)


def test_rmsprop_eigs_use_the_applied_preconditioner():
    objective, w0 = small_mlp_objective()
    optimizer = cf.RMSProp(lr=0.02, beta2=0.9, eps=1e-8)
    result = cf.run(objective, w0, optimizer, steps=4, eig=EIG, save_w_every=1, progress=False)
    state = optimizer.init(w0, objective.grad(w0))
    w = w0
    for t in range(5):
        grad = objective.grad(w)
        w_next, state = optimizer.step(w, state, grad)
        p = np.asarray(optimizer.diagonal(state))  # P(s_{t+1}), the one step t applies
        hessian = np.asarray(dense_hessian(objective, w))
        values = scipy.linalg.eigh(hessian, np.diag(p), eigvals_only=True)[::-1]
        row = result["discrete"]["effective_hessian_eigs"][t]
        np.testing.assert_allclose(row[:2], values[:2], rtol=1e-8)
        raw = result["discrete"]["hessian_eigs"][t]
        np.testing.assert_allclose(raw[:2], np.linalg.eigvalsh(hessian)[::-1][:2], rtol=1e-8)
        w = w_next
    assert set(result["discrete"]) >= {"opt.nu_l1", "opt.ess_mean", "opt.ess_harmonic_mean"}


def test_eig_frequency_solves_every_frequency_steps_and_rayleigh_ritz_between():
    # Between LOBPCG solves the logged values are the Rayleigh–Ritz pairs in the tracked
    # span, at one product per tracked vector: each within its residual of an exact
    # eigenvalue, the top one below the top eigenvalue (Cauchy interlacing).
    objective, w0 = small_mlp_objective()
    eig = cf.EigConfig(frequency=3, tol=1e-8, initial_neigs=2, max_neigs=2)
    lr = 0.1
    run = cf.run(objective, w0, cf.GD(lr=lr), steps=7, eig=eig, save_w_every=1, progress=False)
    result = run["discrete"]
    solved = np.arange(8) % 3 == 0
    np.testing.assert_array_equal(result["eig_converged"][solved], 1)
    assert np.all(np.isnan(result["eig_converged"][~solved]))
    np.testing.assert_array_equal(result["eig_hvps"][~solved], 2)
    assert np.all(result["eig_hvps"][solved] > 2)
    for t in range(8):
        hessian = np.asarray(dense_hessian(objective, jnp.asarray(result["w"][t])))
        exact = lr * np.linalg.eigvalsh(hessian)[::-1]
        values, residuals = result["effective_hessian_eigs"][t], result["eig_residuals"][t]
        if solved[t]:
            np.testing.assert_allclose(values, exact[:2], rtol=1e-8)
            continue
        # ‖A v − θ v‖ in the symmetric form A = P^{-1/2} H P^{-1/2} = ηH.
        gaps = np.min(np.abs(values[:, None] - exact[None, :]), axis=1)
        assert np.all(gaps <= residuals * (1 + 1e-9) + 1e-13)
        assert values[0] <= exact[0] * (1 + 1e-12)
        assert np.max(residuals) > 0  # really Ritz pairs of an earlier span
    assert np.all(np.isfinite(result["train_loss"]))


def test_plain_function_on_a_pytree_reproduces_closed_form(tmp_path):
    # L = ½ Σ a_i w_i², GD: w_t = (1 − η a)^t w_0, for a dict of parameters.
    a = {"x": jnp.array([1.0, 3.0]), "y": jnp.array([[0.5]])}
    w0 = {"x": jnp.array([1.0, -2.0]), "y": jnp.array([[4.0]])}
    loss = lambda w: 0.5 * sum(jnp.sum(a[k] * w[k] ** 2) for k in w)
    path = tmp_path / "quad.h5"
    result = cf.run(loss, w0, cf.GD(lr=0.2), steps=6, out=path, save_w_every=2, progress=False)
    flat_a = np.array([1.0, 3.0, 0.5])
    flat_w0 = np.array([1.0, -2.0, 4.0])
    for t in (0, 2, 4, 6):
        np.testing.assert_allclose(
            result["discrete"]["w"][t], (1 - 0.2 * flat_a) ** t * flat_w0, rtol=1e-12
        )
    assert np.all(np.isnan(result["discrete"]["w"][1::2]))  # only every second step saved
    # Tiny problem (n = 3 < 5k is false for k = 1, but the value is exact either way).
    np.testing.assert_allclose(
        result["discrete"]["effective_hessian_eigs"][:, 0], 0.2 * 3.0, rtol=1e-9
    )
    with h5py.File(path, "r") as f:
        assert "discrete/train_loss" in f and "step" in f
        assert f.attrs["format"] == "centralflows-run"


def test_bad_input_is_rejected_before_any_file(tmp_path):
    objective, w0 = small_mlp_objective()
    out = tmp_path / "run.h5"
    cases = [
        (dict(processes=("discrete", "midpont")), "did you mean 'midpoint'"),
        (dict(steps=0), "steps"),
        (dict(save_w_every=0), "save_w_every"),
        (dict(warm_start=-1), "warm_start"),
        (dict(chunk=2.5), "`chunk` must be a positive integer, got 2.5"),
        (dict(save_w_every=True), "`save_w_every` must be a positive integer, got True"),
        (dict(steps=3.0), "`steps` must be a positive integer, got 3.0"),
    ]
    for kwargs, message in cases:
        kwargs = {"steps": 3, **kwargs}
        with pytest.raises(ValueError, match=message):
            cf.run(objective, w0, cf.GD(lr=0.1), out=out, progress=False, **kwargs)
        assert not out.exists()
    with pytest.raises(ValueError, match="non-finite"):
        cf.run(objective, w0.at[0].set(jnp.nan), cf.GD(lr=0.1), steps=3, out=out, progress=False)
    with pytest.raises(ValueError, match="not finite"):
        cf.run(
            lambda w: jnp.log(-jnp.sum(w**2)),
            jnp.ones(3),
            cf.GD(lr=0.1),
            steps=3,
            out=out,
            progress=False,
        )
    with pytest.raises(ValueError, match="scalar"):
        cf.run(lambda w: w**2, jnp.ones(3), cf.GD(lr=0.1), steps=3, out=out, progress=False)
    with pytest.raises(ValueError, match="the objective has"):
        cf.run(objective, w0[:-1], cf.GD(lr=0.1), steps=3, out=out, progress=False)
    with pytest.raises(ValueError, match="warm-start steps: the optimizer diverged"):
        cf.run(objective, w0, cf.GD(lr=1e3), steps=3, warm_start=50, out=out, progress=False)
    # η(t) = 0.3 − 0.05 t: 0.05 at step 5, zero (−5.6e-17 in floating point) at step 6.
    schedule = cf.GD(lambda t: 0.3 - 0.05 * t)
    cf.run(objective, w0, schedule, steps=4, progress=False)  # steps 1 … 5 only: fine
    with pytest.raises(ValueError, match="at step 6 it is -5.55"):
        cf.run(objective, w0, schedule, steps=3, warm_start=2, out=out, progress=False)
    assert not out.exists()


def test_warm_start_continues_the_discrete_run():
    objective, w0 = small_mlp_objective()
    optimizer = cf.RMSProp(lr=0.01, beta2=0.9, eps=1e-8, bias_correction=True)
    kwargs = dict(processes=("discrete",), eig=EIG, save_w_every=1, progress=False)
    plain = cf.run(objective, w0, optimizer, steps=9, **kwargs)["discrete"]
    warm = cf.run(objective, w0, optimizer, steps=5, warm_start=4, **kwargs)
    assert warm.attrs["warm_start"] == 4
    for name in ("w", "train_loss", "opt.nu_l1", "opt.lr"):
        np.testing.assert_allclose(warm["discrete"][name], plain[name][4:], rtol=1e-10, atol=1e-14)


def test_existing_run_file_is_never_overwritten_by_default(tmp_path):
    out = tmp_path / "run.h5"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        cf.run(
            lambda w: jnp.sum(w**2), jnp.ones(3), cf.GD(lr=0.1), steps=2, out=out, progress=False
        )
    assert out.read_bytes() == b"precious"


def test_a_diverging_process_stops_and_the_others_go_on():
    # L = Σ w⁴/4 from w = 2 with η = 1: GD overshoots ever further (2 → −6 → 210 → …) and
    # overflows within a few steps, while gradient flow (the stable flow) decays smoothly.
    loss = lambda w: jnp.sum(w**4) / 4
    w0 = jnp.array([2.0, 0.5])
    with pytest.warns(UserWarning, match=r"discrete stopped at step \d+: non-finite"):
        result = cf.run(
            loss, w0, cf.GD(lr=1.0), steps=20, processes=("discrete", "stable"), progress=False
        )
    assert result.attrs["stop_reasons"]["1"].startswith("non-finite")
    discrete, stable = result["discrete"], result["stable"]
    stop = int(np.nanmax(discrete["stop_time"]))
    assert 2 <= stop < 10
    assert np.all(np.isnan(discrete["stop_time"][:stop]))
    np.testing.assert_array_equal(discrete["stop_reason"][stop:], 1)
    assert stop_reason_of(1) == cf.StopReason.diverged
    assert np.all(np.isfinite(discrete["train_loss"][:stop]))
    assert not np.isfinite(discrete["train_loss"][stop])  # the step that diverged, as is
    assert np.all(np.isnan(discrete["train_loss"][stop + 1 :]))
    assert np.all(np.isnan(discrete["eig_hvps"][stop + 1 :]))  # no work, and no cast garbage
    assert np.all(np.isnan(result["distances"]["discrete-stable"][stop + 1 :]))
    # The stable flow goes on to the end: dw/dt = −w³, so w(t) = w0 / √(1 + 2 w0² t)
    # (to the default solver tolerance, rtol = 1e-5; the loss is quartic in w).
    assert np.all(np.isnan(stable["stop_reason"]))
    np.testing.assert_allclose(
        stable["train_loss"][-1], loss(w0 / jnp.sqrt(1 + 2 * w0**2 * 20)), rtol=2e-4
    )

    with pytest.warns(UserWarning, match="discrete stopped"):
        halted = cf.run(
            loss,
            w0,
            cf.GD(lr=1.0),
            steps=60,
            processes=("discrete",),
            chunk=5,
            stop_on_divergence=True,
            progress=False,
        )
    assert halted.steps_done == 5 * (stop // 5 + 1)  # up to the chunk where it diverged


def test_unconverged_eigensolves_warn_once_or_fail_when_strict(tmp_path):
    objective, w0 = small_mlp_objective()
    eig = cf.EigConfig(initial_neigs=3, tol=1e-14, max_iters=2)  # cannot converge
    with pytest.warns(UserWarning, match="LOBPCG did not converge") as caught:
        result = cf.run(objective, w0, cf.GD(lr=0.1), steps=6, eig=eig, chunk=2, progress=False)
    assert sum("LOBPCG" in str(w.message) for w in caught) == 1  # once, not per chunk
    np.testing.assert_array_equal(result["discrete"]["eig_converged"], 0)
    residuals = result["discrete"]["eig_residuals"]  # three tracked, room for eight
    assert np.all(residuals[:, :3] > 0) and np.all(np.isnan(residuals[:, 3:]))
    out = tmp_path / "strict.h5"
    with pytest.raises(cf.SolverError, match="discrete: LOBPCG did not converge at 2 step"):
        cf.run(
            objective,
            w0,
            cf.GD(lr=0.1),
            steps=6,
            eig=eig,
            chunk=2,
            out=out,
            strict=True,
            progress=False,
        )
    assert cf.load_run(out).steps_done == 2  # the chunk that failed is in the file
    converged = cf.run(objective, w0, cf.GD(lr=0.1), steps=3, eig=EIG, progress=False)
    np.testing.assert_array_equal(converged["discrete"]["eig_converged"], 1)


@pytest.mark.parametrize("entry", ["run", "central_flow"])
def test_parameters_of_the_wrong_size_or_precision_are_refused(entry):
    objective, w0 = small_mlp_objective()
    call = {
        "run": lambda w: cf.run(objective, w, cf.GD(0.1), steps=2, progress=False),
        "central_flow": lambda w: cf.central_flow(objective, w, cf.GD(0.1), 2),
    }[entry]
    with pytest.raises(
        ValueError, match=f"has {w0.size - 1} parameters; the objective has {w0.size}"
    ):
        call(w0[1:])
    with pytest.raises(ValueError, match="`w0` is float32 but the objective's data is float64"):
        call(w0.astype(jnp.float32))


def test_network_outputs_are_logged_on_fixed_examples():
    # The CLI's problem (make_problem) logs the network's outputs on the first
    # `run.outputs` train and test examples, for every process; they are the network
    # applied to the logged parameters.
    from centralflows._config import load_config
    from centralflows._experiment import make_problem

    overrides = ["data.n=60", "data.n_test=20", "model.width=8", "run.outputs=3"]
    cfg = load_config(pathlib.Path(__file__).parents[1] / "configs/gd-mlp-digits.toml", overrides)
    objective, w0 = make_problem(cfg)
    result = cf.run(
        objective,
        w0,
        cf.GD(0.5),
        steps=4,
        processes=("discrete", "stable"),
        save_w_every=1,
        progress=False,
    )
    for name in ("discrete", "stable"):
        train, test = result[name]["train_outputs"], result[name]["test_outputs"]
        assert train.shape == test.shape == (5, 3, 10)
        for t in (0, 4):
            params = objective.unravel(jnp.asarray(result[name]["w"][t]))
            expected = jax.vmap(lambda x: objective.example_outputs(params, x))(
                objective.train[0][:3]
            )
            np.testing.assert_allclose(train[t], expected, rtol=1e-12)
    np.testing.assert_array_equal(
        result["discrete"]["test_outputs"][0], result["stable"]["test_outputs"][0]
    )  # both start at w0
    assert not np.allclose(
        result["discrete"]["train_outputs"][4], result["discrete"]["train_outputs"][0]
    )  # the outputs moved


def test_the_discrete_programs_do_not_depend_on_the_tracked_count():
    # The tracked set is padded to eig.max_neigs: a run whose tracked set grows (1 → 2 → 3
    # at the first chunk boundary) hands XLA one chunk program and one eigen-refresh
    # program (by name, counting programs read from the persistent cache too), not one
    # per tracked count met.
    objective, w0 = small_mlp_objective()
    eig = cf.EigConfig(tol=1e-10, max_iters=300, track_threshold=1e-3, max_neigs=3)
    jax.clear_caches()
    with count_compiles() as compiles:
        result = cf.run(
            objective,
            w0,
            cf.GD(lr=0.5),
            steps=11,
            processes=("discrete", "midpoint"),
            eig=eig,
            chunk=4,
            progress=False,
        )
    eigs = result["discrete"]["effective_hessian_eigs"]
    np.testing.assert_array_equal(np.sum(np.isfinite(eigs), axis=1), [1] * 4 + [3] * 8)
    assert compiles.programs["jit(_advance_chunk)"] == 1, compiles.programs
    assert compiles.programs["jit(refresh_tracking)"] == 1, compiles.programs
