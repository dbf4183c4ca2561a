"""A training step or an inference pass at a fixed shape allocates no arrays once warm: states,
scratch buffers, the input's conversion buffer and the pool are reused. Checked with tracemalloc,
to which numpy reports every array it allocates."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fbprop as fb
from fbprop.module import Cascade
from fbprop.network import Network

SPECS = {
    "mlp": {"model": "mlp", "hidden": [300, 100], "squash": "tanh", "energy": "scores", "loss": "nll",
            "input_shape": [1, 28, 28], "n_classes": 10},
    "lenet5": {"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10},
}


def _transient_bytes(model: str, batch: int, mode: str, dtype: type = np.float32) -> int:
    """The traced peak above the traced total during one warm step: `Machine.gradient` +
    `SGD.step` ("train") or `Machine.fprop` without answers ("infer"), on input of `dtype`.

    numpy's ufunc iterator keeps buffers of its own of up to 3 × 8192 elements for broadcasting
    and strided operands, whatever the arrays' sizes; they are shrunk to 16 elements here so that
    what remains is fbprop's own allocations.
    """
    machine = fb.build_machine({**SPECS[model], "dtype": "float32"})
    opt = fb.SGD(machine.pool, 0.01)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, batch)

    def step() -> None:
        if mode == "train":
            machine.gradient(x, y)
            opt.step()
        else:
            machine.fprop(x)

    for _ in range(6):                                           # warm: every buffer exists, and the
        step()                                                   # interpreter has specialised the code
    old = np.getbufsize()
    np.setbufsize(16)
    tracemalloc.start()
    try:
        transient = []
        for _ in range(10):                                      # the least of 10: Python's own objects vary by
            # 3.4-6.3 kB from step to step, whatever the batch (the least of 3 once differed by 1 kB
            # between two batch sizes); an allocation that grows with the batch is in every step
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            step()
            transient.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
        np.setbufsize(old)
    return min(transient)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("model, batch, mode", [("mlp", 64, "train"), ("lenet5", 64, "train"),
                                                ("mlp", 64, "infer"), ("lenet5", 64, "infer")])
def test_a_warm_step_allocates_no_array(model, batch, mode, dtype):
    small, large = _transient_bytes(model, batch, mode, dtype), _transient_bytes(model, 4 * batch, mode, dtype)
    # one float32 number per sample more at 4× the batch would already add 12·batch bytes (≥ 768),
    # and the smallest array of the net, one bias (10 numbers), is 40 bytes plus its 112-byte
    # header; what remains are Python objects (array views, tuples, bound methods), the same at any
    # batch size and a few kB in all
    assert large - small < 512, f"{model} {mode}: {small} bytes transient at batch {batch}, {large} at {4 * batch}"
    assert large < 8 * 1024, f"{model} {mode}: {large} bytes transient at batch {4 * batch}"


def _states(module, found: list) -> list:
    """Every intermediate state inside a net's containers."""
    if isinstance(module, Cascade):
        found += module.states
    elif isinstance(module, Network):
        found += list(module.states.values())
    for m in getattr(module, "modules", ()):
        _states(m, found)
    return found


@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_float64_input_is_converted_once_at_the_boundary_and_gives_the_converted_result(model):
    rng = np.random.default_rng(1)
    x64, y = rng.standard_normal((8, 1, 28, 28)), rng.integers(0, 10, 8)
    m = fb.build_machine({**SPECS[model], "dtype": "float32"})
    loss64 = m.gradient(x64, y)
    grad64, energies64 = m.pool.dx.copy(), m.energies.x.copy()
    states = [m.inp, *_states(m.network, []), m.energies, m.losses]
    assert len(states) > 8
    assert [s.x.dtype for s in states] == [np.float32] * len(states)
    assert [s.dx.dtype for s in states[1:]] == [np.float32] * (len(states) - 1)
    loss32 = m.gradient(x64.astype(np.float32), y)
    assert loss64 == loss32
    np.testing.assert_array_equal(grad64, m.pool.dx)
    np.testing.assert_array_equal(energies64, m.energies.x)
    np.testing.assert_array_equal(m.energies_of(x64, batch_size=3),
                                  m.energies_of(x64.astype(np.float32), batch_size=3))
