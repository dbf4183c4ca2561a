"""Meters: the mean loss, error rate and confusion matrix of a pass over data."""

from __future__ import annotations

import numpy as np

from fbprop.machine import Machine


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

    def add_batch(self, machine: Machine, labels: np.ndarray) -> None:
        """The losses and answers of the machine's last fprop, on `labels`."""
        self.add(float(machine.losses.x.sum()), machine.answers(), labels)

    def summed(self, machine: Machine) -> Meter:
        """This meter added up over the machine's processes (in place; exact for counts below 2⁵³)."""
        buf = np.concatenate(([self.loss_sum, self.count], self.confusion.ravel())).astype(np.float64)
        machine.reducer.sum(buf)
        self.loss_sum, self.count = float(buf[0]), int(buf[1])
        self.confusion[...] = np.rint(buf[2:]).reshape(self.confusion.shape)
        return self

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def error(self) -> float:
        total = self.confusion.sum()
        return float(1.0 - np.trace(self.confusion) / total) if total else float("nan")


def evaluate(machine: Machine, split, n_classes: int, batch_size: int = 1024) -> Meter:
    """Loss, error rate and confusion of the machine on a split (no parameter changes).

    With several processes (fbprop.distributed) each takes its part and the meters are summed.
    """
    meter = Meter(n_classes)
    part = machine.reducer.part(len(split))
    xs, ys = split.x[part], split.y[part]
    for i in range(0, len(ys), batch_size):
        x, y = xs[i:i + batch_size], ys[i:i + batch_size]
        machine.fprop(x, y)
        meter.add_batch(machine, y)
    return meter.summed(machine)
