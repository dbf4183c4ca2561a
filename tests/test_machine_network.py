"""Machines over any network: energies per answer, per sample or per pair; Y as an input state."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb


def _pair_machine(pool):
    g = fb.Cascade(fb.Linear(3, 2, pool), fb.Tanh(2, pool))
    net = fb.Network(inputs="pair", outputs="d", modules=[
        (fb.Split(2, squeeze=True), "pair -> x1, x2"),
        (g,                         "x1 -> g1"),
        (g.share(),                 "x2 -> g2"),
        (fb.Distance(),             "g1, g2 -> d"),
    ])
    return fb.Machine(net, None, fb.ContrastiveLoss(margin=1.0), pool)


def _y_input_machine(pool):
    """E(W, Y, X) = ½‖g1 − g2‖², g = tanh(W[X, Y] + b) cut in two halves: Y enters the network beside X."""
    net = fb.Network(inputs="x, y", outputs="e", modules=[
        (fb.Concat(2),               "x, y -> xy"),
        (fb.Linear(3, 4, pool),      "xy -> h"),
        (fb.Tanh(4, pool),           "h -> g"),
        (fb.Split((2, 2)),           "g -> g1, g2"),
        (fb.SquaredDistance(),       "g1, g2 -> e2"),
        (fb.Scale(0.5),              "e2 -> e"),
    ])
    return fb.Machine(net, None, fb.EnergyLoss(), pool)


def _mean_loss(machine, x, y):
    machine.fprop(x, y)
    return machine.losses.x.mean()


@pytest.mark.parametrize("build, make_y", [
    (_pair_machine, lambda rng, n: rng.integers(0, 2, n)),
    (_y_input_machine, lambda rng, n: rng.standard_normal((n, 1))),
])
def test_machine_gradient_over_a_network_matches_finite_differences(build, make_y):
    pool = fb.ParamPool(np.float64)
    machine = build(pool)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3)) if build is _pair_machine else rng.standard_normal((6, 2))
    y = make_y(rng, 6)
    machine.gradient(x, y)
    analytic = pool.dx.copy()
    numeric = np.empty_like(analytic)
    for k in range(pool.size):
        v = pool.x[k]
        pool.x[k] = v + 1e-6
        up = _mean_loss(machine, x, y)
        pool.x[k] = v - 1e-6
        numeric[k] = (up - _mean_loss(machine, x, y)) / 2e-6
        pool.x[k] = v
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_public_fprop_bprop_bbprop_sweep_the_whole_network():
    pool = fb.ParamPool(np.float64)
    machine = _pair_machine(pool)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 2, 3)), np.array([0, 1, 0, 1, 1])
    machine.fprop(x, y)
    assert machine.energies.x.shape == (5,) and machine.losses.x.shape == (5,)
    machine.losses.dx = np.full(5, 0.2)
    pool.clear_dx()
    machine.bprop()
    dx = pool.dx.copy()
    assert np.abs(dx).max() > 0
    machine.gradient(x, y)
    np.testing.assert_allclose(pool.dx, dx, rtol=1e-14)          # gradient = the same sweep with weight 1/B
    pool.clear_ddx()
    machine.bbprop()
    assert (pool.ddx >= 0).all() and pool.ddx.max() > 0


def test_pair_answers_come_from_the_loss_and_a_y_input_machine_has_none():
    pool = fb.ParamPool(np.float64)
    machine = _pair_machine(pool)
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    x[0, 1] = x[0, 0]                                            # a pair of identical points: D = 0
    answers = machine.predict(x)
    assert answers[0] == 0
    np.testing.assert_array_equal(answers, (machine.energies_of(x) > 0.5).astype(int))
    ymachine = _y_input_machine(fb.ParamPool(np.float64))
    with pytest.raises(ValueError, match=r"fbprop.minimize_energy"):
        ymachine.predict(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"Machine: the answer Y is an input of this machine's network; "
                                         r"fprop needs y"):
        ymachine.fprop(np.zeros((2, 2)))


def test_the_old_constructor_builds_a_network_of_net_and_energy():
    pool = fb.ParamPool(np.float64)
    machine = fb.Machine(fb.nn_2layer(4, 3, 2, pool), fb.Euclidean(), fb.EnergyLoss(), pool)
    picture = machine.network.picture()
    assert "x ─▶ [Cascade] ─▶ out" in picture and "out, y ─▶ [Euclidean()] ─▶ energies" in picture
    x = np.random.default_rng(3).standard_normal((2, 4))
    np.testing.assert_array_equal(machine.predict(x), machine.out.x)   # G(X), the least-energy Y


def test_first_nonfinite_names_the_module_inside_the_network():
    pool = fb.ParamPool(np.float64)
    machine = _pair_machine(pool)
    machine.net.modules[1].modules[0].w.x[0, 0] = np.inf            # the shared Linear of g
    assert machine.first_nonfinite(np.ones((2, 2, 3))) == "Linear(3 -> 2)"
    assert machine.first_nonfinite(np.full((2, 2, 3), np.nan)) == "the input batch"


def test_a_network_with_the_wrong_number_of_inputs_is_refused():
    pool = fb.ParamPool(np.float64)
    net = fb.Network("a, b, c", "s", [(fb.Sum(3), "a, b, c -> s")])
    with pytest.raises(ValueError, match=r"Machine: expected a network reading X \(or X and Y\) and writing the "
                                         r"energies, got .* with 3 inputs and 1 outputs"):
        fb.Machine(net, None, fb.EnergyLoss(), pool)
