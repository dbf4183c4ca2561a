"""ParamPool: one flat vector of views, sharing, initialisation, dtypes, no allocation per step; State buffers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fbprop as fb


def _contiguous_1d(pool: fb.ParamPool) -> None:
    for a in (pool.x, pool.dx, pool.ddx):
        assert a.ndim == 1 and a.flags.c_contiguous and a.size == pool.size
        assert a.dtype == pool.dtype


def _views_into_pool(pool: fb.ParamPool, handle: fb.Param) -> None:
    for field in ("x", "dx", "ddx"):
        assert np.shares_memory(getattr(handle, field), getattr(pool, field)), field


def test_pool_vectors_are_contiguous_1d_after_each_alloc():
    pool = fb.ParamPool()
    _contiguous_1d(pool)
    sizes = 0
    for shape in [(3, 4), (5,), (2, 1, 1), (6, 2)]:
        pool.alloc(*shape)
        sizes += math.prod(shape)
        _contiguous_1d(pool)
        assert pool.size == len(pool) == sizes


def test_handles_are_views_into_the_pool_in_both_directions():
    pool = fb.ParamPool(np.float64)
    lin = fb.Linear(3, 2, pool)
    tanh = fb.Tanh(2, pool)
    _views_into_pool(pool, lin.w)
    _views_into_pool(pool, tanh.b)
    pool.x[:] = np.arange(pool.size)                            # writing the pool changes the network
    np.testing.assert_array_equal(lin.w.x, np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(tanh.b.x, [6, 7])
    lin.w.x[1, 2] = -1.0                                        # writing a handle changes the pool
    tanh.b.dx[...] = [4.0, 5.0]
    tanh.b.ddx[0] = 9.0
    assert pool.x[5] == -1.0
    np.testing.assert_array_equal(pool.dx[6:], [4.0, 5.0])
    assert pool.ddx[6] == 9.0
    # and the network computes with what the pool holds
    out = fb.State()
    lin.fprop(fb.State(np.array([[1.0, 1.0, 1.0]])), out)
    np.testing.assert_array_equal(out.x, [[0 + 1 + 2, 3 + 4 - 1]])


def test_handles_stay_valid_after_later_allocs_grow_the_pool():
    pool = fb.ParamPool(np.float64)
    first = pool.alloc(2, 3)
    first.x[...] = [[1, 2, 3], [4, 5, 6]]
    first.dx[...] = 7.0
    for _ in range(3):
        pool.alloc(10)
    _views_into_pool(pool, first)
    np.testing.assert_array_equal(first.x, [[1, 2, 3], [4, 5, 6]])   # values moved with the pool
    np.testing.assert_array_equal(pool.dx[:6], 7.0)
    pool.x[0] = 100.0
    assert first.x[0, 0] == 100.0
    assert first.x.shape == (2, 3)


def test_shared_linear_accumulates_the_gradients_of_both_uses():
    rng = np.random.default_rng(0)
    x, r = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

    def gradient(net: fb.Cascade, pool: fb.ParamPool) -> None:
        inp, out = fb.State(x.copy()), fb.State()
        pool.clear_dx()
        net.fprop(inp, out)
        out.dx = r
        net.bprop(inp, out)

    pool = fb.ParamPool(np.float64)
    lin = fb.Linear(4, 4, pool)
    shared = fb.Cascade(lin, fb.Tanh(), lin)
    assert shared.params() == [lin.w]                           # listed once
    gradient(shared, pool)

    other = fb.ParamPool(np.float64)
    first, second = fb.Linear(4, 4, other), fb.Linear(4, 4, other)
    first.w.x[...] = second.w.x[...] = lin.w.x                  # the same weights, owned twice
    gradient(fb.Cascade(first, fb.Tanh(), second), other)

    np.testing.assert_allclose(lin.w.dx, first.w.dx + second.w.dx, rtol=1e-12)
    assert np.abs(first.w.dx).min() > 0 and np.abs(second.w.dx).min() > 0  # both contributions count
    assert not np.allclose(lin.w.dx, first.w.dx) and not np.allclose(lin.w.dx, second.w.dx)


def test_init_is_uniform_within_sqrt_3_over_fan_in():
    pool = fb.ParamPool(np.float64)
    lin = fb.Linear(50, 40, pool)
    a = math.sqrt(3 / 50)
    assert np.abs(lin.w.x).max() <= a
    assert np.abs(lin.w.x).max() > 0.95 * a                     # spans the range, not a narrower one
    assert abs(lin.w.x.mean()) < 0.05 * a


def test_init_std_is_fan_in_to_the_minus_half_for_a_large_layer():
    pool = fb.ParamPool()
    lin = fb.Linear(400, 300, pool)
    assert lin.w.x.std() == pytest.approx(400 ** -0.5, rel=0.02)


def test_init_of_biases_is_zero_and_value_sets_a_constant():
    pool = fb.ParamPool()
    tanh = fb.Tanh(7, pool)
    np.testing.assert_array_equal(tanh.b.x, 0)
    np.testing.assert_array_equal(pool.alloc(2, 2, value=0.25).x, 0.25)


def test_same_seed_same_weights_different_seed_different():
    def weights(seed):
        pool = fb.ParamPool(seed=seed)
        fb.Linear(6, 5, pool)
        fb.Linear(5, 3, pool)
        return pool.x.copy()

    np.testing.assert_array_equal(weights(1), weights(1))
    assert not np.allclose(weights(1), weights(2))


def test_pool_dtype_is_float32_by_default_and_float64_selectable():
    pool = fb.ParamPool()
    assert pool.dtype == np.float32
    w = fb.Linear(3, 2, pool).w
    assert w.x.dtype == w.dx.dtype == w.ddx.dtype == np.float32
    pool64 = fb.ParamPool(np.float64)
    w = fb.Linear(3, 2, pool64).w
    assert pool64.x.dtype == w.x.dtype == w.dx.dtype == w.ddx.dtype == np.float64
    assert pool64.slot().dtype == np.float64 and pool64.slot().shape == (6,)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, bool, np.complex128])
def test_pool_rejects_non_float_dtype(dtype):
    with pytest.raises(TypeError, match=r"ParamPool: expected a floating dtype, got"):
        fb.ParamPool(dtype)


def test_load_copies_a_flat_vector_and_rejects_a_wrong_length():
    pool = fb.ParamPool(np.float64)
    lin = fb.Linear(2, 2, pool)
    pool.load(np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(lin.w.x, [[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"ParamPool: expected a vector of shape \(4,\), got \(5,\)"):
        pool.load(np.zeros(5))


# --- no allocation per step ------------------------------------------------------------------

def _buffers(net: fb.Cascade, pool: fb.ParamPool, *outer: fb.State) -> dict[str, tuple[int, int]]:
    """id() and data address of every array a training step touches."""
    states = {f"outer{i}": s for i, s in enumerate(outer)}
    states |= {f"cascade.states[{i}]": s for i, s in enumerate(net.states)}
    for i, m in enumerate(net.modules):
        states |= {f"modules[{i}].{k}": v for k, v in vars(m).items() if isinstance(v, fb.State)}
    arrays = {f"pool.{f}": getattr(pool, f) for f in ("x", "dx", "ddx")}
    for name, s in states.items():
        arrays |= {f"{name}.{f}": getattr(s, f) for f in ("x", "dx", "ddx")}
    return {name: (id(a), a.ctypes.data) for name, a in arrays.items()}


def test_a_training_step_allocates_no_state_buffers():
    rng = np.random.default_rng(0)
    pool = fb.ParamPool()
    net = fb.Cascade(fb.Linear(5, 4, pool), fb.Tanh(4, pool), fb.Linear(4, 3, pool), fb.Tanh(3, pool))
    inp, out = fb.State(), fb.State()

    def step():
        inp.set(rng.standard_normal((6, 5)).astype(np.float32))
        pool.clear_dx()
        pool.clear_ddx()
        inp.clear_dx()
        inp.clear_ddx()
        net.fprop(inp, out)
        out.dx = rng.standard_normal((6, 3))
        out.ddx = rng.uniform(size=(6, 3))
        net.bprop(inp, out)
        net.bbprop(inp, out)

    step()
    before = _buffers(net, pool, inp, out)
    for name in ("pool.x", "outer1.ddx", "cascade.states[2].dx", "modules[0].w.dx", "modules[3].b.ddx"):
        assert name in before
    step()
    after = _buffers(net, pool, inp, out)
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"reallocated: {changed}"
    assert np.abs(pool.dx).max() > 0 and np.abs(pool.ddx).max() > 0


# --- State -----------------------------------------------------------------------------------

def test_state_resize_to_the_same_shape_keeps_buffers():
    s = fb.State(np.zeros((3, 4)))
    x, dx, ddx = s.x, s.dx, s.ddx
    assert s.resize(3, 4) is s
    assert s.x is x and s.dx is dx and s.ddx is ddx


def test_state_resize_to_another_shape_or_dtype_reallocates():
    s = fb.State(np.zeros((3, 4)))
    s.dx[...] = 1.0
    s.resize(2, 5)
    assert s.x.shape == s.dx.shape == s.ddx.shape == (2, 5)
    np.testing.assert_array_equal(s.dx, 0)                      # the derivatives start afresh
    s.resize(2, 5, dtype=np.float32)
    assert s.x.dtype == s.dx.dtype == s.ddx.dtype == np.float32


def test_state_set_copies_into_the_existing_buffer():
    s = fb.State(np.zeros((2, 2)))
    x = s.x
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    s.set(values)
    assert s.x is x and not np.shares_memory(s.x, values)
    np.testing.assert_array_equal(s.x, values)


def test_state_clear_dx_and_clear_ddx_zero_in_place():
    s = fb.State(np.ones((2, 3)))
    s.dx = np.full((2, 3), 2.0)
    s.ddx = np.full((2, 3), 3.0)
    dx, ddx = s.dx, s.ddx
    s.clear_dx()
    assert s.dx is dx
    np.testing.assert_array_equal(s.dx, 0)
    np.testing.assert_array_equal(s.ddx, 3.0)
    s.clear_ddx()
    assert s.ddx is ddx
    np.testing.assert_array_equal(s.ddx, 0)


def test_state_dx_and_ddx_have_the_shape_and_dtype_of_x():
    s = fb.State(np.zeros((4, 2), dtype=np.float32))
    assert s.dx.shape == s.ddx.shape == (4, 2) and s.dx.dtype == s.ddx.dtype == np.float32
    assert s.shape == (4, 2) and s.batch == 4 and s.dtype == np.float32


def _lenet_like(dtype) -> tuple[fb.Cascade, fb.ParamPool]:
    """Every module that writes a lazily cleared gradient directly (Linear, Squash's bias, Conv2d with
    and without a table, Subsampling), and one that adds through `dx` (RBF's trainable centres)."""
    pool = fb.ParamPool(dtype)
    net = fb.Cascade(fb.Conv2d(1, 3, 3, pool), fb.Tanh((3, 1, 1), pool), fb.Subsampling(3, 2, pool),
                     fb.Conv2d(3, 4, 2, pool, table=[(0, 0), (1, 1), (2, 2), (0, 3)]), fb.Flatten(),
                     fb.Linear(36, 5, pool), fb.Tanh(5, pool), fb.RBF(np.eye(5)[:4], pool))
    return net, pool


def _gradient(net: fb.Module, x: np.ndarray, eager: bool, twice: bool = False) -> np.ndarray:
    out = fb.State()
    inp = fb.State(x, requires_dx=False)
    net.fprop(inp, out)
    pool = net.params()[0].pool
    pool.clear_dx()
    if eager:
        pool.dx.fill(0)                                          # every slice zeroed before the sweep
    for _ in range(1 + twice):
        out.dx = np.linspace(-1, 1, out.x.size).reshape(out.x.shape)
        net.bprop(inp, out)
    return pool.dx.copy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_lazily_cleared_pool_gives_the_eagerly_cleared_gradient_bit_for_bit(dtype):
    net, pool = _lenet_like(dtype)
    x = np.random.default_rng(0).standard_normal((5, 1, 10, 10)).astype(dtype)
    pool.dx[:] = 7.0                                             # a previous sweep's gradient
    lazy = _gradient(net, x, eager=False)
    assert pool._unwritten == 0 and not np.isnan(lazy).any()
    pool.dx[:] = 7.0
    np.testing.assert_array_equal(lazy, _gradient(net, x, eager=True))
    pool.dx[:] = 7.0
    np.testing.assert_array_equal(_gradient(net, x, eager=False, twice=True), 2 * lazy)   # the second sweep adds


def test_a_slice_no_module_writes_reads_as_zero_after_clear_dx():
    pool = fb.ParamPool()
    lin, unused = fb.Linear(3, 2, pool), pool.alloc(4)
    pool.dx[:] = 1.0
    pool.clear_dx()
    np.testing.assert_array_equal(unused.dx, 0)
    pool.dx[:] = 1.0
    pool.clear_dx()
    inp, out = fb.State(np.ones((2, 3), np.float32)), fb.State()
    lin.fprop(inp, out)
    out.dx = np.ones((2, 2), np.float32)
    lin.bprop(inp, out)
    np.testing.assert_array_equal(pool.dx[lin.w.x.size:], 0)                     # the unused handle
    np.testing.assert_array_equal(lin.w.dx, 2.0)                                 # Σ over the batch of 1·1
    assert np.array_equal(pool.dx[:6], lin.w.dx.reshape(-1))


def test_a_copy_or_pickle_of_a_pool_with_a_pending_clear_holds_zeros():
    import copy
    import pickle
    pool = fb.ParamPool()
    w = pool.alloc(3)
    pool.dx[:] = 5.0
    pool.clear_dx()
    for twin in (copy.deepcopy(pool), pickle.loads(pickle.dumps(pool))):
        np.testing.assert_array_equal(twin.dx, 0)
        np.testing.assert_array_equal(twin.handles[0][0].dx, 0)
    np.testing.assert_array_equal(w.dx, 0)
