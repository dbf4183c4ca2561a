"""Optimizers: each reads and writes only the pool's flat vectors.

Scaling follows the lecture. With the objective Σ_i L_i + λH(W) over P training samples:
- batch gradient descent: W ← W − (η/P) [∂Σ_i L_i/∂W + λ ∂H/∂W];
- on-line (one sample): W ← W − η [∂L_i/∂W + (λ/P) ∂H/∂W];
- a mini-batch of B samples sits between the two: W ← W − η [(1/B) Σ_B ∂L_i/∂W + (λ/P) ∂H/∂W].
So in every case the gradient an optimizer sees in `pool.dx` is the batch mean of ∂L/∂W plus
(λ/P) ∂H/∂W (see `fbprop.machine.Machine.gradient`), and `step` applies W ← W − η·dx.

`OPTIMIZERS` is the one table of names the command line, checkpoints and Python share: each entry
says how to build the optimizer, its default learning rate, its options and how it uses the data
(the updater: mini-batches, the full batch, or L-BFGS's own iterations). Adding an optimizer is a
class and a `register_optimizer` call in this file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fbprop.blas import add_scaled, scaled_add_call
from fbprop.module import Plan
from fbprop.params import ParamPool


class Optimizer:
    """An update rule on `pool.x` from `pool.dx` (and `pool.ddx` for second-order rules)."""

    needs_curvature = False                                      # True: wants pool.ddx estimated before each epoch

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
        """Copy saved slots in; a slot this optimizer does not have, or of another length, is refused."""
        mine = self.state()
        for k, v in state.items():
            if k not in mine:
                raise ValueError(f"{self!r}: unknown optimizer slot {k!r} (expected {', '.join(mine) or 'none'})")
            v = np.asarray(v)
            if v.shape != mine[k].shape or v.dtype.kind not in "fiu":
                raise ValueError(f"{self!r}: slot {k!r}: expected a real {mine[k].shape} vector, "
                                 f"got {v.dtype} {v.shape}")
            np.copyto(mine[k], v, casting="same_kind")

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
            dx, plan = p.dx, self._update
            if plan is None or not plan.fits(dx, p.x, dx):       # (a pool that grew: decided again)
                plan = self._update = Plan(dx, p.x, dx, calls=(scaled_add_call(p.x, dx),))
            plan.calls[0](-self.lr)                              # W ← W − η dx (one axpy)

    _update: Plan | None = None                                  # the axpy's call, kept (a copy keeps none)

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

    needs_curvature = True

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


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) on the flat vector, with the bias-corrected moments:

    m ← β₁ m + (1 − β₁) g,  v ← β₂ v + (1 − β₂) g²,  m̂ = m / (1 − β₁ᵗ),  v̂ = v / (1 − β₂ᵗ),
    W ← W − η m̂ / (√v̂ + ε),

    g = dx + c·W, where c = `weight_decay` (an L2 penalty ½c‖W‖² added to the gradient, as in
    torch.optim.Adam; 0 by default — fbprop's own `L2` regularizer already puts (λ/P)·W into dx).
    t counts the steps taken, so a checkpoint keeps it with m and v.
    """

    decoupled = False

    def __init__(self, pool: ParamPool, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(pool, lr)
        name = type(self).__name__
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"{name}: expected betas (β₁, β₂) each in [0, 1), got {tuple(betas)}")
        if not eps > 0:
            raise ValueError(f"{name}: expected eps > 0, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"{name}: expected weight_decay >= 0, got {weight_decay}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.t = 0
        self.m, self.v = pool.slot(), pool.slot()
        self._g = pool.slot() if weight_decay and not self.decoupled else None

    def step(self) -> None:
        p, tmp = self.pool, self._tmp
        (b1, b2), eps = self.betas, self.eps
        self.t += 1
        g = p.dx
        if self.decoupled and self.weight_decay:
            p.x *= 1 - self.lr * self.weight_decay               # W ← (1 − ηc) W, before the Adam step
        elif self._g is not None:
            np.multiply(p.x, self.weight_decay, out=self._g)
            self._g += p.dx                                      # g = dx + c W
            g = self._g
        self.m *= b1
        np.multiply(g, 1 - b1, out=tmp)
        self.m += tmp                                            # m ← β₁ m + (1 − β₁) g
        self.v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        self.v += tmp                                            # v ← β₂ v + (1 − β₂) g²
        np.sqrt(self.v, out=tmp)
        tmp /= np.sqrt(1 - b2**self.t)
        tmp += eps                                               # √v̂ + ε
        np.divide(self.m, tmp, out=tmp)
        tmp *= self.lr / (1 - b1**self.t)                        # η m̂ / (√v̂ + ε)
        p.x -= tmp

    def state(self):
        return {"m": self.m, "v": self.v, "t": np.array(self.t)}

    def load_state(self, state):
        state = dict(state)
        self.t = int(state.pop("t", 0))
        super().load_state(state)

    def __repr__(self) -> str:
        decay = f", weight_decay={self.weight_decay:g}" if self.weight_decay else ""
        return f"{type(self).__name__}(lr={self.lr:g}, betas={self.betas}, eps={self.eps:g}{decay})"


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): W ← (1 − ηc) W, then the
    Adam step on g = dx alone, so the decay is not rescaled by √v̂. c = `weight_decay`, 0.01 by
    default as in torch.optim.AdamW.
    """

    decoupled = True

    def __init__(self, pool: ParamPool, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        super().__init__(pool, lr, betas, eps, weight_decay)


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


class LBFGS(Optimizer):
    """L-BFGS on the full-batch objective: `minimize` runs `max_iter` iterations of `lbfgs`.

    It has no learning rate (its line search chooses each step), so schedules do not apply.
    """

    def __init__(self, pool: ParamPool, max_iter: int = 20) -> None:
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ValueError(f"LBFGS: expected max_iter an int >= 1, got {max_iter!r}")
        self.pool, self.lr, self.max_iter = pool, None, max_iter

    def set_lr(self, lr: float | None) -> None:
        pass

    def step(self) -> None:
        raise TypeError("LBFGS takes no single steps: call minimize(objective)")

    def minimize(self, objective: Callable[[], float]) -> dict:
        return lbfgs(self.pool, objective, max_iter=self.max_iter)

    def __repr__(self) -> str:
        return f"LBFGS(max_iter={self.max_iter})"


@dataclass(frozen=True)
class OptimizerEntry:
    """How a named optimizer is built and used.

    build(pool, lr, **options) makes it (lr is None for optimizers without one); `lr` is the
    default learning rate; `options` maps each option it takes to its default; `updater` is how
    it uses the training data: "minibatch" (on-line when the batch is 1), "full-batch" (the
    lecture's batch gradient descent, one step an epoch) or "lbfgs".
    """

    build: Callable[..., Optimizer]
    lr: float | None
    updater: str = "minibatch"
    options: dict[str, float | int] = field(default_factory=dict)
    help: str = ""


OPTIMIZERS: dict[str, OptimizerEntry] = {}


def register_optimizer(name: str, entry: OptimizerEntry) -> None:
    if entry.updater not in ("minibatch", "full-batch", "lbfgs"):
        raise ValueError(f"register_optimizer({name!r}): unknown updater {entry.updater!r}")
    OPTIMIZERS[name] = entry


def make_optimizer(name: str, pool: ParamPool, lr: float | None = None, **options) -> Optimizer:
    """The optimizer `name` of OPTIMIZERS on `pool`, with its default rate and options where not given."""
    entry = OPTIMIZERS.get(name)
    if entry is None:
        raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        takes = ", ".join(entry.options) or "no options"
        raise ValueError(f"optimizer {name!r}: unknown option {unknown[0]!r} (it takes {takes})")
    return entry.build(pool, entry.lr if lr is None else lr, **{**entry.options, **options})


register_optimizer("sgd", OptimizerEntry(lambda pool, lr: SGD(pool, lr), 0.05,
                                         help="on-line (batch 1) or mini-batch gradient descent"))
register_optimizer("momentum", OptimizerEntry(lambda pool, lr, momentum: SGD(pool, lr, momentum=momentum), 0.01,
                                              options={"momentum": 0.9}, help="SGD with momentum"))
register_optimizer("sdlm", OptimizerEntry(lambda pool, lr, mu: SDLM(pool, lr, mu=mu), 0.001, options={"mu": 0.02},
                                          help="stochastic diagonal Levenberg-Marquardt, η/(μ + h_kk)"))
register_optimizer("adam", OptimizerEntry(
    lambda pool, lr, beta1, beta2, eps, weight_decay: Adam(pool, lr, (beta1, beta2), eps, weight_decay), 1e-3,
    options={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0},
    help="Adam (Kingma & Ba): bias-corrected first and second moments"))
register_optimizer("adamw", OptimizerEntry(
    lambda pool, lr, beta1, beta2, eps, weight_decay: AdamW(pool, lr, (beta1, beta2), eps, weight_decay), 1e-3,
    options={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
    help="AdamW (Loshchilov & Hutter): Adam with decoupled weight decay"))
register_optimizer("batch", OptimizerEntry(lambda pool, lr: SGD(pool, lr), 0.5, updater="full-batch",
                                           help="the lecture's full-batch gradient descent, W ← W − (η/P)·∂/∂W"))
register_optimizer("lbfgs", OptimizerEntry(lambda pool, lr, max_iter: LBFGS(pool, max_iter=max_iter), None,
                                           updater="lbfgs", options={"max_iter": 20},
                                           help="L-BFGS on the full-batch objective, max_iter iterations an epoch"))
