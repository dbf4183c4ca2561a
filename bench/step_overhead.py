"""The fixed cost of a training step: fbprop and the numpy reference on the benchmark's MLP and on
the same net shrunk until nothing is left to compute, in one process, in alternating blocks.

    python bench/step_overhead.py                     # batch 1 and 32, 1 thread (about a minute)
    python bench/step_overhead.py --batches 1 --threads 2

The shrunk net (4-3-3-10: the MLP's modules, energy, loss and SGD step on a few numbers) takes a
step that is all per-call cost: Python's calls and numpy's own cost per call. Its gap between
fbprop and the reference, set beside the gap on the real 784-300-100-10 net, says how much of the
latter is the framework's fixed cost a step (the modules' fprop/bprop calls, their checks, the
states and the lazy clears) rather than arithmetic. The Python function calls a step makes are
counted with sys.setprofile (numpy's ufuncs, which that hook does not see, are not among them).
Each system's time is its fastest block (a fixed cost shows least disturbed there; machines
shared with other jobs add to some blocks, never subtract).

A third system, the contract floor (`bench/sys_floor.py`), is the same MLP written as modules
exchanging states with fbprop's design — an fprop and a bprop per module, a loss module, one flat
gradient vector and one SGD axpy — and nothing else: its gap to the reference is what the module
contract itself costs, and fbprop's gap to it what fbprop's glue costs (checks, layouts, lazy
clears, product routing, the network and machine layers).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

TINY = (4, 3, 3, 10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--blocks", type=int, default=10, help="pairs of blocks per net and batch (default 10)")
    ap.add_argument("--seconds", type=float, default=0.3, help="about this long per block (default 0.3)")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist",
                    help="the 784 net's batches (default fashion-mnist; random data when it is not installed)")
    args = ap.parse_args(argv)
    batches = parse_batches(args.batches)
    if not batches or args.blocks < 1:
        ap.error(f"expected --batches of positive integers (e.g. 1,32) and --blocks >= 1, got {args.batches!r}, "
                 f"{args.blocks}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                  # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    from common import MLP_SIZES, alternating_blocks, batch_starts, load_data

    data, labels, note = load_data(4096, args.data)
    rng = np.random.default_rng(0)
    print(f"one process, {args.threads} thread(s), {args.blocks} pairs of blocks: µs a step in each system's "
          f"fastest block, fbprop ÷ reference the median of the pairs' ratios; the 784 net on {note}, "
          f"the tiny net on random data")
    print(f"{'net':>18} {'batch':>5} {'fbprop µs':>10} {'floor µs':>9} {'reference µs':>13} {'difference':>11} "
          f"{'÷ reference':>12} {'floor ÷ ref':>12} {'Python calls a step':>26}")
    for sizes in (MLP_SIZES, TINY):
        if sizes == MLP_SIZES:
            x, y = data.reshape(len(data), -1), labels
        else:
            x = rng.standard_normal((4096, sizes[0])).astype(np.float32)
            y = rng.integers(0, sizes[3], 4096)
        for b in batches:
            steps = systems(sizes, b, x, y)
            machine, floor, ref = steps["fbprop"].machine, steps["floor"].system, steps["ref"].system
            for step in steps.values():
                step(0)
            for name, w in (("fbprop", machine.pool.x), ("the contract floor", floor.p.w)):
                if not np.allclose(w, ref.p.w, rtol=1e-4, atol=1e-6):   # the same step, from the same weights
                    print(f"step_overhead: {name} and the reference disagree after one step ({sizes}, batch {b})",
                          file=sys.stderr)
                    return 1
            starts = batch_starts(len(y), b)
            us, _ = alternating_blocks(steps, starts, args.blocks, args.seconds)
            best = {name: min(v) for name, v in us.items()}      # (a fixed cost: the least disturbed block)
            ratio = {name: statistics.median(r / m for m, r in zip(us[name], us["ref"], strict=True))
                     for name in ("fbprop", "floor")}
            calls = [_python_calls(step, starts) for step in steps.values()]
            net = "-".join(map(str, sizes))
            print(f"{net:>18} {b:5d} {best['fbprop']:10.0f} {best['floor']:9.0f} {best['ref']:13.0f} "
                  f"{best['fbprop'] - best['ref']:11.0f} {ratio['fbprop']:12.2f} {ratio['floor']:12.2f} "
                  f"{calls[0]:>12.0f} / {calls[1]:.0f} / {calls[2]:.0f}")
    return 0


def parse_batches(text: str) -> list[int]:
    """The batch sizes of a comma-separated list of positive integers; [] when it is not one."""
    try:
        batches = [int(v) for v in text.split(",")]
    except ValueError:
        return []
    return batches if batches and min(batches) >= 1 else []


def systems(sizes: tuple[int, ...], b: int, x, y) -> dict:
    """The MLP of `sizes` (float32) in the three systems, from the same weights, each as a step
    function of the batch's first index over (x, y) at batch b, fbprop first: fbprop's machine
    with SGD (the step's `machine`), the contract floor and the numpy reference (`system`)."""
    import sys_floor
    import sys_numpy
    from common import LR, MLP_SPEC

    import fbprop

    spec = {**MLP_SPEC, "hidden": list(sizes[1:3]), "input_shape": [sizes[0]], "n_classes": sizes[3],
            "dtype": "float32"}
    machine = fbprop.build_machine(spec)
    opt = fbprop.SGD(machine.pool, LR)
    shapes = [s for _, _, s in machine.pool.handles]

    def ours(i: int) -> None:
        machine.gradient(x[i:i + b], y[i:i + b])
        opt.step()
    ours.machine = machine

    def theirs(system):
        def step(i: int) -> None:
            system.train_step(x[i:i + b], y[i:i + b])
        step.system = system
        return step
    return {"fbprop": ours, "floor": theirs(sys_floor.ContractMLP(machine.pool.x.copy(), shapes, LR, b)),
            "ref": theirs(sys_numpy.NumpyMLP(machine.pool.x.copy(), shapes, LR))}


def _python_calls(step, starts: list[int], steps: int = 20) -> float:
    """Python function calls a step makes (sys.setprofile's "call" events), mean over `steps`."""
    count = [0]

    def hook(frame, event, arg):
        if event == "call":
            count[0] += 1

    sys.setprofile(hook)
    try:
        for k in range(steps):
            step(starts[k % len(starts)])
    finally:
        sys.setprofile(None)
    return count[0] / steps - 1                                  # the step function's own call


if __name__ == "__main__":
    sys.exit(main())
