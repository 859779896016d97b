"""What the figure scripts share: the runs they draw, found or made, and where figures go.

A run is named after its config and mode (`runs/figures/<name>.h5`); a script reads it when
it is there and runs its config first when it is not, so scripts drawing the same run share
one file.
"""

import argparse
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

import centralflows as cf

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / "runs" / "figures"
"""Where the runs the scripts draw are kept."""

RUNS = {
    # GD on an MLP: the default job (small: 1000 digits images, 400 steps), or the paper's
    # CIFAR-10 subset (full: 1000 images of 4 classes, the CIFAR-10 archive needed).
    "gd": {
        "small": ("configs/gd-mlp-digits.toml", ()),
        "full": ("configs/gd-mlp-cifar10.toml", ()),
    },
    # RMSProp and Scalar RMSProp: tanh MLPs on 200 digits images, 100 steps after a warm-up,
    # at the edge of stability (small), or the paper's CIFAR-10 ResNet and CNN (full).
    "rmsprop": {
        "small": ("configs/rmsprop-mlp-digits-small.toml", ()),
        "full": ("configs/rmsprop-resnet-cifar10.toml", ()),
    },
    "scalar_rmsprop": {
        "small": ("configs/scalar-rmsprop-mlp-digits-small.toml", ()),
        "full": ("configs/scalar-rmsprop-cnn-cifar10.toml", ()),
    },
}
"""Each run's config and `--set` overrides, per mode."""


def parser(doc: str) -> argparse.ArgumentParser:
    """The command line every figure script takes."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="the small config, which runs on a laptop CPU in minutes (default: the "
        "paper's settings; a GPU advised)",
    )
    parser.add_argument(
        "--run",
        metavar="RUN.h5",
        help="draw this run file (default: runs/figures/<run>.h5, made first if missing)",
    )
    parser.add_argument(
        "--out", metavar="FILE", help="the image (default: docs/figures/<script>[-small].png)"
    )
    return parser


def run_file(args: argparse.Namespace, run: str) -> pathlib.Path:
    """The run file to draw: `--run`, or `runs/figures/<run>-<mode>.h5`, which is made first
    (its config run by `centralflows run`) when it does not exist."""
    if args.run:
        return pathlib.Path(args.run)
    return find_or_make(run, "small" if args.small else "full")


def find_or_make(run: str, mode: str) -> pathlib.Path:
    """`RUN_DIR/<run>-<mode>.h5`, made first when it does not exist by running its config
    (`RUNS[run][mode]`) in a subprocess, `python -m centralflows.cli run ...`: a process
    that compiles the programs of many configs one after another can exhaust the kernel's
    memory maps (vm.max_map_count), and LLVM then aborts it. Exits with a message naming
    the config when the run fails."""
    config, overrides = RUNS[run][mode]
    path = RUN_DIR / f"{run}-{mode}.h5"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        argv = ["run", str(ROOT / config), "--out", scratch, "--quiet"]
        argv += [arg for item in overrides for arg in ("--set", item)]
        print(f"{path.name} is missing: centralflows {shlex.join(argv)}", file=sys.stderr)
        status = subprocess.run([sys.executable, "-m", "centralflows.cli", *argv]).returncode
        made = list(pathlib.Path(scratch).glob("*.h5"))
        if status or len(made) != 1:
            sys.exit(
                f"the run of {config} for {path.name} failed (exit status {status}; "
                f"its messages are above): centralflows {shlex.join(argv)}"
            )
        shutil.move(made[0], path)  # only a finished run gets the name
    return path


def save(figure, args: argparse.Namespace, script: str) -> None:
    """Write `figure` to `--out` or `docs/figures/<script>[-small].png`."""
    out = args.out or ROOT / "docs" / "figures" / f"{script}{'-small' * args.small}.png"
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(out)


def load(path: pathlib.Path) -> cf.Run:
    """The run at `path`, saying so when it is still being written."""
    run = cf.load_run(path)
    if run.steps_done < run.num_rows:
        print(f"{path}: {run.steps_done} of {run.num_rows} rows written", file=sys.stderr)
    return run
