"""Join and split modules: where branches of a network meet and part (sums, products, concatenation,
copies, distances and similarities between two states)."""

from __future__ import annotations

import numpy as np

from fbprop.module import Module
from fbprop.state import State


def _same_shapes(who: Module, states: tuple[State, ...]) -> None:
    shapes = [s.x.shape for s in states]
    if any(sh != shapes[0] for sh in shapes):
        raise ValueError(f"{who!r}: expected inputs of one shape, got {', '.join(map(str, shapes))}")


def _per_sample(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A (n,) vector viewed as (n, 1, …, 1) to broadcast against a (n, …) array."""
    return v.reshape(v.shape + (1,) * (like.ndim - 1))


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0], -1)


def _add_opposite(a: State, b: State, g: np.ndarray) -> None:
    """∂E/∂a = g and ∂E/∂b = −g (E a function of a − b), added into the inputs that take them."""
    if a.requires_dx:
        a.dx += g
    if b.requires_dx:
        b.dx -= g


def _add_to_both(a: State, b: State, h: np.ndarray) -> None:
    """The same curvature h into both inputs' ddx (E a function of a − b: ∂²E/∂a² = ∂²E/∂b²)."""
    for s in (a, b):
        if s.requires_dx:
            s.ddx += h


def _squared_distance(who: Module, a: State, b: State, out: State) -> None:
    """out.x ← Σ (a − b)² per sample, for two states of one shape."""
    _same_shapes(who, (a, b))
    out.resize(a.batch, dtype=np.result_type(a.x, b.x))
    d = _rows(a.x - b.x)
    np.einsum("ij,ij->i", d, d, out=out.x)


class Sum(Module):
    """y = x_1 + … + x_n, states of one shape. Wiring: 'a, b, … -> y'."""

    def __init__(self, n: int = 2) -> None:
        self.n_inputs = _count("Sum", n, "n", "inputs")

    def init_args(self) -> dict:
        return {"n": self.n_inputs}

    def fprop(self, *states: State) -> None:
        *inputs, out = states
        _same_shapes(self, inputs)
        out.resize(*inputs[0].x.shape, dtype=np.result_type(*(s.x for s in inputs)))
        np.copyto(out.x, inputs[0].x)
        for s in inputs[1:]:
            out.x += s.x                                         # y = Σ x_i

    def bprop(self, *states: State) -> None:
        *inputs, out = states
        for s in inputs:
            if s.requires_dx:
                s.dx += out.dx                                   # ∂y/∂x_i = 1

    def bbprop(self, *states: State) -> None:
        *inputs, out = states
        for s in inputs:
            if s.requires_dx:
                s.ddx += out.ddx

    def __repr__(self) -> str:
        return f"Sum({self.n_inputs})"


class Product(Module):
    """y = a ∘ b, element-wise, states of one shape. Wiring: 'a, b -> y'."""

    n_inputs = 2

    def fprop(self, a: State, b: State, out: State) -> None:
        _same_shapes(self, (a, b))
        out.resize(*a.x.shape, dtype=np.result_type(a.x, b.x))
        np.multiply(a.x, b.x, out=out.x)                         # y = a ∘ b

    def bprop(self, a: State, b: State, out: State) -> None:
        if a.requires_dx:
            a.dx += out.dx * b.x                                 # ∂y/∂a = b
        if b.requires_dx:
            b.dx += out.dx * a.x                                 # ∂y/∂b = a

    def bbprop(self, a: State, b: State, out: State) -> None:
        if a.requires_dx:
            a.ddx += out.ddx * b.x**2                            # b² ∂²E/∂y² (the cross term ∂²y/∂a∂b dropped)
        if b.requires_dx:
            b.ddx += out.ddx * a.x**2

    def __repr__(self) -> str:
        return "Product()"


class Scale(Module):
    """y = c x for a constant c."""

    def __init__(self, c: float) -> None:
        self.c = float(c)

    def fprop(self, inp: State, out: State) -> None:
        out.resize(*inp.x.shape, dtype=inp.x.dtype)
        np.multiply(inp.x, self.c, out=out.x)                    # y = c x

    def bprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.dx += self.c * out.dx                            # ∂y/∂x = c

    def bbprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.ddx += self.c**2 * out.ddx                       # c² ∂²E/∂y²

    def __repr__(self) -> str:
        return f"Scale({self.c:g})"


class Copy(Module):
    """y_1 = … = y_k = x: the identity (k = 1) or an explicit fan-out into k states. Wiring: 'x -> y1, …'."""

    def __init__(self, k: int = 1) -> None:
        self.n_outputs = _count("Copy", k, "k", "outputs")

    def init_args(self) -> dict:
        return {"k": self.n_outputs}

    def fprop(self, inp: State, *outs: State) -> None:
        for out in outs:
            out.set(inp.x)                                       # y_j = x

    def bprop(self, inp: State, *outs: State) -> None:
        if inp.requires_dx:
            for out in outs:
                inp.dx += out.dx                                 # ∂E/∂x = Σ_j ∂E/∂y_j

    def bbprop(self, inp: State, *outs: State) -> None:
        if inp.requires_dx:
            for out in outs:
                inp.ddx += out.ddx

    def __repr__(self) -> str:
        return f"Copy({self.n_outputs})" if self.n_outputs > 1 else "Copy()"


def _count(who: str, n: int, name: str, what: str) -> int:
    if int(n) != n or n < 1:
        raise ValueError(f"{who}: expected {name} >= 1 {what}, got {n}")
    return int(n)


def _axis(who: str, axis: int) -> int:
    if int(axis) != axis or axis < 1:
        raise ValueError(f"{who}: expected an axis >= 1 (axis 0 is the batch), got {axis}")
    return int(axis)


class Concat(Module):
    """y = [x_1, …, x_n] joined along `axis` (≥ 1; axis 0 is the batch). Wiring: 'a, b, … -> y'."""

    def __init__(self, n: int = 2, axis: int = 1) -> None:
        self.n_inputs, self.axis = _count("Concat", n, "n", "inputs"), _axis("Concat", axis)

    def _cuts(self, inputs: tuple[State, ...]) -> list[slice]:
        ax, first = self.axis, inputs[0].x
        for s in inputs:
            x = s.x
            if x.ndim <= ax or x.shape[:ax] != first.shape[:ax] or x.shape[ax + 1:] != first.shape[ax + 1:]:
                raise ValueError(f"{self!r}: expected inputs that agree on every axis but {ax}, got "
                                 f"{', '.join(str(t.x.shape) for t in inputs)}")
        ends = np.cumsum([s.x.shape[ax] for s in inputs])
        return [(slice(None),) * ax + (slice(e - s.x.shape[ax], e),) for e, s in zip(ends, inputs)]

    def init_args(self) -> dict:
        return {"n": self.n_inputs, "axis": self.axis}

    def fprop(self, *states: State) -> None:
        *inputs, out = states
        cuts = self._cuts(inputs)
        shape = list(inputs[0].x.shape)
        shape[self.axis] = sum(s.x.shape[self.axis] for s in inputs)
        out.resize(*shape, dtype=np.result_type(*(s.x for s in inputs)))
        for cut, s in zip(cuts, inputs):
            out.x[cut] = s.x                                     # y = [x_1, …, x_n]

    def _back(self, states: tuple[State, ...], slot: str) -> None:
        *inputs, out = states
        g = getattr(out, slot)
        for cut, s in zip(self._cuts(inputs), inputs):
            if s.requires_dx:
                acc = getattr(s, slot)
                acc += g[cut]                                    # each part's own slice

    def bprop(self, *states: State) -> None:
        self._back(states, "dx")

    def bbprop(self, *states: State) -> None:
        self._back(states, "ddx")

    def __repr__(self) -> str:
        return f"Concat({self.n_inputs}, axis={self.axis})"


class Split(Module):
    """x cut along `axis` (≥ 1) into parts of the given sizes, or into k equal parts; axis 1 of
    length 1 parts is dropped when `squeeze` (a pair (n, 2, …) -> two (n, …)). Wiring: 'x -> a, b, …'."""

    def __init__(self, parts: int | tuple[int, ...] = 2, axis: int = 1, squeeze: bool = False) -> None:
        self.sizes = (int(parts),) if isinstance(parts, (int, np.integer)) else tuple(int(p) for p in parts)
        if not self.sizes or any(p < 1 for p in self.sizes):
            raise ValueError(f"Split: expected a number of parts >= 1 or positive sizes, got {parts}")
        self.equal = isinstance(parts, (int, np.integer))
        self.n_outputs = self.sizes[0] if self.equal else len(self.sizes)
        self.axis, self.squeeze = _axis("Split", axis), bool(squeeze)

    def _cuts(self, inp: State) -> list[tuple]:
        ax, x = self.axis, inp.x
        sizes = self.sizes if not self.equal else (x.shape[ax] // self.n_outputs,) * self.n_outputs \
            if x.ndim > ax else ()
        if x.ndim <= ax or sum(sizes) != x.shape[ax] or (self.squeeze and any(s != 1 for s in sizes)):
            want = (f"{self.n_outputs} equal parts" if self.equal else f"parts {self.sizes}") + \
                   (" of size 1" if self.squeeze else "")
            raise ValueError(f"{self!r}: expected an input whose axis {ax} splits into {want}, got {x.shape}")
        ends = np.cumsum(sizes)
        pick = (lambda e, s: e - 1) if self.squeeze else (lambda e, s: slice(e - s, e))
        return [(slice(None),) * ax + (pick(e, s),) for e, s in zip(ends, sizes)]

    def init_args(self) -> dict:
        return {"parts": self.sizes[0] if self.equal else list(self.sizes), "axis": self.axis, "squeeze": self.squeeze}

    def fprop(self, inp: State, *outs: State) -> None:
        for cut, out in zip(self._cuts(inp), outs):
            out.set(inp.x[cut])                                  # y_j = the j-th part of x

    def _back(self, inp: State, outs: tuple[State, ...], slot: str) -> None:
        if not inp.requires_dx:
            return
        acc = getattr(inp, slot)
        for cut, out in zip(self._cuts(inp), outs):
            acc[cut] += getattr(out, slot)

    def bprop(self, inp: State, *outs: State) -> None:
        self._back(inp, outs, "dx")

    def bbprop(self, inp: State, *outs: State) -> None:
        self._back(inp, outs, "ddx")

    def __repr__(self) -> str:
        parts = self.n_outputs if self.equal else self.sizes
        return f"Split({parts}, axis={self.axis}{', squeeze' if self.squeeze else ''})"


class SquaredDistance(Module):
    """E = ‖a − b‖² per sample. Shapes: a, b (n, …) -> E (n,). Wiring: 'a, b -> E'.

    A convex cost: bbprop keeps its own curvature ∂²E/∂a² = 2 (weighted by ∂L/∂E where ≥ 0).
    """

    curvature = True
    n_inputs = 2

    def fprop(self, a: State, b: State, out: State) -> None:
        _squared_distance(self, a, b, out)                       # E = Σ (a − b)²

    def bprop(self, a: State, b: State, out: State) -> None:
        _add_opposite(a, b, 2 * _per_sample(out.dx, a.x) * (a.x - b.x))   # ∂E/∂a = 2 (a − b) = −∂E/∂b

    def bbprop(self, a: State, b: State, out: State) -> None:
        d = a.x - b.x
        h = 4 * _per_sample(out.ddx, d) * d * d                  # (2 (a − b))² ∂²L/∂E²
        h += 2 * _per_sample(np.maximum(out.dx, 0), d)           # + ∂L/∂E ∂²E/∂a², ∂²E/∂a² = 2
        _add_to_both(a, b, h)

    def __repr__(self) -> str:
        return "SquaredDistance()"


class Distance(Module):
    """E = ‖a − b‖ per sample, the siamese energy of DrLIM. Shapes: a, b (n, …) -> E (n,).

    ∂E/∂a = (a − b)/E, taken as 0 where a = b. Convex: bbprop keeps its own curvature
    ∂²E/∂a_i² = (E² − (a_i − b_i)²)/E³ ≥ 0 (weighted by ∂L/∂E where ≥ 0).
    """

    curvature = True
    n_inputs = 2

    def fprop(self, a: State, b: State, out: State) -> None:
        _squared_distance(self, a, b, out)
        np.sqrt(out.x, out=out.x)                                # E = ‖a − b‖

    def _unit(self, a: State, b: State, out: State) -> tuple[np.ndarray, np.ndarray]:
        """(a − b) and 1/E per sample (0 where E = 0)."""
        inv = np.divide(1.0, out.x, out=np.zeros_like(out.x), where=out.x > 0)
        return a.x - b.x, _per_sample(inv, a.x)

    def bprop(self, a: State, b: State, out: State) -> None:
        d, inv = self._unit(a, b, out)
        _add_opposite(a, b, _per_sample(out.dx, d) * d * inv)    # ∂E/∂a = (a − b)/E = −∂E/∂b

    def bbprop(self, a: State, b: State, out: State) -> None:
        d, inv = self._unit(a, b, out)
        u2 = (d * inv) ** 2
        h = _per_sample(out.ddx, d) * u2                         # ((a − b)/E)² ∂²L/∂E²
        h += _per_sample(np.maximum(out.dx, 0), d) * (1 - u2) * inv   # + ∂L/∂E (1 − (a_i − b_i)²/E²)/E
        _add_to_both(a, b, h)

    def __repr__(self) -> str:
        return "Distance()"


class CosineSimilarity(Module):
    """c = a·b / (‖a‖ ‖b‖) per sample. Shapes: a, b (n, …) -> c (n,). Wiring: 'a, b -> c'.

    ∂c/∂a = b/(‖a‖‖b‖) − c a/‖a‖². Not convex: bbprop is the Gauss-Newton term alone.
    """

    n_inputs = 2

    def fprop(self, a: State, b: State, out: State) -> None:
        _same_shapes(self, (a, b))
        out.resize(a.batch, dtype=np.result_type(a.x, b.x))
        na, nb = self._norms(a, b)
        if (na == 0).any() or (nb == 0).any():
            raise ValueError(f"{self!r}: expected nonzero vectors, got a zero vector in sample "
                             f"{int(np.flatnonzero((na == 0) | (nb == 0))[0])}")
        np.einsum("ij,ij->i", _rows(a.x), _rows(b.x), out=out.x)
        out.x /= na * nb                                         # c = a·b / (‖a‖ ‖b‖)

    @staticmethod
    def _norms(a: State, b: State) -> tuple[np.ndarray, np.ndarray]:
        return np.linalg.norm(_rows(a.x), axis=1), np.linalg.norm(_rows(b.x), axis=1)

    def _slopes(self, a: State, b: State, out: State) -> tuple[np.ndarray, np.ndarray]:
        na, nb = self._norms(a, b)
        na, nb, c = (_per_sample(v, a.x) for v in (na, nb, out.x))
        return b.x / (na * nb) - c * a.x / na**2, a.x / (na * nb) - c * b.x / nb**2   # ∂c/∂a, ∂c/∂b

    def bprop(self, a: State, b: State, out: State) -> None:
        ga, gb = self._slopes(a, b, out)
        g = _per_sample(out.dx, a.x)
        if a.requires_dx:
            a.dx += g * ga
        if b.requires_dx:
            b.dx += g * gb

    def bbprop(self, a: State, b: State, out: State) -> None:
        ga, gb = self._slopes(a, b, out)
        h = _per_sample(out.ddx, a.x)
        if a.requires_dx:
            a.ddx += h * ga**2                                   # (∂c/∂a)² ∂²E/∂c²
        if b.requires_dx:
            b.ddx += h * gb**2

    def __repr__(self) -> str:
        return "CosineSimilarity()"


class Zeros(Module):
    """y = 0 of shape (n, *shape), n the input's batch size: an initial state (a recurrent net's h_0).

    The input only gives the batch size, so no derivative flows back into it.
    """

    def __init__(self, *shape: int) -> None:
        if not shape or any(int(s) != s or s < 1 for s in shape):
            raise ValueError(f"Zeros: expected positive sizes, got {shape}")
        self.shape = tuple(int(s) for s in shape)

    def fprop(self, inp: State, out: State) -> None:
        out.resize(inp.batch, *self.shape, dtype=inp.x.dtype if inp.x.dtype.kind == "f" else np.float64)
        out.x.fill(0)                                            # y = 0

    def bprop(self, inp: State, out: State) -> None:
        pass                                                     # ∂y/∂x = 0

    def bbprop(self, inp: State, out: State) -> None:
        pass

    def __repr__(self) -> str:
        return f"Zeros({', '.join(map(str, self.shape))})"
