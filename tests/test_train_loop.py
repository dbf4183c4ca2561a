"""The epoch loop: log lines, progress, bad options, early stopping, divergence, every optimizer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fbprop.checkpoint import load_checkpoint
from fbprop.network import leaves
from fbprop.optim import OPTIMIZERS
from fbprop.train import TrainingDiverged
from training import small_machine, trainer


def test_fit_logs_one_line_per_epoch_with_the_validation_error_only_and_no_progress_bar(digits):
    t = trainer(digits, lr=0.05, epochs=3)
    history = t.fit()
    lines = t.log.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in t.log.getvalue()
    for i, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {i:3d} | lr 0.05 | train loss ")
        assert "val err" in line and "test" not in line
    assert all("test_error" not in r and "test_loss" not in r for r in history)     # not even computed


def test_show_test_adds_the_test_error_to_each_epoch_for_teaching(digits):
    t = trainer(digits, lr=0.05, epochs=2, show_test=True)
    history = t.fit()
    assert all("val err" in line and "test err" in line for line in t.log.getvalue().splitlines())
    assert all(0 <= r["test_error"] <= 1 for r in history)


def test_progress_bar_names_the_epoch_out_of_all(digits):
    t = trainer(digits, lr=0.05, epochs=2, progress=True)
    t.fit()
    assert "epoch 1/2" in t.log.getvalue() and "epoch 2/2" in t.log.getvalue()


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "expected batch_size >= 1, got 0"),
    ({"epochs": -1}, "expected epochs >= 0, got -1"),
    ({"patience": 0}, "expected patience None or >= 1, got 0"),
    ({"optimizer": "adadelta"}, "unknown optimizer 'adadelta'"),
    ({"schedule": "step"}, "unknown schedule 'step'"),
])
def test_trainer_rejects_bad_options_with_a_message_naming_them(digits, options, message):
    with pytest.raises(ValueError, match=message):
        trainer(digits, **options)


def test_early_stopping_stops_after_patience_epochs_without_a_better_val_error(digits):
    # With η = 1e-9 the answers never change: epoch 1 sets the best error, no later one beats it.
    t = trainer(digits, lr=1e-9, epochs=10, patience=2)
    history = t.fit()
    assert [r["val_error"] for r in history] == [history[0]["val_error"]] * 3
    assert len(history) == 3 and t.epoch == 3
    assert t.log.getvalue().splitlines()[-1] == "early stopping: no better validation error for 2 epochs"


def test_training_without_patience_runs_every_epoch(digits):
    assert len(trainer(digits, lr=1e-9, epochs=4).fit()) == 4


def test_best_params_are_those_of_the_best_val_error_and_restore_best_puts_them_back(digits):
    snapshots = []
    t = trainer(digits, lr=0.05, epochs=4, callbacks=[lambda tr, r: snapshots.append(tr.machine.pool.x.copy())])
    history = t.fit()
    best = int(np.argmin([r["val_error"] for r in history]))   # the first of equal minima
    assert t.best.error == history[best]["val_error"]
    t.restore_best()
    np.testing.assert_array_equal(t.machine.pool.x, snapshots[best])


# divergence -----------------------------------------------------------------------------------
def test_nan_weight_raises_training_diverged_naming_epoch_steps_and_module_and_keeps_last_good_checkpoint(
        digits, tmp_path):
    machine = small_machine()
    second_linear = list(leaves(machine.net))[3]
    assert repr(second_linear) == "Linear(16 -> 10)"
    good = {}

    def poison_after_epoch_2(tr, record):
        if record["epoch"] == 2:
            good["params"] = tr.machine.pool.x.copy()
            second_linear.w.x[3, 5] = np.nan                  # a view into pool.x

    t = trainer(digits, machine, lr=0.05, epochs=5, out_dir=tmp_path, callbacks=[poison_after_epoch_2])
    with pytest.raises(TrainingDiverged) as caught:
        t.fit()
    steps = 2 * math.ceil(len(digits.train) / 32)
    message = str(caught.value)
    assert f"epoch 3 after {steps} steps" in message
    assert "first non-finite output: Linear(16 -> 10)" in message
    _, params, _, state = load_checkpoint(tmp_path / "checkpoint.npz")
    np.testing.assert_array_equal(params, good["params"])
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "checkpoint.npz", "metrics.csv",
                                                         "metrics.json"]


def test_huge_learning_rate_raises_training_diverged_naming_the_module(digits):
    t = trainer(digits, small_machine(squash="relu"), lr=1e20, epochs=2)
    with pytest.raises(TrainingDiverged, match=r"epoch 1 after \d+ steps \(mini-batch loss\); "
                                               r"first non-finite output: Linear\(16 -> 10\)"):
        t.fit()


def test_parameters_going_non_finite_in_the_last_step_are_caught_at_the_end_of_the_epoch(digits, tmp_path):
    t = trainer(digits, lr=0.05, epochs=2, out_dir=tmp_path)
    steps = math.ceil(len(digits.train) / 32)
    step = t.optimizer.step

    def poisoned_step():
        step()
        if t.step == steps - 1:                                # the epoch's last step (counted after it)
            t.machine.pool.x[0] = np.inf                       # Linear(64 -> 16)'s first weight
    t.optimizer.step = poisoned_step
    with pytest.raises(TrainingDiverged, match=rf"epoch 1 after {steps} steps \(end of epoch\); "
                                               r"first non-finite output: Linear\(64 -> 16\)"):
        t.fit()
    assert not (tmp_path / "checkpoint.npz").exists()


# optimizers -----------------------------------------------------------------------------------
SETTINGS = {
    "sgd": {"lr": 0.05, "epochs": 4},
    "momentum": {"lr": 0.01, "epochs": 4},
    "sdlm": {"lr": 0.02, "epochs": 4, "hessian_samples": 200},
    "batch": {"lr": 1.0, "epochs": 20},
    "lbfgs": {"epochs": 2, "max_iter": 10},
    "adam": {"lr": 0.003, "epochs": 4},
    "adamw": {"lr": 0.003, "epochs": 4},
}


def test_every_optimizer_has_a_training_case():
    assert set(SETTINGS) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains_digits_far_below_chance(digits, name):
    t = trainer(digits, optimizer=name, **SETTINGS[name])
    history = t.fit()
    assert history[-1]["val_error"] < 0.2 and t.evaluate(digits.test).error < 0.2   # chance: 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_online_learning_takes_one_step_per_sample_and_learns(digits):
    t = trainer(digits, lr=0.01, batch_size=1, epochs=1)
    t.fit()
    assert t.step == len(digits.train)
    assert t.evaluate(digits.test).error < 0.3




def test_full_batch_descent_whose_step_goes_non_finite_saves_no_checkpoint_of_that_epoch(digits, tmp_path):
    t = trainer(digits, optimizer="batch", lr=0.5, epochs=3, out_dir=tmp_path)
    step = t.optimizer.step

    def poisoned_step():
        step()
        if t.step == 1:                                         # the second epoch's one step (counted after it)
            t.machine.pool.x[0] = np.nan
    t.optimizer.step = poisoned_step
    with pytest.raises(TrainingDiverged, match=r"epoch 2 after 2 steps \(end of epoch\)"):
        t.fit()
    _, params, _, state = load_checkpoint(tmp_path / "checkpoint.npz")
    assert state["epoch"] == 1 and np.isfinite(params).all()
