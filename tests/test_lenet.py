"""LeNet-5 and the modern convnet: the paper's parameter count, target codes, sweeps on MNIST-sized batches."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb

# ---- LeNet-5 and the modern net --------------------------------------------------------------

def test_lenet5_codes_are_plus_minus_one_bitmaps_then_random_codes():
    codes = fb.lenet5_codes(10)
    assert codes.shape == (10, 84) and set(np.unique(codes)) == {-1.0, 1.0}
    assert np.array_equal(codes, fb.LENET5_BITMAPS)
    hamming = (codes[:, None] != codes[None]).sum(-1)
    assert hamming[~np.eye(10, dtype=bool)].min() >= 10           # every two digits differ in 10+ pixels
    assert fb.lenet5_codes(3).shape == (3, 84)
    many = fb.lenet5_codes(20)
    assert many.shape == (20, 84) and set(np.unique(many)) == {-1.0, 1.0}
    energy = fb.lenet5_energy(fb.ParamPool(np.float32), 10)
    assert isinstance(energy, fb.RBF) and (energy.k, energy.d) == (10, 84) and not energy.params()


def test_lenet5_has_the_papers_60000_parameters():
    pool = fb.ParamPool(np.float32)
    net = fb.lenet5(pool)
    fb.lenet5_energy(pool)
    held_at_zero = (~fb.LENET5_C3_TABLE).sum() * 25             # C3's unconnected weights, masked in the pool
    assert pool.size - held_at_zero == 60000
    counts = [sum(p.x.size for p in m.params()) for m in net.modules]
    assert [c for c in counts if c] == [150, 6, 12, 1500 + held_at_zero, 16, 32, 48000, 120, 10080, 84]


def test_lenet5_runs_fprop_bprop_bbprop_on_mnist_sized_batches_with_nonnegative_curvature():
    pool = fb.ParamPool(np.float32)
    net, energy, loss = fb.lenet5(pool), fb.lenet5_energy(pool), fb.NLLLoss()
    rng = np.random.default_rng(0)
    x = fb.State(rng.standard_normal((4, 1, 28, 28)).astype(np.float32))
    y = fb.State(np.array([0, 3, 7, 9]))
    f6, e, l = fb.State(), fb.State(), fb.State()
    net.fprop(x, f6)
    energy.fprop(f6, e)
    loss.fprop(e, y, l)
    assert f6.shape == (4, 84) and e.shape == (4, 10) and e.x.dtype == np.float32
    l.dx, l.ddx = np.full(4, 0.25), np.zeros(4)
    loss.bprop(e, y, l)
    energy.bprop(f6, e)
    net.bprop(x, f6)
    loss.bbprop(e, y, l)
    energy.bbprop(f6, e)
    net.bbprop(x, f6)
    assert np.all(np.isfinite(pool.dx)) and np.count_nonzero(pool.dx) > 0.5 * pool.size
    assert np.all(pool.ddx >= 0) and np.all(x.ddx >= 0) and pool.ddx.max() > 0
    assert x.dx.shape == (4, 1, 28, 28)


@pytest.mark.parametrize("size", [28, 8])
def test_lenet_modern_scores_feed_negated_scores_and_nll(size):
    pool = fb.ParamPool(np.float32)
    net = fb.lenet_modern(pool, n_classes=10, size=size)
    x = fb.State(np.random.default_rng(0).standard_normal((3, 1, size, size)).astype(np.float32))
    s, e, l, y = fb.State(), fb.State(), fb.State(), fb.State(np.array([1, 2, 3]))
    net.fprop(x, s)
    fb.NegatedScores().fprop(s, e)
    fb.NLLLoss().fprop(e, y, l)
    assert s.shape == (3, 10) and np.all(np.isfinite(l.x))
    l.dx = np.ones(3)
    fb.NLLLoss().bprop(e, y, l)
    fb.NegatedScores().bprop(s, e)
    net.bprop(x, s)
    assert np.all(np.isfinite(pool.dx)) and np.any(pool.dx != 0)


