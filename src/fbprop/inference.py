"""Inference by energy minimisation over a continuous answer Y, with the weights W fixed.

The lecture's inference is Y* = argmin_Y E(W, Y, X). For a discrete Y that is an argmin over the
k energies (`Machine.answers`); for a continuous Y that enters the network as an input state,
the same bprop that trains W gives ∂E/∂Y in the Y state's dx, and bbprop gives a Gauss-Newton
estimate of ∂²E/∂Y² in its ddx, so Y can descend its own energy:

    gradient:  Y ← Y − η ∂E/∂Y
    newton:    Y ← Y − η ∂E/∂Y / (μ + ∂²E/∂Y²)      (SDLM on Y: one rate per component of Y)

Each sample's energy depends on its own Y only, so one sweep with ∂(Σ_i E_i)/∂E_i = 1 gives every
sample's gradient at once.
"""

from __future__ import annotations

import numpy as np

from fbprop.machine import Machine
from fbprop.state import State

METHODS = ("gradient", "newton")


def minimize_energy(machine: Machine, x: np.ndarray, y0: np.ndarray, *, steps: int = 100, lr: float = 0.1,
                    method: str = "gradient", mu: float = 0.01, tol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Y of (locally) least energy E(W, Y, X) for each sample, from the start y0; returns (Y, E(W, Y, X)).

    `machine` must read Y as its network's second input (Machine(network, None, loss, pool) with a
    network "x, y -> energy" of one energy per sample). Stops after `steps` steps, or once no
    component of Y moves by more than `tol`. The parameters and their dx / ddx are left as they were.
    """
    if not machine.y_enters:
        raise ValueError(f"minimize_energy: expected a machine whose network reads Y beside X, got one reading "
                         f"{machine.network.n_inputs} input(s); a discrete answer is argmin over energies "
                         f"(machine.predict)")
    if method not in METHODS:
        raise ValueError(f"minimize_energy: unknown method {method!r}: expected one of {', '.join(METHODS)}")
    if not (steps >= 0 and lr > 0 and mu > 0):
        raise ValueError(f"minimize_energy: expected steps >= 0, lr > 0 and mu > 0, got {steps}, {lr}, {mu}")
    x, y0 = np.asarray(x), np.asarray(y0)
    if len(y0) != len(x) or y0.dtype.kind != "f":
        raise ValueError(f"minimize_energy: expected a float start y0 with one row per sample ({len(x)}), "
                         f"got {y0.dtype} of shape {y0.shape}")
    network, pool = machine.network, machine.pool
    kept = pool.dx.copy(), pool.ddx.copy()
    inp, y, energy = State(x, requires_dx=False), State(y0.copy()), State()
    try:
        for _ in range(steps):
            network.fprop(inp, y, energy)
            if energy.x.shape != (len(x),):
                raise ValueError(f"minimize_energy: expected one energy per sample, shape ({len(x)},), "
                                 f"got {energy.x.shape}")
            energy.dx.fill(1.0)                                  # ∂(Σ_i E_i)/∂E_i
            y.clear_dx()
            network.bprop(inp, y, energy)
            step = y.dx.copy()                                   # ∂E/∂Y
            if method == "newton":
                energy.ddx.fill(0.0)                             # Σ_i E_i is linear in each E_i
                y.clear_ddx()
                network.bbprop(inp, y, energy)
                step /= mu + y.ddx                               # η / (μ + ∂²E/∂Y²), one rate per component
            step *= lr
            y.x -= step
            if tol and np.abs(step).max() <= tol:
                break
        network.fprop(inp, y, energy)
    finally:
        pool.dx[...], pool.ddx[...] = kept
    return y.x, energy.x.copy()
