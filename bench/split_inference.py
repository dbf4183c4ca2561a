"""Inference split by samples between threads, against one pass: fbprop's own switch, measured.

    python bench/split_inference.py                              # 2 threads, LeNet-5 and the MLP
    python bench/split_inference.py --models lenet5,lenet-wide --batches 128,1024 --threads 2

With numpy's library on T ≥ 2 threads, `Machine.inference` (predict, energies_of, evaluation)
runs a batch of a net with convolutions in T parts on T Python threads, each part's products on
one thread of the library (`Machine._fprop_apart`, `blas.run_apart`). This times `predict` with
`split_inference` on and off in one process, alternating, over the same images, for each model
and batch, and prints the median µs of each and their ratio (> 1: the split is faster), with
whether the machine splits that model at all (an MLP is not split: it measured slower). With
--force the split is tried on every model (to see why it is not used where it is not).
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
    ap.add_argument("--models", default="lenet5,mlp", help="comma list of fbprop models (default lenet5,mlp)")
    ap.add_argument("--batches", default="128,1024", help="comma list of batch sizes (default 128,1024)")
    ap.add_argument("--threads", type=int, default=2, help="numpy's BLAS threads (default 2)")
    ap.add_argument("--repeats", type=int, default=7, help="alternating pairs of timings (default 7)")
    ap.add_argument("--seconds", type=float, default=0.3, help="about this long per timing (default 0.3)")
    ap.add_argument("--force", action="store_true", help="split every model, whether or not it gains")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if any(b < 1 for b in batches) or args.threads < 1 or args.repeats < 1:
        ap.error(f"expected batches >= 1, --threads >= 1 and --repeats >= 1, got {batches}, "
                 f"{args.threads} and {args.repeats}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import load_data, model_spec

    import fbprop

    models = args.models.split(",")
    unknown = [m for m in models if m not in fbprop.models.MODELS]
    if unknown:
        ap.error(f"--models: expected names from {sorted(fbprop.models.MODELS)}, got {unknown}")
    x, _, note = load_data(3 * max(batches), args.data)
    print(f"# {note}; numpy's library on {fbprop.blas.apart_threads()} threads; median of {args.repeats}")
    print(f"{'model':>14} {'batch':>6} {'splits':>6} {'split µs':>10} {'one pass µs':>12} {'ratio':>6}")
    for name in models:
        spec = model_spec(name)
        machine = fbprop.build_machine({**spec, "dtype": "float32"})
        splits = machine._splits()
        if args.force:
            machine._splits_net = True
        for b in batches:
            times = {True: [], False: []}
            machine.predict(x[:b], batch_size=b)
            t = time.perf_counter()
            machine.predict(x[:b], batch_size=b)
            n = max(2, int(args.seconds / max(time.perf_counter() - t, 1e-6)))
            for _ in range(args.repeats):
                for split in (True, False):
                    machine.split_inference = split
                    machine.predict(x[:b], batch_size=b)
                    t = time.perf_counter()
                    for k in range(n):
                        i = (k % 3) * b
                        machine.predict(x[i:i + b], batch_size=b)
                    times[split].append((time.perf_counter() - t) / n * 1e6)
            on, off = statistics.median(times[True]), statistics.median(times[False])
            print(f"{name:>14} {b:>6} {'yes' if splits else 'no':>6} {on:>10.0f} {off:>12.0f} {off / on:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
