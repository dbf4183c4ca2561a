"""Where an fbprop training step spends its time: cProfile, and wall time per module and method.

    python bench/profile_fbprop.py --workload mlp-train-b1 --steps 3000
    py-spy record -o fbprop.svg -- python bench/profile_fbprop.py --workload mlp-train-b32 --no-cprofile

The per-module table wraps every leaf module's fprop/bprop (and the loss, energy, optimizer and
pool clearing) with a timer, so it shows the step the way the lecture draws it; the wrappers
add about a microsecond per call, which matters only at batch 1. Compare the total with the
numpy reference's step (run.py) to see what the library costs.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="mlp-train-b1", help="e.g. mlp-train-b32, lenet5-train-b128")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="random")
    ap.add_argument("--top", type=int, default=25, help="cProfile rows to print")
    ap.add_argument("--no-cprofile", action="store_true", help="only the per-module table (for py-spy)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this process's CPU time (time.process_time), steadier on a loaded machine")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    from common import LR, SPECS, batch_starts, load_data, parse_workload

    import fbprop
    import fbprop.network

    wl = parse_workload(args.workload)
    x, y, note = load_data(max(4096, wl.batch), args.data)
    machine = fbprop.build_machine({**SPECS[wl.model], "dtype": "float32"})
    opt = fbprop.SGD(machine.pool, LR)
    starts = batch_starts(len(y), wl.batch)

    def run(n: int) -> None:
        for k in range(n):
            i = starts[k % len(starts)]
            if wl.mode == "train":
                machine.gradient(x[i:i + wl.batch], y[i:i + wl.batch])
                opt.step()
            else:
                machine.predict(x[i:i + wl.batch], batch_size=wl.batch)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    run(10)
    t0 = clock()
    run(args.steps)
    plain = (clock() - t0) / args.steps
    print(f"{args.workload}: {plain * 1e6:.0f} µs/step unprofiled ({wl.batch / plain:,.0f} samples/s), "
          f"{args.threads} thread(s), {note}")

    totals: dict[str, float] = defaultdict(float)

    def timed(label: str, fn):
        def wrapper(*a, **k):
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                totals[label] += clock() - t
        return wrapper

    leaves = list(fbprop.network.leaves(machine.net))
    for label, m in [(f"{i:2}", m) for i, m in enumerate(leaves)] + [("  ", machine.energy), ("  ", machine.loss)]:
        who = repr(m)                                            # before the wrappers join vars(m)
        for method in ("fprop", "bprop"):
            setattr(m, method, timed(f"{label} {who}.{method}", getattr(m, method)))
    machine.pool.clear_dx = timed("   pool.clear_dx", machine.pool.clear_dx)
    opt.step = timed("   SGD.step", opt.step)
    t0 = clock()
    run(args.steps)
    wall = (clock() - t0) / args.steps
    covered = sum(totals.values()) / args.steps
    print(f"\nper module (µs/step; instrumented step {wall * 1e6:.0f} µs, of which {covered * 1e6:.0f} inside the "
          f"timed calls, {(wall - covered) * 1e6:.0f} in the glue: Machine, Cascade, State)")
    for label, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{t / args.steps * 1e6:9.1f}  {label}")

    if not args.no_cprofile:
        prof = cProfile.Profile()
        prof.enable()
        run(args.steps)
        prof.disable()
        print(f"\ncProfile, {args.steps} steps, by own time:")
        pstats.Stats(prof).strip_dirs().sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
