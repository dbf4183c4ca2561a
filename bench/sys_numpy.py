"""The plain-numpy reference: the same nets written as one hand-fused loop, as fast as numpy allows.

This is the ceiling for any numpy library: every buffer is allocated once per batch size, every
product is one BLAS call writing into its buffer (`out=`), elementwise work is in place, and the
parameters and their gradients are one flat vector each in fbprop's pool order, so the SGD step is
one vector operation. Choices a library cannot make for you are taken where they are free:
−η is folded into the output gradient (so the update is w += g), the data's ∂E/∂x is never
computed, the weight gradients go through np.dot, which hands every shape to BLAS (at batch 1
it is 1.6× faster than np.outer, which this reference used before, and np.matmul's K = 1 loop
is 7× slower), and
LeNet-5's activations are (c, h, w, n), batch innermost, so each convolution's product lands in
the next layer's layout and im2col/col2im copy long contiguous runs, and the 2×2 subsampling's
backward is a plain strided assignment.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

A, S = 1.7159, 2.0 / 3.0                                         # LeNet's scaled tanh: A tanh(S u)


class Flat:
    """A flat parameter vector and its gradient, with views of the given shapes (fbprop's pool order)."""

    def __init__(self, init: np.ndarray, shapes: list[tuple[int, ...]]) -> None:
        self.w = init.copy()
        self.g = np.zeros_like(self.w)
        self.ws, self.gs, off = [], [], 0
        for shape in shapes:
            n = math.prod(shape)
            self.ws.append(self.w[off:off + n].reshape(shape))
            self.gs.append(self.g[off:off + n].reshape(shape))
            off += n

    def params(self) -> list[np.ndarray]:
        return [w.copy() for w in self.ws]

    def load(self, params: list[np.ndarray]) -> None:
        for w, p in zip(self.ws, params):
            w[...] = p


class Buffers(dict):
    """Named scratch arrays, allocated on first request and reused after."""

    def __init__(self, dtype: np.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def get(self, name: str, *shape: int) -> np.ndarray:
        a = dict.get(self, name)
        if a is None or a.shape != shape:
            a = self[name] = np.empty(shape, self.dtype)
        return a


class Reference:
    """What the two nets share: numpy arrays in, the flat vector's views out."""

    name = "numpy-ref"
    p: Flat

    def native(self, x, y):
        return x, y

    def params(self) -> list[np.ndarray]:
        return self.p.params()

    def load(self, params: list[np.ndarray]) -> None:
        self.p.load(params)


class NumpyMLP(Reference):
    """784-300-100-10 (or the sizes `shapes` give): tanh(W1 x + b1), tanh(W2 · + b2), W3 · + b3,
    softmax cross-entropy."""

    def __init__(self, init: np.ndarray, shapes, lr: float, online_ger: bool = False, fold: bool = False,
                 threads: int = 1, **_) -> None:
        self.p = Flat(init, shapes)
        (self.h1, self.n_in), (self.h2, _), (self.k, _) = shapes[0], shapes[2], shapes[4]
        self.lr = lr
        self.buf = Buffers(init.dtype)
        self._rows: dict[int, np.ndarray] = {}
        self.ger = None
        if online_ger:
            from scipy.linalg import blas
            self.ger = {np.dtype(np.float32): blas.sger, np.dtype(np.float64): blas.dger}.get(init.dtype)
        self.gemm = None
        if fold and threads == 1:
            from scipy.linalg import blas
            self.gemm = {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}.get(init.dtype)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w1, b1, w2, b2, w3, b3 = self.p.ws
        n, get = x.shape[0], self.buf.get
        h1, h2, s = get("h1", n, self.h1), get("h2", n, self.h2), get("s", n, self.k)
        gemm = self.gemm
        if gemm is not None:                                     # the numpy-fold system, one thread
            for a, w, b, h in ((x, w1, b1, h1), (h1, w2, b2, h2), (h2, w3, b3, s)):
                np.copyto(h, b)
                gemm(1.0, w.T, a.T, 1.0, h.T, 1, 0, 1)           # hᵀ ← W aᵀ + hᵀ: h = a Wᵀ + b, no zeroing pass
                if h is not s:
                    np.tanh(h, out=h)
            return h1, h2, s
        np.matmul(x, w1.T, out=h1)
        h1 += b1
        np.tanh(h1, out=h1)
        np.matmul(h1, w2.T, out=h2)
        h2 += b2
        np.tanh(h2, out=h2)
        np.matmul(h2, w3.T, out=s)
        s += b3
        return h1, h2, s

    def train_step(self, x: np.ndarray, y: np.ndarray) -> None:
        n, get = x.shape[0], self.buf.get
        x = x.reshape(n, self.n_in)
        if n == 1 and self.ger is not None:
            self._online_step(x, y)
            return
        w1, b1, w2, b2, w3, b3 = self.p.ws
        g1, gb1, g2, gb2, g3, gb3 = self.p.gs
        h1, h2, s = self._forward(x)
        m, z = get("m", n, 1), get("z", n, 1)
        np.max(s, axis=1, keepdims=True, out=m)
        s -= m
        np.exp(s, out=s)
        np.sum(s, axis=1, keepdims=True, out=z)
        z *= n / -self.lr
        s /= z                                                   # −η (p − onehot) / n, onehot below
        rows = self._rows.get(n)
        if rows is None:
            rows = self._rows[n] = np.arange(n)
        s[rows, y] += self.lr / n
        d2, d1, t2, t1 = get("d2", n, self.h2), get("d1", n, self.h1), get("t2", n, self.h2), get("t1", n, self.h1)
        np.sum(s, axis=0, out=gb3)
        np.dot(s.T, h2, out=g3)                                  # BLAS at every shape, n = 1 too
        np.matmul(s, w3, out=d2)
        np.multiply(h2, h2, out=t2)
        np.subtract(1, t2, out=t2)
        d2 *= t2                                                 # tanh' = 1 − y²
        np.sum(d2, axis=0, out=gb2)
        np.dot(d2.T, h1, out=g2)
        np.matmul(d2, w2, out=d1)
        np.multiply(h1, h1, out=t1)
        np.subtract(1, t1, out=t1)
        d1 *= t1
        np.sum(d1, axis=0, out=gb1)
        np.dot(d1.T, x, out=g1)
        self.p.w += self.p.g                                     # w ← w − η ∂L/∂w (η folded in)

    def _online_step(self, x: np.ndarray, y: np.ndarray) -> None:
        """Batch 1: each weight matrix is updated in place by one rank-1 BLAS ger, W += (−η d) xᵀ,
        as soon as the gradient below it has been computed from the old W: one read and one
        write of W, where the gradient buffer costs a write, then a read and a write more."""
        w1, b1, w2, b2, w3, b3 = self.p.ws
        get, ger = self.buf.get, self.ger
        h1, h2, s = self._forward(x)
        np.max(s, axis=1, keepdims=True, out=(m := get("m", 1, 1)))
        s -= m
        np.exp(s, out=s)
        s *= -self.lr / s.sum()                                  # −η p
        s[0, y[0]] += self.lr                                    # −η (p − onehot)
        d2, d1, t2, t1 = get("d2", 1, self.h2), get("d1", 1, self.h1), get("t2", 1, self.h2), get("t1", 1, self.h1)
        np.matmul(s, w3, out=d2)                                 # from the old W3
        ger(1.0, h2[0], s[0], a=w3.T, overwrite_a=1)             # W3ᵀ += h2 (−η g)ᵀ, W3ᵀ Fortran-ordered
        b3 += s[0]
        np.multiply(h2, h2, out=t2)
        np.subtract(1, t2, out=t2)
        d2 *= t2
        np.matmul(d2, w2, out=d1)
        ger(1.0, h1[0], d2[0], a=w2.T, overwrite_a=1)
        b2 += d2[0]
        np.multiply(h1, h1, out=t1)
        np.subtract(1, t1, out=t1)
        d1 *= t1
        ger(1.0, x[0], d1[0], a=w1.T, overwrite_a=1)
        b1 += d1[0]

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self._forward(x.reshape(x.shape[0], self.n_in))[2], axis=1)


class NumpyLeNet5(Reference):
    """fbprop's LeNet-5 (pad 2, C1, S2, C3 with Table I, S4, C5, F6, RBF to fixed codes, NLL with β),
    parameters in fbprop's layout and order.

    Activations are (c, h, w, n), the batch innermost, and the fully connected part (d, n): every
    convolution is one product W (o, c·k·k) · col (c·k·k, h'·w'·n) whose result is already the next
    layer's layout, S4's output is C5's input as it stands, and im2col / col2im move runs of w'·n
    contiguous numbers instead of rows of w' pixels (3-6× faster than channel-major at n = 32).
    """

    def __init__(self, init: np.ndarray, shapes, lr: float, codes: np.ndarray, table: np.ndarray,
                 beta: float = 0.1, **_) -> None:
        self.p = Flat(init, shapes)
        self.lr, self.beta = lr, beta
        dt = init.dtype
        self.codes = np.ascontiguousarray(codes, dtype=dt)                          # (10, 84)
        self.half_t2 = (0.5 * np.einsum("ij,ij->i", self.codes, self.codes)).astype(dt)[:, None]
        self.mask = np.ascontiguousarray(table.T[:, :, None, None], dtype=dt)       # (16, 6, 1, 1)
        self.buf = Buffers(dt)
        self._rows: dict[int, np.ndarray] = {}
        self._zeroed = None

    def _im2col(self, name: str, x: np.ndarray, k: int) -> np.ndarray:
        """(c, h, w, n) -> (c·k·k, h'·w'·n), rows ordered (c, a, b) like fbprop's weights."""
        c, h, w, n = x.shape
        ho, wo = h - k + 1, w - k + 1
        col = self.buf.get(name, c, k, k, ho, wo, n)
        np.copyto(col, sliding_window_view(x, (k, k), axis=(1, 2)).transpose(0, 4, 5, 1, 2, 3))
        return col.reshape(c * k * k, ho * wo * n)

    def _squash(self, u: np.ndarray, b: np.ndarray | None = None) -> None:
        if b is not None:
            u += b
        u *= S
        np.tanh(u, out=u)
        u *= A                                                   # y = A tanh(S (u + b))

    def _dsquash(self, y: np.ndarray, d: np.ndarray, tmp: np.ndarray) -> None:
        np.multiply(y, y, out=tmp)
        np.subtract(A * A, tmp, out=tmp)
        tmp *= S / A
        d *= tmp                                                 # f' = (S/A)(A² − y²)

    @staticmethod
    def _pool(x: np.ndarray, m: np.ndarray) -> None:
        np.add(x[:, 0::2, 0::2], x[:, 0::2, 1::2], out=m)
        m += x[:, 1::2, 0::2]
        m += x[:, 1::2, 1::2]
        m *= 0.25                                                # 2×2 mean

    @staticmethod
    def _per_map(v: np.ndarray) -> np.ndarray:
        return v.reshape(-1, 1, 1, 1)

    def _forward(self, x: np.ndarray) -> dict:
        (c1, b1, a2, bb2, c3, b3, a4, bb4, c5, b5, f6, b6) = self.p.ws
        n, get, pm = x.shape[0], self.buf.get, self._per_map
        xp = get("xp", 1, 32, 32, n)
        if self._zeroed is not xp:                               # the border stays 0
            xp.fill(0)
            self._zeroed = xp
        xp[0, 2:30, 2:30] = x.reshape(n, 28, 28).transpose(1, 2, 0)
        col1 = self._im2col("col1", xp, 5)                       # (25, 784·n)
        y1 = get("y1", 6, 28, 28, n)
        np.matmul(c1.reshape(6, 25), col1, out=y1.reshape(6, -1))
        self._squash(y1, pm(b1))
        m2, y2 = get("m2", 6, 14, 14, n), get("y2", 6, 14, 14, n)
        self._pool(y1, m2)
        np.multiply(m2, pm(a2), out=y2)
        y2 += pm(bb2)
        self._squash(y2)
        col3 = self._im2col("col3", y2, 5)                       # (150, 100·n)
        w3 = get("w3", 16, 6, 5, 5)
        np.multiply(c3, self.mask, out=w3)
        y3 = get("y3", 16, 10, 10, n)
        np.matmul(w3.reshape(16, 150), col3, out=y3.reshape(16, -1))
        self._squash(y3, pm(b3))
        m4, y4 = get("m4", 16, 5, 5, n), get("y4", 16, 5, 5, n)
        self._pool(y3, m4)
        np.multiply(m4, pm(a4), out=y4)
        y4 += pm(bb4)
        self._squash(y4)
        x5 = y4.reshape(400, n)                                  # C5 sees all of S4: (c·5·5, n)
        y5 = get("y5", 120, n)
        np.matmul(c5.reshape(120, 400), x5, out=y5)
        self._squash(y5, b5.reshape(120, 1))
        y6 = get("y6", 84, n)
        np.matmul(f6, y5, out=y6)
        self._squash(y6, b6.reshape(84, 1))
        e, sq = get("e", 10, n), get("sq", 1, n)
        np.matmul(self.codes, y6, out=e)
        np.einsum("ij,ij->j", y6, y6, out=sq[0])
        sq *= 0.5
        np.subtract(sq, e, out=e)
        e += self.half_t2                                        # E = ½‖x‖² − t·x + ½‖t‖²
        return dict(col1=col1, y1=y1, m2=m2, y2=y2, col3=col3, w3=w3, y3=y3, m4=m4, y4=y4,
                    x5=x5, y5=y5, y6=y6, e=e)

    def train_step(self, x: np.ndarray, y: np.ndarray) -> None:
        (c1, b1, a2, bb2, c3, b3, a4, bb4, c5, b5, f6, b6) = self.p.ws
        (gc1, gb1, ga2, gbb2, gc3, gb3, ga4, gbb4, gc5, gb5, gf6, gb6) = self.p.gs
        f = self._forward(x)
        n, get, pm, beta = x.shape[0], self.buf.get, self._per_map, self.beta
        # NLL: ∂L/∂E_k = δ_ky − p_k, p = softmax(−βE); −η/n folded in
        e, m, z, g = f["e"], get("m", 1, n), get("z", 1, n), get("g", 10, n)
        np.min(e, axis=0, keepdims=True, out=m)
        np.subtract(m, e, out=g)
        g *= beta
        np.exp(g, out=g)
        np.sum(g, axis=0, keepdims=True, out=z)
        z *= n / self.lr
        g /= z
        rows = self._rows.get(n)
        if rows is None:
            rows = self._rows[n] = np.arange(n)
        g[y, rows] -= self.lr / n                                # g = −(η/n) ∂L/∂E = (η/n)(p − δ_y)
        # RBF: ∂E/∂x = Σ_k g_k (x − t_k)
        y6, y5 = f["y6"], f["y5"]
        d6, gs, t6 = get("d6", 84, n), get("gs", 1, n), get("t6", 84, n)
        np.sum(g, axis=0, keepdims=True, out=gs)
        np.matmul(self.codes.T, g, out=d6)
        np.multiply(y6, gs, out=t6)
        np.subtract(t6, d6, out=d6)
        self._dsquash(y6, d6, t6)
        np.sum(d6, axis=1, out=gb6)
        np.matmul(d6, y5.T, out=gf6)
        d5 = get("d5", 120, n)
        np.matmul(f6.T, d6, out=d5)
        self._dsquash(y5, d5, get("t5", 120, n))
        np.sum(d5, axis=1, out=gb5.reshape(120))
        np.matmul(d5, f["x5"].T, out=gc5.reshape(120, 400))
        d4 = get("d4", 16, 5, 5, n)
        np.matmul(c5.reshape(120, 400).T, d5, out=d4.reshape(400, n))
        t = get("t4", 16, 5, 5, n)
        self._dsquash(f["y4"], d4, t)                            # S4's squash has no bias
        np.multiply(d4, f["m4"], out=t)
        np.sum(t.reshape(16, -1), axis=1, out=ga4.reshape(16))
        np.sum(d4.reshape(16, -1), axis=1, out=gbb4.reshape(16))
        d4 *= pm(a4) * 0.25                                      # ∂E/∂x = (a/4) ∂E/∂y on each window
        d3 = get("d3", 16, 10, 10, n)
        for i in (0, 1):
            for j in (0, 1):
                d3[:, i::2, j::2] = d4                           # windows do not overlap: assign
        self._dsquash(f["y3"], d3, get("t3", 16, 10, 10, n))
        d3m = d3.reshape(16, -1)
        np.sum(d3m, axis=1, out=gb3.reshape(16))
        np.matmul(d3m, f["col3"].T, out=gc3.reshape(16, 150))
        gc3 *= self.mask
        dcol = get("dcol3", 6, 5, 5, 10, 10, n)
        np.matmul(f["w3"].reshape(16, 150).T, d3m, out=dcol.reshape(150, -1))
        d2 = get("d2", 6, 14, 14, n)
        d2.fill(0)
        for a in range(5):
            for b in range(5):                                   # col2im
                d2[:, a:a + 10, b:b + 10] += dcol[:, a, b]
        t = get("t2", 6, 14, 14, n)
        self._dsquash(f["y2"], d2, t)
        np.multiply(d2, f["m2"], out=t)
        np.sum(t.reshape(6, -1), axis=1, out=ga2.reshape(6))
        np.sum(d2.reshape(6, -1), axis=1, out=gbb2.reshape(6))
        d2 *= pm(a2) * 0.25
        d1 = get("d1", 6, 28, 28, n)
        for i in (0, 1):
            for j in (0, 1):
                d1[:, i::2, j::2] = d2
        self._dsquash(f["y1"], d1, get("t1", 6, 28, 28, n))
        d1m = d1.reshape(6, -1)
        np.sum(d1m, axis=1, out=gb1.reshape(6))
        np.matmul(d1m, f["col1"].T, out=gc1.reshape(6, 25))    # C1 needs no ∂E/∂image
        self.p.w += self.p.g                                     # w ← w − η ∂L/∂w (η folded in)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.argmin(self._forward(x)["e"], axis=0)


def make(model: str, online_ger: bool = False, fold: bool = False, **kw):
    """The reference for `model`; `online_ger` (the `numpy-ger` system): the MLP's batch-1 steps
    update each weight matrix in place with one BLAS ger (scipy.linalg.blas) instead of going
    through a gradient buffer; `fold` (the `numpy-fold` system): with one thread, the MLP's
    forward products add the biases themselves (b copied into the output, then gemm with β = 1,
    which skips the pass OpenBLAS makes to zero C for β = 0), in training and inference."""
    return NumpyMLP(online_ger=online_ger, fold=fold, **kw) if model == "mlp" else NumpyLeNet5(**kw)
