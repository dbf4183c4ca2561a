"""Elementwise modules: the lecture's sigmoid with a trainable bias, (X_out)_k = σ((X_in)_k + B_k)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from fbprop.blas import add_scaled, one
from fbprop.module import Module, Plan
from fbprop.params import ParamPool
from fbprop.state import State, add_into, is_batch_last, memory


@lru_cache(maxsize=256)
def _bias_sum(target: tuple[int, ...], a: tuple[int, ...], last: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape of the sum, axes to reduce) for add_sum_to: the batch axis and the axes where
    `target` broadcasts; for a batch-last `a` in memory order, where the batch is the last axis."""
    axes = (0,) + tuple(i + 1 for i, k in enumerate(target) if k == 1 and a[i + 1] != 1)
    if last:
        return (*target, 1), tuple(i - 1 if i else len(a) - 1 for i in axes)
    return (1, *target), axes


def add_sum_to(target: np.ndarray, a: np.ndarray, buffer: State, alpha: float = 1.0, zero: bool = False) -> None:
    """target += α Σ a over the batch axis and the axes where `target` (one sample's shape)
    broadcasts (size 1): the gradient of a bias. `buffer` keeps the sum between calls. With
    `zero` (target holds zeros not yet written, `Param.dx_for_sum`) target ← α Σ a instead."""
    sum_call(target, a, buffer, zero)(a, alpha)


def sum_call(target: np.ndarray, a: np.ndarray, buffer: State, zero: bool) -> Callable[[np.ndarray, float], object]:
    """The call f(a, α) that does `add_sum_to(target, a, buffer, α, zero)` for an `a` of this
    shape, dtype and layout, decided now (for a module's `Plan`)."""
    if len(a) == 1 and a.shape[1:] == target.shape and a.dtype == target.dtype and a.flags.c_contiguous:
        # one sample, no axis broadcast: the sum is the sample itself (a reduction costs 3-4 µs
        # a call inside an on-line step on AMD EPYC, more than the layer's other elementwise work);
        # written, 0 + α a rounds as α a
        if not zero:
            return lambda a, alpha: add_scaled(target, a[0], alpha)
        return lambda a, alpha: np.copyto(target, a[0]) if alpha == 1.0 else np.multiply(a[0], alpha, out=target)
    last = is_batch_last(a)
    shape, axes = _bias_sum(target.shape, a.shape, last)
    if zero and a.dtype == target.dtype and target.flags.c_contiguous:   # the sum straight into target, × α:
        into = target.reshape(shape)

        def write(a: np.ndarray, alpha: float) -> None:
            np.add.reduce(memory(a) if last else a, axis=axes, keepdims=True, out=into)
            if alpha != 1.0:                                     # = 0 + α Σ a, rounded the same
                np.multiply(target, alpha, out=target)
        return write
    total = buffer.resize(*shape, dtype=a.dtype).x
    summed = total.reshape(target.shape)

    def add(a: np.ndarray, alpha: float) -> None:
        np.add.reduce(memory(a) if last else a, axis=axes, keepdims=True, out=total)
        if zero:
            np.multiply(summed, alpha, out=target)               # = 0 + α Σ a, rounded the same
        else:
            add_scaled(target, summed, alpha)
    return add


class Squash(Module):
    """y = f(x + b), elementwise; b is a trainable bias of `shape` when a pool is given.

    `shape` is one sample's shape (e.g. 30, or (6, 1, 1) for one bias per feature map, which
    broadcasts over the map). Subclasses give f and its derivative written in terms of y, so
    bprop needs nothing but the output: (∂E/∂x)_i = (∂E/∂y)_i f'(x_i + b_i). The derivative
    comes as c·g with a constant c (ScaledTanh's S/A), which bprop folds into the axpy that adds
    the result into dx, so a constant factor costs no pass over the batch. When no bprop follows
    (`forward_only`) and the input and output are scratch states (a Cascade's links), fprop
    computes in the input's buffer and takes it over (`State.take_over`), as the numpy idiom
    `h += b; np.tanh(h, out=h)` does: 1.2 MB less to write per squashing of an MLP's first layer
    at batch 1,024. The buffers go back when the inference ends (`end_forward_only`), so the
    next inference finds them where this one did and keeps its decisions (`Plan`).
    """

    def __init__(self, shape: int | tuple[int, ...] | None = None, pool: ParamPool | None = None) -> None:
        self.shape = (shape,) if isinstance(shape, int) else (tuple(shape) if shape is not None else None)
        if pool is not None and self.shape is None:
            raise ValueError(f"{type(self).__name__}: a trainable bias needs its shape, got shape=None")
        self.b = pool.alloc(*self.shape, value=0.0) if pool is not None else None
        self._g, self._sum = State(), State()

    def f(self, u: np.ndarray) -> None:
        """u ← f(u), in place."""
        raise NotImplementedError

    def f_from(self, x: np.ndarray, u: np.ndarray) -> None:
        """u ← f(x) for another array u of x's shape: a copy and `f` in place, unless a subclass
        reads x in its first pass (no copy: a squashing without bias after LeNet-5's subsamplings
        copied 200 kB a step at batch 32)."""
        np.copyto(u, x)
        self.f(u)

    def slope(self, y: np.ndarray, g: np.ndarray) -> float:
        """g ← f'(u) / c, written in terms of y = f(u); returns the constant c."""
        raise NotImplementedError

    _checked = None                                              # the last sample shape that passed _check

    def _check(self, inp: State) -> None:
        got = inp.x.shape[1:]
        if self.shape is None or got == self._checked:
            return
        if len(got) != len(self.shape) or any(s != 1 and s != g for s, g in zip(self.shape, got, strict=True)):
            raise ValueError(f"{self!r}: expected input of shape (n, {', '.join(map(str, self.shape))}), "
                             f"got {inp.x.shape}")
        self._checked = got

    forward_only = False        # True while no bprop follows (Machine.inference sets it)

    def input_offset(self) -> np.ndarray | None:
        """The bias fprop adds to its input before f, for a module before this one that adds it
        into its own output for free (`Linear.fprop_plus`, in `Cascade`'s fold); None without bias."""
        return None if self.b is None else self.b.x

    def fprop_added(self, out: State) -> None:
        """fprop when `out` already holds x + b (the module before wrote it there): y = f(out), in place."""
        self.f(out.x)

    def end_forward_only(self) -> None:
        """Swap back the buffers fprop swapped with a scratch input when its output is a scratch
        state too (the states' values are spent by then): each inference then writes the buffers
        the last one did, still in cache, instead of alternating between two (MLP predict at batch
        1,024: 6,126 against 6,032 µs with the first layer's two buffers alternating)."""
        lent = self._lent
        if lent is not None:
            self._lent = None
            lent[0].take_over(lent[1])

    _lent: tuple | None = None                                   # (input, output) whose buffers fprop swapped

    _forward: Plan | None = None                                  # fprop's decisions, bprop's (see Plan)
    _backward: Plan | None = None
    _inferring: Plan | None = None                                # fprop's while forward_only

    def fprop(self, inp: State, out: State) -> None:
        x, plan = inp.x, (self._inferring if self.forward_only else self._forward)
        if plan is None or not plan.fits(x, out.x, None if self.b is None else self.b.x):
            plan = self._plan_fprop(inp, out)
        plan.calls[0](x)

    def _plan_fprop(self, inp: State, out: State) -> Plan:
        self._check(inp)
        out.resize(*inp.x.shape, dtype=inp.x.dtype, batch_last=is_batch_last(inp.x))   # the input's layout
        b, f, f_from, u = (None if self.b is None else self.b.x), self.f, self.f_from, out.x

        def y_is(x: np.ndarray, u: np.ndarray = u) -> None:
            if b is not None:
                np.add(x, b, out=u)                              # u = x + b
            elif x is not u:
                f_from(x, u)                                     # y = f(x)
                return
            f(u)                                                 # y = f(u)
        if not self.forward_only:
            self._forward = Plan(inp.x, u, b, calls=(y_is,))
            return self._forward
        if not (out.scratch and out.can_take_over(inp)):
            self._inferring = Plan(inp.x, u, b, calls=(y_is,))
            return self._inferring

        def in_place(x: np.ndarray) -> None:
            # no bprop follows and input and output are scratch buffers: compute in the input's
            # (what the same ufuncs give out of place, bit for bit) and make it the output, one
            # array less to write; end_forward_only swaps them back, so that the next inference
            # finds the buffers this plan was made for
            if not out.take_over(inp):
                y_is(x)
                return
            self._lent = (inp, out)
            y_is(out.x, out.x)                                   # (x's buffer, now the output's)
        self._inferring = Plan(inp.x, u, b, calls=(in_place,))
        return self._inferring

    def _back(self, inp: State, out: State, power: int, slot: str) -> None:
        """Adds f'(u)^power · (the output's `slot`) into the input's and the bias's `slot`."""
        y = out.x
        into, zero = inp.sum_target(slot) if inp.requires_dx else (None, False)
        target, b_zero = self.b.sum_target(slot) if self.b is not None else (None, False)
        plan = self._backward if power == 1 else None
        if plan is None or not plan.fits(y, y, target, into):
            plan = self._plan_back(y, target, into, power)
        bias_written, bias_added = plan.calls
        # g = f'(u)^power/c^power · the output's slot: computed in the input's slot itself when
        # that holds nothing yet since a clear (then scaled by c in place), else in a scratch buffer
        g = into if zero else self._g.resize(*y.shape, dtype=y.dtype, batch_last=is_batch_last(y)).x
        c = self.slope(y, g) ** power
        if power == 2:
            np.multiply(g, g, out=g)
        np.multiply(g, getattr(out, slot), out=g)
        if target is not None:
            (bias_written if b_zero else bias_added)(g, c)
        if zero:
            if c != 1.0:
                g *= c                                           # = 0 + c g, rounded the same
        elif into is not None:
            add_scaled(into, g, c)

    def _plan_back(self, y: np.ndarray, target: np.ndarray | None, into: np.ndarray | None, power: int) -> Plan:
        """The bias sum's two calls (written, added) in `_back`, for a g laid out as y (the scratch
        buffer is) or as `into`; decided at each call where the two layouts differ."""
        if target is None:
            sums = (None, None)
        elif into is None or into.strides == y.strides:
            sums = (sum_call(target, y, self._sum, True), sum_call(target, y, self._sum, False))
        else:
            sums = tuple(lambda a, alpha, zero=zero: add_sum_to(target, a, self._sum, alpha, zero)
                         for zero in (True, False))
        plan = Plan(y, y, target, into, calls=sums)
        if power == 1:
            self._backward = plan
        return plan

    def bprop(self, inp: State, out: State) -> None:
        self._back(inp, out, 1, "dx")                            # ∂E/∂x = ∂E/∂u = f'(u) ∂E/∂y, ∂E/∂b = Σ_batch ∂E/∂u

    def bbprop(self, inp: State, out: State) -> None:
        self._back(inp, out, 2, "ddx")                           # f'(u)² ∂²E/∂y²  (f'' term dropped)

    def __repr__(self) -> str:
        size = "" if self.shape is None else ", ".join(map(str, self.shape))
        return f"{type(self).__name__}({size}{', bias' if self.b is not None else ''})"


class Tanh(Squash):
    """y = tanh(x + b)."""

    def f(self, u):
        np.tanh(u, out=u)

    def f_from(self, x, u):
        np.tanh(x, out=u)

    def slope(self, y, g):
        np.multiply(y, y, out=g)
        np.subtract(one(g.dtype), g, out=g)                      # tanh' = 1 − y²
        return 1.0


class ScaledTanh(Squash):
    """y = A tanh(S (x + b)) with A = 1.7159, S = 2/3, so f(±1) = ±1 (LeCun, "Efficient BackProp")."""

    A, S = 1.7159, 2.0 / 3.0

    def f(self, u):
        self.f_from(u, u)

    def f_from(self, x, u):
        np.multiply(x, self.S, out=u)
        np.tanh(u, out=u)
        np.multiply(u, self.A, out=u)

    def slope(self, y, g):
        np.multiply(y, y, out=g)
        np.subtract(self.A * self.A, g, out=g)
        return self.S / self.A                                   # f' = (S/A)(A² − y²)


class Logistic(Squash):
    """y = 1 / (1 + exp(−(x + b)))."""

    def f(self, u):
        self.f_from(u, u)

    def f_from(self, x, u):
        np.negative(x, out=u)
        np.logaddexp(0, u, out=u)
        np.negative(u, out=u)
        np.exp(u, out=u)                                         # σ(u) = exp(−log(1 + e^−u)): exact in both tails

    def slope(self, y, g):
        np.subtract(one(g.dtype), y, out=g)
        np.multiply(g, y, out=g)                                 # σ' = y (1 − y)
        return 1.0


class ReLU(Squash):
    """y = max(0, x + b); plain elementwise (no bias) when built without a pool."""

    def f(self, u):
        np.maximum(u, 0, out=u)

    def f_from(self, x, u):
        np.maximum(x, 0, out=u)

    def slope(self, y, g):
        np.greater(y, 0, out=g)                                  # 1 where u > 0, else 0 (f'' = 0)
        return 1.0


class Bias(Squash):
    """y = x + b."""

    def __init__(self, shape: int | tuple[int, ...], pool: ParamPool) -> None:
        super().__init__(shape, pool)

    def f(self, u):
        pass

    def _back(self, inp: State, out: State, power: int, slot: str) -> None:
        d = getattr(out, slot)                                   # f' = 1, no slope: the output's slot itself
        target, b_zero = self.b.sum_target(slot)
        plan = self._backward if power == 1 else None
        if plan is None or not plan.fits(d, d, target):
            plan = self._plan_back(d, target, None, power)
        bias_written, bias_added = plan.calls
        (bias_written if b_zero else bias_added)(d, 1.0)
        if inp.requires_dx:
            add_into(inp, slot, d)
