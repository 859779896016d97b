import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from centralflows._runfile import Run, RunWriter, SeriesSpec, load_checkpoint, load_run

SERIES = {
    "discrete/train_loss": SeriesSpec(()),
    "discrete/hessian_eigs": SeriesSpec((3,)),
    "discrete/effective_hessian_eigs": SeriesSpec((None,)),
    "discrete/opt/count": SeriesSpec((), "int64"),
    "distances/discrete-midpoint": SeriesSpec(()),
}
ATTRS = {
    "config": {
        "opt": {"name": "rmsprop", "lr": 0.1, "betas": [0.9, 0.99]},
        "steps": 10,
    },
    "seed": 3,
    "lr": 0.5,
    "note": "a test run",
    "eos_time": None,
}


def _create(path, num_rows=10, **kwargs):
    return RunWriter.create(path, num_rows=num_rows, series=SERIES, attrs=ATTRS, **kwargs)


def test_create_and_partial_write(tmp_path):
    path = tmp_path / "sub" / "run.h5"  # the parent directory does not exist yet
    with _create(path) as writer:
        assert writer.path == path
        writer.write(
            0,
            {
                "discrete/train_loss": np.array([1.0, 0.5, 0.25]),
                "discrete/hessian_eigs": np.arange(9.0).reshape(3, 3),
                "discrete/opt/count": np.array([1, 2, 3]),
            },
        )
        writer.write(3, {"distances/discrete-midpoint": np.array([0.125])})

    with h5py.File(path, "r") as f:
        for name in ["discrete/train_loss", "distances/discrete-midpoint", "step"]:
            assert name in f
        assert f["step"].dtype == np.int64
        np.testing.assert_array_equal(f["step"][:], [0, 1, 2, 3] + [-1] * 6)
        loss = f["discrete/train_loss"][:]
        np.testing.assert_array_equal(loss[:3], [1.0, 0.5, 0.25])
        assert np.isnan(loss[3:]).all()  # row 3 was logged, but not for this series
        eigs = f["discrete/hessian_eigs"][:]
        assert eigs.shape == (10, 3)
        np.testing.assert_array_equal(eigs[:3], np.arange(9.0).reshape(3, 3))
        assert np.isnan(eigs[3:]).all()
        count = f["discrete/opt/count"][:]
        assert count.dtype == np.int64
        np.testing.assert_array_equal(count, [1, 2, 3] + [-1] * 7)
        distance = f["distances/discrete-midpoint"][:]
        assert distance[3] == 0.125
        assert np.isnan(np.delete(distance, 3)).all()
        assert f.attrs["format"] == "centralflows-run"
        assert f.attrs["format_version"] == 2
        assert json.loads(f.attrs["config"]) == ATTRS["config"]

    run = load_run(path)
    assert isinstance(run, Run)
    assert run.steps_done == 4 and run.num_rows == 10
    assert set(run) == {"discrete", "distances"} and len(run) == 2
    assert set(run["discrete"]) == {
        "train_loss",
        "hessian_eigs",
        "effective_hessian_eigs",
        "opt/count",
    }
    np.testing.assert_array_equal(run["discrete"]["train_loss"], loss)
    np.testing.assert_array_equal(run["distances"]["discrete-midpoint"], distance)
    np.testing.assert_array_equal(run.step, [0, 1, 2, 3] + [-1] * 6)
    assert run.attrs == {**ATTRS, "format": "centralflows-run", "format_version": 2}
    assert run.config == ATTRS["config"]
    assert type(run.attrs["seed"]) is int and type(run.attrs["lr"]) is float
    assert "steps_done=4/10" in repr(run)
    with pytest.raises(KeyError, match="step"):
        run["step"]


# A reader in another process, as a plotting notebook would be: within one process HDF5
# shares one open file between handles, which would hide a missing SWMR switch or flush.
_READER = """
import json, sys
import h5py
from centralflows._runfile import load_run
with h5py.File(sys.argv[1], "r", libver="latest", swmr=True) as f:
    loss, step = f["discrete/train_loss"], f["step"]
    for _ in sys.stdin:
        loss.refresh()
        step.refresh()
        steps_done = load_run(sys.argv[1]).steps_done
        row = [loss[:4].tolist(), step[:4].tolist(), steps_done]
        print(json.dumps(row), flush=True)
"""


def test_reader_sees_rows_while_writer_is_open(tmp_path):
    path = tmp_path / "run.h5"
    with _create(path) as writer:
        writer.write(0, {"discrete/train_loss": np.array([1.0, 2.0])})
        reader = subprocess.Popen(
            [sys.executable, "-c", _READER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reader.stdin is not None and reader.stdout is not None

        def read():
            reader.stdin.write("\n")
            reader.stdin.flush()
            return json.loads(reader.stdout.readline())

        try:
            loss, step, steps_done = read()
            np.testing.assert_array_equal(loss, [1.0, 2.0, np.nan, np.nan])
            assert step == [0, 1, -1, -1] and steps_done == 2
            writer.write(2, {"discrete/train_loss": np.array([3.0])})
            loss, step, steps_done = read()  # the same handle, refreshed
            np.testing.assert_array_equal(loss, [1.0, 2.0, 3.0, np.nan])
            assert step == [0, 1, 2, -1] and steps_done == 3
        finally:
            reader.stdin.close()
            assert reader.wait(timeout=60) == 0


def test_variable_width_grows(tmp_path):
    path = tmp_path / "run.h5"
    name = "discrete/effective_hessian_eigs"
    with _create(path) as writer:
        writer.write(0, {name: np.array([[5.0], [6.0]])})
        writer.write(2, {name: np.array([[1.0, 2.0, 3.0]])})
        writer.write(3, {name: np.array([[7.0, 8.0]])})  # narrower than the dataset
    eigs = load_run(path)["discrete"]["effective_hessian_eigs"]
    assert eigs.shape == (10, 3)
    np.testing.assert_array_equal(eigs[:2, 0], [5.0, 6.0])
    assert np.isnan(eigs[:2, 1:]).all()  # old rows: NaN in the new columns
    np.testing.assert_array_equal(eigs[2], [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(eigs[3, :2], [7.0, 8.0])
    assert np.isnan(eigs[3, 2]) and np.isnan(eigs[4:]).all()


def test_variable_width_narrower_rewrite_clears_old_columns(tmp_path):
    path = tmp_path / "run.h5"
    name = "discrete/effective_hessian_eigs"
    with _create(path) as writer:
        writer.write(0, {name: np.array([[1.0, 2.0, 3.0]])})
        writer.write(0, {name: np.array([[4.0]])})  # e.g. a resumed run rewriting row 0
    np.testing.assert_array_equal(
        load_run(path)["discrete"]["effective_hessian_eigs"][0], [4.0, np.nan, np.nan]
    )


def test_create_refuses_existing_file(tmp_path):
    path = tmp_path / "run.h5"
    with _create(path) as writer:
        writer.write(0, {"discrete/train_loss": np.array([1.0])})
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        _create(path)
    assert path.read_bytes() == before

    with _create(path, num_rows=5, overwrite=True) as writer:
        writer.write(0, {"discrete/train_loss": np.array([9.0])})
    run = load_run(path)
    assert run.num_rows == 5 and run.steps_done == 1
    assert run["discrete"]["train_loss"][0] == 9.0


@pytest.mark.parametrize(
    "num_rows, series, attrs, match",
    [
        (0, SERIES, {}, "num_rows"),
        (5, {"": SeriesSpec(())}, {}, "''"),
        (5, {"train_loss": SeriesSpec(())}, {}, "'train_loss'"),
        (5, {"discrete//loss": SeriesSpec(())}, {}, "'discrete//loss'"),
        (5, {"step/x": SeriesSpec(())}, {}, "'step/x'"),
        (5, {"a/b": SeriesSpec(()), "a/b/c": SeriesSpec(())}, {}, "'a/b/c'"),
        (5, {"a/bad": SeriesSpec((0,))}, {}, "'a/bad'"),
        (5, {"a/bad": SeriesSpec(3)}, {}, "'a/bad'"),  # pyright: ignore
        (5, {"a/bad": SeriesSpec((), "float32")}, {}, "'a/bad'"),
        (5, SERIES, {"format": "mine"}, "'format'"),
        (5, SERIES, {"fn": print}, "'fn'"),
        (5, SERIES, {"cfg": {"fn": print}}, "'cfg'"),
    ],
)
def test_create_validates_before_touching_disk(tmp_path, num_rows, series, attrs, match):
    path = tmp_path / "sub" / "run.h5"
    with pytest.raises(ValueError, match=match):
        RunWriter.create(path, num_rows=num_rows, series=series, attrs=attrs)
    assert not (tmp_path / "sub").exists()


def test_write_validates_and_file_stays_valid(tmp_path):
    path = tmp_path / "run.h5"
    with _create(path, num_rows=4) as writer:
        writer.write(0, {"discrete/train_loss": np.array([1.0, 2.0])})
        with pytest.raises(KeyError, match="discrete/train_loss"):
            writer.write(2, {"discrete/train_los": np.array([3.0])})
        with pytest.raises(ValueError, match="'discrete/train_loss'"):
            writer.write(3, {"discrete/train_loss": np.array([3.0, 4.0])})  # past row 4
        with pytest.raises(ValueError, match="start"):
            writer.write(-1, {"discrete/train_loss": np.array([3.0])})
        with pytest.raises(ValueError, match="'discrete/hessian_eigs'"):
            writer.write(2, {"discrete/hessian_eigs": np.zeros((1, 2))})
        with pytest.raises(ValueError, match="'discrete/train_loss'"):
            writer.write(2, {"discrete/train_loss": np.zeros((1, 1))})
        with pytest.raises(ValueError, match="'discrete/opt/count'"):
            writer.write(2, {"discrete/opt/count": np.array([1.5])})
        with pytest.raises(ValueError, match="row count"):
            writer.write(
                2,
                {
                    "discrete/train_loss": np.array([3.0]),
                    "distances/discrete-midpoint": np.array([3.0, 4.0]),
                },
            )
        # A bad series next to a good one writes neither.
        with pytest.raises(ValueError, match="'discrete/hessian_eigs'"):
            writer.write(
                2,
                {
                    "discrete/train_loss": np.array([3.0]),
                    "discrete/hessian_eigs": np.zeros((1, 4)),
                },
            )
        writer.write(2, {"discrete/train_loss": np.array([3.0])})
    with pytest.raises(ValueError, match="closed"):
        writer.write(3, {"discrete/train_loss": np.array([4.0])})
    run = load_run(path)
    assert run.steps_done == 3
    np.testing.assert_array_equal(run["discrete"]["train_loss"][:3], [1.0, 2.0, 3.0])
    assert np.isnan(run["discrete"]["train_loss"][3])
    assert np.isnan(run["discrete"]["hessian_eigs"]).all()


def test_load_run_rejects_non_run_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_run(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match="not a centralflows run file"):
        load_run(other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        load_run(text)


LAYOUT = [np.zeros((2, 3)), np.zeros((), np.int64), np.zeros(4, bool)]


def _arrays(step, rows=2):
    return [np.full((rows, 3), float(step)), np.array(step), np.arange(4) < step % 5]


def _assert_checkpoint(checkpoint, step, rows=2):
    assert checkpoint is not None and checkpoint.step == step
    for got, expected in zip(checkpoint.arrays, _arrays(step, rows), strict=True):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_checkpoint_round_trip_and_shapes_may_change(tmp_path):
    path = tmp_path / "run.h5"
    with _create(path, checkpoint=LAYOUT) as writer:
        assert load_checkpoint(path) is None
        writer.write_checkpoint(3, _arrays(3))
        _assert_checkpoint(load_checkpoint(path), 3)  # visible to a reader at once
        writer.write_checkpoint(7, _arrays(7, rows=5))  # e.g. the tracked set grew
        writer.write_checkpoint(9, _arrays(9, rows=1))
        for bad, match in [
            (_arrays(9)[:2], "holds 3 arrays, got 2"),
            ([np.zeros((2, 3), np.float32), *_arrays(9)[1:]], "array 0: expected dtype float64"),
            ([np.zeros(6), *_arrays(9)[1:]], "rank 2"),
        ]:
            with pytest.raises(ValueError, match=match):
                writer.write_checkpoint(10, bad)
    _assert_checkpoint(load_checkpoint(path), 9, rows=1)
    run = load_run(path)
    assert set(run) == {"discrete", "distances"}  # `checkpoint` is not a series group
    with pytest.raises(ValueError, match="'checkpoint' is reserved"):
        RunWriter.create(
            tmp_path / "x.h5", num_rows=2, series={"checkpoint/a": SeriesSpec(())}, attrs={}
        )


def test_a_failure_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    with _create(path, checkpoint=LAYOUT) as writer:
        writer.write_checkpoint(3, _arrays(3))
        writer.write_checkpoint(4, _arrays(4))
        resize = h5py.Dataset.resize
        calls = []

        def failing(self, size, axis=None):
            calls.append(self.name)
            if len(calls) == 2:  # the first array of the new slot is written already
                raise OSError("disk full")
            resize(self, size, axis)

        monkeypatch.setattr(h5py.Dataset, "resize", failing)
        with pytest.raises(OSError, match="disk full"):
            writer.write_checkpoint(5, _arrays(5, rows=3))
        monkeypatch.undo()
        assert calls[0].startswith("/checkpoint/0/")  # it was overwriting the older slot
        _assert_checkpoint(load_checkpoint(path), 4)
    _assert_checkpoint(load_checkpoint(path), 4)


# Writes checkpoints in a loop until killed; every array of checkpoint `step` holds `step`.
_CHECKPOINTER = """
import sys
import numpy as np
from centralflows._runfile import RunWriter, SeriesSpec
layout = [np.zeros(50000), np.zeros((50000, 2), np.int64)]
writer = RunWriter.create(sys.argv[1], num_rows=2, series={"a/b": SeriesSpec(())}, attrs={},
                          checkpoint=layout)
print("ready", flush=True)
step = 0
while True:
    step += 1
    size = 1 + (step * 7919) % 50000
    writer.write_checkpoint(step, [np.full(size, float(step)), np.full((size, 2), step)])
"""


def test_a_killed_writer_leaves_a_whole_checkpoint(tmp_path):
    path = tmp_path / "run.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", _CHECKPOINTER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        step = 0
        while step < 20:  # a reader may lose the race with this fast writer: poll again
            time.sleep(0.01)
            try:
                checkpoint = load_checkpoint(path)
            except OSError:
                continue
            step = 0 if checkpoint is None else checkpoint.step
        writer.kill()
        writer.wait()
    finally:
        writer.kill()
        writer.wait()
    checkpoint = load_checkpoint(path)
    assert checkpoint is not None and checkpoint.step >= 20
    step = checkpoint.step
    size = 1 + (step * 7919) % 50000
    np.testing.assert_array_equal(checkpoint.arrays[0], np.full(size, float(step)))
    np.testing.assert_array_equal(checkpoint.arrays[1], np.full((size, 2), step))


def test_reopen_copies_rows_and_checkpoint_and_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "run.h5"
    name = "discrete/effective_hessian_eigs"
    writer = _create(path, num_rows=6, checkpoint=LAYOUT)
    writer.write(
        0, {"discrete/train_loss": np.array([1.0, 2.0, 3.0]), name: np.array([[1.0], [2.0], [3.0]])}
    )
    writer.write(3, {name: np.array([[4.0, 5.0]])})
    writer.write_checkpoint(2, _arrays(2))
    writer._file.flush()  # left open, as by a killed writer,
    writer._lock.release()  # whose lock the kernel released
    before = path.read_bytes()

    monkeypatch.setattr(RunWriter, "write_checkpoint", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        RunWriter.reopen(path, num_rows=8, attrs={"steps": 7})
    monkeypatch.undo()
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    with pytest.raises(ValueError, match="at least the 4 rows already written"):
        RunWriter.reopen(path, num_rows=3, attrs={})
    writer.close()

    with RunWriter.reopen(path, num_rows=8, attrs={"steps": 7, "note": "resumed"}) as reopened:
        assert reopened.path == path and reopened.num_rows == 8
        reopened.write(4, {"discrete/train_loss": np.array([5.0])})
    assert list(tmp_path.iterdir()) == [path]
    run = load_run(path)
    assert run.num_rows == 8 and run.steps_done == 5
    np.testing.assert_array_equal(run["discrete"]["train_loss"][:5], [1.0, 2.0, 3.0, np.nan, 5.0])
    np.testing.assert_array_equal(
        run["discrete"]["effective_hessian_eigs"][:4],
        [[1, np.nan], [2, np.nan], [3, np.nan], [4, 5]],
    )
    assert run.attrs["steps"] == 7 and run.attrs["note"] == "resumed"
    assert run.attrs["config"] == ATTRS["config"]
    _assert_checkpoint(load_checkpoint(path), 2)


def test_a_dataset_being_created_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    # HDF5 reports a dataset whose creation a writer has not finished as a KeyError
    # ("invalid dataset size, likely file corruption"): a reader polling a new run file
    # met it (test_cli). It is an OSError that says to read again.
    # With no writer alive, nothing is being created: the file is damaged (test_faults).
    path = tmp_path / "run.h5"
    with _create(path) as writer:
        writer.write(0, {"discrete/train_loss": np.array([1.0])})
        assert load_run(path).num_rows == 10

        def half_created(self, func):
            raise KeyError("Unable to synchronously open object (invalid dataset size)")

        monkeypatch.setattr(h5py.Group, "visititems", half_created)
        with pytest.raises(OSError, match="run.h5.*read it again"):
            load_run(path)
