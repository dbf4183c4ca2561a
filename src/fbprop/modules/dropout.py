"""Dropout (Srivastava, Hinton, Krizhevsky, Sutskever, Salakhutdinov, JMLR 2014), "inverted":
y = m ∘ x with m_i = 1/(1 − p) with probability 1 − p and 0 otherwise, so E[y] = x and
inference is the identity.

The mask is noise, and noise needs a generator: a Dropout draws a fresh mask at each fprop only
while it holds one (`rng`), which `Machine.noise(rng)` gives it for the span of a training epoch
(the MiniBatch updater does this) and takes back afterwards. Outside that span — `predict`,
`evaluate`, the validation and test passes — `rng` is None and the module passes x through.
`fix_mask(mask)` pins a mask (for the finite-difference check, which needs the same function at
every probe); `fix_mask(None)` releases it.
"""

from __future__ import annotations

import numpy as np

from fbprop.module import Module
from fbprop.state import State


class Dropout(Module):
    """y = m ∘ x with a random mask m of 0 and 1/(1 − p) while training; y = x otherwise.

    bprop adds m ∘ ∂E/∂y to ∂E/∂x and bbprop adds m² ∘ ddy (the module is linear in x for a
    given mask, so the Gauss-Newton diagonal is exact).
    """

    stochastic = True                                            # Machine.noise hands it a generator

    def __init__(self, p: float = 0.5, mask: np.ndarray | list | None = None) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"Dropout: expected a drop probability p in [0, 1), got {p!r}")
        self.p = float(p)
        self.rng: np.random.Generator | None = None
        self.fixed: np.ndarray | None = None
        self.mask: np.ndarray | None = None                      # of the last fprop; None: the identity
        self.fix_mask(mask)

    def init_args(self) -> dict:
        """For fbprop.serialize: p, and a fixed mask where one is set."""
        return {"p": self.p, "mask": None if self.fixed is None else self.fixed.tolist()}

    def fix_mask(self, mask: np.ndarray | None) -> None:
        """Use `mask` (one sample's or a batch's shape, broadcast over the batch) at every fprop; None frees it."""
        self.fixed = None if mask is None else np.asarray(mask, dtype=float)

    def fprop(self, inp: State, out: State) -> None:
        x = inp.x
        if self.fixed is not None:
            if self.fixed.shape not in (x.shape, x.shape[1:]):
                raise ValueError(f"{self!r}: the fixed mask has shape {self.fixed.shape}, expected {x.shape} "
                                 f"or {x.shape[1:]} for input {x.shape}")
            self.mask = self.fixed.astype(x.dtype)
        elif self.rng is not None and self.p > 0:
            keep = self.rng.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64) >= self.p
            self.mask = keep.astype(x.dtype) * x.dtype.type(1 / (1 - self.p))
        else:
            self.mask = None
        out.resize(*x.shape, dtype=x.dtype)
        if self.mask is None:
            np.copyto(out.x, x)
        else:
            np.multiply(x, self.mask, out=out.x)

    def bprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.dx += out.dx if self.mask is None else out.dx * self.mask

    def bbprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.ddx += out.ddx if self.mask is None else out.ddx * self.mask * self.mask

    def __repr__(self) -> str:
        return f"Dropout(p={self.p:g})"
