"""Gradient steps split by samples between Python threads (Machine._accumulate_apart)."""

import copy
import pickle
import threading

import numpy as np
import pytest

import fbprop as fb
from fbprop.distributed import SingleProcess
from fbprop.modules.dropout import Dropout
from splitting import LIB, batch, least_transient, lenet, needs_thread_count, parts_one_thread

pytestmark = needs_thread_count


def test_a_lenet5_step_runs_in_two_parts_whose_one_thread_gradients_add_up(two_threads, monkeypatch):
    machine, (x, y) = lenet(), batch(37)
    seen = []
    real = fb.Machine.accumulate

    def recording(self, *args):
        seen.append((threading.get_ident(), LIB.threads(), len(args[0]), self is machine))
        return real(self, *args)

    monkeypatch.setattr(fb.Machine, "accumulate", recording)
    loss = machine.gradient(x, y)
    assert sorted(n for _, _, n, _ in seen) == [18, 19] and {t for _, t, _, _ in seen} == {1}
    assert len({ident for ident, _, _, _ in seen}) == 2 and not any(own for *_, own in seen)   # two twins
    assert LIB.threads() == 2 and not fb.blas._APART[0]
    monkeypatch.undo()
    (d0, e0, l0, o0, t0), (d1, e1, l1, o1, t1) = parts_one_thread(machine, x, y, [0, 18, 37])
    np.testing.assert_array_equal(machine.pool.dx, d0 + d1)
    assert loss == (t0 + t1) / 37
    # what the trainer's meter reads: the whole batch's energies, losses and answers
    np.testing.assert_array_equal(machine.energies.x, np.concatenate([e0, e1]))
    np.testing.assert_array_equal(machine.losses.x, np.concatenate([l0, l1]))
    np.testing.assert_array_equal(machine.out.x, np.concatenate([o0, o1]))
    np.testing.assert_array_equal(machine.answers(), np.concatenate([e0, e1]).argmin(1))


def test_split_training_follows_the_unsplit_one_and_the_twins_read_the_new_weights(two_threads):
    split, (x, y) = lenet(), batch(40, 1)
    whole = copy.deepcopy(split)
    whole.split_training = False
    for m in (split, whole):
        opt = fb.SGD(m.pool, 0.05)
        for _ in range(4):
            m.gradient(x, y)
            opt.step()
    assert len(split._train_twins) == 2 and whole._train_twins is None
    assert all(t.pool.x is split.pool.x for t in split._train_twins)
    moved = np.abs(split.pool.x - lenet().pool.x).max()
    assert moved > 1e-3
    np.testing.assert_allclose(split.pool.x, whole.pool.x, rtol=0, atol=1e-5 * moved)
    # the next split gradient is the one-thread parts' sum at the new weights
    split.gradient(x, y)
    (d0, *_), (d1, *_) = parts_one_thread(split, x, y, [0, 20, 40])
    np.testing.assert_array_equal(split.pool.dx, d0 + d1)


def test_the_regularizer_is_added_once_and_full_gradient_splits_each_batch(two_threads):
    machine, (x, y) = lenet(), batch(32, 2)
    machine.regularizer, machine.n_train = fb.L2(0.5), 100
    machine.gradient(x, y)
    (d0, *_), (d1, *_) = parts_one_thread(machine, x, y, [0, 16, 32])
    plain = copy.deepcopy(machine)
    plain.pool.dx[...] = d0 + d1
    plain.regularizer.bprop(plain.pool, 1 / 100)
    np.testing.assert_array_equal(machine.pool.dx, plain.pool.dx)
    value = machine.full_gradient(x, y, batch_size=16)           # two batches of 16, each split in 2
    parts = parts_one_thread(machine, x, y, [0, 8, 16, 24, 32])
    plain.pool.dx[...] = sum(p[0] for p in parts)
    plain.regularizer.bprop(plain.pool, 1 / 32)
    np.testing.assert_array_equal(machine.pool.dx, plain.pool.dx)
    assert value == pytest.approx((sum(p[4] for p in parts) + plain.regularizer.fprop(plain.pool)) / 32, rel=1e-12)


def test_what_is_not_split_runs_whole_on_the_machine_itself(two_threads, monkeypatch):
    calls = []
    real = fb.Machine.accumulate
    monkeypatch.setattr(fb.Machine, "accumulate", lambda self, *a: calls.append(self) or real(self, *a))
    x, y = batch(40, 3)
    mlp = fb.build_machine({"model": "mlp", "hidden": [20], "input_shape": [1, 28, 28], "n_classes": 10})
    mlp.split_min = 8
    dropout = fb.build_machine({"model": "lenet-modern", "maps": [4, 8], "hidden": [16], "dropout": 0.2,
                                "input_shape": [1, 28, 28], "n_classes": 10})
    dropout.split_min = 8
    assert any(isinstance(m, Dropout) for m in fb.network.leaves(dropout.network))
    off = lenet()
    off.split_training = False
    small = lenet()
    small.split_min = 21
    for m in (mlp, dropout, off, small):
        calls.clear()
        with m.noise(np.random.default_rng(0)):
            m.gradient(x, y)
        assert calls == [m], (m, calls)
        assert not m.__dict__.get("_train_twins")
    one = lenet()
    LIB.set_threads(1)
    calls.clear()
    one.gradient(x, y)
    assert calls == [one]
    LIB.set_threads(2)
    # SDLM's curvature: fprop, bprop and bbprop on the machine's own states, whole
    sdlm = lenet()
    calls.clear()
    sdlm.curvature(x, y)
    assert calls == [sdlm] and sdlm.pool.ddx.any()


def test_a_bad_batch_gets_the_whole_batchs_error_and_nothing_is_added(two_threads):
    machine, (x, y) = lenet(), batch(40, 4)
    machine.gradient(x, y)
    before = machine.pool.dx.copy()
    with pytest.raises(ValueError) as split_error:
        machine.gradient(x[:, :, :27], y)
    machine.split_training = False
    with pytest.raises(ValueError) as whole_error:
        machine.gradient(x[:, :, :27], y)
    assert str(split_error.value) == str(whole_error.value) and "(40, 1, 27, 28)" in str(split_error.value)
    machine.split_training = True
    machine.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, before)


def test_copies_and_pickles_leave_the_twins_behind_and_a_replaced_pool_makes_new_ones(two_threads):
    machine, (x, y) = lenet(), batch(40, 5)
    machine.gradient(x, y)
    for other in (copy.deepcopy(machine), pickle.loads(pickle.dumps(machine))):
        assert "_train_twins" not in vars(other)
        other.gradient(x, y)
        assert all(t.pool.x is other.pool.x for t in other._train_twins)
        np.testing.assert_array_equal(other.pool.dx, machine.pool.dx)
    old = machine._train_twins[0]
    machine.pool.x = machine.pool.x.copy()                       # (as growing the pool would)
    machine.pool.__setstate__(machine.pool.__getstate__())
    machine.gradient(x, y)
    assert machine._train_twins[0] is not old and machine._train_twins[0].pool.x is machine.pool.x
    machine.loss = type(machine.loss)(beta=0.5)                  # another loss: twins with it
    machine.gradient(x, y)
    assert [t.loss.beta for t in machine._train_twins] == [0.5, 0.5]
    (d0, *_), (d1, *_) = parts_one_thread(machine, x, y, [0, 20, 40])
    np.testing.assert_array_equal(machine.pool.dx, d0 + d1)


def test_each_twin_trains_on_one_process_whatever_the_machines_reducer():
    class Half(SingleProcess):
        rank, size, is_root = 0, 2, True                      # this process: the first half of a batch

    machine, (x, y) = lenet(), batch(40, 6)
    machine.reducer = Half()
    LIB.set_threads(2)
    try:
        machine.gradient(x, y)
        assert [type(t.reducer) for t in machine._train_twins] == [SingleProcess, SingleProcess]
        (d0, *_), (d1, *_) = parts_one_thread(machine, x[:20], y[:20], [0, 10, 20])
    finally:
        LIB.set_threads(1)
    np.testing.assert_array_equal(machine.pool.dx, (d0 + d1) * 0.5)   # weight 1/40, not 1/20


def _split_step_transient(n: int) -> int:
    machine, (x, y) = lenet(), batch(n, 7)
    opt = fb.SGD(machine.pool, 0.01)
    for _ in range(6):
        machine.gradient(x, y)
        opt.step()
    old = np.getbufsize()
    for _ in range(2):                                           # numpy's buffer size is per thread: the
        fb.blas.run_apart([lambda: None, lambda: np.setbufsize(16)])     # worker's 8192-element buffers
        np.setbufsize(16)                                        # would be 80 kB (see test_allocation)
    try:
        found = least_transient(machine, x, y, opt, 10)
    finally:
        fb.blas.run_apart([lambda: None, lambda: np.setbufsize(old)])
        np.setbufsize(old)
    assert len(machine._train_twins) == 2
    return found


def test_a_warm_split_step_allocates_no_array(two_threads, monkeypatch):
    # on two threads the step's Python objects (futures, the worker's frames) peak at 8-10 kB and
    # their overlap varies with the interleaving, a few hundred bytes more at larger batches, so
    # arrays that grow with the batch are looked for with the same parts run in turn on this thread
    threaded = _split_step_transient(1024)
    assert threaded < 16 * 1024, f"{threaded} bytes transient at batch 1024 on two threads"

    def in_turn(tasks):
        with fb.blas.one_thread():
            for task in tasks:
                task()

    monkeypatch.setattr(fb.machine, "run_apart", in_turn)
    small, large = _split_step_transient(256), _split_step_transient(1024)
    assert large - small < 512, f"{small} bytes transient at batch 256, {large} at 1024"


def test_whether_steps_split_is_asked_again_for_a_replaced_loss():
    """The answer is kept per loss: a loss that is not one term per sample, put in place of one
    that is, stops the split (the answer kept before would have split it)."""
    machine = lenet()

    class Batchwise(fb.NLLLoss):
        samplewise = False

    assert machine._splits_steps()
    machine.loss = Batchwise(beta=0.1)
    assert not machine._splits_steps()
    machine.loss = fb.NLLLoss(beta=0.1)
    assert machine._splits_steps()
