"""The BLAS calls that let a module honour the contract without scratch arrays.

BLAS's gemm computes C ← αAB + βC: with β = 1 it *is* "add into dx", so a product lands in the
caller's dx with no temporary and one pass over it. axpy (y ← αx + y) is the SGD step in one
pass over the pool.

Two OpenBLAS libraries live in a numpy + scipy process: numpy's (0.3.31 in numpy 2.4's wheels)
and scipy's (0.3.30 in scipy 1.17's). scipy.linalg.blas exposes gemm with β and axpy, and calls
them with the least overhead (1-3 µs), but numpy's runs LeNet-5's convolution products 25-35%
faster. Each library keeps its own thread pool, and two pools on the same cores ruin each other
(a worker of one spins while the other's waits: LeNet-5's step 10× slower on 2 threads). So the
work is split where OpenBLAS itself would run one thread: a product of m·n·k ≤ 262,144 or an
axpy of ≤ 10,000 numbers goes to scipy's library, which then never starts its pool; with more
than one thread, anything larger goes to numpy's — np.matmul for c = ab, and the same library's
cblas gemm (β = 1) and axpy through ctypes, found once. With one thread there are no pools, and
each product goes where it runs faster, which depends on the kernels OpenBLAS picked for the CPU
(`_NumpyBlas.core`, read from the library). On a core with OpenBLAS's small-matrix kernel
(SkylakeX and its AVX-512 successors, `SMALL_KERNEL_CORES`): the convolutions' large products
(`product(..., wide=True)`) and a fully connected layer's large backward products written into
zeros (b stored by rows) to numpy's library, its forward product x Wᵀ, the products added into a
sum and every small product to scipy's (the two libraries give the same bits on these shapes).
On other cores (Haswell's kernels, which OpenBLAS picks on AMD EPYC): every product written into
zeros to np.matmul, whatever its size, and the large ones added into a sum to numpy's cblas gemm
(in `_gemm`; the MLP's step at batch 1 / 32 / 128 0.63 / 0.72 / 0.88 → 0.69 / 0.82 / 0.96 of the
numpy reference, one thread, one process: bench/routes.py). A long axpy runs on
numpy's pool only when a product ran there since the previous one (a large batch); after small
products (batch 1) it runs on one thread of scipy's library (its count set around the call),
which keeps a 2-thread step as fast as a 1-thread one. A small output summing a long product
(a convolution's ∂E/∂W with few weights: LeNet-5's C1) is summed, on a core with the
small-matrix kernel, in blocks of the inner dimension that kernel takes, each block's product
added to the last's (`_k_block`). Where numpy's library cannot be found (another numpy
build), scipy's does everything. scipy.linalg is imported on the first call (0.15 s of start-up).
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from fbprop.state import is_batch_last, memory

_BLAS: dict[tuple[str, np.dtype], object] = {}
SMALL_GEMM = 65536 * 4          # OpenBLAS's own limit for a one-thread gemm (m·n·k)
SMALL_AXPY = 10000              # and for a one-thread axpy (n)
SMALL_KERNEL = 1_000_000        # m·n·k up to which OpenBLAS 0.3 runs its small-matrix gemm kernel
MIN_K_BLOCK = 4096              # blocks of a long sum shorter than this are not used (see _k_block)
SMALL_KERNEL_CORES = ("SkylakeX", "Cooperlake", "SapphireRapids")   # OpenBLAS's cores with that kernel (AVX-512)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


@lru_cache(maxsize=8)
def one(dtype: np.dtype) -> np.ndarray:
    """1 as a read-only 0-d array of `dtype`: a ufunc takes it in 0.3 µs where it converts the
    Python 1 in 0.65 (numbers that matter at batch 1), with the same result."""
    a = np.ones((), dtype)
    a.flags.writeable = False
    return a


def _blas(name: str, dtype: np.dtype):
    """scipy's s- or d-routine `name` for this dtype; None for other dtypes."""
    if not _BLAS:
        from scipy.linalg import blas
        for dt, prefix in ((np.dtype(np.float32), "s"), (np.dtype(np.float64), "d")):
            for routine in ("gemm", "axpy"):
                _BLAS[routine, dt] = getattr(blas, prefix + routine)
    return _BLAS.get((name, dtype))


class _NumpyBlas:
    """numpy's own OpenBLAS (the library np.matmul calls), its cblas gemm and axpy through ctypes."""

    def __init__(self) -> None:
        self.routines: dict[tuple[str, np.dtype], object] = {}
        self.threads = lambda: 1                                 # its thread count, asked at each use
        self.set_threads = None                                  # and the call that sets it
        self.core: str | None = None                             # the kernels OpenBLAS chose for this CPU
        self.small_kernel = False                                # and whether they include the small-matrix gemm
        lib = _bundled_openblas(np.__file__, "numpy.libs")
        if lib is None:
            return
        names = (("scipy_cblas_{}64_", ctypes.c_int64), ("cblas_{}64_", ctypes.c_int64), ("cblas_{}", ctypes.c_int))
        symbol, int_t = next(((s, t) for s, t in names if hasattr(lib, s.format("sgemm"))), (None, None))
        if symbol is None:
            return
        get, self.set_threads = _thread_count(lib, symbol.replace("cblas_{}", "openblas_{}_num_threads"))
        corename = getattr(lib, symbol.replace("cblas_{}", "openblas_get_corename"), None)
        if corename is not None:
            corename.argtypes, corename.restype = [], ctypes.c_char_p
            self.core = (corename() or b"").decode(errors="replace") or None
            self.small_kernel = self.core in SMALL_KERNEL_CORES
        self.threads = get or (lambda: 1)
        for dt, real, p in ((np.dtype(np.float32), ctypes.c_float, "s"), (np.dtype(np.float64), ctypes.c_double, "d")):
            gemm, axpy = getattr(lib, symbol.format(p + "gemm")), getattr(lib, symbol.format(p + "axpy"))
            ptr = ctypes.c_void_p
            gemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t, real, ptr, int_t,
                             ptr, int_t, real, ptr, int_t]
            axpy.argtypes = [int_t, real, ptr, int_t, ptr, int_t]
            gemm.restype = axpy.restype = None
            self.routines["gemm", dt], self.routines["axpy", dt] = gemm, axpy

    def gemm(self, c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float, beta: float) -> bool:
        """c ← α a b + β c in row-major cblas terms; False when the arrays do not fit it. a and b
        may be blocks of larger matrices (rows or columns at a fixed stride), c not."""
        gemm = self.routines.get(("gemm", c.dtype))
        if gemm is None or not c.flags.c_contiguous:
            if gemm is None or not c.flags.f_contiguous:
                return False
            c, a, b = c.T, b.T, a.T                              # cᵀ = bᵀ aᵀ, cᵀ C-ordered
        la, lb = _leading(a), _leading(b)
        if la is None or lb is None:
            return False
        (m, k), n = a.shape, b.shape[1]
        gemm(_ROW_MAJOR, la[0], lb[0], m, n, k, alpha, a.ctypes.data, la[1], b.ctypes.data, lb[1],
             beta, c.ctypes.data, max(n, 1))
        return True

    def axpy(self, y: np.ndarray, x: np.ndarray, alpha: float, one_thread: bool = False) -> bool:
        """y ← α x + y; with `one_thread`, on one thread of the library for this call (its count
        set and restored by `_ONE`, with every other caller that wants one thread); False when the
        library has no axpy for y's dtype or cannot set its thread count."""
        axpy = self.routines.get(("axpy", y.dtype))
        if axpy is None or (one_thread and self.set_threads is None):
            return False
        if one_thread:
            with _ONE:
                axpy(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
        else:
            axpy(y.size, alpha, x.ctypes.data, 1, y.ctypes.data, 1)
        return True


def _bundled_openblas(package_file: str, libs: str) -> ctypes.CDLL | None:
    """The OpenBLAS library a wheel bundles beside the package (numpy.libs, scipy.libs, or the
    package's .dylibs on macOS), or None."""
    here = os.path.dirname(package_file)
    found = sorted(glob.glob(os.path.join(here, os.pardir, libs, "*openblas*"))
                   + glob.glob(os.path.join(here, ".dylibs", "*openblas*")))
    try:
        return ctypes.CDLL(found[0]) if found else None
    except OSError:
        return None


def _thread_count(lib: ctypes.CDLL, symbol: str) -> tuple[object, object]:
    """(get, set) of a library's thread count, `symbol` with {} for get/set; None where missing."""
    get, set_ = (getattr(lib, symbol.format(verb), None) for verb in ("get", "set"))
    if get is None or set_ is None:
        return None, None
    set_.argtypes, set_.restype = [ctypes.c_int], None
    return get, set_


@lru_cache(maxsize=1)
def _scipy_thread_count() -> tuple[object, object]:
    """(get, set) of scipy's OpenBLAS's thread count; (None, None) where it cannot be found."""
    import scipy
    lib = _bundled_openblas(scipy.__file__, "scipy.libs")
    if lib is None:
        return None, None
    return next((calls for symbol in ("scipy_openblas_{}_num_threads", "openblas_{}_num_threads",
                                      "scipy_openblas_{}_num_threads64_", "openblas_{}_num_threads64_")
                 if (calls := _thread_count(lib, symbol))[0] is not None), (None, None))


class _Threads:
    """A library's thread count set to `threads` for the span of a with-block, and back after
    (a class, not a generator: the batch-1 update enters one every step)."""

    __slots__ = ("get", "set", "threads", "before")

    def __init__(self, get, set_, threads: int) -> None:
        self.get, self.set, self.threads = get, set_, threads

    def __enter__(self) -> None:
        self.before = self.get()
        self.set(self.threads)

    def __exit__(self, *exc) -> None:
        self.set(self.before)


class _CountedOneThread:
    """numpy's library on one thread while any caller, on any Python thread, is inside: the first
    in saves the count and sets 1, the last out restores it (two threads each saving and restoring
    on their own could leave the library on one thread for good). Also counts the callers that
    split a batch between threads (`apart`, see run_apart)."""

    def __init__(self) -> None:
        import threading
        self.lock = threading.Lock()
        self.depth, self.before = 0, 1

    def enter(self, apart: bool = False) -> None:
        nb = _numpy_blas()
        with self.lock:
            if self.depth == 0:
                self.before = nb.threads()
                nb.set_threads(1)
            self.depth += 1
            _APART[0] += apart

    def exit(self, apart: bool = False) -> None:
        with self.lock:
            _APART[0] -= apart
            self.depth -= 1
            if self.depth == 0:
                _numpy_blas().set_threads(self.before)

    def __enter__(self) -> None:
        self.enter()

    def __exit__(self, *exc) -> None:
        self.exit()


_ONE = _CountedOneThread()


def _reset_after_fork() -> None:
    """In a forked child: a fresh lock (another thread may have held the parent's), and numpy's
    library's count back to what it was before any caller in the parent set one thread."""
    import threading
    depth, _ONE.lock, _ONE.depth, _APART[0] = _ONE.depth, threading.Lock(), 0, 0
    if depth and _numpy_blas().set_threads is not None:
        _numpy_blas().set_threads(_ONE.before)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def apart_enter() -> None:
    """Run as one part of a batch split between threads or processes (see run_apart): numpy's
    library on one thread, every large product in it, until `apart_exit`."""
    if _numpy_blas().set_threads is not None:
        _ONE.enter(apart=True)
    else:
        _APART[0] += 1


def apart_exit() -> None:
    if _numpy_blas().set_threads is not None:
        _ONE.exit(apart=True)
    else:
        _APART[0] -= 1


@contextmanager
def one_thread() -> Iterator[None]:
    """numpy's library on one thread for the span of the block (its count restored after).

    For a loop that alternates copies with products on a buffer it reuses (Conv2d's banded
    im2col): with a second thread, the product's worker reads half of the buffer, and the next
    copy into it then runs 9× slower on this machine (a 2.9 MB band: 640 against 71 µs; the
    product gains 264 against 346 µs), so the loop is faster on one thread (LeNet-5's C1 at batch
    1,024: 26 → 12 ms in the slow state, 13.1 → 11.6 in the fast). The same bits: the products'
    rows are too few for OpenBLAS to split the sums."""
    if _numpy_blas().set_threads is None:
        yield
        return
    with _ONE:
        yield


def _on_one_thread(axpy, x: np.ndarray, y: np.ndarray, alpha: float) -> bool:
    """scipy's axpy on one thread of its library; False where that count cannot be set."""
    get, set_ = _scipy_thread_count()
    if get is None:
        return False
    with _Threads(get, set_, 1):
        axpy(x.reshape(-1), y.reshape(-1), y.size, alpha)
    return True


def _leading(x: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a 2-D matrix for row-major cblas: stored by rows at
    some stride (no transpose), or by columns (transposed); None where BLAS cannot read it."""
    rows, cols = x.shape
    if x.flags.c_contiguous:
        return _NO_TRANS, max(cols, 1)
    if x.flags.f_contiguous:
        return _TRANS, max(rows, 1)
    it, (s0, s1) = x.itemsize, x.strides
    if s1 == it and s0 > 0 and s0 % it == 0 and s0 >= cols * it:
        return _NO_TRANS, s0 // it
    if s0 == it and s1 > 0 and s1 % it == 0 and s1 >= rows * it:
        return _TRANS, s1 // it
    return None


_NUMPY: list[_NumpyBlas] = []
_POOL_AWAKE = [False]           # a product ran on numpy's thread pool since the last long axpy
_APART = [0]                    # callers inside run_apart (Python threads share a batch): large products to numpy's


def _numpy_blas() -> _NumpyBlas:
    if not _NUMPY:
        _NUMPY.append(_NumpyBlas())
    return _NUMPY[0]


def _fits_numpy(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether numpy's library can take c = a b as it lies: one float dtype, C- or F-contiguous
    operands, k ≥ 2 (for k = 1 numpy's matmul loops outside BLAS), and the library found (where
    it is not, scipy's does every product). (Inline tests: this runs for every product, 8 in
    an MLP step; as helper calls it cost 1.1 µs a product on AMD EPYC, 0.4 µs inline.)"""
    dtype = c.dtype
    if a.shape[1] < 2 or dtype.kind != "f" or not (a.dtype is dtype or a.dtype == dtype) \
            or not (b.dtype is dtype or b.dtype == dtype):
        return False
    af, bf, cf = a.flags, b.flags, c.flags
    return (af.c_contiguous or af.f_contiguous) and (bf.c_contiguous or bf.f_contiguous) \
        and (cf.c_contiguous or cf.f_contiguous) and bool((_NUMPY[0] if _NUMPY else _numpy_blas()).routines)


def _large(c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float, beta: float, wide: bool) -> bool:
    """A product above SMALL_GEMM (the caller's test) in numpy's library: a convolution's (`wide`),
    any when numpy's library has a pool or the CPU lacks OpenBLAS's small-matrix kernel, and on a
    core with it and one thread c = a b with b not a transposed view (a fully connected layer's
    ∂E/∂x = ∂E/∂y W and ∂E/∂W = ∂E/∂yᵀ x, where np.matmul is 5-10% faster than scipy's gemm at
    batch 128 on SkylakeX, with the same bits; its forward x Wᵀ is 7% faster in scipy's there, 9%
    slower on AMD EPYC's Haswell kernels); False where it does not apply."""
    if not _fits_numpy(c, a, b):
        return False
    nb = _numpy_blas()
    if nb.threads() > 1:
        _POOL_AWAKE[0] = True
    elif nb.small_kernel and not (wide or _APART[0] or (alpha == 1.0 and beta == 0.0 and b.flags.c_contiguous)):
        return False                                             # one thread: no pools to keep apart
    kb = _k_block(c.size, a.shape[1]) if wide else 0
    if kb:
        return all(nb.gemm(c, a[:, s:s + kb], b[s:s + kb], alpha, beta if s == 0 else 1.0)
                   for s in range(0, a.shape[1], kb))
    if alpha == 1.0 and beta == 0.0:
        np.matmul(a, b, out=c)
        return True
    return nb.gemm(c, a, b, alpha, beta)


def _k_block(size: int, k: int) -> int:
    """For a product of `size` outputs, each a sum of k terms: the length of the blocks of k to sum
    it in (each block's product added to the last's), or 0 for one call. OpenBLAS runs a product
    of m·n·k ≤ SMALL_KERNEL with a kernel that reads the operands as they lie; above, it packs them
    first, which a small output with a long sum (a convolution's ∂E/∂W: 6 × 25 weights, a sum over
    25,088 pixels at batch 32) cannot repay: 274 µs in one call, 124 µs in blocks of 6,656.
    Short blocks lose (16 × 150 weights in blocks of 416: 266 → 396 µs); blocks of 1,736 and
    3,472 (lenet-wide's and lenet-modern's first convolutions) still gain 2-3×, but MIN_K_BLOCK
    keeps them out for now: summing in blocks rounds differently, and their figures would need
    rerunning. Without the kernel (Haswell's, on AMD EPYC) every block is packed, and blocks lose:
    C1's ∂E/∂W at batch 32 508 against 357 µs in one call, C3's 544 against 299."""
    if not _numpy_blas().small_kernel:
        return 0                                                 # (no such kernel: blocks only add packing)
    kb = SMALL_KERNEL // max(size, 1)
    return kb if kb >= MIN_K_BLOCK and k > kb else 0


def _gemm(c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float, beta: float, wide: bool = False) -> None:
    """c ← α a b + β c for 2-D arrays (a (m, k), b (k, n), c (m, n)), in place.

    One gemm when the three share a float dtype and are C- or F-contiguous (views such as w.T
    are): nothing is allocated and c is written once. Otherwise numpy computes the product into
    a temporary.
    """
    small = c.size * a.shape[1] <= SMALL_GEMM
    if small or not _large(c, a, b, alpha, beta, wide):
        _route(c, a, b, alpha, beta, small)(a, b)


def _route(c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float, beta: float,
           small: bool) -> Callable[[np.ndarray, np.ndarray], object]:
    """The call f(a, b) that computes c ← α a b + β c where numpy's library does not take the
    product whole (`_large`), for operands of a's and b's shapes, dtypes and layouts; `small`:
    m·n·k ≤ SMALL_GEMM."""
    if small and beta == 0.0 and alpha == 1.0 and not (_NUMPY[0] if _NUMPY else _numpy_blas()).small_kernel \
            and _fits_numpy(c, a, b):
        # a small c = a b on a CPU without OpenBLAS's small-matrix kernel: numpy's library runs
        # these shapes faster than scipy's (AMD EPYC, Haswell kernels, one thread: the MLP's
        # 784 → 300 product at batch 1 21 against 58 µs — numpy calls gemv for a single row —, its
        # last layer's ∂E/∂W at batch 128 8 against 18 µs). OpenBLAS runs such a gemm on one thread
        # (its own limit, SMALL_GEMM); a single row's gemv may wake numpy's pool, which the next
        # long axpy does not take as a reason to use it.
        return lambda a, b: np.matmul(a, b, out=c)
    dtype = c.dtype
    gemm = (_BLAS.get(("gemm", dtype)) if _BLAS else _blas("gemm", dtype)) \
        if (a.dtype is dtype or a.dtype == dtype) and (b.dtype is dtype or b.dtype == dtype) else None
    cf = c.flags
    swap = cf.c_contiguous and not cf.f_contiguous                # cᵀ ← α bᵀ aᵀ + β cᵀ, cᵀ in Fortran order
    cc, aa, bb = (c.T, b.T, a.T) if swap else (c, a, b)
    # each operand in Fortran order, transposed (a C-ordered one is its transpose in Fortran
    # order) or not; a strided view is neither: numpy then computes the product
    af, bf = aa.flags, bb.flags
    ta = 0 if af.f_contiguous else (1 if af.c_contiguous else -1)
    tb = 0 if bf.f_contiguous else (1 if bf.c_contiguous else -1)
    if gemm is None or ta < 0 or tb < 0 or not cc.flags.f_contiguous or a.shape[1] == 0 or c.size == 0:
        if beta == 0.0:
            return lambda a, b: np.copyto(c, alpha * (a @ b), casting="same_kind")
        return lambda a, b: np.add(c, alpha * (a @ b), out=c)
    # (beta, c, trans_a, trans_b, overwrite_c): positional, as f2py parses keywords at ~1 µs a call
    if swap:
        return lambda a, b: gemm(alpha, b if ta else b.T, a if tb else a.T, beta, cc, ta, tb, 1)
    return lambda a, b: gemm(alpha, a.T if ta else a, b.T if tb else b, beta, cc, ta, tb, 1)


def product_call(c: np.ndarray, a: np.ndarray, b: np.ndarray, beta: float = 0.0,
                 wide: bool = False) -> Callable[[np.ndarray, np.ndarray], object]:
    """The call f(a, b) that computes c ← a b + β c for operands of a's and b's shapes, dtypes and
    layouts, decided now, for a module to keep while its operands keep them (`Plan`): the route
    itself for a product of OpenBLAS's one-thread size (no thread count changes it); for a larger
    one, `_gemm`'s choice, of which only the part that can change between calls (the thread
    count, `run_apart`) is made at each call (the 784-300-100-10 MLP's step at batch 32:
    7,844,846 → 7,798,179 instructions, `bench/step_instructions.py`). `wide` as in `product`."""
    if c.size * a.shape[1] <= SMALL_GEMM:
        return _route(c, a, b, 1.0, beta, True)
    outside = _route(c, a, b, 1.0, beta, False)                 # where numpy's library does not take it whole
    if not _fits_numpy(c, a, b):
        return outside
    # `_gemm`'s choice between the two, made at each call as there (numpy's library's thread
    # count and `run_apart` can change between calls), on what the operands' layouts fixed now
    nb, written = _numpy_blas(), beta == 0.0
    one_thread_outside = nb.small_kernel and not (wide or (written and b.flags.c_contiguous))
    kb = _k_block(c.size, a.shape[1]) if wide else 0

    def call(a: np.ndarray, b: np.ndarray) -> None:
        if nb.threads() > 1:
            _POOL_AWAKE[0] = True
        elif one_thread_outside and not _APART[0]:
            outside(a, b)
            return
        if kb:
            if not all(nb.gemm(c, a[:, s:s + kb], b[s:s + kb], 1.0, beta if s == 0 else 1.0)
                       for s in range(0, a.shape[1], kb)):
                outside(a, b)
        elif written:
            np.matmul(a, b, out=c)
        elif not nb.gemm(c, a, b, 1.0, beta):
            outside(a, b)
    return call


def add_product(c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float = 1.0) -> None:
    """c += α a b, in place: gemm with β = 1, the add-into contract in one call."""
    _gemm(c, a, b, alpha, 1.0)


def product(c: np.ndarray, a: np.ndarray, b: np.ndarray, wide: bool = False) -> None:
    """c = a b, in place (gemm with β = 0). `wide`: a convolution's product (a few maps times an
    im2col matrix as wide as the batch's pixels), which numpy's library runs faster."""
    _gemm(c, a, b, 1.0, 0.0, wide)


def add_scaled(y: np.ndarray, x: np.ndarray, alpha: float) -> None:
    """y += α x for two C-contiguous (or two batch-last) arrays of one shape and float dtype: one
    axpy, one pass, no temporary (α folds a constant factor into the add). With α = 1 numpy's add
    is the same pass with less call overhead."""
    if alpha == 1.0:
        y += x
        return
    scaled_add_call(y, x)(alpha)


def scaled_add_call(y: np.ndarray, x: np.ndarray) -> Callable[[float], object]:
    """The call f(α) that does `add_scaled(y, x, α)` for these two arrays, decided now (an
    optimizer keeps it while its weights and gradient are the same arrays: 7 of an on-line MLP
    step's 15 thousand instructions for the update are these tests)."""
    axpy = _blas("axpy", y.dtype) if x.dtype == y.dtype and x.shape == y.shape else None
    if not (x.flags.c_contiguous and y.flags.c_contiguous) and is_batch_last(x) and is_batch_last(y):
        x, y = memory(x), memory(y)                              # both batch-last: in memory order
    if axpy is None or not (x.flags.c_contiguous and y.flags.c_contiguous) or y.size == 0:
        return lambda alpha: np.add(y, x, out=y) if alpha == 1.0 else np.add(y, alpha * x, out=y)
    xs, ys, n = x.reshape(-1), y.reshape(-1), y.size             # (n,): views, y is updated in place
    if n <= SMALL_AXPY:
        return lambda alpha: np.add(y, x, out=y) if alpha == 1.0 else axpy(xs, ys, n, alpha)

    def large(alpha: float) -> None:
        if alpha == 1.0:
            np.add(y, x, out=y)
            return
        if _numpy_blas().threads() > 1:
            # threaded only after products that ran on the pool; after small ones (batch 1) the
            # threaded axpy made the whole step slower, in either library (MLP batch 1, 2 threads:
            # 200-660 µs a step against 152-157 µs with this axpy on one thread, the reference 122).
            # One thread of scipy's library, whose axpy is the faster (266,610 floats: 27 against
            # 31-33 µs in numpy's, whose count is set instead where scipy's cannot be)
            awake, _POOL_AWAKE[0] = _POOL_AWAKE[0], False
            if _numpy_blas().axpy(y, x, alpha) if awake else \
                    (_on_one_thread(axpy, x, y, alpha) or _numpy_blas().axpy(y, x, alpha, one_thread=True)):
                return
        axpy(xs, ys, n, alpha)
    return large


_WORKERS: list = []             # [pid, the thread pool of run_apart], started on first use in a process


def one_thread_products() -> bool:
    """Whether a product made now runs on one thread: numpy's library on one thread, or this
    call inside a part of `run_apart` (scipy's library, the small products' route, never
    starts its pool)."""
    return bool(_APART[0]) or (_NUMPY[0] if _NUMPY else _numpy_blas()).threads() <= 1


def apart_threads() -> int:
    """How many parts `run_apart` would run at once: numpy's library's thread count (1 where it
    cannot be set, so nothing is split)."""
    nb = _numpy_blas()
    if nb.set_threads is None:
        return 1
    return _ONE.before if _ONE.depth else nb.threads()          # (not the 1 another thread set for its span)


def run_apart(tasks: list) -> None:
    """Call each of `tasks` (functions of no argument) at once, the first on this thread and the
    others on worker threads, with numpy's library on one thread for the span (its count
    restored after); wait for all and raise the first error.

    For a forward pass split by samples: with T library threads, a product already runs on T
    cores, but numpy's elementwise passes run on one, and a copy into a buffer another core's
    worker has just read runs up to 9x slower on this machine (see `one_thread`). T Python
    threads, each with its own part of the batch and its own buffers, keep every pass on its
    core: numpy releases the GIL in its loops and in np.matmul, and numpy's cblas is called
    through ctypes, which releases it too. scipy's f2py wrappers hold the GIL, so while this
    runs every product above SMALL_GEMM goes to numpy's library (`_APART`); the small ones still
    go to scipy's, which runs them on the calling thread. Each part's numbers are those of a
    one-thread pass over it: OpenBLAS on one thread sums each output in the same order at any
    number of rows (on two, a sum longer than its block of the inner dimension, 784 terms, can
    round differently, so a split pass on two threads gives the one-thread bits)."""
    if len(tasks) == 1:
        tasks[0]()
        return
    nb = _numpy_blas()
    if not _WORKERS or _WORKERS[0] != os.getpid():               # (a forked child has the pool but not its threads)
        from concurrent.futures import ThreadPoolExecutor
        _WORKERS[:] = [os.getpid(), ThreadPoolExecutor(max_workers=max(1, nb.threads() - 1),
                                                       thread_name_prefix="fbprop-apart")]
    if not _BLAS:
        _blas("gemm", np.dtype(np.float32))                      # (loaded before the threads race to it)
    pool = _WORKERS[1]
    apart_enter()
    try:
        futures = [pool.submit(task) for task in tasks[1:]]
        try:
            tasks[0]()
        finally:
            errors = [f.exception() for f in futures]            # (waits for each)
    finally:
        apart_exit()
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
