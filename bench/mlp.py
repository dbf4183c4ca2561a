"""fbprop alone: training throughput of the 784-300-100-10 tanh MLP at batch sizes 1, 32 and 128.

    python bench/mlp.py                  # Fashion-MNIST, 3 s per batch size
    python bench/mlp.py --seconds 1 --batches 1,32 --threads 1

One step is `machine.gradient(x, y)` then `SGD(machine.pool, lr).step()`, in float32, on
consecutive batches of a slice of Fashion-MNIST's training split (random data, with a note, when
the data set is not installed). For the comparison with other systems, use run.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per batch size (default 3)")
    ap.add_argument("--batches", default="1,32,128", help="comma-separated batch sizes (default 1,32,128)")
    ap.add_argument("--samples", type=int, default=8192, help="size of the data slice the batches cycle over")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads (default 2)")
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy is imported

    from common import MLP_SPEC, batch_starts, blas_report, load_data, measure, peak_rss_mb

    import fbprop

    batches = [int(b) for b in args.batches.split(",")]
    x, y, note = load_data(max(args.samples, max(batches)), args.data)
    print(f"fbprop {fbprop.__version__} MLP 784-300-100-10 tanh, float32, SGD lr {args.lr}, "
          f"{args.threads} BLAS threads; data: {note}")
    for b in blas_report():
        print(f"BLAS: {b['prefix']} {b['version']}, kernel {b['architecture']}, {b['num_threads']} threads")
    print(f"{'batch':>5} {'samples/s':>12} {'steps':>8} {'seconds':>8}")
    for batch in batches:
        machine = fbprop.build_machine({**MLP_SPEC, "dtype": "float32"})
        opt = fbprop.SGD(machine.pool, args.lr)

        def step(i, machine=machine, opt=opt, batch=batch):
            machine.gradient(x[i:i + batch], y[i:i + batch])
            opt.step()

        m = measure(step, batch_starts(len(y), batch), batch, args.seconds)
        print(f"{batch:>5} {m['samples_per_s']:>12,.0f} {m['steps']:>8} {m['seconds']:>8.2f}", flush=True)
    print(f"peak RSS {peak_rss_mb():.0f} MiB; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
