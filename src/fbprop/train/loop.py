"""Trainer: the epoch loop — epochs, the schedule, one epoch of the updater, the extensions."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from fbprop.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fbprop.data.datasets import Dataset
from fbprop.distributed import checksum, data_parallel
from fbprop.machine import Machine
from fbprop.optim import OPTIMIZERS, Optimizer, make_optimizer
from fbprop.train import extensions as ext
from fbprop.train.meters import Meter, evaluate
from fbprop.train.schedules import schedule_factor
from fbprop.train.updaters import UPDATERS, TrainingDiverged, Transform

if TYPE_CHECKING:
    from mpi4py import MPI


class Trainer:
    """Trains a Machine on a Dataset, one epoch at a time.

    optimizer: a name of `fbprop.optim.OPTIMIZERS` ("sgd" — on-line when batch_size is 1 —,
    "momentum", "sdlm", "batch", "lbfgs", …) with its options as keywords (momentum=…, mu=…,
    max_iter=…), or an Optimizer on the machine's pool. lr None takes the optimizer's default.
    Each epoch the updater trains on data.train; then val and test are evaluated, and the
    extensions run: the log line (or a progress bar), best parameters and early stopping after
    `patience` epochs without a better validation error, and with `out_dir` checkpoint.npz,
    best.npz, metrics.json and metrics.csv; then `callbacks` (fn(trainer, record)) and `extensions`.

    With `comm`, an mpi4py communicator of K > 1 processes, the K trainers train one model
    (fbprop.distributed): the machine's sums run over the processes, rank 0's parameters and
    optimizer state are sent to all when `fit` starts, only rank 0 logs and writes, and an error on
    one rank ends the whole job with one line naming it.
    """

    def __init__(self, machine: Machine, data: Dataset, *, optimizer: str | Optimizer = "sgd", lr: float | None = None,
                 batch_size: int = 32, epochs: int = 10, schedule: str = "constant", patience: int | None = None,
                 seed: int = 0, hessian_samples: int = 500, transform: Transform | None = None,
                 out_dir: str | Path | None = None, callbacks: Sequence[Callable] = (),
                 extensions: Sequence[ext.Extension] = (), progress: bool | None = None, log: TextIO | None = None,
                 comm: MPI.Comm | None = None, **options) -> None:
        if not (isinstance(epochs, int) and epochs >= 0):
            raise ValueError(f"Trainer: expected epochs >= 0, got {epochs}")
        schedule_factor(schedule, 0, epochs)
        self.machine, self.data = data_parallel(machine, comm), data
        if "lbfgs_iters" in options:                             # the command line's name for max_iter
            options["max_iter"] = options.pop("lbfgs_iters")
        if isinstance(optimizer, Optimizer):
            self.optimizer_name, self.optimizer, updater = type(optimizer).__name__, optimizer, "minibatch"
        else:
            self.optimizer = make_optimizer(optimizer, machine.pool, lr, **options)
            self.optimizer_name, updater = optimizer, OPTIMIZERS[optimizer].updater
        self.options = {**OPTIMIZERS[optimizer].options, **options} if isinstance(optimizer, str) else {}
        self.lr = self.optimizer.lr
        self.updater = UPDATERS[updater](batch_size, hessian_samples, transform) if updater == "minibatch" \
            else UPDATERS[updater]()
        self.batch_size, self.epochs, self.schedule, self.seed = batch_size, epochs, schedule, seed
        self.hessian_samples = hessian_samples
        self.log = log if log is not None else sys.stderr
        self.is_root = self.machine.reducer.is_root
        self.best = ext.BestParams(patience)
        show_bar = self.log.isatty() if progress is None else progress
        self.extensions: list[ext.Extension] = [ext.ProgressBar(self.log) if show_bar else ext.LogLine(self.log),
                                                self.best]
        if show_bar:
            self.extensions.append(ext.LogLine(self.log))
        if out_dir is not None:
            self.extensions += [ext.Checkpoint(out_dir), ext.MetricsFiles(out_dir)]
        self.extensions += [*map(ext.Callback, callbacks), *extensions]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[dict] = []
        self.epoch = self.step = 0
        self.stop: str | None = None
        machine.n_train = len(data.train)

    def settings(self) -> dict:
        """Every setting that decides the parameters this trainer ends with (checkpoints record them)."""
        return {"optimizer": self.optimizer_name, "lr": self.lr, **self.options, "batch_size": self.batch_size,
                "hessian_samples": self.hessian_samples, "epochs": self.epochs, "schedule": self.schedule,
                "patience": self.best.patience, "seed": self.seed}

    # the loop -----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train from the current epoch to `epochs`; returns the history (one record per epoch)."""
        with self.machine.reducer.guard(collective=(TrainingDiverged,)):
            self._join()
            self._call("on_fit_start")
            while self.epoch < self.epochs and not self.stop:
                self.optimizer.set_lr(self.lr and self.lr * schedule_factor(self.schedule, self.epoch, self.epochs))
                self._call("on_epoch_start")
                start = time.perf_counter()
                with np.errstate(over="ignore", invalid="ignore"):   # overflow ends as non-finite values: named
                    train = self.updater.epoch(self, np.random.default_rng([self.seed, self.epoch]))
                record = {"epoch": self.epoch + 1, "lr": self.optimizer.lr,
                          "seconds": round(time.perf_counter() - start, 3), **_record("train", train)}
                for name in ("val", "test"):
                    split = getattr(self.data, name)
                    if len(split):
                        record.update(_record(name, self.evaluate(split)))
                self.epoch += 1
                self.history.append(record)
                self._call("on_epoch_end", record)
            self._call("on_fit_end")
        return self.history

    def batch_end(self, samples: int) -> None:
        """Called by the updater after each step."""
        self._call("on_batch_end", samples)

    def _call(self, hook: str, *args) -> None:
        for extension in self.extensions:
            getattr(extension, hook)(self, *args)

    def _join(self) -> None:
        """Check that every process trains the same thing on the same data, then take the first one's state."""
        r, pool, d = self.machine.reducer, self.machine.pool, self.data
        r.agree("the training settings", {"parameters": pool.size, "dtype": pool.dtype.name, **self.settings(),
                                          "epoch": self.epoch, "step": self.step})
        r.agree("the data", {f"{name} checksum": checksum(s.x, s.y) for name, s in
                             (("train", d.train), ("val", d.val), ("test", d.test))},
                "; every process must load the same data set")
        r.broadcast(pool.x)
        self.optimizer.load_state({k: r.broadcast(v) for k, v in self.optimizer.state().items()})

    def evaluate(self, split) -> Meter:
        """Loss, error rate and confusion of the machine on a split (summed over processes)."""
        return evaluate(self.machine, split, self.data.n_classes)

    # best parameters ----------------------------------------------------------------------
    @property
    def best_error(self) -> float:
        return self.best.error

    @property
    def best_params(self) -> np.ndarray | None:
        return self.best.params

    def restore_best(self) -> None:
        """Put the parameters of the best validation error back into the pool."""
        if self.best.params is not None:
            self.machine.pool.load(self.best.params)

    # checkpoints --------------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON state, arrays) of the loop and of every extension that keeps state."""
        state = {"epoch": self.epoch, "step": self.step, "history": self.history, "settings": self.settings(),
                 "extensions": {e.name: e.state() for e in self.extensions if e.name}}
        arrays = {f"{e.name}/{k}": v for e in self.extensions if e.name for k, v in e.arrays().items()}
        return state, arrays

    def save(self, path: str | Path) -> None:
        state, arrays = self.state()
        save_checkpoint(path, self.machine.spec, self.machine.pool.x, self.optimizer.state(), state, arrays)

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint.npz (or its run directory): parameters, optimizer slots, epoch,
        history and the extensions' state. With several processes the first reads and sends."""
        r = self.machine.reducer
        with r.guard():
            params, opt, state, arrays = r.share(_read_run(path) if r.is_root else None)
        self.machine.pool.load(params)
        if state.get("settings", {}).get("optimizer") == self.optimizer_name:
            self.optimizer.load_state(opt)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = list(state["history"])
        for e in self.extensions:
            if e.name:
                prefix = f"{e.name}/"
                e.load(state["extensions"].get(e.name, {}),
                       {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})


def _read_run(path: str | Path) -> tuple:
    _, params, opt, state, arrays = load_checkpoint(path, with_arrays=True)
    if "history" not in state:                                   # best.npz: resuming would lose the history
        raise CheckpointError(f"{path}: holds parameters but no training state; resume from checkpoint.npz")
    return params, opt, state, arrays


def _record(name: str, meter: Meter) -> dict:
    record = {f"{name}_loss": meter.loss}
    if not math.isnan(meter.error):
        record[f"{name}_error"] = meter.error
    return record
