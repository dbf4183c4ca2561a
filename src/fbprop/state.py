"""State: the value a module writes and the derivatives the backward sweeps bring to it."""

from __future__ import annotations

import numpy as np


class State:
    """A slot between modules: `x` (value), `dx` (∂L/∂x), `ddx` (Gauss-Newton ∂²L/∂x²).

    Arrays of any rank, batch axis first. `dx` and `ddx` have the shape of `x` and are allocated
    on first use, so a state that only runs forward costs one array. `resize` to the shape it
    already has keeps every buffer, which is what makes a training step allocation-free.

    `requires_dx = False` marks a state nobody reads derivatives of (a batch of raw data): a
    module may then skip computing them, which saves the largest product of a first layer.
    """

    __slots__ = ("x", "_dx", "_ddx", "requires_dx")

    def __init__(self, x: np.ndarray | None = None, dtype: np.dtype | type | None = None,
                 requires_dx: bool = True) -> None:
        self.requires_dx = requires_dx
        if x is None:
            self.x = np.zeros((0,), dtype=dtype or np.float32)
        else:
            self.x = np.asarray(x, dtype=dtype)
        self._dx: np.ndarray | None = None
        self._ddx: np.ndarray | None = None

    def __setstate__(self, state: tuple) -> None:
        # slots come back as (None, {name: value}); a buffer unpickled as a read-only memory map
        # (joblib's mmap_mode) is copied, since modules write into it
        for name, value in state[1].items():
            if isinstance(value, np.ndarray) and not value.flags.writeable:
                value = value.copy()
            setattr(self, name, value)

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
        if self._dx is None or self._dx.shape != self.x.shape or self._dx.dtype != self.x.dtype:
            self._dx = np.zeros_like(self.x)
        return self._dx

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

    def resize(self, *shape: int, dtype: np.dtype | type | None = None) -> State:
        """Give `x` this shape (and dtype); the buffers are kept when nothing changes."""
        dtype = np.dtype(dtype) if dtype is not None else self.x.dtype
        if self.x.shape != shape or self.x.dtype != dtype:
            self.x = np.empty(shape, dtype=dtype)
            self._dx = self._ddx = None
        return self

    def set(self, x: np.ndarray) -> State:
        """Copy `x` in, reusing the buffer when the shape and dtype already match."""
        x = np.asarray(x)
        self.resize(*x.shape, dtype=x.dtype)
        np.copyto(self.x, x)
        return self

    def clear_dx(self) -> None:
        self.dx.fill(0)

    def clear_ddx(self) -> None:
        self.ddx.fill(0)

    def __repr__(self) -> str:
        return f"State(shape={self.x.shape}, dtype={self.x.dtype})"
