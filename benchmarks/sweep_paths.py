"""A sweep of discrete-only runs over the learning rate, run a process per run and with
the runs that share their problem in one process per worker (`centralflows._sweep.tasks`),
cold (an empty compilation cache) and warm (the cache the cold sweep filled), in
alternating order.

The grid: `configs/gd-mlp-digits.toml` (1000 digits, tanh MLP of width 32), discrete
only, `--steps` steps, opt.lr = 0.3, 0.4, 0.5, 0.6, `--jobs` workers. For each sweep:
its wall time (the parent's, from before the first run starts to after the last ends),
the programs handed to XLA by all its processes and those of them compiled rather than
read from the cache (from `JAX_LOG_COMPILES`'s lines in the runs' logs), and each run's
final training loss (the paths must agree to round-off).

With `--before SRC`, also the sweep of an older source tree `SRC` (e.g. one made by
`git archive`), a process per run, where the optimizer's hyperparameters were compiled in.

    nice -n 10 python benchmarks/sweep_paths.py --repeats 2
    nice -n 10 python benchmarks/sweep_paths.py --before /tmp/centralflows-before

Writes benchmarks/results/sweep_paths.json.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gd-mlp-digits.toml"
LRS = "0.3,0.4,0.5,0.6"

# The sweep, run as its parent process (plain Python, no jax) with `share` where given.
_DRIVER = """
import json, sys, time
from centralflows import _sweep
config, out, steps, jobs, share, lrs = sys.argv[1:7]
runs = _sweep.expand(config, [f"opt.lr={lrs}"], [f"run.steps={steps}",
                     'run.processes=["discrete"]'])
_sweep.prepare(out, runs, config=config)
names = _sweep.todo(out, [run.name for run in runs])
options = {} if share == "before" else {"share": share == "shared"}
start = time.perf_counter()
_sweep.run_local(out, names, jobs=int(jobs), **options)
print(json.dumps({"wall_s": time.perf_counter() - start, "source": _sweep.__file__}))
"""


def _programs(folder: pathlib.Path) -> dict[str, int]:
    """Programs handed to XLA and read from the cache, from the logs of a sweep."""
    text = "".join(path.read_text() for path in (folder / "logs").glob("*.log"))
    requests = len(re.findall(r"^Compiling ", text, re.M))
    hits = len(re.findall(r"^Persistent compilation cache hit", text, re.M))
    return {"requests": requests, "cache_hits": hits, "compiled": requests - hits}


def _final_losses(folder: pathlib.Path) -> dict[str, float]:
    import h5py

    losses = {}
    for path in sorted((folder / "runs").glob("*.h5")):
        with h5py.File(path, "r") as file:
            losses[path.stem] = float(file["discrete/train_loss"][-1])
    return losses


def sweep(path: str, cache: pathlib.Path, steps: int, jobs: int, before: str | None) -> dict:
    """One sweep in a fresh folder with the compilation cache `cache`."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / "sweep"
        env = {**os.environ, "CENTRALFLOWS_CACHE_DIR": str(cache), "JAX_LOG_COMPILES": "1"}
        if path == "before":
            env["PYTHONPATH"] = before
        argv = [sys.executable, "-c", _DRIVER, str(CONFIG), str(folder), str(steps)]
        argv += [str(jobs), path, LRS]
        start = time.perf_counter()
        # From the temporary folder: `python -c` and `-m` put the working directory first on
        # `sys.path`, where the repository's `centralflows` would hide the `--before` one.
        done = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, check=True)
        total = time.perf_counter() - start
        return {
            "path": path,
            **json.loads(done.stdout.strip().splitlines()[-1]),
            "process_s": total,
            **_programs(folder),
            "final_train_loss": _final_losses(folder),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--before", metavar="SRC", help="an older source tree to time too")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/sweep_paths.json"))
    args = parser.parse_args()
    paths = ["per-run", "shared"] + (["before"] if args.before else [])
    results = []
    for repeat in range(args.repeats):
        order = paths if repeat % 2 == 0 else paths[::-1]
        for path in order:
            with tempfile.TemporaryDirectory() as cache:
                for kind in ("cold", "warm"):
                    result = sweep(path, pathlib.Path(cache), args.steps, args.jobs, args.before)
                    result.update(kind=kind, repeat=repeat)
                    results.append(result)
                    print(
                        f"{path:8s} {kind}: {result['wall_s']:6.1f} s, programs "
                        f"{result['requests']} requested, {result['compiled']} compiled",
                        flush=True,
                    )
    losses = np.array(
        [[r["final_train_loss"][k] for k in sorted(r["final_train_loss"])] for r in results]
    )
    spread = float(np.max(np.abs(losses - losses[0]) / np.abs(losses[0])))
    print(f"final losses agree across the sweeps to {spread:.2g} (relative)")
    record = {
        "config": str(CONFIG.relative_to(ROOT)),
        "grid": {"opt.lr": LRS},
        "steps": args.steps,
        "jobs": args.jobs,
        "cpu_count": os.cpu_count(),
        "results": results,
        "final_loss_max_relative_difference": spread,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(out)


if __name__ == "__main__":
    main()
