"""Test-session settings: one BLAS thread.

The suite's matrices are small, where a second OpenBLAS thread buys nothing and, on a machine
whose two cores are shared, costs a spin-wait per product; subprocesses get the same through
OPENBLAS_NUM_THREADS. Benchmarks in bench/ set their own thread counts.
"""

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))

try:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
except ImportError:  # threadpoolctl comes with scikit-learn; without it numpy keeps its default
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    """500 training digits (test modules with other needs define their own `digits`)."""
    from fbprop.data import load_dataset
    return load_dataset("digits", limit=500)


@pytest.fixture
def two_threads():
    """numpy's library on two threads for the test (for the splits between Python threads)."""
    from fbprop import blas
    lib = blas._numpy_blas()
    before = lib.threads()
    lib.set_threads(2)
    yield
    lib.set_threads(before)
