"""Updaters: one epoch of training, one class per way of using the data.

`MiniBatch` steps after each batch (on-line learning is batch 1; an optimizer that `needs_curvature`,
SDLM, gets its Gauss-Newton diagonal estimated at the start of each epoch); `FullBatch` takes the
lecture's one full-batch step an epoch; `LBFGSUpdater` runs L-BFGS iterations on the full-batch
objective. Each returns the epoch's training Meter and raises TrainingDiverged at the first
non-finite loss or parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fbprop.data.datasets import batches
from fbprop.train.meters import Meter, evaluate

if TYPE_CHECKING:
    from fbprop.train.loop import Trainer

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class TrainingDiverged(RuntimeError):
    """The loss or the parameters went NaN or infinite."""


class Updater:
    """One epoch of training of `trainer.machine` by `trainer.optimizer` on `trainer.data.train`.

    `transform(x, rng)`, if given, returns each batch's inputs distorted (data augmentation);
    `hessian_samples` training samples estimate the Gauss-Newton diagonal before each epoch for an
    optimizer that `needs_curvature` (SDLM, as in LeCun et al. 1998).
    """

    def __init__(self, batch_size: int = 32, hessian_samples: int = 500, transform: Transform | None = None) -> None:
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"Trainer: expected batch_size >= 1, got {batch_size}")
        if not (isinstance(hessian_samples, (int, np.integer)) and hessian_samples >= 1):
            raise ValueError(f"Trainer: expected hessian_samples >= 1, got {hessian_samples}")
        self.batch_size, self.hessian_samples, self.transform = int(batch_size), int(hessian_samples), transform

    def epoch(self, trainer: Trainer, rng: np.random.Generator) -> Meter:
        meter = self.run(trainer, rng)
        if not np.isfinite(trainer.machine.pool.x).all():
            raise diverged(trainer, "end of epoch", trainer.data.train.x[:256])
        return meter

    def run(self, trainer: Trainer, rng: np.random.Generator) -> Meter:
        raise NotImplementedError


class MiniBatch(Updater):
    """A step after each mini-batch of `batch_size` samples drawn in a fresh seeded order each epoch."""

    def run(self, trainer: Trainer, rng: np.random.Generator) -> Meter:
        m, opt, train = trainer.machine, trainer.optimizer, trainer.data.train
        if opt.needs_curvature:
            idx = rng.choice(len(train), size=min(self.hessian_samples, len(train)), replace=False)
            m.curvature(train.x[idx], train.y[idx])
            opt.update_hessian(gamma=1.0)                        # h_kk from this epoch's sample
        meter = Meter(trainer.data.n_classes)
        with m.noise(rng):                                       # dropout masks while training, not after
            for x, y in batches(train, self.batch_size, rng):
                if self.transform is not None:                   # the global batch, the same rng on every rank
                    x = self.transform(x, rng)
                loss = m.gradient(x, y)
                if not math.isfinite(loss):
                    raise diverged(trainer, "mini-batch loss", x)
                opt.step()
                trainer.step += 1
                part = m.reducer.part(len(y))
                if part.stop > part.start:
                    meter.add_batch(m, y[part])
                trainer.batch_end(len(x))
        return meter.summed(m)


class FullBatch(Updater):
    """The lecture's batch gradient descent: one step W ← W − (η/P)[Σ∂L/∂W + λ∂H/∂W] an epoch."""

    def run(self, trainer: Trainer, rng: np.random.Generator) -> Meter:
        m, train = trainer.machine, trainer.data.train
        if not math.isfinite(m.full_gradient(train.x, train.y)):
            raise diverged(trainer, "full-batch gradient", train.x[:256])
        trainer.optimizer.step()
        trainer.step += 1
        trainer.batch_end(len(train))
        return evaluate(m, train, trainer.data.n_classes)


class LBFGSUpdater(Updater):
    """`optimizer.max_iter` L-BFGS iterations an epoch on the full-batch objective.

    With several processes the first one drives scipy and sends every trial point; all evaluate
    the (summed) objective there, so no difference in rounding can make their line searches part.
    """

    def run(self, trainer: Trainer, rng: np.random.Generator) -> Meter:
        m, train, opt = trainer.machine, trainer.data.train, trainer.optimizer
        r, go = m.reducer, np.zeros(1, np.int64)

        def objective() -> float:
            value = m.full_gradient(train.x, train.y)
            if not math.isfinite(value):
                raise diverged(trainer, "L-BFGS objective", train.x[:256])
            return value

        if r.is_root:
            def everywhere() -> float:
                go[0] = 1
                r.broadcast(go)
                r.broadcast(m.pool.x)
                return objective()
            opt.minimize(everywhere)
            go[0] = 0
            r.broadcast(go)
        else:
            while r.broadcast(go)[0]:
                r.broadcast(m.pool.x)
                objective()
        r.broadcast(m.pool.x)                                    # the point scipy returned
        trainer.step += opt.max_iter
        trainer.batch_end(len(train))
        return evaluate(m, train, trainer.data.n_classes)


UPDATERS: dict[str, type[Updater]] = {"minibatch": MiniBatch, "full-batch": FullBatch, "lbfgs": LBFGSUpdater}


def diverged(trainer: Trainer, where: str, x: np.ndarray) -> TrainingDiverged:
    """The error for a non-finite loss or parameter, naming the epoch, the step and the first culprit."""
    m = trainer.machine
    culprit = m.first_nonfinite(x)
    if culprit is None:                                          # finite energies: the loss itself overflowed
        culprit = "the parameters" if not np.isfinite(m.pool.x).all() else repr(m.loss)
    rate = f"; try a smaller learning rate (now {trainer.optimizer.lr:g})" if trainer.optimizer.lr else ""
    if culprit == "the input batch":                             # no learning rate makes bad data finite
        rate = f" (NaN, infinite, or too large for {x.dtype}): check the data"
    return TrainingDiverged(f"training diverged in epoch {trainer.epoch + 1} after {trainer.step} steps ({where}); "
                            f"first non-finite output: {culprit}{rate}")
