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


def _routes(monkeypatch, dtype=np.float32):
    """Record which library each product goes to: "scipy" (its gemm), "matmul" (np.matmul) or
    "cblas" (numpy's library's gemm through ctypes)."""
    blas._blas("gemm", np.dtype(dtype))
    calls = []
    scipy_gemm, matmul, lib = blas._BLAS["gemm", np.dtype(dtype)], np.matmul, blas._numpy_blas()
    cblas = lib.gemm
    monkeypatch.setitem(blas._BLAS, ("gemm", np.dtype(dtype)),
                        lambda *args: (calls.append("scipy"), scipy_gemm(*args))[1])
    monkeypatch.setattr(np, "matmul", lambda *args, **kw: (calls.append("matmul"), matmul(*args, **kw))[1])
    monkeypatch.setattr(lib, "gemm", lambda *args: (calls.append("cblas"), cblas(*args))[1])
    return calls


def _fully_connected(batch, n_in, n_out, seed=4):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((batch, n_in), np.float32), rng.standard_normal((n_out, n_in), np.float32)
    dy = rng.standard_normal((batch, n_out), np.float32)
    y, dx, dw = (np.zeros(s, np.float32) for s in ((batch, n_out), (batch, n_in), (n_out, n_in)))
    return x, w, dy, y, dx, dw


def _check_routes(calls, cases):
    for c, a, b, write, route in cases:
        calls.clear()
        expected = (0 if write else c.astype(np.float64)) + a.astype(np.float64) @ b
        (blas.product if write else blas.add_product)(c, a, b)
        assert calls == [route], (c.shape, a.shape, b.shape, write)
        np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-4)


@needs_numpy_blas
def test_with_one_thread_and_the_small_kernel_a_fully_connected_layers_products_take_the_faster_library(monkeypatch):
    # on a core with OpenBLAS's small-matrix kernel (SkylakeX): c = a b with b stored by rows
    # (∂E/∂x = ∂E/∂y W, ∂E/∂W = ∂E/∂yᵀ x) in np.matmul; the forward x Wᵀ (b a transposed view),
    # every c += a b and every small product in scipy's gemm
    monkeypatch.setattr(blas._numpy_blas(), "threads", lambda: 1)
    monkeypatch.setattr(blas._numpy_blas(), "small_kernel", True)
    calls = _routes(monkeypatch)
    x, w, dy, y, dx, dw = _fully_connected(128, 300, 100)
    _check_routes(calls, ((y, x, w.T, True, "scipy"), (dx, dy, w, True, "matmul"),
                          (dw, dy.T, x, True, "matmul"), (dw, dy.T, x, False, "scipy")))
    x, w, dy, y, dx, dw = _fully_connected(1, 784, 300)            # batch 1: all under SMALL_GEMM
    _check_routes(calls, ((y, x, w.T, True, "scipy"), (dx, dy, w, True, "scipy"),
                          (dw, dy.T, x, True, "scipy")))


@needs_numpy_blas
@pytest.mark.parametrize("threads", [1, 2])
def test_without_the_small_kernel_every_product_written_into_zeros_takes_np_matmul(threads, monkeypatch):
    # on other cores (Haswell's kernels, as on AMD EPYC), numpy's library runs every shape of a
    # fully connected layer faster, small ones too (the forward at batch 1 through gemv); a
    # small c += a b stays in scipy's gemm, a large one goes to numpy's cblas gemm, and an outer
    # product (k = 1, which np.matmul computes outside BLAS) to scipy's
    monkeypatch.setattr(blas._numpy_blas(), "threads", lambda: threads)
    monkeypatch.setattr(blas._numpy_blas(), "small_kernel", False)
    calls = _routes(monkeypatch)
    for batch in (1, 32, 128):
        x, w, dy, y, dx, dw = _fully_connected(batch, 784, 300)
        _check_routes(calls, ((y, x, w.T, True, "matmul"), (dx, dy, w, True, "matmul"),
                              (dw, dy.T, x, True, "matmul" if batch > 1 else "scipy"),
                              (dw, dy.T, x, False, "cblas" if batch * 784 * 300 > blas.SMALL_GEMM else "scipy")))
    x, w, dy, y, dx, dw = _fully_connected(4, 10, 8)
    _check_routes(calls, ((y, x, w.T, True, "matmul"), (dx, dy, w, False, "scipy")))
    x64 = x.astype(np.float64)                                   # mixed dtypes: numpy computes it
    calls.clear()
    blas.product(y, x64, w.T)
    assert calls == [] and np.allclose(y, x64 @ w.T, rtol=1e-5)


@needs_numpy_blas
def test_the_kernels_openblas_chose_are_read_from_numpys_library():
    lib = blas._numpy_blas()
    assert isinstance(lib.core, str) and lib.core                # e.g. "SkylakeX", "Haswell", "Zen"
    assert lib.small_kernel == (lib.core in blas.SMALL_KERNEL_CORES)


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
    blocks of k that OpenBLAS's small-matrix kernel takes; the result is the whole sum. Without that
    kernel, in one call."""
    lib = blas._numpy_blas()
    monkeypatch.setattr(lib, "small_kernel", True)
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
    monkeypatch.setattr(lib, "small_kernel", False)              # no small kernel: the whole sum in one call
    c = np.asarray(rng.standard_normal((6, 25)), dtype=dtype, order="F")
    expected = beta * c.astype(np.float64) + 0.5 * (g.astype(np.float64) @ col.T)
    blas._gemm(c, g, col.T, 0.5, beta, wide=True)
    assert calls == [k]
    np.testing.assert_allclose(c, expected, **tol)


@needs_numpy_blas
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("small_kernel", [False, True])
@pytest.mark.parametrize("orders", ["CCC", "CFC", "FCF", "CCF"])
def test_a_kept_large_product_takes_the_route_gemm_takes_at_each_call(orders, small_kernel, beta, monkeypatch):
    """product_call decides a large product's layout once; the thread count and run_apart, which
    can change between calls, still choose its route at each call, as `_gemm` does."""
    lib = blas._numpy_blas()
    monkeypatch.setattr(lib, "small_kernel", small_kernel)
    threads = [1]
    monkeypatch.setattr(lib, "threads", lambda: threads[0])
    monkeypatch.setattr(blas, "_POOL_AWAKE", [False])
    calls = _routes(monkeypatch)
    a, b, c = _operands(70, 90, 80, orders, np.float32)
    assert c.size * a.shape[1] > blas.SMALL_GEMM
    kept = blas.product_call(c, a, b, beta=beta)                 # decided with 1 thread
    for n_threads, apart in ((1, 0), (2, 0), (1, 1), (1, 0)):
        threads[0] = n_threads
        monkeypatch.setattr(blas, "_APART", [apart])
        start = c.astype(np.float64)
        del calls[:]
        blas._POOL_AWAKE[0] = False
        blas._gemm(c, a, b, 1.0, beta)
        route, awake, by_gemm = list(calls), blas._POOL_AWAKE[0], c.copy()
        c[...] = start
        del calls[:]
        blas._POOL_AWAKE[0] = False
        kept(a, b)
        assert (calls, blas._POOL_AWAKE[0]) == (route, awake), (n_threads, apart)
        assert awake == (n_threads > 1)
        np.testing.assert_array_equal(c, by_gemm)
        np.testing.assert_allclose(c, beta * start + a.astype(np.float64) @ b, **_tol(np.float32))
