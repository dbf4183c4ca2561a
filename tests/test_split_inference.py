"""Inference split by samples between Python threads (Machine._fprop_apart, blas.run_apart)."""

import copy
import pickle

import numpy as np
import pytest

import fbprop as fb
from splitting import LIB, lenet, needs_thread_count

pytestmark = needs_thread_count


def _one_thread_energies(machine, x, cut):
    """The energies of each part of x, computed by one pass without the split on one thread."""
    machine.split_inference = False
    LIB.set_threads(1)
    try:
        return np.concatenate([machine.energies_of(x[a:b]) for a, b in zip(cut, cut[1:])])
    finally:
        LIB.set_threads(2)
        machine.split_inference = True


def _images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def test_lenet5_inference_runs_in_two_parts_with_each_parts_one_thread_energies(two_threads, monkeypatch):
    machine, x = lenet(), _images(37)
    threads = []
    real = fb.Network.fprop

    def recording(self, *states):
        import threading
        threads.append((threading.get_ident(), LIB.threads(), len(states[0].x)))
        return real(self, *states)

    monkeypatch.setattr(fb.Network, "fprop", recording)
    e = machine.energies_of(x)
    assert sorted(n for _, _, n in threads) == [18, 19] and {t for _, t, _ in threads} == {1}
    assert len({ident for ident, _, _ in threads}) == 2          # two parts, two threads, one BLAS thread each
    assert LIB.threads() == 2 and not fb.blas._APART[0]          # restored
    np.testing.assert_array_equal(e, _one_thread_energies(machine, x, [0, 18, 37]))
    np.testing.assert_array_equal(machine.predict(x), e.argmin(1))
    assert machine.network.state("out").x.shape[0] == 18          # the network's states: the first part
    assert not any(getattr(m, "forward_only", False) for m in fb.network.leaves(machine._twin_nets[0]))


def test_the_twin_reads_the_current_weights_and_training_is_unchanged(two_threads):
    """The twin holds the network's parameter handles: after an SGD step the split energies follow;
    a gradient after a split inference is the one without it."""
    machine, x, y = lenet(), _images(20, 1), np.arange(20) % 10
    plain = copy.deepcopy(machine)
    machine.energies_of(x)                                       # twin made
    opt = fb.SGD(machine.pool, 0.1)
    machine.gradient(x, y)
    opt.step()
    moved = machine.energies_of(x)
    np.testing.assert_array_equal(moved, _one_thread_energies(machine, x, [0, 10, 20]))
    plain.pool.x[...] = machine.pool.x
    for m in (machine, plain):
        m.pool.clear_dx()
        m.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, plain.pool.dx)


def test_a_copy_or_a_pickle_leaves_the_twins_behind(two_threads):
    machine, x = lenet(), _images(16, 2)
    e = machine.energies_of(x)
    assert machine._twin_nets
    for clone in (copy.deepcopy(machine), pickle.loads(pickle.dumps(machine))):
        assert "_twin_nets" not in vars(clone)
        np.testing.assert_array_equal(clone.energies_of(x), e)
        assert clone._twin_nets[0] is not machine._twin_nets[0]


def test_a_bad_batch_gets_the_same_one_line_error_and_the_count_back(two_threads):
    machine = lenet()
    bad = np.zeros((20, 1, 27, 28), np.float32)
    machine.split_inference = False
    with pytest.raises(ValueError) as whole:
        machine.predict(bad)
    machine.split_inference = True
    with pytest.raises(ValueError) as split:
        machine.predict(bad)
    assert str(split.value) == str(whole.value) and "\n" not in str(split.value)
    assert LIB.threads() == 2 and not fb.blas._APART[0]


def test_what_is_not_split(two_threads, monkeypatch):
    """An MLP (no module gains), a network with a module that mixes samples, a batch under two
    parts of split_min, split_inference False, one thread: one pass, no worker."""
    calls = []
    monkeypatch.setattr(fb.machine, "run_apart", lambda tasks: [calls.append(len(tasks))] + [t() for t in tasks])
    x = _images(40, 3)
    mlp = fb.build_machine({"model": "mlp", "hidden": [20], "input_shape": [1, 28, 28], "n_classes": 10})
    mlp.split_min = 8
    mlp.energies_of(x)
    mixed = lenet()
    next(m for m in fb.network.leaves(mixed.network) if isinstance(m, fb.Conv2d)).samplewise = False
    mixed.energies_of(x)
    small, off, alone = lenet(), lenet(), lenet()
    small.split_min = 21
    small.energies_of(x)
    off.split_inference = False
    off.energies_of(x)
    LIB.set_threads(1)
    alone.energies_of(x)
    assert calls == []
    LIB.set_threads(2)
    alone.energies_of(x[:16])
    assert calls == [2]                                          # (the same machine, two threads)


def test_run_apart_raises_a_workers_error_after_all_finish(two_threads):
    done = []

    def fails():
        raise KeyError("worker")

    with pytest.raises(KeyError, match="worker"):
        fb.blas.run_apart([lambda: done.append(LIB.threads()), fails])
    assert done == [1] and LIB.threads() == 2 and not fb.blas._APART[0]


def test_one_thread_from_two_python_threads_restores_the_count_once_both_leave(two_threads):
    """The first in sets 1, the last out restores 2: while one thread is still inside, the other
    leaving does not give the library back its 2 threads, and neither leaves it on 1 for good."""
    import threading
    steps = [threading.Event() for _ in range(3)]
    seen = {}

    def first():
        with fb.blas.one_thread():
            steps[0].set()
            steps[1].wait(5)
        steps[2].set()

    t = threading.Thread(target=first)
    t.start()
    steps[0].wait(5)
    with fb.blas.one_thread():
        steps[1].set()
        steps[2].wait(5)                                         # the first thread has left
        seen["inside"] = LIB.threads()
    t.join(5)
    assert seen["inside"] == 1 and LIB.threads() == 2


def test_two_machines_inferring_at_once_on_two_threads(two_threads):
    import threading
    machines, xs = [lenet(seed=s) for s in (0, 1)], [_images(24, s) for s in (4, 5)]
    want = [_one_thread_energies(m, x, [0, 12, 24]) for m, x in zip(machines, xs)]
    got = [None, None]

    def infer(i):
        for _ in range(3):
            got[i] = machines[i].energies_of(xs[i])

    threads = [threading.Thread(target=infer, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert LIB.threads() == 2 and not fb.blas._APART[0]


def test_a_forked_child_splits_on_threads_of_its_own(two_threads):
    """A process forked after a split has the parent's thread pool object but none of its
    threads: the child starts its own, instead of waiting forever on a worker that is not there."""
    import multiprocessing
    machine, x = lenet(), _images(20, 6)
    e = machine.energies_of(x)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_child_energies, (machine, x)).get(timeout=60)
    np.testing.assert_array_equal(got, e)


def _child_energies(machine, x):
    LIB.set_threads(2)
    return machine.energies_of(x)


def test_a_one_thread_axpy_and_a_one_thread_block_in_two_python_threads_share_the_count(two_threads, monkeypatch):
    """numpy's axpy on one thread (the batch-1 update where scipy's count cannot be set) and a
    one-thread block in another Python thread: the axpy leaving first does not give the library
    its 2 threads back under the block, and the count is 2 once both have left."""
    import threading
    inside, leave = threading.Event(), threading.Event()
    real = LIB.routines["axpy", np.dtype(np.float32)]

    def slow_axpy(*args):
        inside.set()
        leave.wait(5)
        real(*args)

    monkeypatch.setitem(LIB.routines, ("axpy", np.dtype(np.float32)), slow_axpy)
    y, x = np.zeros(8, np.float32), np.ones(8, np.float32)
    t = threading.Thread(target=LIB.axpy, args=(y, x, 2.0), kwargs={"one_thread": True})
    t.start()
    inside.wait(5)
    with fb.blas.one_thread():
        leave.set()
        t.join(5)                                                # the axpy has left
        seen = LIB.threads()
    assert seen == 1 and LIB.threads() == 2
    np.testing.assert_array_equal(y, 2.0)
