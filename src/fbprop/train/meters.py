"""Meters: the mean loss, error rate and confusion matrix of a pass over data (classification), or
its RMSE and MAE (regression)."""

from __future__ import annotations

import numpy as np

from fbprop.machine import Machine


class Meter:
    """Mean loss, error rate and confusion matrix (rows: true class, columns: answer); for a
    regression machine the root mean square and mean absolute error of its answers G(X) against
    the targets, over every target value (NaN when no regression answer was added)."""

    def __init__(self, n_classes: int) -> None:
        self.loss_sum, self.count = 0.0, 0
        self.confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        self.square_sum = self.abs_sum = 0.0
        self.values = 0

    def add(self, loss_sum: float, answers: np.ndarray | None, labels: np.ndarray) -> None:
        self.loss_sum += loss_sum
        self.count += len(labels)
        if answers is not None:
            np.add.at(self.confusion, (labels, answers), 1)

    def add_batch(self, machine: Machine, labels: np.ndarray) -> None:
        """The losses and answers of the machine's last fprop, on `labels` (targets for a regression)."""
        if machine.regression:
            self.add(float(machine.losses.x.sum()), None, labels)
            d = (machine.out.x - labels).astype(np.float64, copy=False)
            self.square_sum += float(np.vdot(d, d))
            self.abs_sum += float(np.abs(d).sum())
            self.values += d.size
        else:
            self.add(float(machine.losses.x.sum()), machine.answers(), labels)

    def summed(self, machine: Machine) -> Meter:
        """This meter added up over the machine's processes (in place; exact for counts below 2⁵³)."""
        head = [self.loss_sum, self.count, self.square_sum, self.abs_sum, self.values]
        buf = np.concatenate((head, self.confusion.ravel())).astype(np.float64)
        machine.reducer.sum(buf)
        self.loss_sum, self.count = float(buf[0]), int(buf[1])
        self.square_sum, self.abs_sum, self.values = float(buf[2]), float(buf[3]), int(buf[4])
        self.confusion[...] = np.rint(buf[len(head):]).reshape(self.confusion.shape)
        return self

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.square_sum / self.values)) if self.values else float("nan")

    @property
    def mae(self) -> float:
        return self.abs_sum / self.values if self.values else float("nan")

    @property
    def error(self) -> float:
        total = self.confusion.sum()
        return float(1.0 - np.trace(self.confusion) / total) if total else float("nan")


def evaluate(machine: Machine, split, n_classes: int, batch_size: int = 1024) -> Meter:
    """Loss, error rate and confusion (RMSE and MAE for a regression) of the machine on a split,
    with no parameter changes, by the machine's inference (`Machine.inference`: test-time mirroring
    when its spec asks for it).

    With several processes (fbprop.distributed) each takes its part and the meters are summed.
    """
    meter = Meter(n_classes)
    part = machine.reducer.part(len(split))
    xs, ys = split.x[part], split.y[part]
    for i in range(0, len(ys), batch_size):
        x, y = xs[i:i + batch_size], ys[i:i + batch_size]
        machine.inference(x, y)
        meter.add_batch(machine, y)
    return meter.summed(machine)
