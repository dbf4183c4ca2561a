"""Linear module: y = W x (the lecture keeps the bias in the sigmoid module that follows)."""

from __future__ import annotations

import numpy as np

from fbprop.module import Module, expect_shape
from fbprop.params import ParamPool
from fbprop.state import State


class Linear(Module):
    """y = W x with W (n_out, n_in) from the pool. Shapes: x (n, n_in) -> y (n, n_out).

    Products go through np.dot, which hands every shape to BLAS; np.matmul computes the
    batch-of-one weight gradient (an outer product) without BLAS, 5x slower at 784x300. Each
    product lands in a scratch buffer kept across calls, then is added (the contract adds).
    """

    def __init__(self, n_in: int, n_out: int, pool: ParamPool) -> None:
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.w = pool.alloc(self.n_out, self.n_in, fan_in=self.n_in)
        self._gx, self._gw = State(), State()

    def fprop(self, inp: State, out: State) -> None:
        expect_shape(self, inp, (None, self.n_in))
        out.resize(inp.batch, self.n_out, dtype=np.result_type(inp.x, self.w.x))
        np.dot(inp.x, self.w.x.T, out=out.x)                     # y = W x

    def _back(self, inp: State, g: np.ndarray, w: np.ndarray, x: np.ndarray, slot: str) -> None:
        dtype = np.result_type(g, w)
        if inp.requires_dx:
            gx = self._gx.resize(*x.shape, dtype=dtype).x
            np.dot(g, w, out=gx)
            acc = getattr(inp, slot)
            acc += gx
        gw = self._gw.resize(self.n_out, self.n_in, dtype=dtype).x
        np.dot(g.T, x, out=gw)
        acc = getattr(self.w, slot)
        acc += gw

    def bprop(self, inp: State, out: State) -> None:
        self._back(inp, out.dx, self.w.x, inp.x, "dx")           # ∂E/∂x = Wᵀ ∂E/∂y, ∂E/∂W = ∂E/∂y xᵀ

    def bbprop(self, inp: State, out: State) -> None:
        self._back(inp, out.ddx, self.w.x**2, inp.x**2, "ddx")   # (W∘W)ᵀ ∂²E/∂y², ∂²E/∂y² (x∘x)ᵀ

    def __repr__(self) -> str:
        return f"Linear({self.n_in} -> {self.n_out})"
