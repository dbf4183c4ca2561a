"""Data-parallel training over MPI: K processes, one model, one allreduce of the flat gradient a step.

Every process holds the whole model and the whole data set and draws the same global mini-batch
from the same seeded generator; process r takes its contiguous shard of it and adds
(1/B) Σ_shard ∂L_i/∂W into `pool.dx`; one in-place Allreduce(SUM) of `pool.dx` then leaves on
every process the single-process gradient (1/B) Σ_B ∂L_i/∂W, and the regularizer's (λ/P) ∂H/∂W
is added once, after the sum. Every process applies the same update to the same parameters, so
the parameters stay identical without being sent again. Full-batch and L-BFGS objectives are
summed over shards of the training set the same way, and SDLM's Gauss-Newton diagonal `pool.ddx`
over shards of the Hessian sample.

mpi4py is imported only when a communicator is asked for: `world()` returns MPI.COMM_WORLD when
an MPI launcher started this process as one of several, else None (nothing imported).
"""

from __future__ import annotations

import math
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from fbprop.machine import Machine
from fbprop.optim import lbfgs

if TYPE_CHECKING:
    from mpi4py import MPI

# The world size that MPI launchers put in each process's environment: MPICH and Intel MPI
# (hydra; also Slurm's PMI-2), Open MPI, MVAPICH2.
LAUNCHER_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class MPIUnavailable(RuntimeError):
    """Started as one of several MPI processes, but mpi4py cannot be imported."""


def launched_size() -> int:
    """The number of processes an MPI launcher started this one with (1 when none did)."""
    for var in LAUNCHER_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def world(use_mpi: bool | None = None) -> MPI.Intracomm | None:
    """MPI.COMM_WORLD when training should be data-parallel, else None.

    use_mpi None: when an MPI launcher started this process as one of several (LAUNCHER_VARS);
    True: always (for launchers that set none of those variables); False: never.
    A world of one process is None too: single-process training stays exactly as it is.
    """
    size = launched_size()
    if use_mpi is False or (use_mpi is None and size <= 1):
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        why = f"started as one of {size} MPI processes" if size > 1 else "asked to use MPI"
        raise MPIUnavailable(f"{why} but mpi4py cannot be imported ({e}); "
                             "install it with `pip install 'fbprop[mpi]'`") from None
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def shard(n: int, rank: int, size: int) -> slice:
    """The contiguous part of n items that process `rank` of `size` takes (empty when n < size)."""
    return slice(n * rank // size, n * (rank + 1) // size)


def checksum(*arrays: np.ndarray) -> str:
    """CRC-32 of the arrays' shapes, dtypes and bytes, as 8 hex digits."""
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(f"{a.dtype.str}{a.shape}".encode(), crc)
        crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
    return f"{crc:08x}"


_guards = [0]                                                    # abort_on_error blocks entered, nested


class DataParallel:
    """One process of K training one model over an mpi4py communicator `comm`.

    Collectives run on every process in the same order; a process that cannot go on must end the
    job (`abort_on_error`), or the others wait for it for ever.
    """

    def __init__(self, comm: MPI.Comm) -> None:
        from mpi4py import MPI
        self.comm, self._mpi = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0

    def __repr__(self) -> str:
        return f"DataParallel(rank {self.rank} of {self.size})"

    # collectives ------------------------------------------------------------------------------
    def part(self, n: int) -> slice:
        return shard(n, self.rank, self.size)

    def sum(self, a: np.ndarray) -> np.ndarray:
        """a ← Σ_ranks a, in place (a contiguous array)."""
        self.comm.Allreduce(self._mpi.IN_PLACE, a, op=self._mpi.SUM)
        return a

    def broadcast(self, a: np.ndarray) -> np.ndarray:
        """a ← rank 0's a, in place."""
        self.comm.Bcast(a, root=0)
        return a

    def share(self, obj):
        """Rank 0's `obj` on every rank (pickled by mpi4py: for settings and checkpoint contents)."""
        return self.comm.bcast(obj, root=0)

    def agree(self, what: str, values: dict, hint: str = "") -> None:
        """Raise ValueError on every rank where one of `values` differs from rank 0's."""
        root = self.share(values)
        differ = [f"{k} {v} here, {root.get(k)} on rank 0" for k, v in values.items() if v != root.get(k)]
        if differ:
            raise ValueError(f"{what} differ from rank 0's: {'; '.join(differ)}{hint}")

    @contextmanager
    def abort_on_error(self, who: str = "fbprop", user_errors: tuple[type[BaseException], ...] = (ValueError, OSError),
                       collective: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """End the whole job when this rank raises: one line on stderr naming the rank, then Abort.

        Exceptions in `collective` are raised by every rank at the same point: they pass through.
        User errors get exit status 2 and their message; anything else status 1 and its type
        (FBPROP_DEBUG=1 prints the traceback too); KeyboardInterrupt 130. Within another such
        block (the command line's around the Trainer's), the outermost one reports.
        """
        _guards[0] += 1
        try:
            yield
        except collective:
            raise
        except BaseException as e:                              # noqa: B036 (any rank's end ends the job)
            if _guards[0] > 1:
                raise
            if os.environ.get("FBPROP_DEBUG", "0") not in ("", "0"):
                import traceback
                traceback.print_exc()
            if isinstance(e, KeyboardInterrupt):
                code, text = 130, "interrupted"
            elif isinstance(e, user_errors):
                code, text = 2, str(e)
            else:
                code, text = 1, f"{type(e).__name__}: {e} (set FBPROP_DEBUG=1 for the traceback)"
            print(f"{who}: error on rank {self.rank} of {self.size}: {text}", file=sys.stderr, flush=True)
            self.comm.Abort(code)
        finally:
            _guards[0] -= 1

    # gradients --------------------------------------------------------------------------------
    def gradient(self, machine: Machine, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Machine.gradient of the global batch (x, y), computed on this rank's shard of it.

        Returns (the mean loss of the shard, the shard's labels). The loss is NaN on every rank
        when any rank's is not finite: that rank poisons its gradient before the one allreduce.
        """
        pool, n = machine.pool, len(y)
        part = self.part(n)
        pool.clear_dx()
        total = machine.accumulate(x[part], y[part], 1.0 / n) if part.stop > part.start else 0.0
        if not math.isfinite(total):
            pool.dx[0] = np.nan                                  # NaN + anything = NaN: every rank sees it
        self.sum(pool.dx)                                        # dx = (1/B) Σ_B ∂L_i/∂W
        if not math.isfinite(pool.dx[0]):
            return math.nan, y[part]
        if machine.regularizer is not None:
            machine.regularizer.bprop(pool, 1.0 / machine.n_train)   # + (λ/P) ∂H/∂W, once
        return total / max(part.stop - part.start, 1), y[part]

    def full_gradient(self, machine: Machine, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
        """Machine.full_gradient over all of (x, y), each rank summing its shard of it."""
        pool, p = machine.pool, len(x)
        part = self.part(p)
        pool.clear_dx()
        total = np.array([machine.accumulate_all(x[part], y[part], 1.0 / p, batch_size)], dtype=np.float64)
        self.sum(pool.dx)                                        # dx = (1/P) Σ_i ∂L_i/∂W
        self.sum(total)
        value = float(total[0])
        if machine.regularizer is not None:
            machine.regularizer.bprop(pool, 1.0 / p)
            value += machine.regularizer.fprop(pool)
        return value / p

    def curvature(self, machine: Machine, x: np.ndarray, y: np.ndarray) -> None:
        """pool.ddx ← Machine.curvature's Gauss-Newton diagonal of (x, y), from shards (dx is left local)."""
        pool, n = machine.pool, len(y)
        part = self.part(n)
        pool.clear_dx()
        pool.clear_ddx()
        if part.stop > part.start:
            machine.accumulate(x[part], y[part], 1.0 / n)        # the fprop and ∂objective/∂L_i that bbprop reads
            machine.bbprop()
        self.sum(pool.ddx)
        if machine.regularizer is not None:
            machine.regularizer.bbprop(pool, 1.0 / machine.n_train)

    def lbfgs(self, machine: Machine, objective: Callable[[], float], max_iter: int) -> None:
        """L-BFGS driven by rank 0 alone; the others evaluate `objective` at the points it sends.

        `objective()` is collective (it sums over ranks). Only one scipy runs, so no difference
        in floating-point rounding between machines can make the ranks' line searches disagree.
        """
        pool, go = machine.pool, np.zeros(1, np.int64)
        if self.is_root:
            def evaluate_everywhere() -> float:
                go[0] = 1
                self.broadcast(go)
                self.broadcast(pool.x)
                return objective()
            lbfgs(pool, evaluate_everywhere, max_iter=max_iter)
            go[0] = 0
            self.broadcast(go)
        else:
            while self.broadcast(go)[0]:
                self.broadcast(pool.x)
                objective()
        self.broadcast(pool.x)                                   # the point scipy returned
