"""Machine: inference, the reducer-summed gradient, curvature and full-batch objective."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fbprop as fb
import fbprop.distributed
from fbprop.data import load_dataset


def test_machine_predicts_regression_outputs_without_targets():
    pool = fb.ParamPool(np.float64, seed=0)
    machine = fb.Machine(fb.Linear(3, 2, pool), fb.Euclidean(), fb.EnergyLoss(), pool)
    x = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_allclose(machine.predict(x, batch_size=2), x @ machine.net.w.x.T)


class HalfOfTwo(fb.distributed.SingleProcess):
    """The reducer of process `rank` of two, with the sum over processes left to the test."""

    size = 2

    def __init__(self, rank: int) -> None:
        self.rank, self.is_root = rank, rank == 0


@pytest.fixture(scope="module")
def batch():
    data = load_dataset("digits", limit=64, dtype=np.float64)
    return data.train.x[:37], data.train.y[:37]                  # odd: the two halves differ in size


@pytest.mark.parametrize("method", ["gradient", "full_gradient"])
def test_two_processes_parts_add_up_to_the_single_process_gradient(batch, method):
    spec = {"model": "mlp", "hidden": [8], "input_shape": [1, 8, 8], "n_classes": 10, "dtype": "float64",
            "regularizer": {"kind": "l2", "lam": 1e-2}}
    whole, halves = fb.build_machine(spec), [fb.build_machine(spec) for _ in range(2)]
    for m in (whole, *halves):
        m.n_train = 500
    getattr(whole, method)(*batch)
    for rank, m in enumerate(halves):
        m.reducer = HalfOfTwo(rank)
        getattr(m, method)(*batch)
    # each half adds the regularizer's gradient (λ/P)·W once after its (here missing) sum over processes
    w = whole.pool.x
    lam = 1e-2 / (500 if method == "gradient" else len(batch[0]))
    summed = halves[0].pool.dx + halves[1].pool.dx - lam * w        # the regularizer counted twice, once removed
    np.testing.assert_allclose(summed, whole.pool.dx, rtol=1e-12, atol=1e-15)


def test_curvature_of_two_parts_adds_up_to_the_single_process_diagonal(batch):
    spec = {"model": "mlp", "hidden": [8], "input_shape": [1, 8, 8], "n_classes": 10, "dtype": "float64"}
    whole, halves = fb.build_machine(spec), [fb.build_machine(spec) for _ in range(2)]
    whole.curvature(*batch)
    for rank, m in enumerate(halves):
        m.reducer = HalfOfTwo(rank)
        m.curvature(*batch)
    np.testing.assert_allclose(halves[0].pool.ddx + halves[1].pool.ddx, whole.pool.ddx, rtol=1e-12, atol=1e-15)
    assert (whole.pool.ddx >= 0).all() and whole.pool.ddx.max() > 0


def test_a_non_finite_loss_makes_the_gradient_nan(batch):
    m = fb.build_machine({"model": "mlp", "hidden": [8], "input_shape": [1, 8, 8], "n_classes": 10,
                          "dtype": "float64"})
    x = batch[0].copy()
    x[3] = np.nan
    assert math.isnan(m.gradient(x, batch[1])) and math.isnan(m.pool.dx[0])


def test_float64_input_to_a_float32_machine_is_converted_at_the_boundary_not_promoted(batch):
    m = fb.build_machine({"model": "mlp", "hidden": [8], "input_shape": [1, 8, 8], "n_classes": 10})
    x64 = batch[0].astype(np.float64)
    m.gradient(x64, batch[1])
    grad64 = m.pool.dx.copy()
    assert m.inp.x.dtype == np.float32 and m.out.x.dtype == np.float32 and m.energies.x.dtype == np.float32
    m.gradient(x64.astype(np.float32), batch[1])
    np.testing.assert_array_equal(grad64, m.pool.dx)
