"""Schedules: the 1998 paper's steps, cosine, and the rate the loop applies each epoch."""

from __future__ import annotations

import pytest

from fbprop.train import LENET_FACTORS, schedule_factor
from training import trainer


def test_lenet_schedule_follows_the_1998_paper_then_stays_at_one_fiftieth():
    factors = [schedule_factor("lenet", e, 20) for e in range(14)]
    assert factors == [1, 1, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.02, 0.02]
    assert len(LENET_FACTORS) == 12


def test_cosine_schedule_starts_at_one_halves_midway_and_ends_at_zero():
    assert schedule_factor("cosine", 0, 10) == 1.0
    assert schedule_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert schedule_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-15)
    factors = [schedule_factor("cosine", e, 10) for e in range(10)]
    assert all(a > b > 0 for a, b in zip(factors, factors[1:]))
    assert schedule_factor("constant", 7, 10) == 1.0


def test_unknown_schedule_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="unknown schedule 'step'.*constant, lenet, cosine"):
        schedule_factor("step", 0, 10)


def test_trainer_applies_the_schedule_to_each_epochs_learning_rate(digits):
    history = trainer(digits, lr=0.1, epochs=3, schedule="lenet").fit()
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.04])


