"""Linear module: y = W x (the lecture keeps the bias in the sigmoid module that follows)."""

from __future__ import annotations

import numpy as np

from fbprop.blas import add_product, product_call
from fbprop.module import Module, Plan, expect_shape
from fbprop.params import ParamPool
from fbprop.state import State, is_batch_last


class Linear(Module):
    """y = W x with W (n_out, n_in) from the pool. Shapes: x (n, n_in) -> y (n, n_out).

    bprop and bbprop add their products straight into dx/ddx (gemm, β = 1), or write them (β = 0)
    where dx is still zero from a lazy clear; bbprop squares W and x into buffers kept across
    calls. fprop and bprop keep their checks and their products' routes while the operands keep
    their shapes and buffers (`Plan`).
    """

    def __init__(self, n_in: int, n_out: int, pool: ParamPool) -> None:
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.w = pool.alloc(self.n_out, self.n_in, fan_in=self.n_in)
        self._w2, self._x2 = State(), State()

    _forward: Plan | None = None                                  # fprop's decisions, bprop's (see Plan)
    _backward: Plan | None = None
    _plus: Plan | None = None                                     # fprop_plus's

    def fprop(self, inp: State, out: State) -> None:
        x, plan = inp.x, self._forward
        if plan is None or not plan.fits(x, out.x, self.w.x):
            plan = self._forward = self._plan_fprop(inp, out)
        y_is, wt = plan.calls
        y_is(x, wt)                                              # y = W x

    def fprop_plus(self, inp: State, out: State, offset: np.ndarray) -> None:
        """out ← W x + offset, the offset (one sample's, (n_out,)) added by the product itself:
        copied into out, then gemm with β = 1, which OpenBLAS runs without the pass that zeroes C
        for β = 0; one pass over out less than a product followed by an add. For `Cascade`'s fold
        of a squashing's bias during inference (`Squash.input_offset`). The sum is rounded as
        gemm adds into C: where OpenBLAS splits a long inner dimension into blocks (784 inputs),
        the offset joins the first block's sum rather than the whole, a difference in the last bit."""
        x, plan = inp.x, self._plus
        if plan is None or not plan.fits(x, out.x, self.w.x, offset):
            plan = self._plus = self._plan_fprop(inp, out, offset)
        y_is, wt = plan.calls
        np.copyto(out.x, offset)
        y_is(x, wt)                                              # y = W x + offset

    def can_add(self, offset_shape: tuple[int, ...]) -> bool:
        """Whether `fprop_plus` takes an offset of this shape (one number per output)."""
        return tuple(offset_shape) == (self.n_out,)

    def bprop(self, inp: State, out: State) -> None:
        g, x, w = out.dx, inp.x, self.w.x
        dx, dx_zero = inp.sum_target("dx") if inp.requires_dx else (None, False)
        dw, dw_zero = self.w.dx_for_sum()
        plan = self._backward
        if plan is None or not plan.fits(x, g, dx, dw):
            plan = self._backward = self._plan_bprop(g, x, dx, dw)
        dx_is, dx_adds, dw_is, dw_adds, gt = plan.calls
        if dx is not None:
            (dx_is if dx_zero else dx_adds)(g, w)                # ∂E/∂x = Wᵀ ∂E/∂y
        (dw_is if dw_zero else dw_adds)(gt, x)                   # ∂E/∂W = ∂E/∂y xᵀ

    def _plan_fprop(self, inp: State, out: State, offset: np.ndarray | None = None) -> Plan:
        """fprop's plan, or with an `offset` fprop_plus's (the product added into out, β = 1)."""
        x, w = inp.x, self.w.x
        if x.ndim != 2 or x.shape[1] != self.n_in:
            expect_shape(self, inp, (None, self.n_in))
        dtype = x.dtype if x.dtype is w.dtype else np.result_type(x, w)
        out.resize(x.shape[0], self.n_out, dtype=dtype, batch_last=is_batch_last(x))
        beta = 0.0 if offset is None else 1.0
        return Plan(x, out.x, w, offset, calls=(product_call(out.x, x, w.T, beta=beta), w.T))

    def _plan_bprop(self, g: np.ndarray, x: np.ndarray, dx: np.ndarray | None, dw: np.ndarray) -> Plan:
        """The products written into (dx, dw zero since a clear, `State.sum_target`) or added into them."""
        w, gt = self.w.x, g.T
        to_dx = (product_call(dx, g, w), product_call(dx, g, w, beta=1.0)) if dx is not None else (None, None)
        return Plan(x, g, dx, dw, calls=(*to_dx, product_call(dw, gt, x), product_call(dw, gt, x, beta=1.0), gt))

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
