"""fbprop against the numpy reference in one process: the steadier comparison on a noisy machine.

    python bench/ab.py mlp-train-b1 --threads 1            # median of 8 alternating blocks
    python bench/ab.py lenet5-train-b32 --threads 2 --blocks 10
    PYTHONPATH=OTHER/src python bench/ab.py mlp-train-b128  # another fbprop tree, same reference

`bench/run.py` runs each system in its own process, so a machine that moves between two speeds
(as shared VMs do) can put the two processes of a repeat at different speeds. Here fbprop's step
(`machine.gradient` + `SGD.step`, or `machine.predict`) and the reference's run in the same
process, in alternating blocks of steps over the same batches and from the same weights; each
pair of blocks gives one ratio, and the median of those is printed with both medians in µs. Two
fbprop trees compare by running this once with each on PYTHONPATH, back to back.
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
    ap.add_argument("--blocks", type=int, default=8, help="pairs of blocks (default 8)")
    ap.add_argument("--seconds", type=float, default=0.5, help="about this long per block (default 0.5)")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                  # before numpy loads its library
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import alternating_blocks, same_process_steps

    import fbprop

    try:
        wl, ours, theirs, starts, note = same_process_steps(args.workload)
    except ValueError as e:
        ap.error(str(e))
    us, n = alternating_blocks({"fbprop": ours, "numpy-ref": theirs}, starts, args.blocks, args.seconds)
    mine, ref_us = us["fbprop"], us["numpy-ref"]
    ratios = [r / m for m, r in zip(mine, ref_us, strict=True)]
    print(f"{wl.name}, {args.threads} thread(s), {args.blocks} pairs of {n} steps ({note}); "
          f"fbprop from {os.path.dirname(fbprop.__file__)}")
    print("fbprop µs   ", " ".join(f"{v:.0f}" for v in mine))
    print("numpy-ref µs", " ".join(f"{v:.0f}" for v in ref_us))
    print(f"fbprop ÷ numpy reference {statistics.median(ratios):.3f} (median of the pairs' ratios; "
          f"> 1: fbprop is faster); medians {statistics.median(mine):.0f} against {statistics.median(ref_us):.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
