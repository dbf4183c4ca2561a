"""Inference by energy minimisation over a continuous Y, against a brute-force grid minimum."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb

A = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]])


def _compatibility_machine(a=A):
    """E(W, Y, X) = ½‖A Y − tanh(W X + b)‖²: Y enters through its own Linear map A."""
    pool = fb.ParamPool(np.float64, seed=4)
    ay, tanh = fb.Linear(2, 3, pool), fb.Tanh(3, pool)
    net = fb.Network(inputs="x, y", outputs="energy", modules=[
        (ay,                    "y -> ay"),
        (fb.Linear(2, 3, pool), "x -> hx"),
        (tanh,                  "hx -> gx"),
        (fb.SquaredDistance(),  "ay, gx -> e2"),
        (fb.Scale(0.5),         "e2 -> energy"),
    ])
    ay.w.x[...] = a
    tanh.b.x[...] = [0.3, -0.2, 0.1]
    return fb.Machine(net, None, fb.EnergyLoss(), pool)


def _grid_minimum(machine, x, step=0.02):
    axis = np.arange(-2.0, 2.0 + step / 2, step)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    best_y, best_e = [], []
    for row in x:
        e = machine.energies_of(np.repeat(row[None], len(grid), axis=0), grid, batch_size=len(grid))
        best_y.append(grid[np.argmin(e)])
        best_e.append(e.min())
    return np.array(best_y), np.array(best_e)


def _least_squares(machine, x, a):
    """The exact minimum of this convex energy: the least-squares solution of A Y = tanh(W X + b)."""
    g = np.tanh(x @ machine.network.modules[1].w.x.T + [0.3, -0.2, 0.1])
    return np.linalg.lstsq(a, g.T, rcond=None)[0].T


@pytest.mark.parametrize("method, lr, steps", [("gradient", 0.5, 400), ("newton", 1.0, 60)])
def test_minimizing_over_y_finds_the_grid_minimum(method, lr, steps):
    machine = _compatibility_machine()
    x = np.random.default_rng(0).standard_normal((3, 2))
    grid_y, grid_e = _grid_minimum(machine, x)
    params, dx = machine.pool.x.copy(), machine.pool.dx.copy()
    y, e = fb.minimize_energy(machine, x, np.zeros((3, 2)), steps=steps, lr=lr, method=method)
    assert np.abs(y - grid_y).max() <= 0.02                      # within one grid step
    assert (e <= grid_e + 1e-12).all()                           # no grid point does better
    # the exact minimum of this convex energy: least squares A y = tanh(W x + b)
    np.testing.assert_allclose(y, _least_squares(machine, x, A), atol=1e-6)
    np.testing.assert_array_equal(machine.pool.x, params)        # W fixed
    np.testing.assert_array_equal(machine.pool.dx, dx)


def test_the_second_order_step_needs_fewer_steps_on_a_badly_scaled_energy():
    a = np.array([[2.0, 0.0], [0.0, 0.5], [0.2, -0.1]])          # curvatures 4.04 and 0.26 along the two axes
    machine = _compatibility_machine(a)
    x = np.random.default_rng(1).standard_normal((4, 2))
    exact = _least_squares(machine, x, a)
    # gradient descent must keep η < 2/4.04 for the steep axis and then crawls along the flat one;
    # the per-component rates η/(μ + ∂²E/∂Y²) take both axes at their own pace
    errors = {m: np.abs(fb.minimize_energy(machine, x, np.zeros((4, 2)), steps=15, lr=lr, method=m)[0] - exact).max()
              for m, lr in (("gradient", 0.45), ("newton", 1.0))}
    assert errors["newton"] < 1e-3 < errors["gradient"]


def test_tol_stops_early_and_zero_steps_returns_the_start():
    machine = _compatibility_machine()
    x, y0 = np.ones((2, 2)), np.full((2, 2), 0.25)
    y, e = fb.minimize_energy(machine, x, y0, steps=0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(e, machine.energies_of(x, y0))
    slow, _ = fb.minimize_energy(machine, x, y0, steps=10_000, lr=0.5, tol=1e-3)
    assert np.abs(slow - fb.minimize_energy(machine, x, y0, steps=2000, lr=0.5)[0]).max() < 1e-2


def test_bad_calls_get_one_clear_line():
    machine = _compatibility_machine()
    with pytest.raises(ValueError, match=r"minimize_energy: unknown method 'adam': expected one of gradient, newton"):
        fb.minimize_energy(machine, np.zeros((1, 2)), np.zeros((1, 2)), method="adam")
    with pytest.raises(ValueError, match=r"expected a float start y0 with one row per sample \(2\), got int64"):
        fb.minimize_energy(machine, np.zeros((2, 2)), np.zeros((2, 2), dtype=np.int64))
    pool = fb.ParamPool(np.float64)
    classifier = fb.Machine(fb.Linear(2, 3, pool), fb.NegatedScores(), fb.NLLLoss(), pool)
    with pytest.raises(ValueError, match=r"expected a machine whose network reads Y beside X"):
        fb.minimize_energy(classifier, np.zeros((1, 2)), np.zeros((1, 2)))
