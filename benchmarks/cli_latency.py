"""How fast the command line answers when it has nothing to compute: `--help`, config
errors and an unusable `--out` (issue 21: under 2 s on a quiet machine).

Each command runs `--repeats` times in a fresh interpreter; the median and the minimum
wall-clock times are reported, with the load average (the times scale with it on a
shared machine), and `import jax` alone for comparison: what these answers no longer wait
for. The tests (`tests/test_cli_fast.py`) check the cause, that jax is not imported, not
the times.

    python benchmarks/cli_latency.py --repeats 5
Writes benchmarks/results/cli_latency.json.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/gd-mlp-digits.toml"


def commands(blocker: pathlib.Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "centralflows.cli"]
    return {
        "--help": [*cli, "--help"],
        "run --help": [*cli, "run", "--help"],
        "--set opt.lr=-1": [*cli, "run", CONFIG, "--set", "opt.lr=-1"],
        "--set opt.lrr=0.1 (unknown key)": [*cli, "run", CONFIG, "--set", "opt.lrr=0.1"],
        "--out under a file": [*cli, "run", CONFIG, "--out", str(blocker / "runs")],
        "import jax (for comparison)": [sys.executable, "-c", "import jax"],
    }


def wall_times(argv: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cli_latency.json"))
    args = parser.parse_args()
    results = {"load_average_before": os.getloadavg()[0], "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        blocker = pathlib.Path(tmp) / "a-file"
        blocker.write_text("")
        for name, argv in commands(blocker).items():
            times = wall_times(argv, args.repeats)
            results[name] = {"median_s": statistics.median(times), "min_s": min(times)}
            print(f"{name:34s} median {statistics.median(times):.2f} s, min {min(times):.2f} s")
    results["load_average_after"] = os.getloadavg()[0]
    before, after = results["load_average_before"], results["load_average_after"]
    print(f"load average {before:.1f} -> {after:.1f}")
    pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
