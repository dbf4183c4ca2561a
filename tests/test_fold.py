"""Inference folds a squashing's bias into the product before it (`Cascade._folded`): the same
energies as fprop, the link state between them left alone, and nothing folded where the shapes,
the thread count or a following bprop rule it out."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb
from fbprop.network import leaves


def _spec(dtype="float64", n_in=6, hidden=(5, 4)):
    return {"model": "mlp", "input_shape": [n_in], "hidden": list(hidden), "squash": "tanh", "energy": "scores",
            "loss": "nll", "n_classes": 3, "dtype": dtype}


def _count_calls(monkeypatch, cls, name):
    calls = []
    method = getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda self, *a, m=method: (calls.append(repr(self)), m(self, *a))[1])
    return calls


def test_inference_adds_each_squashing_bias_in_the_product_before_it(monkeypatch):
    rng = np.random.default_rng(3)
    machine = fb.build_machine(_spec())
    x = rng.standard_normal((16, 6))
    assert machine.net._fold_at == (1, 3, 5)                    # Linear+Tanh, Linear+Tanh, Linear+Bias
    machine.fprop(x)
    mid = machine.net._link_states[1]                            # between the first Linear and its Tanh
    want, w1 = machine.energies.x.copy(), machine.net._links[1].w.x
    np.testing.assert_array_equal(mid.x, x @ w1.T)               # fprop keeps W x in the link state
    squashed = _count_calls(monkeypatch, fb.Squash, "fprop")
    added = _count_calls(monkeypatch, fb.Squash, "fprop_added")
    mid.x[...] = 7.0
    machine.inference(x)
    assert squashed == [] and added == ["Tanh(5, bias)", "Tanh(4, bias)", "Bias(3, bias)"]
    np.testing.assert_allclose(machine.energies.x, want, rtol=1e-13, atol=1e-15)
    assert (mid.x == 7.0).all()                                  # the product wrote the squashing's output
    np.testing.assert_array_equal(machine.predict(x), want.argmin(axis=1))
    machine.fprop(x)                                             # training's fprop: every state its value again
    np.testing.assert_array_equal(mid.x, x @ w1.T)
    np.testing.assert_array_equal(machine.energies.x, want)


def test_the_fold_gives_fprops_energies_in_float32_over_a_long_inner_dimension():
    """784 inputs: OpenBLAS may sum the first layer in blocks, the bias joining the first block's
    sum; the energies stay within float32's rounding of fprop's, and the answers are the same."""
    rng = np.random.default_rng(4)
    machine = fb.build_machine(_spec("float32", n_in=784, hidden=(300, 100)))
    x = rng.random((64, 784), dtype=np.float32)
    machine.fprop(x)
    want = machine.energies.x.copy()
    machine.inference(x)
    np.testing.assert_allclose(machine.energies.x, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(machine.energies.x.argmin(axis=1), want.argmin(axis=1))


def test_with_products_on_two_threads_the_squashings_run_on_their_own(monkeypatch, two_threads):
    """A bias copied on this core and read by the product's other thread cost more than it saved
    (the MLP's inference 9% slower on 2 threads): with more than one thread nothing is folded."""
    rng = np.random.default_rng(5)
    machine = fb.build_machine(_spec())
    x = rng.standard_normal((16, 6))
    machine.fprop(x)
    want = machine.energies.x.copy()
    added = _count_calls(monkeypatch, fb.Squash, "fprop_added")
    squashed = _count_calls(monkeypatch, fb.Squash, "fprop")
    machine.inference(x)
    assert added == [] and len(squashed) == 3
    np.testing.assert_array_equal(machine.energies.x, want)


def _forward_only(net, on=True):
    for m in leaves(net):
        if hasattr(m, "forward_only"):
            m.forward_only = on


def test_only_a_squashing_with_a_bias_of_the_products_shape_is_folded():
    pool = fb.ParamPool(np.float64, seed=1)
    net = fb.Cascade(fb.Linear(4, 5, pool), fb.ReLU(),           # no bias: nothing to fold
                     fb.Linear(5, 3, pool), fb.Tanh(3, pool),    # folded
                     fb.Linear(3, 3, pool), fb.Linear(3, 2, pool), fb.Bias(2, pool))   # the last two folded
    assert net._fold_at == (2, 5)
    wrong = fb.Cascade(fb.Linear(4, 5, pool), fb.Tanh(4, pool))  # a bias of another size: not folded
    assert wrong._fold_at == ()
    _forward_only(wrong)
    with pytest.raises(ValueError, match=r"Tanh\(4, bias\): expected input of shape \(n, 4\), got \(2, 5\)"):
        wrong.fprop(fb.State(np.ones((2, 4)), requires_dx=False), fb.State())


def test_a_folded_cascade_copied_or_pickled_folds_its_own_modules():
    import pickle
    rng = np.random.default_rng(6)
    machine = fb.build_machine(_spec())
    x = rng.standard_normal((8, 6))
    machine.inference(x)
    want = machine.energies.x.copy()
    for twin in (machine.net.share(), pickle.loads(pickle.dumps(machine.net))):
        _forward_only(twin)
        out = fb.State()
        twin.fprop(fb.State(x, requires_dx=False), out)
        np.testing.assert_array_equal(-out.x, want)            # (scores: E = −s)
        assert all(m is twin._links[i] for i, m in enumerate(twin._links))
        folds = [f for f, _, _ in twin._folding[2] if hasattr(f, "producer")]
        assert [f.consumer for f in folds] == [twin._links[i + 1] for i in twin._fold_at]
