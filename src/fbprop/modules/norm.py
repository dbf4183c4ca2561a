"""Group normalisation (Wu and He, "Group Normalization", ECCV 2018).

Each sample's channels are split into `groups` groups of C/G maps; the m values of one group of
one sample are brought to mean 0 and variance 1, x̂ = (x − μ)·s with s = 1/√(σ² + ε), and each
channel c gets its own gain and offset, y = γ_c x̂ + β_c. The statistics are the sample's own, so
the module computes the same function in training and in inference and keeps no running state:
a checkpoint, a data-parallel run or a saved net needs nothing beyond the parameter vector.
groups = 1 normalises the whole sample (layer normalisation), groups = C each map on its own.

Within a group every output depends on every input, ∂y_j/∂x_i = γ_j s (δ_ij − (1 + x̂_i x̂_j)/m),
so bprop is  ∂E/∂x_i = s (g_i − mean(g) − x̂_i mean(g x̂))  with g = γ ∂E/∂y, and bbprop's
Gauss-Newton diagonal Σ_j (∂y_j/∂x_i)² ∂²E/∂y_j² expands, with h = γ² ∂²E/∂y² and
H_k = Σ_j h_j x̂_j^k over the group, to
    s² [h_i (1 − 2(1 + x̂_i²)/m) + (H_0 + 2 x̂_i H_1 + x̂_i² H_2)/m²],
exact and non-negative (a sum of squares), in O(m) per group.
"""

from __future__ import annotations

import numpy as np

from fbprop.module import Module
from fbprop.modules.squash import add_sum_to
from fbprop.params import ParamPool
from fbprop.state import State


class GroupNorm(Module):
    """y = γ_c (x − μ_g) / √(σ_g² + ε) + β_c over each sample's groups of channels.

    Input (n, C, ...) — maps (n, C, h, w) after a convolution, or features (n, C); γ starts at 1,
    β at 0, one of each per channel.
    """

    def __init__(self, channels: int, groups: int, pool: ParamPool, eps: float = 1e-5) -> None:
        if isinstance(channels, bool) or int(channels) != channels or channels < 1:
            raise ValueError(f"GroupNorm: expected channels >= 1, got {channels!r}")
        if isinstance(groups, bool) or int(groups) != groups or groups < 1 or channels % groups:
            raise ValueError(f"GroupNorm: expected a number of groups that divides {channels} channels, got {groups!r}")
        if not eps > 0:
            raise ValueError(f"GroupNorm: expected eps > 0, got {eps!r}")
        self.channels, self.groups, self.eps = int(channels), int(groups), float(eps)
        self.gamma = pool.alloc(self.channels, value=1.0)
        self.beta = pool.alloc(self.channels, value=0.0)
        self._xhat, self._s, self._g, self._sum, self._total = State(), State(), State(), State(), State()

    def init_args(self) -> dict:
        """For fbprop.serialize (the pool is passed separately)."""
        return {"channels": self.channels, "groups": self.groups, "eps": self.eps}

    def _views(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """a as (n, G, m) and as (n, C, r)."""
        n = a.shape[0]
        return a.reshape(n, self.groups, -1), a.reshape(n, self.channels, -1)

    def fprop(self, inp: State, out: State) -> None:
        x = inp.x
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"{self!r}: expected input of shape (n, {self.channels}, ...), got {x.shape}")
        out.resize(*x.shape, dtype=x.dtype)
        xhat = self._xhat.resize(*x.shape, dtype=x.dtype).x
        s = self._s.resize(x.shape[0], self.groups, 1, dtype=x.dtype).x
        xg, _ = self._views(x)
        hg, hc = self._views(xhat)
        np.mean(xg, axis=2, keepdims=True, out=s)
        np.subtract(xg, s, out=hg)                               # x − μ
        np.multiply(hg, hg, out=self._views(out.x)[0])
        np.mean(self._views(out.x)[0], axis=2, keepdims=True, out=s)   # σ² (biased, as the paper)
        s += self.eps
        np.sqrt(s, out=s)
        np.divide(1.0, s, out=s)                                 # s = 1/√(σ² + ε)
        hg *= s
        _, yc = self._views(out.x)
        np.multiply(hc, self.gamma.x[:, None], out=yc)
        yc += self.beta.x[:, None]

    def _param_sums(self, d: np.ndarray, xhat_power: np.ndarray, slot: str) -> None:
        """γ's `slot` += Σ_{n, r} d·x̂^k (x̂^k given), β's `slot` += Σ_{n, r} d, summed like a bias."""
        _, dc = self._views(d)
        _, bc = self._views(self._g.resize(*d.shape, dtype=d.dtype).x)
        np.multiply(dc, self._views(xhat_power)[1], out=bc)
        for param, a in ((self.gamma, bc), (self.beta, dc)):
            target, zero = param.sum_target(slot)
            add_sum_to(target.reshape(-1, 1), a, self._total, zero=zero)     # (C, 1) against (n, C, r)

    def bprop(self, inp: State, out: State) -> None:
        xhat = self._xhat.x
        self._param_sums(out.dx, xhat, "dx")
        if not inp.requires_dx:
            return
        g = self._g.x                                            # g = γ ∂E/∂y
        gg, gc = self._views(g)
        np.multiply(self._views(out.dx)[1], self.gamma.x[:, None], out=gc)
        hg, _ = self._views(xhat)
        s = self._s.x
        mean_g = gg.mean(axis=2, keepdims=True)
        mean_gx = np.einsum("ngm,ngm->ng", gg, hg)[..., None] / gg.shape[2]
        gg -= mean_g
        gg -= hg * mean_gx
        gg *= s
        inp.dx += g

    def bbprop(self, inp: State, out: State) -> None:
        xhat = self._xhat.x
        sq = self._sum.resize(*xhat.shape, dtype=xhat.dtype).x
        np.multiply(xhat, xhat, out=sq)                          # x̂²
        self._param_sums(out.ddx, sq, "ddx")
        if not inp.requires_dx:
            return
        h = self._g.x                                            # h = γ² ∂²E/∂y²
        hg, hc = self._views(h)
        np.multiply(self._views(out.ddx)[1], (self.gamma.x * self.gamma.x)[:, None], out=hc)
        xg, _ = self._views(xhat)
        sqg, _ = self._views(sq)
        m = hg.shape[2]
        h0 = hg.sum(axis=2, keepdims=True)
        h1 = np.einsum("ngm,ngm->ng", hg, xg)[..., None]
        h2 = np.einsum("ngm,ngm->ng", hg, sqg)[..., None]
        s2 = self._s.x * self._s.x
        # s² [h (1 − 2(1 + x̂²)/m) + (H0 + 2 x̂ H1 + x̂² H2)/m²]
        term = (1.0 - 2.0 / m) - (2.0 / m) * sqg
        hg *= term
        hg += (h0 + 2.0 * xg * h1 + sqg * h2) / (m * m)
        hg *= s2
        inp.ddx += h

    def __repr__(self) -> str:
        return f"GroupNorm({self.channels}, groups={self.groups})"
