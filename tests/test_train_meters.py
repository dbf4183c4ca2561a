"""Meters: mean loss, error rate and confusion by hand; evaluate against one full pass."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fbprop.train import Meter, evaluate
from training import small_machine


def test_meter_mean_loss_error_rate_and_confusion_match_hand_counts():
    meter = Meter(3)
    meter.add(3.0, np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    meter.add(1.0, np.array([0]), np.array([2]))
    assert meter.loss == pytest.approx(4.0 / 5)
    np.testing.assert_array_equal(meter.confusion, [[1, 0, 0],
                                                    [0, 1, 1],                 # rows: true class
                                                    [1, 0, 1]])                # columns: answer
    assert meter.error == pytest.approx(2 / 5)


def test_meter_with_regression_targets_keeps_the_mean_loss_and_has_no_error_rate():
    meter = Meter(0)
    meter.add(2.0, None, np.zeros((4, 3)))                 # (n, d) float targets, no answers
    meter.add(1.0, None, np.zeros((2, 3)))
    assert meter.loss == pytest.approx(3.0 / 6)
    assert math.isnan(meter.error) and meter.confusion.sum() == 0


def test_empty_meter_has_zero_loss_and_nan_error():
    meter = Meter(10)
    assert meter.loss == 0.0 and math.isnan(meter.error)


def test_evaluate_equals_one_full_batch_pass_and_leaves_parameters_alone(digits):
    machine, split = small_machine(), digits.test
    params = machine.pool.x.copy()
    meter = evaluate(machine, split, 10, batch_size=64)   # 500 = 7 × 64 + a partial batch
    machine.fprop(split.x, split.y)
    answers = np.argmin(machine.energies.x, axis=1)
    assert meter.count == len(split)
    assert meter.loss == pytest.approx(machine.losses.x.mean(), rel=1e-5)
    assert meter.error == pytest.approx(np.mean(answers != split.y))
    np.testing.assert_array_equal(meter.confusion.sum(axis=1), np.bincount(split.y, minlength=10))
    np.testing.assert_array_equal(np.diag(meter.confusion), np.bincount(split.y[answers == split.y], minlength=10))
    np.testing.assert_array_equal(machine.pool.x, params)


