"""Copies and pickles of pools, modules, nets and machines: every handle is a view into the copy's own pool."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fbprop as fb


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def _machine(model: str = "mlp") -> fb.Machine:
    shape = [64] if model == "mlp" else [1, 8, 8]
    extra = {"hidden": [32]} if model == "mlp" else {}
    return fb.build_machine({"model": model, "input_shape": shape, "n_classes": 10, **extra})


def _images(x: np.ndarray, model: str) -> np.ndarray:
    return x if model == "mlp" else x.reshape(-1, 1, 8, 8)


def _assert_views_of(pool: fb.ParamPool, handles) -> None:
    for h in handles:
        assert h.pool is pool
        for field in ("x", "dx", "ddx"):
            assert np.shares_memory(getattr(h, field), getattr(pool, field)), (h, field)


def _train(machine: fb.Machine, x: np.ndarray, y: np.ndarray, steps: int, seed: int = 0) -> None:
    opt = fb.SGD(machine.pool, 0.1)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        i = rng.integers(0, len(x), 32)
        machine.gradient(x[i], y[i])
        opt.step()


def _snapshot(machine: fb.Machine) -> tuple[np.ndarray, ...]:
    p = machine.pool
    return p.x.copy(), p.dx.copy(), p.ddx.copy()


@pytest.mark.parametrize("model", ["mlp", "lenet-modern"])
def test_a_deep_copy_trains_and_the_original_stays_bit_identical(digits, model):
    x, y = digits
    x = _images(x, model)
    original = _machine(model)
    original.curvature(x[:16], y[:16])                         # after a sweep: caches, scratch, closures
    before = _snapshot(original)
    answers = original.predict(x)
    clone = copy.deepcopy(original)
    assert clone.pool is not original.pool
    _assert_views_of(clone.pool, clone.net.params())
    accuracy = (clone.predict(x) == y).mean()
    _train(clone, x, y, 200)
    assert (clone.predict(x) == y).mean() > accuracy + 0.3     # the copy learned
    for got, want in zip(_snapshot(original), before):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(original.predict(x), answers)


def test_a_copy_and_its_original_take_identical_steps(digits):
    x, y = digits
    x = _images(x, "lenet5")
    a = _machine("lenet5")
    a.gradient(x[:8], y[:8])
    b = copy.deepcopy(a)
    _train(a, x, y, 5, seed=3)
    _train(b, x, y, 5, seed=3)
    np.testing.assert_array_equal(a.pool.x, b.pool.x)
    assert not np.shares_memory(a.pool.x, b.pool.x)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip_after_a_gradient_equals_the_original(digits, protocol):
    x, y = digits
    machine = _machine()
    machine.gradient(x[:32], y[:32])                           # NLLLoss caches a closure in this sweep
    clone = pickle.loads(pickle.dumps(machine, protocol=protocol))
    for got, want in zip(_snapshot(clone), _snapshot(machine)):
        np.testing.assert_array_equal(got, want)
    _assert_views_of(clone.pool, [h for h, _, _ in clone.pool.handles])
    _assert_views_of(clone.pool, clone.net.params())
    assert [s for _, _, s in clone.pool.handles] == [s for _, _, s in machine.pool.handles]
    np.testing.assert_array_equal(clone.predict(x), machine.predict(x))
    assert clone.gradient(x[:32], y[:32]) == machine.gradient(x[:32], y[:32])
    np.testing.assert_array_equal(clone.pool.dx, machine.pool.dx)


def test_an_optimizer_copied_with_its_machine_steps_the_copy(digits):
    x, y = digits
    machine = _machine()
    opt = fb.Adam(machine.pool, lr=0.01)
    machine.gradient(x[:32], y[:32])
    opt.step()
    machine2, opt2 = pickle.loads(pickle.dumps((machine, opt)))
    assert opt2.pool is machine2.pool
    machine.gradient(x[32:64], y[32:64])
    machine2.gradient(x[32:64], y[32:64])
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(machine2.pool.x, machine.pool.x)
    assert opt2.t == 2


def test_a_module_copied_alone_brings_its_pool_and_stays_a_view():
    pool = fb.ParamPool(np.float64)
    first, second = fb.Linear(3, 4, pool), fb.Linear(4, 2, pool)
    clone = pickle.loads(pickle.dumps(second))
    assert clone.w.pool is not pool and clone.w.pool.size == pool.size
    _assert_views_of(clone.w.pool, [clone.w])
    clone.w.pool.x[:] = 0                                      # writing the new pool changes the copy only
    assert not clone.w.x.any() and second.w.x.any() and first.w.x.any()


def test_shared_handles_stay_shared_in_a_copied_cascade():
    pool = fb.ParamPool(np.float64)
    a, b = fb.Linear(3, 3, pool), fb.Linear(3, 3, pool)
    b.w = a.w                                                  # one weight, two modules
    net = fb.Cascade(a, fb.Tanh(3, pool), b)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert clone[0].w is clone[2].w
        assert clone[0].w is not a.w
        _assert_views_of(clone[0].w.pool, clone.params())
        assert len(clone.params()) == 2


def test_a_pool_copied_alone_rebinds_its_own_handles():
    pool = fb.ParamPool(np.float32, seed=1)
    for shape in ((2, 3), (4,), (1, 2, 2)):
        pool.alloc(*shape)
    for clone in (copy.deepcopy(pool), pickle.loads(pickle.dumps(pool))):
        np.testing.assert_array_equal(clone.x, pool.x)
        _assert_views_of(clone, [h for h, _, _ in clone.handles])
        assert clone.dtype == pool.dtype
        np.testing.assert_array_equal(clone.rng.random(3), copy.deepcopy(pool.rng).random(3))


def test_joblib_dump_and_load_keep_a_trainable_machine(digits, tmp_path):
    joblib = pytest.importorskip("joblib")
    x, y = digits
    machine = _machine()
    machine.gradient(x[:32], y[:32])
    joblib.dump(machine, tmp_path / "machine.joblib")
    clone = joblib.load(tmp_path / "machine.joblib")
    _assert_views_of(clone.pool, clone.net.params())
    np.testing.assert_array_equal(clone.pool.x, machine.pool.x)
    accuracy = (clone.predict(x) == y).mean()
    _train(clone, x, y, 100)
    assert (clone.predict(x) == y).mean() > accuracy + 0.3


def test_a_copy_taken_between_fprop_and_bprop_finishes_the_sweep_like_the_original(digits):
    x, y = digits
    x = _images(x[:32], "lenet5")
    machine = _machine("lenet5")
    machine.pool.clear_dx()
    machine.fprop(x, y[:32])                                    # the sweep's caches and states are set
    machine.losses.dx.fill(1.0 / 32)
    for clone in (copy.deepcopy(machine), pickle.loads(pickle.dumps(machine))):
        clone.pool.clear_dx()
        clone.bprop()                                           # on the copy's own caches, without an fprop
        machine.pool.clear_dx()
        machine.bprop()
        np.testing.assert_array_equal(clone.pool.dx, machine.pool.dx)
        assert clone.pool.dx.any()
