"""MLP inference, peeled: fbprop's predict, its inference, its network alone, the same BLAS and
numpy calls written out bare, and the numpy reference, in one process.

    taskset -c 1 python bench/infer_parts.py              # 1 thread, batch 1,024
    python bench/infer_parts.py --threads 2 --repeats 15

Each variant runs blocks of passes over the same images, the variants interleaved, and the median
µs of a pass over the repeats is printed with its ratio to the reference's `infer`. The bare
sequence makes fbprop's own calls (`blas.product`, np.add, np.tanh, np.negative, argmin) on
preallocated arrays with nothing around them, and the reference's the same with np.matmul and
argmax: their difference is the calls' and the libraries', and fbprop's predict minus the bare
sequence is what its modules, states and machine cost around the same arithmetic. "two h1 in
turn" is the bare sequence writing the first layer into each of two buffers in turn, as the
squashing in place did before it gave its buffers back (Squash.end_forward_only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1024, help="samples a pass (default 1024)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--repeats", type=int, default=9, help="interleaved blocks per variant (default 9)")
    ap.add_argument("--passes", type=int, default=40, help="passes a block (default 40)")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.repeats < 1 or args.passes < 1:
        ap.error(f"expected --batch, --threads, --repeats and --passes >= 1, got {args.batch}, "
                 f"{args.threads}, {args.repeats} and {args.passes}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    import sys_numpy
    from common import LR, SPECS, load_data

    import fbprop
    from fbprop import blas
    from fbprop.state import State

    b = args.batch
    x, _, note = load_data(3 * b, args.data)
    machine = fbprop.build_machine({**SPECS["mlp"], "dtype": "float32"})
    shapes = [shape for _, _, shape in machine.pool.handles]
    ref = sys_numpy.make("mlp", init=machine.pool.x.copy(), shapes=shapes, lr=LR)
    w1, b1, w2, b2, w3, b3 = ref.p.ws
    flat = x.reshape(len(x), -1)
    h1, h2 = np.empty((b, w1.shape[0]), np.float32), np.empty((b, w2.shape[0]), np.float32)
    s, e = np.empty((b, w3.shape[0]), np.float32), np.empty((b, w3.shape[0]), np.float32)

    def bare_fbprop(i, a=h1):
        xb = flat[i:i + b]
        blas.product(a, xb, w1.T)
        np.add(a, b1, out=a)
        np.tanh(a, out=a)
        blas.product(h2, a, w2.T)
        np.add(h2, b2, out=h2)
        np.tanh(h2, out=h2)
        blas.product(s, h2, w3.T)
        np.add(s, b3, out=s)
        np.negative(s, out=e)
        return e.argmin(1)

    other = [np.empty_like(h1), h1]

    def bare_alternating(i):
        """fbprop's calls, the first layer's product into each of two buffers in turn."""
        other.reverse()
        return bare_fbprop(i, other[0])

    def bare_reference(i):
        xb = flat[i:i + b]
        np.matmul(xb, w1.T, out=h1)
        np.add(h1, b1, out=h1)                                   # (h1 += b1)
        np.tanh(h1, out=h1)
        np.matmul(h1, w2.T, out=h2)
        np.add(h2, b2, out=h2)
        np.tanh(h2, out=h2)
        np.matmul(h2, w3.T, out=s)
        np.add(s, b3, out=s)
        return s.argmax(1)

    def network(i):
        with machine._forward_only():
            machine.network.fprop(State(x[i:i + b], requires_dx=False), machine.energies)

    variants = {
        "fbprop predict": lambda i: machine.predict(x[i:i + b], batch_size=b),
        "fbprop inference": lambda i: machine.inference(x[i:i + b]),
        "fbprop network.fprop": network,
        "fbprop's calls, bare": bare_fbprop,
        "the same, two h1 in turn": bare_alternating,
        "reference's calls, bare": bare_reference,
        "numpy reference infer": lambda i: ref.infer(x[i:i + b]),
    }
    answers = [bare_fbprop(0), bare_reference(0), machine.predict(x[:b], batch_size=b), ref.infer(x[:b])]
    if not all(np.array_equal(a, answers[0]) for a in answers):
        print("warning: the variants disagree on some answers", file=sys.stderr)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            t = time.perf_counter()
            for k in range(args.passes):
                run((k % 3) * b)
            times[name].append((time.perf_counter() - t) / args.passes * 1e6)
    ref_us = statistics.median(times["numpy reference infer"])
    print(f"# {note}; batch {b}, {args.threads} thread(s); median of {args.repeats} blocks of {args.passes} passes")
    print(f"{'variant':>26} {'µs a pass':>10} {'reference ÷':>12}")
    for name, ts in times.items():
        us = statistics.median(ts)
        print(f"{name:>26} {us:>10.0f} {ref_us / us:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
