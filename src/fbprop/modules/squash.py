"""Elementwise modules: the lecture's sigmoid with a trainable bias, (X_out)_k = σ((X_in)_k + B_k)."""

from __future__ import annotations

import numpy as np

from fbprop.module import Module
from fbprop.params import ParamPool
from fbprop.state import State


def sum_to(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Σ of a (n, *s) array over the batch axis and the axes where `shape` broadcasts (size 1)."""
    axes = (0,) + tuple(i + 1 for i, k in enumerate(shape) if k == 1 and a.shape[i + 1] != 1)
    return a.sum(axis=axes, keepdims=True).reshape(shape)


class Squash(Module):
    """y = f(x + b), elementwise; b is a trainable bias of `shape` when a pool is given.

    `shape` is one sample's shape (e.g. 30, or (6, 1, 1) for one bias per feature map, which
    broadcasts over the map). Subclasses give f and its derivative written in terms of y, so
    bprop needs nothing but the output: (∂E/∂x)_i = (∂E/∂y)_i f'(x_i + b_i).
    """

    def __init__(self, shape: int | tuple[int, ...] | None = None, pool: ParamPool | None = None) -> None:
        self.shape = (shape,) if isinstance(shape, int) else (tuple(shape) if shape is not None else None)
        if pool is not None and self.shape is None:
            raise ValueError(f"{type(self).__name__}: a trainable bias needs its shape, got shape=None")
        self.b = pool.alloc(*self.shape, value=0.0) if pool is not None else None
        self._g = State()

    def f(self, u: np.ndarray) -> None:
        """u ← f(u), in place."""
        raise NotImplementedError

    def df(self, y: np.ndarray, g: np.ndarray) -> None:
        """g ← f'(u), written in terms of y = f(u)."""
        raise NotImplementedError

    def _check(self, inp: State) -> None:
        if self.shape is None:
            return
        got = inp.x.shape[1:]
        if len(got) != len(self.shape) or any(s != 1 and s != g for s, g in zip(self.shape, got, strict=True)):
            raise ValueError(f"{self!r}: expected input of shape (n, {', '.join(map(str, self.shape))}), "
                             f"got {inp.x.shape}")

    def fprop(self, inp: State, out: State) -> None:
        self._check(inp)
        out.resize(*inp.x.shape, dtype=inp.x.dtype)
        if self.b is None:
            np.copyto(out.x, inp.x)
        else:
            np.add(inp.x, self.b.x, out=out.x)                   # u = x + b
        self.f(out.x)                                            # y = f(u)

    def _slope(self, out: State, scale: np.ndarray, power: int) -> np.ndarray:
        g = self._g.resize(*out.x.shape, dtype=out.x.dtype).x
        self.df(out.x, g)
        if power == 2:
            np.multiply(g, g, out=g)
        np.multiply(g, scale, out=g)
        return g

    def bprop(self, inp: State, out: State) -> None:
        g = self._slope(out, out.dx, 1)                          # ∂E/∂u = f'(u) ∂E/∂y
        inp.dx += g                                              # ∂E/∂x = ∂E/∂u
        if self.b is not None:
            self.b.dx += sum_to(g, self.shape)                   # ∂E/∂b = Σ_batch ∂E/∂u

    def bbprop(self, inp: State, out: State) -> None:
        g = self._slope(out, out.ddx, 2)                         # f'(u)² ∂²E/∂y²  (f'' term dropped)
        inp.ddx += g
        if self.b is not None:
            self.b.ddx += sum_to(g, self.shape)

    def __repr__(self) -> str:
        size = "" if self.shape is None else ", ".join(map(str, self.shape))
        return f"{type(self).__name__}({size}{', bias' if self.b is not None else ''})"


class Tanh(Squash):
    """y = tanh(x + b)."""

    def f(self, u):
        np.tanh(u, out=u)

    def df(self, y, g):
        np.multiply(y, y, out=g)
        np.subtract(1, g, out=g)                                 # tanh' = 1 − y²


class ScaledTanh(Squash):
    """y = A tanh(S (x + b)) with A = 1.7159, S = 2/3, so f(±1) = ±1 (LeCun, "Efficient BackProp")."""

    A, S = 1.7159, 2.0 / 3.0

    def f(self, u):
        np.multiply(u, self.S, out=u)
        np.tanh(u, out=u)
        np.multiply(u, self.A, out=u)

    def df(self, y, g):
        np.multiply(y, y, out=g)
        np.subtract(self.A * self.A, g, out=g)
        np.multiply(g, self.S / self.A, out=g)                   # f' = (S/A)(A² − y²)


class Logistic(Squash):
    """y = 1 / (1 + exp(−(x + b)))."""

    def f(self, u):
        np.negative(u, out=u)
        np.logaddexp(0, u, out=u)
        np.negative(u, out=u)
        np.exp(u, out=u)                                         # σ(u) = exp(−log(1 + e^−u)): exact in both tails

    def df(self, y, g):
        np.subtract(1, y, out=g)
        np.multiply(g, y, out=g)                                 # σ' = y (1 − y)


class ReLU(Squash):
    """y = max(0, x + b); plain elementwise (no bias) when built without a pool."""

    def f(self, u):
        np.maximum(u, 0, out=u)

    def df(self, y, g):
        np.greater(y, 0, out=g)                                  # 1 where u > 0, else 0 (f'' = 0)


class Bias(Squash):
    """y = x + b."""

    def __init__(self, shape: int | tuple[int, ...], pool: ParamPool) -> None:
        super().__init__(shape, pool)

    def f(self, u):
        pass

    def df(self, y, g):
        g.fill(1)
