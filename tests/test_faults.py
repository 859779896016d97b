"""The fault matrix (docs/faults.md): each fault a researcher meets, and what is promised."""

import datetime
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

import centralflows as cf
import centralflows._experiment
import centralflows._run
from centralflows._hdf5 import WriterBusyError
from centralflows._runfile import RunFileError, RunWriter, SeriesSpec
from centralflows._stop import stop_reason_of
from centralflows.cli import main

from .denied import refuse_writes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, "configs", "gd-mlp-digits.toml")
TOY = os.path.join(ROOT, "configs", "gd-toy.toml")
TINY = ["--set", "data.n=60", "--set", "data.n_test=20", "--set", "model.width=4"]
TINY += ["--set", "eig.max_neigs=1", "--runs", "discrete", "--quiet"]


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """A small finished run file written by the command (3 steps; checkpoints at 2 and, at
    the end, 4: the next row)."""
    out = tmp_path_factory.mktemp("intact")
    argv = ["run", DEFAULT, *TINY, "--steps", "3", "--set", "checkpoint.steps=[2]"]
    assert main([*argv, "--out", str(out)]) == 0
    (path,) = out.glob("*.h5")
    return path


def _chunks(path):
    """`(offset, size, name)` of every allocated chunk (or contiguous block) in the file."""
    found = []
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                if obj.chunks is None:
                    offset = obj.id.get_offset()
                    if offset is not None:
                        found.append((offset, obj.id.get_storage_size(), name))
                    return
                for i in range(obj.id.get_num_chunks()):
                    info = obj.id.get_chunk_info(i)
                    found.append((info.byte_offset, info.size, name))

        f.visititems(visit)
    return sorted(found)


def _cut_points(path):
    """Where to cut: in the header, in the middle of the last series chunk and of the last
    checkpoint chunk the file holds."""
    chunks = _chunks(path)
    series = [c for c in chunks if not c[2].startswith("checkpoint") and c[2] != "step"]
    checkpoint = [c for c in chunks if c[2].startswith("checkpoint/")]
    offset, size, _ = series[-1]
    mid_series = offset + size // 2
    offset, size, _ = max(checkpoint)
    return {"header": 100, "mid-series": mid_series, "mid-checkpoint": offset + size // 2}


def _cut(path, at, tmp_path):
    cut = tmp_path / "cut.h5"
    shutil.copy(path, cut)
    os.truncate(cut, at)
    return cut


@pytest.mark.parametrize("where", ["header", "mid-series", "mid-checkpoint"])
def test_a_cut_run_file_is_named_and_described_everywhere(run_file, tmp_path, capsys, where):
    at = _cut_points(run_file)[where]
    cut = _cut(run_file, at, tmp_path)
    before = cut.read_bytes()
    expected = f"Run file '{cut}' is damaged: it is cut short: {at} of its"
    # `info` in a fresh process, with a deadline: it hung for over 10 minutes.
    info = subprocess.run(
        [sys.executable, "-m", "centralflows.cli", "info", str(cut)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 2 and expected in info.stderr, info.stderr
    with pytest.raises(RunFileError, match="is damaged: it is cut short") as error:
        cf.load_run(cut)
    assert str(cut) in str(error.value)
    with pytest.raises(RunFileError, match="is damaged"):
        cf.load_checkpoint(cut)
    with pytest.raises(RunFileError, match="is damaged"):
        cf.plot(cut)
    assert main(["plot", str(cut)]) == 2 and expected in capsys.readouterr().err
    assert main(["run", "--resume", str(cut), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "retry" not in err
    assert cut.read_bytes() == before  # nothing was written to the damaged file


def test_the_intact_series_of_a_cut_file_can_be_salvaged(run_file, tmp_path):
    intact = cf.load_run(run_file)
    points = _cut_points(run_file)
    # Cut in the checkpoint, after every series: every series survives whole.
    cut = _cut(run_file, points["mid-checkpoint"], tmp_path)
    message = str(pytest.raises(RunFileError, cf.load_run, cut).value)
    assert "its checkpoint (step 4) is lost" in message and "salvage=True" in message
    salvaged = cf.load_run(cut, salvage=True)
    assert salvaged.damaged == {} and salvaged.config == intact.config
    for name, values in intact["discrete"].items():
        np.testing.assert_array_equal(salvaged["discrete"][name], values, err_msg=name)
    # Cut in the last series chunk: that series is lost, the others are whole.
    cut = _cut(run_file, points["mid-series"], tmp_path)
    salvaged = cf.load_run(cut, salvage=True)
    lost = _chunks(run_file)
    last = [c for c in lost if not c[2].startswith("checkpoint")][-1][2]
    assert last in salvaged.damaged and "rows 0 to 3 are lost" in salvaged.damaged[last]
    group, _, key = last.partition("/")
    assert np.all(np.isnan(salvaged[group][key]))
    kept = [n for n in intact["discrete"] if f"discrete/{n}" not in salvaged.damaged]
    assert "train_loss" in kept
    for name in kept:
        np.testing.assert_array_equal(salvaged["discrete"][name], intact["discrete"][name])
    # Cut in the header: nothing to salvage, and it says so.
    cut = _cut(run_file, points["header"], tmp_path)
    with pytest.raises(RunFileError, match="cannot be read"):
        cf.load_run(cut, salvage=True)


def test_an_unwritable_out_fails_before_any_computation(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(centralflows._experiment, "make_problem", no_model)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker, blocker / "runs"):
        assert main(["run", DEFAULT, *TINY, "--steps", "3", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"Cannot write run file '{out}/gd-mlp-digits-" in err
        assert f"'{blocker}' is a file, not a directory" in err
    # The Python API checks `out` before it computes anything too.
    monkeypatch.setattr(centralflows._run, "_check_start", no_model)
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        cf.run(lambda w: jnp.sum(w**2), jnp.ones(2), cf.GD(0.1), steps=3, out=blocker / "r.h5")


@pytest.mark.parametrize("made", [True, False])
def test_an_unwritable_out_directory_fails_before_any_computation(
    tmp_path, capsys, monkeypatch, made
):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(centralflows._experiment, "make_problem", no_model)
    monkeypatch.setattr(centralflows._run, "_check_start", no_model)
    # Tests run as root, for whom `chmod` refuses nothing: refuse as the kernel would.
    refuse_writes(tmp_path, monkeypatch.setattr)
    out = tmp_path if made else tmp_path / "new" / "runs"
    why = f"directory '{out}' cannot be {'written' if made else 'made'} (Permission denied)"
    argv = ["run", DEFAULT, *TINY, "--steps", "3", "--name", "r", "--out", str(out)]
    assert main(argv) == 2
    assert f"Cannot write run file '{out}/r.h5': {why}" in capsys.readouterr().err
    with pytest.raises(PermissionError) as error:
        cf.run(lambda w: jnp.sum(w**2), jnp.ones(2), cf.GD(0.1), steps=3, out=out / "r.h5")
    assert error.value.errno == errno.EACCES
    assert error.value.strerror == f"Cannot write run file '{out}/r.h5': {why}"
    monkeypatch.undo()
    assert not any(tmp_path.iterdir())


# Writes rows and checkpoints until killed: row i of `a/b` holds i, checkpoint `s` holds
# `s` in every entry; prints the pid and "ready" once the first checkpoint is in.
_WRITER = """
import sys, time
import numpy as np
from centralflows._runfile import RunWriter, SeriesSpec
rows, pause = int(sys.argv[2]), float(sys.argv[3])
writer = RunWriter.create(sys.argv[1], num_rows=rows, series={"a/b": SeriesSpec((3,))},
                          attrs={"note": "killed"}, checkpoint=[np.zeros(4000)])
for i in range(rows):
    writer.write(i, {"a/b": np.full((1, 3), float(i))})
    if i % 3 == 2:
        writer.write_checkpoint(i + 1, [np.full(1000 + 997 * i % 3000, float(i + 1))])
    if i == 2:
        print("ready", flush=True)
    time.sleep(pause)
print("done", flush=True)
time.sleep(600)
"""


def _start_writer(path, rows=10_000, pause=0.0):
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(rows), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _check_whole(path):
    """The run file of a killed `_WRITER` reads back exactly what was written."""
    run = cf.load_run(path)
    done = run.steps_done
    values = run["a"]["b"]
    np.testing.assert_array_equal(values[:done], np.repeat(np.arange(done)[:, None], 3, 1))
    assert np.all(np.isnan(values[done:]))
    checkpoint = cf.load_checkpoint(path)
    assert checkpoint is not None and checkpoint.step % 3 == 0 and checkpoint.step <= done
    np.testing.assert_array_equal(checkpoint.arrays[0], float(checkpoint.step))
    return done, checkpoint.step


def test_a_killed_writers_file_opens_with_plain_h5py(tmp_path):
    path = tmp_path / "run.h5"
    writer = _start_writer(path, pause=0.01)
    try:
        lock = tmp_path / ".run.h5.lock"
        assert json.loads(lock.read_text())["pid"] == writer.pid
        first = cf.load_run(path).steps_done  # while it writes: SWMR
        time.sleep(0.3)
        assert cf.load_run(path).steps_done > first >= 3
        with pytest.raises(OSError, match="already open for write"):
            h5py.File(path, "r")  # its writer is alive: the flag is not stale
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    finally:
        writer.kill()
        writer.wait()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")  # left by the dead writer: stale
    done, _ = _check_whole(path)  # clears it
    with h5py.File(path, "r") as f:
        assert f["step"][done - 1] == done - 1 and f.attrs["note"] == "killed"
    assert not lock.exists()


def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys, monkeypatch):
    class Fixed(datetime.datetime):  # the run file's name comes from the time
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    path = tmp_path / "gd-mlp-digits-20260102-030405.h5"
    writer = _start_writer(path, pause=0.05)
    try:
        holder = f"pid {writer.pid} on "
        with pytest.raises(WriterBusyError, match=holder):
            RunWriter.reopen(path, num_rows=20_000, attrs={})
        with pytest.raises(WriterBusyError, match=holder):
            RunWriter.create(path, num_rows=3, series={"a/b": SeriesSpec(())}, attrs={},
                             overwrite=True)  # fmt: skip
        with pytest.raises(WriterBusyError, match=holder):  # before any computation
            cf.run(lambda w: jnp.sum(w**2), jnp.ones(2), cf.GD(0.1), out=path, resume=True)
        monkeypatch.setattr(datetime, "datetime", Fixed)
        argv = ["run", DEFAULT, *TINY, "--steps", "3", "--out", str(tmp_path), "--overwrite"]
        assert main(argv) == 2
        assert "is being written by another process (" + holder in capsys.readouterr().err
        assert writer.poll() is None  # and the first writer goes on
    finally:
        writer.kill()
        writer.wait()
    _check_whole(path)


_REBUILD = """
import sys, time
from centralflows._runfile import RunWriter
writer = RunWriter.reopen(sys.argv[1], num_rows=20_000, attrs={"rebuilt": 1})
print("ready", flush=True)
time.sleep(600)
"""


# `_KILL_AT + _WRITER` (or `+ _REBUILD`) kills itself with SIGKILL at a known moment: just
# before its COUNT-th write to a dataset whose name matches PATTERN, after a flush (all it
# wrote before is in the file), or for PATTERN "os.replace", just before its COUNT-th
# rename. PATTERN and COUNT are its first two arguments, the script's own follow. A kill
# by the clock mostly lands outside the writer's steps (in imports, sleeps); these land
# between them, where a wrong order of them shows.
_KILL_AT = """
import fnmatch, os, signal, sys
import h5py
pattern, count = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
setitem, replace = h5py.Dataset.__setitem__, os.replace

def now():
    global count
    count -= 1
    return count == 0

def killing_setitem(self, key, value):
    if fnmatch.fnmatchcase(self.name, pattern) and now():
        self.file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    setitem(self, key, value)

def killing_replace(*args, **kwargs):
    if pattern == "os.replace" and now():
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(*args, **kwargs)

h5py.Dataset.__setitem__, os.replace = killing_setitem, killing_replace
"""


def _killed_at(script, pattern, count, *args):
    """Run `script` (`_WRITER`, `_REBUILD`) until it kills itself where `_KILL_AT` says."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_AT + script, pattern, str(count), *map(str, args)],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL  # it got there, and died there
    finally:
        proc.kill()
        proc.wait()


def _raw(path):
    """`(step, a/b, checkpoint slot not current: its array and shapes)` as stored."""
    with h5py.File(path, "r") as f:  # a plain open: `_check_whole` cleared the flag
        slot = f["checkpoint/current"][0]
        other = f[f"checkpoint/{1 - slot}"]
        return f["step"][()], f["a/b"][()], other["0"][()], other["shapes"][()]


# Where `_WRITER` is killed: (dataset, whose n-th write is the kill's moment). It writes
# row i, then after rows 2, 5, 8, ... checkpoint n = 1, 2, 3, ... at step 3n.
_WRITER_KILLS = {
    "before-row": "/a/b",  # a row about to be written
    "mid-row": "/step",  # its values written and flushed, `/step` not yet marking them
    "mid-checkpoint": "/checkpoint/?/0",  # a new checkpoint's array about to be written
    "before-shapes": "/checkpoint/?/shapes",  # its array written, its shapes not
    "before-switch": "/checkpoint/current",  # all written, `current` still the previous
}


@pytest.mark.parametrize("where", list(_WRITER_KILLS))
def test_sigkill_mid_write_leaves_a_whole_file(tmp_path, where):
    path = tmp_path / "run.h5"
    rng = random.Random(where)
    if where.endswith("row"):
        row = rng.randrange(3, 40)
        _killed_at(_WRITER, _WRITER_KILLS[where], row + 1, path, 100, 0.0)
        assert _check_whole(path) == (row, 3 * (row // 3))
        step, values, _, _ = _raw(path)
        assert step[row] == -1  # unmarked: `load_run` shows the row as unwritten
        written = where == "mid-row"
        np.testing.assert_array_equal(values[row], row if written else np.nan)
    else:
        n = rng.randrange(2, 12)  # checkpoint n, with checkpoint n - 1 before it
        # 3n rows done: the kill landed after row 3n - 1, inside checkpoint n.
        _killed_at(_WRITER, _WRITER_KILLS[where], n, path, 100, 0.0)
        assert _check_whole(path) == (3 * n, 3 * (n - 1))  # the previous checkpoint
        _, _, array, shapes = _raw(path)
        size = 1000 + 997 * (3 * n - 1) % 3000  # checkpoint n's, in `_WRITER`
        if where != "mid-checkpoint":  # the new one was (partly) written, not switched to
            np.testing.assert_array_equal(array, np.full(size, 3.0 * n))
            assert (shapes[0, 0] == size) == (where == "before-switch")


def test_sigkill_mid_rebuild_leaves_the_old_file_whole(tmp_path):
    # The rebuild that `--resume` starts with (`RunWriter.reopen`): killed while it copies
    # the rows, before it copies the checkpoint and before its rename over the old file,
    # the old file is as it was and the copy is left aside; killed once done, the file is
    # the whole copy.
    path = tmp_path / "run.h5"
    _killed_at(_WRITER, "/a/b", 17, path, 100, 0.0)
    done, step = _check_whole(path)
    for pattern in ("/step", "/checkpoint/?/0", "os.replace"):
        _killed_at(_REBUILD, pattern, 1, path)
        # The kill landed mid-rebuild: its copy is left (the previous kill's is removed).
        assert len(list(tmp_path.glob(".run.h5.*.tmp"))) == 1
        assert _check_whole(path) == (done, step)
        assert "rebuilt" not in cf.load_run(path).attrs
    rebuild = subprocess.Popen(
        [sys.executable, "-c", _REBUILD, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert rebuild.stdout is not None and rebuild.stdout.readline() == "ready\n"
    rebuild.kill()
    rebuild.wait()
    assert _check_whole(path) == (done, step)  # the whole copy
    assert cf.load_run(path).attrs.get("rebuilt") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_divergence_stops_the_process_and_exits_3(tmp_path, capsys):
    argv = ["run", DEFAULT, *TINY, "--steps", "30", "--set", "opt.lr=50"]
    with pytest.warns(UserWarning, match="discrete stopped at step"):
        assert main([*argv, "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "centralflows: discrete stopped at step" in err and "divergence_factor" in err
    (path,) = tmp_path.glob("*.h5")
    run = cf.load_run(path)
    loss, reason = run["discrete"]["train_loss"], run["discrete"]["stop_reason"]
    stop = int(run["discrete"]["stop_time"][-1])
    assert stop_reason_of(int(reason[-1])) == cf.StopReason.diverged
    # It stopped on the factor, with the loss still finite, not waiting for an overflow.
    assert stop <= 5 and np.isfinite(loss[stop]) and loss[stop] > 1000 * loss[0]
    assert np.all(np.isnan(loss[stop + 1 :]))
    assert np.all(np.isnan(run["discrete"]["effective_hessian_eigs"][stop + 1 :]))
    assert run.config["run"]["divergence_factor"] == 1000.0


@pytest.mark.parametrize("value", ["1", "0.5", "-3", "true"])
def test_divergence_factor_is_validated(tmp_path, capsys, value):
    argv = ["run", DEFAULT, "--set", f"run.divergence_factor={value}", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "run.divergence_factor" in capsys.readouterr().err and not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="divergence_factor"):
        cf.run(lambda w: jnp.sum(w**2), jnp.ones(2), cf.GD(0.1), steps=2, divergence_factor=1)


def _fill_the_disk_at(monkeypatch, dataset, rows):
    """Make writing `rows` (a slice) of `dataset` fail as it does on a full disk."""
    setitem = h5py.Dataset.__setitem__

    def filling(self, key, value):
        if self.name == dataset and key == rows:
            raise OSError(errno.ENOSPC, "No space left on device")
        setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", filling)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    loss = lambda w: jnp.sum((w - 1.0) ** 4)
    w0 = jnp.zeros(3)
    kwargs = dict(processes=("discrete", "midpoint"), chunk=2, checkpoint_every=4, progress=False)
    full = cf.run(loss, w0, cf.GD(lr=0.1), steps=10, **kwargs)
    out = tmp_path / "run.h5"
    _fill_the_disk_at(monkeypatch, "/discrete/train_loss", slice(6, 8))  # after step 4's
    with pytest.raises(OSError) as error:
        cf.run(loss, w0, cf.GD(lr=0.1), steps=10, out=out, **kwargs)
    monkeypatch.undo()
    message = str(error.value)
    assert error.value.errno == errno.ENOSPC and f"run file '{out}'" in message
    assert "keeps its first 6 rows, and its previous checkpoint, at step 4, survives" in message
    assert cf.load_checkpoint(out).step == 4
    resumed = cf.run(loss, w0, cf.GD(lr=0.1), steps=10, out=out, resume=True, **kwargs)
    for group in full:
        for name in full[group]:
            np.testing.assert_array_equal(resumed[group][name], full[group][name])


def test_the_command_exits_1_on_a_full_disk(tmp_path, capsys, monkeypatch):
    argv = ["run", TOY, "--steps", "10", "--runs", "discrete", "--set", "run.chunk=2"]
    argv += ["--set", "checkpoint.frequency=4", "--name", "r", "--out", str(tmp_path)]
    _fill_the_disk_at(monkeypatch, "/discrete/train_loss", slice(6, 8))  # after step 4's
    assert main([*argv, "--quiet"]) == 1
    monkeypatch.undo()
    path = tmp_path / "r.h5"
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"centralflows: error: The disk is full: writing rows 6 to 7 to "
                          f"run file '{path}' failed. The file keeps its first 6 rows, and "
                          "its previous checkpoint, at step 4, survives")  # fmt: skip
    assert cf.load_run(path).steps_done == 6 and cf.load_checkpoint(path).step == 4
    assert main(["run", "--resume", str(path), "--quiet"]) == 0
    assert cf.load_run(path).steps_done == 11


def test_a_binary_or_run_file_given_as_config_is_named(tmp_path, capsys, run_file):
    binary = tmp_path / "weights.toml"
    binary.write_bytes(bytes(range(200, 256)) * 4)
    assert main(["run", str(binary), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{binary} is not a TOML config: it is not UTF-8 text" in err and "binary" in err
    assert main(["run", str(run_file), "--out", str(tmp_path)]) == 2
    assert f"use `centralflows run --resume {run_file}`" in capsys.readouterr().err
