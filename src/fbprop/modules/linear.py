"""Linear module: y = W x (the lecture keeps the bias in the sigmoid module that follows)."""

from __future__ import annotations

import numpy as np

from fbprop.module import Module, expect_shape
from fbprop.params import ParamPool
from fbprop.state import State


class Linear(Module):
    """y = W x with W (n_out, n_in) from the pool. Shapes: x (n, n_in) -> y (n, n_out)."""

    def __init__(self, n_in: int, n_out: int, pool: ParamPool) -> None:
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.w = pool.alloc(self.n_out, self.n_in, fan_in=self.n_in)

    def fprop(self, inp: State, out: State) -> None:
        expect_shape(self, inp, (None, self.n_in))
        out.resize(inp.batch, self.n_out, dtype=inp.x.dtype)
        np.matmul(inp.x, self.w.x.T, out=out.x)                 # y = W x

    def bprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.dx += out.dx @ self.w.x                          # ∂E/∂x = Wᵀ ∂E/∂y
        self.w.dx += out.dx.T @ inp.x                            # ∂E/∂W = ∂E/∂y xᵀ

    def bbprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.ddx += out.ddx @ (self.w.x * self.w.x)           # (W∘W)ᵀ ∂²E/∂y²
        self.w.ddx += out.ddx.T @ (inp.x * inp.x)                # ∂²E/∂y² (x∘x)ᵀ

    def __repr__(self) -> str:
        return f"Linear({self.n_in} -> {self.n_out})"

