"""Energy modules: a machine's output turned into energies E(W, Y, X)."""

from __future__ import annotations

import numpy as np

from fbprop.blas import add_product, product
from fbprop.module import Module, expect_shape
from fbprop.params import ParamPool
from fbprop.state import State, add_into


def _per_sample(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A (n,) vector viewed as (n, 1, …, 1) to broadcast against a (n, …) array."""
    return v.reshape(v.shape + (1,) * (like.ndim - 1))


class Euclidean(Module):
    """E = ½‖x − y‖² per sample, the regression energy. Shapes: x, y (n, …) -> E (n,).

    A convex cost, so bbprop keeps its own curvature ∂²E/∂x² = 1 (weighted by ∂L/∂E ≥ 0).
    """

    curvature = True
    n_inputs = 2

    def fprop(self, x: State, y: State, out: State) -> None:
        if x.x.shape != y.x.shape:
            raise ValueError(f"Euclidean: expected x and y of the same shape, got {x.x.shape} and {y.x.shape}")
        out.resize(x.batch, dtype=x.x.dtype)
        d = x.x - y.x
        np.einsum("ij,ij->i", d.reshape(x.batch, -1), d.reshape(x.batch, -1), out=out.x)
        out.x *= 0.5                                             # E = ½ Σ (x − y)²

    def bprop(self, x: State, y: State, out: State) -> None:
        g = _per_sample(out.dx, x.x) * (x.x - y.x)
        x.dx += g                                                # ∂E/∂x = x − y
        y.dx -= g                                                # ∂E/∂y = y − x

    def bbprop(self, x: State, y: State, out: State) -> None:
        d = x.x - y.x
        h = _per_sample(out.ddx, d) * d * d                      # (x − y)² ∂²L/∂E²
        h += _per_sample(np.maximum(out.dx, 0), d)               # + ∂L/∂E ∂²E/∂x², ∂²E/∂x² = 1
        x.ddx += h
        y.ddx += h

    def run(self, x: State, y: State, out: State) -> None:
        """The answer of least energy: y = x, E = 0 (the lecture's `run`)."""
        y.set(x.x)
        out.resize(x.batch, dtype=x.x.dtype)
        out.x.fill(0)

    def __repr__(self) -> str:
        return "Euclidean()"


def onehot_codes(k: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    """k target codes of length k: `high` at the class's own place, `low` elsewhere."""
    return np.where(np.eye(k, dtype=bool), high, low)


def random_codes(k: int, d: int, seed: int = 0) -> np.ndarray:
    """k random ±1 codes of length d."""
    return np.random.default_rng(seed).choice([-1.0, 1.0], size=(k, d))


class RBF(Module):
    """Per-class energies E_k = ½‖x − t_k‖² to target codes t (k, d). Shapes: x (n, d) -> E (n, k).

    The codes are fixed, or trainable parameters from the pool when `trainable` is set (the
    output layer of LeNet-5). Its own curvature ∂²E_k/∂x² = 1 is kept in bbprop, weighted by
    Σ_k ∂L/∂E_k where that is positive; the negative part is dropped to keep ddx ≥ 0.
    """

    curvature = True

    def __init__(self, codes: np.ndarray, pool: ParamPool | None = None, trainable: bool = False) -> None:
        codes = np.asarray(codes)
        codes = codes.astype(codes.dtype if codes.dtype.kind == "f" else float)   # float codes keep their dtype
        if codes.ndim != 2:
            raise ValueError(f"RBF: expected codes of shape (k, d), got {codes.shape}")
        self.k, self.d = codes.shape
        if trainable:
            if pool is None:
                raise ValueError("RBF: trainable codes need a ParamPool, got pool=None")
            self.w = pool.alloc(self.k, self.d, value=0.0)
            self.w.x[...] = codes
        else:
            self.w = State(codes.astype(pool.dtype if pool is not None else codes.dtype))
        self._xx, self._tt, self._tmp = State(), State(), State()

    def fprop(self, inp: State, out: State) -> None:
        expect_shape(self, inp, (None, self.d))
        x, t = inp.x, self.w.x
        out.resize(inp.batch, self.k, dtype=x.dtype)
        half_xx = self._xx.resize(inp.batch, 1, dtype=x.dtype).x
        half_tt = self._tt.resize(1, self.k, dtype=x.dtype).x
        np.einsum("ij,ij->i", x, x, out=half_xx[:, 0])
        np.einsum("ij,ij->i", t, t, out=half_tt[0])
        half_xx *= 0.5
        half_tt *= 0.5
        product(out.x, x, t.T)
        np.subtract(half_xx, out.x, out=out.x)
        out.x += half_tt                                         # E = ½‖x‖² − x·t_k + ½‖t_k‖²

    def bprop(self, inp: State, out: State) -> None:
        x, t, g = inp.x, self.w.x, out.dx
        if inp.requires_dx:
            gs = self._xx.resize(inp.batch, 1, dtype=g.dtype).x
            np.sum(g, axis=1, keepdims=True, out=gs)
            tmp = self._tmp.resize(*x.shape, dtype=x.dtype).x
            np.multiply(x, gs, out=tmp)
            add_into(inp, "dx", tmp)
            add_product(inp.dx, g, t, alpha=-1.0)                # ∂E/∂x = Σ_k g_k (x − t_k)
        if self.params():
            self.w.dx += g.sum(0)[:, None] * t - g.T @ x         # ∂E/∂t_k = Σ_n g_nk (t_k − x_n)

    def bbprop(self, inp: State, out: State) -> None:
        x, t, h = inp.x, self.w.x, out.ddx
        inp.ddx += h.sum(1)[:, None] * x * x - 2 * x * (h @ t) + h @ (t * t)   # Σ_k h_k (x − t_k)²
        inp.ddx += np.maximum(out.dx.sum(1), 0)[:, None]         # + Σ_k ∂L/∂E_k · 1
        if self.params():
            self.w.ddx += h.sum(0)[:, None] * t * t - 2 * t * (h.T @ x) + h.T @ (x * x)
            self.w.ddx += np.maximum(out.dx.sum(0), 0)[:, None]

    def init_args(self) -> dict:
        """The constructor's arguments (for `fbprop.save`): the codes are the current ones."""
        return {"codes": self.w.x, "trainable": bool(self.params())}

    def __repr__(self) -> str:
        return f"RBF({self.d} -> {self.k}{', trainable' if self.params() else ''})"


class NegatedScores(Module):
    """E = −s: a net's scores as energies (the best answer has the highest score)."""

    def fprop(self, inp: State, out: State) -> None:
        x, e = inp.x, out.x
        if x.shape != e.shape or x.dtype is not e.dtype or not e.flags.c_contiguous:   # (resize's test, inline)
            e = out.resize(*x.shape, dtype=x.dtype).x
        np.negative(x, out=e)                                    # E = −s

    def bprop(self, inp: State, out: State) -> None:
        into, zero = inp.sum_target("dx")
        if zero:
            np.negative(out.dx, out=into)                        # ∂E/∂s = −1
        else:
            into -= out.dx

    def bbprop(self, inp: State, out: State) -> None:
        inp.ddx += out.ddx                                       # (−1)² ∂²L/∂E²
