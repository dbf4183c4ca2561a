"""fbprop against PyTorch (CPU), scikit-learn and a hand-written numpy loop, on the same workloads.

    python bench/run.py                 # everything, 5 interleaved repeats (see bench/README.md)
    python bench/run.py --quick         # tiny sizes: a smoke test of the whole pipeline
    python bench/run.py --check         # only the float64 like-with-like check
    python bench/run.py --memory        # only peak memory: fbprop against PyTorch and the numpy loop

Each (repeat, workload, system) runs in its own process (`worker.py`), systems interleaved
A B C D, D C B A, A B C D …, so drifting machine load hits every system alike and no system
always runs first or right after another. Prints the check, then a table of samples/s (median
and min–max over the repeats), peak memory and fbprop's ratios. The numpy reference runs twice
a repeat (`numpy-ref-2`, a control): numpy-ref ÷ numpy-ref-2 is a ratio that should be 1, so its
median and spread show what a difference between two systems has to exceed to mean anything on
this machine (on a shared 2-vCPU VM, 9 repeats of every workload with 1 and with 2 threads:
medians from 0.90 to 1.11, single repeats from 0.69 to 1.59).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import CORETYPE_VARS, LR, THREAD_VARS, WORKLOADS, Workload, make_workspace, mlp_flops  # noqa: E402
from systems import CONTROL, SYSTEMS, supports  # noqa: E402

SHORT = {"fbprop": "fbprop", "pytorch": "pytorch", "pytorch-idiomatic": "pt-idiom.", "sklearn": "sklearn",
         "numpy-ref": "numpy-ref", "numpy-ref-2": "ref (2nd)", "numpy-ger": "numpy-ger", "numpy-fold": "numpy-fold",
         "gemm": "gemm"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch threads for every system (default 2)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per workload per process (default 1)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before timing (default 3)")
    ap.add_argument("--samples", type=int, default=8192, help="size of the data slice the batches cycle over")
    ap.add_argument("--data", choices=("fashion-mnist", "random"), default="fashion-mnist")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {', '.join(SYSTEMS)}")
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                    help="comma list, e.g. mlp-train-b1,lenet5-infer-b1024")
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM ceiling")
    ap.add_argument("--unset-coretype", action="store_true",
                    help="run every process with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed")
    ap.add_argument("--torch-python", help="interpreter with torch (default: bench/.venv/bin/python, else this one)")
    ap.add_argument("--check", action="store_true", help="run only the like-with-like check")
    ap.add_argument("--no-check", action="store_true", help="skip the like-with-like check")
    ap.add_argument("--per-process", choices=("workload", "system"), default="workload",
                    help="one process per (repeat, workload, system) (default), or per (repeat, system) running "
                         "all its workloads (faster; peak memory is then the largest workload's)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes for a smoke test: 1 repeat, 0.05 s, 512 samples, inference at batch 256, "
                         "one process per system, 3 check steps")
    ap.add_argument("--memory", action="store_true",
                    help="peak memory only: 3 repeats of 0.3 s, no check, no GEMM ceiling, no scikit-learn")
    ap.add_argument("--json", help="also write every raw result to this file")
    args = ap.parse_args(argv)
    if args.memory:
        args.repeats, args.seconds, args.no_check, args.no_gemm = min(args.repeats, 3), 0.3, True, True
        args.systems = ",".join(s for s in args.systems.split(",") if s != "sklearn" and s not in CONTROL)
    if args.quick:
        args.repeats, args.seconds, args.warmup, args.samples, args.per_process = 1, 0.05, 1, 512, "system"
        args.workloads = ",".join(w.name.replace("-b1024", "-b256") for w in map(_parse, args.workloads.split(",")))
    return args


def _parse(name: str) -> Workload:
    model, mode, batch = name.split("-")
    return Workload(model, mode, int(batch.removeprefix("b")))


def environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(args.threads)
    if args.unset_coretype:
        for var in CORETYPE_VARS:
            env.pop(var, None)
    return env


def find_torch_python(args: argparse.Namespace, env: dict[str, str]) -> tuple[str | None, str]:
    venv = str(HERE / ".venv" / "bin" / "python")
    candidates = [args.torch_python] if args.torch_python else [venv, sys.executable]
    probe_code = ("import importlib.metadata as m, importlib.util as u; "
                  "assert u.find_spec('torch'); print(m.version('torch'))")
    for python in candidates:
        if python and Path(python).exists():
            probe = subprocess.run([python, "-c", probe_code], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                return python, probe.stdout.strip()
    return None, "PyTorch not found (run `bash bench/setup.sh` to create bench/.venv with torch==2.13.0)"


def run_order(order: list[str], rep: int) -> list[str]:
    """The systems in the order of repeat `rep` (from 0): as given, then reversed, in turn."""
    return list(order) if rep % 2 == 0 else list(order)[::-1]


def run_worker(python: str, system: str, workload: str, workspace: str, args,
               env) -> tuple[list[dict], dict | None, str]:
    cmd = [python, str(HERE / "worker.py"), "--system", system, "--workloads", workload, "--workspace", workspace,
           "--seconds", str(args.seconds), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120 + 20 * args.seconds)
    except subprocess.TimeoutExpired:
        return [], None, "timed out"
    results, info = [], None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            results.append(json.loads(line[7:]))
        elif line.startswith("INFO "):
            info = json.loads(line[5:])
    error = "" if p.returncode == 0 else (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    return results, info, error


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def ratio_cell(pairs: list[float]) -> str:
    if not pairs:
        return ""
    return f"{statistics.median(pairs):.2f} ({min(pairs):.2f}–{max(pairs):.2f})"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment(args)
    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SYSTEMS]
    if unknown:
        print(f"run.py: unknown systems {unknown}: expected some of {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    workloads = [_parse(w) for w in args.workloads.split(",")]

    coretype = {v: os.environ.get(v) for v in CORETYPE_VARS}
    coretype_line = ("removed (--unset-coretype)" if args.unset_coretype else
                     ", ".join(f"{k}={v}" for k, v in coretype.items() if v) or "not set (OpenBLAS detects the core)")
    print(f"fbprop benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min) at start")
    print(f"threads: {args.threads} ({', '.join(THREAD_VARS)}, torch.set_num_threads); dtype float32; "
          f"SGD lr {LR}; OpenBLAS core type: {coretype_line}")
    if os.getloadavg()[0] > (os.cpu_count() or 1) - args.threads + 0.5:
        print(f"warning: the machine is busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs): "
              f"multi-threaded BLAS degrades sharply when its threads lose their cores; compare runs only at "
              f"similar load, and consider --threads 1")

    systems = []
    pythons = {}
    torch_python, torch_note = find_torch_python(args, env)
    for s in wanted:
        if s in ("pytorch", "pytorch-idiomatic"):
            if torch_python is None:
                print(f"skipping {s}: {torch_note}")
                continue
            pythons[s] = torch_python
            print(f"{s}: torch {torch_note} via {torch_python}")
        elif s == "sklearn":
            try:
                import sklearn
                pythons[s] = sys.executable
                print(f"sklearn: scikit-learn {sklearn.__version__}")
            except ImportError:
                print("skipping sklearn: scikit-learn is not installed")
                continue
        else:
            pythons[s] = sys.executable
        systems.append(s)
    if not args.no_gemm and not args.check:
        pythons["gemm"] = sys.executable

    with tempfile.TemporaryDirectory(prefix="fbprop-bench-") as tmp:
        workspace = os.path.join(tmp, "workspace.npz")
        t0 = time.perf_counter()
        note = make_workspace(workspace, args.samples, args.data)
        print(f"data: {note} ({args.samples} samples, batches taken in order and cycled)")

        if not args.no_check:
            check_python = torch_python or sys.executable
            steps = ["--steps", "3"] if args.quick else []
            print()
            p = subprocess.run([check_python, str(HERE / "check.py"), "--workspace", workspace, "--threads", "1",
                                *steps], env=env, text=True, capture_output=True)
            print(p.stdout.rstrip())
            if p.returncode not in (0, 1):
                print(f"check: crashed: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
            if args.check:
                return p.returncode
            check_failed = p.returncode != 0
        else:
            check_failed = False

        order = systems + (["gemm"] if "gemm" in pythons else [])
        samples: dict[tuple[str, str], list[float]] = defaultdict(list)
        rss: dict[tuple[str, str], list[float]] = defaultdict(list)
        working: dict[tuple[str, str], list[float]] = defaultdict(list)
        per_rep: dict[tuple[str, str, int], float] = {}
        infos: dict[str, dict] = {}
        errors: list[str] = []
        raw: list[dict] = []
        print()
        groups = [[wl] for wl in workloads] if args.per_process == "workload" else [workloads]
        for rep in range(args.repeats):
            for group in groups:
                line = []
                for s in run_order(order, rep):
                    todo = [wl.name for wl in group if supports(s, wl.model, wl.mode, wl.batch)]
                    if not todo:
                        continue
                    results, info, error = run_worker(pythons[s], s, ",".join(todo), workspace, args, env)
                    if info and s not in infos:
                        infos[s] = info
                    if error:
                        errors.append(f"{s} {','.join(todo)} (repeat {rep + 1}): {error}")
                    for r in results:
                        samples[(r["workload"], s)].append(r["samples_per_s"])
                        rss[(r["workload"], s)].append(r["maxrss_mb"])
                        if r.get("working_mb") is not None:
                            working[(r["workload"], s)].append(r["working_mb"])
                        per_rep[(r["workload"], s, rep)] = r["samples_per_s"]
                        raw.append({**r, "repeat": rep})
                        line.append(f"{s} {r['workload']} {fmt(r['samples_per_s'])}")
                print(f"[{rep + 1}/{args.repeats}] {'; '.join(line) or 'no result'}", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t0

    if not args.memory:
        print_table(workloads, order, samples, rss, per_rep, args)
    print_memory(workloads, order, rss, working, args)
    if "gemm" in order:
        print_gemm(workloads, order, samples, per_rep, args)
    print()
    for who in [s for s in ("fbprop", "numpy-ref") if s in infos]:
        for b in infos[who].get("blas") or []:
            print(f"BLAS in the {who} process (threadpoolctl): {b.get('prefix')} {b.get('version')}, kernel "
                  f"{b.get('architecture')}, {b.get('num_threads')} threads, {b.get('threading_layer')}")
    if "pytorch" in infos:
        t = infos["pytorch"]
        libs = ", ".join(f"{b.get('internal_api')}({b.get('num_threads')})" for b in t.get("blas") or [])
        print(f"PyTorch: torch {t.get('torch')}, {t.get('torch_threads')} intra-op threads, MKL "
              f"{t.get('mkl')}, oneDNN {t.get('mkldnn')}; thread pools loaded: {libs}")
    la = os.getloadavg()
    print(f"load average at end: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}; wall time {elapsed:.0f} s")
    for e in errors:
        print(f"error: {e}")
    if check_failed:
        print("error: the like-with-like check failed (see above): the systems do not compute the same thing")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": raw, "info": infos}, indent=1))
    return 1 if errors or check_failed else 0


def repeat_ratios(per_rep: dict, workload: str, a: str, b: str, repeats: int) -> list[float]:
    """System a's samples/s ÷ system b's, one ratio per repeat where both ran."""
    return [per_rep[(workload, a, r)] / per_rep[(workload, b, r)] for r in range(repeats)
            if (workload, a, r) in per_rep and (workload, b, r) in per_rep]


def print_table(workloads, order, samples, rss, per_rep, args) -> None:
    print(f"samples/s: median (min–max) over {args.repeats} interleaved repeats; peak RSS: median of the "
          f"system's process's own peak (VmHWM); fbprop÷system: median (min–max) of the per-repeat ratios")
    head = (f"{'workload':20} {'system':10} {'samples/s':>10} {'(min–max)':>22} {'peak RSS MiB':>13}  "
            f"{'fbprop÷system':>22}")
    print(head)
    print("-" * len(head))
    for wl in workloads:
        first = True
        for s in order:
            if s == "gemm" or (wl.name, s) not in samples:
                continue
            v = samples[(wl.name, s)]
            pairs = repeat_ratios(per_rep, wl.name, "fbprop", s, args.repeats) if s != "fbprop" else []
            print(f"{wl.name if first else '':20} {SHORT[s]:10} {fmt(statistics.median(v)):>10} "
                  f"{'(' + fmt(min(v)) + '–' + fmt(max(v)) + ')':>22} {statistics.median(rss[(wl.name, s)]):>13.0f}  "
                  f"{ratio_cell(pairs):>22}")
            first = False
    print()
    cols = [s for s in ("pytorch", "pytorch-idiomatic", "numpy-ref", "numpy-ger", "numpy-fold", "sklearn")
            if s in order]
    print("fbprop ÷ system (median of per-repeat ratios; > 1 means fbprop is faster)")
    print(f"{'workload':20} " + " ".join(f"{'fbprop/' + c:>24}" for c in cols))
    for wl in workloads:
        cells = []
        for c in cols:
            pairs = repeat_ratios(per_rep, wl.name, "fbprop", c, args.repeats)
            cells.append(f"{ratio_cell(pairs) or '—':>24}")
        print(f"{wl.name:20} " + " ".join(cells))
    for control, of in CONTROL.items():
        if control in order and of in order:
            print(f"control, the same system in two processes a repeat ({of} ÷ {control}; 1 but for the noise):")
            for wl in workloads:
                pairs = repeat_ratios(per_rep, wl.name, of, control, args.repeats)
                if pairs:
                    print(f"{wl.name:20} {ratio_cell(pairs):>24}")


def print_memory(workloads, order, rss, working, args) -> None:
    """Peak memory per workload and system, and fbprop's as a fraction of the others'."""
    print()
    print(f"memory, MiB, median of {args.repeats} processes: peak RSS of the whole process (VmHWM) / working memory, "
          f"the peak above the process once its library is imported and the data read (model, buffers, "
          f"temporaries); fbprop ÷ system < 1: fbprop needs less")
    shown = [s for s in order if s != "gemm" and s not in CONTROL]
    head = f"{'workload':20} " + " ".join(f"{SHORT[s]:>16}" for s in shown) + "".join(
        f"{'fbprop÷' + SHORT[s]:>22}" for s in shown if s != "fbprop")
    print(head)
    print("-" * len(head))
    for wl in workloads:
        def med(table, s, wl=wl):
            v = table.get((wl.name, s))
            return statistics.median(v) if v else None
        cells = []
        for s in shown:
            r, w = med(rss, s), med(working, s)
            cells.append(f"{'—' if r is None else f'{r:.0f}'} / {'—' if w is None else f'{w:.1f}'}")
        ratios = []
        for s in shown:
            if s == "fbprop":
                continue
            r0, r1, w0, w1 = med(rss, "fbprop"), med(rss, s), med(working, "fbprop"), med(working, s)
            rr = f"{r0 / r1:.2f}" if r0 and r1 else "—"
            wr = f"{w0 / w1:.2f}" if w0 is not None and w1 else "—"
            ratios.append(f"{rr + ' / ' + wr:>22}")
        print(f"{wl.name:20} " + " ".join(f"{c:>16}" for c in cells) + "".join(ratios))


def print_gemm(workloads, order, samples, per_rep, args) -> None:
    print()
    print(f"GEMM ceiling: only the MLP training step's matrix products (3 forward, 3 ∂E/∂W, 2 ∂E/∂h), float32, "
          f"{args.threads} threads; a system's GFLOP/s is that FLOP count × its steps/s")
    others = [s for s in order if s != "gemm" and s != "sklearn" and s not in CONTROL]
    print(f"{'workload':20} {'MFLOP/step':>10} {'ceiling GFLOP/s':>16} " +
          " ".join(f"{s + ' GFLOP/s (÷ceil)':>28}" for s in others))
    for wl in workloads:
        if (wl.name, "gemm") not in samples:
            continue
        flops = mlp_flops(wl.batch)

        def gflops(s, wl=wl, flops=flops):
            return statistics.median(samples[(wl.name, s)]) / wl.batch * flops / 1e9

        ceiling = gflops("gemm")
        cells = []
        for s in others:
            if (wl.name, s) in samples:
                g = gflops(s)
                cells.append(f"{g:.2f} ({100 * g / ceiling:.0f}%)")
            else:
                cells.append("—")
        print(f"{wl.name:20} {flops / 1e6:>10.2f} {ceiling:>16.2f} " + " ".join(f"{c:>28}" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
