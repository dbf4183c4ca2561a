"""Checkpoints: no pickle, atomic saves, one-line errors for corrupt files, bit-exact resume."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

import fbprop as fb
from fbprop.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from fbprop.data import load_dataset
from fbprop.train import Trainer

SPEC = {"model": "mlp", "hidden": [16], "input_shape": [1, 8, 8], "n_classes": 10, "seed": 0}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=300)


@pytest.fixture
def saved(tmp_path):
    """A checkpoint with every part filled; returns its path and what went in."""
    path = tmp_path / "checkpoint.npz"
    parts = (SPEC, np.arange(5, dtype=np.float32), {"v": np.ones(5, np.float32)}, {"epoch": 3, "history": []})
    save_checkpoint(path, *parts)
    return path, parts


def test_checkpoint_round_trips_and_reads_without_pickle(saved):
    path, (spec, params, optimizer, trainer) = saved
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["architecture", "format", "optimizer/v", "params", "trainer"]
        assert str(z["format"]) == FORMAT
    spec2, params2, optimizer2, trainer2 = load_checkpoint(path)
    assert (spec2, trainer2) == (spec, trainer)
    np.testing.assert_array_equal(params2, params)
    assert params2.dtype == np.float32
    assert optimizer2.keys() == {"v"}
    np.testing.assert_array_equal(optimizer2["v"], optimizer["v"])


def test_run_directory_loads_its_checkpoint_npz(saved):
    path, (spec, *_) = saved
    assert load_checkpoint(path.parent)[0] == spec


def test_missing_checkpoint_is_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz: no such checkpoint"):
        load_checkpoint(tmp_path / "nothing.npz")


def _valid(**override) -> dict:
    arrays = {"format": np.array(FORMAT), "architecture": np.array('{"model": "mlp"}'),
              "params": np.zeros(3, np.float32), "trainer": np.array("{}")}
    return {**arrays, **override}


def _object_array() -> np.ndarray:
    a = np.empty(2, dtype=object)
    a[:] = [print, "x"]
    return a


CORRUPT = {
    "truncated": lambda good: good[: len(good) // 2],
    "random bytes": lambda good: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "empty": lambda good: b"",
    "a flipped byte": lambda good: good[:200] + bytes([good[200] ^ 0xFF]) + good[201:],
}
INVALID = {
    "no format key": {k: v for k, v in _valid().items() if k != "format"},
    "another format": _valid(format=np.array("something-else-2")),
    "no params": {k: v for k, v in _valid().items() if k != "params"},
    "object params": _valid(params=_object_array()),
    "object optimizer slot": {**_valid(), "optimizer/v": _object_array()},
    "architecture not JSON": _valid(architecture=np.array("{model: mlp")),
    "architecture not an object": _valid(architecture=np.array("[1, 2]")),
    "2-D params": _valid(params=np.zeros((2, 3), np.float32)),
    "integer params": _valid(params=np.zeros(3, np.int64)),
}


@pytest.mark.parametrize("damage", CORRUPT)
def test_damaged_checkpoint_is_a_one_line_checkpoint_error_naming_the_file(saved, damage):
    path, _ = saved
    path.write_bytes(CORRUPT[damage](path.read_bytes()))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


@pytest.mark.parametrize("case", INVALID)
def test_npz_that_is_not_a_valid_checkpoint_is_a_one_line_checkpoint_error(tmp_path, case):
    path = tmp_path / "bad.npz"
    np.savez(path, **INVALID[case])                             # savez pickles object arrays
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_crash_between_write_and_rename_keeps_the_previous_checkpoint_and_no_temp_file(saved, monkeypatch):
    path, (spec, params, _, _) = saved
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, {"model": "other"}, np.full(5, 9, np.float32))
    monkeypatch.undo()
    assert os.listdir(path.parent) == ["checkpoint.npz"]
    assert path.read_bytes() == before
    np.testing.assert_array_equal(load_checkpoint(path)[1], params)


def test_interrupt_while_writing_leaves_no_temp_file(saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, SPEC, np.zeros(5, np.float32))
    assert os.listdir(path.parent) == ["checkpoint.npz"] and path.read_bytes() == before


def test_saved_files_get_the_permissions_of_any_new_file(saved, tmp_path):
    path, _ = saved
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


# resume ---------------------------------------------------------------------------------------
def _trainer(data, out_dir, epochs, optimizer) -> Trainer:
    machine = fb.build_machine(SPEC)
    lr = {"sgd": 0.05, "momentum": 0.01, "sdlm": 0.02}[optimizer]
    return Trainer(machine, data, optimizer=optimizer, lr=lr, epochs=epochs, out_dir=out_dir,
                   hessian_samples=100, log=io.StringIO())


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "sdlm"])
def test_two_epochs_and_a_resume_for_two_more_equal_four_straight_bit_for_bit(digits, tmp_path, optimizer):
    straight = _trainer(digits, tmp_path / "straight", 4, optimizer)
    straight.fit()
    _trainer(digits, tmp_path / "split", 2, optimizer).fit()
    resumed = _trainer(digits, tmp_path / "split", 4, optimizer)
    resumed.resume(tmp_path / "split" / "checkpoint.npz")
    assert resumed.epoch == 2 and len(resumed.history) == 2
    resumed.fit()
    assert np.array_equal(resumed.machine.pool.x, straight.machine.pool.x)
    if optimizer != "sgd":
        key = "v" if optimizer == "momentum" else "h"
        assert np.array_equal(getattr(resumed.optimizer, key), getattr(straight.optimizer, key))
    assert resumed.step == straight.step and resumed.best.error == straight.best.error

    def without_time(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert without_time(resumed.history) == without_time(straight.history)
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "split" / "best.npz")[1],
                                  load_checkpoint(tmp_path / "straight" / "best.npz")[1])


def test_resume_takes_the_best_parameters_from_best_npz_beside_the_checkpoint(digits, tmp_path):
    _trainer(digits, tmp_path, 3, "sgd").fit()
    resumed = _trainer(digits, tmp_path, 3, "sgd")
    resumed.resume(tmp_path)
    best = load_checkpoint(tmp_path / "best.npz")
    np.testing.assert_array_equal(resumed.best.params, best[1])
    assert resumed.best.error == best[3]["val_error"]
    resumed.restore_best()
    np.testing.assert_array_equal(resumed.machine.pool.x, best[1])


def test_resuming_from_best_npz_is_refused_as_it_holds_no_training_state(digits, tmp_path):
    _trainer(digits, tmp_path, 1, "sgd").fit()
    metrics = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(CheckpointError, match="best.npz: .*resume from checkpoint.npz"):
        _trainer(digits, tmp_path, 2, "sgd").resume(tmp_path / "best.npz")
    assert (tmp_path / "metrics.json").read_bytes() == metrics
