"""Optimizers: each reads and writes only the pool's flat vectors.

Scaling follows the lecture. With the objective Σ_i L_i + λH(W) over P training samples:
- batch gradient descent: W ← W − (η/P) [∂Σ_i L_i/∂W + λ ∂H/∂W];
- on-line (one sample): W ← W − η [∂L_i/∂W + (λ/P) ∂H/∂W];
- a mini-batch of B samples sits between the two: W ← W − η [(1/B) Σ_B ∂L_i/∂W + (λ/P) ∂H/∂W].
So in every case the gradient an optimizer sees in `pool.dx` is the batch mean of ∂L/∂W plus
(λ/P) ∂H/∂W (see `fbprop.train.Machine.gradient`), and `step` applies W ← W − η·dx.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fbprop.blas import add_scaled
from fbprop.params import ParamPool


class Optimizer:
    """An update rule on `pool.x` from `pool.dx` (and `pool.ddx` for second-order rules)."""

    def __init__(self, pool: ParamPool, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: expected a learning rate > 0, got {lr}")
        self.pool, self.lr = pool, float(lr)
        self._tmp = pool.slot()

    def step(self) -> None:
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        self.lr = float(lr)

    def state(self) -> dict[str, np.ndarray]:
        """The optimizer's flat vectors, for checkpoints."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            np.copyto(getattr(self, k), v)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr:g})"


class SGD(Optimizer):
    """W ← W − η dx; with momentum α: v ← α v − η dx, W ← W + v."""

    def __init__(self, pool: ParamPool, lr: float, momentum: float = 0.0) -> None:
        super().__init__(pool, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: expected 0 <= momentum < 1, got {momentum}")
        self.momentum = float(momentum)
        self.v = pool.slot()

    def step(self) -> None:
        p = self.pool
        if self.momentum:
            self.v *= self.momentum
            add_scaled(self.v, p.dx, -self.lr)                   # v ← α v − η dx
            p.x += self.v                                        # W ← W + v
        else:
            add_scaled(p.x, p.dx, -self.lr)                      # W ← W − η dx (one axpy)

    def state(self):
        return {"v": self.v} if self.momentum else {}

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr:g}{f', momentum={self.momentum:g}' if self.momentum else ''})"


class SDLM(Optimizer):
    """Stochastic diagonal Levenberg-Marquardt: W_k ← W_k − η/(μ + h_kk) · dx_k.

    h_kk is a running average of bbprop's Gauss-Newton diagonal, h ← (1 − γ) h + γ ddx, kept by
    `update_hessian` (call it after a bbprop sweep, or estimate h on a few hundred samples
    before each pass as in LeCun et al. 1998). The per-weight rates are recomputed only when
    h changes. μ keeps the step bounded where the curvature is small.
    """

    def __init__(self, pool: ParamPool, lr: float, mu: float = 0.02, gamma: float = 0.01) -> None:
        super().__init__(pool, lr)
        if not mu > 0:
            raise ValueError(f"SDLM: expected mu > 0, got {mu}")
        if not 0 < gamma <= 1:
            raise ValueError(f"SDLM: expected 0 < gamma <= 1, got {gamma}")
        self.mu, self.gamma = float(mu), float(gamma)
        self.h = pool.slot()
        self.rates = pool.slot()
        self._set_rates()

    def update_hessian(self, ddx: np.ndarray | None = None, gamma: float | None = None) -> None:
        """h ← (1 − γ) h + γ ddx (ddx defaults to the pool's); γ = 1 replaces h."""
        g = self.gamma if gamma is None else gamma
        ddx = self.pool.ddx if ddx is None else ddx
        self.h *= 1 - g
        np.multiply(ddx, g, out=self._tmp)
        self.h += self._tmp
        self._set_rates()

    def _set_rates(self) -> None:
        np.add(self.h, self.mu, out=self.rates)
        np.divide(self.lr, self.rates, out=self.rates)           # η_k = η / (μ + h_kk)

    def set_lr(self, lr: float) -> None:
        self.lr = float(lr)
        self._set_rates()

    def step(self) -> None:
        np.multiply(self.rates, self.pool.dx, out=self._tmp)
        self.pool.x -= self._tmp                                 # W_k ← W_k − η_k dx_k

    def state(self):
        return {"h": self.h}

    def load_state(self, state):
        super().load_state(state)
        self._set_rates()

    def __repr__(self) -> str:
        return f"SDLM(lr={self.lr:g}, mu={self.mu:g}, gamma={self.gamma:g})"


def lbfgs(pool: ParamPool, objective: Callable[[], float], max_iter: int = 100, tol: float = 1e-9,
          callback: Callable[[int, float], None] | None = None) -> dict:
    """Minimise `objective` over the pool's parameters with L-BFGS (scipy's L-BFGS-B).

    `objective()` must compute the objective at the current `pool.x` and leave its gradient in
    `pool.dx`. The only copy per evaluation is scipy's trial point into `pool.x`, one contiguous
    memcpy: no gathering of per-module weights. Returns scipy's result as a dict.
    """
    # imported here, not at the top: 0.5 s and 50 MB of start-up for a rarely used optimizer
    from scipy.optimize import minimize

    it = [0]

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        if w is not pool.x:
            np.copyto(pool.x, w, casting="same_kind")
        value = objective()
        return value, pool.dx.astype(np.float64, copy=False)

    def report(intermediate_result) -> None:
        it[0] += 1
        if callback is not None:
            callback(it[0], float(intermediate_result.fun))

    result = minimize(fun, pool.x.astype(np.float64), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "gtol": tol, "ftol": tol}, callback=report)
    np.copyto(pool.x, result.x, casting="same_kind")
    return {"fun": float(result.fun), "nit": int(result.nit), "nfev": int(result.nfev),
            "success": bool(result.success), "message": str(result.message)}
