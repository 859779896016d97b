"""What a user pays for: each job in a fresh process, cold (empty compilation cache)
and warm (the cache the cold run filled), with the programs XLA compiled.

Jobs:

- `default`: `centralflows run configs/gd-mlp-digits.toml` (four processes); also
  reports Hessian-vector products per discrete step and per central-flow unit, and the
  central flow's right-hand-side evaluations per unit, read from the run file.
- `gradient`: one `jax.grad` of the training loss at time `--units` of the digits GD
  central flow with respect to η (at `--lr`).

    python benchmarks/engine.py --jobs default gradient
    python benchmarks/engine.py --jobs default --steps 150    # a shorter default job

Writes benchmarks/results/engine.json (one entry per job and temperature).
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/gd-mlp-digits.toml"

# Each job runs as `python -c PRELUDE + JOB` and prints one JSON line.
_PRELUDE = """
import json, sys, time
from centralflows.internal import count_compiles
start = time.perf_counter()
with count_compiles() as counts:
"""
_DEFAULT_JOB = """
    from centralflows import cli
    code = cli.main(sys.argv[1:])
out = {"code": code}
"""
_GRADIENT_JOB = """
    import jax
    jax.config.update("jax_enable_x64", True)
    import centralflows as cf
    from centralflows._config import load_config
    from centralflows._experiment import make_eig_config, make_flow_options, make_problem
    config, units, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    cf.enable_compilation_cache()
    cfg = load_config(config)
    objective, w0 = make_problem(cfg)
    options, _ = make_flow_options(cfg)
    eig = make_eig_config(cfg["eig"])
    loss = lambda lr: cf.central_flow(
        objective, w0, cf.GD(lr), units, options=options, eig=eig
    ).loss[-1]
    value, grad = jax.value_and_grad(loss)(lr)
out = {"loss": float(value), "dloss_dlr": float(grad)}
"""
_REPORT = """
out.update(wall_s=time.perf_counter() - start, **counts.as_dict())
print("RESULT", json.dumps(out))
"""


def _fresh_process(job: str, argv: list[str], cache: pathlib.Path) -> dict:
    """Run `job` in a new Python process with the compilation cache in `cache`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}
    env["CENTRALFLOWS_CACHE_DIR"] = str(cache)
    code = _PRELUDE + job + _REPORT
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"job failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["process_s"] = time.perf_counter() - start  # with imports and start-up
    return result


def _run_file_counts(path: pathlib.Path, steps: int) -> dict:
    """Eigen-tracking and integration counts of a run file (of the default job's
    processes, those it holds), as medians over the second half of the run (the EOS
    phase)."""
    import centralflows as cf

    run = cf.load_run(path)
    half = slice(steps // 2, steps)
    median = lambda series: float(np.nanmedian(series[half]))
    counts = {
        f"{name}_hvps_per_step": median(run[name]["eig_hvps"])
        for name in ("discrete", "midpoint", "central", "stable")
        if name in run
    }
    if "central" in run:
        counts["central_rhs_evals_per_unit"] = median(run["central"]["rhs_evals"])
        counts["central_num_critical_median"] = median(run["central"]["num_critical"])
    return counts


def default_job(cache: pathlib.Path, steps: int, out: pathlib.Path) -> dict:
    argv = ["run", str(CONFIG), "--steps", str(steps), "--quiet", "--out", str(out)]
    result = _fresh_process(_DEFAULT_JOB, argv, cache)
    newest = max(out.glob("*.h5"), key=lambda p: p.stat().st_mtime)
    return {**result, **_run_file_counts(newest, steps)}


def gradient_job(cache: pathlib.Path, units: int, lr: float) -> dict:
    return _fresh_process(_GRADIENT_JOB, [str(CONFIG), str(units), str(lr)], cache)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", default=["default"], choices=["default", "gradient"])
    parser.add_argument("--steps", type=int, default=400, help="the default job's steps")
    parser.add_argument("--units", type=int, default=200, help="the gradient job's horizon")
    parser.add_argument("--lr", type=float, default=0.5, help="the gradient job's η")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/engine.json"))
    args = parser.parse_args()
    results = {"command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for job in args.jobs:
            cache = tmp / f"cache-{job}"  # empty: the first run is cold
            for temperature in ("cold", "warm"):
                if job == "default":
                    result = default_job(cache, args.steps, tmp / "runs")
                else:
                    result = gradient_job(cache, args.units, args.lr)
                results[f"{job}_{temperature}"] = result
                print(job, temperature, json.dumps(result), flush=True)
    out = pathlib.Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
