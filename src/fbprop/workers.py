"""Worker processes that take a part of each training batch (the process split of
`Machine._accumulate_apart`).

Two Python threads splitting a batch share one interpreter: each return from a call that released
the GIL waits for the other thread to let it go, and a LeNet-5 step makes about 800 such calls a
part (`bench/core_contention.py`: the threads lose 1.24-1.34x to each other beyond what two
processes lose). A forked copy of the machine has an interpreter of its own. At each step the
parent copies the weights and the worker's part of the batch into memory both processes map
(anonymous shared mmaps made before the fork), writes (samples, weight) down a pipe, runs its own
part, and reads back the part's loss total, energies, losses and net output as raw bytes (a few
kB), both sides polling the pipe before they sleep on it (see `PartWorker._read`); the worker's
gradient lies in a shared vector the parent adds into `pool.dx`. A new worker closes every file
descriptor it inherited but its own pipe ends (see `_close_other_fds`).

A worker is a fork of the machine as it was at its first split step: like the thread split's twins
it does not see a module setting changed later (the weights, copied every step, it does see). It
ends when its `PartWorker` is collected (with its machine), when the parent closes its pipe or
dies, or with `stop`; it ignores SIGINT (Ctrl-C reaches the whole process group: the parent
decides). Forks only where `can_fork` says so: Linux, and no MPI in the process (forking an MPI
process is unsafe; a data-parallel machine splits between threads).
"""

from __future__ import annotations

import math
import mmap
import os
import select
import signal
import struct
import sys
import time
import weakref

import numpy as np

STOP_WAIT = 1.0                 # seconds a worker told to stop gets before SIGKILL
POLL = 1.0                      # seconds between the parent's checks that a busy worker lives
SPIN = 0.05                     # seconds the parent asks for the worker's answer before it sleeps on it
SPIN_ORDER = 0.002              # seconds a worker asks for the next order before it sleeps on it


class WorkerError(RuntimeError):
    """A worker process taking part of a batch ended before it answered."""


def can_fork() -> bool:
    """Whether training may split a batch with forked workers: Linux (fork keeps numpy's OpenBLAS
    usable in the child there; macOS's Accelerate does not promise it) and no MPI loaded."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and "mpi4py.MPI" not in sys.modules


def part_states(machine) -> tuple[str, ...]:
    """The states each part of a split training batch hands back to be gathered into the whole
    batch's (a twin's, or a worker's answer), in order: the energies, the losses and, where the
    machine has an energy module, the net's output."""
    return ("energies", "losses") + (("out",) if machine.energy is not None else ())


def _shared(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A zeroed array in an anonymous shared mapping: what a forked child writes, the parent reads."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(count * dtype.itemsize, 1)), dtype, count).reshape(shape)


class PartWorker:
    """A forked copy of `machine` computing, when asked, the gradient of up to `capacity` samples
    like x and y (same shape per sample, same dtypes) into the shared vector `dx`, at the weights
    the parent copied into the shared vector `w`."""

    def __init__(self, machine, capacity: int, x: np.ndarray, y: np.ndarray) -> None:
        pool = machine.pool
        self.capacity = int(capacity)
        self.kind = (x.shape[1:], x.dtype, y.shape[1:], y.dtype)
        self.w, self.dx = _shared(pool.x.shape, pool.dtype), _shared(pool.x.shape, pool.dtype)
        self.x = _shared((self.capacity, *x.shape[1:]), x.dtype)
        self.y = _shared((self.capacity, *y.shape[1:]), y.dtype)
        self.owner, self.ended, self.n = os.getpid(), None, 0
        self._inbox, self._views = bytearray(), {}
        order_r, order_w = os.pipe()                             # (read end, write end)
        reply_r, reply_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (order_r, order_w, reply_r, reply_w):
                os.close(fd)
            raise
        if pid == 0:                                             # the worker
            try:
                _close_other_fds(order_r, reply_w)
                _serve(machine, self, order_r, reply_w)
            finally:
                os._exit(0)                                      # no atexit, no finalizers, no stdio flush
        os.close(order_r)
        os.close(reply_w)
        self.pid, self.orders, self.replies = pid, order_w, reply_r
        self._finalizer = weakref.finalize(self, _stop, pid, self.owner, order_w, reply_r, False)

    def fits(self, n: int, x: np.ndarray, y: np.ndarray) -> bool:
        """Whether this worker, alive, in this process, can take n samples like x and y."""
        return (self.ended is None and self.owner == os.getpid() and n <= self.capacity
                and (x.shape[1:], x.dtype, y.shape[1:], y.dtype) == self.kind)

    def send(self, x: np.ndarray, y: np.ndarray, weight: float, weights: np.ndarray) -> None:
        """Start the gradient of (x, y) at `weights`, each term weighted by `weight`."""
        n = len(x)
        np.copyto(self.w, weights)
        np.copyto(self.x[:n], x)
        np.copyto(self.y[:n], y)
        try:
            _write_all(self.orders, _ORDER.pack(n, weight))
        except OSError as e:                                     # (its end of the pipe closed: it died)
            self._has_ended(wait=True)
            raise WorkerError(self._why()) from e
        self.n = n

    def receive(self, like: list[np.ndarray]) -> tuple[float, list[np.ndarray]] | str:
        """The answer to the last `send`: (loss total, [the part's array for each of `like`]) —
        `like` the same states of a part computed here (energies, losses, net output), which give
        each array's shape past the batch axis and its dtype; the arrays are views of a buffer
        the next `receive` overwrites. A string: the message of an exception in the worker.
        WorkerError if the worker ended."""
        try:
            head = self._read(_REPLY.size)
            kind, total = _REPLY.unpack(head)
            if kind == b"e":
                return bytes(self._read(int(total))).decode(errors="replace")
            shapes = [((self.n, *a.shape[1:]), a.dtype) for a in like]
            sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in shapes]
            body = self._read(sum(sizes))
        except OSError as e:
            self._has_ended(wait=True)
            raise WorkerError(self._why()) from e
        views = self._views.get(tuple(shapes))
        if views is None:
            offsets = np.cumsum([0] + sizes)
            views = self._views[tuple(shapes)] = [np.frombuffer(body, dtype, math.prod(shape), int(o)).reshape(shape)
                                        for (shape, dtype), o in zip(shapes, offsets)]
        return total, views

    def _read(self, size: int) -> memoryview:
        """The next `size` bytes from the worker, in a buffer kept across calls: waiting by polling
        (a sleeping process takes ~40 µs to wake on this kind of machine, twice a step) for SPIN
        seconds, then in `POLL`-second sleeps, checking that the worker lives."""
        if len(self._inbox) < size:
            self._inbox = bytearray(size)
            self._views.clear()
        view, got = memoryview(self._inbox)[:size], 0
        while got < size:
            if not _ready(self.replies, SPIN):
                while not _ready(self.replies, POLL, sleep=True):
                    if self._has_ended():
                        raise WorkerError(self._why())
            n = os.readv(self.replies, [view[got:]])
            if n == 0:
                raise OSError("the pipe from the worker closed")
            got += n
        return view

    def stop(self, kill: bool = False) -> None:
        """End the worker (at once with `kill`, else after its current step, or STOP_WAIT seconds)."""
        self.ended = self.ended or "stopped"
        if self._finalizer.detach():
            _stop(self.pid, self.owner, self.orders, self.replies, kill)

    def _has_ended(self, wait: bool = False) -> bool:
        if self.ended is None:
            deadline = time.monotonic() + (STOP_WAIT if wait else 0.0)
            while True:
                try:
                    done, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:                        # reaped by someone else
                    done, status = self.pid, None
                if done:
                    self.ended = _status(status)
                    break
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.005)
        self.stop()
        return True

    def _why(self) -> str:
        return (f"fbprop: the worker process (pid {self.pid}) taking part of the batch ended "
                f"({self.ended or 'its pipe closed'}) before it answered; the step was not taken "
                f"(set machine.split_processes = False to split between threads)")


_ORDER = struct.Struct("<qd")   # samples, weight
_REPLY = struct.Struct("<cd")   # b"o" and the loss total, then the arrays' bytes; b"e" and the message's length


def _ready(fd: int, seconds: float, sleep: bool = False) -> bool:
    """Whether fd has something to read (or has closed) within `seconds`: asked again and again
    without sleeping, or (`sleep`) in one wait."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if sleep:
        return bool(poller.poll(int(seconds * 1000)))
    deadline = time.perf_counter() + seconds
    while not poller.poll(0):
        if time.perf_counter() > deadline:
            return False
    return True


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _close_other_fds(*keep: int) -> None:
    """In a new worker: close every inherited file descriptor but stdin, stdout, stderr and
    `keep`. A pipe end the parent holds (another worker's, or one of the caller's own) would
    otherwise stay open in the worker, and whoever waits for that pipe's end would wait for this
    worker too (a parent closing its pipe to a child of its own and waiting for it: a hang)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, 1024)
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _status(status: int | None) -> str:
    if status is None:
        return "its exit status was taken by another wait"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _stop(pid: int, owner: int, orders, replies, kill: bool) -> None:
    """Close the worker's pipes and reap it (SIGKILL first with `kill`, or after STOP_WAIT); in a
    forked copy of the owner, nothing (the worker is not its child)."""
    if os.getpid() != owner:
        return
    for fd in (orders, replies):
        try:
            os.close(fd)
        except OSError:
            pass
    deadline = time.monotonic() + (0.0 if kill else STOP_WAIT)
    try:
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.002)
    except (ChildProcessError, ProcessLookupError):
        return


def _serve(machine, shared: PartWorker, orders: int, replies: int) -> None:
    """The worker's loop: a part's gradient for each (n, weight) received, until the pipe closes
    or the parent is gone."""
    from fbprop import blas
    from fbprop.distributed import SingleProcess

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = shared.owner
    machine.split_training = machine.split_inference = False
    machine.reducer = SingleProcess()
    pool, order, names = machine.pool, bytearray(_ORDER.size), part_states(machine)
    blas.apart_enter()                                           # as a part on a thread: numpy's library on one
    while True:                                                  # thread, every large product in it
        if not _ready(orders, SPIN_ORDER):
            while not _ready(orders, POLL, sleep=True):
                if os.getppid() != parent:
                    return
        if os.readv(orders, [order]) != len(order):              # (closed: the parent is done)
            return
        n, weight = _ORDER.unpack(order)
        try:
            np.copyto(pool.x, shared.w)
            pool.clear_dx()
            total = machine.accumulate(shared.x[:n], shared.y[:n], weight)
            np.copyto(shared.dx, pool.dx)
            reply = [_REPLY.pack(b"o", total)] + [np.ascontiguousarray(getattr(machine, name).x) for name in names]
        except Exception as e:                                   # the parent reruns the batch to name it
            message = f"{type(e).__name__}: {e}".encode()
            reply = [_REPLY.pack(b"e", len(message)), message]
        try:
            for part in reply:
                _write_all(replies, part)
        except OSError:
            return
