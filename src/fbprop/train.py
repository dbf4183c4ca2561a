"""Trainer: epochs of on-line, mini-batch, full-batch or L-BFGS training, with meters and checkpoints."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from fbprop.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from fbprop.data.datasets import Dataset, Split, batches
from fbprop.distributed import DataParallel, checksum
from fbprop.machine import Machine
from fbprop.optim import SDLM, SGD, Optimizer, lbfgs

if TYPE_CHECKING:
    from mpi4py import MPI

OPTIMIZERS = ("sgd", "momentum", "sdlm", "batch", "lbfgs")
SCHEDULES = ("constant", "lenet", "cosine")
# LeNet-5's schedule (LeCun et al. 1998, §V): 5e-4 for 2 passes, 2e-4 for 3, 1e-4 for 3,
# 5e-5 for 4, then 1e-5 — here as factors of the initial rate.
LENET_FACTORS = (1, 1, 0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1)


class TrainingDiverged(RuntimeError):
    """The loss or the parameters went NaN or infinite."""


def schedule_factor(name: str, epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of `epoch` (0-based) under a named schedule."""
    if name == "constant":
        return 1.0
    if name == "lenet":
        return LENET_FACTORS[epoch] if epoch < len(LENET_FACTORS) else 0.02
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")


class Meter:
    """Mean loss, error rate and confusion matrix (rows: true class, columns: answer)."""

    def __init__(self, n_classes: int) -> None:
        self.loss_sum, self.count = 0.0, 0
        self.confusion = np.zeros((n_classes, n_classes), dtype=np.int64)

    def add(self, loss_sum: float, answers: np.ndarray | None, labels: np.ndarray) -> None:
        self.loss_sum += loss_sum
        self.count += len(labels)
        if answers is not None:
            np.add.at(self.confusion, (labels, answers), 1)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def error(self) -> float:
        total = self.confusion.sum()
        return float(1.0 - np.trace(self.confusion) / total) if total else float("nan")


def evaluate(machine: Machine, split: Split, n_classes: int, batch_size: int = 1024) -> Meter:
    """Loss, error rate and confusion of the machine on a split (no parameter changes)."""
    meter = Meter(n_classes)
    for i in range(0, len(split), batch_size):
        x, y = split.x[i:i + batch_size], split.y[i:i + batch_size]
        machine.fprop(x, y)
        meter.add(float(machine.losses.x.sum()), machine.answers(), y)
    return meter


def make_optimizer(name: str, machine: Machine, lr: float, momentum: float = 0.9, mu: float = 0.02) -> Optimizer | None:
    """The optimizer for a name; None for L-BFGS, which is a loop of its own."""
    if name in ("sgd", "batch"):
        return SGD(machine.pool, lr)
    if name == "momentum":
        return SGD(machine.pool, lr, momentum=momentum)
    if name == "sdlm":
        return SDLM(machine.pool, lr, mu=mu)
    if name == "lbfgs":
        return None
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")


class Trainer:
    """Trains a Machine on a Dataset, one epoch at a time.

    optimizer: "sgd" (on-line when batch_size is 1, mini-batch otherwise), "momentum",
    "sdlm" (Hessian diagonal re-estimated by bbprop on `hessian_samples` training samples before
    each pass, LeCun et al. 1998), "batch" (the lecture's full-batch gradient descent) or
    "lbfgs" (`lbfgs_iters` L-BFGS iterations per epoch on the full-batch objective).
    Each epoch records train/val/test loss and error; early stopping stops after `patience`
    epochs without a strictly lower validation error. With `out_dir`, the trainer writes there after
    every epoch: checkpoint.npz (resumable), best.npz (best validation error), metrics.json and
    metrics.csv; `callbacks` are called as callback(trainer, record) after each epoch.

    With `comm`, an mpi4py communicator of K > 1 processes, the K trainers train one model
    (fbprop.distributed): rank 0's parameters and optimizer state are broadcast when `fit` starts,
    each rank computes the gradient of its shard of every global mini-batch, one allreduce of
    `pool.dx` a step gives every rank the single-process gradient, meters and evaluations are
    summed over ranks, so every rank takes the same early-stopping decision. Only rank 0 logs and
    writes files; callbacks run on every rank (`trainer.is_root` tells rank 0). Every rank must
    hold the same data: `fit` checks it. An exception on one rank ends the whole job with one line
    naming the rank (comm.Abort) rather than leaving the others waiting; TrainingDiverged, which
    every rank raises at the same step, is raised as usual.
    """

    def __init__(self, machine: Machine, data: Dataset, *, optimizer: str = "sgd", lr: float = 0.01,
                 batch_size: int = 32, epochs: int = 10, momentum: float = 0.9, mu: float = 0.02,
                 schedule: str = "constant", patience: int | None = None, seed: int = 0,
                 hessian_samples: int = 500, lbfgs_iters: int = 20, out_dir: str | Path | None = None,
                 callbacks: Sequence[Callable] = (), progress: bool | None = None,
                 log: TextIO | None = None, comm: MPI.Comm | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"Trainer: expected batch_size >= 1, got {batch_size}")
        if epochs < 0:
            raise ValueError(f"Trainer: expected epochs >= 0, got {epochs}")
        if patience is not None and patience < 1:
            raise ValueError(f"Trainer: expected patience None or >= 1, got {patience}")
        schedule_factor(schedule, 0, epochs)
        self.machine, self.data = machine, data
        self.optimizer_name, self.lr, self.batch_size, self.epochs = optimizer, float(lr), batch_size, epochs
        self.optimizer = make_optimizer(optimizer, machine, lr, momentum, mu)
        self.schedule, self.patience, self.seed = schedule, patience, seed
        self.hessian_samples, self.lbfgs_iters = hessian_samples, lbfgs_iters
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        self.parallel = DataParallel(comm) if comm is not None and comm.Get_size() > 1 else None
        self.is_root = self.parallel is None or self.parallel.is_root
        self.log = log if log is not None else sys.stderr
        self.progress = (self.log.isatty() if progress is None else progress) and self.is_root
        self.history: list[dict] = []
        self.epoch = 0
        self.step = 0
        self.best_error = self.best_loss = math.inf
        self.best_params: np.ndarray | None = None
        self.stale = 0
        machine.n_train = len(data.train)

    # checkpoints --------------------------------------------------------------------------
    def state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history,
                "best_error": self.best_error, "best_loss": self.best_loss,
                "stale": self.stale, "optimizer": self.optimizer_name, "lr": self.lr, "seed": self.seed}

    def save(self, path: str | Path) -> None:
        opt = self.optimizer.state() if self.optimizer is not None else {}
        save_checkpoint(path, self.machine.spec, self.machine.pool.x, opt, self.state())

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint: parameters, optimizer state, epoch and history.

        With several ranks, rank 0 reads the files and sends what they hold to the others.
        """
        if self.parallel is None:
            return self._restore(*self._read_run(path))
        with self.parallel.abort_on_error():
            self._restore(*self.parallel.share(self._read_run(path) if self.is_root else None))

    @staticmethod
    def _read_run(path: str | Path) -> tuple:
        spec, params, opt, state = load_checkpoint(path)
        if "history" not in state:                               # best.npz: resuming would lose the history
            raise CheckpointError(f"{path}: holds parameters but no training state; resume from checkpoint.npz")
        best = Path(path).parent / "best.npz" if not Path(path).is_dir() else Path(path) / "best.npz"
        return params, opt, state, load_checkpoint(best)[1] if best.exists() else None

    def _restore(self, params: np.ndarray, opt: dict, state: dict, best: np.ndarray | None) -> None:
        self.machine.pool.load(params)
        if self.optimizer is not None and state.get("optimizer") == self.optimizer_name:
            self.optimizer.load_state(opt)
        self.epoch, self.step = int(state.get("epoch", 0)), int(state.get("step", 0))
        self.history = list(state.get("history", []))
        self.best_error, self.stale = float(state.get("best_error", math.inf)), int(state.get("stale", 0))
        self.best_loss = float(state.get("best_loss", math.inf))
        if best is not None:
            self.best_params = best.astype(self.machine.pool.dtype)

    # evaluation ---------------------------------------------------------------------------
    def evaluate(self, split: Split) -> Meter:
        """`evaluate` of the machine on a split; with several ranks, each takes a shard and the meters are summed."""
        if self.parallel is None:
            return evaluate(self.machine, split, self.data.n_classes)
        part = self.parallel.part(len(split))
        return self._summed(evaluate(self.machine, Split(split.x[part], split.y[part]), self.data.n_classes))

    def _summed(self, meter: Meter) -> Meter:
        """The meter of all ranks together: loss sums, counts and confusion matrices added."""
        if self.parallel is None:
            return meter
        buf = np.concatenate(([meter.loss_sum, meter.count], meter.confusion.ravel())).astype(np.float64)
        self.parallel.sum(buf)                                   # counts stay exact below 2⁵³
        meter.loss_sum, meter.count = float(buf[0]), int(buf[1])
        meter.confusion[...] = np.rint(buf[2:]).reshape(meter.confusion.shape)
        return meter

    # training -----------------------------------------------------------------------------
    def _diverged(self, where: str, x: np.ndarray) -> TrainingDiverged:
        culprit = self.machine.first_nonfinite(x)
        if culprit is None:                                      # finite energies: the loss itself overflowed
            culprit = "the parameters" if not np.isfinite(self.machine.pool.x).all() else repr(self.machine.loss)
        return TrainingDiverged(f"training diverged in epoch {self.epoch + 1} after {self.step} steps ({where}); "
                                f"first non-finite output: {culprit}; try a smaller learning rate (now {self.lr:g})")

    def _estimate_hessian(self, rng: np.random.Generator) -> None:
        train = self.data.train
        idx = rng.choice(len(train), size=min(self.hessian_samples, len(train)), replace=False)
        if self.parallel is None:
            self.machine.curvature(train.x[idx], train.y[idx])
        else:
            self.parallel.curvature(self.machine, train.x[idx], train.y[idx])
        self.optimizer.update_hessian(gamma=1.0)                 # h_kk from this pass's sample

    def _epoch(self, lr: float) -> Meter:
        m, train, par = self.machine, self.data.train, self.parallel
        rng = np.random.default_rng([self.seed, self.epoch])
        meter = Meter(self.data.n_classes)
        if self.optimizer is not None:
            self.optimizer.set_lr(lr)
        if self.optimizer_name == "sdlm":
            self._estimate_hessian(rng)
        full_gradient = m.full_gradient if par is None else partial(par.full_gradient, m)
        if self.optimizer_name == "lbfgs":
            def objective() -> float:
                value = full_gradient(train.x, train.y)
                if not math.isfinite(value):
                    raise self._diverged("L-BFGS objective", train.x[:256])
                return value
            if par is None:
                lbfgs(m.pool, objective, max_iter=self.lbfgs_iters)
            else:
                par.lbfgs(m, objective, max_iter=self.lbfgs_iters)
            self.step += self.lbfgs_iters
            return self.evaluate(train)
        if self.optimizer_name == "batch":
            loss = full_gradient(train.x, train.y)
            if not math.isfinite(loss):
                raise self._diverged("full-batch gradient", train.x[:256])
            self.optimizer.step()                                # W ← W − (η/P)[Σ∂L/∂W + λ∂H/∂W]
            self.step += 1
            return self.evaluate(train)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(train), desc=f"epoch {self.epoch + 1}/{self.epochs}", unit="sample",
                       file=self.log, leave=False)
        for x, y in batches(train, self.batch_size, rng):
            if par is None:
                loss = m.gradient(x, y)
            else:
                loss, y = par.gradient(m, x, y)                  # y: this rank's shard of the batch x
            if not math.isfinite(loss):
                raise self._diverged("mini-batch loss", x)
            self.optimizer.step()
            self.step += 1
            if len(y):
                meter.add(loss * len(y), m.answers(), y)
            if bar is not None:
                bar.update(len(x))
        if bar is not None:
            bar.close()
        if not np.isfinite(m.pool.x).all():
            raise self._diverged("end of epoch", train.x[:256])
        return self._summed(meter)

    def fit(self) -> list[dict]:
        """Train from the current epoch to `epochs`; returns the history (one record per epoch)."""
        if self.parallel is None:
            return self._fit()
        with self.parallel.abort_on_error(collective=(TrainingDiverged,)):
            self._join()
            return self._fit()

    def _join(self) -> None:
        """Check that every rank trains the same thing on the same data, then take rank 0's parameters."""
        par, pool, d = self.parallel, self.machine.pool, self.data
        settings = {"parameters": pool.size, "dtype": pool.dtype.name, "optimizer": self.optimizer_name, "lr": self.lr,
                    "batch_size": self.batch_size, "epochs": self.epochs, "schedule": self.schedule,
                    "patience": self.patience, "seed": self.seed, "hessian_samples": self.hessian_samples,
                    "lbfgs_iters": self.lbfgs_iters, "epoch": self.epoch, "step": self.step}
        par.agree("the training settings", settings)
        par.agree("the data", {f"{name} checksum": checksum(s.x, s.y) for name, s in
                               (("train", d.train), ("val", d.val), ("test", d.test))},
                  "; every process must load the same data set")
        par.broadcast(pool.x)
        if self.optimizer is not None:
            self.optimizer.load_state({k: par.broadcast(v) for k, v in self.optimizer.state().items()})

    def _fit(self) -> list[dict]:
        if self.out_dir is not None and self.is_root:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        d = self.data
        while self.epoch < self.epochs:
            lr = self.lr * schedule_factor(self.schedule, self.epoch, self.epochs)
            start = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):   # overflow ends as non-finite values: _epoch names them
                train = self._epoch(lr)
            seconds = time.perf_counter() - start
            record = {"epoch": self.epoch + 1, "lr": lr, "seconds": round(seconds, 3),
                      "train_loss": train.loss, "train_error": train.error}
            for name, split in (("val", d.val), ("test", d.test)):
                if len(split):
                    meter = self.evaluate(split)
                    record[f"{name}_loss"], record[f"{name}_error"] = meter.loss, meter.error
            self.epoch += 1
            self.history.append(record)
            improved = self._track_best(record)
            if self.is_root:
                self.log.write(self._line(record) + "\n")
                self.log.flush()
            if self.out_dir is not None and self.is_root:
                self.save(self.out_dir / "checkpoint.npz")
                if improved:
                    save_checkpoint(self.out_dir / "best.npz", self.machine.spec, self.machine.pool.x,
                                    trainer={"epoch": self.epoch, **{k2: v for k2, v in record.items()}})
                self.write_metrics()
            for callback in self.callbacks:
                callback(self, record)
            if self.patience is not None and self.stale >= self.patience:
                if self.is_root:
                    self.log.write(f"early stopping: no better validation error for {self.patience} epochs\n")
                break
        return self.history

    def _track_best(self, record: dict) -> bool:
        """Keep the parameters of the lowest validation error, the lower loss breaking a tie (a
        144-sample validation set ties often); only a strictly lower error resets patience."""
        split = "val" if "val_error" in record else "train"
        error, loss = record.get(f"{split}_error"), record.get(f"{split}_loss", math.inf)
        if error is None or math.isnan(error):
            self.stale += 1
            return False
        self.stale = 0 if error < self.best_error else self.stale + 1
        if (error, loss) >= (self.best_error, self.best_loss):
            return False
        self.best_error, self.best_loss = error, loss
        self.best_params = self.machine.pool.x.copy()
        return True

    def restore_best(self) -> None:
        """Put the parameters of the best validation error back into the pool."""
        if self.best_params is not None:
            self.machine.pool.load(self.best_params)

    @staticmethod
    def _line(r: dict) -> str:
        parts = [f"epoch {r['epoch']:3d}", f"lr {r['lr']:.3g}", f"train loss {r['train_loss']:.4f}"]
        for name in ("train", "val", "test"):
            if f"{name}_error" in r and not math.isnan(r[f"{name}_error"]):
                parts.append(f"{name} err {100 * r[f'{name}_error']:.2f}%")
        parts.append(f"{r['seconds']:.1f}s")
        return " | ".join(parts)

    def write_metrics(self) -> None:
        """metrics.json and metrics.csv in the output directory, each written atomically."""
        text = json.dumps({"spec": self.machine.spec, "history": self.history}, indent=1)
        atomic_write(self.out_dir / "metrics.json", lambda f: f.write(text.encode()))
        keys = sorted({k for r in self.history for k in r}, key=lambda k: (k != "epoch", k))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write(self.out_dir / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))
