"""Linear module: y = W x (the lecture keeps the bias in the sigmoid module that follows)."""

from __future__ import annotations

import numpy as np

from fbprop.blas import add_product, product
from fbprop.module import Module, expect_shape
from fbprop.params import ParamPool
from fbprop.state import State, is_batch_last


class Linear(Module):
    """y = W x with W (n_out, n_in) from the pool. Shapes: x (n, n_in) -> y (n, n_out).

    bprop and bbprop add their products straight into dx/ddx with `add_product` (gemm, β = 1),
    or write ∂E/∂W (β = 0) where the pool's dx slice is still zero from a lazy clear; bbprop
    squares W and x into buffers kept across calls.
    """

    def __init__(self, n_in: int, n_out: int, pool: ParamPool) -> None:
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.w = pool.alloc(self.n_out, self.n_in, fan_in=self.n_in)
        self._w2, self._x2 = State(), State()

    def fprop(self, inp: State, out: State) -> None:
        x, w = inp.x, self.w.x
        shape = x.shape
        if len(shape) != 2 or shape[1] != self.n_in:
            expect_shape(self, inp, (None, self.n_in))           # (raises; the test inline: every step)
        dtype = x.dtype if x.dtype is w.dtype else np.result_type(x, w)
        out.resize(shape[0], self.n_out, dtype=dtype, batch_last=is_batch_last(x))
        product(out.x, x, w.T)                                   # y = W x

    def bprop(self, inp: State, out: State) -> None:
        g = out.dx
        if inp.requires_dx:
            dx, zero = inp.sum_target("dx")
            (product if zero else add_product)(dx, g, self.w.x)  # ∂E/∂x = Wᵀ ∂E/∂y
        dw, zero = self.w.dx_for_sum()
        (product if zero else add_product)(dw, g.T, inp.x)       # ∂E/∂W = ∂E/∂y xᵀ

    def bbprop(self, inp: State, out: State) -> None:
        x2 = self._x2.resize(*inp.x.shape, dtype=inp.x.dtype).x
        np.multiply(inp.x, inp.x, out=x2)
        if inp.requires_dx:
            w2 = self._w2.resize(*self.w.x.shape, dtype=self.w.x.dtype).x
            np.multiply(self.w.x, self.w.x, out=w2)
            add_product(inp.ddx, out.ddx, w2)                    # (W∘W)ᵀ ∂²E/∂y²
        add_product(self.w.ddx, out.ddx.T, x2)                   # ∂²E/∂y² (x∘x)ᵀ

    def __repr__(self) -> str:
        return f"Linear({self.n_in} -> {self.n_out})"
