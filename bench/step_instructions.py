"""Instructions a training step executes: fbprop, the contract floor and the numpy reference on the
4-3-3-10 net (all fixed cost), counted by valgrind's callgrind over the steps alone.

    python bench/step_instructions.py                    # batch 1 and 32 (about a minute)
    python bench/step_instructions.py --batches 1 --steps 200

`bench/step_overhead.py` times the same steps, but on a machine shared with other jobs the same
step's time swings by 30% between blocks, more than most changes to the fixed cost move it.
Instructions do not swing: the count of one build of the code on one machine repeats to within a
fraction of a percent, so a change to the per-call glue can be measured in one run, before the
clock confirms it. They are not time (a numpy call and a Python call of the same count need not
take as long, and memory is not counted), so the ratios here are a guide to step_overhead's.

Needs valgrind (with its callgrind.h header, as Debian's `valgrind` package installs it) and a C
compiler: the steps are marked by callgrind's client requests from a small library built here
at run time, so that importing numpy and building the nets are not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from step_overhead import TINY, parse_batches, systems

HERE = Path(__file__).resolve().parent
SYSTEMS = ("fbprop", "floor", "ref")
MARKS = r"""
#include <valgrind/callgrind.h>
void steps_begin(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }
void steps_end(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    ap.add_argument("--steps", type=int, default=100, help="steps counted per system (default 100)")
    ap.add_argument("--child", nargs=4, metavar=("SYSTEM", "BATCH", "STEPS", "LIBRARY"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(*args.child)
    batches = parse_batches(args.batches)
    if not batches or args.steps < 1:
        ap.error(f"expected --batches of positive integers (e.g. 1,32) and --steps >= 1, got {args.batches!r}, "
                 f"{args.steps}")
    valgrind, cc = shutil.which("valgrind"), shutil.which("cc") or shutil.which("gcc")
    header = Path("/usr/include/valgrind/callgrind.h")
    if not valgrind or not cc or not header.exists():
        print("step_instructions: needs valgrind with /usr/include/valgrind/callgrind.h (apt-get install valgrind) "
              "and a C compiler (cc)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / "marks.so"
        (Path(tmp) / "marks.c").write_text(MARKS)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(library), str(Path(tmp) / "marks.c")], check=True)
        print(f"instructions a step on the 4-3-3-10 net, {args.steps} steps counted by callgrind (1 thread)")
        print(f"{'batch':>5} {'fbprop':>10} {'floor':>10} {'reference':>10} {'fbprop ÷ ref':>13} {'floor ÷ ref':>12}")
        for b in batches:
            counts = {}
            for system in SYSTEMS:
                out = Path(tmp) / f"{system}.{b}.out"
                cmd = [valgrind, "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                       f"--callgrind-out-file={out}", sys.executable, __file__, "--child", system, str(b),
                       str(args.steps), str(library)]
                run = subprocess.run(cmd, capture_output=True, text=True,
                                     env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
                dumps = sorted(Path(tmp).glob(f"{system}.{b}.out*"))
                total = _summary(dumps[-1]) if run.returncode == 0 and dumps else None
                if total is None:
                    print(f"step_instructions: the {system} run failed: {run.stderr.strip()[-300:]}", file=sys.stderr)
                    return 1
                counts[system] = total / args.steps
            f, fl, r = counts["fbprop"], counts["floor"], counts["ref"]
            # (a ratio of instructions the way step_overhead's is of speed: reference ÷ system)
            print(f"{b:5d} {f:10.0f} {fl:10.0f} {r:10.0f} {r / f:13.2f} {r / fl:12.2f}")
    return 0


def _summary(path: Path) -> int | None:
    """The instruction total callgrind wrote into a dump ("summary: N" or "totals: N")."""
    found = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else None


def _child(system: str, batch: str, steps: str, library: str) -> int:
    """Build the three systems as step_overhead does, warm up, and run `steps` steps of one between the marks."""
    import ctypes

    sys.path.insert(0, str(HERE))
    import numpy as np

    b, n = int(batch), int(steps)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((max(256, 4 * b), TINY[0])).astype(np.float32)
    y = rng.integers(0, TINY[3], len(x))
    step = systems(TINY, b, x, y)[system]
    starts = list(range(0, len(x) - b + 1, b))
    for k in range(20):
        step(starts[k % len(starts)])
    marks = ctypes.CDLL(library)
    marks.steps_begin()
    for k in range(n):
        step(starts[k % len(starts)])
    marks.steps_end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
