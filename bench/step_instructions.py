"""Instructions a step executes: fbprop, the contract floor and the numpy reference, training on
the 4-3-3-10 net (all fixed cost), the benchmark's 784-300-100-10 MLP or its LeNet-5, or
inferring, counted by valgrind's callgrind over the steps alone, where they go (BLAS, numpy,
libc, Python), and with `--cache` the cache misses they make.

    python bench/step_instructions.py                    # training, batch 1 and 32 (about a minute)
    python bench/step_instructions.py --batches 1 --steps 200
    python bench/step_instructions.py --net mlp --batches 128 --steps 5 --parts         # (about 5 minutes)
    python bench/step_instructions.py --net mlp --infer --batches 1024 --steps 3 --parts  # (about 3 minutes)
    python bench/step_instructions.py --net lenet5 --batches 32 --steps 3 --cache        # (about 5 minutes)

`bench/step_overhead.py` times the same steps, but on a machine shared with other jobs the same
step's time swings by 30% between blocks, more than most changes to the fixed cost move it.
Instructions do not swing: the count of one build of the code on one machine repeats to within a
fraction of a percent, so a change to the per-call glue can be measured in one run, before the
clock confirms it. They are not time (a numpy call and a Python call of the same count need not
take as long, and memory is not counted), so the ratios here are a guide to step_overhead's.
`--parts` splits each system's count by the library that ran it (callgrind_annotate's
per-function counts, grouped by the shared object): OpenBLAS (both numpy's and scipy's), numpy's
own loops and dispatch, libc (memset, memcpy, malloc) and the Python interpreter. With `--infer`
a step is `machine.predict` against the reference's `infer` (the floor has no inference).
LeNet-5 (`--net lenet5`, on random data) has no floor either. `--cache` has callgrind simulate
the caches: a 32 KiB L1 for instructions and one for data, and behind them one level of
512 KiB, 8-way (the L2 of a Zen 3 or Skylake core; callgrind simulates two levels, and the
third, shared one is left out); each system's misses a step are printed at each level. A
simulation, not the machine's counters: no prefetcher, no TLB, no other process in the caches.

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
from functools import partial
from pathlib import Path

from common import MLP_SIZES
from step_overhead import TINY, parse_batches, systems

HERE = Path(__file__).resolve().parent
SYSTEMS = ("fbprop", "floor", "ref")
MARKS = r"""
#include <valgrind/callgrind.h>
void steps_begin(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; CALLGRIND_TOGGLE_COLLECT; }
void steps_end(void) { CALLGRIND_TOGGLE_COLLECT; CALLGRIND_DUMP_STATS; CALLGRIND_STOP_INSTRUMENTATION; }
"""


NETS = {"tiny": TINY, "mlp": MLP_SIZES, "lenet5": None}
CACHE = ("--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64", "--LL=524288,8,64")   # (L1s, then L2 as "LL")
MISSES = (("I1mr", "L1 instruction"), ("D1mr", "L1 data read"), ("D1mw", "L1 data write"),
          ("ILmr", "L2 instruction"), ("DLmr", "L2 data read"), ("DLmw", "L2 data write"))
PARTS = ("BLAS", "numpy", "libc", "Python", "other")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    ap.add_argument("--steps", type=int, default=100, help="steps counted per system (default 100)")
    ap.add_argument("--net", choices=tuple(NETS), default="tiny",
                    help="tiny: 4-3-3-10 (default), mlp: the benchmark's 784-300-100-10, lenet5: its LeNet-5 "
                         "(both on random data)")
    ap.add_argument("--infer", action="store_true", help="count inference (predict) instead of training steps")
    ap.add_argument("--parts", action="store_true",
                    help="also split each count by the library that ran it (needs callgrind_annotate)")
    ap.add_argument("--cache", action="store_true",
                    help="also simulate the L1 and L2 caches and print each system's misses a step")
    ap.add_argument("--child", nargs=6, metavar=("SYSTEM", "NET", "MODE", "BATCH", "STEPS", "LIBRARY"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(*args.child)
    batches = parse_batches(args.batches)
    if not batches or args.steps < 1:
        ap.error(f"expected --batches of positive integers (e.g. 1,32) and --steps >= 1, got {args.batches!r}, "
                 f"{args.steps}")
    valgrind, cc = shutil.which("valgrind"), shutil.which("cc") or shutil.which("gcc")
    annotate = shutil.which("callgrind_annotate")
    header = Path("/usr/include/valgrind/callgrind.h")
    if not valgrind or not cc or not header.exists() or (args.parts and not annotate):
        print("step_instructions: needs valgrind with /usr/include/valgrind/callgrind.h and callgrind_annotate "
              "(apt-get install valgrind) and a C compiler (cc)", file=sys.stderr)
        return 2
    mode = "infer" if args.infer else "train"
    systems_run = ("fbprop", "ref") if args.infer or args.net == "lenet5" else SYSTEMS
    net = "LeNet-5" if args.net == "lenet5" else "-".join(map(str, NETS[args.net]))
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / "marks.so"
        (Path(tmp) / "marks.c").write_text(MARKS)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(library), str(Path(tmp) / "marks.c")], check=True)
        what = "an inference (predict)" if args.infer else "a step"
        print(f"instructions {what} on the {net} net, {args.steps} steps counted by callgrind (1 thread)")
        print(f"{'batch':>5} {'fbprop':>12} {'floor':>12} {'reference':>12} {'fbprop ÷ ref':>13} {'floor ÷ ref':>12}")
        parts, misses = [], []
        for b in batches:
            counts = {}
            for system in systems_run:
                out = Path(tmp) / f"{system}.{b}.out"
                cmd = [valgrind, "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
                       *(CACHE if args.cache else ()), f"--callgrind-out-file={out}",
                       sys.executable, __file__, "--child", system, args.net, mode,
                       str(b), str(args.steps), str(library)]
                run = subprocess.run(cmd, capture_output=True, text=True,
                                     env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
                dumps = sorted(Path(tmp).glob(f"{system}.{b}.out*"))
                events = _events(dumps[-1]) if run.returncode == 0 and dumps else {}
                total = events.get("Ir")                         # (instructions: callgrind's first event)
                if total is None:
                    print(f"step_instructions: the {system} run failed: {run.stderr.strip()[-300:]}", file=sys.stderr)
                    return 1
                counts[system] = total / args.steps
                if args.cache:
                    misses.append((b, system, {k: v / args.steps for k, v in events.items()}))
                if args.parts:
                    split = _by_library(annotate, dumps[-1], total)
                    parts.append((b, system, {k: v / args.steps for k, v in split.items()}))
            f, r = counts["fbprop"], counts["ref"]
            fl = counts.get("floor")
            # (a ratio of instructions the way step_overhead's is of speed: reference ÷ system)
            floor = (f"{fl:12.0f}", f"{r / fl:12.2f}") if fl else (f"{'-':>12}", f"{'-':>12}")
            print(f"{b:5d} {f:12.0f} {floor[0]} {r:12.0f} {r / f:13.2f} {floor[1]}")
        if parts:
            print(f"\nwhere they go, instructions {what}: {', '.join(PARTS)} (the shared object that ran them)")
            print(f"{'batch':>5} {'system':>7} " + " ".join(f"{k:>12}" for k in PARTS))
            for b, system, split in parts:
                print(f"{b:5d} {system:>7} " + " ".join(f"{split[k]:12.0f}" for k in PARTS))
        if misses:
            print(f"\ncache misses {what} (simulated: 32 KiB L1s, a 512 KiB 8-way L2)")
            print(f"{'batch':>5} {'system':>7} " + " ".join(f"{name:>15}" for _, name in MISSES))
            for b, system, events in misses:
                print(f"{b:5d} {system:>7} " + " ".join(f"{events[key]:15.0f}" for key, _ in MISSES))
    return 0


def _events(path: Path) -> dict[str, int]:
    """Each event's total in a dump: the names on its "events:" line (Ir, the instructions, and with
    a cache simulation the misses), the numbers on its "summary:" or "totals:" line; {} without them."""
    text = path.read_text()
    names = re.search(r"^events: (.+)$", text, re.MULTILINE)
    totals = re.search(r"^(?:summary|totals): ([\d ]+)$", text, re.MULTILINE)
    if not names or not totals:
        return {}
    return dict(zip(names.group(1).split(), map(int, totals.group(1).split()), strict=False))


def _part(where: str) -> str:
    """The part of PARTS that a callgrind_annotate function line's file, function and object belong to."""
    low = where.lower()
    if "openblas" in low:
        return "BLAS"
    if "_multiarray_umath" in low or "/numpy/" in low:
        return "numpy"
    if "libc.so" in low or "libm.so" in low:
        return "libc"
    if "python" in low:
        return "Python"
    return "other"


def _by_library(annotate: str, dump: Path, total: int) -> dict[str, int]:
    """A dump's instructions by part (PARTS): each function's own count from callgrind_annotate,
    grouped by `_part`; what the listing leaves out goes to "other"."""
    listing = subprocess.run([annotate, "--threshold=100", "--inclusive=no", str(dump)],
                             capture_output=True, text=True, check=True).stdout
    split = dict.fromkeys(PARTS, 0)
    for line in listing.splitlines():
        found = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
        if found and "PROGRAM TOTALS" not in line:
            split[_part(found.group(2))] += int(found.group(1).replace(",", ""))
    split["other"] += total - sum(split.values())
    return split


def _child(system: str, net: str, mode: str, batch: str, steps: str, library: str) -> int:
    """Build the systems as step_overhead does (LeNet-5 as bench/ab.py does), warm up, and run `steps`
    steps of one between the marks."""
    import ctypes

    sys.path.insert(0, str(HERE))
    import numpy as np

    b, n, sizes = int(batch), int(steps), NETS[net]
    if net == "lenet5":
        from common import same_process_steps
        _, ours, theirs, starts, _ = same_process_steps(f"lenet5-{mode}-b{b}", "random")
        step = ours if system == "fbprop" else theirs
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((max(256, 4 * b), sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[3], len(x))
        step = systems(sizes, b, x, y)[system]
        starts = list(range(0, len(x) - b + 1, b))
    if mode == "infer" and net != "lenet5":                      # (predict's batch_size: the whole batch)
        infer = partial(step.machine.predict, batch_size=b) if system == "fbprop" else step.system.infer

        def step(i: int) -> None:
            infer(x[i:i + b])
    for k in range(20 if net == "tiny" and mode == "train" else 10):   # (Python specialises a function after 8 calls)
        step(starts[k % len(starts)])
    marks = ctypes.CDLL(library)
    marks.steps_begin()
    for k in range(n):
        step(starts[k % len(starts)])
    marks.steps_end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
