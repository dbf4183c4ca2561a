"""Recurrent nets unfolded in time, and a small sequence task to train one on.

A recurrent cell reads (x_t, h_{t−1}) and writes (y_t, h_t). `fbprop.unfold` copies it over T
time steps into one Network whose T cells share one set of weights, so back-propagation through
time is the network's ordinary bprop:

    x_0 ─▶ [cell] ─▶ y_0      x_1 ─▶ [cell'] ─▶ y_1     …     x_{T−1} ─▶ [cell'] ─▶ y_{T−1}
    h_0 ─▶ [    ] ─▶ h_1 ───────▶  [     ] ─▶ h_2 ─ … ─▶      [      ] ─▶ h_T

The task: predict the next value of a noisy sine wave of random phase and frequency, every step
(`sine_task`). Run `python -m fbprop.recurrent` to train and print the test error.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from fbprop.losses import EnergyLoss
from fbprop.machine import Machine
from fbprop.modules.join import Concat, Copy, Scale, Split, SquaredDistance, Sum, Zeros
from fbprop.modules.linear import Linear
from fbprop.modules.squash import Bias, Tanh
from fbprop.network import Network, unfold
from fbprop.optim import SGD
from fbprop.params import ParamPool


def rnn_cell(n_in: int, n_hidden: int, n_out: int, pool: ParamPool) -> Network:
    """h_t = tanh(U x_t + V h_{t−1} + b), y_t = W h_t + c (Elman's simple recurrent net)."""
    return Network(inputs="x, h", outputs="y, h_next", modules=[
        (Linear(n_in, n_hidden, pool),     "x -> ux"),
        (Linear(n_hidden, n_hidden, pool), "h -> vh"),
        (Sum(2),                           "ux, vh -> s"),
        (Tanh(n_hidden, pool),             "s -> h_t"),
        (Copy(2),                          "h_t -> h_next, h_out"),
        (Linear(n_hidden, n_out, pool),    "h_out -> wh"),
        (Bias(n_out, pool),                "wh -> y"),
    ])


def sequence_network(cell: Network, steps: int, n_hidden: int) -> Network:
    """E = ½ Σ_t ‖y_t − target_t‖² for sequences x (n, T, d_in) and targets (n, T·d_out); h_0 = 0."""
    xs, ys = [f"x{t}" for t in range(steps)], [f"y{t}" for t in range(steps)]
    return Network(inputs="seq, target", outputs="energy", modules=[
        (Split(steps, axis=1, squeeze=True),   f"seq -> {', '.join(xs)}"),
        (Zeros(n_hidden),                      "x0 -> h0"),
        (unfold(cell, steps),                  f"{', '.join(xs)}, h0 -> {', '.join(ys)}, h{steps}"),
        (Concat(steps, axis=1),                f"{', '.join(ys)} -> prediction"),
        (SquaredDistance(),                    "prediction, target -> e2"),
        (Scale(0.5),                           "e2 -> energy"),
    ])


def sequence_machine(steps: int = 20, n_hidden: int = 16, seed: int = 0, dtype: type = np.float64) -> Machine:
    """An Elman net unfolded over `steps` steps, trained on one scalar per step with the energy loss."""
    pool = ParamPool(dtype, seed=seed)
    return Machine(sequence_network(rnn_cell(1, n_hidden, 1, pool), steps, n_hidden), None, EnergyLoss(), pool)


def sine_task(n: int, steps: int = 20, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n noisy sine waves of random phase and frequency: inputs x_t (n, T, 1), targets the clean next
    values sin(ω(t+1) + φ) (n, T). The best possible prediction error is set by the noise."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    omega = rng.uniform(0.2, 0.6, (n, 1))
    t = np.arange(steps + 1)[None, :]
    clean = np.sin(omega * t + phase)
    x = clean[:, :-1] + noise * rng.standard_normal((n, steps))
    return x[:, :, None], clean[:, 1:]


def rms_error(machine: Machine, x: np.ndarray, y: np.ndarray) -> float:
    """Root mean square of the prediction errors over every step of every sequence."""
    machine.fprop(x, y)
    return float(np.sqrt(2 * machine.energies.x.mean() / y.shape[1]))


def train_sequence(machine: Machine, x: np.ndarray, y: np.ndarray, epochs: int = 30, lr: float = 0.01,
                   momentum: float = 0.9, batch_size: int = 32, seed: int = 0) -> list[float]:
    """Mini-batch SGD with momentum on (x, y); returns the training RMS error after each epoch."""
    machine.n_train = len(x)
    opt, rng, history = SGD(machine.pool, lr, momentum=momentum), np.random.default_rng(seed), []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch_size):
            batch = order[i:i + batch_size]
            machine.gradient(x[batch], y[batch])
            opt.step()
        history.append(rms_error(machine, x, y))
    return history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fbprop.recurrent",
                                description="train an unfolded Elman net to predict a noisy sine wave")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--train", type=int, default=1000, help="training sequences")
    p.add_argument("--noise", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    machine = sequence_machine(args.steps, args.hidden, args.seed)
    x, y = sine_task(args.train, args.steps, args.noise, args.seed)
    x_test, y_test = sine_task(1000, args.steps, args.noise, args.seed + 1)
    start = time.perf_counter()
    train_sequence(machine, x, y, args.epochs, args.lr, seed=args.seed)
    seconds = time.perf_counter() - start
    baseline = float(np.sqrt(np.mean((x_test[:, :, 0] - y_test) ** 2)))    # "the next value is this one"
    print(f"test RMS error {rms_error(machine, x_test, y_test):.4f} (repeating the noisy input: {baseline:.4f}, "
          f"noise {args.noise}) after {args.epochs} epochs in {seconds:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
