"""The device benchmark (`benchmarks/device.py`) and the GPU-against-CPU check
(`scripts/gpu_check.py`) run in their reduced modes on the CPU and write the fields the
performance page reads. Only what the JSON holds is checked, never the times."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from centralflows.data._cifar10 import load_cifar10

ROOT = pathlib.Path(__file__).parents[1]
DEVICE = ROOT / "benchmarks" / "device.py"
GPU_CHECK = ROOT / "scripts" / "gpu_check.py"


def _module(path: pathlib.Path, name: str):
    """The script at `path` as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_small(script: pathlib.Path, out: pathlib.Path) -> subprocess.CompletedProcess:
    """`script --small --out out` in a fresh process."""
    command = [sys.executable, str(script), "--small", "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _device_module(monkeypatch):
    """benchmarks/device.py as a module (it imports `engine` beside it)."""
    monkeypatch.syspath_prepend(str(DEVICE.parent))
    return _module(DEVICE, "device_benchmark")


def test_device_benchmark_small_writes_the_device_compiles_and_hvps(tmp_path, monkeypatch):
    # No CIFAR-10 archive: the CIFAR job is skipped with its reason; the default job runs
    # 3 discrete steps on 200 examples in a fresh process (14 s on 2 busy cores).
    monkeypatch.delenv("CENTRALFLOWS_DATA", raising=False)
    out = tmp_path / "device.json"
    done = _run_small(DEVICE, out)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    assert result["mode"] == "small" and result["precision"] == "float64"
    assert result["platform"] == jax.default_backend()  # the suite's device: the CPU
    assert result["device_kind"] and result["device_count"] >= 1
    assert result["jax_version"] == jax.__version__ and result["x64"] is True

    default = result["jobs"]["default"]
    assert default["config"] == "configs/gd-mlp-digits.toml" and default["steps"] == 3
    (run,) = default["runs"]  # --small: the cold run only
    assert run["temperature"] == "cold" and run["code"] == 0
    assert 0 < run["wall_s"] <= run["process_s"]
    # An empty cache: every program sent to XLA is compiled; the discrete chunk among them.
    assert run["compiled"] == run["cache_misses"] == run["requests"] >= 1
    assert run["programs"].get("jit(_advance_chunk)") == 1
    # LOBPCG spends at least one product per tracked pair (2 here) per step.
    assert math.isfinite(run["discrete_hvps_per_step"]) and run["discrete_hvps_per_step"] >= 2
    assert "midpoint_hvps_per_step" not in run  # discrete only

    cifar = result["jobs"]["cifar"]
    assert "runs" not in cifar and "CIFAR-10" in cifar["skipped"]
    assert "--synthetic-cifar" in cifar["skipped"]


def test_synthetic_cifar_has_the_archives_format_and_shapes(tmp_path, monkeypatch):
    device = _device_module(monkeypatch)
    folder = device.synthetic_cifar10(tmp_path, n=42, n_test=10, classes=4)
    data = load_cifar10(path=str(folder), n=42, n_test=10, classes=4)
    assert data.x_train.shape == (42, 3072) and data.x_test.shape == (10, 3072)
    assert data.image_shape == (3, 32, 32) and data.num_classes == 4
    # As even over the classes as the real subset: 11, 11, 10, 10.
    assert np.bincount(np.asarray(data.y_train)).tolist() == [11, 11, 10, 10]


def test_gpu_check_small_compares_the_cpu_with_itself_and_says_so(tmp_path):
    # Without a GPU both sides run on the CPU: two fresh processes, 10 discrete steps of the
    # toy each (24 s on 2 busy cores, 7 s of CPU time), which must agree exactly.
    out = tmp_path / "check.json"
    done = _run_small(GPU_CHECK, out)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "compared\nthe CPU with itself" in done.stdout
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["same_platform"] is True
    (check,) = report["checks"]
    assert check["devices"]["default"]["platform"] == check["devices"]["cpu"]["platform"] == "cpu"
    assert {row["series"] for row in check["series"]} == {
        "w",
        "train_loss",
        "effective_hessian_eigs",
    }
    assert all(row["difference"] == 0.0 for row in check["series"])  # the same device


def test_gpu_check_difference_is_relative_and_nan_aware():
    check = _module(GPU_CHECK, "gpu_check")
    a = np.array([1.0, -4.0, np.nan])
    assert check.difference(a, a) == 0.0
    assert check.difference(a, np.array([1.0, -4.002, np.nan])) == pytest.approx(0.002 / 4.002)
    assert check.difference(a, np.array([1.0, -4.0, 0.0])) == float("inf")  # NaN on one side
    assert check.difference(a, a[:2]) == float("inf")  # rows missing on one side
