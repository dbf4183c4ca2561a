"""Gradient steps split by samples with forked worker processes (Machine._accumulate_in_processes,
fbprop.workers)."""

import copy
import gc
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import fbprop as fb
from fbprop.distributed import SingleProcess
from fbprop.workers import WorkerError, can_fork
from splitting import LIB, batch, least_transient, lenet, needs_thread_count, parts_one_thread

pytestmark = [needs_thread_count, pytest.mark.skipif(not can_fork(), reason="the process split needs Linux's fork")]


def _gone(pid: int, seconds: float = 10.0) -> bool:
    """Whether process `pid` ends (or is a zombie nobody reaped) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.02)
    return False


def _own_part_first(machine, first, x, y) -> None:
    """A gradient step on (x, y) whose own part (the parent's, after the worker's order went out)
    first calls `first`."""
    twin = machine._train_twins[0]
    real = twin.accumulate

    def own_part(*args):
        first()
        return real(*args)

    twin.accumulate = own_part
    try:
        machine.gradient(x, y)
    finally:
        del twin.accumulate


def _stepped(seed: int):
    """A LeNet-5 machine splitting with a worker after one gradient step on a batch of 40:
    (machine, x, y, that step's gradient, the worker's pid)."""
    machine, (x, y) = lenet(processes=True), batch(40, seed)
    machine.gradient(x, y)
    return machine, x, y, machine.pool.dx.copy(), machine._workers[0].pid


def test_a_step_runs_its_second_part_in_a_worker_process_with_the_thread_splits_bits(two_threads):
    machine, (x, y) = lenet(processes=True), batch(37)
    threads = copy.deepcopy(machine)
    threads.split_processes = False
    loss = machine.gradient(x, y)
    (worker,) = machine._workers
    assert worker.pid != os.getpid() and not _gone(worker.pid, 0.1)
    assert threads._workers is None and LIB.threads() == 2 and not fb.blas._APART[0]
    (d0, e0, l0, o0, t0), (d1, e1, l1, o1, t1) = parts_one_thread(machine, x, y, [0, 18, 37])
    np.testing.assert_array_equal(machine.pool.dx, d0 + d1)
    assert loss == (t0 + t1) / 37
    assert threads.gradient(x, y) == loss
    np.testing.assert_array_equal(threads.pool.dx, machine.pool.dx)
    # what the trainer's meter reads: the whole batch's energies, losses, net output and answers
    np.testing.assert_array_equal(machine.energies.x, np.concatenate([e0, e1]))
    np.testing.assert_array_equal(machine.losses.x, np.concatenate([l0, l1]))
    np.testing.assert_array_equal(machine.out.x, np.concatenate([o0, o1]))
    np.testing.assert_array_equal(machine.answers(), np.concatenate([e0, e1]).argmin(1))


def test_sgd_steps_split_in_processes_are_those_split_in_threads_and_the_worker_reads_new_weights(two_threads,
                                                                                                monkeypatch):
    # a long axpy takes numpy's pool when a product ran there since the last one (blas.add_scaled),
    # and the two libraries' axpy can differ in the last bit: both machines start from the same state
    monkeypatch.setattr(fb.blas, "_POOL_AWAKE", [False])
    split, (x, y) = lenet(processes=True), batch(40, 1)
    threads = copy.deepcopy(split)
    threads.split_processes = False
    opts = [fb.SGD(m.pool, 0.05) for m in (split, threads)]
    for _ in range(4):                                           # in turn: the SGD step's route (so its
        for m, opt in zip((split, threads), opts):               # bits) depends on what ran before it
            m.gradient(x, y)
            opt.step()
    assert np.abs(split.pool.x - lenet().pool.x).max() > 1e-3    # the weights moved
    np.testing.assert_array_equal(split.pool.x, threads.pool.x)
    split.gradient(x, y)
    (d0, *_), (d1, *_) = parts_one_thread(split, x, y, [0, 20, 40])
    np.testing.assert_array_equal(split.pool.dx, d0 + d1)


def test_full_gradient_and_the_regularizer_with_a_worker(two_threads):
    machine, (x, y) = lenet(processes=True), batch(32, 2)
    machine.regularizer, machine.n_train = fb.L2(0.5), 100
    threads = copy.deepcopy(machine)
    threads.split_processes = False
    for m in (machine, threads):
        m.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, threads.pool.dx)
    value = machine.full_gradient(x, y, batch_size=16)           # two batches of 16, each split in 2
    assert value == threads.full_gradient(x, y, batch_size=16)
    np.testing.assert_array_equal(machine.pool.dx, threads.pool.dx)


def test_what_does_not_fork_a_worker(two_threads, monkeypatch):
    x, y = batch(40, 3)
    off, small, one = lenet(processes=True), lenet(processes=True), lenet(processes=True)
    off.split_processes = False
    small.split_min_processes = 21
    mlp = fb.build_machine({"model": "mlp", "hidden": [20], "input_shape": [1, 28, 28], "n_classes": 10})
    mlp.split_min_processes = 8
    for m in (off, small, mlp):
        m.gradient(x, y)
        assert not m._workers, m
    LIB.set_threads(1)
    one.gradient(x, y)
    LIB.set_threads(2)
    assert not one._workers
    half = lenet(processes=True)                                 # one of two MPI processes: threads
    half.reducer = type("Half", (SingleProcess,), {"size": 2})()
    half.gradient(x, y)
    assert not half._workers and len(half._train_twins) == 2
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", object())     # MPI loaded: no fork
    mpi = lenet(processes=True)
    mpi.gradient(x, y)
    assert not mpi._workers and len(mpi._train_twins) == 2


def test_an_error_in_the_workers_part_names_the_whole_batch_and_the_worker_goes_on(two_threads):
    machine, x, y, before, pid = _stepped(4)
    bad = y.copy()
    bad[30] = 10                                                 # a label out of range, in the worker's half
    with pytest.raises(ValueError) as split_error:
        machine.gradient(x, bad)
    machine.split_training = False
    with pytest.raises(ValueError) as whole_error:
        machine.gradient(x, bad)
    assert str(split_error.value) == str(whole_error.value)
    machine.split_training = True
    machine.gradient(x, y)                                       # the same worker, still in step
    assert machine._workers[0].pid == pid
    np.testing.assert_array_equal(machine.pool.dx, before)
    with pytest.raises(ValueError, match=r"\(40, 1, 27, 28\)"):  # a bad shape: the parts fail here too
        machine.gradient(x[:, :, :27], y)
    machine.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, before)


def test_a_killed_worker_fails_one_step_in_one_line_and_the_next_forks_another(two_threads):
    machine, x, y, expected, pid = _stepped(5)
    os.kill(pid, signal.SIGKILL)
    assert _gone(pid)                                            # dead before the step: its pipe closed
    with pytest.raises(WorkerError, match=rf"worker process \(pid {pid}\).*ended \(killed by SIGKILL\)"):
        machine.gradient(x, y)
    assert not os.path.exists(f"/proc/{pid}")                    # reaped, not a zombie of ours
    machine.gradient(x, y)
    assert machine._workers[0].pid != pid
    np.testing.assert_array_equal(machine.pool.dx, expected)
    # killed while the parent runs its own part, after the order went out (stopped first, so that it
    # cannot answer before it dies)
    victim = machine._workers[0].pid
    os.kill(victim, signal.SIGSTOP)
    with pytest.raises(WorkerError, match="killed by SIGKILL"):
        _own_part_first(machine, lambda: os.kill(victim, signal.SIGKILL), x, y)
    machine.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, expected)


def test_an_interrupt_in_the_parents_part_stops_the_worker_and_ctrl_c_does_not_reach_it(two_threads):
    machine, x, y, expected, pid = _stepped(6)
    os.kill(pid, signal.SIGINT)                                  # Ctrl-C reaches the whole process group
    machine.gradient(x, y)
    assert machine._workers[0].pid == pid
    np.testing.assert_array_equal(machine.pool.dx, expected)

    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _own_part_first(machine, interrupt, x, y)
    assert _gone(pid, 2.0) and machine._workers is None
    machine.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, expected)


def test_copies_pickles_and_replacements_make_new_workers_and_a_collected_machine_ends_its_own(two_threads):
    machine, x, y, _, pid = _stepped(7)

    def other_worker(make) -> int:
        other = make(machine)
        assert other._workers is None
        other.gradient(x, y)
        assert other._workers[0].pid not in (pid, os.getpid())
        np.testing.assert_array_equal(other.pool.dx, machine.pool.dx)
        return other._workers[0].pid

    for make in (copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))):
        gone = other_worker(make)
        gc.collect()
        assert _gone(gone, 5.0)
    machine.loss = type(machine.loss)(beta=0.5)                  # another loss: another worker, with it
    machine.gradient(x, y)
    assert _gone(pid, 5.0) and machine._workers[0].pid != pid
    threads = copy.deepcopy(machine)
    threads.split_processes = False
    threads.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, threads.pool.dx)
    pid = machine._workers[0].pid
    machine.pool.x = machine.pool.x.copy()                       # (as growing the pool would)
    machine.pool.__setstate__(machine.pool.__getstate__())
    machine.gradient(x, y)
    assert _gone(pid, 5.0) and machine._workers[0].pid != pid
    pid = machine._workers[0].pid
    machine.gradient(*batch(80, 8))                              # larger parts: a larger worker
    assert _gone(pid, 5.0) and machine._workers[0].capacity == 40
    pid = machine._workers[0].pid
    machine.gradient(x, y)                                       # smaller ones: the same
    assert machine._workers[0].pid == pid


def test_a_pipe_of_the_callers_own_reaches_its_end_with_a_worker_alive(two_threads):
    # the worker closes what it inherits: a child of the caller's, reading a pipe the caller made
    # before the worker was forked, sees that pipe's end when the caller closes it
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(write)
        while os.read(read, 1):
            pass
        os._exit(0)
    os.close(read)
    machine, (x, y) = lenet(processes=True), batch(40, 9)
    machine.gradient(x, y)
    os.close(write)
    assert _gone(child, 10.0), "the caller's child never saw its pipe close"
    os.waitpid(child, 0)


def test_a_worker_ends_with_its_parent_process(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[1])
        import numpy as np
        from splitting import LIB, batch, lenet
        LIB.set_threads(2)
        machine = lenet(processes=True)
        machine.gradient(*batch(40))
        print(machine._workers[0].pid, flush=True)
        os._exit(0)                                              # no finalizers: the worker must notice
    """)
    p = subprocess.run([sys.executable, "-c", script, os.path.dirname(__file__)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert _gone(int(p.stdout.split()[0]), 10.0)


def test_a_warm_step_split_with_a_worker_allocates_no_array(two_threads):
    def transient(n: int) -> int:
        machine, (x, y) = lenet(processes=True), batch(n, 10)
        opt = fb.SGD(machine.pool, 0.01)
        for _ in range(4):
            machine.gradient(x, y)
            opt.step()
        np.setbufsize(16)                                        # (else numpy's own 80 kB of ufunc buffers,
        try:                                                     # see test_allocation)
            return least_transient(machine, x, y, opt, 6)
        finally:
            np.setbufsize(old)

    old = np.getbufsize()

    small, large = transient(64), transient(512)
    assert large < 8 * 1024 and large - small < 512, f"{small} bytes transient at batch 64, {large} at 512"


def test_a_failed_fork_warns_once_and_the_split_goes_to_threads(two_threads, monkeypatch):
    machine, (x, y) = lenet(processes=True), batch(40, 11)
    threads = copy.deepcopy(machine)
    threads.split_processes = False

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.warns(RuntimeWarning, match=r"could not fork a worker process .*Resource temporarily unavailable"):
        loss = machine.gradient(x, y)
    assert machine.split_processes is False and not machine._workers
    assert len(os.listdir("/proc/self/fd")) == fds                # the pipes made for it closed
    assert len(machine._train_twins) == 2                        # split between threads
    assert loss == threads.gradient(x, y)
    np.testing.assert_array_equal(machine.pool.dx, threads.pool.dx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        machine.gradient(x, y)                                   # once
