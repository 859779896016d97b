"""The default job and one CIFAR-size config on whatever device JAX finds (a GPU where
the CUDA plugin is installed, `pip install -e ".[cuda]"`; else the CPU), each in a fresh
process, cold (empty compilation cache) and warm (the cache the cold run filled), as
`benchmarks/engine.py` runs them.

Jobs:

- `default`: `centralflows run configs/gd-mlp-digits.toml` (four processes).
- `cifar`: `centralflows run configs/gd-cnn-cifar10.toml` (`--cifar-config` for another).
  CIFAR-10 is read from `data.path` or `CENTRALFLOWS_DATA` (nothing is downloaded); where
  the archive is not found the job is skipped, its reason in the JSON, unless
  `--synthetic-cifar` is given: then it runs on random pixels in the archive's format and
  shapes (the same 3x32x32 inputs, `data.n` and `data.n_test`, classes), which times
  the same arithmetic but not CIFAR's dynamics (onset, critical directions, HVPs).

For each run: the device (platform, kind, count), jax's version, the wall time inside the
process and of the whole process, the programs sent to XLA and compiled
(`centralflows.internal.count_compiles`), and the Hessian-vector products per step of
each process from the run file.

    python benchmarks/device.py                                 # the full jobs
    python benchmarks/device.py --cifar-steps 200 --synthetic-cifar
    python benchmarks/device.py --small                         # a few steps

`--small` runs each job once (cold), discrete only, for 3 steps on a few examples: on 2
busy CPU cores 14 to 29 s with the CIFAR job skipped (the test suite's run), about 50 s
with `--synthetic-cifar`. A job that fails (out of memory, say) is recorded with its
error and the other still runs; the exit status is then 1.
Writes benchmarks/results/device-<platform>.json (`-float32` appended with
`--precision float32`; `--out` elsewhere).
"""

import argparse
import json
import pathlib
import pickle
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from engine import _DEFAULT_JOB, CONFIG, ROOT, _fresh_process, _run_file_counts  # noqa: E402

CIFAR_CONFIG = ROOT / "configs/gd-cnn-cifar10.toml"
JOBS = ("default", "cifar")

# Appended to the default job's code: what the job ran on, from inside the job's process
# (this one never starts a backend, so that a GPU's memory is the job's alone).
_DEVICE = """
import importlib.metadata, jax, os
def _version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
out.update(
    platform=jax.default_backend(),
    device_kind=jax.devices()[0].device_kind,
    device_count=jax.device_count(),
    jax_version=jax.__version__,
    jaxlib_version=_version("jaxlib"),
    cuda_plugin_version=_version("jax-cuda12-plugin") or _version("jax-cuda13-plugin"),
    x64=bool(jax.config.jax_enable_x64),
    xla_flags=os.environ.get("XLA_FLAGS", "").strip(),
)
"""
_DEVICE_KEYS = (
    "platform", "device_kind", "device_count", "jax_version", "jaxlib_version",
    "cuda_plugin_version", "x64", "xla_flags",
)  # fmt: skip

# `--small`: 3 discrete steps on few examples (the CIFAR job keeps its 3x32x32 inputs).
_SMALL = {
    "default": ["data.n=200", "data.n_test=50", "eig.max_neigs=2"],
    "cifar": ["data.n=40", "data.n_test=20", "model.width=4", "eig.max_neigs=2"],
}


def synthetic_cifar10(folder: pathlib.Path, n: int, n_test: int, classes: int) -> pathlib.Path:
    """A CIFAR-10 python folder (`cifar-10-batches-py`) of random pixels in the real
    format, with enough images of each of the first `classes` classes for `n` training
    and `n_test` test images; returns the folder."""
    rng = np.random.default_rng(0)
    per_class = lambda total: -(-total // classes)
    sizes = {f"data_batch_{i}": 10 * -(-per_class(n) // 5) for i in range(1, 6)}
    sizes["test_batch"] = 10 * per_class(max(n_test, 1))
    folder = folder / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        batch = {
            b"data": rng.integers(0, 256, (size, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.permutation(np.arange(size) % 10)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def cifar_data(config: pathlib.Path, overrides: list[str], synthetic: bool, tmp: pathlib.Path):
    """`(more overrides, data label, None)` for the CIFAR job, or `(None, None, reason)`
    where it cannot run."""
    from centralflows._config import load_config
    from centralflows.data._cifar10 import locate_cifar10

    data = load_config(config, overrides)["data"]
    try:
        locate_cifar10(data.get("path", ""))
        return [], "cifar10", None
    except FileNotFoundError as error:
        if not synthetic:
            return None, None, f"{error} (or pass --synthetic-cifar for random pixels)"
    classes = 2 if data["classes"] == "binary" else data["classes"]
    folder = synthetic_cifar10(tmp / "synthetic-cifar10", data["n"], data["n_test"], classes)
    return [f"data.path={folder}"], "synthetic (random pixels, CIFAR-10's shapes)", None


def run_job(config, steps, extra, cache, out, temperature) -> dict:
    """One fresh process running `centralflows run config` (`extra`: more of its
    arguments), with its run file's counts."""
    argv = ["run", str(config), "--steps", str(steps), "--quiet", "--out", str(out), *extra]
    result = _fresh_process(_DEFAULT_JOB + _DEVICE, argv, cache)
    if result["code"] != 0:
        raise RuntimeError(f"`centralflows {' '.join(argv)}` exited {result['code']}")
    newest = max(out.glob("*.h5"), key=lambda p: p.stat().st_mtime)
    return {"temperature": temperature, **result, **_run_file_counts(newest, steps)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="3 discrete steps, few examples")
    parser.add_argument("--steps", type=int, help="the default job's steps (its config's)")
    parser.add_argument("--cifar-steps", type=int, help="the CIFAR job's steps (its config's)")
    parser.add_argument("--cifar-config", default=str(CIFAR_CONFIG))
    parser.add_argument(
        "--synthetic-cifar",
        action="store_true",
        help="random pixels where the CIFAR-10 archive is not found",
    )
    parser.add_argument("--precision", choices=["float64", "float32"], default="float64")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument(
        "--out", help="the JSON (default benchmarks/results/device-<platform>.json)"
    )
    args = parser.parse_args(argv)

    from centralflows._config import load_config

    configs = {"default": pathlib.Path(CONFIG), "cifar": pathlib.Path(args.cifar_config)}
    given = {"default": args.steps, "cifar": args.cifar_steps}
    results = {"command": " ".join(["benchmarks/device.py", *(argv or sys.argv[1:])])}
    results.update(mode="small" if args.small else "full", precision=args.precision, jobs={})
    device = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for job in args.jobs:
            config = configs[job]
            overrides = [f"run.precision={args.precision}", *(_SMALL[job] if args.small else [])]
            steps = given[job] or (3 if args.small else load_config(config)["run"]["steps"])
            name = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
            entry = {"config": str(name), "steps": steps}
            entry["data"] = load_config(config)["data"]["name"]
            if job == "cifar":
                data, label, reason = cifar_data(config, overrides, args.synthetic_cifar, tmp)
                if reason is not None:
                    results["jobs"][job] = {**entry, "skipped": reason}
                    print(job, "skipped:", reason, flush=True)
                    continue
                overrides += data
                entry["data"] = label
            entry["overrides"] = overrides
            extra = [arg for override in overrides for arg in ("--set", override)]
            extra += ["--runs", "discrete"] if args.small else []
            cache = tmp / f"cache-{job}"  # empty: the first run is cold
            runs = []
            results["jobs"][job] = {**entry, "runs": runs}
            for temperature in ("cold",) if args.small else ("cold", "warm"):
                try:
                    result = run_job(config, steps, extra, cache, tmp / f"runs-{job}", temperature)
                except RuntimeError as error:  # out of memory, say: the other job still runs
                    results["jobs"][job]["failed"] = f"{temperature}: {str(error)[-2000:]}"
                    print(job, temperature, "failed:", error, flush=True)
                    break
                device = {k: result.pop(k) for k in list(result) if k in _DEVICE_KEYS}
                runs.append(result)
                print(job, temperature, json.dumps(result), flush=True)
    if not device:
        print(json.dumps(results, indent=2))
        raise SystemExit("No job ran to its end; nothing written.")
    results = {"command": results.pop("command"), **device, **results}
    suffix = "" if args.precision == "float64" else f"-{args.precision}"
    out = pathlib.Path(
        args.out or ROOT / f"benchmarks/results/device-{device['platform']}{suffix}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", out)
    return 1 if any("failed" in entry for entry in results["jobs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
