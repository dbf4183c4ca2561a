"""Energy-based losses and regularizers.

A loss reads a batch of energies E (n, k) — one energy per answer — and the desired answers Y
(n,), and writes one loss per sample (n,). Below, E_Y is the energy of the desired answer and
Ē = min_{y≠Y} E_y that of the most offending incorrect answer. Formulas: LeCun's 2006 lecture
and LeCun, Chopra, Hadsell, Ranzato, Huang, "A Tutorial on Energy-Based Learning", 2006.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from fbprop.blas import one
from fbprop.module import Module, Plan
from fbprop.params import ParamPool
from fbprop.state import State


def _logistic(u: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0, -u))                          # σ(u) = 1/(1 + e^−u), exact in both tails


@lru_cache(maxsize=16)
def _unsigned(dtype: np.dtype) -> np.dtype:
    """The unsigned integer dtype of the same size (labels seen as unsigned: a negative one is huge)."""
    return np.dtype(dtype.str.replace("i", "u"))


def _labels_below(y: np.ndarray, k: int, unsigned: np.dtype) -> bool:
    """Whether every integer label in y is in [0, k). A few as Python ints (numpy's reduction costs
    1.5-6 µs, most of an on-line step's loss); more in one pass, seen as `unsigned` (y's size): a
    negative label is then larger than any k."""
    if len(y) > 8:
        return bool(np.maximum.reduce(y.view(unsigned)) < k)
    few = y.tolist()
    return not few or (min(few) >= 0 and max(few) < k)


def infer(energies: np.ndarray) -> np.ndarray:
    """Inference in an energy-based machine: the answer of lowest energy, argmin_y E(W, y, X)."""
    if type(energies) is np.ndarray:
        return energies.argmin(axis=1)                           # (np.argmin's wrappers: 3 Python calls more)
    return np.argmin(energies, axis=1)


class Loss(Module):
    """Per-sample loss from energies and labels: `loss.fprop(energies, labels, out)`.

    Subclasses give `terms(E, Y) -> (L, ∂L/∂E, ∂²L/∂E²)`, the last the diagonal of the loss's
    own Hessian (None where it is zero or where the loss is not convex, whose Gauss-Newton
    approximation keeps no curvature of its own), or a function that computes it, where that
    costs more than a step that never calls bbprop should pay. fprop keeps the derivatives it computed for
    the bprop and bbprop of the same sweep (recognised by the energies array they came from).
    """

    n_inputs = 2                                                 # energies, labels

    def terms(self, e: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def _read(self, energies: State, labels: State | None) -> tuple[np.ndarray, np.ndarray]:
        e = energies.x
        if e.ndim != 2:
            raise ValueError(f"{self!r}: expected energies of shape (n, k), got {e.shape}")
        y = labels.x if isinstance(labels, State) else labels
        if type(y) is not np.ndarray and y is not None:
            y = np.asarray(y)
        n, k = e.shape
        if y is None or y.shape != (n,) or y.dtype.kind not in "iu":
            got = "no labels" if y is None else f"{y.dtype} labels of shape {y.shape}"
            raise ValueError(f"{self!r}: expected integer labels of shape ({n},), got {got}")
        if not _labels_below(y, k, _unsigned(y.dtype)):
            raise ValueError(f"{self!r}: expected labels in [0, {k}), got values from {y.min()} to {y.max()}")
        return e, y

    _written: tuple = (None, None)                               # (energies, losses) fprop last wrote the losses of
    _terms: tuple | None = None                                  # (energies, ∂L/∂E, ∂²L/∂E²) of this sweep (fprop's)
    _buf: State | None = None                                    # bprop's scratch (`_scratch`), made when first needed

    _batch: Plan | None = None                                   # a batch's fprop, kept (`_batch_call`)
    _batch_call = None                                           # a subclass's maker of that call, if any

    def fprop(self, energies: State, labels: State | None, out: State) -> None:
        plan = self._batch
        if plan is not None and plan.fits(energies.x, out.x):
            terms = plan.calls[0](energies.x, labels)
            if terms is not None:
                self._terms = terms
                return
        e, y = self._read(energies, labels)
        loss, g, h = self.terms(e, y)                            # (the loss of one sample may come as a float)
        self._terms = (e, g, h)                                  # ∂L/∂E and ∂²L/∂E², for this sweep
        written = self._written
        if written[0] is not e or written[1] is not out.x:       # (the same buffers as before: resized then)
            out.resize(e.shape[0], dtype=e.dtype)
            self._written = (e, out.x)
        out.x[...] = loss
        if self._batch_call is not None and e.ndim == 2 and e.shape[0] > 1:
            self._batch = Plan(e, out.x, calls=(self._batch_call(e, y, out.x),))

    def __getstate__(self) -> dict:
        # a pickle cannot hold the sweep's cached derivatives (NLL's is a closure): bprop recomputes
        # them; the buffers fprop last wrote are found again by the copy's first call
        return {k: v for k, v in vars(self).items() if k not in ("_terms", "_written", "_g1")}

    def _derivatives(self, energies: State, labels: State | None) -> tuple[np.ndarray, np.ndarray | None]:
        cached = self._terms
        if cached is not None and cached[0] is energies.x:
            return cached[1], cached[2]
        return self.terms(*self._read(energies, labels))[1:]

    def _scratch(self, like: np.ndarray) -> np.ndarray:
        buf = self._buf
        if buf is None:
            buf = self._buf = State()
        return buf.resize(*like.shape, dtype=like.dtype).x

    def bprop(self, energies: State, labels: State | None, out: State) -> None:
        cached = self._terms                                     # (_derivatives' cached case, inline)
        g = cached[1] if cached is not None and cached[0] is energies.x else self._derivatives(energies, labels)[0]
        w = out.dx
        w = w[:, None] if g.ndim == 2 else w                     # (_column, inline)
        into, zero = energies.sum_target("dx")
        if zero:
            np.multiply(g, w, out=into)                          # ∂L/∂E_k, scaled by ∂objective/∂L
            return
        t = self._scratch(g)
        np.multiply(g, w, out=t)
        into += t

    def bbprop(self, energies: State, labels: State | None, out: State) -> None:
        g, h = self._derivatives(energies, labels)
        energies.ddx += _column(out.ddx, g) * g * g              # (∂L/∂E_k)² ∂²obj/∂L²
        if h is not None:
            h = h() if callable(h) else h
            energies.ddx += _column(np.maximum(out.dx, 0), g) * h   # + ∂obj/∂L ∂²L/∂E_k²

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _column(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Per-sample factors (n,) shaped to scale energies (n, k) or (n,)."""
    return v[:, None] if like.ndim == 2 else v


def _rows(e: np.ndarray) -> np.ndarray:
    return np.arange(e.shape[0])


def _offending(e: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ȳ: for each sample the incorrect answer of lowest energy."""
    masked = e.copy()
    masked[_rows(e), y] = np.inf
    return np.argmin(masked, axis=1)


def _pair(e: np.ndarray, y: np.ndarray, gy: np.ndarray, gbar: np.ndarray, ybar: np.ndarray) -> np.ndarray:
    """A (n, k) array holding gy at the desired answer and gbar at the most offending one."""
    g = np.zeros_like(e)
    g[_rows(e), y] = gy
    g[_rows(e), ybar] = gbar
    return g


class EnergyLoss(Loss):
    """L = E_Y: push down the energy of the desired answer. Energies (n, k) with labels, or (n,)
    alone (one energy per sample, as a regression's Euclidean energy)."""

    def _read(self, energies, labels):
        if energies.x.ndim == 1:
            return energies.x[:, None], np.zeros(energies.x.shape[0], dtype=np.intp)
        return super()._read(energies, labels)

    def terms(self, e, y):
        g = np.zeros_like(e)
        g[_rows(e), y] = 1.0
        return e[_rows(e), y], g, None

    def bprop(self, energies, labels, out):
        if energies.x.ndim == 1:
            energies.dx += out.dx                                # ∂L/∂E = 1
        else:
            super().bprop(energies, labels, out)

    def bbprop(self, energies, labels, out):
        if energies.x.ndim == 1:
            energies.ddx += out.ddx
        else:
            super().bbprop(energies, labels, out)


class PerceptronLoss(Loss):
    """L = E_Y − min_y E_y (generalized perceptron)."""

    curvature = True

    def terms(self, e, y):
        best = np.argmin(e, axis=1)
        g = np.zeros_like(e)
        g[_rows(e), y] += 1.0
        g[_rows(e), best] -= 1.0
        return e[_rows(e), y] - e[_rows(e), best], g, None


class HingeLoss(Loss):
    """L = [m + E_Y − Ē]⁺ with margin m."""

    curvature = True

    def __init__(self, margin: float = 1.0) -> None:
        self.margin = float(margin)

    def terms(self, e, y):
        ybar = _offending(e, y)
        u = self.margin + e[_rows(e), y] - e[_rows(e), ybar]
        on = (u > 0).astype(e.dtype)
        return np.maximum(u, 0), _pair(e, y, on, -on, ybar), None


class NLLLoss(Loss):
    """L = E_Y + (1/β) log Σ_y exp(−β E_y), with inverse temperature β.

    Computed as a shifted log-sum-exp, exact for any energy range. ∂L/∂E_k = δ_kY − p_k with
    p = softmax(−βE); its Hessian diagonal β p_k (1 − p_k) ≥ 0 is kept by bbprop.
    """

    curvature = True

    def __init__(self, beta: float = 1.0) -> None:
        if not beta > 0:
            raise ValueError(f"NLLLoss: expected beta > 0, got {beta}")
        self.beta = float(beta)
        self._nk, self._n = State(), State()
        self._offsets = self._at = np.zeros(0, np.intp)

    def _batch_call(self, e: np.ndarray, y0: np.ndarray, loss: np.ndarray):
        """The batch (n > 1) path for energies shaped like e and labels shaped like y0, into `loss`
        ((n,)), its buffers and views decided once: `terms` runs it at each call, and fprop keeps
        it (`Loss._batch`), so that a step at a fixed shape goes through no `_read`, `terms` or
        resize (the losses written in place, not copied). The call checks the labels and returns
        (e, ∂L/∂E, the curvature's maker), or None, computing nothing, for labels it was not made
        for or that fail the check (fprop then takes the general path, which names the error)."""
        n, k = e.shape
        shape, dtype, b = y0.shape, y0.dtype, self.beta
        if self._offsets.shape != (n,):
            self._offsets, self._at = np.arange(n) * k, np.empty(n, np.intp)
        at, offsets = self._at, self._offsets
        p, g = self._nk.resize(2, n, k, dtype=e.dtype).x
        low, z = self._n.resize(3, n, 1, dtype=e.dtype).x[:2]
        low0, z0 = low[:, 0], z[:, 0]
        unsigned, one_ = _unsigned(dtype), one(e.dtype)
        kept = (e, g, lambda: b * p * (1.0 - p))

        def call(e: np.ndarray, labels: State | np.ndarray) -> tuple | None:
            y = labels.x if isinstance(labels, State) else labels
            if type(y) is not np.ndarray or y.shape != shape or y.dtype is not dtype:
                return None
            if not _labels_below(y, k, unsigned):
                return None
            np.add(offsets, y, out=at)                           # flat index of (i, Y_i): no fancy-index temporaries
            np.minimum.reduce(e, axis=1, keepdims=True, out=low)
            np.subtract(low, e, out=p)
            if b != 1.0:                                         # (× 1 is exact: skipped)
                np.multiply(p, b, out=p)
            np.exp(p, out=p)
            np.add.reduce(p, axis=1, keepdims=True, out=z)
            np.divide(p, z, out=p)                               # p_k = exp(−βE_k) / Σ exp(−βE)
            np.log(z, out=z)
            if b != 1.0:
                np.multiply(z, 1.0 / b, out=z)
            e.take(at, out=loss, mode="clip")                    # at is in range; "raise" would buffer out
            np.add(loss, z0, out=loss)
            np.subtract(loss, low0, out=loss)                    # L = E_Y − free, free = −(1/β) log Σ exp(−βE)
            p.take(at, out=z0, mode="clip")                      # (methods: np.take's wrapper costs 1 µs)
            np.subtract(one_, z0, out=z0)
            np.negative(p, out=g)
            g.put(at, z0, mode="clip")                           # ∂L/∂E_k = δ_kY − p_k
            return kept if e is kept[0] else (e, g, kept[2])
        return call

    def terms(self, e, y):
        if e.shape[0] == 1:
            return self._one(e, y)
        loss = self._n.resize(3, e.shape[0], 1, dtype=e.dtype).x[2, :, 0]
        _, g, h = self._batch_call(e, y, loss)(e, y)             # (the labels checked by _read)
        return loss, g, h

    def _one(self, e, y):
        """One sample (on-line learning): its k energies as Python floats, in double precision, the
        loss returned as a float. At k = 10 this costs 2.5 µs where the batch path's 13 numpy calls
        cost 12."""
        b, row, t = self.beta, e.tolist()[0], y.item(0)
        low = min(row)
        exp = math.exp
        w = [exp(low - v) for v in row] if b == 1.0 else [exp(b * (low - v)) for v in row]   # exp(−β(E_k − min E)) ≤ 1
        z = sum(w)
        grad = [-(v / z) for v in w]                             # −p_k
        grad[t] += 1.0                                           # ∂L/∂E_k = δ_kY − p_k
        kept = self._g1
        if kept[0] is not e:                                     # (a buffer kept while the energies' is the same)
            kept = self._g1 = (e, self._nk.resize(2, 1, len(row), dtype=e.dtype).x[1])
        g = kept[1]
        g[0] = grad
        return row[t] - low + math.log(z) / b, g, lambda: np.array([[b * (v / z) * (1.0 - v / z) for v in w]], e.dtype)

    _g1: tuple = (None, None)                                    # (energies, ∂L/∂E buffer) of _one


class LogLoss(Loss):
    """L = log(1 + exp(E_Y − Ē))."""

    curvature = True

    def terms(self, e, y):
        ybar = _offending(e, y)
        u = e[_rows(e), y] - e[_rows(e), ybar]
        s = _logistic(u)
        c = s * (1 - s)
        return np.logaddexp(0, u), _pair(e, y, s, -s, ybar), _pair(e, y, c, c, ybar)


class SquareSquareLoss(Loss):
    """L = E_Y² + ([m − Ē]⁺)²."""

    curvature = True

    def __init__(self, margin: float = 1.0) -> None:
        self.margin = float(margin)

    def terms(self, e, y):
        ybar = _offending(e, y)
        ey, eb = e[_rows(e), y], e[_rows(e), ybar]
        gap = np.maximum(self.margin - eb, 0)
        return ey**2 + gap**2, _pair(e, y, 2 * ey, -2 * gap, ybar), _pair(e, y, 2.0, 2.0 * (gap > 0), ybar)


class SquareExpLoss(Loss):
    """L = E_Y² + γ exp(−Ē)."""

    curvature = True

    def __init__(self, gamma: float = 1.0) -> None:
        self.gamma = float(gamma)

    def terms(self, e, y):
        ybar = _offending(e, y)
        ey = e[_rows(e), y]
        push = self.gamma * np.exp(-e[_rows(e), ybar])
        return ey**2 + push, _pair(e, y, 2 * ey, -push, ybar), _pair(e, y, 2.0, push, ybar)


class MCELoss(Loss):
    """L = σ(E_Y − Ē), the minimum classification error loss (σ the logistic function).

    Not convex: bbprop keeps no curvature of its own.
    """

    def terms(self, e, y):
        ybar = _offending(e, y)
        s = _logistic(e[_rows(e), y] - e[_rows(e), ybar])
        c = s * (1 - s)
        return s, _pair(e, y, c, -c, ybar), None


class LVQ2Loss(Loss):
    """L = min(M, [(E_Y − Ē) / (δ Ē)]⁺), for positive energies (Ē > 0).

    Not convex: bbprop keeps no curvature of its own.
    """

    def __init__(self, saturation: float = 1.0, delta: float = 1.0) -> None:
        self.saturation, self.delta = float(saturation), float(delta)

    def terms(self, e, y):
        ybar = _offending(e, y)
        ey, eb = e[_rows(e), y], e[_rows(e), ybar]
        if eb.size and eb.min() <= 0:
            raise ValueError(f"{self!r}: expected positive energies, got an incorrect answer's energy of {eb.min():g}")
        u = (ey - eb) / (self.delta * eb)
        on = ((u > 0) & (u < self.saturation)).astype(e.dtype)
        gy = on / (self.delta * eb)                              # ∂u/∂E_Y = 1 / (δĒ)
        gb = -on * ey / (self.delta * eb**2)                     # ∂u/∂Ē = −E_Y / (δĒ²)
        return np.clip(u, 0, self.saturation), _pair(e, y, gy, gb, ybar), None


class ContrastiveLoss(Loss):
    """L = (1 − Y) ½ D² + Y ½ ([m − D]⁺)², for one energy D ≥ 0 per pair and Y = 0 (similar) or 1
    (dissimilar): similar pairs are pulled together, dissimilar ones pushed to at least the margin m
    (Hadsell, Chopra, LeCun, "Dimensionality reduction by learning an invariant mapping", 2006).
    Energies (n,) with integer labels (n,). Convex in D: bbprop keeps ∂²L/∂D² = (1 − Y) + Y [m > D].
    Inference: the Y of lower loss, "dissimilar" when D > m/2 (`answers`).
    """

    curvature = True

    def __init__(self, margin: float = 1.0) -> None:
        if not margin > 0:
            raise ValueError(f"ContrastiveLoss: expected margin > 0, got {margin}")
        self.margin = float(margin)

    def _read(self, energies, labels):
        e = energies.x
        y = None if labels is None else np.asarray(labels.x if isinstance(labels, State) else labels)
        if e.ndim != 1:
            raise ValueError(f"{self!r}: expected one energy per pair, shape (n,), got {e.shape}")
        if y is None or y.shape != e.shape or y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 1)):
            got = "no labels" if y is None else f"{y.dtype} labels of shape {y.shape}"
            raise ValueError(f"{self!r}: expected labels 0 (similar) or 1 (dissimilar) of shape {e.shape}, got {got}")
        return e, y

    def terms(self, e, y):
        similar = (y == 0).astype(e.dtype)
        gap = np.maximum(self.margin - e, 0)                     # [m − D]⁺
        loss = similar * 0.5 * e**2 + (1 - similar) * 0.5 * gap**2
        g = similar * e - (1 - similar) * gap                    # ∂L/∂D = (1 − Y) D − Y [m − D]⁺
        return loss, g, similar + (1 - similar) * (gap > 0)

    def answers(self, e: np.ndarray) -> np.ndarray:
        """argmin over Y of L: 1 (dissimilar) where D > m/2, else 0."""
        return (e > 0.5 * self.margin).astype(np.intp)


LOSSES = {
    "energy": EnergyLoss, "perceptron": PerceptronLoss, "hinge": HingeLoss, "nll": NLLLoss,
    "log": LogLoss, "square-square": SquareSquareLoss, "square-exp": SquareExpLoss,
    "mce": MCELoss, "lvq2": LVQ2Loss, "contrastive": ContrastiveLoss,
}


class Regularizer:
    """λ·H(W) over the whole pool. `bprop(pool, scale)` adds scale·λ·∂H/∂W into pool.dx."""

    def __init__(self, lam: float) -> None:
        if not lam >= 0:
            raise ValueError(f"{type(self).__name__}: expected lam >= 0, got {lam}")
        self.lam = float(lam)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.lam})"


class L2(Regularizer):
    """λ H(W) with H(W) = ½‖W‖²: weight decay."""

    def fprop(self, pool: ParamPool) -> float:
        return 0.5 * self.lam * float(pool.x @ pool.x)

    def bprop(self, pool: ParamPool, scale: float = 1.0) -> None:
        pool.dx += (scale * self.lam) * pool.x                   # ∂H/∂W = W

    def bbprop(self, pool: ParamPool, scale: float = 1.0) -> None:
        pool.ddx += scale * self.lam                             # ∂²H/∂W² = 1


class L1(Regularizer):
    """λ H(W) with H(W) = ‖W‖₁."""

    def fprop(self, pool: ParamPool) -> float:
        return self.lam * float(np.abs(pool.x).sum())

    def bprop(self, pool: ParamPool, scale: float = 1.0) -> None:
        pool.dx += (scale * self.lam) * np.sign(pool.x)          # ∂H/∂W = sign(W)

    def bbprop(self, pool: ParamPool, scale: float = 1.0) -> None:
        pass                                                     # ∂²H/∂W² = 0 away from 0
