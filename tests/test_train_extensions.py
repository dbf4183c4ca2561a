"""Extensions: best parameters and early stopping, tie-breaking, a user's own extension and optimizer."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

import fbprop as fb
import fbprop.train
from fbprop.data import load_dataset
from fbprop.train import BestParams, Trainer


def test_best_params_break_validation_error_ties_by_the_lower_loss_and_ties_do_not_reset_patience():
    best = BestParams()
    records = [(0.10, 0.50, True, 0), (0.10, 0.40, True, 1), (0.10, 0.60, False, 2), (0.05, 0.90, True, 0)]
    for error, loss, improves, stale in records:
        params = np.array([loss])                                  # marks which epoch's parameters were kept
        assert best.track({"val_error": error, "val_loss": loss}, params) is improves
        assert best.stale == stale
    assert best.params[0] == 0.90 and best.error == 0.05


def test_best_params_of_a_machine_without_answers_follow_the_validation_loss():
    best = BestParams()
    assert best.track({"val_loss": 0.5}, np.array([1.0])) and best.track({"val_loss": 0.4}, np.array([2.0]))
    assert not best.track({"val_loss": 0.45}, np.array([3.0]))
    assert best.params[0] == 2.0 and best.stale == 1



@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=300)


def test_a_users_extension_sees_every_hook_in_order_and_can_stop_training(digits):
    calls = []

    class StopAfterTwo(fb.train.Extension):
        def on_fit_start(self, trainer):
            calls.append("fit start")

        def on_epoch_start(self, trainer):
            calls.append(f"epoch {trainer.epoch + 1} start")

        def on_batch_end(self, trainer, samples):
            calls.append(samples)

        def on_epoch_end(self, trainer, record):
            calls.append(f"epoch {record['epoch']} end")
            if record["epoch"] == 2:
                trainer.stop = "enough: two epochs"

        def on_fit_end(self, trainer):
            calls.append("fit end")

    machine = fb.build_machine({"model": "mlp", "hidden": [8], "input_shape": [1, 8, 8], "n_classes": 10})
    log = io.StringIO()
    t = Trainer(machine, digits, epochs=5, batch_size=100, log=log, extensions=[StopAfterTwo()])
    t.fit()
    batch = [100, 100, 100]                                      # limit=300 training samples
    assert calls == ["fit start", "epoch 1 start", *batch, "epoch 1 end", "epoch 2 start", *batch, "epoch 2 end",
                     "fit end"]
    assert t.epoch == 2 and log.getvalue().splitlines()[-1] == "enough: two epochs"


def test_an_optimizer_object_of_ones_own_steps_after_each_mini_batch(digits):
    machine = fb.build_machine({"model": "mlp", "hidden": [8], "input_shape": [1, 8, 8], "n_classes": 10})
    opt = fb.SGD(machine.pool, 0.05, momentum=0.5)
    t = Trainer(machine, digits, optimizer=opt, epochs=2, log=io.StringIO())
    history = t.fit()
    assert t.optimizer is opt and t.settings()["optimizer"] == "SGD"
    assert t.step == 2 * math.ceil(300 / 32) and history[-1]["train_loss"] < history[0]["train_loss"]
