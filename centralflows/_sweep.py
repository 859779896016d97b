"""Sweeps: a grid of configs, one run file each, under one folder with an index.

A sweep folder holds

    sweep.json        the index: the base config, the grid, and per run its grid values,
                      overrides, complete config, status and attempts
    configs/NAME.toml each run's complete config
    runs/NAME.h5      each run's run file
    logs/NAME.log     each run's output (every attempt appended)
    slurm/            submitit's files, for a sweep submitted to SLURM

Everything here but the worker of `run_shared` is plain Python (no jax): the parent
process expands and validates the grid, decides what each run still needs from its run
file, and starts each run as a `centralflows run` subprocess, locally or inside a SLURM
job (through submitit). Locally, runs of the discrete-time processes that differ only in
`[opt]` instead run in turn in one process per worker (`python -m centralflows._sweep`),
sharing their problem and compiled programs.
"""

import concurrent.futures
import datetime
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from ._config import (
    ConfigError,
    _format,
    apply_overrides,
    check_config,
    config_error,
    config_to_toml,
    parse_override,
    read_toml,
)
from ._hdf5 import live_writer
from ._runfile import run_progress

INDEX = "sweep.json"
_FORMAT = "centralflows-sweep"
_FORMAT_VERSION = 1
_LISTED = 3  # runs named after a problem that only some runs have, at most


class SweepRun(NamedTuple):
    """One run of a sweep: its `name` (also its files' names), its grid `values`, the
    `overrides` that make its config from the base config (`--set` ones first, then the
    grid's), and its complete, validated `config`."""

    name: str
    values: dict[str, Any]
    overrides: list[str]
    config: dict[str, dict[str, Any]]


def _split(text: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes."""
    items, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items]


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """Parses one `--grid SECTION.KEY=V1,V2,...`: `("section.key", [v1, v2, ...])`.

    Each value is read as `--set` reads one (TOML, else a bare string); commas inside
    brackets or quotes do not split, so `run.processes=["discrete"],["central"]` works.
    """
    name, eq, values = text.partition("=")
    name = name.strip()
    section, dot, key = name.partition(".")
    if not eq or not dot or not section or not key or not values.strip():
        raise ConfigError(
            f"malformed --grid {text!r}; expected SECTION.KEY=V1,V2,... "
            "(e.g. --grid opt.lr=0.3,0.4,0.5)"
        )
    items = _split(values)
    if any(not item for item in items):
        raise ConfigError(f"--grid {text!r} has an empty value (two commas in a row?)")
    parsed = [parse_override(f"{name}={item}")[2] for item in items]
    seen = [_format(v) for v in parsed]
    repeated = sorted({v for v in seen if seen.count(v) > 1})
    if repeated:
        raise ConfigError(f"--grid {text!r} repeats the value {', '.join(repeated)}")
    return name, parsed


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else _format(value)
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text) or "-"


def _name(values: Mapping[str, Any]) -> str:
    return "_".join(f"{key}={_slug(value)}" for key, value in values.items())


def expand(
    config: str | os.PathLike, grid: Sequence[str], overrides: Sequence[str] = ()
) -> list[SweepRun]:
    """The runs of a sweep: the cartesian product of the `grid`, each applied on top of
    the config file with the `overrides`; every run's config is validated.

    **Arguments:**

    - `config`: the base TOML config.
    - `grid`: strings `section.key=v1,v2,...` (see [`parse_grid`][]), one per axis.
    - `overrides`: strings `section.key=value` applied to every run, before the grid.

    **Returns:** a [`SweepRun`][] per point of the grid, the last axis varying fastest.

    Raises one `ConfigError` listing every problem: a malformed or repeated `--grid`, a key
    both in the grid and the overrides, and every problem of the runs' configs (unknown
    keys, wrong types, values out of range), each once, naming the runs it is in unless
    it is in all of them.
    """
    problems = []
    axes: dict[str, list[Any]] = {}
    for text in grid:
        try:
            key, values = parse_grid(text)
        except ConfigError as error:
            problems.append(str(error))
            continue
        if key in axes:
            problems.append(f"--grid {key} is given twice; give all its values in one --grid")
        axes[key] = values
    if not grid:
        problems.append("no --grid given; a sweep needs at least one (e.g. --grid opt.lr=0.3,0.5)")
    base, malformed = apply_overrides(read_toml(config), overrides)
    problems += malformed
    for text in overrides:
        try:
            section, key, _ = parse_override(text)
        except ConfigError:
            continue  # reported above
        if f"{section}.{key}" in axes:
            problems.append(
                f"{section}.{key} is both in --grid and in --set {text!r}; give it in one"
            )
    if problems:
        raise config_error(problems, f"from {config} and the grid")

    runs, found = [], {}
    for point in itertools.product(*axes.values()):
        values = dict(zip(axes, point))
        extra = [f"{key}={_format(value)}" for key, value in values.items()]
        merged = {s: dict(t) if isinstance(t, Mapping) else t for s, t in base.items()}
        for key, value in values.items():
            section, _, name = key.partition(".")
            table = merged.setdefault(section, {})
            if isinstance(table, dict):
                table[name] = value
        cfg, invalid = check_config(merged)
        name = _name(values)
        for problem in invalid:
            found.setdefault(problem, []).append(name)
        runs.append(SweepRun(name, values, [*overrides, *extra], cfg))
    for problem, names in found.items():
        if len(names) < len(runs):
            listed = ", ".join(names[:_LISTED])
            more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
            problem += f" (in run{'s' if len(names) > 1 else ''} {listed}{more})"
        problems.append(problem)
    if problems:
        raise config_error(problems, f"from {config} and the grid")
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # values that differ only in characters _slug drops
        runs = [run._replace(name=f"{i:03d}_{run.name}") for i, run in enumerate(runs)]
    return runs


# The layout of a sweep folder.


def _config_path(directory: pathlib.Path, name: str) -> pathlib.Path:
    return directory / "configs" / f"{name}.toml"


def run_file(directory: str | os.PathLike, name: str) -> pathlib.Path:
    """The run file of the run `name` of the sweep in `directory`."""
    return pathlib.Path(directory) / "runs" / f"{name}.h5"


def _log_path(directory: pathlib.Path, name: str) -> pathlib.Path:
    return directory / "logs" / f"{name}.log"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def load_index(directory: str | os.PathLike) -> dict[str, Any]:
    """The index of the sweep in `directory` (its `sweep.json`).

    Raises `FileNotFoundError` where there is none, a `ValueError` for one that is not a
    sweep index.
    """
    path = pathlib.Path(directory) / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            2, f"{str(directory)!r} is not a sweep folder: it has no {INDEX}", str(path)
        )
    try:
        index = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not a sweep index: {error}") from None
    if not isinstance(index, dict) or index.get("format") != _FORMAT:
        raise ValueError(f"{str(path)!r} is not a sweep index (no format {_FORMAT!r})")
    return index


def _write_index(directory: pathlib.Path, index: Mapping[str, Any]) -> None:
    """Writes the index atomically: a reader sees the old one or the new one."""
    with tempfile.NamedTemporaryFile(
        "w", dir=directory, prefix=f".{INDEX}.", suffix=".tmp", delete=False
    ) as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    os.replace(f.name, directory / INDEX)


def _differences(old: Mapping, new: Mapping) -> list[str]:
    return [
        f"{section}.{key}: {_format(old.get(section, {}).get(key))} -> {_format(value)}"
        for section, table in new.items()
        for key, value in table.items()
        if old.get(section, {}).get(key) != value
    ]


def prepare(
    directory: str | os.PathLike,
    runs: Sequence[SweepRun],
    *,
    config: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Creates or extends the sweep folder `directory` for `runs`: the index and each
    run's config file. A run already in the index keeps its entry (status, attempts),
    provided its config is the same.

    **Returns:** the index as written.

    Raises a `ConfigError`, writing nothing, for runs that the folder holds with another
    config.
    """
    directory = pathlib.Path(directory)
    try:
        index = load_index(directory)
    except FileNotFoundError:
        index = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "created": _now()}
        index.update(config=None, grid={}, overrides=[], runs=[])
    known = {entry["name"]: entry for entry in index["runs"]}
    conflicts = []
    for run in runs:
        entry = known.get(run.name)
        config_now = json.loads(json.dumps(run.config))  # as the index stores it
        if entry is not None and entry["config"] != config_now:
            changed = "; ".join(_differences(entry["config"], config_now))
            conflicts.append(f"run {run.name} was set up with another config ({changed})")
    if conflicts:
        raise ConfigError(
            "\n".join(
                [
                    f"{directory} holds runs of the same names with other configs; sweep "
                    "into another --out (or remove those runs from it):",
                    *(f"  - {line}" for line in conflicts),
                ]
            )
        )
    for run in runs:
        if run.name not in known:
            entry = {
                "name": run.name,
                "values": run.values,
                "overrides": run.overrides,
                "config": run.config,
                "file": str(run_file(".", run.name)),
                "log": str(_log_path(pathlib.Path("."), run.name)),
                "status": "pending",
                "attempts": [],
            }
            index["runs"].append(entry)
            known[run.name] = entry
    merged_grid = {key: list(values) for key, values in index["grid"].items()}
    for key, values in (grid or {}).items():
        column = merged_grid.setdefault(key, [])
        column += [v for v in values if v not in column]
    index.update(
        config=str(pathlib.Path(config).resolve()),
        grid=merged_grid,
        overrides=list(overrides),
    )
    (directory / "configs").mkdir(parents=True, exist_ok=True)
    for run in runs:
        path = _config_path(directory, run.name)
        text = config_to_toml(run.config)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    _write_index(directory, index)
    return index


# The state of one run, read from its file.

State = Literal["missing", "running", "complete", "resumable", "broken"]


def run_state(directory: str | os.PathLike, name: str) -> State:
    """What the run file of run `name` says about it: `"missing"` (no file),
    `"running"` (a live process writes it), `"complete"` (every row and the final
    checkpoint written), `"resumable"` (unfinished, with a checkpoint) or `"broken"` (no
    checkpoint, or damaged: the run starts again)."""
    path = run_file(directory, name)
    if not path.exists():
        return "missing"
    if live_writer(path) is not None:
        return "running"
    try:
        rows, num_rows, checkpoint = run_progress(path)
    except (OSError, ValueError):
        return "broken"
    if rows == num_rows == checkpoint:
        return "complete"
    return "broken" if checkpoint is None else "resumable"


def _action(state: State) -> str:
    """What a run in `state` needs: `"skip"`, `"busy"`, `"resume"`, `"restart"` or `"start"`."""
    return {
        "complete": "skip",
        "running": "busy",
        "resumable": "resume",
        "broken": "restart",
        "missing": "start",
    }[state]


def _run_argv(directory: pathlib.Path, name: str, action: str) -> list[str]:
    """The `centralflows` arguments that take run `name` through `action`."""
    if action == "resume":
        argv = ["run", "--resume", str(run_file(directory, name))]
    else:
        argv = ["run", str(_config_path(directory, name))]
        argv += ["--out", str(run_file(directory, name).parent), "--name", name]
        argv += ["--overwrite"] if action == "restart" else []
    return [*argv, "--quiet"]


def run_one(
    directory: str | os.PathLike,
    name: str,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> dict[str, Any]:
    """Brings run `name` of a sweep to completion as a `centralflows run` subprocess:
    nothing for a complete run file, `--resume` for one with a checkpoint, a new run
    (replacing a file without a checkpoint) otherwise. Its output is appended to the
    run's log. This is what each local worker and each SLURM job runs.

    **Arguments:**

    - `directory`, `name`: the sweep folder and the run.
    - `on_start`: called with the subprocess once it has started.

    **Returns:** the attempt, as the index records it: `action` (`"skip"`, `"busy"`,
    `"start"`, `"restart"` or `"resume"`), `exit_status` (`None` where nothing ran),
    `started`, `ended`.
    """
    directory = pathlib.Path(directory).resolve()
    action = _action(run_state(directory, name))
    attempt: dict[str, Any] = {"action": action, "exit_status": None, "started": _now()}
    if action in ("skip", "busy"):
        return {**attempt, "ended": _now()}
    argv = _run_argv(directory, name, action)
    log = _log_path(directory, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"# {attempt['started']}: centralflows {' '.join(argv)}\n")
        out.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "centralflows.cli", *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        if on_start is not None:
            on_start(process)
        status = process.wait()
        out.write(f"# exit status {status}\n")
    return {**attempt, "exit_status": status, "ended": _now()}


_DISCRETE_TIME = frozenset({"discrete", "midpoint"})  # the processes of one compiled scan


def _problem_key(config: Mapping[str, Any]) -> str | None:
    """What a run's problem and compiled programs depend on: its config but `[opt]`, for a
    run of the discrete-time processes alone (`None` for one with a flow)."""
    if not set(config["run"]["processes"]) <= _DISCRETE_TIME:
        return None
    return json.dumps({s: t for s, t in config.items() if s != "opt"}, sort_keys=True)


def tasks(
    configs: Mapping[str, Mapping[str, Any]], names: Sequence[str], jobs: int, share: bool = True
) -> list[list[str]]:
    """The runs `names` as the tasks of a local sweep, each task one process.

    Runs of the discrete-time processes alone (`discrete`, `midpoint`) whose configs
    differ only in `[opt]` (a grid over η, β₂, ε) share their problem and, their
    hyperparameters being inputs of the compiled programs, every program: with `share`,
    they are dealt in turn to at most `jobs` tasks, each running its runs one after the
    other (see [`run_shared`][]). Every other run is a task of its own.

    **Arguments:**

    - `configs`: each run's config, by name.
    - `names`: the runs to do, in order.
    - `jobs`: the number of parallel workers.
    - `share`: group the runs that can share a process (`False`: a process per run).

    **Returns:** the tasks, in the order of their first runs in `names`.
    """
    groups: dict[str, list[str]] = {}
    out = []
    for name in names:
        key = _problem_key(configs[name]) if share else None
        if key is None:
            out.append([name])
        else:
            groups.setdefault(key, []).append(name)
    for group in groups.values():
        shares = min(jobs, len(group))
        out += [group[i::shares] for i in range(shares)]
    return sorted(out, key=lambda task: names.index(task[0]))


def run_shared(
    directory: str | os.PathLike,
    names: Sequence[str],
    on_start: Callable[[subprocess.Popen], None] | None = None,
    on_begin: Callable[[str], None] | None = None,
    on_end: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Brings the runs `names` of a sweep to completion one after the other in one
    subprocess, which builds their problem once and so compiles their programs once:
    each run is what [`run_one`][] makes of it (skipped, resumed, restarted or
    started, its output appended to its log), and its run file the same. The runs must
    share their problem (see [`tasks`][]).

    **Arguments:**

    - `directory`, `names`: the sweep folder and the runs.
    - `on_start`: called with the subprocess once it has started.
    - `on_begin`: called with each run's name as the subprocess starts on it.
    - `on_end`: called with each run's name and attempt as it ends.

    **Returns:** each run's attempt, as [`run_one`][] returns it. A run the subprocess
    began but did not end (it was killed) has the subprocess's exit status; one it never
    reached has no attempt.
    """
    directory = pathlib.Path(directory).resolve()
    log = _log_path(directory, names[0]).with_name(f"shared_{names[0]}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    attempts, current = {}, None
    with log.open("a") as errors:
        errors.write(f"# {_now()}: the runs {', '.join(names)} in one process\n")
        errors.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "centralflows._sweep", str(directory), *names],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        if on_start is not None:
            on_start(process)
        assert process.stdout is not None
        for line in process.stdout:
            message = json.loads(line)
            name = message.pop("name")
            if "ended" not in message:
                current = (name, message)
                if on_begin is not None:
                    on_begin(name)
                continue
            current = None
            attempts[name] = message
            if on_end is not None:
                on_end(name, message)
        status = process.wait()
        errors.write(f"# exit status {status}\n")
    if current is not None:
        name, attempt = current
        attempts[name] = {**attempt, "exit_status": status, "ended": _now()}
        if on_end is not None:
            on_end(name, attempts[name])
    return attempts


def _run_in_turn(directory: pathlib.Path, names: Sequence[str]) -> None:
    """The subprocess of [`run_shared`][]: each run as `centralflows run` would do it,
    the problem built once per distinct [`_problem_key`][]. Writes a JSON line to stdout
    as each run begins (its name, action and start time) and as it ends (its attempt)."""
    import contextlib
    import traceback

    import jax

    from ._cache import enable_compilation_cache
    from ._config import load_config
    from ._experiment import make_problem
    from .cli import report_error, run_config

    def say(name: str, attempt: Mapping[str, Any]) -> None:
        print(json.dumps({"name": name, **attempt}), flush=True)

    enable_compilation_cache(True)
    problems: dict[str | None, Any] = {}
    for name in names:
        action = _action(run_state(directory, name))
        attempt: dict[str, Any] = {"action": action, "exit_status": None, "started": _now()}
        if action in ("skip", "busy"):
            say(name, {**attempt, "ended": _now()})
            continue
        say(name, attempt)
        argv = _run_argv(directory, name, action)
        with (
            _log_path(directory, name).open("a") as out,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
        ):
            others = ", ".join(n for n in names if n != name)
            print(
                f"# {attempt['started']}: centralflows {' '.join(argv)} (in one process "
                f"with {others})"
            )
            try:
                config = load_config(_config_path(directory, name))
                key = _problem_key(config)
                if key not in problems:
                    jax.config.update("jax_enable_x64", config["run"]["precision"] == "float64")
                    problems[key] = make_problem(config)
                status = run_config(
                    config,
                    run_file(directory, name),
                    problems[key],
                    resume=action == "resume",
                    overwrite=action == "restart",
                    command=f"centralflows {' '.join(argv)}",
                )
            except Exception as error:
                status = report_error(error)
                if status is None:  # a bug
                    traceback.print_exc()
                    status = 1
            print(f"# exit status {status}", flush=True)
        say(name, {**attempt, "exit_status": status, "ended": _now()})


def _status(state: State, attempt: Mapping[str, Any] | None) -> str:
    """A run's status in the index, from its file's state after an attempt."""
    if state == "complete":
        return "done"
    if state == "running":
        return "running"
    if attempt is not None and attempt.get("exit_status") not in (None, 0, 3):
        code = attempt["exit_status"]
        return "interrupted" if code < 0 else "failed"
    return "pending" if state == "missing" else "unfinished"


class Sweep:
    """A sweep folder's index, updated by the threads of a local sweep under one lock."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        self.index = load_index(self.directory)
        self._lock = threading.Lock()

    def entry(self, name: str) -> dict[str, Any]:
        return next(run for run in self.index["runs"] if run["name"] == name)

    def update(self, name: str, attempt: Mapping[str, Any] | None = None, **fields) -> None:
        with self._lock:
            entry = self.entry(name)
            if attempt is not None:
                entry["attempts"].append(dict(attempt))
            entry.update(fields)
            _write_index(self.directory, self.index)


def todo(directory: str | os.PathLike, names: Sequence[str]) -> list[str]:
    """The runs among `names` that are not complete (and not being written by a live
    process), in order; the index records the state of the others."""
    sweep = Sweep(directory)
    left = []
    for name in names:
        state = run_state(directory, name)
        if state in ("complete", "running"):
            sweep.update(name, status=_status(state, None))
        else:
            left.append(name)
    return left


def run_local(
    directory: str | os.PathLike,
    names: Sequence[str],
    *,
    jobs: int,
    share: bool = True,
    report: Callable[[str], None] = lambda line: None,
) -> dict[str, dict[str, Any]]:
    """Runs `names` of a sweep in `jobs` parallel subprocesses, recording each start and
    end in the index: a subprocess per run (see [`run_one`][]), but for runs that share
    their problem, which with `share` run in turn in one subprocess per worker (see
    [`tasks`][] and [`run_shared`][]).

    **Returns:** each run's attempt.

    On `KeyboardInterrupt` the running subprocesses are terminated (their run files keep
    their last checkpoints), the runs not yet started are left, the index says so, and the
    interrupt is raised again.
    """
    sweep = Sweep(directory)
    stopping = threading.Event()
    lock = threading.Lock()
    running: dict[int, subprocess.Popen] = {}
    results: dict[str, dict[str, Any]] = {}

    def started(process: subprocess.Popen) -> None:
        running[process.pid] = process
        if stopping.is_set():
            process.terminate()

    def begin(name: str) -> None:
        sweep.update(name, status="running")

    def end(name: str, attempt: dict[str, Any]) -> None:
        status = _status(run_state(directory, name), attempt)
        sweep.update(name, attempt, status=status)
        with lock:
            results[name] = attempt
            done = len(results)
        times = [datetime.datetime.fromisoformat(attempt[k]) for k in ("started", "ended")]
        took = (times[1] - times[0]).total_seconds()
        report(
            f"[{done}/{len(names)}] {name}: {status} ({attempt['action']}, exit status "
            f"{attempt['exit_status']}, {took:.0f} s; log: {_log_path(sweep.directory, name)})"
        )

    def work(task: list[str]) -> None:
        if stopping.is_set():
            return
        if len(task) > 1:
            run_shared(directory, task, on_start=started, on_begin=begin, on_end=end)
            return
        begin(task[0])
        end(task[0], run_one(directory, task[0], on_start=started))

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs))
    configs = {name: sweep.entry(name)["config"] for name in names}
    futures = [pool.submit(work, task) for task in tasks(configs, names, jobs, share)]
    try:
        for future in concurrent.futures.as_completed(futures):
            future.result()
    except KeyboardInterrupt:
        stopping.set()
        for process in list(running.values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        for name in names:
            if name not in results and sweep.entry(name)["status"] == "running":
                sweep.update(name, status="interrupted")
        raise
    pool.shutdown(wait=True)
    return results


def submit(directory: str | os.PathLike, names: Sequence[str], executor) -> list:
    """Submits `names` of a sweep through a submitit `executor` as one job array, each
    job running [`run_one`][] (which decides again, on the node, what the run needs: a
    requeued job resumes), and records the job ids in the index.

    **Returns:** the submitit jobs.
    """
    directory = pathlib.Path(directory).resolve()
    jobs = executor.map_array(run_one, [str(directory)] * len(names), list(names))
    sweep = Sweep(directory)
    for name, job in zip(names, jobs):
        sweep.update(name, status="submitted", job_id=str(job.job_id), submitted=_now())
    return jobs


# The table of `centralflows info SWEEP_DIR`.


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}g}"


def table(directory: str | os.PathLike) -> str:
    """The runs of a sweep folder as a text table: per run its grid values, status (from
    its run file where there is one) and steps done, then per process its regime, EOS
    onset and final losses (see `centralflows._regimes.summarize`)."""
    from ._regimes import summarize  # numpy; jaxtyping
    from ._runfile import load_run

    directory = pathlib.Path(directory)
    index = load_index(directory)
    keys = list(dict.fromkeys(key for run in index["runs"] for key in run["values"]))
    header = [*keys, "status", "steps", "process", "regime", "onset", "train_loss", "test_loss"]
    rows = []
    for entry in index["runs"]:
        name = entry["name"]
        state = run_state(directory, name)
        attempts = entry.get("attempts") or [None]
        status = _status(state, attempts[-1])
        if state == "missing" and entry.get("status") in (
            "running",  # started, its file not yet created
            "submitted",
            "interrupted",
            "failed",
        ):
            status = entry["status"]
        if state == "broken" and status == "unfinished":
            try:
                run_progress(run_file(directory, name))
            except (OSError, ValueError):
                status = "damaged"
        values = [_format(entry["values"][key]) if key in entry["values"] else "-" for key in keys]
        if state == "missing":
            rows.append([*values, status, "-", "-", "-", "-", "-", "-"])
            continue
        try:
            run = load_run(run_file(directory, name), salvage=True)
        except (OSError, ValueError):
            rows.append([*values, status, "-", "-", "-", "-", "-", "-"])
            continue
        steps = f"{max(run.steps_done - 1, 0)}/{run.num_rows - 1}"
        summaries = summarize(run) or [None]
        for i, summary in enumerate(summaries):
            lead = [*values, status, steps] if i == 0 else [""] * (len(keys) + 2)
            if summary is None:
                rows.append([*lead, "-", "-", "-", "-", "-"])
                continue
            rows.append(
                [
                    *lead,
                    summary.process,
                    summary.regime.kind,
                    _number(summary.onset, 5),
                    _number(summary.final.get("train_loss"), 4),
                    _number(summary.final.get("test_loss"), 4),
                ]
            )
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
        for line in [header, *rows]
    ]
    return "\n".join([f"sweep: {directory} ({len(index['runs'])} runs)", *lines])


if __name__ == "__main__":  # the subprocess of `run_shared`
    _run_in_turn(pathlib.Path(sys.argv[1]), sys.argv[2:])
