"""How close to the GEMM ceiling an MLP step can get with numpy: the step's products alone (the
ceiling `bench/run.py` reports) against the passes every implementation of the net needs besides
them, each timed in a tight loop on warm buffers, in one process.

    python bench/gemm_floor.py                  # batch 128, 1 thread
    python bench/gemm_floor.py --batch 32 --threads 2

The passes: the hidden layers' bias adds and tanh, the last layer's bias, the softmax gradient
(max, subtract, exp, sum, divide, the label's −1), the tanh derivatives 1 − y² times ∂E/∂y, the
three bias sums and the SGD update (one axpy over every weight). Inside a real step each call
costs more than here (the products evict the interpreter's caches), so the printed floor is a
lower bound: a step cannot reach more than products ÷ (products + floor) of the ceiling.
"""

from __future__ import annotations

import argparse
import os
import sys
import timeit
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--repeats", type=int, default=9, help="best of this many timings (default 9)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error(f"expected --batch >= 1 and --repeats >= 1, got {args.batch} and {args.repeats}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                  # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    from common import MLP_SIZES, mlp_flops
    from scipy.linalg import blas
    from systems import GemmCeiling

    n, (k0, k1, k2, k3) = args.batch, MLP_SIZES
    rng = np.random.default_rng(0)
    f32 = np.float32
    weights = sum(a * b + b for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:]))
    ceiling = GemmCeiling("mlp", np.zeros(weights, f32), None, n)
    x = rng.standard_normal((n, k0)).astype(f32)
    h1, h2, s = (rng.standard_normal((n, k)).astype(f32) for k in (k1, k2, k3))
    b1, b2, b3 = (rng.standard_normal(k).astype(f32) for k in (k1, k2, k3))
    t1, t2 = np.empty_like(h1), np.empty_like(h2)
    gb1, gb2, gb3 = (np.empty(k, f32) for k in (k1, k2, k3))
    m, z = np.empty((n, 1), f32), np.empty((n, 1), f32)
    w, g = rng.standard_normal(weights).astype(f32), rng.standard_normal(weights).astype(f32)
    rows, y = np.arange(n), rng.integers(0, k3, n)

    def softmax_gradient() -> None:
        np.max(s, axis=1, keepdims=True, out=m)
        np.subtract(s, m, out=s)
        np.exp(s, out=s)
        np.sum(s, axis=1, keepdims=True, out=z)
        np.divide(s, z, out=s)
        s[rows, y] -= 1

    def derivatives() -> None:
        for h, t in ((h1, t1), (h2, t2)):
            np.multiply(h, h, out=t)
            np.subtract(1, t, out=t)
            np.multiply(t, h, out=t)

    passes = {
        "bias adds and tanh, hidden layers": lambda: (np.add(h1, b1, out=h1), np.tanh(h1, out=h1),
                                                      np.add(h2, b2, out=h2), np.tanh(h2, out=h2)),
        "last layer's bias": lambda: np.add(s, b3, out=s),
        "softmax gradient": softmax_gradient,
        "tanh derivatives × ∂E/∂y": derivatives,
        "three bias sums": lambda: (np.add.reduce(h1, axis=0, out=gb1), np.add.reduce(h2, axis=0, out=gb2),
                                    np.add.reduce(s, axis=0, out=gb3)),
        "SGD update (one axpy)": lambda: blas.saxpy(g, w, w.size, -0.01),
    }

    def best(fn) -> float:
        number = 20
        return min(timeit.repeat(fn, number=number, repeat=args.repeats)) / number * 1e6

    products = best(lambda: ceiling.train_step(x, y))
    print(f"MLP {'-'.join(map(str, MLP_SIZES))}, batch {n}, float32, {args.threads} thread(s); µs, best of "
          f"{args.repeats}")
    print(f"{'the products (the GEMM ceiling)':36s} {products:8.1f}   {mlp_flops(n) / products / 1e3:.1f} GFLOP/s")
    floor = 0.0
    for name, fn in passes.items():
        t = best(fn)
        floor += t
        print(f"{name:36s} {t:8.1f}")
    print(f"{'the passes besides the products':36s} {floor:8.1f}   (90% of the ceiling leaves "
          f"{products / 0.9 - products:.1f})")
    print(f"best possible step: {100 * products / (products + floor):.0f}% of the GEMM ceiling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
