"""Data-parallel training over MPI: the allreduce of each step against the step's compute.

    python bench/mpi_allreduce.py                         # 1 process: compute only
    mpiexec -n 2 python bench/mpi_allreduce.py            # 2 processes: compute of a shard + allreduce
    mpiexec -n 2 python bench/mpi_allreduce.py --steps 20 --models mlp --latency-us 50

Workloads: the 784-300-100-10 tanh MLP (N = 266,610 parameters) and LeNet-5 (N = 60,900), float32,
global batch 128, random 28x28 images, SGD. Each process takes its shard of every global batch
(128/K samples), as `fbprop train` does under mpiexec; one step is
`clear dx; accumulate(shard, 1/B)` (compute), `Allreduce(IN_PLACE, pool.dx)` (communication),
`SGD step` (compute). A barrier before each part keeps waiting for a slower rank out of the
allreduce time; a second loop times whole steps as the Trainer runs them, with no barrier.
Medians over --steps steps; with several processes, the slowest rank's median.

Cost model
----------
A data-parallel step on K nodes costs compute(b) + T(K), b = the per-node batch, with no overlap
of the two (fbprop sums the gradient once, after the whole bprop). The gradient is N float32
numbers, 4N bytes. A ring allreduce (reduce-scatter, then allgather) sends and receives
2(K-1)/K · 4N bytes per node in 2(K-1) messages:

    T_ring(K) ≈ 2(K-1)/K · 4N/β + 2(K-1)·α

β = link bandwidth, 10 Gbit/s = 1.25 GB/s; α = per-message latency, 20-50 µs over TCP on
Ethernet (α = 30 µs below). MPICH uses Rabenseifner's reduce-scatter + allgather for these sizes,
whose latency term is 2·log2(K)·α instead: T_rab(K) ≈ 2(K-1)/K · 4N/β + 2·log2(K)·α.

    model   4N        K   bandwidth term   T_ring (α 20 / 30 / 50 µs)   T_rab (α 30 µs)
    MLP     1.07 MB   8   1.49 ms          1.77 / 1.91 / 2.19 ms        1.67 ms
    MLP     1.07 MB  64   1.68 ms          4.20 / 5.46 / 7.98 ms        2.04 ms
    LeNet-5 244 kB    8   0.34 ms          0.62 / 0.76 / 1.04 ms        0.52 ms
    LeNet-5 244 kB   64   0.38 ms          2.90 / 4.16 / 6.68 ms        0.74 ms

Against compute (single-thread numpy, medians measured by this script on a 2-core machine shared
with other jobs, so ranges over three runs; compute(b) includes the SGD step):
compute(128) MLP 2.8-4.5 ms, LeNet-5 27-53 ms; compute(16) 0.8-1.4 ms and 5.6-8.2 ms;
compute(2) 0.6-0.9 ms and 1.5-2.4 ms (fbprop's fixed per-step cost: Python, small matrices).
- fixed global batch 128 (b = 128/K: 16 on 8 nodes, 2 on 64): compute shrinks with b only down
  to that fixed cost while T grows with K. The MLP is communication-bound from 8 nodes on
  (T_ring 1.9 ms, 1.4-2.5x its compute: speedup 1.1-1.4x) and slower than one node at 64
  (T_ring 6-10x compute: 0.5-0.7x). LeNet-5: T_ring is 0.1x compute at 8 nodes (speedup 5-6x)
  and 1.8-2.8x at 64 (speedup 5.5-8x): past a few nodes a fixed global batch of 128 stops scaling.
- fixed per-node batch 128 (global batch 128·K, which changes the optimisation): compute stays
  compute(128); T_ring/compute is 0.4-0.6 (8 nodes) and 1.2-1.7 (64) for the MLP, speedup
  5-6x and 24-29x; 0.02 and 0.1 for LeNet-5, speedup 7.8x and 56-59x, near linear.
With T_rab (MPICH's choice at these sizes) instead of T_ring, 64 nodes cost 2.0 / 0.7 ms, not
5.5 / 4.2 ms: the latency term, not the bandwidth, is what the ring pays at 64 nodes.
The script prints these figures from its own measurements of compute(b).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time


def ring_ms(n: int, k: int, bandwidth: float, latency: float) -> float:
    """T_ring(K) in ms: 2(K-1)/K · 4N/β + 2(K-1)·α."""
    return 1e3 * (2 * (k - 1) / k * 4 * n / bandwidth + 2 * (k - 1) * latency) if k > 1 else 0.0


def rabenseifner_ms(n: int, k: int, bandwidth: float, latency: float) -> float:
    """T_rab(K) in ms: 2(K-1)/K · 4N/β + 2·log2(K)·α."""
    return 1e3 * (2 * (k - 1) / k * 4 * n / bandwidth + 2 * math.log2(k) * latency) if k > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="timed steps per measurement (default 100)")
    ap.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    ap.add_argument("--models", default="mlp,lenet5", help="comma-separated: mlp, lenet5 (default both)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads per process (default 1)")
    ap.add_argument("--bandwidth-gbit", type=float, default=10.0, help="cost model: link bandwidth (default 10)")
    ap.add_argument("--latency-us", type=float, default=30.0, help="cost model: message latency (default 30)")
    ap.add_argument("--nodes", default="8,64", help="cost model: node counts (default 8,64)")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                      # before numpy is imported

    import numpy as np
    from common import SPECS

    import fbprop
    from fbprop.distributed import DataParallel, data_parallel, shard, world

    comm = world()
    parallel = DataParallel(comm) if comm is not None else None
    rank, size = (parallel.rank, parallel.size) if parallel else (0, 1)
    if parallel is not None:
        from mpi4py import MPI
        library = MPI.Get_library_version().splitlines()[0].strip()
    else:
        library = "no MPI"
    nodes = [int(k) for k in args.nodes.split(",")]
    bandwidth, latency = args.bandwidth_gbit * 1e9 / 8, args.latency_us * 1e-6
    say = print if rank == 0 else (lambda *a, **k: None)

    def slowest(values: list[float]) -> float:
        """The largest of the ranks' medians, in ms."""
        m = statistics.median(values) * 1e3
        return max(comm.allgather(m)) if comm is not None else m

    say(f"fbprop {fbprop.__version__} data-parallel step, {size} process{'es' if size > 1 else ''} ({library}), "
        f"{args.threads} BLAS thread(s) each, float32, global batch {args.batch}, medians of {args.steps} steps")
    say(f"{'model':8s} {'params':>8s} {'shard':>5s} {'compute ms':>11s} {'allreduce ms':>13s} {'ratio':>6s} "
        f"{'step ms':>8s} {'samples/s':>10s}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * args.batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    compute_at = {}
    for model in args.models.split(","):
        machine = data_parallel(fbprop.build_machine({**SPECS[model], "dtype": "float32"}), comm)
        pool, sgd = machine.pool, fbprop.SGD(machine.pool, 0.001)
        part = shard(args.batch, rank, size)

        def batch(i: int):
            start = (i % 4) * args.batch
            return x[start:start + args.batch], y[start:start + args.batch]

        compute, allreduce = [], []
        for i in range(args.steps + 3):                          # 3 warm-up steps
            xb, yb = batch(i)
            if comm is not None:
                comm.Barrier()
            t0 = time.perf_counter()
            pool.clear_dx()
            if part.stop > part.start:
                machine.accumulate(xb[part], yb[part], 1.0 / args.batch)
            t1 = time.perf_counter()
            if comm is not None:
                comm.Barrier()
            t2 = time.perf_counter()
            if comm is not None:
                parallel.sum(pool.dx)
            t3 = time.perf_counter()
            sgd.step()
            t4 = time.perf_counter()
            if i >= 3:
                compute.append(t1 - t0 + t4 - t3)
                allreduce.append(t3 - t2)
        steps = []
        for i in range(args.steps + 3):                          # as the Trainer steps: no barrier
            xb, yb = batch(i)
            t0 = time.perf_counter()
            machine.gradient(xb, yb)
            sgd.step()
            if i >= 3:
                steps.append(time.perf_counter() - t0)
        c, a, s = slowest(compute), slowest(allreduce), slowest(steps)
        say(f"{model:8s} {pool.size:8d} {part.stop - part.start:5d} {c:11.3f} {a:13.3f} {a / c:6.3f} {s:8.3f} "
            f"{args.batch / s * 1e3:10.0f}")
        # compute(b) at the per-node batches of the cost model, measured on this rank
        compute_at[model] = {}
        for b in sorted({max(args.batch // k, 1) for k in (1, *nodes)}):
            times = []
            for i in range(args.steps + 3):
                xb, yb = batch(i)
                t0 = time.perf_counter()
                pool.clear_dx()
                machine.accumulate(xb[:b], yb[:b], 1.0 / args.batch)
                sgd.step()
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            compute_at[model][b] = slowest(times)

    say(f"\ncost model: ring allreduce of 4N bytes over {args.bandwidth_gbit:g} Gbit/s, α = {args.latency_us:g} µs "
        f"(T_ring = 2(K-1)/K·4N/β + 2(K-1)α; T_rab: 2·log2(K)·α); compute(b) measured above, "
        f"{size} process{'es' if size > 1 else ''} running")
    say(f"{'model':8s} {'K':>3s} {'T_ring ms':>9s} {'α 20-50µs':>11s} {'T_rab ms':>8s} | "
        f"{'fixed global batch: b':>21s} {'compute ms':>10s} {'T/compute':>9s} {'speedup':>7s} | "
        f"{'fixed per-node b':>16s} {'compute ms':>10s} {'T/compute':>9s} {'speedup':>7s}")
    for model, at in compute_at.items():
        n = fbprop.build_machine({**SPECS[model], "dtype": "float32"}).pool.size
        one = at[args.batch]
        for k in nodes:
            t = ring_ms(n, k, bandwidth, latency)
            low, high = ring_ms(n, k, bandwidth, 20e-6), ring_ms(n, k, bandwidth, 50e-6)
            b = max(args.batch // k, 1)
            fixed_global = one / (at[b] + t)                     # (B / step time) / (B / compute(B))
            fixed_node = k * one / (one + t)
            say(f"{model:8s} {k:3d} {t:9.2f} {f'{low:.2f}-{high:.2f}':>11s} "
                f"{rabenseifner_ms(n, k, bandwidth, latency):8.2f} | {b:21d} {at[b]:10.2f} {t / at[b]:9.2f} "
                f"{fixed_global:7.2f} | {args.batch:16d} {one:10.2f} {t / one:9.2f} {fixed_node:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
