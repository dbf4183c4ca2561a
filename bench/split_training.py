"""Could training split its batch between threads as inference does? A prototype, measured.

    python bench/split_training.py                        # LeNet-5 at batch 128, 2 threads
    python bench/split_training.py --model mlp --batch 128

`Machine.inference` runs the parts of a batch on Python threads (`blas.run_apart`). This tries
the same for a training step outside the library: two machines with equal weights, each the
gradient of half the batch on one BLAS thread at once, the two gradients averaged into the first
machine's pool, one SGD step, the weights copied to the second. It prints the median ms of a step
done that way, of the usual step on the whole batch with the library's threads, and of the two
halves one after the other on one thread (what the split would cost if the threads never ran
at once). Not used by fbprop: it measured no faster where it would matter (README, Performance).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("lenet5", "mlp"), default="lenet5")
    ap.add_argument("--batch", type=int, default=128, help="samples a step, split in two (default 128)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads of the whole-batch step (default 2)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20, help="steps a timing (default 20)")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    args = ap.parse_args(argv)
    if args.batch < 2 or args.threads < 1 or args.repeats < 1 or args.steps < 1:
        ap.error(f"expected --batch >= 2 and --threads, --repeats, --steps >= 1, got {args.batch}, "
                 f"{args.threads}, {args.repeats} and {args.steps}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import LR, SPECS, load_data

    import fbprop
    from fbprop import blas

    b, h = args.batch, args.batch // 2
    x, y, note = load_data(8 * b, args.data)
    first = fbprop.build_machine({**SPECS[args.model], "dtype": "float32"})
    second = copy.deepcopy(first)
    opt = fbprop.SGD(first.pool, LR)
    lib = blas._numpy_blas()

    def whole(i):
        first.gradient(x[i:i + b], y[i:i + b])
        opt.step()

    def average_and_step():
        first.pool.dx[...] += second.pool.dx                     # the two halves' means, averaged
        first.pool.dx[...] *= 0.5
        opt.step()
        second.pool.x[...] = first.pool.x

    def split(i):
        blas.run_apart([lambda: first.gradient(x[i:i + h], y[i:i + h]),
                        lambda: second.gradient(x[i + h:i + b], y[i + h:i + b])])
        average_and_step()

    def halves_in_turn(i):
        before = lib.threads()
        if lib.set_threads is not None:
            lib.set_threads(1)
        first.gradient(x[i:i + h], y[i:i + h])
        second.gradient(x[i + h:i + b], y[i + h:i + b])
        if lib.set_threads is not None:
            lib.set_threads(before)
        average_and_step()

    variants = {"whole batch, library threads": whole, "two halves on two threads": split,
                "two halves in turn, one thread": halves_in_turn}
    times = {name: [] for name in variants}
    for run in variants.values():
        run(0)
    for _ in range(args.repeats):
        for name, run in variants.items():
            t = time.perf_counter()
            for k in range(args.steps):
                run((k % 8) * b)
            times[name].append((time.perf_counter() - t) / args.steps * 1e3)
    print(f"# {note}; {args.model} at batch {b}, {args.threads} thread(s); median of {args.repeats}")
    for name, ts in times.items():
        print(f"{name:>32} {statistics.median(ts):>8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
