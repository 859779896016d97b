"""Sweeps (issue 22, item 3): `centralflows sweep` expands a grid into runs, one run file
each under one folder with an index, skips the finished runs and resumes the others when
run again; `centralflows info SWEEP_DIR` tabulates them; the SLURM path is checked on the
submission it generates (a stand-in `sbatch` records it; nothing is submitted).

The runs are tiny (10 steps of the digits MLP on 100 examples, discrete only), and the
grid (`run.seed` x `run.divergence_factor`) changes no compiled program, so that after
the first run the others read their programs from the test's compilation cache.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import centralflows as cf
from centralflows import _sweep
from centralflows._compiles import count_compiles
from centralflows._config import config_to_toml, load_config
from centralflows._regimes import classify, last_finite
from centralflows.cli import main

TINY = """
[opt]
name = "gd"
lr = 0.5
[data]
name = "digits"
n = 100
n_test = 50
[model]
name = "mlp"
width = 8
depth = 2
activation = "tanh"
[eig]
frequency = 5
max_neigs = 1
[run]
steps = 10
processes = ["discrete"]
outputs = 0
[checkpoint]
frequency = 5
"""
ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT = str(ROOT / "configs" / "gd-mlp-digits.toml")
GRID = ["--grid", "run.seed=0,1", "--grid", "run.divergence_factor=0,100"]
NAMES = [
    "run.seed=0_run.divergence_factor=0",
    "run.seed=0_run.divergence_factor=100",
    "run.seed=1_run.divergence_factor=0",
    "run.seed=1_run.divergence_factor=100",
]


@pytest.fixture
def tiny(tmp_path) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return str(path)


def _table(text: str) -> list[list[str]]:
    """The rows of `info`'s table, split into cells (the table's cells have no spaces
    but for the regime, which the tests here never meet other than `stable`)."""
    lines = text.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run.seed"))
    return [line.split() for line in lines[start + 1 :]]


def _cut_after_checkpoint_10(path: pathlib.Path) -> None:
    """Make a finished 10-step run file look like one killed after its checkpoint at
    step 10 (row 10 not yet written). With `checkpoint.frequency = 5` its checkpoints went
    to alternating slots: step 5 to slot 0, 10 to slot 1, the final 11 to slot 0 again."""
    with h5py.File(path, "r+") as file:
        assert list(file["checkpoint/current"][()]) == [0, 11]
        file["step"][10] = -1
        file["checkpoint/current"][...] = [1, 10]


def test_a_sweep_finishes_and_only_its_unfinished_runs_recompute(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", tiny, *GRID, "--out", str(out), "--jobs", "2"]
    assert main(argv) == 0
    first = capsys.readouterr()
    index = _sweep.load_index(out)
    assert [run["name"] for run in index["runs"]] == NAMES
    assert index["grid"] == {"run.seed": [0, 1], "run.divergence_factor": [0, 100]}
    for run in index["runs"]:
        assert run["status"] == "done"
        assert [(a["action"], a["exit_status"]) for a in run["attempts"]] == [("start", 0)]
        assert run["config"]["run"]["seed"] == run["values"]["run.seed"]
        stored = cf.load_run(out / run["file"]).config
        assert stored["run"]["divergence_factor"] == run["values"]["run.divergence_factor"]
    rows = _table(first.out)
    assert [row[:4] for row in rows] == [
        ["0", "0", "done", "10/10"],
        ["0", "100", "done", "10/10"],
        ["1", "0", "done", "10/10"],
        ["1", "100", "done", "10/10"],
    ]

    # Interrupt the sweep after the fact: one run file lost, one cut after a checkpoint.
    files = [_sweep.run_file(out, name) for name in NAMES]
    before = {path: path.stat().st_mtime_ns for path in files}
    uncut = cf.load_run(files[1])["discrete"]["train_loss"]
    files[0].unlink()
    _cut_after_checkpoint_10(files[1])
    assert [_sweep.run_state(out, name) for name in NAMES] == [
        "missing",
        "resumable",
        "complete",
        "complete",
    ]
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert f"{NAMES[0]}: start" in plan and f"{NAMES[1]}: resume" in plan
    assert f"{NAMES[2]}: skip (finished)" in plan

    assert main(argv) == 0
    second = capsys.readouterr()
    assert "2 finished or running, 2 to run" in second.err
    index = _sweep.load_index(out)
    actions = [[a["action"] for a in run["attempts"]] for run in index["runs"]]
    assert actions == [["start", "start"], ["start", "resume"], ["start"], ["start"]]
    assert all(run["status"] == "done" for run in index["runs"])
    for path in files[2:]:  # the finished runs were not touched
        assert path.stat().st_mtime_ns == before[path]
    resumed = cf.load_run(files[1])
    assert resumed.steps_done == 11 and resumed.attrs["resumed"][0]["from_step"] == 10
    np.testing.assert_array_equal(resumed["discrete"]["train_loss"], uncut)  # bit-identical

    # `info` tabulates the folder from the run files.
    assert main(["info", str(out)]) == 0
    rows = _table(capsys.readouterr().out)
    assert len(rows) == 4
    for row, path in zip(rows, files):
        run = cf.load_run(path)
        series = run["discrete"]
        regime = classify(series["train_loss"], series["effective_hessian_eigs"][:, 0])
        assert regime.kind == "stable"  # 10 steps at lr 0.5: far from the edge
        assert row[2:7] == ["done", "10/10", "discrete", "stable", "-"]
        assert row[7] == f"{last_finite(series['train_loss']):.4g}"
        assert row[8] == f"{last_finite(series['test_loss']):.4g}"


@pytest.mark.slow  # 12 s
def test_runs_that_share_a_problem_run_in_one_process(tiny, tmp_path, capsys):
    """A grid over the optimizer's hyperparameters of discrete-only runs: its runs run in
    turn in one process (one problem, one set of compiled programs) and write the run
    files that a process per run writes; skip and resume work as for those."""
    out = tmp_path / "sweep"
    argv = ["sweep", tiny, "--grid", "opt.lr=0.3,0.5", "--out", str(out), "--jobs", "1"]
    names = ["opt.lr=0.3", "opt.lr=0.5"]
    configs = {name: load_config(tiny, [name]) for name in names}
    assert _sweep.tasks(configs, names, jobs=1) == [names]
    assert _sweep.tasks(configs, names, jobs=2) == [[names[0]], [names[1]]]
    assert _sweep.tasks(configs, names, jobs=1, share=False) == [[names[0]], [names[1]]]
    flows = {n: load_config(tiny, [n, 'run.processes=["discrete", "stable"]']) for n in names}
    assert _sweep.tasks(flows, names, jobs=1) == [[names[0]], [names[1]]]
    seeds = {n: load_config(tiny, [f"run.seed={i}"]) for i, n in enumerate(names)}
    assert _sweep.tasks(seeds, names, jobs=1) == [[names[0]], [names[1]]]

    assert main(argv) == 0
    capsys.readouterr()
    assert (out / "logs" / f"shared_{names[0]}.log").is_file()
    assert "(in one process with opt.lr=0.5)" in (out / "logs" / f"{names[0]}.log").read_text()
    files = [_sweep.run_file(out, name) for name in names]
    for name, path in zip(names, files):
        assert _sweep.run_state(out, name) == "complete"
        # The same run, from `centralflows run` in a process of its own making.
        alone = ["run", tiny, "--set", name, "--out", str(tmp_path / "alone"), "--name", name]
        assert main([*alone, "--quiet"]) == 0
        shared, single = cf.load_run(path), cf.load_run(tmp_path / "alone" / f"{name}.h5")
        assert shared.attrs["optimizer"] == single.attrs["optimizer"]
        for field, series in single["discrete"].items():  # equal to round-off
            np.testing.assert_allclose(shared["discrete"][field], series, rtol=1e-12, atol=0)
    capsys.readouterr()

    # One run file lost, one cut after a checkpoint: the one process starts the first,
    # resumes the second (bit-identically), and compiles the chunk program once for both.
    uncut = cf.load_run(files[1])["discrete"]["train_loss"]
    files[0].unlink()
    _cut_after_checkpoint_10(files[1])
    with count_compiles() as counts:
        _sweep._run_in_turn(out, names)
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(m["name"], m["action"], m["exit_status"]) for m in said] == [
        (names[0], "start", None),
        (names[0], "start", 0),
        (names[1], "resume", None),
        (names[1], "resume", 0),
    ]
    assert counts.programs["jit(_advance_chunk)"] == 1  # a program per learning rate: 2
    np.testing.assert_array_equal(cf.load_run(files[1])["discrete"]["train_loss"], uncut)
    assert [_sweep.run_state(out, name) for name in names] == ["complete"] * 2
    assert main(argv) == 0  # nothing left to run
    assert "2 finished or running, 0 to run" in capsys.readouterr().err


def test_a_prepared_folder_lists_its_pending_runs(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    runs = _sweep.expand(tiny, ["run.seed=0,1"], ["opt.lr=0.4"])
    _sweep.prepare(out, runs, config=tiny, grid={"run.seed": [0, 1]}, overrides=["opt.lr=0.4"])
    assert _sweep.todo(out, [r.name for r in runs]) == ["run.seed=0", "run.seed=1"]
    assert (out / "configs" / "run.seed=1.toml").read_text() == config_to_toml(runs[1].config)
    assert load_config(out / "configs" / "run.seed=1.toml") == runs[1].config
    assert runs[1].config["opt"]["lr"] == 0.4 and runs[1].overrides == ["opt.lr=0.4", "run.seed=1"]
    assert main(["info", str(out)]) == 0
    assert [row[:3] for row in _table(capsys.readouterr().out)] == [
        ["0", "pending", "-"],
        ["1", "pending", "-"],
    ]
    assert main(["info", str(tmp_path)]) == 2
    assert "is not a sweep folder: it has no sweep.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "grid, message",
    [
        (["opt.lrr=0.1,0.2"], "unknown key 'opt.lrr'; did you mean 'opt.lr'?"),
        (["opt.lr=0.3,-1"], "opt.lr = -1 is invalid; expected a float > 0 (in run opt.lr=-1)"),
        (["model.width=8,wide"], 'model.width = "wide" has the wrong type'),
        (["opt.lr"], "malformed --grid 'opt.lr'"),
        (["opt.lr=0.1,,0.2"], "has an empty value"),
        (["opt.lr=0.1,0.2,0.1"], "repeats the value 0.1"),
        (["opt.lr=0.1", "opt.lr=0.2"], "--grid opt.lr is given twice"),
        (["run.steps=5,6"], "run.steps is both in --grid and in --set"),
        ([], "no --grid given"),
        (["eig.initial_neigs=1,2"], "exceeds eig.max_neigs = 1 (in run eig.initial_neigs=2)"),
    ],
)
def test_the_grid_is_validated_before_anything_runs(tiny, tmp_path, capsys, grid, message):
    out = tmp_path / "sweep"
    argv = ["sweep", tiny, "--set", "run.steps=5", "--out", str(out)]
    for axis in grid:
        argv += ["--grid", axis]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()


def test_grid_values_are_read_as_toml_and_named_for_files():
    assert _sweep.parse_grid("opt.name=gd,rmsprop") == ("opt.name", ["gd", "rmsprop"])
    assert _sweep.parse_grid('run.processes=["discrete"],["discrete", "central"]') == (
        "run.processes",
        [["discrete"], ["discrete", "central"]],
    )
    assert _sweep.parse_grid("opt.lr=0.3, 1e-2") == ("opt.lr", [0.3, 0.01])
    runs = _sweep.expand(DEFAULT, ['run.processes=["discrete"]'])
    assert [run.name for run in runs] == ["run.processes=-discrete-"]
    assert runs[0].overrides == ['run.processes=["discrete"]']


def test_a_folder_refuses_runs_of_the_same_name_with_another_config(tiny, tmp_path, capsys):
    out = tmp_path / "sweep"
    _sweep.prepare(out, _sweep.expand(tiny, ["run.seed=0,1"]), config=tiny)
    argv = ["sweep", tiny, "--grid", "run.seed=1,2", "--set", "run.steps=12", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "run run.seed=1 was set up with another config (run.steps: 10 -> 12)" in err
    assert [run["name"] for run in _sweep.load_index(out)["runs"]] == ["run.seed=0", "run.seed=1"]


def test_run_name_names_the_file(tmp_path, capsys):
    argv = ["run", DEFAULT, "--out", str(tmp_path), "--name", "a/b"]
    assert main(argv) == 2
    assert "--name 'a/b' must be a file name" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "x.h5"), "--name", "y"]) == 2
    assert "takes no --name" in capsys.readouterr().err


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> pathlib.Path:
    """`srun` and `sbatch` stand-ins on the PATH: `sbatch` copies the script it is given
    to `submitted.sh` and answers as SLURM does; nothing is submitted."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "submitted.sh"
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {record}\necho "Submitted batch job 4242"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_the_slurm_path_generates_one_job_array(tiny, tmp_path, capsys, fake_slurm):
    submitit = pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    argv = ["sweep", tiny, *GRID, "--out", str(out), "--jobs", "2"]
    slurm = ["--slurm", "partition=debug", "--slurm", "time=30"]
    slurm += ["--slurm", 'setup=["module load cuda"]']
    assert main([*argv, *slurm]) == 0
    assert "submitted as SLURM job 4242_3" in capsys.readouterr().out
    script = fake_slurm.read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --partition=debug", "#SBATCH --time=30"):
        assert line in script
    assert "\nmodule load cuda\n" in script
    assert f"-m submitit.core._submit {out.resolve() / 'slurm'}" in script
    index = _sweep.load_index(out)
    assert [run["status"] for run in index["runs"]] == ["submitted"] * 4
    assert [run["job_id"] for run in index["runs"]] == [f"4242_{i}" for i in range(4)]
    # Each array task runs `run_one` on its run (which decides on the node what it needs).
    for i, name in enumerate(NAMES):
        pickled = out / "slurm" / f"4242_{i}_submitted.pkl"
        task = submitit.core.utils.DelayedSubmission.load(pickled)
        assert task.function is _sweep.run_one
        assert task.args == (str(out.resolve()), name)
    assert main(["info", str(out)]) == 0
    assert [row[2] for row in _table(capsys.readouterr().out)] == ["submitted"] * 4
    assert not (out / "runs").exists()  # nothing ran

    assert main([*argv, "--slurm", "partitionn=debug"]) == 2
    assert "Unavailable parameter(s): ['partitionn']" in capsys.readouterr().err


def test_slurm_without_srun_is_a_clear_error(tiny, tmp_path, capsys, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    argv = ["sweep", tiny, "--grid", "run.seed=0", "--out", str(tmp_path / "s"), "--slurm"]
    assert main(argv) == 2
    assert 'Could not detect "srun"' in capsys.readouterr().err
    assert not (tmp_path / "s" / "sweep.json").exists()


@pytest.mark.slow
def test_an_interrupted_sweep_resumes(tiny, tmp_path):
    """A real interruption: SIGINT to `centralflows sweep` once its first run is done
    terminates the running ones; the same command then completes the rest, and the run
    finished before the interrupt is not run again."""
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "centralflows.cli", "sweep", tiny, *GRID]
    argv += ["--out", str(out), "--jobs", "1", "--set", "checkpoint.frequency=2"]
    sweep = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (out / "sweep.json").exists() and any(
            run["status"] == "done" for run in _sweep.load_index(out)["runs"]
        ):
            break
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err
    index = _sweep.load_index(out)
    done = [run["name"] for run in index["runs"] if run["status"] == "done"]
    assert done and "interrupted" in err
    mtimes = {name: _sweep.run_file(out, name).stat().st_mtime_ns for name in done}
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    index = _sweep.load_index(out)
    assert all(run["status"] == "done" for run in index["runs"])
    for name in done:
        assert _sweep.run_file(out, name).stat().st_mtime_ns == mtimes[name]
        assert len(next(r for r in index["runs"] if r["name"] == name)["attempts"]) == 1


@pytest.mark.slow
def test_submitit_local_executor_runs_the_sweep(tiny, tmp_path):
    """The function each SLURM task runs, run by submitit's local executor."""
    submitit = pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    runs = _sweep.expand(tiny, ["run.seed=0,1"])
    _sweep.prepare(out, runs, config=tiny)
    executor = submitit.LocalExecutor(folder=out / "slurm")
    executor.update_parameters(timeout_min=10)
    jobs = _sweep.submit(out, [run.name for run in runs], executor)
    attempts = [job.result() for job in jobs]
    assert [(a["action"], a["exit_status"]) for a in attempts] == [("start", 0)] * 2
    assert [_sweep.run_state(out, run.name) for run in runs] == ["complete"] * 2
    assert json.loads((out / "sweep.json").read_text())["runs"][0]["status"] == "submitted"
