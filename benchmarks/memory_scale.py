"""Peak memory of the gradient, the third-order term and a block of Hessian-vector
products of the CIFAR CNN config, against the dataset size and the chunk size
(`data.chunk_size`), and against the block's width.

`configs/gd-cnn-cifar10.toml` (the paper's CNN, width 32, 544k parameters, float64) on
random pixels in CIFAR-10's format (`benchmarks/device.py`'s `--synthetic-cifar` data:
the same shapes, so the same memory), 100 test examples. Each (examples, chunk size)
point runs in a fresh process, which for each program reports

- XLA's compiled memory analysis: `temp` (the buffers the program allocates while it
  runs), `argument` (its inputs: the dataset, parameters, vectors) and `output`;
- the process's peak resident memory while the program runs, over its resident memory
  before (Linux's `VmHWM`, reset through `/proc/self/clear_refs` after compiling).

The programs: `value_and_grad`; `third_order` (one term); `hvps_k{k}`, `Objective.hvps`
of a block of k vectors, the products as eigen tracking takes them (the gradient
linearised once, its linear map vmapped over the block); `vmapped_k{k}`, the same block
by `hvp` vmapped over it.

    nice -n 10 python benchmarks/memory_scale.py                    # the default points
    nice -n 10 python benchmarks/memory_scale.py --points 2000:100 --widths 1 8 \
        --out benchmarks/results/memory_scale-widths.json
    nice -n 10 python benchmarks/memory_scale.py --compiled-only \
        --points 500:100 2000:100 8000:100 2000:400 8000:400 2000:0 \
        --out benchmarks/results/memory_scale-compiled.json

With `--compiled-only` the programs are compiled but not run: XLA's analysis alone, in
minutes rather than hours on a CPU.

Writes benchmarks/results/memory_scale.json (`--out` elsewhere).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "gd-cnn-cifar10.toml"
MIB = 2**20


def _status(field: str) -> int:
    """A `/proc/self/status` memory field, in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _vmapped_products(objective, w, block):
    """The block's products as `hvp` vmapped over it (an alternative to `Objective.hvps`,
    which linearises the gradient once)."""
    import jax

    return jax.vmap(lambda v: objective.hvp(w, v))(block)


def measure(examples: int, chunk: int, widths: list[int], data: str, run: bool = True) -> dict:
    """In this process: the programs' memory at one (examples, chunk size) point (XLA's
    analysis alone unless `run`)."""
    import equinox as eqx
    import jax

    from centralflows._config import load_config
    from centralflows._experiment import make_problem

    jax.config.update("jax_enable_x64", True)
    overrides = [f"data.n={examples}", "data.n_test=100", f"data.chunk_size={chunk}"]
    overrides.append(f"data.path={data}")
    objective, w = make_problem(load_config(CONFIG, overrides))
    arrays, static = eqx.partition(objective, eqx.is_array)
    key = jax.random.key(0)
    vector = jax.random.normal(key, w.shape)
    programs = {
        "value_and_grad": (lambda o, w: o.value_and_grad(w), (w,)),
        "third_order": (lambda o, w, v: o.third_order(w, v, v), (w, vector)),
    }
    for k in widths:
        block = jax.random.normal(key, (k, w.size))
        programs[f"hvps_k{k}"] = (lambda o, w, vs: o.hvps(w, vs), (w, block))
        programs[f"vmapped_k{k}"] = (_vmapped_products, (w, block))
    out = {"examples": examples, "chunk_size": chunk, "num_params": int(w.size), "programs": {}}
    for name, (fn, args) in programs.items():
        jitted = jax.jit(lambda a, *args, fn=fn: fn(eqx.combine(a, static), *args))
        compiled = jitted.lower(arrays, *args).compile()
        analysis = compiled.memory_analysis()
        out["programs"][name] = {
            "temp_mib": analysis.temp_size_in_bytes / MIB,
            "argument_mib": analysis.argument_size_in_bytes / MIB,
            "output_mib": analysis.output_size_in_bytes / MIB,
        }
        if run:
            pathlib.Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            before = _status("VmRSS")
            jax.block_until_ready(compiled(arrays, *args))
            out["programs"][name]["peak_rss_over_before_mib"] = (_status("VmHWM") - before) / MIB
            out["programs"][name]["rss_before_mib"] = before / MIB
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--points",
        nargs="+",
        default=["500:0", "1000:0", "500:100", "2000:100", "8000:100", "2000:400"],
        metavar="N:CHUNK",
        help="(training examples, chunk size; 0: all at once) points to measure",
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[4])
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/memory_scale.json"))
    parser.add_argument(
        "--compiled-only", action="store_true", help="compile the programs but do not run them"
    )
    parser.add_argument("--point", nargs=3, metavar=("N", "CHUNK", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:  # a child: one point, as JSON on stdout
        examples, chunk, data = args.point
        run = not args.compiled_only
        print(json.dumps(measure(int(examples), int(chunk), args.widths, data, run)))
        return

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from device import synthetic_cifar10

    points = [tuple(int(v) for v in point.split(":")) for point in args.points]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": str(CONFIG.relative_to(ROOT)), "precision": "float64", "results": []}
    record["compiled_only"] = args.compiled_only
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_cifar10(pathlib.Path(tmp), max(n for n, _ in points), 100, 4)
        for examples, chunk in points:
            argv = [sys.executable, __file__, "--point", str(examples), str(chunk), str(data)]
            argv += ["--widths", *map(str, args.widths)]
            argv += ["--compiled-only"] if args.compiled_only else []
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                result = {"examples": examples, "chunk_size": chunk, "error": done.stderr[-2000:]}
                print(f"n={examples} chunk={chunk}: failed", flush=True)
            else:
                result = json.loads(done.stdout.strip().splitlines()[-1])
                peak = lambda p: (
                    f", peak +{p['peak_rss_over_before_mib']:.0f}" if "rss_before_mib" in p else ""
                )
                cells = ", ".join(
                    f"{name}: temp {p['temp_mib']:.0f}{peak(p)}"
                    for name, p in result["programs"].items()
                )
                print(f"n={examples} chunk={chunk} (MiB): {cells}", flush=True)
            record["results"].append(result)
            out.write_text(json.dumps(record, indent=1) + "\n")  # as far as it got
    print(out)


if __name__ == "__main__":
    main()
