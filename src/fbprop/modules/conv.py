"""Convolutional modules on image batches (n, c, h, w): Conv2d, Subsampling (LeNet-5's S layers), MaxPool.

Speed comes from im2col: the windows every output pixel sees are copied into one column matrix,
so fprop, the weight gradient and the input gradient are each a single BLAS product; col2im
adds the columns back onto the image with one slice-add per kernel offset (k² of them, no loop
over samples or pixels). Scratch arrays are `State`s resized in place, so a training step with
fixed shapes allocates nothing large.

Caching: im2col columns (Conv2d), the positions of the window maxima (MaxPool, found at the first
backward call) and window means (Subsampling) are computed once and reused by bprop/bbprop when
they receive the same `inp.x` array that the last fprop saw; for another array (a module instance
applied to two inputs) they are recomputed. As everywhere in fbprop, bprop assumes `inp.x` has not
been changed in place since fprop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fbprop.blas import add_product, one_thread, product, product_call
from fbprop.module import Module, Plan
from fbprop.modules.shape import expect_images
from fbprop.modules.squash import add_sum_to, sum_call
from fbprop.params import ParamPool
from fbprop.state import State, blocks, copy_batch_last, is_batch_last, memory


def _table(rows: list[str]) -> np.ndarray:
    t = np.array([[ch == "X" for ch in row] for row in rows])
    t.flags.writeable = False
    return t


LENET5_C3_TABLE = _table([           # LeCun et al. 1998, Table I: rows = S2 maps 0-5, columns = C3 maps 0-15
    "X...XXX..XXXX.XX",              # C3 0-5: contiguous triples of S2 maps, 6-11: contiguous quadruples,
    "XX...XXX..XXXX.X",              # 12-14: non-contiguous quadruples, 15: all six (60 connections)
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
])


def _windows(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """A (n, c, h', w', size, size) view with [n, c, i, j, a, b] = x[n, c, stride·i + a, stride·j + b]."""
    return sliding_window_view(x, (size, size), axis=(2, 3))[:, :, ::stride, ::stride]


def _offset(a: int, b: int, h_out: int, w_out: int, stride: int) -> tuple[slice, ...]:
    """Index of the pixels x[:, :, stride·i + a, stride·j + b] for all i < h', j < w' (col2im)."""
    return (slice(None), slice(None), slice(a, a + stride * (h_out - 1) + 1, stride),
            slice(b, b + stride * (w_out - 1) + 1, stride))


def _out_size(who: Module, inp: State, size: int, stride: int, padding: int = 0) -> tuple[int, int]:
    h, w = inp.x.shape[2] + 2 * padding, inp.x.shape[3] + 2 * padding
    if min(h, w) < size:
        m = size - 2 * padding
        raise ValueError(f"{who!r}: expected images of at least {m}x{m}, got input of shape {inp.x.shape}")
    return (h - size) // stride + 1, (w - size) // stride + 1


def _connections(who: str, table, n_in: int, n_out: int) -> np.ndarray:
    """A connection table as a boolean (n_in, n_out) array, from itself or from (in_map, out_map) pairs."""
    t = np.asarray(table)
    if t.dtype != bool:
        if t.ndim != 2 or t.shape[1] != 2 or t.dtype.kind not in "iu":
            raise ValueError(f"{who}: expected a boolean table of shape ({n_in}, {n_out}) or integer "
                             f"(in_map, out_map) pairs, got {t.dtype} array of shape {t.shape}")
        if t.size and (t.min() < 0 or t[:, 0].max() >= n_in or t[:, 1].max() >= n_out):
            raise ValueError(f"{who}: expected pairs in [0, {n_in}) x [0, {n_out}), got {t.tolist()}")
        pairs, t = t, np.zeros((n_in, n_out), bool)
        t[pairs[:, 0], pairs[:, 1]] = True
    if t.shape != (n_in, n_out):
        raise ValueError(f"{who}: expected a connection table of shape ({n_in}, {n_out}), got {t.shape}")
    if not t.any(0).all():
        lonely = np.flatnonzero(~t.any(0)).tolist()
        raise ValueError(f"{who}: expected every output map connected, got no input map for output maps {lonely}")
    return t


def _positive(who: str, **sizes: int) -> None:
    for name, v in sizes.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{who}: expected {name} >= 1, got {v}")


def _add_batch_first(dst: np.ndarray, src: np.ndarray) -> None:
    """dst (n, c, h, w), of either layout, += src (c, h, w, n): blocked when dst is batch-first."""
    if is_batch_last(dst):
        memory(dst)[...] += src
        return
    for k, i in blocks(*src.shape):
        dst[:, k, i] += src[k, i].transpose(3, 0, 1, 2)


def _offsets(s: int) -> list[tuple[int, int]]:
    """The s² offsets (a, b) of a pixel inside its s×s window, row by row."""
    return [(a, b) for a in range(s) for b in range(s)]


class Conv2d(Module):
    """y_{o,i,j} = Σ_{c,a,b} w_{o,c,a,b} x_{c, s·i+a, s·j+b}: n_out maps, each a sum of k×k
    convolutions of the (zero-padded) input maps. Shapes: x (n, n_in, h, w) -> y (n, n_out, h', w'),
    h' = (h + 2·padding − k) // stride + 1. Weights w (n_out, n_in, k, k) from the pool; no bias
    (the squashing module that follows carries one bias per map, e.g. Tanh((n_out, 1, 1), pool)).

    `table`, a boolean (n_in, n_out) array or (in_map, out_map) pairs, connects each output map
    to some input maps only (LeNet-5's C3: `LENET5_C3_TABLE`). It is a 0/1 mask on the full weight
    tensor: unconnected weights start at 0, fprop uses w∘mask and bprop/bbprop mask their dx/ddx,
    so they stay 0 and one dense BLAS product serves every table (the masked products are wasted
    flops, a fair price at C3's 60 of 96). Initialisation is uniform ±√(3/fan_in) per output map,
    fan_in = (its connected input maps) × k².

    The output is batch-last (`State.resize(..., batch_last=True)`): memory (n_out, h', w', n),
    so the product W·col, with col's columns ordered (i, j, n), is written straight into it, and
    im2col and col2im move runs of w'·n contiguous numbers instead of rows of w' pixels (3-6×
    faster at n = 32). An input in that layout (the previous convolution's output, or a module
    that keeps its input's layout) is read as it stands; a batch-first one is copied once. fprop
    and bprop keep their checks, views, products' routes and col2im's slices while the operands
    keep their shapes, layouts and buffers (`Plan`; LeNet-5's step at batch 32: 415 → 288 Python
    calls, with Subsampling's plans).

    When no bprop will follow (`forward_only`, which `Machine.inference` sets for its span),
    columns larger than `column_budget` bytes (16 MiB: LeNet-5's C1 from a batch of about 210)
    are built a band of output rows at a time (`band_budget`, 4 MiB, each), each band's product
    written into its rows of the output, and not kept: inference on large batches needs a few MiB
    of columns instead of hundreds, and runs faster with them in cache (the same numbers, bit for
    bit). The band products run on one thread (`blas.one_thread`): a second thread reading the
    reused band slows the next copy into it more than it speeds the product. A bprop after such
    an fprop would build the columns again. With more than one thread, `Machine.inference` splits
    a batch between Python threads instead (`split_by_samples`): each part's bands then run on a
    core of their own, with every elementwise pass of the net (LeNet-5 at batch 1,024 on 2
    threads: 27.2 against 42.6 ms; lenet-wide 0.33 against 0.59 s).
    """

    split_by_samples = True     # (see Module: inference splits a batch between threads)
    column_budget = 16 << 20    # bytes of im2col columns above which a forward-only fprop builds them in bands
    band_budget = 4 << 20       # of rows, each band's columns at most this many bytes (or one output row)
    forward_only = False        # True while no bprop follows (Machine.inference sets it)

    def __init__(self, n_in: int, n_out: int, kernel: int, pool: ParamPool, stride: int = 1,
                 padding: int = 0, table: np.ndarray | list[tuple[int, int]] | None = None) -> None:
        _positive("Conv2d", n_in=n_in, n_out=n_out, kernel=kernel, stride=stride)
        if int(padding) != padding or padding < 0:
            raise ValueError(f"Conv2d: expected padding >= 0, got {padding}")
        self.n_in, self.n_out, self.kernel = int(n_in), int(n_out), int(kernel)
        self.stride, self.padding = int(stride), int(padding)
        self.table = None
        if table is not None:
            self.table = _connections(repr(self), table, self.n_in, self.n_out)
        self.w = pool.alloc(self.n_out, self.n_in, self.kernel, self.kernel, fan_in=self.n_in * self.kernel**2)
        self._mask = None
        if self.table is not None:
            self._mask = self.table.T[:, :, None, None].astype(pool.dtype)   # mask_{o,c} = 1 if c feeds o
            self._mask_rows = np.repeat(self._mask, self.kernel**2, axis=1).reshape(self.n_out, -1)
            self.w.x *= self._mask * np.sqrt(self.n_in / self.table.sum(0))[:, None, None, None]  # U(±√(3/fan_in_o))
        self._xp, self._col, self._wm, self._g, self._dcol, self._dxt = (State() for _ in range(6))
        # ∂E/∂W in Fortran order: gemm writes this small (n_out, n_in·k·k) block from a long sum over
        # the batch's pixels 1.4-1.6× faster than into C order (LeNet-5's C1 and C3 shapes)
        self._gw: np.ndarray | None = None
        self._col_of: np.ndarray | None = None
        self._cols, self._geometry, self._whole = None, None, False   # the last im2col, (c, k, h', w', n)
        self._border_of: np.ndarray | None = None

    def _source(self, inp: State) -> np.ndarray:
        """The (padded) input as a C-ordered (c, h + 2p, w + 2p, n) array: a batch-last input's
        memory as it stands, else one copy; sets the geometry (c, k, h', w', n)."""
        k, p, s = self.kernel, self.padding, self.stride
        n, c, h, w = inp.x.shape
        src = memory(inp.x)                                       # (c, h, w, n)
        if p or not src.flags.c_contiguous:                       # padded, or batch-first: one copy, batch last
            xp = self._xp.resize(c, h + 2 * p, w + 2 * p, n, dtype=inp.x.dtype).x
            if p and self._border_of is not xp:                   # a new buffer: zero its border once
                xp.fill(0)
                self._border_of = xp
            copy_batch_last(xp[:, p:p + h, p:p + w], inp.x)
            src = xp
        h_out, w_out = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        self._geometry = (c, k, h_out, w_out, n)
        self._whole = h_out == w_out == 1 and h + 2 * p == w + 2 * p == k
        return src

    def _columns(self, inp: State) -> np.ndarray:
        """im2col: the (n_in·k·k, h'·w'·n) matrix whose column (i, j, n) is the window y_{n,·,i,j} sees."""
        if self._col_of is inp.x:
            return self._cols
        src = self._source(inp)
        c, k, h_out, w_out, n = self._geometry
        if self._whole:                                          # one window, the whole image: col is the
            self._cols = src.reshape(c * k * k, n)               # batch-last image itself (LeNet-5's C5)
        else:
            col = self._col.resize(c, k, k, h_out, w_out, n, dtype=inp.x.dtype).x
            np.copyto(col, self._windows_of(src))
            self._cols = col.reshape(c * k * k, -1)
        self._col_of = inp.x
        return self._cols

    def _windows_of(self, src: np.ndarray) -> np.ndarray:
        """The (c, k, k, h', w', n) view of src (c, h, w, n) that im2col copies:
        [c, a, b, i, j, n] = x[n, c, si + a, sj + b]; read-only (the windows overlap). Built from
        the strides of src, C-ordered as `_source` makes it, in 0.5 µs (sliding_window_view's
        checks cost 10)."""
        k, s = self.kernel, self.stride
        c, h, w, n = src.shape
        sc, sh, sw, sn = src.strides
        view = np.ndarray((c, k, k, (h - k) // s + 1, (w - k) // s + 1, n), src.dtype, src, 0,
                          (sc, sh, sw, sh * s, sw * s, sn))
        view.flags.writeable = False
        return view

    def _fprop_bands(self, inp: State, out: State, rows: int) -> None:
        """fprop with the columns built `rows` output rows at a time into one small buffer, each
        band's product written into its rows of the batch-last output; the columns are not kept."""
        src = self._source(inp)
        c, k, h_out, w_out, n = self._geometry
        out.resize(n, self.n_out, h_out, w_out, dtype=inp.x.dtype, batch_last=True)
        y = memory(out.x).reshape(self.n_out, -1)                # (maps, h'·w'·n): a band is a block of columns
        wm, run = self._weights(1), w_out * n
        flat = self._col.resize(c * k * k * rows * run, dtype=inp.x.dtype).x
        windows = self._windows_of(src)
        with one_thread():                                       # (see one_thread: the band is reused)
            for i in range(0, h_out, rows):
                r = min(rows, h_out - i)
                col = flat[:c * k * k * r * run].reshape(c, k, k, r, w_out, n)
                np.copyto(col, windows[:, :, :, i:i + r])
                np.matmul(wm, col.reshape(c * k * k, -1), out=y[:, i * run:(i + r) * run])
        self._col_of = None                                      # a bprop builds all the columns again

    def _weights(self, power: int) -> np.ndarray:
        """W∘mask (power 1) or W∘W∘mask (power 2) as an (n_out, n_in·k·k) matrix."""
        w = self.w.x
        if power == 1 and self._mask is None:
            return w.reshape(self.n_out, -1)
        wm = self._wm.resize(*w.shape, dtype=w.dtype).x
        if power == 2:
            np.multiply(w, w, out=wm)                            # W∘W
        else:
            np.copyto(wm, w)
        if self._mask is not None:
            wm *= self._mask                                     # w_{o,c} = 0 where c does not feed o
        return wm.reshape(self.n_out, -1)

    _forward: Plan | None = None                                  # fprop's decisions, bprop's (see Plan)
    _backward: Plan | None = None

    def fprop(self, inp: State, out: State) -> None:
        x, plan = inp.x, self._forward
        if self.forward_only or plan is None or not plan.fits(x, out.x, self.w.x):
            plan = self._plan_fprop(inp, out)
            if plan is None:
                return                                           # (computed in bands)
        plan.calls[0](x)

    def _plan_fprop(self, inp: State, out: State) -> Plan | None:
        """fprop's checks, output, columns and product, kept while the input keeps its shape and
        layout and the output and weights their buffers; None after a forward-only fprop that
        built its columns in bands (and keeps no plan)."""
        expect_images(self, inp, self.n_in)
        h_out, w_out = _out_size(self, inp, self.kernel, self.stride, self.padding)
        n, c = inp.x.shape[:2]
        row = c * self.kernel**2 * w_out * n * inp.x.itemsize       # bytes of one output row's columns
        if self.forward_only and row * h_out > self.column_budget and h_out > 1:
            self._fprop_bands(inp, out, max(1, min(self.column_budget, self.band_budget) // row))
            return None
        columns = self._columns_call(inp)
        out.resize(n, self.n_out, h_out, w_out, dtype=inp.x.dtype, batch_last=True)
        weights = self._weights_call()
        y_is = product_call(memory(out.x).reshape(self.n_out, -1), weights(), columns(inp.x), wide=True)

        def forward(x: np.ndarray) -> None:
            y_is(weights(), columns(x))                          # y_{o,i,j} = Σ w_{o,c,a,b} x_{c,si+a,sj+b}
        self._forward = Plan(inp.x, out.x, self.w.x, calls=(forward,))
        return self._forward

    def _columns_call(self, inp: State) -> Callable[[np.ndarray], np.ndarray]:
        """The call f(x) that builds im2col of an x of inp.x's shape and layout, keeps it for
        bprop (as `_columns` does) and returns it."""
        x0 = inp.x
        src = self._source(inp)                                  # (sets the geometry)
        c, k, h_out, w_out, n = self._geometry
        geometry, whole = self._geometry, self._whole
        col = None if whole else self._col.resize(c, k, k, h_out, w_out, n, dtype=x0.dtype).x
        cols = src.reshape(c * k * k, n) if whole else col.reshape(c * k * k, -1)
        if self.padding or not memory(x0).flags.c_contiguous:    # (padded or batch-first: copied in, as _source does)
            p, (h, w) = self.padding, x0.shape[2:]
            inner, windows = src[:, p:p + h, p:p + w], None if whole else self._windows_of(src)

            def copied(x: np.ndarray) -> np.ndarray:
                copy_batch_last(inner, x)
                if windows is not None:
                    np.copyto(col, windows)
                self._cols, self._col_of, self._geometry, self._whole = cols, x, geometry, whole
                return cols
            return copied
        seen = [x0, cols if whole else self._windows_of(src)]   # x's columns (whole) or windows

        def read(x: np.ndarray) -> np.ndarray:
            if x is not seen[0]:                                 # another array of the same layout
                m = memory(x)
                seen[:] = x, m.reshape(c * k * k, n) if whole else self._windows_of(m)
            if whole:
                self._cols = seen[1]
            else:
                np.copyto(col, seen[1])
                self._cols = cols
            self._col_of, self._geometry, self._whole = x, geometry, whole
            return self._cols
        return read

    def _weights_call(self) -> Callable[[], np.ndarray]:
        """The call f() that returns `_weights(1)` for the weights in the pool now."""
        w = self.w.x
        if self._mask is None:
            wmat = w.reshape(self.n_out, -1)
            return lambda: wmat
        wm = self._wm.resize(*w.shape, dtype=w.dtype).x
        mask, wmat = self._mask, wm.reshape(self.n_out, -1)

        def masked() -> np.ndarray:
            np.multiply(w, mask, out=wm)                         # w_{o,c} = 0 where c does not feed o
            return wmat
        return masked

    def bprop(self, inp: State, out: State) -> None:
        g, col = out.dx, self._columns(inp)
        dx, dx_zero = inp.sum_target("dx") if inp.requires_dx else (None, False)
        dw, dw_zero = self.w.dx_for_sum()                        # (the pool re-points w and dw together)
        plan = self._backward
        if plan is None or not plan.fits(g, dx, dw):             # (col: C order, its shape set by g's)
            plan = self._backward = self._plan_bprop(inp, g, col, dx, dw)
        plan.calls[0](g, col, dx_zero, dw_zero)                  # ∂E/∂W = ∂E/∂y xᵀ, ∂E/∂x = Wᵀ ∂E/∂y

    def _plan_bprop(self, inp: State, g0: np.ndarray, col: np.ndarray, dx: np.ndarray | None, dw: np.ndarray,
                    weights: Callable[[], np.ndarray] | None = None) -> Plan:
        """The call f(g, col, dx_zero, dw_zero) that adds (or writes, where zero) g·colᵀ into
        dw and col2im(wᵀ·g) into dx, its products' routes, views and col2im's slices decided once:
        bprop with (g, col, w) = (∂E/∂y, x, W), kept while ∂E/∂y keeps its shape and layout and dx
        and dw their buffers; bbprop with (∂²E/∂y², x∘x, W∘W), `weights` giving W∘W."""
        c, k, h_out, w_out, n = self._geometry
        g_copy = None if memory(g0).flags.c_contiguous else \
            self._g.resize(self.n_out, h_out, w_out, n, dtype=g0.dtype).x
        seen = [None, None]                                      # ∂E/∂y and its (n_out, h'·w'·n) matrix

        def matrix(g: np.ndarray) -> np.ndarray:
            if g_copy is not None:                               # a batch-first ∂E/∂y (set by hand): one copy
                copy_batch_last(g_copy, g)
                return g_copy.reshape(self.n_out, -1)
            if g is not seen[0]:
                seen[:] = g, memory(g).reshape(self.n_out, -1)
            return seen[1]
        weights, g = weights or self._weights_call(), matrix(g0)
        w_t = weights().T
        gw = self._gw
        if gw is None or gw.shape != (self.n_out, dw[0].size) or gw.dtype != g.dtype:
            gw = self._gw = np.empty((self.n_out, dw[0].size), dtype=g.dtype, order="F")
        gw_is, dw_m = product_call(gw, g, col.T, wide=True), dw.reshape(self.n_out, -1)
        mask = self._mask_rows if self._mask is not None else None
        to_dx = self._dx_call(inp, dx, w_t, g) if dx is not None else None

        def back(g: np.ndarray, col: np.ndarray, dx_zero: bool, dw_zero: bool) -> None:
            g = matrix(g)
            gw_is(g, col.T)                                      # ∂E/∂w_o = Σ_{i,j,n} ∂E/∂y_{n,o,i,j} x_window(i,j,n)
            if mask is not None:
                np.multiply(gw, mask, out=gw)                    # unconnected weights get no update
            if dw_zero:
                np.copyto(dw_m, gw)
            else:
                np.add(dw_m, gw, out=dw_m)
            if to_dx is not None:
                to_dx(weights().T, g, dx_zero)
        return Plan(g0, dx, dw, calls=(back,))

    def _dx_call(self, inp: State, dx: np.ndarray, w_t: np.ndarray, g: np.ndarray) -> Callable:
        """The call f(Wᵀ, g, zero) that writes (zero) or adds col2im(Wᵀ g) into dx."""
        c, k, h_out, w_out, n = self._geometry
        p, s, (h, w_in) = self.padding, self.stride, inp.x.shape[2:]
        into = memory(dx)
        if self._whole and not p and into.flags.c_contiguous:    # one window, the whole image: no col2im
            m = into.reshape(c * k * k, n)
            written, added = product_call(m, w_t, g), product_call(m, w_t, g, beta=1.0)
            return lambda w_t, g, zero: (written if zero else added)(w_t, g)
        dcol = self._dcol.resize(c, k, k, h_out, w_out, n, dtype=g.dtype).x
        dcol_is = product_call(dcol.reshape(c * k * k, -1), w_t, g, wide=True)
        direct = not p and into.flags.c_contiguous               # col2im adds straight into a batch-last dx
        dxt = into if direct else self._dxt.resize(c, h + 2 * p, w_in + 2 * p, n, dtype=g.dtype).x
        adds = [(dxt[_offset(a, b, h_out, w_out, s)[1:]], dcol[:, a, b]) for a, b in _offsets(k)]
        inner = dxt[:, p:p + h, p:p + w_in]                      # (the border is dropped)

        def col2im(w_t: np.ndarray, g: np.ndarray, zero: bool) -> None:
            if zero:
                into.fill(0)
            dcol_is(w_t, g)                                      # ∂E/∂x_window = Wᵀ ∂E/∂y
            if not direct:
                dxt.fill(0)
            for at, d in adds:                                   # ∂E/∂x_{c,si+a,sj+b} += dcol[c,a,b,i,j]
                np.add(at, d, out=at)
            if not direct:
                _add_batch_first(dx, inner)
        return col2im

    def bbprop(self, inp: State, out: State) -> None:
        x = self._columns(inp)
        col = self._col.resize(*x.shape, dtype=x.dtype).x if self._whole else x   # (whole: x is the image)
        np.multiply(x, x, out=col)                               # x∘x, in place: the cache is spent
        self._col_of = None
        h, ddx, w2 = out.ddx, inp.ddx if inp.requires_dx else None, self._weights(2)
        back = self._plan_bprop(inp, h, col, ddx, self.w.ddx, lambda: w2).calls[0]
        back(h, col, False, False)                               # ∂²E/∂y² (x∘x)ᵀ, (W∘W)ᵀ ∂²E/∂y²

    def __repr__(self) -> str:
        extra = (f", stride {self.stride}" if self.stride != 1 else "") + \
                (f", padding {self.padding}" if self.padding else "") + \
                (f", table {int(self.table.sum())}/{self.table.size}" if self.table is not None else "")
        return f"Conv2d({self.n_in} -> {self.n_out}, {self.kernel}x{self.kernel}{extra})"


class Subsampling(Module):
    """LeNet-5's S layers: y_{c,i,j} = a_c · m_{c,i,j} + b_c, m the average of x_c over the
    non-overlapping size×size window (i, j). Shapes: x (n, c, h, w) -> y (n, c, h/size, w/size),
    h and w multiples of size. The squashing follows as a separate module.

    The paper multiplies the window's *sum* by the coefficient; the average is the same machine
    with a_c rescaled by size². a_c starts at 1 (a plain average pooling, which keeps the maps
    in the working range of the ScaledTanh after it) and b_c at 0: 2·c parameters, as in the paper.
    fprop and bprop (for a batch-last input, the strided views of each window offset) keep their
    decisions while the operands keep their shapes, layouts and buffers (`Plan`).
    """

    def __init__(self, n_maps: int, size: int, pool: ParamPool) -> None:
        _positive("Subsampling", n_maps=n_maps, size=size)
        self.n_maps, self.size = int(n_maps), int(size)
        self.a = pool.alloc(self.n_maps, 1, 1, value=1.0)
        self.b = pool.alloc(self.n_maps, 1, 1, value=0.0)
        self._m, self._sum, self._t, self._u, self._as = (State() for _ in range(5))
        self._m_of: np.ndarray | None = None
        self._u_for: tuple | None = None

    def _spread(self, w: int, dtype: np.dtype) -> np.ndarray:
        """U (w/s, s·w) with U[j, a·w + s·j + b] = 1/s²: a row of s image rows times Uᵀ gives the
        means of its w/s windows, and a row of window values times U spreads each over its s×s
        pixels. Pooling is then one product on contiguous rows, not s² strided passes."""
        s = self.size
        u = self._u.resize(w // s, s * w, dtype=dtype).x
        if self._u_for != (w, u.dtype):
            u.fill(0)
            for j in range(w // s):
                for a in range(s):
                    u[j, a * w + s * j:a * w + s * j + s] = 1.0 / s**2
            self._u_for = (w, u.dtype)
        return u

    _forward: Plan | None = None                                  # fprop's decisions, bprop's (see Plan)
    _backward: Plan | None = None

    def fprop(self, inp: State, out: State) -> None:
        x, plan = inp.x, self._forward
        if plan is None or not plan.fits(x, out.x, self.a.x, self.b.x):
            plan = self._forward = self._plan_fprop(inp, out)
        plan.calls[0](x)

    def _plan_fprop(self, inp: State, out: State) -> Plan:
        expect_images(self, inp, self.n_maps)
        if inp.x.shape[2] % self.size or inp.x.shape[3] % self.size:
            raise ValueError(f"{self!r}: expected height and width multiples of {self.size}, "
                             f"got input of shape {inp.x.shape}")
        means = self._means_call(inp.x)
        m = means(inp.x)
        y = out.resize(*m.shape, dtype=inp.x.dtype, batch_last=is_batch_last(m)).x
        a, b = self.a.x, self.b.x

        def forward(x: np.ndarray) -> None:
            np.multiply(means(x), a, out=y)
            np.add(y, b, out=y)                                  # y = a m + b
        return Plan(inp.x, out.x, a, b, calls=(forward,))

    def _means_call(self, x0: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """The call f(x) that computes m for an x of x0's shape and layout and keeps it for bprop
        (`_means`): for a batch-last x, s² strided passes over runs of n, their views made once
        per array; for a batch-first one, one product of its rows with the spread matrix."""
        n, c, h, w = x0.shape
        s = self.size
        last = is_batch_last(x0)
        m = self._m.resize(n, c, h // s, w // s, dtype=x0.dtype, batch_last=last).x
        if not last:
            spread, rows_m = self._spread(w, x0.dtype).T, m.reshape(-1, w // s)

            def means_of_rows(x: np.ndarray) -> np.ndarray:
                rows = x.reshape(n * c * (h // s), s * w)        # each row: the s image rows of one row of windows
                product(rows_m, rows, spread)                    # m = (1/s²) Σ_window x
                self._m_of = x
                return m
            return means_of_rows
        mm, scale, seen = memory(m), 1.0 / s**2, [None, None]

        def means(x: np.ndarray) -> np.ndarray:
            if x is not seen[0]:
                xm = memory(x)
                seen[:] = x, [xm[:, a::s, b::s] for a, b in _offsets(s)]
            first, *rest = seen[1]
            if rest:                                             # s² strided passes over runs of n
                np.add(first, rest[0], out=mm)
                for v in rest[1:]:
                    np.add(mm, v, out=mm)
            else:
                np.copyto(mm, first)
            np.multiply(mm, scale, out=mm)                       # m = (1/s²) Σ_window x
            self._m_of = x
            return m
        return means

    def _means(self, inp: State) -> np.ndarray:
        """m for inp.x: the one the last fprop computed when it saw this array, else computed now."""
        return self._m.x if self._m_of is inp.x else self._means_call(inp.x)(inp.x)

    def _back(self, inp: State, g: np.ndarray, power: int, slot: str) -> None:
        """Adds (a/s²)^power g on every pixel of each window into the input's `slot`, and
        Σ g m^power, Σ g into the coefficient's and the bias's."""
        into, zero = inp.sum_target(slot) if inp.requires_dx else (None, False)
        self._add_back(inp.x.shape, g, self._means(inp), into, zero, power, slot)

    def _add_back(self, shape: tuple[int, ...], g: np.ndarray, m: np.ndarray, into: np.ndarray | None,
                  zero: bool, power: int, slot: str) -> None:
        """`_back` with the input's slot (`into`, written when `zero`) asked for already."""
        t = self._t.resize(*g.shape, dtype=g.dtype, batch_last=is_batch_last(g)).x
        if into is not None:
            n, c, h, w = shape
            s = self.size
            if is_batch_last(into):                              # batch-last: (c, h/s, s, w/s, s, n) in memory,
                np.multiply(g, (self.a.x * (1.0 / s**2)) ** power, out=t)          # (a/s²)^power g
                into = memory(into).reshape(c, h // s, s, w // s, s, n)          # each window's s×s pixels
                spread = memory(t).reshape(c, h // s, 1, w // s, 1, n)           # take its value: one pass
                if zero:                                         # windows tile the image: each pixel written once
                    np.copyto(into, spread)
                else:
                    into += spread
            else:
                if zero:
                    into.fill(0)
                np.multiply(g, self.a.x if power == 1 else self.a.x**2, out=t)
                target = into.reshape(n * c * (h // s), s * w)
                add_product(target, t.reshape(target.shape[0], -1), self._spread(w, g.dtype),
                            alpha=1.0 / s ** (2 * power - 2))   # U holds 1/s²: (a/s²)^power overall
        np.multiply(g, m, out=t)
        if power == 2:
            t *= m
        target, zero = self.a.sum_target(slot)
        add_sum_to(target, t, self._sum, zero=zero)
        target, zero = self.b.sum_target(slot)
        add_sum_to(target, g, self._sum, zero=zero)

    def bprop(self, inp: State, out: State) -> None:
        g, m = out.dx, self._means(inp)
        dx, dx_zero = inp.sum_target("dx") if inp.requires_dx else (None, False)
        plan = self._backward
        if plan is None or not plan.fits(g, dx, m, self.a.x):
            plan = self._backward = self._plan_bprop(inp, g, m, dx)
        plan.calls[0](g, dx_zero)                    # ∂E/∂x = (a/s²) ∂E/∂y, ∂E/∂a = Σ ∂E/∂y m, ∂E/∂b = Σ ∂E/∂y

    def _plan_bprop(self, inp: State, g0: np.ndarray, m: np.ndarray, dx: np.ndarray | None) -> Plan:
        """`_back` for slot "dx" with its views and sums decided once, for a batch-last ∂E/∂y and
        dx (the plan calls `_add_back` otherwise), while ∂E/∂y keeps its shape and layout and dx,
        the means and the coefficients (whose gradients the pool re-points with them) their buffers."""
        shape, a = inp.x.shape, self.a.x
        last = is_batch_last(g0)
        if not last or (dx is not None and not is_batch_last(dx)):
            return Plan(g0, dx, m, a, calls=(lambda g, zero: self._add_back(shape, g, m, dx, zero, 1, "dx"),))
        n, c, h, w = shape
        s = self.size
        t = self._t.resize(*g0.shape, dtype=g0.dtype, batch_last=True).x
        a_s, scale = self._as.resize(*a.shape, dtype=a.dtype).x, 1.0 / s**2
        into = None if dx is None else memory(dx).reshape(c, h // s, s, w // s, s, n)   # each window's s×s pixels
        spread = memory(t).reshape(c, h // s, 1, w // s, 1, n)                     # take its value: one pass
        ga, gb = self.a._dx, self.b._dx
        a_sums = sum_call(ga, t, self._sum, True), sum_call(ga, t, self._sum, False)
        b_sums = sum_call(gb, g0, self._sum, True), sum_call(gb, g0, self._sum, False)

        def back(g: np.ndarray, dx_zero: bool) -> None:
            if into is not None:
                np.multiply(a, scale, out=a_s)
                np.multiply(g, a_s, out=t)                       # (a/s²) g
                if dx_zero:                                      # windows tile the image: each pixel written once
                    np.copyto(into, spread)
                else:
                    np.add(into, spread, out=into)
            np.multiply(g, m, out=t)
            a_sums[not self.a.dx_for_sum()[1]](t, 1.0)
            b_sums[not self.b.dx_for_sum()[1]](g, 1.0)
        return Plan(g0, dx, m, a, calls=(back,))

    def bbprop(self, inp: State, out: State) -> None:
        self._back(inp, out.ddx, 2, "ddx")           # (a/s²)² ∂²E/∂y², Σ ∂²E/∂y² m², Σ ∂²E/∂y²

    def __repr__(self) -> str:
        return f"Subsampling({self.n_maps} maps, {self.size}x{self.size})"


class MaxPool(Module):
    """y_{c,i,j} = max over the size×size window at (stride·i, stride·j) of x_c (no parameters).
    Shapes: x (n, c, h, w) -> y (n, c, (h − size)//stride + 1, (w − size)//stride + 1); stride
    defaults to size. The Jacobian is 1 at each window's argmax (the first, on ties), so bprop and
    bbprop route ∂E/∂y and ∂²E/∂y² there; overlapping windows add.

    fprop keeps only y. The first bprop or bbprop after it marks, for each window offset (a, b), the
    windows whose maximum sits there and was not claimed by an earlier offset: size² boolean
    arrays the shape of y, one byte per input pixel when windows do not overlap.
    """

    def __init__(self, size: int, stride: int | None = None) -> None:
        _positive("MaxPool", size=size, stride=size if stride is None else stride)
        self.size = int(size)
        self.stride = self.size if stride is None else int(stride)
        self._hits, self._claimed, self._g = State(), State(), State()
        self._hits_of: np.ndarray | None = None
        self._hits_last = False

    def _windows(self, inp: State) -> list[tuple[slice, ...]]:
        """The size² strided views x[:, :, stride·i + a, stride·j + b], one per window offset (a, b)."""
        h_out, w_out = _out_size(self, inp, self.size, self.stride)
        return [_offset(a, b, h_out, w_out, self.stride) for a in range(self.size) for b in range(self.size)]

    def _argmax(self, inp: State, y: np.ndarray) -> np.ndarray:
        """hits[k] = True where window offset k holds its window's maximum y, the first such k on ties."""
        if self._hits_of is inp.x:
            return self._masks()
        views = self._windows(inp)
        last = is_batch_last(y) and y.shape[0] > 1               # the masks take y's layout
        if last:                                                 # memory (k, c, h', w', n)
            self._hits.resize(y.shape[0], len(views), *y.shape[1:], dtype=bool, batch_last=True)
        else:
            self._hits.resize(len(views), *y.shape, dtype=bool)
        self._hits_last = last
        hits = self._masks()
        claimed = self._claimed.resize(*y.shape, dtype=bool, batch_last=last).x
        for k, at in enumerate(views):
            np.equal(inp.x[at], y, out=hits[k])
            if k:
                np.greater(hits[k], claimed, out=hits[k])        # and not claimed by an earlier offset
                np.logical_or(claimed, hits[k], out=claimed)
            else:
                np.copyto(claimed, hits[0])
        self._hits_of = inp.x
        return self._masks()

    def _masks(self) -> np.ndarray:
        """The hit masks indexed by window offset first: hits[k] has the shape and layout of y."""
        return self._hits.x.swapaxes(0, 1) if self._hits_last else self._hits.x

    def fprop(self, inp: State, out: State) -> None:
        expect_images(self, inp)
        h_out, w_out = _out_size(self, inp, self.size, self.stride)
        y = out.resize(*inp.x.shape[:2], h_out, w_out, dtype=inp.x.dtype, batch_last=is_batch_last(inp.x)).x
        first, *rest = self._windows(inp)
        np.copyto(y, inp.x[first])
        for at in rest:
            np.maximum(y, inp.x[at], out=y)                      # y = max_window x
        self._hits_of = None

    def _route(self, inp: State, out: State, g: np.ndarray, target: np.ndarray) -> None:
        hits = self._argmax(inp, out.x)
        if self.stride == self.size:                             # disjoint windows: build the image, add once
            kept = self._g.x
            routed = self._g.resize(*inp.x.shape, dtype=g.dtype, batch_last=is_batch_last(target)).x
            if routed is not kept:
                routed.fill(0)                                   # pixels past the last window stay 0
            for k, at in enumerate(self._windows(inp)):
                np.multiply(g, hits[k], out=routed[at])          # ∂y/∂x = 1 at the argmax, 0 elsewhere
            target += routed
            return
        routed = self._g.resize(*g.shape, dtype=g.dtype, batch_last=is_batch_last(g)).x
        for k, at in enumerate(self._windows(inp)):
            np.multiply(g, hits[k], out=routed)
            target[at] += routed                                 # overlapping windows add

    def bprop(self, inp: State, out: State) -> None:
        self._route(inp, out, out.dx, inp.dx)                    # ∂E/∂x_argmax = ∂E/∂y

    def bbprop(self, inp: State, out: State) -> None:
        self._route(inp, out, out.ddx, inp.ddx)                  # 1² ∂²E/∂y²

    def __repr__(self) -> str:
        stride = f", stride {self.stride}" if self.stride != self.size else ""
        return f"MaxPool({self.size}x{self.size}{stride})"
