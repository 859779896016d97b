"""The `centralflows` command: run a named config, summarise or plot a run file.

The arguments are parsed and a config is validated (its `--out` too) before jax is
imported, so `--help` and a config error answer at once: the modules below are imported
where they are needed, and `tests/test_cli_fast.py` checks that jax is not.
"""

import argparse
import datetime
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._config import ConfigError, load_config, parse_override, validate_config

if TYPE_CHECKING:
    from ._runfile import Run
    from ._stop import StopReason

_EPILOG = """examples:
  centralflows run configs/gd-mlp-digits.toml
  centralflows run configs/gd-mlp-digits.toml --set opt.lr=0.3 --runs discrete --steps 200
  centralflows run configs/gd-vit-cifar10.toml --dry-run
  centralflows run --resume runs/gd-mlp-digits-20261123-120000.h5 --steps 800
  centralflows info runs/gd-mlp-digits-20261123-120000.h5
  centralflows sweep configs/gd-mlp-digits.toml --grid opt.lr=0.3,0.4,0.5 --grid model.width=32,64
  centralflows info sweeps/gd-mlp-digits
  centralflows plot runs/gd-mlp-digits-20261123-120000.h5 --steps 100:300
"""
_FIGURE_FORMATS = (".png", ".pdf", ".svg")


def _parser() -> argparse.ArgumentParser:
    from ._plot import PANELS  # numpy and h5py, no jax

    parser = argparse.ArgumentParser(
        prog="centralflows",
        description="Optimizers at the edge of stability, run side by side and logged to HDF5.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a config and write one run file")
    run.add_argument("config", nargs="?", help="a TOML config, e.g. configs/gd-mlp-digits.toml")
    run.add_argument(
        "--resume",
        metavar="RUN.h5",
        help="continue this run file from its last checkpoint, with the config stored in "
        "it (to --steps N, default: the steps it was started with)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable), e.g. --set opt.lr=0.3",
    )
    run.add_argument("--runs", nargs="+", metavar="PROCESS", help="processes to run")
    run.add_argument("--steps", type=int, help="number of optimizer steps")
    run.add_argument(
        "--warm-start", type=int, metavar="N", help="take N unlogged optimizer steps first"
    )
    run.add_argument("--out", help="output directory (default: runs)")
    run.add_argument(
        "--name",
        help="the run file's name in --out, without .h5 (default: the config's name and the time)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing run file")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument(
        "--stop-on-divergence",
        action="store_true",
        help="end the run when any process diverges (default: only that process stops)",
    )
    run.add_argument(
        "--strict",
        action="store_true",
        help=(
            "fail when an eigensolve does not converge, an SDCP residual is too large or a "
            "solve of the stationary ν̄ fails"
        ),
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and build the problem (the data is read, the model only "
        "traced), print its size and write nothing",
    )
    run.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="keep compiled programs in DIR ('off': nowhere; default: "
        "$CENTRALFLOWS_CACHE_DIR, else ~/.cache/centralflows/jax)",
    )
    sweep = commands.add_parser(
        "sweep",
        help="run a grid of configs, one run file each, in one sweep folder",
        description="Run the cartesian product of the --grid values on top of CONFIG (and "
        "the --set overrides), one run file each, in one sweep folder with an index "
        "(sweep.json). Run again, it skips the finished runs and resumes the others.",
    )
    sweep.add_argument("config", help="the base TOML config, e.g. configs/gd-mlp-digits.toml")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2,...",
        help="a grid axis (repeatable; the runs are the cartesian product of the axes), "
        "e.g. --grid opt.lr=0.3,0.4,0.5",
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value in every run (repeatable), e.g. --set run.steps=300",
    )
    sweep.add_argument(
        "--out",
        metavar="DIR",
        help="the sweep folder (default: sweeps/<config name>); an existing one is extended "
        "and its unfinished runs are resumed",
    )
    sweep.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="runs at a time (default: locally one per CPU core, at most the runs to do; "
        "with --slurm, the job array's parallelism)",
    )
    sweep.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="submit the runs to SLURM as one job array through submitit (needs the "
        "`cluster` extra), with these sbatch parameters (repeatable; may be none: "
        "--slurm with no value), e.g. --slurm partition=gpu --slurm time=120 "
        "--slurm gpus_per_node=1",
        nargs="?",
        const="",
    )
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the grid and print the runs and what each needs; write nothing",
    )
    info = commands.add_parser("info", help="summarise a run file or a sweep folder")
    info.add_argument(
        "run_file",
        metavar="RUN_FILE|SWEEP_DIR",
        help="a run file written by `centralflows run`, or a sweep folder (a table of its runs)",
    )
    plot = commands.add_parser(
        "plot",
        help="draw a run file's standard figure (needs the `figures` extra)",
        description="Draw the standard multi-panel figure of a run file, also while the run "
        "is still writing it.",
    )
    plot.add_argument("run_file", help="a run file written by `centralflows run`")
    plot.add_argument(
        "--out",
        metavar="FILE",
        help="the image to write, PNG, PDF or SVG by its extension (default: the run file "
        "with the extension .png)",
    )
    plot.add_argument(
        "--panels",
        nargs="+",
        metavar="PANEL",
        help="panels to draw, in order (default: those of "
        + ", ".join(name for name, panel in PANELS.items() if panel.default)
        + " the run has data for; on request also "
        + ", ".join(name for name, panel in PANELS.items() if not panel.default)
        + ")",
    )
    plot.add_argument(
        "--steps",
        metavar="A:B",
        help="draw optimizer steps A <= t < B (either may be left out: 100:, :300)",
    )
    plot.add_argument(
        "--smooth",
        type=int,
        default=11,
        metavar="N",
        help="window in steps of the centred moving averages of oscillating series "
        "(default: 11; an even N is widened to N + 1; 1: none)",
    )
    return parser


def _new_config(args: argparse.Namespace) -> dict:
    """The config of a new run: the file, `--set` overrides and the shortcuts."""
    if args.config is None:
        raise ConfigError("a CONFIG file is required (or --resume RUN.h5)")
    overrides = list(args.overrides)
    if args.runs is not None:
        overrides.append("run.processes=" + repr(list(args.runs)).replace("'", '"'))
    if args.steps is not None:
        overrides.append(f"run.steps={args.steps}")
    if args.warm_start is not None:
        overrides.append(f"run.warm_start={args.warm_start}")
    return load_config(args.config, overrides)


def _resumed_config(args: argparse.Namespace) -> dict:
    """The config stored in the run file to resume, with only `run.steps` changed."""
    from ._runfile import load_run

    given = {
        "CONFIG": args.config,
        "--runs": args.runs,
        "--warm-start": args.warm_start,
        "--out": args.out,
        "--name": args.name,
        "--overwrite": args.overwrite or None,
    }
    refused = [name for name, value in given.items() if value is not None]
    steps = args.steps
    for text in args.overrides:
        section, key, value = parse_override(text)
        if (section, key) == ("run", "steps"):
            steps = value if steps is None else steps
        else:
            refused.append(f"--set {section}.{key}")
    if refused:
        raise ConfigError(
            f"--resume continues the run as configured in its file, so it takes no "
            f"{', '.join(refused)}; only the number of steps may change (--steps N)"
        )
    stored = load_run(args.resume, series=False).config
    if not stored:
        raise ConfigError(
            f"{args.resume} holds no config (it was not written by `centralflows run`); "
            "resume it from Python with `cf.run(..., out=path, resume=True)`"
        )
    raw = {section: dict(table) for section, table in stored.items()}
    raw["run"].setdefault("divergence_factor", 0)  # files from before the option: off
    if steps is not None:
        raw["run"]["steps"] = steps
    return validate_config(raw)


def _run_file_path(args: argparse.Namespace) -> pathlib.Path:
    """The run file to write: the one resumed, or a new one named by the config and the
    time, in `--out`."""
    if args.resume is not None:
        return pathlib.Path(args.resume)
    name = args.name
    if name is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = f"{pathlib.Path(args.config).stem}-{stamp}"
    elif not name or name.startswith(".") or "/" in name or os.sep in name:
        raise ConfigError(f"--name {name!r} must be a file name: not empty, no '/', no leading '.'")
    return pathlib.Path(args.out or "runs") / f"{name}.h5"


def _writes_files() -> bool:
    """Whether this process writes run files: it is alone, or process 0 of a program of
    several (`jax.distributed.initialize`, which imports jax before the CLI runs)."""
    jax = sys.modules.get("jax")
    return jax is None or jax.process_index() == 0


def _run(args: argparse.Namespace) -> int:
    from ._runfile import check_writable

    resume = args.resume is not None
    cfg = _resumed_config(args) if resume else _new_config(args)
    path = _run_file_path(args)
    if not args.dry_run and _writes_files():
        check_writable(path)  # before the model is built and compiled
        if not resume and path.exists() and not args.overwrite:
            raise FileExistsError(
                f"Run file {str(path)!r} already exists; pass `--overwrite` to replace it."
            )

    import jax

    from ._cache import enable_compilation_cache

    jax.config.update("jax_enable_x64", cfg["run"]["precision"] == "float64")
    if args.dry_run:
        print(_dry_run(cfg))
        return 0
    cache = args.compilation_cache  # None: the default directory; "off": none
    if cache is None:
        enable_compilation_cache(True)
    elif cache.lower() != "off":
        enable_compilation_cache(cache)

    from ._experiment import make_problem

    return run_config(
        cfg,
        path,
        make_problem(cfg),
        resume=resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        strict=args.strict,
        stop_on_divergence=args.stop_on_divergence,
        command=" ".join(sys.argv),
    )


def run_config(
    cfg: dict,
    path: pathlib.Path,
    problem: tuple,
    *,
    resume: bool,
    overwrite: bool = False,
    progress: bool = False,
    strict: bool = False,
    stop_on_divergence: bool = False,
    command: str = "",
) -> int:
    """What `centralflows run` does once its config is read: run `cfg` on `problem`,
    writing (or resuming) the run file `path`, and print its summary.

    **Arguments:**

    - `cfg`: the validated config (jax set up for its precision).
    - `path`: the run file.
    - `problem`: `(objective, w0)`, as `make_problem(cfg)` builds it; runs whose configs
      differ only in `[opt]` can share one, and with it their compiled programs.
    - `resume`, `overwrite`, `progress`, `strict`, `stop_on_divergence`: as the options
      of `centralflows run`.
    - `command`: the command line recorded in a new run file.

    **Returns:** the exit status: 0, or 3 when a process diverged or a flow's solver
    failed.
    """
    import jax

    from ._experiment import make_eig_config, make_flow_options, make_optimizer
    from ._run import run

    optimizer = make_optimizer(cfg["opt"])
    eig = make_eig_config(cfg["eig"])
    objective, w0 = problem
    central, stable = make_flow_options(cfg)
    if resume:
        attrs = {"config": cfg}
        print(f"resuming {path}", file=sys.stderr)
    else:
        attrs = {"config": cfg, "command": command}
        print(f"writing {path}", file=sys.stderr)
    result = run(
        objective,
        w0,
        optimizer,
        steps=cfg["run"]["steps"],
        processes=cfg["run"]["processes"],
        eig=eig,
        save_w_every=cfg["run"]["save_w_every"] or None,
        central=central,
        stable=stable,
        out=path,
        overwrite=overwrite,
        chunk=cfg["run"]["chunk"],
        key=jax.random.key(cfg["run"]["seed"]),
        attrs=attrs,
        progress=progress,
        warm_start=cfg["run"]["warm_start"],
        stop_on_divergence=stop_on_divergence,
        divergence_factor=cfg["run"]["divergence_factor"] or None,
        strict=strict,
        checkpoint_every=cfg["checkpoint"]["frequency"],
        checkpoint_at=cfg["checkpoint"]["steps"],
        resume=resume,
        compilation_cache=False,  # set by the caller, before the problem was built
    )
    print(_summary(result))
    print(result.path)
    failed = _failures(result)
    for line in failed:
        print(f"centralflows: {line}", file=sys.stderr)
    return 3 if failed else 0


def _slurm_parameters(texts: Sequence[str]) -> dict:
    """The `--slurm KEY=VALUE` parameters, each value read as TOML (else a string)."""
    parameters = {}
    for text in texts:
        if not text:  # a bare --slurm
            continue
        key, eq, value = text.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"malformed --slurm {text!r}; expected KEY=VALUE, e.g. time=60")
        _, _, parameters[key.strip()] = parse_override(f"slurm.{key.strip()}={value}")
    return parameters


def _slurm_executor(folder: pathlib.Path, parameters: dict, jobs: int | None):
    """A submitit `SlurmExecutor` writing its files in `folder`, with `parameters`."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--slurm needs submitit: pip install 'centralflows[cluster]'") from None
    try:
        executor = submitit.SlurmExecutor(folder=folder)
    except RuntimeError as error:  # no srun: not on a SLURM cluster
        raise ConfigError(f"--slurm: {error}") from None
    parameters = {"job_name": "centralflows-sweep", **parameters}
    if jobs is not None:
        parameters["array_parallelism"] = jobs
    try:
        executor.update_parameters(**parameters)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"--slurm: {error}") from None
    return executor


def _sweep(args: argparse.Namespace) -> int:
    from . import _sweep as sweep

    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    slurm = None if args.slurm is None else _slurm_parameters(args.slurm)
    runs = sweep.expand(args.config, args.grid, args.overrides)
    directory = pathlib.Path(args.out or pathlib.Path("sweeps") / pathlib.Path(args.config).stem)
    if args.dry_run:
        where = "SLURM, as one job array" if slurm is not None else "locally"
        print(f"sweep folder: {directory}; {len(runs)} runs, to run {where}:")
        for run in runs:
            state = sweep.run_state(directory, run.name)
            need = {
                "missing": "start",
                "broken": "restart",
                "resumable": "resume",
                "complete": "skip (finished)",
                "running": "skip (running)",
            }[state]
            print(f"  {run.name}: {need}")
        return 0
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--out {str(directory)!r} is a file, not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    grid = dict(sweep.parse_grid(text) for text in args.grid)
    executor = None
    if slurm is not None:  # before anything is written: the parameters are checked
        executor = _slurm_executor(directory / "slurm", slurm, args.jobs)
    sweep.prepare(directory, runs, config=args.config, grid=grid, overrides=args.overrides)
    names = [run.name for run in runs]
    left = sweep.todo(directory, names)
    print(
        f"sweep {directory}: {len(runs)} runs, {len(runs) - len(left)} finished or running, "
        f"{len(left)} to run",
        file=sys.stderr,
    )
    if not left:
        print(sweep.table(directory))
        return 0
    if executor is not None:
        jobs = sweep.submit(directory, left, executor)
        for name, job in zip(left, jobs):
            print(f"{name}: submitted as SLURM job {job.job_id}")
        return 0
    jobs = args.jobs or min(len(left), os.cpu_count() or 1)
    try:
        results = sweep.run_local(
            directory, left, jobs=jobs, report=lambda line: print(line, file=sys.stderr)
        )
    except KeyboardInterrupt:
        print(
            f"centralflows: interrupted; run the same command again to resume {directory}",
            file=sys.stderr,
        )
        return 130
    print(sweep.table(directory))
    codes = {attempt["exit_status"] for attempt in results.values()}
    index = sweep.load_index(directory)
    if any(entry["status"] != "done" for entry in index["runs"] if entry["name"] in results):
        return 1
    return 3 if 3 in codes else 0


def _dry_run(cfg: dict) -> str:
    """What a run of `cfg` would be, from its problem built abstractly: the data is read
    (so a missing file is reported) and the model traced, but nothing is computed."""
    import equinox as eqx
    import jax

    from ._experiment import make_eig_config, make_flow_options, make_optimizer, make_problem

    make_optimizer(cfg["opt"])
    make_eig_config(cfg["eig"])
    make_flow_options(cfg)
    objective, w0 = eqx.filter_eval_shape(make_problem, cfg)
    eqx.filter_eval_shape(lambda o, w: o.value(w), objective, w0)  # the loss traces
    if "problem" in cfg:
        problem = [f"problem: {cfg['problem']['name']}, {w0.shape[0]} parameters"]
    else:
        problem = [
            f"model: {cfg['model']['name']}, {w0.shape[0]} parameters",
            f"data: {cfg['data']['name']}, {objective.num_train} train and "
            f"{objective.num_test} test examples",
        ]
    devices = objective.num_devices
    if devices > 1:
        per_device = lambda num: -(-num // devices)
        problem.append(
            f"devices: {devices} ({jax.default_backend()}), the examples split over them: "
            f"{per_device(objective.num_train)} train and {per_device(objective.num_test)} "
            "test per device"
        )
    else:
        problem.append(f"devices: 1 ({jax.default_backend()})")
    return "\n".join(
        [
            *problem,
            f"would run: {', '.join(cfg['run']['processes'])} for {cfg['run']['steps']} steps "
            f"(opt.name={cfg['opt']['name']}, opt.lr={cfg['opt']['lr']})",
        ]
    )


def _stop(result: "Run", group: str) -> "tuple[StopReason, float] | None":
    """`(reason, step)` where a process stopped, or `None`."""
    import numpy as np

    from ._stop import stop_reason_of

    series = result[group]
    if "stop_reason" not in series:
        return None
    done = series["stop_reason"][: result.steps_done]
    stopped = np.flatnonzero(np.isfinite(done))
    if not len(stopped):
        return None
    row = stopped[-1]
    step = int(result.attrs.get("warm_start", 0)) + float(series["stop_time"][row])
    return stop_reason_of(int(done[row])), step


def _failures(result: "Run") -> list[str]:
    """One line per process that diverged or whose solver failed."""
    from ._stop import describe_stop, is_failure

    lines = []
    for group in result:
        stop = _stop(result, group)
        if stop is not None and is_failure(stop[0]):
            lines.append(f"{group} {describe_stop(stop[1], stop[0])}")
    return lines


def _summary(result: "Run") -> str:
    from ._regimes import summarize
    from ._stop import describe_stop

    offset = int(result.attrs.get("warm_start", 0))
    lines = [
        f"run file: {result.path}",
        f"steps done: {result.steps_done - 1} of {result.num_rows - 1}",
    ]
    if offset:
        lines.append(f"warm start: {offset} unlogged steps (row t is optimizer step {offset} + t)")
    opt = result.config.get("opt")
    if opt:
        lines.append("optimizer: " + ", ".join(f"{k}={v}" for k, v in opt.items()))
    for summary in summarize(result):
        regime = summary.regime
        where = "" if regime.step is None else f" (step {offset + regime.step})"
        hover = "" if regime.hover is None else f", hovering at {regime.hover:.3f}"
        final = dict(summary.final)
        sharpness = final.pop("sharpness")
        metrics = ", ".join(f"{name}={value:.4g}" for name, value in final.items())
        lines.append(f"{summary.process}: {regime.kind}{where}{hover}")
        stop = _stop(result, summary.process)
        if stop is not None:
            lines.append(f"  {describe_stop(stop[1], stop[0])}")
        lines.append(f"  final {metrics}, effective sharpness={sharpness:.4g}")
    return "\n".join(lines)


def _parse_steps(text: str) -> tuple[int | None, int | None]:
    """`"A:B"` as `(A, B)`, either `None` where left out."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(part) if part.strip() else None for part in parts)
    except ValueError:
        raise ValueError(
            f"--steps must be A:B with integers A < B (either may be left out), got {text!r}"
        ) from None
    return start, stop


def _plot(args: argparse.Namespace) -> int:
    from ._plot import plot
    from ._runfile import load_run

    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.run_file).with_suffix(".png")
    if out.suffix.lower() not in _FIGURE_FORMATS:
        raise ValueError(
            f"--out {str(out)!r}: the extension must be one of {', '.join(_FIGURE_FORMATS)}"
        )
    steps = None if args.steps is None else _parse_steps(args.steps)
    panels = None
    if args.panels is not None:
        panels = [name for item in args.panels for name in item.split(",") if name]
    run = load_run(args.run_file)
    try:
        figure = plot(run, panels=panels, steps=steps, smooth=args.smooth)
    except ImportError as error:  # matplotlib is not installed
        print(f"centralflows: error: {error}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120)
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `centralflows` command.

    **Returns:** the exit status: 0 on success; 1 when writing failed (a full disk: the
    message says what the run file still holds); 2 for invalid input (arguments, config,
    a run file missing, damaged or written by another live process, an `--out` that
    cannot be written); 3 when a process diverged, a flow's solver failed or (with
    `--strict`) a solve missed its tolerance; the run file holds everything up to there.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "plot":
            return _plot(args)
        if args.command == "sweep":
            return _sweep(args)
        if pathlib.Path(args.run_file).is_dir():
            from ._sweep import table

            print(table(args.run_file))
            return 0
        from ._runfile import load_run

        print(_summary(load_run(args.run_file)))
        return 0
    except Exception as error:
        status = report_error(error)
        if status is None:  # a bug: the traceback
            raise
        return status


def report_error(error: Exception) -> int | None:
    """Print `error` in one line, as `main` reports it, and return its exit status;
    `None`, printing nothing, for an error that is a bug (its traceback is the report)."""
    status = _exit_status(error)
    if status is not None:
        message = error.strerror if isinstance(error, OSError) else None
        print(f"centralflows: error: {message or error}", file=sys.stderr)
    return status


def _exit_status(error: Exception) -> int | None:
    """The exit status of an error `main` reports in one line, or `None`."""
    if isinstance(error, ValueError):  # ConfigError too: decided without importing more
        return 2
    from ._hdf5 import WriterBusyError, is_disk_full
    from ._regimes import SolverError

    if isinstance(error, WriterBusyError):
        return 2
    if isinstance(error, OSError):  # a run file missing, damaged or not writable; a full disk
        return 1 if is_disk_full(error) else 2
    if isinstance(error, SolverError):
        return 3
    return None


if __name__ == "__main__":
    sys.exit(main())
