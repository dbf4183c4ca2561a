"""One benchmark process: one system, one or more workloads; prints INFO and RESULT json lines.

    python bench/worker.py --system fbprop --workloads mlp-train-b32 --workspace WS.npz

`run.py` starts one of these per (repeat, workload, system). It reports two memory figures: the
process's peak resident memory after its workloads (VmHWM: the interpreter, the system's
libraries, the data slice and the model's buffers), and the workload's working memory, the peak
above what the process held once its library was imported and the data read (model, buffers,
temporaries; `common.start_working_memory`). Both add the private memory of the worker processes
fbprop's training split forked (`common.workers_mb`), which neither figure of this process counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", required=True)
    ap.add_argument("--workloads", required=True, help="comma-separated, e.g. mlp-train-b1,lenet5-infer-b1024")
    ap.add_argument("--workspace", required=True, help="the .npz written by run.py (common.make_workspace)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per workload")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)           # before numpy is imported

    import numpy as np
    import systems
    from common import (
        LR,
        Result,
        batch_starts,
        blas_report,
        measure,
        parse_workload,
        peak_rss_mb,
        read_workspace,
        start_working_memory,
        workers_mb,
        working_memory_mb,
    )

    ws = read_workspace(args.workspace)
    systems.preload(args.system)
    info = {"system": args.system, "numpy": np.__version__, "blas": None}
    for workload in args.workloads.split(","):
        wl = parse_workload(workload)
        if not systems.supports(args.system, wl.model, wl.mode, wl.batch):
            continue
        sut = None                                        # the previous workload's model goes first
        start = start_working_memory()
        sut = systems.make(args.system, wl.model, init=ws[f"{wl.model}_init"], shapes=ws["shapes"][wl.model],
                           lr=LR, batch=wl.batch, codes=ws["codes"], table=ws["table"], threads=args.threads)
        x, y = sut.native(ws["x"], ws["y"])
        per_call = wl.batch * (getattr(sut, "steps_per_call", 1) if wl.mode == "train" else 1)
        starts = batch_starts(len(ws["y"]), per_call)
        if wl.mode == "train":
            def step(i, sut=sut, x=x, y=y, n=per_call):
                sut.train_step(x[i:i + n], y[i:i + n])
        else:
            def step(i, sut=sut, x=x, n=per_call):
                sut.infer(x[i:i + n])
        m = measure(step, starts, per_call, args.seconds, warmup=max(1, args.warmup // (per_call // wl.batch)))
        if info["blas"] is None:
            info["blas"] = blas_report()
            if args.system == "pytorch":
                import sys_torch
                info.update(sys_torch.versions())
            print("INFO " + json.dumps(info), flush=True)
        forked = workers_mb(sut)                          # fbprop's split step's worker processes
        extra = {"steps_per_call": per_call // wl.batch, "workers_mb": forked}
        working = working_memory_mb(start)
        Result(args.system, wl.name, m["samples_per_s"], m["steps"] * (per_call // wl.batch), m["seconds"],
               peak_rss_mb() + forked, extra, None if working is None else working + forked).emit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
