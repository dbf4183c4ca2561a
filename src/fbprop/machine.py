"""Machine: a net, an energy and a loss over one ParamPool — the thing a Trainer trains."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from fbprop.distributed import SingleProcess
from fbprop.losses import Loss, Regularizer, infer
from fbprop.module import Cascade, Module
from fbprop.params import ParamPool
from fbprop.state import State


class Machine:
    """An energy-based learning machine: E(W, Y, X) = energy(G(X, W), Y), trained through a loss.

    - classification: `energy` maps G(X) (n, d) to one energy per answer (n, k) (RBF,
      NegatedScores), the loss reads them with integer labels, inference is argmin over answers;
    - regression: `energy` is Euclidean(G(X), Y) (n,), the loss is the energy loss.

    `gradient` leaves in `pool.dx` the batch mean of ∂L_i/∂W plus (λ/P) ∂H/∂W, P = `n_train`:
    the quantity every optimizer in `fbprop.optim` steps along (see the lecture's formulas there).
    """

    def __init__(self, net: Module, energy: Module, loss: Loss, pool: ParamPool,
                 regularizer: Regularizer | None = None, spec: dict | None = None) -> None:
        self.net, self.energy, self.loss, self.pool = net, energy, loss, pool
        self.regularizer = regularizer
        self.spec = spec or {}
        self.n_train = 1
        self.reducer = SingleProcess()                           # fbprop.distributed.data_parallel replaces it
        self.regression = getattr(energy, "n_inputs", 1) == 2
        self.inp = State(requires_dx=False)
        self.out, self.target, self.energies, self.labels, self.losses = (State() for _ in range(5))
        self.target.requires_dx = False

    # forward ------------------------------------------------------------------------------
    def fprop(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.inp.x = x
        self.net.fprop(self.inp, self.out)
        if self.regression:
            if y is None:                                        # no target: G(X) is the answer
                return
            self.target.x = y
            self.energy.fprop(self.out, self.target, self.energies)
        else:
            self.energy.fprop(self.out, self.energies)
        if y is not None:
            self.labels.x = y
            self.loss.fprop(self.energies, None if self.regression else self.labels, self.losses)

    def answers(self) -> np.ndarray | None:
        """argmin_y E(W, y, X) for the batch of the last fprop; None for a regression."""
        return None if self.regression else infer(self.energies.x)

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """argmin_y E(W, y, X) for each sample (classification) or G(X) (regression)."""
        parts = []
        for i in range(0, len(x), batch_size):
            self.fprop(x[i:i + batch_size], None)
            parts.append(self.out.x.copy() if self.regression else self.answers())
        return np.concatenate(parts) if parts else np.zeros(0, np.intp)

    @contextmanager
    def noise(self, rng: np.random.Generator) -> Iterator[None]:
        """Training mode for the span of the block: each stochastic module (Dropout: `stochastic`
        True) draws its noise from a generator seeded from `rng` (one draw; per process under MPI,
        so ranks do not repeat each other's masks). Outside any such block they are deterministic
        (inference), so predict and evaluation need no switch. Nothing is drawn from `rng` for a
        machine without stochastic modules."""
        noisy = [m for m in leaves(self.net) if getattr(m, "stochastic", False)]
        if not noisy:
            yield
            return
        child = np.random.default_rng([int(rng.integers(2**63)), self.reducer.rank])
        for m in noisy:
            m.rng = child
        try:
            yield
        finally:
            for m in noisy:
                m.rng = None

    # backward -----------------------------------------------------------------------------
    def _sweep(self, method: str, slot: str) -> None:
        """One backward sweep (method "bprop" or "bbprop") from the losses down to the input."""
        getattr(self.energies, f"clear_{slot}")()
        getattr(self.out, f"clear_{slot}")()
        if slot == "ddx":
            self.losses.clear_ddx()                              # the objective is linear in each L_i
        labels = None if self.regression else self.labels
        getattr(self.loss, method)(self.energies, labels, self.losses)
        inputs = (self.out, self.target) if self.regression else (self.out,)
        getattr(self.energy, method)(*inputs, self.energies)
        getattr(self.net, method)(self.inp, self.out)

    def bprop(self) -> None:
        self._sweep("bprop", "dx")

    def bbprop(self) -> None:
        self._sweep("bbprop", "ddx")

    def accumulate(self, x: np.ndarray, y: np.ndarray, weight: float) -> float:
        """fprop and bprop one batch, adding weight · Σ_i ∂L_i/∂W into pool.dx; returns Σ_i L_i."""
        self.fprop(x, y)
        self.losses.dx.fill(weight)                              # ∂objective/∂L_i
        self.bprop()
        return float(self.losses.x.sum())

    def _accumulate_part(self, x: np.ndarray, y: np.ndarray, weight: float, batch_size: int | None = None) -> float:
        """`accumulate` over this process's part of (x, y), in batches of `batch_size`; Σ_i L_i of that part."""
        part = self.reducer.part(len(x))
        x, y = x[part], y[part]
        step = batch_size or max(len(x), 1)
        return sum((self.accumulate(x[i:i + step], y[i:i + step], weight) for i in range(0, len(x), step)), 0.0)

    def _summed_dx(self, total: float) -> float:
        """pool.dx ← Σ over processes; NaN on every process when any process's total is not finite."""
        if not math.isfinite(total):
            self.pool.dx[0] = np.nan                             # NaN + anything = NaN: every process sees it
        self.reducer.sum(self.pool.dx)
        return total if math.isfinite(self.pool.dx[0]) else math.nan

    def gradient(self, x: np.ndarray, y: np.ndarray) -> float:
        """pool.dx ← (1/B) Σ_B ∂L_i/∂W + (λ/P) ∂H/∂W; returns the mean loss of the samples this process took.

        NaN when any process's loss is not finite.
        """
        self.pool.clear_dx()
        total = self._summed_dx(self._accumulate_part(x, y, 1.0 / len(x)))
        if self.regularizer is not None:
            self.regularizer.bprop(self.pool, 1.0 / self.n_train)
        part = self.reducer.part(len(x))
        return total / max(part.stop - part.start, 1)

    def curvature(self, x: np.ndarray, y: np.ndarray) -> float:
        """pool.ddx ← Gauss-Newton diagonal of the same objective as `gradient`; dx is left as the local part's."""
        self.pool.clear_dx()
        self.pool.clear_ddx()
        part = self.reducer.part(len(x))
        total = 0.0
        if part.stop > part.start:
            total = self.accumulate(x[part], y[part], 1.0 / len(x))   # the fprop and ∂objective/∂L_i bbprop reads
            self.bbprop()
        self.reducer.sum(self.pool.ddx)
        if self.regularizer is not None:
            self.regularizer.bbprop(self.pool, 1.0 / self.n_train)
        return total / max(part.stop - part.start, 1)

    def full_gradient(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
        """The lecture's batch gradient: pool.dx ← (1/P)[Σ_i ∂L_i/∂W + λ ∂H/∂W] over all of x.

        Returns the objective (1/P)[Σ_i L_i + λ H(W)], whose gradient this is.
        """
        p = len(x)
        self.pool.clear_dx()
        total = np.array([self._accumulate_part(x, y, 1.0 / p, batch_size)])
        self.reducer.sum(self.pool.dx)
        value = float(self.reducer.sum(total)[0])
        if self.regularizer is not None:
            self.regularizer.bprop(self.pool, 1.0 / p)
            value += self.regularizer.fprop(self.pool)
        return value / p

    def first_nonfinite(self, x: np.ndarray) -> str | None:
        """Run x forward stage by stage and name the first module whose output is not finite."""
        if not np.isfinite(x).all():
            return "the input batch"
        state = State(x)
        for m in leaves(self.net):
            out = State()
            m.fprop(state, out)
            if not np.isfinite(out.x).all():
                return repr(m)
            state = out
        energies = State()
        if not self.regression:
            self.energy.fprop(state, energies)
            if not np.isfinite(energies.x).all():
                return repr(self.energy)
        return None

    def __repr__(self) -> str:
        return (f"Machine(net={self.net!r},\n        energy={self.energy!r}, loss={self.loss!r}, "
                f"regularizer={self.regularizer!r}, parameters={self.pool.size})")


def leaves(m: Module) -> list[Module]:
    """The modules of a net in order, containers opened."""
    return [leaf for c in m.modules for leaf in leaves(c)] if isinstance(m, Cascade) else [m]
