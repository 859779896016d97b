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


def _gd(small: str, steps: int, full: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """A run of `loss_across_architectures.py`: GD, its central flow and its stable flow
    (no midpoints) on the small config `small` for `steps` steps, or on `full`."""
    processes = 'run.processes=["discrete", "central", "stable"]'
    return {
        "small": (f"configs/{small}.toml", (f"run.steps={steps}", processes)),
        "full": (f"configs/{full}.toml", (processes,)),
    }


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
    # GD on six architectures (small: digits images or sorting sequences, long enough to
    # reach the edge of stability where a few minutes on a CPU allow).
    "gd-mlp": _gd("gd-mlp-digits-small", 200, "gd-mlp-cifar10"),
    "gd-cnn": _gd("gd-cnn-digits-small", 200, "gd-cnn-cifar10"),
    "gd-vit": _gd("gd-vit-digits-small", 100, "gd-vit-cifar10"),
    "gd-lstm": _gd("gd-lstm-sorting-small", 100, "gd-lstm-sorting"),
    "gd-transformer": _gd("gd-transformer-sorting-small", 100, "gd-transformer-sorting"),
    "gd-mamba": _gd("gd-mamba-sorting-small", 30, "gd-mamba-sorting"),
}
"""Each run's config and `--set` overrides, per mode."""


def parser(doc: str, *, several: bool = False) -> argparse.ArgumentParser:
    """The command line every figure script takes (`several`: `--run` takes several
    files, for a script drawing several runs)."""
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
        nargs="+" if several else None,
        help=f"draw {'these run files, one panel each' if several else 'this run file'} "
        "(default: runs/figures/<run>.h5, made first if missing)",
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
