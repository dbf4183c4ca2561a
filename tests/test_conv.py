"""Convolutional and shape modules, LeNet-5: values against loops and by hand, gradients, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fbprop as fb
from fbprop.state import is_batch_last

# ---- Conv2d against an obviously correct nested-loop implementation ----------------------------

def conv_loops(x, w, g, h, stride, padding):
    """y, and for output gradient g / curvature h: ∂E/∂x, ∂E/∂w, Gauss-Newton ddx, ddw — by loops."""
    n, c, hi, wi = x.shape
    o, _, k, _ = w.shape
    xp = np.zeros((n, c, hi + 2 * padding, wi + 2 * padding))
    xp[:, :, padding:padding + hi, padding:padding + wi] = x
    ho, wo = (xp.shape[2] - k) // stride + 1, (xp.shape[3] - k) // stride + 1
    y = np.zeros((n, o, ho, wo))
    dxp, dw, ddxp, ddw = np.zeros_like(xp), np.zeros_like(w), np.zeros_like(xp), np.zeros_like(w)
    for s in range(n):
        for q in range(o):
            for i in range(ho):
                for j in range(wo):
                    for ch in range(c):
                        for a in range(k):
                            for b in range(k):
                                u, v = stride * i + a, stride * j + b
                                y[s, q, i, j] += w[q, ch, a, b] * xp[s, ch, u, v]
                                dxp[s, ch, u, v] += g[s, q, i, j] * w[q, ch, a, b]
                                dw[q, ch, a, b] += g[s, q, i, j] * xp[s, ch, u, v]
                                ddxp[s, ch, u, v] += h[s, q, i, j] * w[q, ch, a, b] ** 2
                                ddw[q, ch, a, b] += h[s, q, i, j] * xp[s, ch, u, v] ** 2
    inner = (slice(None), slice(None), slice(padding, padding + hi), slice(padding, padding + wi))
    return y, dxp[inner], dw, ddxp[inner], ddw


TABLE_3x4 = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 1, 1]], bool)


@pytest.mark.parametrize("stride, padding, table", [
    (1, 0, None), (2, 0, None), (1, 1, None), (2, 2, None), (1, 0, TABLE_3x4), (3, 1, [(0, 0), (2, 3), (1, 1), (2, 2)]),
])
def test_conv2d_matches_nested_loops(stride, padding, table):
    rng = np.random.default_rng(3)
    conv = fb.Conv2d(3, 4, 3, fb.ParamPool(np.float64), stride=stride, padding=padding, table=table)
    x = fb.State(rng.standard_normal((2, 3, 7, 6)))
    out = fb.State()
    conv.fprop(x, out)
    g, h = rng.standard_normal(out.shape), rng.uniform(0, 1, out.shape)
    mask = np.ones((4, 3), bool) if conv.table is None else conv.table.T
    w = conv.w.x * mask[:, :, None, None]
    y, dx, dw, ddx, ddw = conv_loops(x.x, w, g, h, stride, padding)
    out.dx, out.ddx = g, h
    conv.bprop(x, out)
    conv.bbprop(x, out)
    m = mask[:, :, None, None]
    np.testing.assert_allclose(out.x, y, atol=1e-12)
    np.testing.assert_allclose(x.dx, dx, atol=1e-12)
    np.testing.assert_allclose(conv.w.dx, dw * m, atol=1e-12)
    np.testing.assert_allclose(x.ddx, ddx, atol=1e-12)
    np.testing.assert_allclose(conv.w.ddx, ddw * m, atol=1e-12)


def test_conv2d_table_weights_stay_exactly_zero_after_bprop_and_sgd_step():
    pool = fb.ParamPool(np.float32)
    conv = fb.Conv2d(6, 16, 5, pool, table=fb.LENET5_C3_TABLE)
    cut = ~fb.LENET5_C3_TABLE.T                                  # (out, in) pairs with no connection
    assert np.all(conv.w.x[cut] == 0) and np.all(conv.w.x[~cut] != 0)
    rng = np.random.default_rng(0)
    x, out = fb.State(rng.standard_normal((3, 6, 9, 9)).astype(np.float32)), fb.State()
    before = conv.w.x.copy()
    opt = fb.SGD(pool, lr=0.1)
    for _ in range(2):
        pool.clear_dx()
        pool.clear_ddx()
        conv.fprop(x, out)
        out.dx = rng.standard_normal(out.shape)
        out.ddx = rng.uniform(0, 1, out.shape)
        conv.bprop(x, out)
        conv.bbprop(x, out)
        assert np.all(conv.w.dx[cut] == 0) and np.all(conv.w.ddx[cut] == 0)
        opt.step()
    assert np.all(conv.w.x[cut] == 0)
    assert np.all(conv.w.x[~cut] != before[~cut])


def test_conv2d_fan_in_counts_connected_maps_only():
    conv = fb.Conv2d(6, 16, 5, fb.ParamPool(np.float64, seed=1), table=fb.LENET5_C3_TABLE)
    fan_in = fb.LENET5_C3_TABLE.sum(0) * 25                      # 75, 100 or 150 inputs per C3 map
    bound = np.abs(conv.w.x).reshape(16, -1).max(1)
    assert np.all(bound <= np.sqrt(3 / fan_in)) and np.all(bound > 0.8 * np.sqrt(3 / fan_in))


def test_lenet5_c3_table_is_the_papers_table_one():
    t = fb.LENET5_C3_TABLE
    assert t.shape == (6, 16) and t.sum() == 60
    assert t.sum(0).tolist() == [3] * 6 + [4] * 9 + [6]
    for j in range(6):                                           # contiguous triples, then quadruples
        assert set(np.flatnonzero(t[:, j])) == {j % 6, (j + 1) % 6, (j + 2) % 6}
        assert set(np.flatnonzero(t[:, 6 + j])) == {j % 6, (j + 1) % 6, (j + 2) % 6, (j + 3) % 6}
    assert [set(np.flatnonzero(t[:, j])) for j in (12, 13, 14)] == [{0, 1, 3, 4}, {1, 2, 4, 5}, {0, 2, 3, 5}]


def test_conv2d_recomputes_its_columns_for_another_input():
    rng = np.random.default_rng(0)
    conv = fb.Conv2d(2, 3, 3, fb.ParamPool(np.float64), padding=1)
    a, b = fb.State(rng.standard_normal((2, 2, 5, 5))), fb.State(rng.standard_normal((2, 2, 5, 5)))
    ya, yb = fb.State(), fb.State()
    conv.fprop(a, ya)
    ya.dx = rng.standard_normal(ya.shape)
    conv.bprop(a, ya)
    expected = conv.w.dx.copy(), a.dx.copy()
    conv.w.dx[...] = 0
    a.dx[...] = 0
    conv.fprop(a, ya)
    conv.fprop(b, yb)                                            # the same module applied to a second input
    conv.bprop(a, ya)
    np.testing.assert_allclose(conv.w.dx, expected[0])
    np.testing.assert_allclose(a.dx, expected[1])


def _batch_last(a):
    """a (n, …) with the batch innermost in memory, as a convolution writes its output."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)


def _input(x, xs):
    """x holding xs: the same State while the shape and layout stay (a new array in it), else a
    new one (whose dx takes xs's layout)."""
    if x.shape == xs.shape and is_batch_last(x.x) == is_batch_last(xs):
        x.x = xs
        return x
    return fb.State(xs)


@pytest.mark.parametrize("padding, table", [(0, None), (1, TABLE_3x4)])
def test_conv2d_keeps_its_decisions_only_while_the_operands_keep_theirs(padding, table):
    """One module over a run of inputs — the same array, another array of the same layout, the
    other layout, another batch size, the first again — each fprop and bprop (from a lazily
    cleared dx, then adding to it) against nested loops: the kept plans follow every change."""
    rng = np.random.default_rng(11)
    pool = fb.ParamPool(np.float64)
    conv = fb.Conv2d(3, 4, 3, pool, padding=padding, table=table)
    w, mask = conv.w.x, (conv._mask if table is not None else 1)    # (unconnected weights get no gradient)
    a = rng.standard_normal((2, 3, 6, 6))
    runs = [a, a, a.copy(), _batch_last(a), _batch_last(rng.standard_normal((2, 3, 6, 6))),
            rng.standard_normal((5, 3, 6, 6)), a]
    x, out = fb.State(), fb.State()
    for k, xs in enumerate(runs):
        x = _input(x, xs)
        conv.fprop(x, out)
        g = rng.standard_normal(out.shape)
        y, dx, dw, _, _ = conv_loops(xs, w, g, g, 1, padding)
        np.testing.assert_allclose(out.x, y, rtol=1e-12, atol=1e-12, err_msg=f"y, run {k}")
        pool.clear_dx()
        x.clear_dx()
        out.clear_dx()
        out.dx[...] = g
        conv.bprop(x, out)
        conv.bprop(x, out)                                       # the second adds to what the first wrote
        np.testing.assert_allclose(x.dx, 2 * dx, rtol=1e-12, atol=1e-12, err_msg=f"dx, run {k}")
        np.testing.assert_allclose(conv.w.dx, 2 * dw * mask, rtol=1e-12, atol=1e-12, err_msg=f"dw, run {k}")
    assert conv._forward is not None and conv._backward is not None
    pool.alloc(3, value=0.0)                                     # the pool grows: new weight arrays
    conv.w.x[...] = rng.standard_normal(w.shape) * mask
    conv.fprop(x, out)
    np.testing.assert_allclose(out.x, conv_loops(a, conv.w.x, g, g, 1, padding)[0], rtol=1e-12, atol=1e-12)


def test_subsampling_keeps_its_decisions_only_while_the_operands_keep_theirs():
    rng = np.random.default_rng(12)
    pool = fb.ParamPool(np.float64)
    sub = fb.Subsampling(2, 2, pool)
    sub.a.x[...] = rng.standard_normal(sub.a.x.shape)
    sub.b.x[...] = rng.standard_normal(sub.b.x.shape)
    a = rng.standard_normal((3, 2, 4, 6))
    runs = [a, a.copy(), _batch_last(a), _batch_last(rng.standard_normal((3, 2, 4, 6))),
            rng.standard_normal((1, 2, 4, 6)), a]
    x, out = fb.State(), fb.State()
    for k, xs in enumerate(runs):
        x = _input(x, xs)
        sub.fprop(x, out)
        m = xs.reshape(len(xs), 2, 2, 2, 3, 2).mean(axis=(3, 5))
        np.testing.assert_allclose(out.x, sub.a.x * m + sub.b.x, rtol=1e-12, err_msg=f"y, run {k}")
        g = rng.standard_normal(out.shape)
        pool.clear_dx()
        x.clear_dx()
        out.clear_dx()
        out.dx[...] = g
        sub.bprop(x, out)
        sub.bprop(x, out)
        spread = np.repeat(np.repeat(g * sub.a.x / 4, 2, axis=2), 2, axis=3)
        np.testing.assert_allclose(x.dx, 2 * spread, rtol=1e-12, err_msg=f"dx, run {k}")
        np.testing.assert_allclose(sub.a.dx, 2 * (g * m).sum(axis=(0, 2, 3))[:, None, None], rtol=1e-12)
        np.testing.assert_allclose(sub.b.dx, 2 * g.sum(axis=(0, 2, 3))[:, None, None], rtol=1e-12)


@pytest.mark.parametrize("stride, padding, table, last", [(1, 0, None, False), (2, 1, None, True),
                                                          (1, 2, [(0, 0), (1, 1), (0, 2)], True)])
def test_conv2d_over_its_column_budget_builds_columns_in_bands_with_the_same_result(stride, padding, table, last):
    """With no bprop to follow, columns over `column_budget` bytes are built a band of output rows
    at a time (inference at large batches); the output equals the one-product fprop's, and a bprop
    after it all the same (which builds the columns again) the one after a one-product fprop, bit
    for bit."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 9, 7)).astype(np.float32)
    if last:
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 0, -1)), -1, 0)      # batch-last, as a conv writes
    runs = []
    for budget in (None, 1, 2000):                               # one product; one row a band; a few rows
        pool = fb.ParamPool(np.float32, seed=0)
        conv = fb.Conv2d(2, 3, 3, pool, stride=stride, padding=padding, table=table)
        if budget is not None:
            conv.column_budget, conv.forward_only = budget, True
        inp, out = fb.State(x.copy()), fb.State()
        conv.fprop(inp, out)
        out.dx = rng.standard_normal(out.shape).astype(np.float32) if not runs else runs[0][1]
        conv.bprop(inp, out)
        runs.append((out.x.copy(), out.dx.copy(), pool.dx.copy(), inp.dx.copy()))
    for banded in runs[1:]:
        for a, b in zip(runs[0], banded, strict=True):
            np.testing.assert_array_equal(a, b)


def test_machine_inference_bands_the_columns_and_training_does_not():
    """Machine.inference switches its convolutions to forward-only (bands over the budget) for its
    span; energies equal those of a plain fprop, and a training step afterwards keeps its columns.
    The bands' products run on one thread, so the plain fprop's do too. Bit for bit where OpenBLAS
    rounds a column of a product the same whatever the product's width (SkylakeX's kernels); its
    Haswell kernels (AMD EPYC) do not — np.matmul alone: C3's 16 × 150 · 150 × 600 product and the
    same in bands of 60 columns differ in the last bit of float32 — so there to float32's rounding."""
    machine = fb.build_machine({"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10, "dtype": "float32"})
    convs = [m for m in fb.network.leaves(machine.network) if isinstance(m, fb.Conv2d)]
    x = np.random.default_rng(0).standard_normal((6, 1, 28, 28)).astype(np.float32)
    with fb.blas.one_thread():
        machine.fprop(x)
    plain = machine.energies.x.copy()
    for conv in convs:
        conv.column_budget = 1                                   # every forward-only fprop in bands
    machine.inference(x)
    if fb.blas._numpy_blas().small_kernel:
        np.testing.assert_array_equal(machine.energies.x, plain)
    else:
        np.testing.assert_allclose(machine.energies.x, plain, rtol=1e-6)  # (measured: 8e-8)
    assert all(c._col_of is None and not c.forward_only for c in convs[:2])    # C1, C3: bands, not kept
    machine.gradient(x, np.arange(6))
    assert all(c._col_of is not None for c in convs[1:2])       # C3's columns kept for its bprop


def test_conv2d_reuses_its_scratch_buffers_across_calls():
    conv = fb.Conv2d(1, 2, 3, fb.ParamPool(np.float32), padding=1)
    x, out = fb.State(np.ones((2, 1, 6, 6), np.float32)), fb.State()
    conv.fprop(x, out)
    out.dx = np.ones(out.shape)
    conv.bprop(x, out)
    scratch = (conv._xp, conv._col, conv._dcol, conv._dxt, out, x)
    buffers = [s.x for s in scratch] + [out.dx, x.dx]
    conv.fprop(x, out)
    conv.bprop(x, out)
    assert all(a is b for a, b in zip(buffers, [s.x for s in scratch] + [out.dx, x.dx], strict=True))


@pytest.mark.skipif(not fb.blas._numpy_blas().routines, reason="numpy's own OpenBLAS is not found in this numpy build")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_with_few_weights_sums_its_weight_gradient_in_blocks_to_the_same_values(dtype, monkeypatch):
    """C1 of LeNet-5 (6 maps, 5x5, 150 weights) over 12 images of 32x32: 9,408 terms per weight,
    summed in two blocks of the small-matrix kernel's size; ∂E/∂W and ∂²E/∂W² as in one product."""
    monkeypatch.setattr(fb.blas._numpy_blas(), "small_kernel", True)   # (a core with the kernel: SkylakeX)
    rng = np.random.default_rng(7)
    conv = fb.Conv2d(1, 6, 5, fb.ParamPool(dtype))
    x, out = fb.State(rng.standard_normal((12, 1, 32, 32)).astype(dtype), requires_dx=False), fb.State()
    conv.fprop(x, out)
    out.dx, out.ddx = (rng.standard_normal(out.shape).astype(dtype) for _ in range(2))
    assert fb.blas._k_block(6 * 25, 12 * 28 * 28) == fb.blas.SMALL_KERNEL // 150 < 12 * 28 * 28
    grads = {}
    for blocked in (True, False):
        if not blocked:
            monkeypatch.setattr(fb.blas, "MIN_K_BLOCK", 10**9)
        conv.w.pool.clear_dx()
        conv.w.pool.clear_ddx()
        conv.bprop(x, out)
        conv.bbprop(x, out)
        grads[blocked] = conv.w.dx.copy(), conv.w.ddx.copy()
    tol = {"rtol": 1e-4, "atol": 1e-3} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-10}
    for a, b in zip(grads[True], grads[False], strict=True):
        np.testing.assert_allclose(a, b, **tol)
    expected = np.einsum("nohw,nchw->oc", out.dx.astype(np.float64),
                         np.lib.stride_tricks.sliding_window_view(x.x, (5, 5), axis=(2, 3))
                         .transpose(0, 1, 4, 5, 2, 3).reshape(12, 25, 28, 28).astype(np.float64))
    np.testing.assert_allclose(grads[True][0].reshape(6, 25), expected, **tol)


# ---- Subsampling, MaxPool, shape modules by hand ----------------------------------------------

@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_windows_are_the_sliding_windows_read_only(stride):
    # the (c, k, k, h', w', n) view im2col copies, built from the C-ordered source's strides:
    # the same as numpy's sliding_window_view
    from numpy.lib.stride_tricks import sliding_window_view
    conv = fb.Conv2d(3, 4, 3, fb.ParamPool(), stride=stride)
    src = np.arange(3 * 9 * 8 * 5, dtype=np.float32).reshape(3, 9, 8, 5)
    want = sliding_window_view(src, (3, 3), axis=(1, 2))[:, ::stride, ::stride].transpose(0, 4, 5, 1, 2, 3)
    got = conv._windows_of(src)
    assert got.shape == want.shape == (3, 3, 3, (9 - 3) // stride + 1, (8 - 3) // stride + 1, 5)
    np.testing.assert_array_equal(got, want)
    assert not got.flags.writeable


def test_subsampling_is_coefficient_times_window_mean_plus_bias():
    pool = fb.ParamPool(np.float64)
    sub = fb.Subsampling(1, 2, pool)
    assert sub.a.x.ravel().tolist() == [1.0] and sub.b.x.ravel().tolist() == [0.0]
    sub.a.x[...], sub.b.x[...] = 2.0, 0.5
    x, out = fb.State(np.arange(16.0).reshape(1, 1, 4, 4)), fb.State()
    sub.fprop(x, out)
    np.testing.assert_allclose(out.x[0, 0], [[2 * 2.5 + 0.5, 2 * 4.5 + 0.5], [2 * 10.5 + 0.5, 2 * 12.5 + 0.5]])
    out.dx = np.ones((1, 1, 2, 2))
    out.ddx = np.ones((1, 1, 2, 2))
    sub.bprop(x, out)
    sub.bbprop(x, out)
    np.testing.assert_allclose(x.dx, np.full((1, 1, 4, 4), 2 / 4))          # a / s²
    np.testing.assert_allclose(x.ddx, np.full((1, 1, 4, 4), (2 / 4) ** 2))  # (a / s²)²
    assert sub.a.dx.item() == 2.5 + 4.5 + 10.5 + 12.5 and sub.b.dx.item() == 4
    assert sub.a.ddx.item() == 2.5**2 + 4.5**2 + 10.5**2 + 12.5**2 and sub.b.ddx.item() == 4


def test_maxpool_routes_gradient_to_each_windows_maximum():
    x = fb.State(np.array([[1, 5, 2, 0], [3, 4, 8, 1], [0, 0, 1, 1], [9, 2, 3, 7.0]])[None, None])
    pool2, out = fb.MaxPool(2), fb.State()
    pool2.fprop(x, out)
    np.testing.assert_array_equal(out.x[0, 0], [[5, 8], [9, 7]])
    out.dx = np.array([[1, 2], [3, 4.0]])[None, None]
    out.ddx = np.array([[10, 20], [30, 40.0]])[None, None]
    pool2.bprop(x, out)
    pool2.bbprop(x, out)
    np.testing.assert_array_equal(x.dx[0, 0], [[0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0], [3, 0, 0, 4]])
    np.testing.assert_array_equal(x.ddx[0, 0], [[0, 10, 0, 0], [0, 0, 20, 0], [0, 0, 0, 0], [30, 0, 0, 40]])


def test_maxpool_routes_ties_to_the_first_maximum_and_nothing_past_the_last_window():
    x = fb.State(np.array([[0, 0, 3, 1, 4], [0, 0, 3, 3, 4], [2, 2, 2, 2, 4.0]])[None, None])    # (1, 1, 3, 5)
    pool2, out = fb.MaxPool(2), fb.State()
    for step in range(2):                                        # the second pass reuses every buffer
        x.x += step                                              # and must see the new maxima
        pool2.fprop(x, out)
        np.testing.assert_array_equal(out.x[0, 0], [[0 + step, 3 + step]])
        out.dx = np.array([[5.0, 7.0]])[None, None]
        x.dx = np.zeros_like(x.x)
        pool2.bprop(x, out)
        np.testing.assert_array_equal(x.dx[0, 0], [[5, 0, 7, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])


def test_maxpool_with_overlapping_windows_adds_where_one_maximum_serves_two():
    x, out = fb.State(np.array([[1.0, 9, 2]])[None, None].repeat(2, 2)), fb.State()   # (1, 1, 2, 3)
    mp = fb.MaxPool(2, stride=1)
    mp.fprop(x, out)
    np.testing.assert_array_equal(out.x[0, 0], [[9, 9]])
    out.dx = np.array([[[[1.0, 2]]]])
    mp.bprop(x, out)
    np.testing.assert_array_equal(x.dx[0, 0], [[0, 3, 0], [0, 0, 0]])   # the first maximum, in both windows


def test_flatten_and_reshape_are_views_and_bprop_adds_reshaped_gradient():
    x, flat, back = fb.State(np.arange(24.0).reshape(2, 3, 2, 2)), fb.State(), fb.State()
    fb.Flatten().fprop(x, flat)
    assert flat.shape == (2, 12) and np.shares_memory(flat.x, x.x)
    fb.Reshape(3, 4).fprop(flat, back)
    assert back.shape == (2, 3, 4) and np.shares_memory(back.x, x.x)
    flat.dx = np.ones((2, 12))
    x.dx = np.ones(x.shape)
    fb.Flatten().bprop(x, flat)
    np.testing.assert_array_equal(x.dx, np.full(x.shape, 2.0))


def test_pad_surrounds_images_with_zeros():
    x, out = fb.State(np.ones((1, 2, 2, 3))), fb.State()
    pad = fb.Pad(1)
    out.resize(1, 2, 4, 5)
    out.x.fill(7)                                                # stale values must not survive on the border
    pad.fprop(x, out)
    assert out.shape == (1, 2, 4, 5) and out.x.sum() == 12 and np.all(out.x[:, :, 1:3, 1:4] == 1)


# ---- errors ----------------------------------------------------------------------------------

def _fprop(module, x):
    module.fprop(fb.State(np.zeros(x)), fb.State())


BAD_INPUTS = [
    (lambda p: fb.Conv2d(1, 6, 5, p), (2, 3, 8, 8),
     "Conv2d(1 -> 6, 5x5): expected input of shape (n, 1, h, w), got (2, 3, 8, 8)"),
    (lambda p: fb.Conv2d(1, 6, 5, p), (2, 64),
     "Conv2d(1 -> 6, 5x5): expected input of shape (n, 1, h, w), got (2, 64)"),
    (lambda p: fb.Conv2d(1, 6, 5, p, padding=1), (2, 1, 2, 9),
     "Conv2d(1 -> 6, 5x5, padding 1): expected images of at least 3x3, got input of shape (2, 1, 2, 9)"),
    (lambda p: fb.Subsampling(6, 2, p), (2, 6, 7, 8),
     "Subsampling(6 maps, 2x2): expected height and width multiples of 2, got input of shape (2, 6, 7, 8)"),
    (lambda p: fb.Subsampling(6, 2, p), (2, 4, 8, 8),
     "Subsampling(6 maps, 2x2): expected input of shape (n, 6, h, w), got (2, 4, 8, 8)"),
    (lambda p: fb.MaxPool(3), (2, 1, 2, 2), "MaxPool(3x3): expected images of at least 3x3"),
    (lambda p: fb.Pad(2), (2, 28, 28), "Pad(2): expected input of shape (n, c, h, w), got (2, 28, 28)"),
    (lambda p: fb.Reshape(3, 4), (2, 10),
     "Reshape(3, 4): expected input of shape (n, …) with 12 values per sample, got (2, 10)"),
    (lambda p: fb.lenet5(p), (4, 1, 32, 32),
     "LeNet-5[28x28]: expected input of shape (n, 1, 28, 28), got (4, 1, 32, 32)"),
    (lambda p: fb.lenet_modern(p), (4, 28, 28), "expected input of shape (n, 1, 28, 28), got (4, 28, 28)"),
]


@pytest.mark.parametrize("module, shape, message", BAD_INPUTS)
def test_bad_input_shape_raises_a_clear_error(module, shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _fprop(module(fb.ParamPool(np.float32)), shape)


@pytest.mark.parametrize("table, message", [
    (np.ones((3, 2), bool), r"expected a connection table of shape \(2, 3\), got \(3, 2\)"),
    ([(0, 0), (1, 5)], r"expected pairs in \[0, 2\) x \[0, 3\)"),
    ([(0, 0), (1, 1)], r"expected every output map connected, got no input map for output maps \[2\]"),
    (np.ones((2, 3)), r"expected a boolean table of shape \(2, 3\) or integer \(in_map, out_map\) pairs"),
])
def test_bad_connection_table_raises_a_clear_error(table, message):
    with pytest.raises(ValueError, match=r"Conv2d\(2 -> 3, 3x3\): " + message):
        fb.Conv2d(2, 3, 3, fb.ParamPool(), table=table)


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="Conv2d: expected stride >= 1, got 0"):
        fb.Conv2d(1, 2, 3, fb.ParamPool(), stride=0)
    with pytest.raises(ValueError, match="lenet5: expected 0 <= pad <= 14"):
        fb.lenet5(fb.ParamPool(), pad=-1)
    with pytest.raises(ValueError, match="lenet_modern: expected an image size that is a multiple of 4, got 30"):
        fb.lenet_modern(fb.ParamPool(), size=30)


@pytest.mark.skipif(not fb.blas._numpy_blas().routines or fb.blas._numpy_blas().set_threads is None,
                    reason="numpy's OpenBLAS cannot set its thread count")
def test_banded_columns_multiply_on_one_thread_and_restore_the_count(monkeypatch):
    """The band loop reuses one buffer: its products run on one thread of numpy's library (a second
    thread reading the buffer slows the next copy into it 9× here), the count restored after, to
    the bits of the unbanded fprop."""
    lib = fb.blas._numpy_blas()
    before = lib.threads()
    seen, real = [], np.matmul
    conv = fb.Conv2d(2, 3, 3, fb.ParamPool(np.float32), padding=1)
    x = fb.State(np.random.default_rng(5).standard_normal((4, 2, 6, 6)).astype(np.float32))
    plain = fb.State()
    conv.fprop(x, plain)
    lib.set_threads(2)
    try:
        monkeypatch.setattr(np, "matmul", lambda *a, **k: (seen.append(lib.threads()), real(*a, **k))[1])
        conv.column_budget, conv.forward_only = 1, True          # one output row a band
        banded = fb.State()
        conv.fprop(x, banded)
        assert seen == [1] * 6 and lib.threads() == 2
        np.testing.assert_array_equal(banded.x, plain.x)
        with pytest.raises(RuntimeError), fb.blas.one_thread():
            assert lib.threads() == 1
            raise RuntimeError("inside")
        assert lib.threads() == 2                                # restored on an error too
    finally:
        lib.set_threads(before)
