"""Like-with-like check: every system computes the same SGD trajectory as fbprop.

In float64, from fbprop's initial pool copied into each system, after N SGD steps on the same
batches, the parameters of PyTorch, the numpy reference and scikit-learn must agree with fbprop's
to `--tol` (max abs difference over all parameters). Run it in the benchmark's venv so that
PyTorch is there:  bench/.venv/bin/python bench/check.py   (run.py does, before timing).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--workspace", help="data from this run.py workspace (.npz); default: load Fashion-MNIST")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1: the check is not timed)")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import systems
    from common import LR, SPECS, load_data, read_workspace

    import fbprop

    cases = [("mlp", 1), ("mlp", 32), ("lenet5", 32)]
    need = args.steps * max(b for _, b in cases)
    if args.workspace:
        ws = read_workspace(args.workspace)
        x, y = ws["x"], ws["y"]
    else:
        x, y, _ = load_data(need, args.data)
    if len(y) < need:
        x, y = np.resize(x, (need, *x.shape[1:])), np.resize(y, need)
    x = x.astype(np.float64)
    try:
        import torch  # noqa: F401
        others = ["pytorch", "numpy-ref", "numpy-ger", "numpy-fold", "sklearn"]
    except ImportError:
        print("check: PyTorch is not importable here (run bench/setup.sh, then use bench/.venv/bin/python); "
              "checking the numpy reference and scikit-learn only")
        others = ["numpy-ref", "numpy-ger", "numpy-fold", "sklearn"]
    codes, table = fbprop.lenet5_codes(10), np.asarray(fbprop.LENET5_C3_TABLE)

    print(f"like-with-like check: float64, same initial pool, {args.steps} SGD steps (lr {LR}) on the same "
          f"batches; max |w_system - w_fbprop| over all parameters, tolerance {args.tol:g}")
    print(f"{'model':8} {'batch':>5}  {'system':10} {'max |Δw|':>10}  {'max |w-w0|':>10}  verdict")
    worst = 0.0
    ok = True
    for model, batch in cases:
        machine = fbprop.build_machine({**SPECS[model], "dtype": "float64"})
        init, shapes = machine.pool.x.copy(), [s for _, _, s in machine.pool.handles]
        kw = dict(init=init, shapes=shapes, lr=LR, batch=batch, codes=codes, table=table, threads=args.threads)
        for name in others:
            if not systems.supports(name, model, "train", batch):
                continue
            sut = systems.make(name, model, **kw)               # loads fbprop's initial pool
            ref = systems.make("fbprop", model, **kw)
            xs, ys = sut.native(x, y)
            for k in range(args.steps):
                s = slice(k * batch, (k + 1) * batch)
                ref.train_step(x[s], y[s])
                sut.train_step(xs[s], ys[s])
            got, want = sut.params(), ref.params()
            diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
            moved = max(float(np.abs(w - w0).max()) for w, w0 in zip(want, systems.split(init, shapes)))
            good = diff < args.tol and moved > 100 * args.tol
            ok &= good
            worst = max(worst, diff)
            print(f"{model:8} {batch:>5}  {name:10} {diff:10.2e}  {moved:10.2e}  {'ok' if good else 'DISAGREES'}")
    print(f"check: {'passed' if ok else 'FAILED'} (worst max |Δw| {worst:.2e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
