import inspect
import math
import pathlib
import runpy
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import centralflows as cf
from centralflows._plot import PANELS
from centralflows._runfile import RunWriter, SeriesSpec
from centralflows._stop import stop_messages
from centralflows.cli import main

pytest.importorskip("matplotlib", reason="plotting needs the `figures` extra")

ROWS = 40  # logged steps 0..39 of a GD run with η = 0.5
LR = 0.5
WRITTEN = 25  # rows written to the partial file


def _series(processes=("discrete", "midpoint", "central", "stable")) -> dict[str, np.ndarray]:
    """Rows of a GD run as `cf.run` logs them (the same names, shapes and NaN conventions):
    losses, eigenvalues every other step, a central flow at EOS from step 20."""
    t = np.arange(ROWS, dtype=float)
    rng = np.random.default_rng(0)
    rows = {}
    for i, p in enumerate(processes):
        loss = np.exp(-t / 20) + 0.01 * i
        if p == "discrete":
            loss = loss + 0.05 * (-1) ** t * (t >= 20)
        rows[f"{p}/train_loss"] = loss
        rows[f"{p}/test_loss"] = loss + 0.1
        rows[f"{p}/train_acc"] = 1 - loss / 2
        rows[f"{p}/train_outputs"] = rng.normal(size=(ROWS, 8, 10))  # 8 examples, 10 outputs
        rows[f"{p}/grad_norm_sq"] = 0.1 * loss + rng.random(ROWS) * 1e-3
        rows[f"{p}/opt.lr"] = np.full(ROWS, LR)
        rows[f"{p}/stop_reason"] = np.full(ROWS, np.nan)
        rows[f"{p}/stop_time"] = np.full(ROWS, np.nan)
        sharp = np.minimum(2 + t / 10, 4.0 + 0.1 * i)[:, None] * np.array([1.0, 0.8])
        sharp[1::2] = np.nan  # eig.frequency = 2
        rows[f"{p}/hessian_eigs"] = sharp
        rows[f"{p}/effective_hessian_eigs"] = LR * sharp
    if "central" in processes:
        eos = t >= 20
        rows["central/predicted_loss"] = rows["central/train_loss"] + 0.02 * eos
        rows["central/predicted_grad_norm_sq"] = rows["central/grad_norm_sq"] * (1 + eos)
        variances = np.full((ROWS, 2), np.nan)  # NaN beyond the critical set
        variances[:, 0] = np.where(eos, 0.02, np.nan)
        rows["central/predicted_variances"] = variances
        rows["central/num_critical"] = eos.astype(float)
        rows["central/eos_time"] = np.where(eos, 19.5, np.nan)
        for p in processes:
            if p in ("discrete", "midpoint"):
                rows[f"deltas/{p}"] = np.where(eos, 0.14 * (-1) ** t, np.nan)[:, None]
    for a in processes:
        for b in processes:
            if a < b:
                rows[f"distances/{a}-{b}"] = 1e-3 * (1 + t)
    return rows


def _write(path, rows, num_rows=ROWS, attrs=None, written=ROWS):
    series = {name: SeriesSpec(v.shape[1:]) for name, v in rows.items()}
    attrs = {
        "optimizer": f"GD(lr={LR})",
        "warm_start": 0,
        "stop_reasons": stop_messages(),
        **(attrs or {}),
    }
    writer = RunWriter.create(path, num_rows=num_rows, series=series, attrs=attrs)
    writer.write(0, {name: v[:written] for name, v in rows.items()})
    return writer


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot") / "gd.h5"
    _write(path, _series()).close()
    return path


@pytest.fixture(scope="module")
def run(run_file):
    return cf.load_run(run_file)


def _lines(fig, panel):
    (ax,) = [ax for ax in fig.axes if ax.get_label() == panel]
    return {line.get_gid(): line for line in ax.get_lines()}


def _assert_draws(line, values, lo=0, hi=ROWS):
    """`line` draws `values` (one per row) at the rows in [lo, hi) where they are finite."""
    x, y = line.get_data()
    rows = np.arange(lo, hi)
    np.testing.assert_array_equal(x, rows[np.isfinite(values[lo:hi])])
    np.testing.assert_array_equal(y, values[x])


def test_a_run_of_cf_run_plots_and_logs_the_fixture_names(tmp_path):
    """The fixture's per-process names are those `cf.run` logs (the discrete processes of
    the analytic toy `L = ½(s₀ − cy)x² + by`: a few seconds)."""
    import jax.numpy as jnp

    def loss(w):
        return 0.5 * (3.0 - w["y"]) * w["x"] ** 2 + 0.1 * w["y"]

    w0 = {"x": jnp.asarray(0.1), "y": jnp.asarray(0.0)}
    processes = ("discrete", "midpoint")
    real = cf.run(loss, w0, cf.GD(lr=LR), steps=5, processes=processes, out=tmp_path / "toy.h5")
    fixture = _series(processes)
    for p in processes:
        logged = {name for name in fixture if name.startswith(p + "/")}
        logged -= {f"{p}/{f}" for f in ("test_loss", "train_acc", "train_outputs")}  # no data
        assert logged <= {f"{p}/{field}" for field in real[p]}
    assert set(real["distances"]) == {"discrete-midpoint"}
    fig = cf.plot(real, smooth=1)
    assert [ax.get_label() for ax in fig.axes] == ["loss", "sharpness", "distances", "grad_norm"]
    _assert_draws(_lines(fig, "loss")["midpoint/train_loss"], real["midpoint"]["train_loss"], hi=6)
    np.testing.assert_allclose(_lines(fig, "sharpness")["threshold"].get_ydata(), 2 / LR)


def test_standard_figure_has_the_panels_the_run_has_data_for(run):
    fig = cf.plot(run)
    # GD: no Scalar RMSProp step size, no RMSProp preconditioner; the rest are opt-in.
    assert [ax.get_label() for ax in fig.axes] == [
        "loss",
        "sharpness",
        "distances",
        "variances",
        "grad_norm",
    ]


def test_requested_panels_in_order(run):
    fig = cf.plot(run, panels=["accuracy", "loss"])
    assert [ax.get_label() for ax in fig.axes] == ["accuracy", "loss"]


@pytest.mark.parametrize("steps, lo, hi", [(None, 0, ROWS), ((10, 30), 10, 30), ((None, 5), 0, 5)])
def test_lines_hold_the_run_series_over_the_steps(run, steps, lo, hi):
    fig = cf.plot(run, steps=steps, smooth=1)
    loss = _lines(fig, "loss")
    for p in ("discrete", "midpoint", "central", "stable"):
        _assert_draws(loss[f"{p}/train_loss"], run[p]["train_loss"], lo, hi)
        assert len(loss[f"{p}/train_loss"].get_xdata()) == hi - lo
    _assert_draws(loss["central/predicted_loss"], run["central"]["predicted_loss"], lo, hi)
    # Eigenvalues logged every other step: the line joins the logged ones.
    eigs = run["central"]["hessian_eigs"]
    _assert_draws(_lines(fig, "sharpness")["central/hessian_eigs:1"], eigs[:, 1], lo, hi)
    distance = run["distances"]["central-discrete"]
    _assert_draws(_lines(fig, "distances")["distances/central-discrete"], distance, lo, hi)
    variances = run["central"]["predicted_variances"]  # NaN before the EOS onset
    _assert_draws(
        _lines(fig, "variances")["central/predicted_variances:0"], variances[:, 0], lo, hi
    )
    _assert_draws(
        _lines(fig, "grad_norm")["discrete/grad_norm_sq"], run["discrete"]["grad_norm_sq"], lo, hi
    )


def test_gd_threshold_is_two_over_lr(run):
    x, y = _lines(cf.plot(run, panels=["sharpness"]), "sharpness")["threshold"].get_data()
    np.testing.assert_array_equal(x, np.arange(ROWS))
    np.testing.assert_allclose(y, 2 / LR)
    onset = _lines(cf.plot(run, panels=["sharpness"]), "sharpness")["central/eos_time"]
    np.testing.assert_array_equal(onset.get_xdata(), [19.5, 19.5])  # the central flow's


def test_other_optimizers_plot_effective_eigenvalues_against_two(tmp_path):
    path = tmp_path / "rms.h5"
    rows = _series(("discrete", "central"))
    _write(path, rows, attrs={"optimizer": "RMSProp(lr=0.002)"}).close()
    lines = _lines(cf.plot(path, panels=["sharpness"]), "sharpness")
    np.testing.assert_array_equal(lines["threshold"].get_ydata(), [2.0, 2.0])
    eigs = rows["discrete/effective_hessian_eigs"]
    _assert_draws(lines["discrete/effective_hessian_eigs:0"], eigs[:, 0])
    assert "discrete/hessian_eigs:0" not in lines


_RMSPROP_FIELDS = {"ScalarRMSProp": "opt.effective_step_size", "RMSProp": "opt.nu_l1"}


@pytest.fixture(scope="module")
def rmsprop_files(tmp_path_factory):
    """Run files of Scalar RMSProp and RMSProp: the GD rows with the optimizer's summary."""
    files = {}
    for optimizer, field in _RMSPROP_FIELDS.items():
        path = tmp_path_factory.mktemp("plot") / f"{optimizer}.h5"
        rows = _series(("discrete", "central"))
        for p in ("discrete", "central"):
            rows[f"{p}/{field}"] = 0.01 * (1 + np.arange(ROWS))
        _write(path, rows, attrs={"optimizer": f"{optimizer}(lr=0.01)"}).close()
        files[optimizer] = path
    return files


@pytest.mark.parametrize(
    "optimizer, panel", [("ScalarRMSProp", "step_size"), ("RMSProp", "preconditioner")]
)
def test_rmsprop_panels(rmsprop_files, optimizer, panel):
    run, field = cf.load_run(rmsprop_files[optimizer]), _RMSPROP_FIELDS[optimizer]
    fig = cf.plot(run)
    assert [ax.get_label() for ax in fig.axes][-1] == panel
    lines = _lines(fig, panel)
    _assert_draws(lines[f"central/{field}"], run["central"][field])
    if panel == "step_size":  # against 2/S(w), S the top eigenvalue of H
        bound = lines["discrete/hessian_eigs:2/S"]
        _assert_draws(bound, 2 / run["discrete"]["hessian_eigs"][:, 0])


def test_panels_drawn_into_given_axes(run, tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained")
    fig.suptitle("two runs")
    left, right = fig.subfigures(1, 2)
    axes = right.subplots(3, 1)
    assert cf.plot(run, panels=["sharpness", "loss"], axes=axes[1:]) is fig
    assert [ax.get_label() for ax in axes] == ["", "sharpness", "loss"]
    assert not axes[0].get_lines()  # the Axes not given are left alone
    assert fig.get_suptitle() == "two runs"
    lines = _lines(fig, "loss")
    _assert_draws(lines["central/predicted_loss"], run["central"]["predicted_loss"])
    np.testing.assert_allclose(_lines(fig, "sharpness")["threshold"].get_ydata(), 2 / LR)
    fig.savefig(tmp_path / "two.png")
    assert (tmp_path / "two.png").stat().st_size > 0


@pytest.mark.parametrize(
    "axes, match",
    [
        (
            lambda fig: fig.subplots(1, 3),
            r"holds 3 Axes for the 2 panel\(s\) \['loss', 'sharpness'\]",
        ),
        (lambda fig: fig.subplots(), "must be a sequence of matplotlib Axes"),
        (lambda fig: ["loss", "sharpness"], "must be a sequence of matplotlib Axes"),
    ],
)
def test_given_axes_must_match_the_panels(run, axes, match):
    from matplotlib.figure import Figure

    with pytest.raises(ValueError, match=match):
        cf.plot(run, panels=["loss", "sharpness"], axes=axes(Figure()))


def test_outputs_of_the_first_example(run):
    lines = _lines(cf.plot(run, panels=["outputs"]), "outputs")
    for p in ("discrete", "central"):
        for j in (0, 9):
            _assert_draws(lines[f"{p}/train_outputs:0,{j}"], run[p]["train_outputs"][:, 0, j])


def test_discrete_average_and_squared_deltas(run):
    fig = cf.plot(run, smooth=4)  # widened to 5: rows i-2 .. i+2, fewer at the ends
    _, smoothed = _lines(fig, "loss")["discrete/train_loss:smoothed"].get_data()
    loss = run["discrete"]["train_loss"]
    assert math.isclose(smoothed[20], loss[18:23].mean(), rel_tol=1e-12)
    assert math.isclose(smoothed[1], loss[0:3].mean(), rel_tol=1e-12)
    np.testing.assert_allclose(smoothed[[0, -1]], loss[[0, -1]], rtol=1e-12)  # round-off
    # The squared deltas average to the predicted variance 0.02 in the EOS phase.
    _, deltas = _lines(fig, "variances")["deltas/discrete:0"].get_data()
    np.testing.assert_allclose(deltas, 0.14**2)  # rows 20..39


def test_warm_start_shifts_steps(tmp_path):
    path = tmp_path / "warm.h5"
    _write(path, _series(("discrete",)), attrs={"warm_start": 5}).close()
    fig = cf.plot(path, panels=["loss"], steps=(10, 20), smooth=1)
    x, y = _lines(fig, "loss")["discrete/train_loss"].get_data()
    np.testing.assert_array_equal(x, np.arange(10, 20))  # rows 5..14
    np.testing.assert_array_equal(y, cf.load_run(path)["discrete"]["train_loss"][5:15])


def test_any_subset_of_processes(tmp_path):
    path = tmp_path / "stable.h5"
    _write(path, _series(("stable",))).close()
    fig = cf.plot(path)
    assert [ax.get_label() for ax in fig.axes] == ["loss", "sharpness", "grad_norm"]


def test_a_run_still_being_written_plots_its_rows(tmp_path):
    path = tmp_path / "partial.h5"
    with _write(path, _series(), written=WRITTEN):  # the writer is still open
        fig = cf.plot(path, smooth=1)
        x, y = _lines(fig, "loss")["discrete/train_loss"].get_data()
        np.testing.assert_array_equal(x, np.arange(WRITTEN))
        assert f"{WRITTEN} of {ROWS} rows" in fig.get_suptitle()
        with pytest.raises(ValueError, match="holds no written rows: steps 0 to 24"):
            cf.plot(path, steps=(30, None))


def test_a_stopped_process_is_named_in_the_legend(tmp_path):
    path = tmp_path / "diverged.h5"
    rows = _series(("discrete",))
    rows["discrete/train_loss"][30:] = np.inf
    rows["discrete/stop_time"][30:] = 30.0
    rows["discrete/stop_reason"][30:] = 1.0
    _write(path, rows).close()
    fig = cf.plot(path, panels=["loss"], smooth=1)
    (ax,) = fig.axes
    (label, *_) = ax.get_legend_handles_labels()[1]
    assert label == f"discrete (stopped at step 30: {cf.StopReason[cf.StopReason.diverged]})"
    assert len(_lines(fig, "loss")["discrete/train_loss"].get_xdata()) == 30  # inf left out


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"panels": ["loss", "sharpnes"]},
            r"Unknown panel\(s\) \['sharpnes'\]; valid panels: loss",
        ),
        ({"panels": "loss"}, "non-empty list"),
        ({"panels": ["step_size"]}, r"needs the series \*/opt.effective_step_size"),
        ({"steps": (30, 10)}, "a must be less than b"),
        ({"steps": (100, None)}, "holds no written rows"),
        ({"steps": (1.5, None)}, "integers or None"),
        ({"smooth": 0}, "positive integer"),
    ],
)
def test_bad_input_is_a_clear_error(run, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cf.plot(run, **kwargs)


def test_a_panel_without_its_series_names_it(tmp_path):
    path = tmp_path / "discrete.h5"
    _write(path, _series(("discrete",))).close()
    with pytest.raises(ValueError, match="'variances' needs the series central/predicted_var"):
        cf.plot(path, panels=["variances"])


def test_cli_writes_png_and_svg(run_file, tmp_path, capsys):
    assert main(["plot", str(run_file), "--out", str(tmp_path / "a.png")]) == 0
    png = (tmp_path / "a.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    argv = ["plot", str(run_file), "--out", str(tmp_path / "b.svg"), "--panels", "loss,sharpness"]
    assert main([*argv, "--steps", "5:"]) == 0
    svg = ElementTree.parse(tmp_path / "b.svg").getroot()
    assert svg.tag.endswith("svg")
    ids = {e.get("id") for e in svg.iter()}
    assert {"discrete/train_loss", "threshold"} <= ids and "distances/central-discrete" not in ids


def test_cli_default_output_is_beside_the_run_file(tmp_path, capsys):
    path = tmp_path / "run.h5"
    _write(path, _series(("discrete",))).close()
    assert main(["plot", str(path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "run.png")
    assert (tmp_path / "run.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--panels", "nope"], "valid panels: loss, sharpness"),
        (["--steps", "10"], "--steps must be A:B"),
        (["--steps", "a:b"], "--steps must be A:B"),
        (["--out", "x.jpg"], "extension must be one of .png, .pdf, .svg"),
    ],
)
def test_cli_bad_input_exits_2(run_file, tmp_path, capsys, argv, message):
    assert main(["plot", str(run_file), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not run_file.with_suffix(".png").exists() and not (run_file.parent / "x.jpg").exists()


def test_cli_rejects_missing_and_non_run_files(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "none.h5")]) == 2
    assert "No run file" in capsys.readouterr().err
    (tmp_path / "x.h5").write_text("not hdf5")
    assert main(["plot", str(tmp_path / "x.h5")]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err


def test_missing_matplotlib_names_the_extra(run_file, tmp_path, monkeypatch, capsys):
    for module in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'centralflows\[figures\]'"):
        cf.plot(run_file)
    assert main(["plot", str(run_file), "--out", str(tmp_path / "a.png")]) == 2
    assert "pip install 'centralflows[figures]'" in capsys.readouterr().err


FIGURES = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "figures"


@pytest.mark.parametrize(
    "script, options",
    [
        (FIGURES / "loss_across_architectures.py", ["--small"]),
        (FIGURES / "factorisation_regimes.py", []),
        (FIGURES.parent / "regime_map.py", ["--small"]),
    ],
)
def test_a_figure_script_without_matplotlib_names_the_extra(script, options, monkeypatch):
    for module in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.syspath_prepend(str(FIGURES))
    monkeypatch.setattr(sys, "argv", [script.name, *options])  # refused before it runs
    with pytest.raises(ImportError, match=r"pip install 'centralflows\[figures\]'"):
        runpy.run_path(str(script), run_name="__main__")


def test_importing_the_package_does_not_import_matplotlib():
    code = "import sys, centralflows; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_panels_are_documented():
    assert all(f"`{name!r}`".replace("'", '"') in cf.plot.__doc__ for name in PANELS)


@pytest.mark.parametrize(
    "script, optimizer",
    [
        ("gd_central_flow.py", "GD"),
        ("variances_vs_deltas.py", "GD"),
        ("predicted_grad_norm.py", "GD"),
        ("network_outputs.py", "GD"),
        ("multiple_critical_directions.py", "GD"),
        ("rmsprop_preconditioner.py", "RMSProp"),
        ("scalar_rmsprop_step_size.py", "ScalarRMSProp"),
    ],
)
def test_figure_scripts_draw_a_given_run_file(
    script, optimizer, run_file, rmsprop_files, tmp_path, monkeypatch
):
    out = tmp_path / "figure.png"
    path = run_file if optimizer == "GD" else rmsprop_files[optimizer]
    monkeypatch.syspath_prepend(str(FIGURES))
    monkeypatch.setattr(sys, "argv", [script, "--run", str(path), "--out", str(out)])
    runpy.run_path(str(FIGURES / script), run_name="__main__")
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000


def test_factorisation_regimes_fits_rates_and_draws_four_panels(tmp_path):
    # The script's rate fit and drawing, without its GD runs and central flows.
    script = runpy.run_path(str(FIGURES / "factorisation_regimes.py"))
    steps = np.arange(400.0)
    assert script["_rate"](3 * 0.9**steps, steps) == pytest.approx(0.9, rel=1e-12)
    assert np.isnan(script["_rate"](np.ones(10), np.arange(10.0)))  # nothing in the fit range
    sub, sup = script["SUBCRITICAL"], script["SUPERCRITICAL"]
    central = [len(lrs) for lrs, _ in script["CENTRAL"].values()]
    result = {
        **{key: np.full(sub.size, 0.5) for key in ("sub_measured", "sub_predicted")},
        **{key: np.full(sub.size, 1.5) for key in ("sub_central", "sub_limit", "sub_flow_limit")},
        "super_measured": np.full(sup.size, 0.9),
        "super_mean_loss": np.full(sup.size, 0.01),
        "critical": np.full((2, script["CRITICAL_STEPS"] + 1), 1e-5),
        "central_sub_sharpness": np.full(central[0], 2.0),
        "central_super_loss": np.full(central[1], 0.01),
    }
    figure = script["draw"](result)
    assert len(figure.axes) == 4
    figure.savefig(tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes().startswith(b"\x89PNG")


def test_cli_smooth_default_is_the_functions():
    from centralflows.cli import _parser

    default = inspect.signature(cf.plot).parameters["smooth"].default
    assert _parser().parse_args(["plot", "x.h5"]).smooth == default


def test_loss_across_architectures_draws_one_panel_per_run(
    run_file, rmsprop_files, tmp_path, monkeypatch
):
    script = "loss_across_architectures.py"
    paths = [str(run_file), str(rmsprop_files["RMSProp"]), str(run_file)]
    monkeypatch.syspath_prepend(str(FIGURES))
    for out in (tmp_path / "figure.png", tmp_path / "figure.svg"):
        monkeypatch.setattr(sys, "argv", [script, "--run", *paths, "--out", str(out)])
        runpy.run_path(str(FIGURES / script), run_name="__main__")
    png = (tmp_path / "figure.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    svg = ElementTree.parse(tmp_path / "figure.svg").getroot()
    ids = [e.get("id") for e in svg.iter()]
    assert ids.count("discrete/train_loss") == ids.count("central/predicted_loss") == 3
    assert ids.count("central/opt.nu_l1") == 0  # the loss panel only


def test_the_figure_runs_name_shipped_configs(monkeypatch):
    monkeypatch.syspath_prepend(str(FIGURES))
    import _common

    for name, modes in _common.RUNS.items():
        for config, _ in modes.values():
            assert (_common.ROOT / config).is_file(), (name, config)


@pytest.fixture
def common(tmp_path, monkeypatch):
    """`scripts/figures/_common.py`, keeping its runs under `tmp_path`."""
    monkeypatch.syspath_prepend(str(FIGURES))
    import _common

    monkeypatch.setattr(_common, "RUN_DIR", tmp_path / "runs")
    return _common


_TINY = """
[opt]
name = "gd"
lr = 0.5
[data]
name = "moons"
n = 16
n_test = 8
criterion = "mse"
[model]
name = "mlp"
width = 4
depth = 1
[eig]
max_neigs = 1
[run]
steps = 2
processes = ["discrete"]
"""


def test_a_missing_run_is_made_in_a_subprocess(common, tmp_path, monkeypatch):
    """Two steps of a tiny config, run by `python -m centralflows.cli` (with the test's
    compilation cache: the subprocess inherits CENTRALFLOWS_CACHE_DIR)."""
    config = tmp_path / "tiny.toml"
    config.write_text(_TINY)
    monkeypatch.setitem(common.RUNS, "tiny", {"small": (str(config), ("opt.lr=0.25",))})
    path = common.find_or_make("tiny", "small")
    assert path == common.RUN_DIR / "tiny-small.h5"
    run = cf.load_run(path)
    assert run.steps_done == 3 and set(run) == {"discrete"} and run.config["opt"]["lr"] == 0.25
    assert [p.name for p in common.RUN_DIR.iterdir()] == ["tiny-small.h5"]  # no scratch left
    assert common.find_or_make("tiny", "small") == path  # found, not run again


def test_a_failed_run_names_its_config(common, monkeypatch, capfd):
    monkeypatch.setitem(
        common.RUNS, "bad", {"small": ("configs/gd-mlp-digits.toml", ("opt.lr=-1",))}
    )
    failed = r"the run of configs/gd-mlp-digits.toml for bad-small.h5 failed \(exit status 2;"
    with pytest.raises(SystemExit, match=failed):
        common.find_or_make("bad", "small")
    assert "opt.lr" in capfd.readouterr().err  # the subprocess's own message
    assert not any(common.RUN_DIR.iterdir())
