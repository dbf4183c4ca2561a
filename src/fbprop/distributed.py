"""How a machine's sums are taken: in one process, or over K MPI processes (data-parallel training).

A `Machine` computes every gradient, objective and curvature through its `reducer`: the reducer
says which part of a batch this process takes (`part`) and adds arrays up over processes (`sum`).
`SingleProcess`, every machine's default, takes the whole batch and adds nothing. `DataParallel`
is the MPI wrapper, in the pattern of Horovod's optimizer wrapper: every process holds the whole
model and the whole data set and draws the same global mini-batch from the same seeded generator;
process r takes its contiguous shard and adds (1/B) Σ_shard ∂L_i/∂W into `pool.dx`; one in-place
Allreduce(SUM) of `pool.dx` leaves on every process the single-process gradient, and every
process applies the same update to the same parameters. The epoch loop never knows how many
processes there are: `data_parallel(machine, comm)` is the only switch.

mpi4py is imported only when a communicator is asked for: `world()` returns MPI.COMM_WORLD when
an MPI launcher started this process as one of several, else None (nothing imported).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mpi4py import MPI

    from fbprop.machine import Machine

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


class SingleProcess:
    """The reducer of a machine trained by one process: the whole batch here, sums are what they are."""

    rank, size, is_root = 0, 1, True

    def part(self, n: int) -> slice:
        """The items of a batch of n that this process computes."""
        return shard(n, self.rank, self.size)

    def sum(self, a: np.ndarray) -> np.ndarray:
        """a ← Σ over processes of a, in place."""
        return a

    def broadcast(self, a: np.ndarray) -> np.ndarray:
        """a ← the first process's a, in place."""
        return a

    def share(self, obj: Any) -> Any:
        """The first process's `obj` (settings, checkpoint contents) on every process."""
        return obj

    def agree(self, what: str, values: dict, hint: str = "") -> None:
        """Raise ValueError on every process where one of `values` differs from the first's."""
        root = self.share(values)
        differ = [f"{k} {v} here, {root.get(k)} on rank 0" for k, v in values.items() if v != root.get(k)]
        if differ:
            raise ValueError(f"{what} differ from rank 0's: {'; '.join(differ)}{hint}")

    def join(self, trainer) -> None:
        """Before training: check that every process trains the same thing on the same data, then
        give all the first one's parameters and optimizer state (nothing to do for one process)."""

    def guard(self, who: str = "fbprop", user_errors: tuple[type[BaseException], ...] = (ValueError, OSError),
              collective: tuple[type[BaseException], ...] = ()) -> contextlib.AbstractContextManager:
        """A block in which an error on one process must end all of them (nothing to do for one)."""
        return contextlib.nullcontext()

    def __repr__(self) -> str:
        return "SingleProcess()"


# Seconds between the error line and Abort: Abort kills every process at once, and a launcher that
# has not yet read the line from the failing process's pipe loses it.
ABORT_GRACE = 1.0
_guards = [0]                                                    # guard blocks entered, nested


class DataParallel(SingleProcess):
    """Process `rank` of K training one model over an mpi4py communicator `comm`.

    Collectives run on every process in the same order; a process that cannot go on must end the
    job (`guard`), or the others wait for it for ever.
    """

    def __init__(self, comm: MPI.Comm) -> None:
        from mpi4py import MPI
        self.comm, self._mpi = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0

    def __repr__(self) -> str:
        return f"DataParallel(rank {self.rank} of {self.size})"

    def sum(self, a: np.ndarray) -> np.ndarray:
        self.comm.Allreduce(self._mpi.IN_PLACE, a, op=self._mpi.SUM)
        return a

    def broadcast(self, a: np.ndarray) -> np.ndarray:
        self.comm.Bcast(a, root=0)
        return a

    def share(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)                     # pickled by mpi4py: settings only

    def join(self, trainer) -> None:
        pool, d = trainer.machine.pool, trainer.data
        self.agree("the training settings", {"parameters": pool.size, "dtype": pool.dtype.name, **trainer.settings(),
                                             "epoch": trainer.epoch, "step": trainer.step})
        self.agree("the data", {f"{name} checksum": checksum(s.x, s.y) for name, s in
                                (("train", d.train), ("val", d.val), ("test", d.test))},
                   "; every process must load the same data set")
        self.broadcast(pool.x)
        trainer.optimizer.load_state({k: self.broadcast(v) for k, v in trainer.optimizer.state().items()})

    @contextmanager
    def guard(self, who: str = "fbprop", user_errors: tuple[type[BaseException], ...] = (ValueError, OSError),
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
            time.sleep(ABORT_GRACE)                              # let the launcher forward the line before the kill
            self.comm.Abort(code)
        finally:
            _guards[0] -= 1


def data_parallel(machine: Machine, comm: MPI.Comm | None) -> Machine:
    """Make `machine` one of comm's K processes training one model (K = 1 or None: unchanged)."""
    if comm is not None and comm.Get_size() > 1:
        machine.reducer = DataParallel(comm)
    return machine
