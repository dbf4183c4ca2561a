"""ParamPool: every trainable parameter of a machine in one flat vector."""

from __future__ import annotations

import math

import numpy as np

from fbprop.state import State


class Param(State):
    """A parameter handle: a State whose arrays are views into `pool`'s vectors, from `offset`.

    A copy or a pickle of a handle carries no arrays of its own, only its place in the pool; the
    pool comes along (once per copy, however many handles point into it) and, when it is
    restored, points every handle at its new vectors. So a copy of a module, a net or a machine
    trains through its own pool, and the original is left alone.

    `dx` is zeroed lazily (see `ParamPool.clear_dx`): reading it after a clear zeroes this slice
    first, and `dx_for_sum` lets the module that adds the first term write it instead.
    """

    __slots__ = ("offset", "pool", "cleared")

    def __getstate__(self) -> tuple[None, dict]:
        return None, {"offset": self.offset, "pool": self.pool, "requires_dx": self.requires_dx}

    @property
    def dx(self) -> np.ndarray:
        if self.cleared != self.pool.clears:                     # still holds the sweep before the clear
            self._dx.fill(0)
            self.pool.written(self)
        return self._dx

    @dx.setter
    def dx(self, value: np.ndarray) -> None:
        self.dx[...] = value

    def clear_dx(self) -> None:
        self.dx.fill(0)                                          # this slice now (the pool clears lazily)

    def dx_for_sum(self) -> tuple[np.ndarray, bool]:
        """(dx, zero): this slice of the pool's dx and whether it is zero by a clear not yet
        carried out, in which case the caller writes its term instead of adding it (the same
        numbers, without a pass to zero the slice and one to read it back). Either way the slice
        counts as written from then on."""
        pool = self.pool
        if self.cleared == pool.clears:
            return self._dx, False
        self.cleared = pool.clears                               # (ParamPool.written, inline: a call less)
        pool._unwritten -= 1
        return self._dx, True

    def sum_target(self, slot: str) -> tuple[np.ndarray, bool]:
        """`dx_for_sum()` for slot "dx"; (ddx, False) for "ddx", which is cleared when asked."""
        return self.dx_for_sum() if slot == "dx" else (self.ddx, False)


class ParamPool:
    """One contiguous 1-D `x`, `dx` and `ddx` for all the parameters of a machine.

    Modules that own parameters take the pool at construction and keep the `State` handles that
    `alloc` returns; a handle's arrays are views into the pool, so writing `pool.x` changes the
    network and an optimizer updates every weight with one vector operation. Sharing a weight
    means giving one handle to two modules: both add their gradients into the same slice.

    Growing the pool moves it into larger arrays and re-points every handle at the new ones, so
    at any time after construction the views are valid and the vectors contiguous.
    """

    def __init__(self, dtype: np.dtype | type = np.float32, seed: int | None = 0) -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise TypeError(f"ParamPool: expected a floating dtype, got {self.dtype}")
        self.rng = np.random.default_rng(seed)
        self.x = np.zeros(0, self.dtype)
        self._dx = np.zeros(0, self.dtype)
        self.ddx = np.zeros(0, self.dtype)
        self.handles: list[tuple[Param, int, tuple[int, ...]]] = []
        self.clears, self._unwritten = 0, 0                      # see clear_dx

    @classmethod
    def from_layout(cls, shapes: list[tuple[int, ...]], x: np.ndarray, seed: int | None = None) -> ParamPool:
        """A pool of x's dtype holding a copy of `x`, cut in order into handles of these shapes
        (a saved pool's layout: `[shape for _, _, shape in pool.handles]`)."""
        x = np.asarray(x)
        shapes = [tuple(int(n) for n in shape) for shape in shapes]
        if any(n < 0 for shape in shapes for n in shape):
            raise ValueError(f"ParamPool.from_layout: expected shapes of sizes >= 0, got {shapes}")
        total = sum(math.prod(shape) for shape in shapes)
        if x.shape != (total,):
            raise ValueError(f"ParamPool.from_layout: expected a vector of {total} parameters for these shapes, "
                             f"got {x.shape}")
        pool = cls(x.dtype, seed)
        pool.x, pool._dx, pool.ddx = x.copy(), np.zeros_like(x), np.zeros_like(x)
        offset = 0
        for shape in shapes:
            handle = Param(dtype=pool.dtype)
            handle.offset, handle.pool = offset, pool
            pool.handles.append((handle, offset, shape))
            pool._bind(handle, offset, shape)
            offset += math.prod(shape)
        return pool

    @property
    def size(self) -> int:
        return self.x.size

    def __len__(self) -> int:
        return self.x.size

    def alloc(self, *shape: int, fan_in: int | None = None, value: float | None = None) -> Param:
        """A new parameter of this shape, as a State whose arrays are views into the pool.

        Initialised uniform in ±√(3/fan_in), i.e. standard deviation fan_in^(-1/2) (LeCun et al.,
        "Efficient BackProp", 1998), or to the constant `value`.
        """
        n = math.prod(shape)
        offset = self.x.size
        grown = [np.zeros(offset + n, self.dtype) for _ in range(3)]
        for new, old in zip(grown, (self.x, self.dx, self.ddx), strict=True):
            new[:offset] = old
        self.x, self._dx, self.ddx = grown
        handle = Param(dtype=self.dtype)
        handle.offset, handle.pool = offset, self
        self.handles.append((handle, offset, shape))
        for h, off, shp in self.handles:
            self._bind(h, off, shp)
        if value is not None:
            handle.x.fill(value)
        else:
            a = math.sqrt(3.0 / (fan_in if fan_in else max(n, 1)))
            handle.x[...] = self.rng.uniform(-a, a, size=shape)
        return handle

    def _bind(self, handle: Param, offset: int, shape: tuple[int, ...]) -> None:
        end = offset + math.prod(shape)
        handle.x = self.x[offset:end].reshape(shape)
        handle._dx = self._dx[offset:end].reshape(shape)
        handle._ddx = self.ddx[offset:end].reshape(shape)
        handle.cleared = self.clears                             # callers zero what is pending first

    def __getstate__(self) -> dict:
        self.flush_dx()
        return dict(vars(self))

    def __setstate__(self, state: dict) -> None:
        # a copy or an unpickled pool: its handles are re-pointed at its own new vectors
        if "dx" in state:                                        # pickled before dx was cleared lazily
            state["_dx"] = state.pop("dx")
            state.setdefault("clears", 0)
            state.setdefault("_unwritten", 0)
        self.__dict__.update(state)
        for name in ("x", "_dx", "ddx"):                         # a read-only memory map (joblib's mmap_mode)
            v = getattr(self, name, None)
            if isinstance(v, np.ndarray) and not v.flags.writeable:
                setattr(self, name, v.copy())
        for h, off, shp in self.handles:
            self._bind(h, off, shp)

    def flush_dx(self) -> None:
        """Zero the slices still pending from `clear_dx` (reading `dx` does it)."""
        if self._unwritten:
            for h, _, _ in self.handles:
                if h.cleared != self.clears:
                    h._dx.fill(0)
                    h.cleared = self.clears
            self._unwritten = 0

    @property
    def dx(self) -> np.ndarray:
        """The gradient vector, every slice pending from `clear_dx` zeroed first."""
        self.flush_dx()
        return self._dx

    @dx.setter
    def dx(self, value: np.ndarray) -> None:
        self.dx[...] = value

    def clear_dx(self) -> None:
        """dx ← 0, lazily: each handle's slice is zeroed when it is next read, or written rather
        than added to by the module that adds its first term (`Param.dx_for_sum`), so a training
        step does not pass over the whole vector to zero it and again to read the zeros back.
        Reading `dx` zeroes whatever no module wrote."""
        self.clears += 1
        self._unwritten = len(self.handles)

    def written(self, handle: Param) -> None:
        """Note that `handle`'s slice holds this clear's sum (it was zeroed or written over)."""
        handle.cleared = self.clears
        self._unwritten -= 1

    def clear_ddx(self) -> None:
        self.ddx.fill(0)

    def slot(self) -> np.ndarray:
        """A zero vector the length of the pool, for optimizer state (velocity, rates, …)."""
        return np.zeros_like(self.x)

    def load(self, x: np.ndarray) -> None:
        """Copy a flat parameter vector in (e.g. from a checkpoint)."""
        x = np.asarray(x)
        if x.shape != self.x.shape:
            raise ValueError(f"ParamPool: expected a vector of shape {self.x.shape}, got {x.shape}")
        np.copyto(self.x, x, casting="same_kind")

    def __repr__(self) -> str:
        return f"ParamPool({self.size} parameters in {len(self.handles)} tensors, {self.dtype})"
