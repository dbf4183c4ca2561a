"""A training step at a fixed shape allocates no arrays once warm: states, scratch buffers and the
pool are reused. Checked with tracemalloc, to which numpy reports every array it allocates."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fbprop as fb

SPECS = {
    "mlp": {"model": "mlp", "hidden": [300, 100], "squash": "tanh", "energy": "scores", "loss": "nll",
            "input_shape": [1, 28, 28], "n_classes": 10},
    "lenet5": {"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10},
}


def _transient_bytes(model: str, batch: int) -> int:
    """The traced peak above the traced total during one warm `Machine.gradient` + `SGD.step`.

    numpy's ufunc iterator keeps buffers of its own of up to 3 × 8192 elements for broadcasting
    and strided operands, whatever the arrays' sizes; they are shrunk to 16 elements here so that
    what remains is fbprop's own allocations.
    """
    machine = fb.build_machine({**SPECS[model], "dtype": "float32"})
    opt = fb.SGD(machine.pool, 0.01)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step() -> None:
        machine.gradient(x, y)
        opt.step()

    step()
    step()                                                       # warm: every buffer exists
    old = np.getbufsize()
    np.setbufsize(16)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        np.setbufsize(old)
    return peak - base


@pytest.mark.parametrize("model, batch", [("mlp", 64), ("lenet5", 32)])
def test_a_warm_training_step_allocates_nothing_that_grows_with_the_batch(model, batch):
    small, large = _transient_bytes(model, batch), _transient_bytes(model, 4 * batch)
    # one float32 number per sample more at 4× the batch would already add 12·batch bytes;
    # what may remain are Python objects (array views, tuples), the same at any batch size
    assert large - small < 512, f"{model}: {small} bytes transient at batch {batch}, {large} at {4 * batch}"
    assert large < 8 * 1024, f"{model}: {large} bytes transient at batch {4 * batch}"
