"""Checks results on the default device (a GPU where one is installed) against the CPU on
small runs: the same configs, run once on each, must agree within stated tolerances.

Each config runs for `--steps` steps in float64 and in float32 (`run.precision`), in two
fresh processes: one on whatever device JAX picks by default, one with
`JAX_PLATFORMS=cpu`. Both store every iterate (`run.save_w_every = 1`). Compared, per
process: the iterates (for the central flow: its path), the training loss, the central
flow's predicted loss, the top tracked effective-Hessian eigenvalue and the central
flow's onset time (`eos_time`). A series' difference is its largest absolute difference
over the rows divided by its largest magnitude (one number per series; a NaN on one side
only is a disagreement). Tolerances (`TOLERANCES`), stated before any GPU run:

- float64: 1e-6 for iterates and losses (round-off of 1e-16 grown through a few dozen
  steps, the edge of stability's oscillation included); 1e-4 for eigenvalues and the
  onset (LOBPCG stops at a residual of `eig.tol` = 1e-3: two runs stopping one iteration
  apart differ by about tol²/gap, and the onset is located from the eigenvalues).
- float32: 1e-3 for all (float32's 1.2e-7 grown the same way).

Float32 matrix products on recent NVIDIA GPUs use TensorFloat-32 by default (10-bit
mantissas); both sides run with `JAX_DEFAULT_MATMUL_PRECISION=highest`
(`--matmul-precision`; `default` to see what TF32 does), so that a difference is the
device's round-off, not a coarser product.

Where JAX's default device is the CPU (no GPU), both sides run on the CPU: the check then
compares the CPU with itself (determinism across processes), says so and records
`"same_platform": true`.

    python scripts/gpu_check.py                     # toy and small digits MLP, 40 steps
    python scripts/gpu_check.py --small             # the toy, 10 discrete steps, float64
Writes benchmarks/results/gpu-check-<platform>.json (`--out` elsewhere); exits 1 where a
difference exceeds its tolerance, 2 where a run fails.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["configs/gd-toy.toml", "configs/gd-mlp-digits-small.toml"]
TOLERANCES = {
    "float64": {"iterates": 1e-6, "losses": 1e-6, "eigenvalues": 1e-4},
    "float32": {"iterates": 1e-3, "losses": 1e-3, "eigenvalues": 1e-3},
}
# Series compared, by the tolerance they get (`effective_hessian_eigs`: its first column).
SERIES = {
    "iterates": ("w",),
    "losses": ("train_loss", "predicted_loss"),
    "eigenvalues": ("effective_hessian_eigs", "eos_time"),
}

# Runs the CLI and prints the device it ran on.
_RUN = """
import json, sys
from centralflows import cli
code = cli.main(sys.argv[1:])
import jax
device = {"platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}
print("DEVICE", json.dumps({"code": code, **device}))
"""


def run_side(side, config, steps, precision, processes, out, cache, matmul_precision):
    """One fresh process running `config`; `side` "cpu" forces JAX onto the CPU.
    Returns `(device, run file)`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
    if side == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
    if matmul_precision != "default":
        env["JAX_DEFAULT_MATMUL_PRECISION"] = matmul_precision
    argv = ["run", str(ROOT / config), "--steps", str(steps), "--quiet", "--out", str(out)]
    argv += ["--set", f"run.precision={precision}", "--set", "run.save_w_every=1"]
    argv += ["--runs", *processes, "--compilation-cache", str(cache)]
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *argv], capture_output=True, text=True, env=env
    )
    line = [line for line in done.stdout.splitlines() if line.startswith("DEVICE ")]
    if done.returncode != 0 or not line:
        raise RuntimeError(f"{side} run of {config} failed:\n{done.stderr[-3000:]}")
    device = json.loads(line[0].removeprefix("DEVICE "))
    if device.pop("code") != 0:
        raise RuntimeError(f"{side} run of {config} exited {done.returncode}:\n{done.stderr}")
    return device, max(out.glob("*.h5"), key=lambda p: p.stat().st_mtime)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference over the largest magnitude; inf where the shapes, or
    where the NaNs, differ."""
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    finite = ~np.isnan(a)
    if not finite.any():
        return 0.0
    scale = max(np.abs(a[finite]).max(), np.abs(b[finite]).max(), np.finfo(float).tiny)
    return float(np.abs(a[finite] - b[finite]).max() / scale)


def compare(device_file, cpu_file, precision) -> list[dict]:
    """One row per compared series: process, series, difference, tolerance, ok."""
    import centralflows as cf

    ours, cpu = cf.load_run(device_file), cf.load_run(cpu_file)
    rows = []
    for process in sorted(set(ours.attrs["processes"]) & set(cpu.attrs["processes"])):
        for kind, names in SERIES.items():
            for name in names:
                if name not in ours[process] or name not in cpu[process]:
                    continue
                a, b = np.asarray(ours[process][name]), np.asarray(cpu[process][name])
                if name == "effective_hessian_eigs":
                    a, b = a[:, 0], b[:, 0]  # the top tracked eigenvalue
                tolerance = TOLERANCES[precision][kind]
                diff = difference(a.astype(float), b.astype(float))
                rows.append(
                    dict(process=process, series=name, difference=diff, tolerance=tolerance)
                )
                rows[-1]["ok"] = diff <= tolerance
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--precisions", nargs="+", default=["float64", "float32"])
    parser.add_argument("--runs", nargs="+", default=["discrete", "central"])
    parser.add_argument("--matmul-precision", default="highest")
    parser.add_argument("--small", action="store_true", help="the toy, 10 discrete steps, float64")
    parser.add_argument("--out", help="the JSON (default: benchmarks/results/gpu-check-*.json)")
    args = parser.parse_args(argv)
    if args.small:
        args.configs, args.steps = CONFIGS[:1], 10
        args.precisions, args.runs = ["float64"], ["discrete"]

    report = {"command": " ".join(["scripts/gpu_check.py", *(argv or sys.argv[1:])])}
    report.update(steps=args.steps, matmul_precision=args.matmul_precision, checks=[])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for config in args.configs:
            for precision in args.precisions:
                files, devices = {}, {}
                for side in ("default", "cpu"):
                    out = tmp / f"{pathlib.Path(config).stem}-{precision}-{side}"
                    try:
                        devices[side], files[side] = run_side(
                            side, config, args.steps, precision, args.runs, out,
                            tmp / "cache", args.matmul_precision,
                        )  # fmt: skip
                    except RuntimeError as error:
                        print(error, file=sys.stderr)
                        return 2
                rows = compare(files["default"], files["cpu"], precision)
                report["checks"].append(
                    dict(config=config, precision=precision, devices=devices, series=rows)
                )
                for row in rows:
                    flag = "ok" if row["ok"] else "DISAGREE"
                    print(
                        f"{config} {precision} {row['process']}.{row['series']}: "
                        f"{row['difference']:.2e} (tolerance {row['tolerance']:.0e}) {flag}"
                    )
    ran_on = report["checks"][0]["devices"]["default"]
    report.update(platform=ran_on["platform"], device_kind=ran_on["device_kind"])
    report["same_platform"] = ran_on["platform"] == "cpu"
    if report["same_platform"]:
        print("JAX's default device is the CPU: both sides ran on the CPU, so this compared")
        print("the CPU with itself (determinism across processes), not a GPU with the CPU.")
    report["ok"] = all(row["ok"] for check in report["checks"] for row in check["series"])
    out = args.out or ROOT / f"benchmarks/results/gpu-check-{ran_on['platform']}.json"
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("agree" if report["ok"] else "DISAGREE", "- wrote", out)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
