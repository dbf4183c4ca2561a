"""What the tests of the batch split share (test_split_inference.py, test_split_training.py,
test_split_processes.py): numpy's library, the skip where its thread count cannot be set, and a
LeNet-5 that splits batches of 16 (the `two_threads` fixture is in conftest)."""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest

import fbprop as fb

LIB = fb.blas._numpy_blas()
needs_thread_count = pytest.mark.skipif(not LIB.routines or LIB.set_threads is None,
                                        reason="numpy's OpenBLAS cannot set its thread count")


def lenet(processes: bool = False, **spec) -> fb.Machine:
    """A LeNet-5 splitting a training batch of 16 or more in two parts, between threads or (with
    `processes`) with a worker process."""
    machine = fb.build_machine({"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10,
                                "dtype": "float32", **spec})
    machine.split_min = machine.split_min_processes = 8
    machine.split_processes = processes
    return machine


def batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n)


def parts_one_thread(machine: fb.Machine, x: np.ndarray, y: np.ndarray, cut: list[int]) -> list[tuple]:
    """Each part's gradient (weight 1/len(x)), its energies, losses and loss total, computed
    without the split on one thread."""
    plain = copy.deepcopy(machine)
    plain.split_training = False
    LIB.set_threads(1)
    try:
        found = []
        for a, b in zip(cut, cut[1:]):
            plain.pool.clear_dx()
            total = plain.accumulate(x[a:b], y[a:b], 1 / len(x))
            found.append((plain.pool.dx.copy(), plain.energies.x.copy(), plain.losses.x.copy(),
                          plain.out.x.copy(), total))
        return found
    finally:
        LIB.set_threads(2)


def least_transient(machine: fb.Machine, x: np.ndarray, y: np.ndarray, opt, steps: int) -> int:
    """The least peak of traced memory above the start over `steps` warm SGD steps on (x, y):
    what a step allocates and frees again (the caller sets numpy's buffer size first)."""
    tracemalloc.start()
    try:
        found = []
        for _ in range(steps):
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            machine.gradient(x, y)
            opt.step()
            found.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    return min(found)
