"""Checkpoints and resume: a resumed or extended run is bit-identical to an uninterrupted one."""

import os
import subprocess
import sys
import time
import warnings

import h5py
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import centralflows as cf
import centralflows._run
from centralflows.cli import main

from .helpers import small_mlp_objective

FLOW = cf.FlowOptions.euler(2)
# The tracked set grows at step 4 (a multiple of `chunk`), after the checkpoint at 3.
SETUP = dict(
    processes=("discrete", "midpoint", "central", "stable"),
    eig=cf.EigConfig(track_threshold=0.6, tol=1e-9, max_iters=200),
    central=FLOW,
    stable=FLOW,
    chunk=4,
    checkpoint_every=0,
    checkpoint_at=(3, 6),
    save_w_every=1,
    progress=False,
)
STEPS = 10


def _assert_runs_equal(a: cf.Run, b: cf.Run):
    """Every series of every group equal, NaN where NaN (no tolerance: bit-identical)."""
    assert set(a) == set(b)
    for group in a:
        assert set(a[group]) == set(b[group]), group
        for name in a[group]:
            np.testing.assert_array_equal(a[group][name], b[group][name], err_msg=f"{group}/{name}")
    np.testing.assert_array_equal(a.step, b.step)


class _Crash(Exception):
    pass


def _crash_after_writes(monkeypatch, count: int):
    """Make the run loop die (as if killed) right after its `count`-th write of rows."""
    write = centralflows._run.RunWriter.write
    calls = []

    def crashing(self, start, rows):
        write(self, start, rows)
        calls.append(start)
        if len(calls) == count:
            raise _Crash

    monkeypatch.setattr(centralflows._run.RunWriter, "write", crashing)


@pytest.fixture(scope="module")
def problem():
    objective, w0 = small_mlp_objective()
    return objective, w0, cf.GD(lr=0.5)


@pytest.fixture(scope="module")
def uninterrupted(problem, tmp_path_factory):
    objective, w0, optimizer = problem
    out = tmp_path_factory.mktemp("full") / "run.h5"
    return cf.run(objective, w0, optimizer, steps=STEPS, out=out, **SETUP)


def test_resume_after_a_crash_is_bit_identical(problem, uninterrupted, tmp_path, monkeypatch):
    objective, w0, optimizer = problem
    out = tmp_path / "run.h5"
    # Chunks [0, 3) [3, 4) [4, 6): dies before the checkpoint at 6.
    _crash_after_writes(monkeypatch, 3)
    with pytest.raises(_Crash):
        cf.run(objective, w0, optimizer, steps=STEPS, out=out, **SETUP)
    monkeypatch.undo()
    crashed = cf.load_run(out)
    assert crashed.steps_done == 6 and cf.load_checkpoint(out).step == 3
    resumed = cf.run(objective, w0, optimizer, out=out, resume=True, **SETUP)
    assert resumed.steps_done == STEPS + 1
    _assert_runs_equal(resumed, uninterrupted)
    # Not vacuous: the processes moved apart, the flows worked, and the tracked set of the
    # discrete-time processes grew after the checkpoint, in the recomputed part.
    for name in ("discrete", "midpoint"):
        tracked = np.sum(np.isfinite(uninterrupted[name]["effective_hessian_eigs"]), axis=1)
        assert tracked[3] < tracked[4], name
    assert np.all(uninterrupted["distances"]["central-discrete"][1:] > 1e-6)
    assert np.all(uninterrupted["central"]["rhs_evals"] == 2)
    assert [r["from_step"] for r in resumed.attrs["resumed"]] == [3]
    assert resumed.attrs["created"] == crashed.attrs["created"]


def test_extending_a_finished_run_is_bit_identical(problem, uninterrupted, tmp_path):
    objective, w0, optimizer = problem
    out = tmp_path / "run.h5"
    short = cf.run(objective, w0, optimizer, steps=5, out=out, **SETUP)
    assert short.num_rows == 6 and cf.load_checkpoint(out).step == 6  # one at the end
    extended = cf.run(objective, w0, optimizer, steps=STEPS, out=out, resume=True, **SETUP)
    assert extended.attrs["steps"] == STEPS and extended.num_rows == STEPS + 1
    _assert_runs_equal(extended, uninterrupted)
    # The same N again: nothing to do, and the file is left alone.
    before = out.read_bytes()
    with pytest.warns(UserWarning, match="already complete at 10 steps; nothing to do"):
        again = cf.run(objective, w0, optimizer, out=out, resume=True, **SETUP)
    _assert_runs_equal(again, uninterrupted)
    assert out.read_bytes() == before


@pytest.fixture(scope="module")
def finished(problem, tmp_path_factory):
    """A finished discrete run of 6 steps (checkpoint at 4 and at the end)."""
    objective, w0, optimizer = problem
    out = tmp_path_factory.mktemp("finished") / "run.h5"
    kwargs = dict(processes=("discrete",), chunk=2, checkpoint_every=4, progress=False)
    cf.run(objective, w0, optimizer, steps=6, out=out, **kwargs)
    return out, kwargs


def test_incompatible_resume_names_every_difference(problem, finished):
    objective, w0, optimizer = problem
    out, kwargs = finished
    before = out.read_bytes()
    cases = [
        (
            dict(optimizer=cf.GD(lr=0.3)),
            ["optimizer: the file has 'GD(lr=0.5)', this call gives 'GD(lr=0.3)'"],
        ),
        (dict(processes=("discrete", "midpoint")), ["processes: the file has ['discrete']"]),
        (dict(w0=w0.at[0].add(1e-3)), ["start_sha256: the file has"]),
        (dict(key=jr.key(1)), ["key: the file has [0, 0], this call gives [0, 1]"]),
        (dict(chunk=3, warm_start=2), ["chunk: the file has 2, this call gives 3", "warm_start"]),
        (dict(eig=cf.EigConfig(tol=1e-7)), ["eig: the file has {"]),
    ]
    for change, messages in cases:
        args = {"w0": w0, "optimizer": optimizer, **kwargs, **change}
        with pytest.raises(ValueError, match="Cannot resume") as info:
            cf.run(objective, args.pop("w0"), args.pop("optimizer"), out=out, resume=True, **args)
        for message in messages:
            assert message in str(info.value), (message, str(info.value))
        assert out.read_bytes() == before
    assert list(out.parent.iterdir()) == [out]  # no temporary file left


def test_resume_refuses_what_it_cannot_do(problem, finished, tmp_path, monkeypatch):
    objective, w0, optimizer = problem
    out, kwargs = finished
    before = out.read_bytes()
    resume = lambda path, **more: cf.run(
        objective, w0, optimizer, out=path, resume=True, **{**kwargs, **more}
    )
    with pytest.raises(ValueError, match="already holds steps 0 to 6, and rows are never dropped"):
        resume(out, steps=5)
    with pytest.raises(ValueError, match="needs `out`"):
        resume(None)
    with pytest.raises(ValueError, match="drop `overwrite=True`"):
        resume(out, overwrite=True)
    with pytest.raises(FileNotFoundError, match="No run file"):
        resume(tmp_path / "missing.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not a run")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        resume(text)
    assert out.read_bytes() == before
    # Killed before its first checkpoint: rows but no checkpoint.
    early = tmp_path / "early.h5"
    _crash_after_writes(monkeypatch, 1)
    with pytest.raises(_Crash):
        cf.run(objective, w0, optimizer, steps=6, out=early, **kwargs)
    monkeypatch.undo()
    before = early.read_bytes()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        resume(early)
    assert early.read_bytes() == before
    # A new run never replaces a file unless told to.
    with pytest.raises(FileExistsError, match="overwrite"):
        cf.run(objective, w0, optimizer, steps=6, out=out, **kwargs)
    assert out.read_bytes() == finished[0].read_bytes()


def test_checkpoint_arguments_are_validated(problem, tmp_path):
    objective, w0, optimizer = problem
    out = tmp_path / "run.h5"
    for kwargs, message in [
        (dict(checkpoint_every=-1), "checkpoint_every"),
        (dict(checkpoint_every=2.5), "checkpoint_every"),
        (dict(checkpoint_at=(0,)), "checkpoint_at"),
        (dict(checkpoint_at=(3, "5")), "checkpoint_at"),
        (dict(steps=None), "`steps` is required"),
    ]:
        with pytest.raises(ValueError, match=message):
            cf.run(objective, w0, optimizer, **{"steps": 3, "out": out, **kwargs})
    assert not out.exists()


def test_a_killed_command_resumes_bit_identically(tmp_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(__file__)))
    config = ["configs/gd-mlp-digits.toml", "--set", "data.n=100", "--set", "data.n_test=50"]
    config += ["--set", "model.width=8", "--runs", "discrete", "midpoint"]
    config += ["--set", "run.chunk=5", "--set", "checkpoint.frequency=10", "--quiet"]
    killed_dir = tmp_path / "killed"
    argv = [sys.executable, "-m", "centralflows.cli", "run", *config, "--steps", "5000"]
    proc = subprocess.Popen(
        [*argv, "--out", str(killed_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            files = list(killed_dir.glob("*.h5"))
            try:
                if files and cf.load_checkpoint(files[0]) is not None:
                    if cf.load_run(files[0], series=False).steps_done >= 25:
                        break
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        proc.kill()  # SIGKILL: no chance to close the file
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    (path,) = killed_dir.glob("*.h5")
    crashed = cf.load_run(path)  # opens with every flushed row
    done, checkpoint = crashed.steps_done, cf.load_checkpoint(path).step
    assert 25 <= done < 5001 and 10 <= checkpoint <= done and checkpoint % 10 == 0
    assert np.all(np.isfinite(crashed["discrete"]["train_loss"][:done]))
    h5py.File(path, "r").close()  # load_run cleared the dead writer's "open for write" flag

    steps = done + 7  # resume to fewer steps than started: a shorter horizon, same rows
    assert main(["run", "--resume", str(path), "--steps", str(steps), "--quiet"]) == 0
    h5py.File(path, "r").close()  # rebuilt: an ordinary file again
    resumed = cf.load_run(path)
    assert resumed.config["run"]["steps"] == steps and resumed.num_rows == steps + 1
    assert main(["run", *config, "--steps", str(steps), "--out", str(tmp_path / "full")]) == 0
    (full,) = (tmp_path / "full").glob("*.h5")
    _assert_runs_equal(resumed, cf.load_run(full))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "opt.lr=0.3"], "takes no --set opt.lr"),
        (["--runs", "discrete"], "takes no --runs"),
        (["configs/gd-mlp-digits.toml"], "takes no CONFIG"),
        (["--out", "elsewhere"], "takes no --out"),
    ],
)
def test_command_line_resume_takes_only_steps(finished, capsys, extra, message):
    out, _ = finished
    before = out.read_bytes()
    assert main(["run", "--resume", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert out.read_bytes() == before


def test_command_line_resume_needs_a_config_in_the_file(finished, capsys, tmp_path):
    out, _ = finished  # written from Python: no `config` attribute
    assert main(["run", "--resume", str(out)]) == 2
    assert "holds no config" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "missing.h5")]) == 2
    assert "No run file" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "a CONFIG file is required" in capsys.readouterr().err


def test_a_float32_state_round_trips(tmp_path):
    loss = lambda w: jnp.sum((w - 1.0) ** 4)
    w0 = jnp.zeros(3, jnp.float32)
    kwargs = dict(processes=("discrete", "midpoint"), chunk=2, progress=False)
    full = cf.run(loss, w0, cf.GD(lr=0.1), steps=6, **kwargs)
    out = tmp_path / "run.h5"
    cf.run(loss, w0, cf.GD(lr=0.1), steps=3, out=out, **kwargs)
    arrays = cf.load_checkpoint(out).arrays
    assert any(a.dtype == np.float32 for a in arrays) and any(a.dtype == bool for a in arrays)
    _assert_runs_equal(
        cf.run(loss, w0, cf.GD(lr=0.1), steps=6, out=out, resume=True, **kwargs), full
    )


def test_a_run_halted_on_divergence_resumes_without_repeating_the_warning(tmp_path):
    # L = Σ w⁴/4 from w = 2 with η = 1: GD overflows within a few steps (see test_run).
    loss = lambda w: jnp.sum(w**4) / 4
    w0 = jnp.array([2.0, 0.5])
    kwargs = dict(processes=("discrete", "midpoint"), chunk=5, progress=False)
    with pytest.warns(UserWarning, match="stopped at step"):
        full = cf.run(loss, w0, cf.GD(lr=1.0), steps=20, **kwargs)
    out = tmp_path / "run.h5"
    with pytest.warns(UserWarning, match="stopped at step"):
        halted = cf.run(
            loss, w0, cf.GD(lr=1.0), steps=20, out=out, stop_on_divergence=True, **kwargs
        )
    assert halted.steps_done < 21 and cf.load_checkpoint(out).step == halted.steps_done
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once, before the halt: not again
        resumed = cf.run(
            loss, w0, cf.GD(lr=1.0), out=out, resume=True, stop_on_divergence=True, **kwargs
        )
    _assert_runs_equal(resumed, full)
