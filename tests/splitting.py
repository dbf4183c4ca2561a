"""What the tests of the batch split between threads share (test_split_inference.py,
test_split_training.py): numpy's library, the skip where its thread count cannot be set, and a
LeNet-5 that splits batches of 16 (the `two_threads` fixture is in conftest)."""

from __future__ import annotations

import pytest

import fbprop as fb

LIB = fb.blas._numpy_blas()
needs_thread_count = pytest.mark.skipif(not LIB.routines or LIB.set_threads is None,
                                        reason="numpy's OpenBLAS cannot set its thread count")


def lenet(**spec) -> fb.Machine:
    machine = fb.build_machine({"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10,
                                "dtype": "float32", **spec})
    machine.split_min = 8
    return machine
