"""Shape modules: the same numbers in another arrangement (Flatten, Reshape) or with a zero border (Pad)."""

from __future__ import annotations

import math

from fbprop.module import Module
from fbprop.state import State, add_into, copy_batch_last, memory


def expect_images(who: Module, inp: State, channels: int | None = None) -> None:
    """Raise one clear ValueError unless `inp.x` is a batch of images (n, channels, h, w)."""
    got = inp.x.shape
    if len(got) != 4 or (channels is not None and got[1] != channels):
        raise ValueError(f"{who!r}: expected input of shape (n, {'c' if channels is None else channels}, h, w), "
                         f"got {got}")


class Reshape(Module):
    """y = x with each sample rearranged to `shape`. Shapes: x (n, …) -> y (n, *shape).

    The sample size must be prod(shape) (one entry may be -1, as in numpy). fprop makes `out.x`
    a view of `inp.x` when numpy can (a contiguous input), so it copies nothing; the Jacobian is
    a permutation-free identity, so bprop and bbprop add the reshaped dx and ddx.
    """

    def __init__(self, *shape: int) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self.shape = tuple(int(s) for s in shape)
        if not self.shape or self.shape.count(-1) > 1 or any(s < 1 and s != -1 for s in self.shape):
            raise ValueError(f"{type(self).__name__}: expected positive sizes (at most one -1), got {shape}")

    def _target(self, inp: State) -> tuple[int, ...]:
        got, known = inp.x.shape, math.prod(s for s in self.shape if s != -1)
        size = math.prod(got[1:])
        if not got:
            raise ValueError(f"{self!r}: expected input of shape (n, …), got {got}")
        if size % known if -1 in self.shape else size != known:
            want = f"a multiple of {known}" if -1 in self.shape else str(known)
            raise ValueError(f"{self!r}: expected input of shape (n, …) with {want} values per sample, got {got}")
        return (got[0], *self.shape)

    _shapes: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # the last input shape checked, its target

    def fprop(self, inp: State, out: State) -> None:
        x = inp.x
        seen, target = self._shapes
        if x.shape != seen:
            target = self._target(inp)
            self._shapes = (x.shape, target)
        out.x = x.reshape(target)                                # y = x, a view when possible

    def bprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            add_into(inp, "dx", out.dx.reshape(inp.x.shape))     # ∂E/∂x = ∂E/∂y, rearranged

    def bbprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.ddx += out.ddx.reshape(inp.x.shape)              # ∂²E/∂x² = ∂²E/∂y², rearranged

    def __repr__(self) -> str:
        return f"Reshape({', '.join(map(str, self.shape))})"


class Flatten(Reshape):
    """y = x with each sample as one vector. Shapes: x (n, d1, d2, …) -> y (n, d1·d2·…)."""

    def __init__(self) -> None:
        super().__init__(-1)

    def __repr__(self) -> str:
        return "Flatten()"


class Pad(Module):
    """Zero border of width p around each image. Shapes: x (n, c, h, w) -> y (n, c, h + 2p, w + 2p).

    y[:, :, p:p+h, p:p+w] = x and 0 elsewhere, so ∂E/∂x is the interior of ∂E/∂y (LeNet-5 pads
    the 28×28 MNIST digits to 32×32 so that the strokes reach the centre of C5's receptive field).
    y is batch-last in memory (see `State`), the layout a convolution reads without a copy: the
    copy that pads is the one that puts the batch innermost.
    """

    def __init__(self, p: int) -> None:
        if int(p) != p or p < 0:
            raise ValueError(f"Pad: expected a padding p >= 0, got {p}")
        self.p = int(p)

    def _interior(self, inp: State) -> tuple[slice, ...]:
        p, (h, w) = self.p, inp.x.shape[2:]
        return (slice(None), slice(None), slice(p, p + h), slice(p, p + w))

    def fprop(self, inp: State, out: State) -> None:
        expect_images(self, inp)
        n, c, h, w = inp.x.shape
        p = self.p
        out.resize(n, c, h + 2 * p, w + 2 * p, dtype=inp.x.dtype, batch_last=True)
        y = out.x
        y[:, :, :p] = y[:, :, p + h:] = 0                        # y = 0 on the border rows
        y[:, :, :, :p] = y[:, :, :, p + w:] = 0                  # and columns
        copy_batch_last(memory(y)[:, p:p + h, p:p + w], inp.x)              # y = x inside, batch last

    def bprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.dx += out.dx[self._interior(inp)]                # ∂E/∂x = (∂E/∂y) inside

    def bbprop(self, inp: State, out: State) -> None:
        if inp.requires_dx:
            inp.ddx += out.ddx[self._interior(inp)]              # ∂²E/∂x² = (∂²E/∂y²) inside

    def __repr__(self) -> str:
        return f"Pad({self.p})"
