"""Could a training step split its batch between processes instead of threads? A prototype, measured.

    python bench/split_processes.py                        # LeNet-5 at batch 128, two parts
    python bench/split_processes.py --batch 256

fbprop splits a training step between Python threads (`Machine._accumulate_apart`), which share
one interpreter: `bench/core_contention.py` measures the threads losing 1.24-1.34x to each other
beyond what two processes lose. This tries the same split with a forked worker process instead,
outside the library: the machine's weights vector moved into shared memory before the fork (the
worker's copy of the machine then reads the weights the parent's optimizer writes), the worker's
gradient vector, its part of the batch and its loss in shared memory, one byte through a pipe
each way a step; both parts run as `blas.run_apart` runs them (numpy's library on one thread,
every large product in it). It prints the median ms of a step (gradient and SGD) done on the whole batch
with the library's threads, split between threads as fbprop does, and split with the worker
process, with the worker's own memory (its private pages, which a peak-RSS measure of the parent
does not see).
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import time
from pathlib import Path


def _shared(np, shape, dtype):
    """A zeroed array in an anonymous shared mapping: a forked child writes what the parent reads."""
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def _private_kib(pid: int) -> int:
    """The process's private resident memory (clean and dirty pages), in KiB; 0 where unknown."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty")))
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5", help="an fbprop model (default lenet5)")
    ap.add_argument("--batch", type=int, default=128, help="samples a step, split in two (default 128)")
    ap.add_argument("--threads", type=int, default=2, help="numpy's BLAS threads (default 2)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20, help="steps a timing (default 20)")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    args = ap.parse_args(argv)
    if args.batch < 2 or args.threads < 1 or args.repeats < 1 or args.steps < 1:
        ap.error(f"expected --batch >= 2 and --threads, --repeats, --steps >= 1, got {args.batch}, "
                 f"{args.threads}, {args.repeats} and {args.steps}")
    if not hasattr(os, "fork"):
        ap.error("expected a system with os.fork")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    from common import LR, load_data, model_spec

    import fbprop
    from fbprop import blas

    if args.model not in fbprop.models.MODELS:
        ap.error(f"--model: expected a name from {sorted(fbprop.models.MODELS)}, got {args.model!r}")
    b, h = args.batch, args.batch // 2
    x, y, note = load_data(8 * b, args.data)
    spec = model_spec(args.model)
    machine = fbprop.build_machine({**spec, "dtype": "float32"})
    machine.split_min = 1
    pool = machine.pool
    shared_x = _shared(np, pool.x.shape, pool.dtype)             # the weights, seen by both processes
    np.copyto(shared_x, pool.x)
    pool.x = shared_x
    for handle, offset, shape in pool.handles:
        pool._bind(handle, offset, shape)
    worker_dx = _shared(np, pool.x.shape, pool.dtype)
    part_x = _shared(np, (b - h, *x.shape[1:]), x.dtype)
    part_y = _shared(np, (b - h,), y.dtype)
    loss = _shared(np, (1,), np.float64)
    opt = fbprop.SGD(pool, LR)
    from_parent, to_worker = os.pipe()                          # (read end, write end)
    from_worker, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:                                                 # the worker: its copy of the machine
        os.close(to_worker)
        os.close(from_worker)
        blas._ONE.enter(apart=True)                              # as run_apart does: numpy's library on one
        pool._dx = worker_dx                                     # thread, every large product in it; the
        for handle, offset, shape in pool.handles:               # gradient where the parent reads it
            pool._bind(handle, offset, shape)
        while os.read(from_parent, 1):
            pool.clear_dx()
            loss[0] = machine.accumulate(part_x, part_y, 1.0 / b)
            pool.flush_dx()
            os.write(to_parent, b"d")
        os._exit(0)
    os.close(from_parent)
    os.close(to_parent)

    def whole(i: int) -> None:
        machine.split_training = False
        machine.gradient(x[i:i + b], y[i:i + b])
        opt.step()

    def threads(i: int) -> None:
        machine.split_training = True
        machine.gradient(x[i:i + b], y[i:i + b])
        opt.step()

    def gradient_in_processes(i: int) -> float:
        np.copyto(part_x, x[i + h:i + b])
        np.copyto(part_y, y[i + h:i + b])
        os.write(to_worker, b"g")
        pool.clear_dx()
        blas._ONE.enter(apart=True)
        try:
            total = machine.accumulate(x[i:i + h], y[i:i + h], 1.0 / b)
        finally:
            blas._ONE.exit(apart=True)
        if os.read(from_worker, 1) != b"d":
            raise SystemExit("split_processes: the worker process ended")
        pool.dx[...] += worker_dx
        return (total + loss[0]) / b

    def processes(i: int) -> None:
        gradient_in_processes(i)
        opt.step()

    variants = {"whole batch, library threads": whole, "split, two threads (fbprop)": threads,
                "split, a worker process": processes}
    times = {name: [] for name in variants}
    try:
        for run in variants.values():
            run(0)
        # the split's gradient against fbprop's own thread split, at the same weights
        process_loss = gradient_in_processes(0)
        split_dx = pool.dx.copy()
        machine.split_training = True
        thread_loss = machine.gradient(x[:b], y[:b])
        worst = float(np.abs(pool.dx - split_dx).max())
        if abs(process_loss - thread_loss) > 1e-6 * abs(thread_loss):
            raise SystemExit(f"split_processes: the worker's loss {process_loss} is not the threads' {thread_loss}")
        for _ in range(args.repeats):
            for name, run in variants.items():
                t = time.perf_counter()
                for k in range(args.steps):
                    run((k % 8) * b)
                times[name].append((time.perf_counter() - t) / args.steps * 1e3)
        private = _private_kib(pid)
    finally:
        os.close(to_worker)
        os.waitpid(pid, 0)
        os.close(from_worker)
    print(f"# {note}; {args.model} at batch {b}, {args.threads} thread(s); median of {args.repeats}")
    for name, ts in times.items():
        print(f"{name:>32} {statistics.median(ts):>8.2f} ms")
    print(f"# the worker's private memory {private / 1024:.1f} MiB; its split's gradient against the "
          f"thread split's: worst difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
