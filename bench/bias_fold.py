"""A squashing's bias added by the product before it (gemm with β = 1) against a product then an
add, the way fbprop's inference folds it (`Cascade._folded`), in one process.

    taskset -c 1 python bench/bias_fold.py              # 1 thread, batch 1,024, the MLP's layers
    python bench/bias_fold.py --threads 2
    python bench/bias_fold.py --checkpoint runs/RUN/best.npz   # a trained net's answers, folded or not

OpenBLAS zeroes C before a product with β = 0, so `h = x Wᵀ; h += b` writes h twice and reads
it once more; `h = b; h += x Wᵀ` (b copied, then gemm with β = 1) writes it once. This times,
for each layer of the 784-300-100-10 MLP at the given batch (median µs of tight loops,
float32), the product then the add, and the copy then the product with β = 1 (scipy's sgemm
with one thread, as fbprop routes it; numpy's library's cblas gemm with more), then the whole
inference pass (three layers, two tanh) written out bare both ways. With --checkpoint, it loads
a run's checkpoint (`fbprop train` writes them) and compares the test images' answers and
energies of its machine with the fold and without.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1024, help="samples a product (default 1024)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--repeats", type=int, default=9, help="timings a variant, the median printed (default 9)")
    ap.add_argument("--checkpoint", help="a checkpoint of `fbprop train` (its answers with the fold and without)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.threads < 1 or args.repeats < 1:
        ap.error(f"expected --batch, --threads and --repeats >= 1, got {args.batch}, {args.threads}, {args.repeats}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.checkpoint:
        return compare_answers(args.checkpoint)
    import numpy as np
    from common import MLP_SIZES
    from scipy.linalg import blas as sblas

    from fbprop import blas

    nb, n, rng = blas._numpy_blas(), args.batch, np.random.default_rng(0)
    if args.threads == 1:                                        # scipy's, as fbprop routes them on one thread
        def product(h, a, w):
            sblas.sgemm(1.0, w.T, a.T, 0.0, h.T, 1, 0, 1)

        def plus(h, a, w):
            sblas.sgemm(1.0, w.T, a.T, 1.0, h.T, 1, 0, 1)
    else:                                                        # numpy's library, as with more threads
        def product(h, a, w):
            np.matmul(a, w.T, out=h)

        def plus(h, a, w):
            nb.gemm(h, a, w.T, 1.0, 1.0)
    sizes = MLP_SIZES
    ws = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32) for i, o in zip(sizes, sizes[1:])]
    bs = [rng.standard_normal(o).astype(np.float32) for o in sizes[1:]]
    hs = [np.empty((n, o), np.float32) for o in sizes[1:]]
    x = rng.random((n, sizes[0]), dtype=np.float32)

    def best(f, number):
        return statistics.median(timeit.repeat(f, number=number, repeat=args.repeats)) / number * 1e6

    print(f"batch {n}, {args.threads} thread(s), float32; median µs of {args.repeats} timings")
    print(f"{'layer':>12} {'product, add':>13} {'copy, β = 1':>12} {'ratio':>6}")
    def layer(fold: bool, a, w, b, h) -> None:
        """h = a Wᵀ + b, the product then the add, or the copy then the product with β = 1."""
        if fold:
            np.copyto(h, b)
            plus(h, a, w)
        else:
            product(h, a, w)
            np.add(h, b, out=h)

    for a, w, b, h in zip([x, *hs[:-1]], ws, bs, hs):
        number = max(3, int(5e7 / (n * w.size)))
        layer(False, a, w, b, h)
        want = h.copy()
        layer(True, a, w, b, h)
        if not np.allclose(h, want, rtol=1e-5, atol=1e-5):
            print("bias_fold: the two ways disagree", file=sys.stderr)
            return 1
        t0, t1 = (best(lambda fold=fold, a=a, w=w, b=b, h=h: layer(fold, a, w, b, h), number) for fold in (False, True))
        print(f"{w.shape[1]:>5} → {w.shape[0]:<4} {t0:>13.1f} {t1:>12.1f} {t0 / t1:>6.3f}")

    def bare(fold: bool) -> None:
        a = x
        for k, (w, b, h) in enumerate(zip(ws, bs, hs)):
            layer(fold, a, w, b, h)
            if k < len(ws) - 1:
                np.tanh(h, out=h)
            a = h
    number = max(3, int(1e8 / (n * sum(w.size for w in ws))))
    pairs = [(best(lambda: bare(False), number), best(lambda: bare(True), number)) for _ in range(3)]
    t0, t1 = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    print(f"{'whole pass':>12} {t0:>13.1f} {t1:>12.1f} {t0 / t1:>6.3f}   (> 1: the fold is faster)")
    return 0


def compare_answers(path: str) -> int:
    import numpy as np

    import fbprop as fb
    from fbprop.checkpoint import load_checkpoint
    from fbprop.data import load_dataset

    spec, params = load_checkpoint(path)[:2]
    machine = fb.build_machine(spec)
    machine.pool.x[...] = params
    data = load_dataset(spec.get("dataset", "fashion-mnist"))
    x = data.test.x
    folded = [c for c in _cascades(machine.network) if c._fold_at]
    answers, energies = machine.predict(x), machine.energies_of(x)
    pairs = sum(type(m).__name__ == "_Fold" for c in folded if c._folding for m, _, _ in c._folding[2])
    for c in folded:
        c._fold_at, c._folding = (), None                        # the same machine, nothing folded
    plain, plain_e = machine.predict(x), machine.energies_of(x)
    if not pairs or any(c._folding is not None for c in folded):
        print(f"bias_fold: expected inference to fold, then not to ({pairs} pairs folded)", file=sys.stderr)
        return 1
    print(f"{path}: {pairs} Linear and squashing pairs folded; with the fold and without, "
          f"{int((answers != plain).sum())} of {len(x)} test answers differ, energies at most "
          f"{float(np.abs(energies - plain_e).max()):.3g} apart")
    return 0


def _cascades(module):
    import fbprop as fb
    if isinstance(module, fb.Cascade):
        yield module
    for m in getattr(module, "modules", None) or []:
        if isinstance(m, fb.Module):
            yield from _cascades(m)


if __name__ == "__main__":
    sys.exit(main())
