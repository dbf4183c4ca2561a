"""A module's kept decisions (fbprop.module.Plan): kept only while its operands stay the same,
never carried into a copy, and the same numbers as deciding at every call."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fbprop as fb
from fbprop.state import State


def _mlp(seed: int = 0, dtype=np.float64):
    pool = fb.ParamPool(dtype, seed=seed)
    net = fb.Cascade(fb.Linear(5, 4, pool), fb.Tanh(4, pool), fb.Linear(4, 3, pool), fb.Bias(3, pool))
    pool.x[:] = np.random.default_rng(seed).standard_normal(pool.x.size)
    return pool, net


def _weights(pool):
    return [h.x for h, *_ in pool.handles]


def _bprop_from_cleared(net, pool, inp, out, g):
    """fprop, then one bprop with every derivative cleared first and ∂E/∂out = g."""
    net.fprop(inp, out)
    pool.clear_dx()
    inp.clear_dx()
    out.clear_dx()
    out.dx[...] = g
    net.bprop(inp, out)


def _sweep(net, x, g):
    inp, out = State(x), State()
    net.fprop(inp, out)
    inp.clear_dx()
    out.clear_dx()
    out.dx[...] = g
    net.bprop(inp, out)
    return out.x.copy(), inp.dx.copy()


@pytest.mark.parametrize("xs", [
    [(1, 5), (7, 5), (1, 5), (7, 5)],                          # batch sizes in turn
    [(3, 5), "f64->f32", (3, 5)],                              # another dtype in between
    [(6, 5), "fortran", (6, 5), "strided", (6, 5)],            # other layouts of the same shape
])
def test_a_module_decides_again_whenever_its_input_changes_shape_dtype_or_layout(xs):
    rng = np.random.default_rng(1)
    pool, net = _mlp()
    w1, b1, w2, b2 = _weights(pool)
    for spec in xs:
        if spec == "f64->f32":
            x = rng.standard_normal((3, 5)).astype(np.float32)
        elif spec == "fortran":
            x = np.asfortranarray(rng.standard_normal((6, 5)))
        elif spec == "strided":
            x = rng.standard_normal((12, 10))[::2, ::2]
        else:
            x = rng.standard_normal(spec)
        g = rng.standard_normal((len(x), 3))
        pool.clear_dx()
        y, dx = _sweep(net, x, g)
        h = np.tanh(x @ w1.T + b1)
        np.testing.assert_allclose(y, h @ w2.T + b2, rtol=1e-6, atol=1e-6)
        gh = (g @ w2) * (1 - h * h)
        np.testing.assert_allclose(dx, gh @ w1, rtol=1e-6, atol=1e-6)          # ∂E/∂x
        dw1 = pool.dx[:w1.size].reshape(w1.shape)
        np.testing.assert_allclose(dw1, gh.T @ x, rtol=1e-6, atol=1e-6)       # ∂E/∂W1


def test_a_second_bprop_adds_where_the_first_wrote():
    rng = np.random.default_rng(2)
    pool, net = _mlp()
    x, g = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    inp, out = State(x), State()
    _bprop_from_cleared(net, pool, inp, out, g)
    once_dw, once_dx = pool.dx.copy(), inp.dx.copy()
    net.bprop(inp, out)                                          # no clear: the contract adds
    np.testing.assert_allclose(pool.dx, 2 * once_dw, rtol=1e-14)
    np.testing.assert_allclose(inp.dx, 2 * once_dx, rtol=1e-14)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "share"])
def test_a_copy_keeps_no_plan_and_never_writes_the_original_states(how):
    rng = np.random.default_rng(3)
    pool, net = _mlp()
    x = rng.standard_normal((2, 5))
    inp, out = State(x), State()
    net.fprop(inp, out)
    before = out.x.copy()
    lin = net.modules[0]
    assert lin._forward is not None                              # (the original keeps its plan)
    twin = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
            "share": lambda m: m.share()}[how](net)
    assert twin.modules[0]._forward is None and twin.modules[1]._forward is None
    x2 = rng.standard_normal((2, 5))
    out2 = State()
    twin.fprop(State(x2), out2)
    np.testing.assert_array_equal(out.x, before)                # the original's output untouched
    np.testing.assert_array_equal(net.modules[0]._forward.a, net.states[0].x)
    inp2, out3 = State(x2), State()
    net.fprop(inp2, out3)
    np.testing.assert_array_equal(out2.x, out3.x)               # and the copy computed the same


def test_a_pool_that_grows_moves_the_weights_and_the_plans_follow():
    rng = np.random.default_rng(4)
    pool, net = _mlp()
    x = rng.standard_normal((3, 5))
    inp, out = State(x), State()
    net.fprop(inp, out)
    pool.alloc(7, fan_in=7)                                      # the pool grows into new arrays
    pool.x[:] = rng.standard_normal(pool.x.size)                 # and its numbers change
    net.fprop(inp, out)
    w1, b1, w2, b2 = _weights(pool)[:4]
    np.testing.assert_allclose(out.x, np.tanh(x @ w1.T + b1) @ w2.T + b2, rtol=1e-12)


def test_inference_between_training_steps_changes_no_bit_of_them():
    """Inference computes squashings in their input's buffer (take_over); the training plans
    made before must not then run on swapped buffers."""
    rng = np.random.default_rng(5)
    spec = {"model": "mlp", "input_shape": [6], "hidden": [5, 4], "squash": "tanh", "energy": "scores", "loss": "nll",
            "n_classes": 3, "dtype": "float64"}
    x, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)
    runs = []
    for infer in (False, True):
        m = fb.build_machine(spec)
        opt = fb.SGD(m.pool, 0.1)
        for i in range(0, 40, 4):
            m.gradient(x[i:i + 4], y[i:i + 4])
            opt.step()
            if infer:
                m.predict(x[20:24], batch_size=4)           # the training batch's shape
        runs.append(m.pool.x.copy())
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_inference_keeps_its_decisions_from_one_batch_to_the_next(monkeypatch, request, threads):
    """Inference squashes in its inputs' buffers and gives them back at the end, so the next
    inference of the same shape finds every buffer where it was: no module decides again (a
    squashing whose output is the net's own takes nothing over, or the buffer of the product
    before it would alternate from one inference to the next), and the answers stay fprop's.
    With one thread each Linear adds the next squashing's bias itself (`Cascade._folded`), and
    only the Linears decide; with two, each module does."""
    if threads == 2:
        request.getfixturevalue("two_threads")
    rng = np.random.default_rng(8)
    spec = {"model": "mlp", "input_shape": [6], "hidden": [5, 4], "squash": "tanh", "energy": "scores", "loss": "nll",
            "n_classes": 3, "dtype": "float64"}
    machine, fresh = fb.build_machine(spec), fb.build_machine(spec)
    fresh.pool.x[...] = machine.pool.x
    batches = [rng.standard_normal((8, 6)) for _ in range(3)]
    fresh.fprop(batches[0])                                      # (its plans made before counting)
    made = []
    for cls in (fb.Linear, fb.Squash):
        plan = cls._plan_fprop
        counted = lambda self, *a, plan=plan: (made.append(repr(self)), plan(self, *a))[1]   # noqa: E731
        monkeypatch.setattr(cls, "_plan_fprop", counted)
    machine.predict(batches[0], batch_size=8)
    first = len(made)
    assert first == (3 if threads == 1 else 6)                  # 3 Linear (2 Tanh and the Bias folded in), or 6
    for x in batches[1:]:
        machine.inference(x)
        fresh.fprop(x)
        np.testing.assert_array_equal(machine.energies.x, fresh.energies.x)
    assert made[first:] == []


def test_kept_decisions_give_the_bits_of_decisions_made_at_the_call():
    """A net whose modules kept plans from other inputs, against a copy of it (no plans) deciding
    now: the same bits for every layout, batch size and dtype in turn."""
    rng = np.random.default_rng(6)
    pool, net = _mlp(dtype=np.float32)
    inputs = [rng.standard_normal((1, 5)), rng.standard_normal((64, 5)),
              np.asfortranarray(rng.standard_normal((64, 5))), rng.standard_normal((128, 10))[::2, ::2],
              rng.standard_normal((1, 5)), rng.standard_normal((64, 5))]
    for x in inputs:
        x = x.astype(np.float32)
        g = rng.standard_normal((len(x), 3)).astype(np.float32)
        fresh = copy.deepcopy(net)
        for m in (net, fresh):
            for p in m.params():
                p.clear_dx()
        kept, now = _sweep(net, x, g), _sweep(fresh, x, g)
        for a, b in zip(kept, now, strict=True):
            np.testing.assert_array_equal(a, b)
        for p, q in zip(net.params(), fresh.params(), strict=True):
            np.testing.assert_array_equal(p.dx, q.dx)


def test_a_regression_net_ending_in_a_squashing_trains_the_same_with_predictions_in_between():
    """Its last squashing writes the machine's output state, which inference leaves holding the
    buffer it took over: a plan made in inference must not be kept for training."""
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((24, 6)), rng.uniform(-0.5, 0.5, (24, 2))
    runs = []
    for infer in (False, True):
        pool = fb.ParamPool(np.float64, seed=0)
        net = fb.Cascade(fb.Linear(6, 5, pool), fb.Tanh(5, pool), fb.Linear(5, 2, pool), fb.Tanh(2, pool))
        m = fb.Machine(net, fb.Euclidean(), fb.EnergyLoss(), pool)
        opt = fb.SGD(pool, 0.1)
        for i in range(0, 24, 4):
            m.gradient(x[i:i + 4], y[i:i + 4])
            opt.step()
            if infer:
                m.predict(x[8:12], batch_size=4)
        runs.append(pool.x.copy())
    np.testing.assert_array_equal(runs[0], runs[1])


# ---- decisions kept by the states, the containers, the loss and the optimizer ----------------

def test_a_state_whose_array_is_replaced_gives_a_gradient_of_the_new_shape_and_dtype():
    """State.dx and sum_target skip their shape test for the array they last checked; an array put
    in its place (a Reshape's view, the machine's batch) is tested again."""
    s = State(np.ones((2, 3)))
    s.dx[...] = 5.0
    for x in (np.ones((4, 3)), np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)):
        s.x = x                                                  # a new array each time, as a batch is
        s.clear_dx()
        assert s.dx.shape == x.shape and s.dx.dtype == x.dtype and not s.dx.any()
    s.x = np.ones((1, 7))
    s.clear_dx()
    into, zero = s.sum_target("dx")
    assert into.shape == (1, 7) and zero                         # written, not added to a stale buffer
    into[...] = 2.0
    into, zero = s.sum_target("dx")
    assert into.shape == (1, 7) and not zero and (into == 2.0).all()


@pytest.mark.parametrize("wrap", ["cascade", "network"])
def test_an_input_that_comes_to_need_its_gradient_gets_it(wrap):
    """The backward sweep a container keeps (which states to clear, which links to run) is decided
    again when its input's requires_dx changes, not only when other states come in: with raw data
    in, the sweep stops at the first module with parameters."""
    pool = fb.ParamPool(np.float64, seed=0)
    if wrap == "cascade":
        net = fb.Cascade(fb.Tanh(), fb.Linear(3, 2, pool), fb.Tanh(2, pool))
    else:                                                        # the state between is the network's own
        net = fb.Network(inputs="x", outputs="y", modules=[
            (fb.Tanh(), "x -> h"), (fb.Cascade(fb.Linear(3, 2, pool), fb.Tanh(2, pool)), "h -> y")])
    rng = np.random.default_rng(5)
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    inp, out = State(x, requires_dx=False), State()
    for need in (False, True, False, True):
        inp.requires_dx = need
        _bprop_from_cleared(net, pool, inp, out, g)
        if need:
            w, b = _weights(pool)[:2]
            h = np.tanh(x)
            y = np.tanh(h @ w.T + b)
            want = ((g * (1 - y * y)) @ w) * (1 - h * h)
            np.testing.assert_allclose(inp.dx, want, rtol=1e-12)
        else:
            assert not inp.dx.any()                              # nothing added into raw data


def test_the_losses_follow_the_batch_size_and_a_replaced_output_buffer():
    loss = fb.NLLLoss()
    rng = np.random.default_rng(6)
    out = State()
    for n in (1, 3, 1, 1, 5):
        e = State(rng.standard_normal((n, 4)))
        y = rng.integers(0, 4, n)
        if n == 1 and out.x.shape == (1,):
            out.x = np.full(1, np.nan)                           # the output's buffer replaced by its owner
        loss.fprop(e, State(y), out)
        z = np.exp(-e.x)
        want = e.x[np.arange(n), y] + np.log(z.sum(axis=1))
        np.testing.assert_allclose(out.x, want, rtol=1e-12)


def test_sgd_keeps_its_update_only_for_the_same_vectors_and_a_copy_updates_its_own():
    rng = np.random.default_rng(7)
    pool, net = _mlp()
    opt = fb.SGD(pool, 0.5)
    pool.dx[...] = rng.standard_normal(pool.x.size)
    before = pool.x.copy()
    opt.step()
    np.testing.assert_allclose(pool.x, before - 0.5 * pool.dx, rtol=1e-12)
    pool2, opt2 = copy.deepcopy((pool, opt))
    x_before, x2_before = pool.x.copy(), pool2.x.copy()
    pool2.dx[...] = 1.0
    opt2.step()
    np.testing.assert_array_equal(pool.x, x_before)              # the original's weights untouched
    np.testing.assert_allclose(pool2.x, x2_before - 0.5, rtol=1e-12)
    pool.alloc(6, fan_in=6)                                      # the pool grows into new vectors
    pool.dx[...] = 2.0
    grown = pool.x.copy()
    opt.step()
    np.testing.assert_allclose(pool.x, grown - 1.0, rtol=1e-12)


def _nll_terms(e, y, beta):
    """NLL's losses and ∂L/∂E from its formula, in float64: L = E_Y + (1/β) log Σ exp(−βE)."""
    e = e.astype(np.float64)
    z = np.exp(-beta * (e - e.min(axis=1, keepdims=True)))
    p = z / z.sum(axis=1, keepdims=True)
    loss = e[np.arange(len(e)), y] - e.min(axis=1) + np.log(z.sum(axis=1)) / beta
    g = -p
    g[np.arange(len(e)), y] += 1.0
    return loss, g


@pytest.mark.parametrize("beta", [1.0, 0.1])
@pytest.mark.parametrize("n", [5, 32])
def test_the_nll_batch_keeps_its_decisions_with_the_bits_and_checks_of_the_general_path(monkeypatch, beta, n):
    """After its first batch NLLLoss runs a kept call (no `_read`, no `terms`): for new energies
    and labels it gives the general path's losses and ∂L/∂E bit for bit (a fresh loss computing
    them), the formula's to float32 rounding, and bad labels still fail with the general path's
    error, after which the kept call goes on."""
    rng = np.random.default_rng(11)
    kept, out = fb.NLLLoss(beta), State()
    e, y = State(), State()
    e.resize(n, 10, dtype=np.float32)
    read: list[bool] = []
    for step in range(4):
        e.x[...] = rng.standard_normal((n, 10)) * 3
        y.x = rng.integers(0, 10, n)
        if step == 2:                                            # the plan is made by now: count the general path
            monkeypatch.setattr(fb.NLLLoss, "_read",
                                lambda self, *a: (read.append(self is kept), fb.Loss._read(self, *a))[1])
        kept.fprop(e, y, out)
        fresh, fresh_out = fb.NLLLoss(beta), State()
        fresh.fprop(State(e.x.copy()), State(y.x.copy()), fresh_out)
        np.testing.assert_array_equal(out.x, fresh_out.x)
        out.dx = np.full(n, 0.5, np.float32)
        e.clear_dx()
        kept.bprop(e, y, out)
        want_loss, want_g = _nll_terms(e.x, y.x, beta)
        np.testing.assert_allclose(out.x, want_loss, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e.dx, 0.5 * want_g, rtol=1e-5, atol=1e-6)
    assert not any(read)
    read.clear()
    for bad in (np.full(n, 10), np.full(n, -1), np.zeros(n, np.float64), np.zeros(n + 1, np.int64)):
        with pytest.raises(ValueError, match="NLLLoss"):
            kept.fprop(e, State(bad), out)
    assert read == [True] * 4                                    # each bad batch went the general way
    kept.fprop(e, y, out)
    np.testing.assert_array_equal(out.x, fresh_out.x)
    assert read == [True] * 4




_INLINE_CHECK = """
import gc
import numpy as np
import fbprop as fb
from fbprop.network import leaves


def moved(obj, key):
    # the attributes in a dict object of their own (holding key), as reading obj.__dict__ leaves
    # them; otherwise the interpreter keeps them inline and the gc's referents are their values
    return any(type(r) is dict and key in r for r in gc.get_referents(obj))


spec = {"model": "mlp", "input_shape": [6], "hidden": [5], "squash": "tanh", "energy": "scores",
        "loss": "nll", "n_classes": 3, "dtype": "float32"}
names = [next(iter(vars(m))) for m in leaves(fb.build_machine(spec).network) if m.params()]
machine = fb.build_machine(spec)
opt = fb.SGD(machine.pool, 0.01)
rng = np.random.default_rng(3)
x, y = rng.standard_normal((64, 6)).astype(np.float32), rng.integers(0, 3, 64)
for b in (1, 32, 1, 32):
    for i in range(0, 64, b):
        machine.gradient(x[i:i + b], y[i:i + b])
        opt.step()
    machine.predict(x, batch_size=b)
trained = [m for m in leaves(machine.network) if m.params()]
found = [moved(machine, "pool"), moved(machine.loss, "beta")] + [moved(m, k) for m, k in zip(trained, names)]
vars(machine)
print(len(trained), found, moved(machine, "pool"))
"""


def test_building_training_and_inference_leave_the_attributes_of_the_machine_loss_and_modules_inline():
    """Nothing on the way from the spec to a step or an inference reads an instance's `__dict__`
    (`Module.params` included): in CPython 3.11 that moves the object's attributes into a dict
    for good, and every attribute read after it costs more (the 4-3-3-10 net's on-line step ran
    6.6% more instructions once its machine had been pickled, 3.4% more with its modules' alone
    moved). In a fresh interpreter: a class whose instances have set more than 30 attribute names
    in all also moves them (CPython's shared keys are full), which a long test session reaches."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", _INLINE_CHECK], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    # 4 modules with parameters (Linear, Tanh, Linear, Bias), none moved, and the check sees a move
    assert run.stdout.split() == ["4", "[False,", "False,", "False,", "False,", "False,", "False]", "True"], run.stdout


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_answers_predict_returns_are_the_callers_own(task):
    """predict's answers of a one-batch call are not copied again (argmin's, or the copy of a
    regression's output): the next predict leaves them as they were."""
    spec = {"model": "mlp", "input_shape": [6], "hidden": [5], "n_classes": 3 if task == "classification" else 2,
            "dtype": "float64", **({"task": "regression"} if task == "regression" else {})}
    machine = fb.build_machine(spec)
    rng = np.random.default_rng(5)
    x1, x2 = rng.standard_normal((16, 6)), rng.standard_normal((16, 6))
    first = machine.predict(x1)
    kept = first.copy()
    second = machine.predict(x2)
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)                     # (a buffer they shared would show it)
    np.testing.assert_array_equal(machine.predict(x1), kept)
