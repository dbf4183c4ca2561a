"""Two parts of a training step at once: how much do the two cores slow each other, with and without the GIL?

    python bench/core_contention.py                       # LeNet-5, parts of 64 samples
    python bench/core_contention.py --model lenet-modern --part 32

A training step split between two threads (`Machine._accumulate_apart`) runs two parts, each
fprop and bprop of half the batch on one BLAS thread. This times one such part (median ms):
alone in a process pinned to one core; in two processes at once, one per core (no GIL shared,
only the hardware: caches, memory, the host under the virtual cores); and in one process, alone,
the two parts in turn, and the two at once on two Python threads (`blas.run_apart`, the split's
own mechanism). Two processes at once against one alone is the slowdown the cores impose on each
other; two threads at once against two processes is what sharing the interpreter adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _timed(run, seconds: float) -> float:
    """Median ms of `run` over blocks of 10 calls for about `seconds`."""
    for _ in range(5):
        run()
    found, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(found) < 3:
        t = time.perf_counter()
        for _ in range(10):
            run()
        found.append((time.perf_counter() - t) / 10 * 1e3)
    return statistics.median(found)


def _part(machine, x, y, weight):
    def run() -> None:
        machine.pool.clear_dx()
        machine.accumulate(x, y, weight)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lenet5", help="an fbprop model (default lenet5)")
    ap.add_argument("--part", type=int, default=64, help="samples a part (default 64: LeNet-5 at batch 128)")
    ap.add_argument("--seconds", type=float, default=4.0, help="about this long per timing (default 4)")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)   # a process of the pair: its core
    args = ap.parse_args(argv)
    if args.part < 1 or args.seconds <= 0:
        ap.error(f"expected --part >= 1 and --seconds > 0, got {args.part} and {args.seconds}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"                                    # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import load_data, model_spec

    import fbprop

    if args.model not in fbprop.models.MODELS:
        ap.error(f"--model: expected a name from {sorted(fbprop.models.MODELS)}, got {args.model!r}")
    x, y, _ = load_data(2 * args.part, args.data)
    spec = model_spec(args.model)
    first, second = (fbprop.build_machine({**spec, "dtype": "float32"}) for _ in range(2))
    p, w = args.part, 0.5 / args.part
    one, other = _part(first, x[:p], y[:p], w), _part(second, x[p:], y[p:], w)
    if args.child is not None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {args.child % os.cpu_count()})
        print(f"{_timed(one if args.child == 0 else other, args.seconds):.3f}")
        return 0

    def child(core: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, "--model", args.model, "--part", str(p), "--seconds",
                                 str(args.seconds), "--data", args.data, "--child", str(core)],
                                stdout=subprocess.PIPE, text=True)

    def finished(procs: list[subprocess.Popen]) -> list[float]:
        outs = [proc.communicate()[0] for proc in procs]
        if any(proc.returncode for proc in procs):
            raise SystemExit(f"core_contention: a timing process failed (exit {[q.returncode for q in procs]})")
        return [float(out) for out in outs]

    alone = finished([child(0)])[0]
    pair = finished([child(0), child(1)])
    blas = fbprop.blas
    with blas.one_thread():
        in_process = _timed(one, args.seconds)
        in_turn = _timed(lambda: (one(), other()), args.seconds)
    at_once = _timed(lambda: blas.run_apart([one, other]), args.seconds)
    print(f"# {args.model}, a part of {p} samples (fprop and bprop, one BLAS thread); median ms a part")
    print(f"{'one process alone':>36} {alone:8.2f}")
    print(f"{'two processes at once, each':>36} {pair[0]:8.2f} {pair[1]:8.2f}")
    print(f"{'one part alone, in this process':>36} {in_process:8.2f}")
    print(f"{'two parts in turn, one thread':>36} {in_turn:8.2f}")
    print(f"{'two parts at once, two threads':>36} {at_once:8.2f}")
    print(f"# the cores slow each other by {statistics.mean(pair) / alone:.2f}x (processes); two threads at once "
          f"take {at_once / max(pair):.2f}x the slower process's part")
    return 0


if __name__ == "__main__":
    sys.exit(main())
