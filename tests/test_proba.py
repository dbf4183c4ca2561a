"""Machine.energies_of and Machine.proba: the energies of every answer and their Gibbs distribution."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb


def _x(n: int = 9, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def _machine(loss: fb.Loss, energy: str = "scores") -> fb.Machine:
    machine = fb.build_machine({"model": "mlp", "hidden": [8], "input_shape": [12], "n_classes": 5,
                                "dtype": "float64", "energy": energy})
    machine.loss = loss
    return machine


def _hand_energies(machine: fb.Machine, x: np.ndarray) -> np.ndarray:
    """The energies through the modules' own fprop, state by state."""
    h, e = fb.State(), fb.State()
    machine.net.fprop(fb.State(x), h)
    machine.energy.fprop(h, e)
    return e.x


@pytest.mark.parametrize("energy", ["scores", "rbf"])
def test_energies_of_are_the_energy_modules_output_in_batches(energy):
    machine = _machine(fb.NLLLoss(), energy)
    x = _x(23)
    e = machine.energies_of(x, batch_size=5)                     # 5 batches, the last of 3
    assert e.shape == (23, 5)
    # by hand in the same batches: OpenBLAS's Haswell kernels (AMD EPYC) round a row's product
    # differently with its place in the batch, so the whole 23 at once differ in the last bit
    np.testing.assert_array_equal(e, np.concatenate([_hand_energies(machine, x[i:i + 5]) for i in range(0, 23, 5)]))
    np.testing.assert_array_equal(np.argmin(e, axis=1), machine.predict(x))


@pytest.mark.parametrize("beta", [0.1, 1.0, 4.0])
def test_proba_is_the_distribution_the_nll_loss_fits(beta):
    machine = _machine(fb.NLLLoss(beta=beta))
    x, y = _x(), np.arange(9) % 5
    p = machine.proba(x)
    assert machine.beta == beta
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-14)
    e = machine.energies_of(x)
    softmax = np.exp(-beta * e) / np.exp(-beta * e).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p, softmax, rtol=1e-12)
    losses, out = fb.State(), fb.State(e)
    machine.loss.fprop(out, fb.State(y), losses)
    np.testing.assert_allclose(-np.log(p[np.arange(9), y]) / beta, losses.x, rtol=1e-12)   # L = −(1/β) log p_Y


def test_proba_of_other_losses_uses_beta_one_or_the_one_given_and_ranks_like_inference():
    machine = _machine(fb.HingeLoss(margin=0.5), "rbf")
    x = _x()
    e = machine.energies_of(x)
    assert machine.beta == 1.0
    np.testing.assert_allclose(machine.proba(x), np.exp(-e) / np.exp(-e).sum(1, keepdims=True), rtol=1e-12)
    sharp = machine.proba(x, beta=50.0)
    np.testing.assert_array_equal(np.argmax(sharp, axis=1), machine.predict(x))
    assert sharp.max(axis=1).min() > machine.proba(x).max(axis=1).max()   # larger β: a sharper distribution


def test_proba_is_finite_for_huge_energies():
    machine = _machine(fb.NLLLoss(beta=1.0))
    machine.pool.x *= 1e4                                        # energies in the tens of thousands
    p = machine.proba(_x())
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_inputs_are_taken_as_lists_ints_and_other_float_dtypes():
    machine = fb.build_machine({"model": "mlp", "hidden": [8], "input_shape": [4], "n_classes": 3})
    rows = [[0, 1, 2, 3], [3, 2, 1, 0]]
    want = machine.energies_of(np.array(rows, np.float32))
    for x in (rows, np.array(rows), np.array(rows, np.float64)):
        got = machine.energies_of(x)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert machine.energies_of(np.zeros((0, 4))).shape == (0, 3)
    assert machine.proba(np.zeros((0, 4))).shape == (0, 3)


def test_regression_machines_and_bad_beta_are_refused_in_one_line():
    pool = fb.ParamPool(np.float64)
    regression = fb.Machine(fb.Linear(3, 2, pool), fb.Euclidean(), fb.EnergyLoss(), pool)
    with pytest.raises(ValueError, match=r"Machine.energies_of: a regression machine .* give y, or use predict"):
        regression.proba(_x(d=3))
    x, y = _x(d=3), np.zeros((9, 2))
    np.testing.assert_allclose(regression.energies_of(x, y, batch_size=4), 0.5 * (regression.predict(x) ** 2).sum(1))
    with pytest.raises(ValueError, match=r"Machine.proba: expected beta > 0, got 0"):
        _machine(fb.NLLLoss()).proba(_x(), beta=0)
