"""Training steps split by samples, in worker processes and between threads, against whole-batch steps.

    python bench/split_training.py                               # 2 threads, LeNet-5 and the MLP
    python bench/split_training.py --models lenet5 --batches 64,128,256 --split-min 32

With numpy's library on T ≥ 2 threads, `Machine.gradient` cuts a batch of a net with
convolutions into T parts (at least `split_min` samples each) and runs each part's fprop and
bprop at once, one library thread each: the first here, the others in forked worker processes
(`split_processes`, the default on Linux) or on Python threads (`Machine._accumulate_apart`).
This times a step (`gradient` and one SGD step) each way in one process, alternating, over the
same batches, for each model and batch, and prints the median ms of each and the ratios of the
whole batch's time to each split's (> 1: the split is faster), with whether the machine splits
that model and batch at all, each way (`split_min_processes` and `split_min` samples a part).
--split-min sets both thresholds for the run; --force splits every model (an MLP is not split:
see the README's Performance section). Each timing starts --gap seconds after the last: numpy's
OpenBLAS threads keep spinning for a while after a call on two threads (the whole batch's), and
the way timed next would share the cores with them (LeNet-5 at batch 128, the process split:
16.6 ms a step without the pause, 13.7 with it; a training run does not switch ways).
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
    ap.add_argument("--batches", default="32,128", help="comma list of batch sizes (default 32,128)")
    ap.add_argument("--threads", type=int, default=2, help="numpy's BLAS threads (default 2)")
    ap.add_argument("--repeats", type=int, default=7, help="alternating pairs of timings (default 7)")
    ap.add_argument("--seconds", type=float, default=0.3, help="about this long per timing (default 0.3)")
    ap.add_argument("--split-min", type=int, default=None,
                    help="samples a part at least, both ways (default: fbprop's, 16 in processes, 64 in threads)")
    ap.add_argument("--gap", type=float, default=0.3, help="seconds of pause before each timing (default 0.3)")
    ap.add_argument("--force", action="store_true", help="split every model, whether or not it gains")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if any(b < 1 for b in batches) or args.threads < 1 or args.repeats < 1 or \
            (args.split_min is not None and args.split_min < 1) or args.gap < 0:
        ap.error(f"expected batches >= 1, --threads, --repeats and --split-min >= 1 and --gap >= 0, got "
                 f"{batches}, {args.threads}, {args.repeats}, {args.split_min} and {args.gap}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import LR, load_data, model_spec, workers_mb

    import fbprop

    models = args.models.split(",")
    unknown = [m for m in models if m not in fbprop.models.MODELS]
    if unknown:
        ap.error(f"--models: expected names from {sorted(fbprop.models.MODELS)}, got {unknown}")
    x, y, note = load_data(3 * max(batches), args.data)
    threads = fbprop.blas.apart_threads()
    print(f"# {note}; numpy's library on {threads} threads; SGD steps; median of {args.repeats}")
    ways = {"processes": (True, True), "threads": (True, False), "whole": (False, False)}
    print(f"{'model':>14} {'batch':>6} {'splits':>10} " + " ".join(f"{w + ' ms':>12}" for w in ways)
          + f" {'÷ processes':>12} {'÷ threads':>10}")
    for name in models:
        spec = model_spec(name)
        machine = fbprop.build_machine({**spec, "dtype": "float32"})
        if args.split_min is not None:
            machine.split_min = machine.split_min_processes = args.split_min
        if args.force:
            machine._splits_step = (machine.loss, True)             # (as `_splits_steps` keeps it)
        opt = fbprop.SGD(machine.pool, LR)

        def step(i: int, b: int, machine=machine, opt=opt) -> None:
            machine.gradient(x[i:i + b], y[i:i + b])
            opt.step()

        for b in batches:
            splits = "/".join("yes" if machine._splits_steps() and min(threads, b // least) >= 2 else "no"
                              for least in (machine.split_min_processes, machine.split_min))
            times = {way: [] for way in ways}
            for machine.split_training, machine.split_processes in ways.values():
                step(0, b)
            t = time.perf_counter()
            step(0, b)
            n = max(2, int(args.seconds / max(time.perf_counter() - t, 1e-6)))
            for _ in range(args.repeats):
                for way, (machine.split_training, machine.split_processes) in ways.items():
                    time.sleep(args.gap)
                    t = time.perf_counter()
                    for k in range(n):
                        step((k % 3) * b, b)
                    times[way].append((time.perf_counter() - t) / n * 1e3)
            ms = {way: statistics.median(ts) for way, ts in times.items()}
            print(f"{name:>14} {b:>6} {splits:>10} "
                  + " ".join(f"{ms[w]:>12.2f}" for w in ways)
                  + f" {ms['whole'] / ms['processes']:>12.2f} {ms['whole'] / ms['threads']:>10.2f}")
        forked = machine.__dict__.get("_workers")
        if forked:
            print(f"# {name}: {len(forked)} worker process(es), private memory {workers_mb(machine):.1f} "
                  f"MiB (at the last batch's capacity)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
