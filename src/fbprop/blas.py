"""The BLAS calls that let a module honour the contract without scratch arrays.

BLAS's gemm computes C ← αAB + βC: with β = 1 it *is* "add into dx", so a product lands in the
caller's dx with no temporary and one pass over it. axpy (y ← αx + y) is the SGD step in one
pass over the pool. scipy.linalg is imported on the first call (0.15 s of start-up otherwise).
"""

from __future__ import annotations

import numpy as np

from fbprop.state import is_batch_last, memory

_BLAS: dict[tuple[str, np.dtype], object] = {}


def _blas(name: str, dtype: np.dtype):
    """scipy's s- or d-routine `name` for this dtype; None for other dtypes."""
    if not _BLAS:
        from scipy.linalg import blas
        for dt, prefix in ((np.dtype(np.float32), "s"), (np.dtype(np.float64), "d")):
            for routine in ("gemm", "axpy"):
                _BLAS[routine, dt] = getattr(blas, prefix + routine)
    return _BLAS.get((name, dtype))


def _fortran(a: np.ndarray) -> tuple[np.ndarray, int] | None:
    """`a` as a Fortran-ordered array and whether BLAS must transpose it (a C-ordered `a` is aᵀ in
    Fortran order); None when `a` is neither (a strided view), which BLAS cannot take in place."""
    if a.flags.f_contiguous:
        return a, 0
    if a.flags.c_contiguous:
        return a.T, 1
    return None


def _gemm(c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float, beta: float) -> None:
    """c ← α a b + β c for 2-D arrays (a (m, k), b (k, n), c (m, n)), in place.

    One gemm when the three share a float dtype and are C- or F-contiguous (views such as w.T
    are): nothing is allocated and c is written once. Otherwise numpy computes the product into
    a temporary.
    """
    gemm = _blas("gemm", c.dtype) if a.dtype == b.dtype == c.dtype else None
    if c.flags.c_contiguous and not c.flags.f_contiguous:
        c, a, b = c.T, b.T, a.T                                  # cᵀ ← α bᵀ aᵀ + β cᵀ, cᵀ in Fortran order
    fa, fb = _fortran(a), _fortran(b)
    if gemm is None or fa is None or fb is None or not c.flags.f_contiguous or a.shape[1] == 0 or c.size == 0:
        if beta == 0.0:
            np.copyto(c, alpha * (a @ b), casting="same_kind")
        else:
            c += alpha * (a @ b)
        return
    gemm(alpha, fa[0], fb[0], beta=beta, c=c, trans_a=fa[1], trans_b=fb[1], overwrite_c=1)


def add_product(c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float = 1.0) -> None:
    """c += α a b, in place: gemm with β = 1, the add-into contract in one call."""
    _gemm(c, a, b, alpha, 1.0)


def product(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """c = a b, in place (gemm with β = 0)."""
    _gemm(c, a, b, 1.0, 0.0)


def wide_product(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """c = a b, in place, through np.matmul: for the convolutions' products (a few output maps
    times an im2col matrix as wide as the batch's pixels), which numpy's OpenBLAS (0.3.31 here)
    runs 25-35% faster than scipy's (0.3.30), measured on LeNet-5's C1 and C3 at batch 32 and
    128. Elsewhere (the fully connected layers, at every batch size) scipy's measured as fast or
    faster in the step, so `product` stays on it. Falls back to `product` where numpy would
    need a temporary."""
    if a.dtype == b.dtype == c.dtype and c.flags.c_contiguous and _blasable(a) and _blasable(b) and a.shape[1] > 1:
        np.matmul(a, b, out=c)
    else:
        _gemm(c, a, b, 1.0, 0.0)


def _blasable(a: np.ndarray) -> bool:
    return a.flags.c_contiguous or a.flags.f_contiguous


def add_scaled(y: np.ndarray, x: np.ndarray, alpha: float) -> None:
    """y += α x for two C-contiguous (or two batch-last) arrays of one shape and float dtype: one
    axpy, one pass, no temporary (α folds a constant factor into the add). With α = 1 numpy's add is the same
    pass with less call overhead."""
    if alpha == 1.0:
        y += x
        return
    axpy = _blas("axpy", y.dtype) if x.dtype == y.dtype and x.shape == y.shape else None
    if not (x.flags.c_contiguous and y.flags.c_contiguous) and is_batch_last(x) and is_batch_last(y):
        x, y = memory(x), memory(y)                              # both batch-last: in memory order
    if axpy is None or not (x.flags.c_contiguous and y.flags.c_contiguous) or y.size == 0:
        y += alpha * x
        return
    axpy(x.reshape(-1), y.reshape(-1), a=alpha)                 # views: y is updated in place
