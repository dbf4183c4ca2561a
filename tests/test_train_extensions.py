"""Extensions: best parameters and early stopping, tie-breaking, machines without answers."""

from __future__ import annotations

import numpy as np

from fbprop.train import BestParams


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

