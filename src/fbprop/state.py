"""State: the value a module writes and the derivatives the backward sweeps bring to it."""

from __future__ import annotations

import numpy as np


def is_batch_last(a: np.ndarray) -> bool:
    """Whether `a` (n, …) keeps each position's n values side by side in memory, the batch innermost
    (its shape is batch-first, its memory (…, n) in C order), and is not also in C order: an array
    for which C-order code would be slow. A batch of one, or of plain numbers, is C order."""
    return a.ndim > 1 and not a.flags.c_contiguous and memory(a).flags.c_contiguous


_TO_MEMORY = {n: (*range(1, n), 0) for n in range(1, 65)}       # the axes, built once (half the call's cost)
_FROM_MEMORY = {n: (n - 1, *range(n - 1)) for n in range(1, 65)}   # (numpy 2 allows 64 dimensions)


def memory(a: np.ndarray) -> np.ndarray:
    """`a` (n, d1, …) seen as (d1, …, n): a C-contiguous view when `a` is batch-last."""
    return a.transpose(_TO_MEMORY[a.ndim])


def from_memory(m: np.ndarray) -> np.ndarray:
    """The inverse of `memory`: a (d1, …, n) array seen as (n, d1, …)."""
    return m.transpose(_FROM_MEMORY[m.ndim])


def blocks(c: int, h: int, w: int, n: int):
    """Slices (maps, rows) of a (c, h, w, n) array in blocks of about 8192 numbers."""
    maps, rows = max(1, 8192 // (h * w * n)), max(1, 8192 // (w * n))
    for k in range(0, c, maps):
        for i in range(0, h, rows):
            yield slice(k, k + maps), slice(i, i + rows)


def copy_batch_last(dst: np.ndarray, src: np.ndarray) -> None:
    """dst (c, h, w, n) ← src (n, c, h, w): one copy, which numpy 2 runs faster than the same
    copy in cache-sized blocks at every size measured ((1, 28, 28) to (4704, 1, 1) per sample, 32
    to 1,024 samples: 0.58-0.99 of the blocked time). A batch-last src is one plain copy."""
    np.copyto(dst, memory(src))


def add_into(state: State, slot: str, value: np.ndarray) -> None:
    """state.<slot> += value, written instead where the slot holds nothing since a clear
    (`State.sum_target`); `value` of the slot's shape or broadcasting to it."""
    into, zero = state.sum_target(slot)
    if zero:
        np.copyto(into, value)
    else:
        np.add(into, value, out=into)


def clear_dx(states: list[State]) -> None:
    """`State.clear_dx` of each of `states` (plain States, not parameter handles): a container's
    intermediate states before a backward sweep, in one call."""
    for s in states:
        s._dx_cleared = True


def _empty(shape: tuple[int, ...], dtype: np.dtype, last: bool) -> np.ndarray:
    if not last:
        return np.empty(shape, dtype=dtype)
    return from_memory(np.empty(shape[1:] + shape[:1], dtype=dtype))


class State:
    """A slot between modules: `x` (value), `dx` (∂L/∂x), `ddx` (Gauss-Newton ∂²L/∂x²).

    Arrays of any rank, batch axis first. `dx` and `ddx` have the shape of `x` and are allocated
    on first use, so a state that only runs forward costs one array. Memory order is the writer's
    choice: C order, or batch-last (`resize(..., batch_last=True)`, see `is_batch_last`), which
    convolutions use so that a window's pixels for the whole batch are one contiguous run; `dx` and
    `ddx` follow the layout of `x`. Readers take any layout. `resize` to the shape it
    already has keeps every buffer, which is what makes a training step allocation-free.

    `requires_dx = False` marks a state nobody reads derivatives of (a batch of raw data): a
    module may then skip computing them, which saves the largest product of a first layer.

    `scratch = True` marks a container's intermediate state that one module alone reads (a
    Cascade's link): when no bprop follows (`Machine.inference`), that reader may compute in
    the state's own buffer and take it over (`take_over`), so after inference such a state's
    value is not kept; after `fprop` every state holds its value.
    """

    __slots__ = ("x", "_dx", "_ddx", "requires_dx", "_dx_cleared", "scratch", "_own", "_dx_of")

    def __init__(self, x: np.ndarray | None = None, dtype: np.dtype | type | None = None,
                 requires_dx: bool = True) -> None:
        self.requires_dx = requires_dx
        if x is None:
            self.x = np.zeros((0,), dtype=dtype or np.float32)
        else:
            self.x = np.asarray(x, dtype=dtype)
        self._dx: np.ndarray | None = None
        self._ddx: np.ndarray | None = None
        self._dx_cleared = False                                 # a clear_dx not yet carried out
        self._dx_of = None                                       # the x that _dx was last found to fit
        self.scratch = False
        self._own = None                                         # the buffer resize last allocated

    def __getstate__(self) -> tuple:
        # pickle writes an array in C order: a batch-last buffer goes as its memory and comes back
        # batch-last, so a copy computes in the original's layout, to the same bits
        slots = {name: getattr(self, name) for name in self.__slots__ if hasattr(self, name) and name != "_dx_of"}
        slots["_own"] = slots.get("_own") is not None and slots["_own"] is self.x   # (a flag: x is the own buffer)
        last = tuple(name for name, v in slots.items() if isinstance(v, np.ndarray) and is_batch_last(v))
        for name in last:
            slots[name] = memory(slots[name])
        return None, {**slots, "_batch_last": last}

    def __setstate__(self, state: tuple) -> None:
        # slots come back as (None, {name: value}); a buffer unpickled as a read-only memory map
        # (joblib's mmap_mode) is copied, since modules write into it
        values = dict(state[1])
        last = values.pop("_batch_last", ())
        self._dx_cleared = False                                 # (pickled before clears were lazy)
        self._dx_of = None
        self.scratch, owns = values.pop("scratch", False), values.pop("_own", False)
        for name, value in values.items():
            if isinstance(value, np.ndarray) and not value.flags.writeable:
                value = value.copy()
            if name in last:
                value = from_memory(value)
            setattr(self, name, value)
        self._own = self.x if owns else None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def dx(self) -> np.ndarray:
        d = self._dx if self.x is self._dx_of else self._fit_dx()
        if self._dx_cleared:
            d.fill(0)
            self._dx_cleared = False
        return d

    @dx.setter
    def dx(self, value: np.ndarray) -> None:
        self.dx[...] = value

    @property
    def ddx(self) -> np.ndarray:
        if self._ddx is None or self._ddx.shape != self.x.shape or self._ddx.dtype != self.x.dtype:
            self._ddx = np.zeros_like(self.x)
        return self._ddx

    @ddx.setter
    def ddx(self, value: np.ndarray) -> None:
        self.ddx[...] = value

    def resize(self, *shape: int, dtype: np.dtype | type | None = None, batch_last: bool = False) -> State:
        """Give `x` this shape (and dtype), in C order or with the batch innermost in memory
        (`batch_last`); the buffers are kept when nothing changes."""
        x = self.x
        last = batch_last and len(shape) > 1 and shape[0] > 1
        if x.shape == shape and (dtype is None or x.dtype is dtype or x.dtype == dtype) and \
                (memory(x) if last else x).flags.c_contiguous:
            return self                                          # (the common case, every step)
        self.x = self._own = _empty(shape, x.dtype if dtype is None else np.dtype(dtype), last)
        self._dx = self._ddx = self._dx_of = None
        return self

    def take_over(self, source: State) -> bool:
        """Swap buffers with `source`, a scratch state of this state's shape, dtype and layout
        that reads as this one's input, when both hold buffers of their own (not views of another
        state's or of the caller's data): afterwards this state's `x` is the buffer `source.x` was,
        and `source` keeps this one's old buffer, its value gone. True if swapped. For a module
        that computes y = f(x) elementwise in place when no bprop follows (`Machine.inference`):
        no array is written besides the one the input already occupies."""
        if not self.can_take_over(source):
            return False
        x, mine = source.x, self.x
        source.x = source._own = mine
        self.x = self._own = x
        return True

    def can_take_over(self, source: State) -> bool:
        """Would `take_over(source)` swap? (It does not swap.)"""
        x, mine = source.x, self.x
        return source.scratch and x is source._own and mine is self._own and mine.shape == x.shape and \
            mine.dtype == x.dtype and mine.strides == x.strides

    def set(self, x: np.ndarray) -> State:
        """Copy `x` in, reusing the buffer when the shape and dtype already match."""
        x = np.asarray(x)
        self.resize(*x.shape, dtype=x.dtype)
        np.copyto(self.x, x)
        return self

    def clear_dx(self) -> None:
        """dx ← 0, carried out lazily: by the first read of `dx`, or never, when the first module
        to add into it asks `sum_target` and writes its term instead (one pass over dx, not three)."""
        self._dx_cleared = True

    def sum_target(self, slot: str) -> tuple[np.ndarray, bool]:
        """(the `slot` array, zero): with zero True, dx holds nothing yet since `clear_dx` (not
        even zeros) and the caller WRITES its whole term instead of adding it; the same numbers
        as adding to zeros, without the pass that zeroes dx and the one that reads it back. From
        then on dx counts as written. ddx is cleared when asked, so zero is False for it."""
        if slot != "dx":
            return getattr(self, slot), False
        d = self._dx if self.x is self._dx_of else self._fit_dx()
        if not self._dx_cleared:
            return d, False
        self._dx_cleared = False
        return d, True

    def _fit_dx(self) -> np.ndarray:
        """`_dx` for an `x` other than the one it was last checked against (`dx` and `sum_target`
        test only identity before calling this): kept when of x's shape and dtype, else a new
        buffer in x's layout, counted as cleared (nothing written into it yet)."""
        d, x = self._dx, self.x
        if d is None or d.shape != x.shape or (d.dtype is not x.dtype and d.dtype != x.dtype):
            d = self._dx = np.empty_like(x)
            self._dx_cleared = True
        self._dx_of = x
        return d

    def clear_ddx(self) -> None:
        self.ddx.fill(0)

    def __repr__(self) -> str:
        return f"State(shape={self.x.shape}, dtype={self.x.dtype})"
