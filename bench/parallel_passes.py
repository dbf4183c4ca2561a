"""Can a second core take half of an elementwise pass? Python threads against one thread, measured.

    python bench/parallel_passes.py                 # LeNet-5's and the MLP's largest squashings
    python bench/parallel_passes.py --sizes 602112 --repeats 400

numpy runs each ufunc on one thread; BLAS runs the products on several. With 2 BLAS threads, a
training step's elementwise passes (bias, squashing, their derivatives) are what keeps it from
halving. The one way to spread them with numpy alone is Python threads: numpy releases the GIL
inside a ufunc's loop, so np.tanh on two halves in two threads can run side by side. This
prints, for arrays of each size, the median µs of np.tanh(x, out=y)

- on one thread,
- split in two halves, the second handed to a worker thread waiting on an Event (the cheapest
  hand-off the standard library offers: no pool, no futures),
- the same through a ThreadPoolExecutor of one worker,

each once with nothing before it and once right after an sgemm on the BLAS threads (as in a training step,
where the product before each squashing leaves BLAS's worker spinning on the second core for a
while). Ratios > 1 mean the split is faster. The hand-off costs tens of µs on a VM's cores, and
after a threaded product the spinning BLAS worker takes the core the split wanted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="602112,150528,38400",
                    help="float32 counts (default: LeNet-5's C1 output at batch 128, S2's, the MLP's h1 at 128)")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if any(s < 2 for s in sizes) or args.repeats < 1:
        ap.error(f"expected sizes >= 2 and --repeats >= 1, got {sizes} and {args.repeats}")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")            # before numpy loads its library
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    class Worker:
        """One thread that runs f(*args) when told to and sets `done`."""

        def __init__(self) -> None:
            self.go, self.done, self.job = threading.Event(), threading.Event(), None
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self) -> None:
            while True:
                self.go.wait()
                self.go.clear()
                f, a = self.job
                f(*a)
                self.done.set()

        def start(self, f, *a) -> None:
            self.job = f, a
            self.done.clear()
            self.go.set()

    worker, pool = Worker(), ThreadPoolExecutor(1)
    rng = np.random.default_rng(0)
    a, b = rng.random((512, 784), np.float32), rng.random((784, 300), np.float32)
    print(f"np.tanh, float32, median µs of {args.repeats}; {os.environ['OPENBLAS_NUM_THREADS']} BLAS thread(s) "
          f"for the product; {os.cpu_count()} CPUs")
    print(f"{'size':>9} {'before it':>14} {'1 thread':>9} {'Event':>7} {'ratio':>6} {'pool':>7} {'ratio':>6}")
    for n in sizes:
        x, y, h = rng.random(n, np.float32), np.empty(n, np.float32), n // 2

        def one(x=x, y=y):
            np.tanh(x, out=y)

        def event(x=x, y=y, h=h):
            worker.start(np.tanh, x[h:], y[h:])
            np.tanh(x[:h], out=y[:h])
            worker.done.wait()

        def pooled(x=x, y=y, h=h):
            f = pool.submit(np.tanh, x[h:], y[h:])
            np.tanh(x[:h], out=y[:h])
            f.result()

        for product in (False, True):
            times = {}
            for name, f in (("one", one), ("event", event), ("pool", pooled)):
                ts = []
                for _ in range(args.repeats):
                    if product:
                        a @ b
                    t = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t)
                times[name] = statistics.median(ts) * 1e6
            print(f"{n:>9} {'an sgemm' if product else 'nothing':>14} {times['one']:>9.0f} "
                  f"{times['event']:>7.0f} {times['one'] / times['event']:>6.2f} {times['pool']:>7.0f} "
                  f"{times['one'] / times['pool']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
