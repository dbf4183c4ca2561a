"""The module contract with the least glue: the benchmark's MLP as modules exchanging states.

Each module has an fprop(inp, out) and a bprop(inp, out) over states holding x and dx; the
energies are the negated scores, a loss module reads them, the gradients land in one flat vector
in fbprop's pool order and the SGD step is one axpy on it — fbprop's design, as the lecture draws
it. What is left out is everything a library adds around it: no shape, dtype, layout or label
checks, no lazy clears, no routing of products, no network or machine layer. In a chain every
state's dx has one writer and every weight one user, so each bprop writes its term where the
contract adds it into a cleared slot (the same numbers). The products are the reference's
(np.matmul forward, np.dot for ∂E/∂W, which hands every shape to BLAS).

`bench/step_overhead.py` times it beside fbprop and the reference: the part of fbprop's gap that
the contract itself costs (one Python call per module and pass, states between modules, the
separate loss and optimizer) against the part its glue costs.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas
from sys_numpy import Flat


class Slot:
    """x and dx of one state (dx None where nobody reads it: the data)."""

    __slots__ = ("x", "dx")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, dx: bool = True) -> None:
        self.x = np.zeros(shape, dtype)
        self.dx = np.zeros(shape, dtype) if dx else None


class Linear:
    def __init__(self, w: np.ndarray, dw: np.ndarray) -> None:
        self.w, self.dw = w, dw

    def fprop(self, inp: Slot, out: Slot) -> None:
        np.matmul(inp.x, self.w.T, out=out.x)                   # y = W x

    def bprop(self, inp: Slot, out: Slot) -> None:
        if inp.dx is not None:
            np.matmul(out.dx, self.w, out=inp.dx)                # ∂E/∂x = Wᵀ ∂E/∂y
        np.dot(out.dx.T, inp.x, out=self.dw)                     # ∂E/∂W = ∂E/∂y xᵀ


def _bias_grad(g: np.ndarray, db: np.ndarray) -> None:
    if len(g) == 1:
        np.copyto(db, g[0])                                      # one sample: the sum is the sample
    else:
        np.add.reduce(g, axis=0, out=db)                         # ∂E/∂b = Σ_batch ∂E/∂u


class TanhBias:
    def __init__(self, b: np.ndarray, db: np.ndarray) -> None:
        self.b, self.db = b, db

    def fprop(self, inp: Slot, out: Slot) -> None:
        np.add(inp.x, self.b, out=out.x)
        np.tanh(out.x, out=out.x)                                # y = tanh(x + b)

    def bprop(self, inp: Slot, out: Slot) -> None:
        g = inp.dx
        np.multiply(out.x, out.x, out=g)
        np.subtract(1, g, out=g)
        g *= out.dx                                              # ∂E/∂x = (1 − y²) ∂E/∂y
        _bias_grad(g, self.db)


class Bias:
    def __init__(self, b: np.ndarray, db: np.ndarray) -> None:
        self.b, self.db = b, db

    def fprop(self, inp: Slot, out: Slot) -> None:
        np.add(inp.x, self.b, out=out.x)

    def bprop(self, inp: Slot, out: Slot) -> None:
        np.copyto(inp.dx, out.dx)
        _bias_grad(out.dx, self.db)


class Negated:
    def fprop(self, inp: Slot, out: Slot) -> None:
        np.negative(inp.x, out=out.x)                            # E_k = −score_k

    def bprop(self, inp: Slot, out: Slot) -> None:
        np.negative(out.dx, out=inp.dx)


class NLL:
    """L = E_Y + log Σ_k exp(−E_k); ∂L/∂E_k = δ_kY − p_k, scaled by ∂objective/∂L."""

    def __init__(self, n: int, k: int, dtype: np.dtype) -> None:
        self.p, self.low, self.z = np.empty((n, k), dtype), np.empty((n, 1), dtype), np.empty((n, 1), dtype)
        self.rows = np.arange(n)

    def fprop(self, e: Slot, y: np.ndarray, out: Slot) -> None:
        p, low, z = self.p, self.low, self.z
        np.minimum.reduce(e.x, axis=1, keepdims=True, out=low)
        np.subtract(low, e.x, out=p)
        np.exp(p, out=p)
        np.add.reduce(p, axis=1, keepdims=True, out=z)
        p /= z                                                   # p_k = softmax(−E)_k
        np.log(z, out=z)
        np.subtract(e.x[self.rows, y], low[:, 0], out=out.x)
        out.x += z[:, 0]

    def bprop(self, e: Slot, y: np.ndarray, out: Slot) -> None:
        np.negative(self.p, out=e.dx)
        e.dx[self.rows, y] += 1.0
        e.dx *= out.dx[:, None]


class ContractMLP:
    """The MLP of `shapes` (W1, b1, W2, b2, W3, b3) for batches of `n`, trained by SGD at `lr`."""

    name = "contract-floor"

    def __init__(self, init: np.ndarray, shapes, lr: float, n: int) -> None:
        self.p = Flat(init, shapes)
        w1, b1, w2, b2, w3, b3 = zip(self.p.ws, self.p.gs)
        self.modules = [Linear(*w1), TanhBias(*b1), Linear(*w2), TanhBias(*b2), Linear(*w3), Bias(*b3), Negated()]
        dt = init.dtype
        widths = [shapes[0][1], shapes[0][0], shapes[0][0], shapes[2][0], shapes[2][0], shapes[4][0], shapes[4][0]]
        self.states = [Slot((n, widths[0]), dt, dx=False)] + [Slot((n, d), dt) for d in widths[1:] + [widths[-1]]]
        self.loss, self.losses = NLL(n, widths[-1], dt), Slot((n,), dt)
        self.lr, self.axpy = lr, {np.dtype(np.float32): blas.saxpy, np.dtype(np.float64): blas.daxpy}[dt]

    def train_step(self, x: np.ndarray, y: np.ndarray) -> None:
        s, modules = self.states, self.modules
        np.copyto(s[0].x, x.reshape(s[0].x.shape))
        for i, m in enumerate(modules):
            m.fprop(s[i], s[i + 1])
        self.loss.fprop(s[-1], y, self.losses)
        self.losses.dx.fill(1.0 / len(y))                        # ∂objective/∂L_i: the batch mean
        self.loss.bprop(s[-1], y, self.losses)
        for i in range(len(modules) - 1, -1, -1):
            modules[i].bprop(s[i], s[i + 1])
        self.axpy(self.p.g, self.p.w, self.p.w.size, -self.lr)  # W ← W − η ∂L/∂W, one axpy
