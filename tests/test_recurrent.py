"""Recurrent nets unfolded in time: shared weights, back-propagation through time, a sequence task."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb
from fbprop.recurrent import rms_error, rnn_cell, sequence_machine, sine_task, train_sequence


def test_unfolding_adds_no_parameters_and_every_step_shares_the_cells():
    pool = fb.ParamPool(np.float64)
    cell = rnn_cell(2, 4, 1, pool)
    size = pool.size
    net = fb.unfold(cell, 5)
    assert pool.size == size and net.params() == cell.params()
    assert net.input_names == ("x0", "x1", "x2", "x3", "x4", "h0")
    assert net.output_names == ("y0", "y1", "y2", "y3", "y4", "h5")
    assert len({id(m) for m in net.modules}) == 5                # five twins, one set of weights


def test_the_unfolded_net_is_the_cell_applied_step_by_step():
    pool = fb.ParamPool(np.float64)
    cell = rnn_cell(2, 3, 1, pool)
    net = fb.unfold(cell, 4)
    rng = np.random.default_rng(0)
    xs, h0 = [rng.standard_normal((2, 2)) for _ in range(4)], rng.standard_normal((2, 3))
    outs = [fb.State() for _ in range(5)]
    net.fprop(*map(fb.State, xs), fb.State(h0), *outs)
    h = fb.State(h0)
    for t, x in enumerate(xs):
        y, h_next = fb.State(), fb.State()
        cell.fprop(fb.State(x), h, y, h_next)
        np.testing.assert_array_equal(outs[t].x, y.x)
        h = fb.State(h_next.x.copy())
    np.testing.assert_array_equal(outs[4].x, h.x)


def test_unfold_refuses_a_cell_of_the_wrong_shape():
    pool = fb.ParamPool(np.float64)
    with pytest.raises(ValueError, match=r"unfold: expected a cell reading \(x_t, h_t-1\) and writing \(y_t, h_t\), "
                                         r"got Linear\(2 -> 3\) with 1 inputs and 1 outputs"):
        fb.unfold(fb.Linear(2, 3, pool), 3)
    with pytest.raises(ValueError, match=r"unfold: expected steps >= 1, got 0"):
        fb.unfold(rnn_cell(1, 2, 1, pool), 0)


def test_an_unfolded_elman_net_learns_to_predict_a_noisy_sine():
    machine = sequence_machine(steps=10, n_hidden=8, seed=0)
    x, y = sine_task(300, 10, noise=0.1, seed=0)
    x_test, y_test = sine_task(300, 10, noise=0.1, seed=1)
    before = rms_error(machine, x_test, y_test)
    history = train_sequence(machine, x, y, epochs=20, seed=0)
    after = rms_error(machine, x_test, y_test)
    repeat = np.sqrt(np.mean((x_test[:, :, 0] - y_test) ** 2))  # predicting "the next value is this one"
    assert history[-1] < history[0]
    assert after < 0.2 and after < 0.7 * repeat < before
