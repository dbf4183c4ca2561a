"""fbprop's step with each set of product routes, against the numpy reference, in one process.

    python bench/routes.py mlp-train-b128 --threads 1         # median of 8 rounds of blocks
    python bench/routes.py lenet5-train-b32 --threads 2 --blocks 10

`fbprop.blas` routes each product by the kernels numpy's OpenBLAS picked for the CPU: on a core
with OpenBLAS's small-matrix kernel (SkylakeX and its AVX-512 successors) as measured there, on
any other (Haswell's kernels, which OpenBLAS picks on AMD EPYC) every product written into zeros
to np.matmul and no long sum in blocks. This runs the same machine's step under both rule sets
(`_numpy_blas().small_kernel` set for the span of each step) and the reference's step, in
alternating blocks over the same batches; each round of blocks gives one ratio per rule set and
the median of those is printed (> 1: fbprop is faster than the reference). Both rule sets run on
whatever CPU this is, so the one the library does not pick here shows what picking it would cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload", help="e.g. mlp-train-b1, lenet5-train-b32, mlp-infer-b1024")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--blocks", type=int, default=8, help="rounds of blocks (default 8)")
    ap.add_argument("--seconds", type=float, default=0.4, help="about this long per block (default 0.4)")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.blocks < 1 or not args.seconds > 0:
        ap.error("expected --threads ≥ 1, --blocks ≥ 1 and --seconds > 0")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                  # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import alternating_blocks, same_process_steps

    from fbprop import blas

    lib = blas._numpy_blas()
    try:
        wl, ours, theirs, starts, note = same_process_steps(args.workload, args.data)
    except ValueError as e:
        ap.error(str(e))
    if not lib.routines:
        ap.error("expected numpy's own OpenBLAS (not found in this numpy build: scipy's does every product)")
    found = lib.small_kernel

    def with_rules(small_kernel):
        def step(i):
            lib.small_kernel = small_kernel
            try:
                ours(i)
            finally:
                lib.small_kernel = found
        return step

    us, n = alternating_blocks({"numpy-ref": theirs, "small-kernel routes": with_rules(True),
                                "other routes": with_rules(False)}, starts, args.blocks, args.seconds)
    print(f"{wl.name}, {args.threads} thread(s), {args.blocks} rounds of {n} steps ({note}); OpenBLAS core "
          f"{lib.core or 'unknown'}: fbprop takes the {'small-kernel' if found else 'other'} routes here")
    for name in ("small-kernel routes", "other routes", "numpy-ref"):
        times = us[name]
        ratio = statistics.median(r / t for r, t in zip(us["numpy-ref"], times, strict=True))
        print(f"{name:20s} {statistics.median(times):9.0f} µs a step (median)   ÷ numpy reference {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
