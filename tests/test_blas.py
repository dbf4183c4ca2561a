"""fbprop.blas: every route a product or an axpy can take (scipy's library, numpy's through
np.matmul, numpy's cblas through ctypes) computes c ← α a b + β c and y ← α x + y, for C- and
Fortran-ordered operands, in float32 and float64."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fbprop import blas

ORDERS = list(itertools.product("CF", repeat=3))


def _operands(m, k, n, orders, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a, b, c = (np.asarray(rng.standard_normal(shape), dtype=dtype, order=o)
               for shape, o in zip(((m, k), (k, n), (m, n)), orders, strict=True))
    return a, b, c


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


needs_numpy_blas = pytest.mark.skipif(not blas._numpy_blas().routines,
                                      reason="numpy's own OpenBLAS is not found in this numpy build")


@pytest.mark.parametrize("threads", [1, 2])                     # numpy's library without a pool, or with one
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("orders", ORDERS)
@pytest.mark.parametrize("m, k, n", [(3, 5, 4), (70, 90, 80)])   # below and above the one-thread limit
def test_products_add_into_and_write_their_output(m, k, n, orders, dtype, threads, monkeypatch):
    monkeypatch.setattr(blas._numpy_blas(), "threads", lambda: threads)
    a, b, c = _operands(m, k, n, orders, dtype)
    expected = c.astype(np.float64) - 0.5 * (a.astype(np.float64) @ b)
    blas.add_product(c, a, b, alpha=-0.5)
    np.testing.assert_allclose(c, expected, **_tol(dtype))
    for wide in (False, True):
        blas.product(c, a, b, wide=wide)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, **_tol(dtype))


@needs_numpy_blas
def test_with_one_thread_a_fully_connected_layers_products_take_the_faster_library(monkeypatch):
    # c = a b with b stored by rows (∂E/∂x = ∂E/∂y W, ∂E/∂W = ∂E/∂yᵀ x) in np.matmul; the forward
    # x Wᵀ (b a transposed view) and every c += a b in scipy's gemm
    monkeypatch.setattr(blas._numpy_blas(), "threads", lambda: 1)
    blas._blas("gemm", np.dtype(np.float32))
    calls = []
    scipy_gemm, matmul = blas._BLAS["gemm", np.dtype(np.float32)], np.matmul
    monkeypatch.setitem(blas._BLAS, ("gemm", np.dtype(np.float32)),
                        lambda *args: (calls.append("scipy"), scipy_gemm(*args))[1])
    monkeypatch.setattr(np, "matmul", lambda *args, **kw: (calls.append("matmul"), matmul(*args, **kw))[1])
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((128, 300), np.float32), rng.standard_normal((100, 300), np.float32)
    dy, y, dx, dw = rng.standard_normal((128, 100), np.float32), *(np.zeros(s, np.float32)
                                                                   for s in ((128, 100), (128, 300), (100, 300)))
    for c, a, b, write, route in ((y, x, w.T, True, "scipy"), (dx, dy, w, True, "matmul"),
                                  (dw, dy.T, x, True, "matmul"), (dw, dy.T, x, False, "scipy")):
        calls.clear()
        expected = (0 if write else c.astype(np.float64)) + a.astype(np.float64) @ b
        (blas.product if write else blas.add_product)(c, a, b)
        assert calls == [route]
        np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-4)


def test_without_numpys_library_scipys_does_every_product(monkeypatch):
    monkeypatch.setattr(blas._numpy_blas(), "routines", {})
    monkeypatch.setattr(np, "matmul", None)                      # any call to it would fail
    a, b, c = _operands(70, 90, 80, "CFC", np.float64)
    for wide in (False, True):
        blas.product(c, a, b, wide=wide)
        np.testing.assert_allclose(c, a @ b, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2])
def test_an_outer_product_is_exact_on_every_route(k):
    a, b, c = _operands(300, k, 200, "CCC", np.float64)
    for wide in (False, True):
        blas.product(c, a, b, wide=wide)
        np.testing.assert_allclose(c, a @ b, rtol=1e-14)


@needs_numpy_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("orders", ORDERS)
def test_numpy_librarys_gemm_through_ctypes(orders, dtype):
    a, b, c = _operands(7, 9, 11, orders, dtype, seed=1)
    expected = 0.25 * c.astype(np.float64) + 3.0 * (a.astype(np.float64) @ b)
    assert blas._numpy_blas().gemm(c, a, b, 3.0, 0.25)
    np.testing.assert_allclose(c, expected, **_tol(dtype))


@needs_numpy_blas
def test_numpy_librarys_gemm_refuses_a_strided_output():
    a, b, c = _operands(4, 3, 6, "CCC", np.float64)
    assert not blas._numpy_blas().gemm(c[:, ::2], a, b[:, ::2], 1.0, 0.0)


@needs_numpy_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_axpy_on_either_library_and_either_layout(dtype, monkeypatch):
    rng = np.random.default_rng(2)
    for size in (50, 3 * blas.SMALL_AXPY):                      # below and above the one-thread limit
        x, y = (rng.standard_normal(size).astype(dtype) for _ in range(2))
        expected = y.astype(np.float64) - 0.3 * x
        assert blas._numpy_blas().axpy(y.copy(), x, -0.3)
        for threads in (1, 2):                                   # numpy's library with a pool or without
            monkeypatch.setattr(blas._numpy_blas(), "threads", lambda t=threads: t)
            z = y.copy()
            blas.add_scaled(z, x, -0.3)
            np.testing.assert_allclose(z, expected, **_tol(dtype))
    last = np.moveaxis(rng.standard_normal((4, 3, 5)).astype(dtype), -1, 0)     # batch-last (5, 4, 3)
    into = np.moveaxis(np.zeros((4, 3, 5), dtype), -1, 0)
    blas.add_scaled(into, last, 2.0)
    np.testing.assert_allclose(into, 2.0 * last, **_tol(dtype))


@needs_numpy_blas
@pytest.mark.skipif(blas._numpy_blas().set_threads is None or blas._scipy_thread_count()[0] is None,
                    reason="numpy's or scipy's OpenBLAS cannot set its thread count")
@pytest.mark.parametrize("awake", [False, True])
def test_a_long_axpy_uses_the_pool_only_after_a_product_did(awake, monkeypatch):
    lib = blas._numpy_blas()
    real_set, before = lib.set_threads, lib.threads()
    scipy_get, scipy_set = blas._scipy_thread_count()
    scipy_before = scipy_get()
    calls, scipy_calls = [], []
    monkeypatch.setattr(lib, "set_threads", lambda n: (calls.append(n), real_set(n)))
    monkeypatch.setattr(blas, "_scipy_thread_count", lambda: (scipy_get, lambda n: (scipy_calls.append(n),
                                                                                  scipy_set(n))))
    real_set(2)
    scipy_set(2)
    try:
        rng = np.random.default_rng(3)
        x, y = (rng.standard_normal(3 * blas.SMALL_AXPY).astype(np.float32) for _ in range(2))
        if awake:                                                # a product large enough for the pool
            a, b, c = _operands(70, 90, 80, "CCC", np.float32)
            blas.product(c, a, b)
        else:
            blas._POOL_AWAKE[0] = False
        expected = y.astype(np.float64) - 0.3 * x
        blas.add_scaled(y, x, -0.3)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
        # after a product on numpy's pool, its threaded axpy; else one thread of scipy's library
        # (its count set for this call only, then back to 2), numpy's count untouched
        assert calls == [] and scipy_calls == ([] if awake else [1, 2])
        assert lib.threads() == 2 and scipy_get() == 2 and not blas._POOL_AWAKE[0]
        if not awake:                                            # where scipy's count cannot be set: numpy's
            monkeypatch.setattr(blas, "_scipy_thread_count", lambda: (None, None))
            blas.add_scaled(y, x, 0.3)
            np.testing.assert_allclose(y, expected + 0.3 * x, rtol=1e-5, atol=1e-6)
            assert calls == [1, 2] and lib.threads() == 2
    finally:
        real_set(before)
        scipy_set(scipy_before)


@needs_numpy_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_librarys_gemm_reads_blocks_of_larger_matrices(dtype):
    rng = np.random.default_rng(4)
    big_a, big_b = rng.standard_normal((7, 40)).astype(dtype), rng.standard_normal((40, 9)).astype(dtype)
    a, b = big_a[:, 5:25], big_b[5:25]                           # rows at a stride, a block of rows
    for c in (np.zeros((7, 9), dtype), np.zeros((7, 9), dtype, order="F")):
        assert blas._numpy_blas().gemm(c, a, b, 1.0, 0.0)
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, **_tol(dtype))
    assert not blas._numpy_blas().gemm(np.zeros((7, 9), dtype), big_a[:, 5:25:2], big_b[5:15], 1.0, 0.0)


@needs_numpy_blas
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_a_long_sum_into_a_small_output_runs_in_blocks(dtype, beta, monkeypatch):
    """A convolution's ∂E/∂W (6 × 25 outputs, each a sum over every pixel of the batch) is summed in
    blocks of k that OpenBLAS's small-matrix kernel takes; the result is the whole sum."""
    lib = blas._numpy_blas()
    calls = []
    real = lib.gemm

    def counted(c, a, b, alpha, beta_):
        calls.append(a.shape[1])
        return real(c, a, b, alpha, beta_)
    monkeypatch.setattr(lib, "gemm", counted)
    rng = np.random.default_rng(5)
    kb = blas.SMALL_KERNEL // 150
    k = 3 * kb + 17                                              # three full blocks and a short one
    g, col = rng.standard_normal((6, k)).astype(dtype), rng.standard_normal((25, k)).astype(dtype)
    c = np.asarray(rng.standard_normal((6, 25)), dtype=dtype, order="F")
    expected = beta * c.astype(np.float64) + 0.5 * (g.astype(np.float64) @ col.T)
    blas._gemm(c, g, col.T, 0.5, beta, wide=True)
    assert calls == [kb, kb, kb, 17]
    tol = {"rtol": 1e-4, "atol": 1e-3} if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-9}   # sums of 20,015
    np.testing.assert_allclose(c, expected, **tol)
    calls.clear()
    blas._gemm(np.zeros((6, 25), dtype, order="F"), g[:, :kb], col[:, :kb].T, 1.0, 0.0, wide=True)
    assert calls == []                                           # a sum that fits one block: one np.matmul
