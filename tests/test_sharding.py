"""Data-parallel objectives: the examples split over four CPU devices give what one device
gives, to round-off.

The checks run in one subprocess (tests/sharded_check.py): this process created its CPU
backend with one device, and the device count cannot change afterwards.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import centralflows as cf
from centralflows._config import ConfigError, validate_config
from centralflows._experiment import make_problem
from centralflows._run import _check_compatible
from centralflows.cli import main

from .helpers import small_mlp_objective
from .test_sweep import TINY

ROOT = pathlib.Path(__file__).parent.parent
ROUND_OFF = 1e-10  # float64; measured: at most 5.9e-13 (docs/performance.md#several-devices)


def _on_four_devices(*checks: str, timeout: float) -> dict[str, dict[str, float]]:
    """The relative differences, one device against four, of `tests.sharded_check`'s
    `checks`, computed in a subprocess with four CPU devices (and the suite's XLA flags)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    done = subprocess.run(
        [sys.executable, "-m", "tests.sharded_check", *checks],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(done.stdout.splitlines()[-1])


def _assert_round_off(differences: dict[str, dict[str, float]]) -> None:
    far = {
        f"{check}: {name}": difference
        for check, quantities in differences.items()
        for name, difference in quantities.items()
        if not difference <= ROUND_OFF  # NaN: finite on one device only
    }
    assert not far, far


def test_derivatives_and_discrete_run_on_four_devices():
    # Loss, gradient, Hessian-vector products, third-order terms and metrics; GD steps with
    # eigen tracking, checkpointed and resumed on four devices (bit-identical to the
    # uninterrupted four-device run; a resume on one device is refused).
    differences = _on_four_devices("derivatives", "discrete", timeout=600)
    derivatives = differences["derivatives"]
    assert {"value", "grad", "hvps", "third_order", "test_loss"} <= derivatives.keys()
    assert {"discrete/w", "discrete/effective_hessian_eigs"} <= differences["discrete"].keys()
    _assert_round_off(differences)


@pytest.mark.slow  # 17 min on 2 busy cores: every program twice, and four CPU devices
# synchronise at each sum (the gradient's replay: 13 min)
def test_central_flow_and_its_gradient_on_four_devices():
    # The central flow through its EOS onset event (checkpointed and resumed), and
    # `jax.grad` of its loss past the onset with respect to the learning rate.
    differences = _on_four_devices("central", "flow_gradient", timeout=3600)
    central = differences["central"]
    assert {"central/w", "central/eos_time", "central/predicted_loss"} <= central.keys()
    _assert_round_off(differences)


@pytest.mark.slow  # 10 min on 2 busy cores (stable 2.5 min, RMSProp 7), mostly compiling
def test_stable_flow_and_rmsprop_on_four_devices():
    # GD's stable flow past effective sharpness 2; RMSProp's discrete iterates and its
    # central flow through its EOS onset event; each checkpointed and resumed.
    differences = _on_four_devices("stable", "rmsprop", timeout=3600)
    assert {"stable/w", "stable/effective_hessian_eigs"} <= differences["stable"].keys()
    rmsprop = differences["rmsprop"]
    assert {"discrete/w", "discrete/opt.nu_l1", "central/w", "central/eos_time"} <= rmsprop.keys()
    # A count, not a result: where a residual sits at LOBPCG's tolerance, round-off can
    # take one more iteration (measured: a refresh's products differ by 6%).
    assert rmsprop.pop("central/eig_hvps") < 0.2
    _assert_round_off(differences)


@pytest.mark.slow  # 67 s on the busy 2-core machine: both processes compile the run
def test_a_run_over_two_processes_writes_one_file(tmp_path):
    # Two processes on this machine (`jax.distributed.initialize` on localhost), each with
    # one CPU device, run `centralflows run` with `run.devices = 2`: process 0 alone
    # writes the run file, which equals the run on one device to round-off.
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    out = tmp_path / "runs"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.multihost_check", str(port), str(i), str(config)]
            + [str(out)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    said = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-5000:]
        said.append(json.loads(stdout.splitlines()[-1]))
    assert said == [
        {"process": i, "devices": {"local": 1, "all": 2}, "status": 0} for i in range(2)
    ]
    assert sorted(p.name for p in out.iterdir()) == ["two.h5"]
    assert main(["run", str(config), "--out", str(tmp_path), "--name", "one", "--quiet"]) == 0
    two, one = cf.load_run(out / "two.h5"), cf.load_run(tmp_path / "one.h5")
    assert two.attrs["devices"] == 2 and one.attrs["devices"] == 1
    assert two.steps_done == one.steps_done == 11
    for field, series in one["discrete"].items():
        if field not in ("eig_residuals",):  # solver residuals: round-off themselves
            np.testing.assert_allclose(two["discrete"][field], series, rtol=ROUND_OFF, atol=0)


def test_more_devices_than_available_is_a_clear_error():
    objective, _ = small_mlp_objective()
    available = jax.device_count()
    with pytest.raises(ValueError, match=f"over {available + 1} devices: JAX sees {available}"):
        objective.sharded(available + 1)
    with pytest.raises(ValueError, match="plain function of the parameters"):
        cf.Objective.from_function(lambda w: w @ w, jax.numpy.ones(3)).sharded(jax.devices())
    assert objective.sharded(1) is objective
    cfg = validate_config({"opt": {"lr": 0.1}, "run": {"devices": available + 1}})
    message = rf"run.devices = {available + 1} exceeds the {available}"
    with pytest.raises(ConfigError, match=message):
        make_problem(cfg)
    with pytest.raises(ConfigError, match="run.devices = 0 is invalid"):
        validate_config({"opt": {"lr": 0.1}, "run": {"devices": 0}})
    with pytest.raises(ConfigError, match=r"\[problem\] has no dataset"):
        validate_config({"opt": {"lr": 0.1}, "problem": {"name": "toy"}, "run": {"devices": 2}})


def test_the_command_line_refuses_more_devices_than_available(capsys):
    available = jax.device_count()
    config = str(ROOT / "configs/gd-mlp-digits-small.toml")
    assert main(["run", config, "--set", f"run.devices={available + 1}", "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert f"run.devices = {available + 1} exceeds the {available} cpu device" in error
    assert f"--xla_force_host_platform_device_count={available + 1}" in error


def test_a_run_file_from_before_the_device_count_resumes_on_one_device(tmp_path):
    path = tmp_path / "run.h5"
    _check_compatible(path, {"chunk": 2}, {"chunk": 2, "devices": 1})
    with pytest.raises(ValueError, match=r"devices: the file has 1, this call gives 4 \(the"):
        _check_compatible(path, {"chunk": 2}, {"chunk": 2, "devices": 4})
