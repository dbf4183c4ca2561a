"""Trainer: the epoch loop — epochs, the schedule, one epoch of the updater, the extensions."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from fbprop.data.datasets import Dataset
from fbprop.distributed import data_parallel
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
    `transform(x, rng) -> x'`, e.g. `fbprop.data.Affine()`, distorts each training batch (data
    augmentation; mini-batch optimizers only). Each epoch the updater trains on data.train; then
    val is evaluated (and test, only with `show_test`: for teaching, since choosing a model by its
    test error makes that error optimistic), and the
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
                 show_test: bool = False, out_dir: str | Path | None = None, callbacks: Sequence[Callable] = (),
                 extensions: Sequence[ext.Extension] = (), progress: bool | None = None, log: TextIO | None = None,
                 comm: MPI.Comm | None = None, **options) -> None:
        if not (isinstance(epochs, int) and epochs >= 0):
            raise ValueError(f"Trainer: expected epochs >= 0, got {epochs}")
        schedule_factor(schedule, 0, epochs)
        self.machine, self.data = data_parallel(machine, comm), data
        if isinstance(optimizer, Optimizer):                     # a user's own: stepped after each mini-batch
            self.optimizer, updater, self.options = optimizer, "minibatch", {}
            self.optimizer_name = type(optimizer).__name__
        else:
            self.optimizer = make_optimizer(optimizer, machine.pool, lr, **options)
            entry = OPTIMIZERS[optimizer]
            self.optimizer_name, updater, self.options = optimizer, entry.updater, {**entry.options, **options}
        self.lr = self.optimizer.lr
        self.updater = UPDATERS[updater](batch_size, hessian_samples, transform)
        self.batch_size, self.epochs, self.schedule, self.seed = batch_size, epochs, schedule, seed
        self.hessian_samples, self.transform, self.show_test = hessian_samples, transform, show_test
        self.log = log if log is not None else sys.stderr
        self.is_root = self.machine.reducer.is_root
        self.best = ext.BestParams(patience)
        self.extensions = [*ext.standard(self.log, self.best, out_dir, progress), *map(ext.Callback, callbacks),
                           *extensions]
        self.history: list[dict] = []
        self.epoch = self.step = 0
        self.stop: str | None = None
        machine.n_train = len(data.train)

    def settings(self) -> dict:
        """Every setting that decides the parameters this trainer ends with (checkpoints record them)."""
        return {"optimizer": self.optimizer_name, "lr": self.lr, **self.options, "batch_size": self.batch_size,
                "hessian_samples": self.hessian_samples, "epochs": self.epochs, "schedule": self.schedule,
                "patience": self.best.patience, "seed": self.seed, **augment_settings(self.transform)}

    # the loop -----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train from the current epoch to `epochs`; returns the history (one record per epoch)."""
        with self.machine.reducer.guard(collective=(TrainingDiverged,)):
            self.machine.reducer.join(self)
            self._call("on_fit_start")
            while self.epoch < self.epochs and not self.stop:
                self.optimizer.set_lr(self.lr and self.lr * schedule_factor(self.schedule, self.epoch, self.epochs))
                self._call("on_epoch_start")
                start = time.perf_counter()
                with np.errstate(over="ignore", invalid="ignore"):   # overflow ends as non-finite values: named
                    train = self.updater.epoch(self, np.random.default_rng([self.seed, self.epoch]))
                record = {"epoch": self.epoch + 1, "lr": self.optimizer.lr,
                          "seconds": round(time.perf_counter() - start, 3), **_record("train", train)}
                for name in ("val", "test") if self.show_test else ("val",):
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

    def evaluate(self, split) -> Meter:
        """Loss, error rate and confusion of the machine on a split (summed over processes)."""
        return evaluate(self.machine, split, self.data.n_classes)

    def restore_best(self) -> None:
        """Put the parameters of the best validation error back into the pool."""
        if self.best.params is not None:
            self.machine.pool.load(self.best.params)

    # checkpoints (fbprop.train.extensions does the work) -----------------------------------
    def save(self, path: str | Path) -> None:
        """Write everything a resume needs to a checkpoint file."""
        ext.save_run(self, path)

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint.npz (or its run directory): parameters, optimizer slots, epoch,
        history and the extensions' state. With several processes the first reads and sends."""
        ext.resume_run(self, path)


def augment_settings(transform: Transform | None) -> dict:
    """{"augment": name, "augment_args": {...}} of a named transform (fbprop.data.augment), {} for none;
    a user's own function is named by its repr (it cannot be rebuilt from a checkpoint)."""
    if transform is None:
        return {}
    name = getattr(transform, "name", repr(transform))
    return {"augment": name, "augment_args": dict(getattr(transform, "args", {}))}


def _record(name: str, meter: Meter) -> dict:
    record = {f"{name}_loss": meter.loss}
    if not math.isnan(meter.error):
        record[f"{name}_error"] = meter.error
    if meter.values:
        record.update({f"{name}_rmse": meter.rmse, f"{name}_mae": meter.mae})
    return record
