"""Finite-difference checks of a module's bprop and bbprop."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fbprop.module import Cascade, Module
from fbprop.network import Network
from fbprop.state import State


class GradcheckError(AssertionError):
    """A module's bprop or bbprop disagrees with finite differences."""


@dataclass
class GradcheckReport:
    module: str
    checked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = f"gradcheck {self.module}: {len(self.checked)} checks, {len(self.failures)} failed"
        return "\n".join([head, *self.failures])


def _compare(report: GradcheckReport, what: str, analytic: np.ndarray, numeric: np.ndarray,
             rtol: float, atol: float, at: tuple[np.ndarray, ...] | None = None) -> None:
    """Record a failure when |analytic − numeric| > atol + rtol |numeric| at any entry (of `at`)."""
    report.checked.append(what)
    at = at if at is not None else np.nonzero(np.ones(analytic.shape, dtype=bool))
    a, n = analytic[at], numeric[at]
    excess = np.abs(a - n) - (atol + rtol * np.abs(n))
    if excess.size and excess.max() > 0:
        j = int(np.argmax(excess))
        index = tuple(int(c[j]) for c in at)
        report.failures.append(f"{report.module}: {what} differs from finite differences at index "
                               f"{index}: analytic {a[j]:.10g}, numeric {n[j]:.10g}")


def _run(module: Module, states: list[State]) -> np.ndarray:
    """F(states): the module's outputs, flattened and joined into one vector."""
    outs = [State() for _ in range(module.n_outputs)]
    module.fprop(*states, *outs)
    return np.concatenate([o.x.ravel() for o in outs]).astype(np.float64)


def _wiggle(module: Module, states: list[State], t: State, i: tuple, h: float) -> tuple[np.ndarray, np.ndarray]:
    """F with t_i moved by +h and by −h (t is restored)."""
    v = t.x[i]
    try:
        t.x[i] = v + h
        up = _run(module, states)
        t.x[i] = v - h
        return up, _run(module, states)
    finally:
        t.x[i] = v


def _jacobian(module: Module, states: list[State], t: State, eps: float) -> np.ndarray:
    """∂F/∂t by central differences: an array of shape (size of F,) + t.shape."""
    jac = np.empty(_run(module, states).shape + t.x.shape)
    for i in np.ndindex(t.x.shape):
        up, down = _wiggle(module, states, t, i, eps)
        jac[(...,) + i] = (up - down) / (2 * eps)
    return jac


def _curvature(module: Module, states: list[State], t: State, r: np.ndarray, eps2: float,
               coords: list[tuple] | None = None) -> np.ndarray:
    """Σ_p r_p ∂²F_p/∂t_i² by second differences, for every entry i of t (or those in coords)."""
    f0 = _run(module, states)
    curv = np.zeros(t.x.shape)
    for i in coords if coords is not None else np.ndindex(t.x.shape):
        up, down = _wiggle(module, states, t, i, eps2)
        curv[i] = np.sum(r * (up - 2 * f0 + down)) / eps2**2
    return curv


def _is_graph(module: Module) -> bool:
    return isinstance(module, (Cascade, Network))


def _gauss_newton(module: Module, inputs: list[State], q: np.ndarray, r: np.ndarray, eps: float, eps2: float,
                  into: dict[int, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The numeric Gauss-Newton diagonal a network of modules should propagate, module by module.

    q and r are flat over the module's outputs (as `_run` joins them). For each module, from the
    last to the first: q_in = (J∘J)ᵀ q_out for each input and (J_w∘J_w)ᵀ q_out for each parameter
    (added into `into`, keyed by id); off-diagonal terms are dropped between modules, as bbprop
    does, and a state read by several modules gets the sum. The gradient r_in = Jᵀ r_out is
    carried along for modules whose own curvature is kept; their curvature term is weighted by
    r where r ≥ 0, the negative part dropped as their bbprop drops it. Returns (q, r) for each input.
    """
    if isinstance(module, Cascade):
        stages = [State(inputs[0].x.copy())]
        for m in module.modules[:-1]:
            out = State()
            m.fprop(stages[-1], out)
            stages.append(State(out.x.copy()))
        for m, s in zip(reversed(module.modules), reversed(stages)):
            [(q, r)] = _gauss_newton(m, [s], q.ravel(), r.ravel(), eps, eps2, into)
        return [(q, r)]
    if isinstance(module, Network):
        values = {name: State(s.x.copy()) for name, s in zip(module.input_names, inputs)}
        for node, outs in module.trace(*[State(s.x.copy()) for s in inputs],
                                       *[State() for _ in module.output_names]):
            values.update({name: State(s.x.copy()) for name, s in zip(node.writes, outs)})
        qs = {name: np.zeros(s.x.shape) for name, s in values.items()}
        rs = {name: np.zeros(s.x.shape) for name, s in values.items()}
        start = 0
        for name in module.output_names:
            size = values[name].x.size
            qs[name] += q[start:start + size].reshape(values[name].x.shape)
            rs[name] += r[start:start + size].reshape(values[name].x.shape)
            start += size
        for node in reversed(module.nodes):
            q_out = np.concatenate([qs[n].ravel() for n in node.writes])
            r_out = np.concatenate([rs[n].ravel() for n in node.writes])
            ins = [State(values[n].x.copy()) for n in node.reads]
            for name, (q_in, r_in) in zip(node.reads, _gauss_newton(node.module, ins, q_out, r_out, eps, eps2, into)):
                qs[name] += q_in
                rs[name] += r_in
        return [(qs[name], rs[name]) for name in module.input_names]
    r_kept = np.maximum(r, 0)
    for p in module.params():
        jac = _jacobian(module, inputs, p, eps)
        gn = np.tensordot(q, jac * jac, axes=1)
        if module.curvature:
            gn += _curvature(module, inputs, p, r_kept, eps2)
        into[id(p)] = into.get(id(p), 0) + gn
    found = []
    for s in inputs:
        if s.x.dtype.kind != "f":                                # labels: no derivative
            found.append((np.zeros(s.x.shape), np.zeros(s.x.shape)))
            continue
        jac = _jacobian(module, inputs, s, eps)
        q_in = np.tensordot(q, jac * jac, axes=1)
        if module.curvature:
            q_in += _curvature(module, inputs, s, r_kept, eps2)
        found.append((q_in, np.tensordot(r, jac, axes=1)))
    return found


def _has_curvature(module: Module) -> bool:
    return module.curvature or any(_has_curvature(m) for m in getattr(module, "modules", ()))


def gradcheck(module: Module, *inputs: np.ndarray | State, eps: float = 1e-6, eps2: float = 1e-4,
              rtol: float = 1e-6, atol: float = 1e-8, seed: int = 0, samples: int | None = None,
              raise_on_fail: bool = True) -> GradcheckReport:
    """Check `module`'s bprop and bbprop against finite differences of its fprop, in float64.

    `inputs` are the module's inputs (its output state is made here); integer arrays (labels)
    are passed along but not differentiated. For the input and every parameter it checks:
    - bprop: ∂/∂t ⟨r, F⟩ for a random output gradient r, i.e. Jᵀ r;
    - bbprop: the Gauss-Newton diagonal (J∘J)ᵀ q for a random q ≥ 0, plus, for modules whose
      own curvature is kept (`module.curvature`), Σ_p r_p ∂²F_p/∂t² (with r ≥ 0);
    - accumulation: a second bprop / bbprop without clearing doubles the result.
    `samples` limits the finite differences to that many random entries of each input and
    parameter (for large layers); the analytic values are compared at those entries only.
    Returns a report; raises GradcheckError naming module, quantity, worst index, analytic and
    numeric values when anything disagrees (unless raise_on_fail is False).
    """
    rng = np.random.default_rng(seed)
    states = [s if isinstance(s, State) else State(np.array(s)) for s in inputs]
    params = module.params()
    for p in params:
        if p.x.dtype != np.float64:
            raise ValueError(f"gradcheck {module!r}: expected float64 parameters, got {p.x.dtype} "
                             f"(build the pool with ParamPool(np.float64))")
    targets = [(f"input {i}", s) for i, s in enumerate(states) if s.x.dtype.kind == "f"]
    for s in (s for _, s in targets):
        if s.x.dtype != np.float64:
            raise ValueError(f"gradcheck {module!r}: expected float64 inputs, got {s.x.dtype}")
    targets += [(f"parameter {j} {p.x.shape}", p) for j, p in enumerate(params)]

    outs = [State() for _ in range(module.n_outputs)]

    def forward() -> np.ndarray:
        module.fprop(*states, *outs)
        return np.concatenate([o.x.ravel() for o in outs])

    def seed(slot: str, flat: np.ndarray) -> None:
        start = 0
        for o in outs:
            setattr(o, slot, flat[start:start + o.x.size].reshape(o.x.shape))
            start += o.x.size

    f0 = forward()
    report = GradcheckReport(repr(module))
    r = rng.standard_normal(f0.shape)
    q = rng.uniform(0.5, 1.5, f0.shape)
    r_pos = rng.uniform(0.5, 1.5, f0.shape)

    numeric, picked = {}, {}
    for name, t in targets:
        coords = list(np.ndindex(t.x.shape))
        if samples is not None and len(coords) > samples:
            coords = [coords[j] for j in rng.choice(len(coords), size=samples, replace=False)]
        picked[name] = tuple(np.array(coords, dtype=np.intp).reshape(len(coords), t.x.ndim).T)
        grad, gn = np.zeros(t.x.shape), np.zeros(t.x.shape)
        for i in coords:
            up, down = _wiggle(module, states, t, i, eps)
            col = (up - down) / (2 * eps)                        # ∂F/∂t_i
            grad[i], gn[i] = np.sum(r * col), np.sum(q * col * col)
        if module.curvature:
            gn += _curvature(module, states, t, r_pos, eps2, coords)   # + Σ_p r_p ∂²F_p/∂t_i²
        numeric[name] = (grad, gn)
    if _is_graph(module):
        # a network's bbprop composes its modules' diagonal approximations
        into: dict[int, np.ndarray] = {}
        found = _gauss_newton(module, [State(s.x.copy()) for s in states], q, r_pos, eps, eps2, into)
        for name, t in targets:
            ddx = next((d for s, (d, _) in zip(states, found) if s is t), None)
            numeric[name] = (numeric[name][0], ddx if ddx is not None else into[id(t)])
    forward()

    def sweep(method, slot: str, seed_dx: np.ndarray, seed_ddx: np.ndarray, times: int) -> list[np.ndarray]:
        seed("dx", seed_dx)
        seed("ddx", seed_ddx)
        if method == module.bbprop:
            module.bprop(*states, *outs)                         # bbprop reads the dx bprop leaves
        for _, t in targets:
            if slot == "dx":
                t.clear_dx()                                     # (an input's, lazily: the first term is written)
            else:
                getattr(t, slot).fill(0)
        for _ in range(times):
            method(*states, *outs)
        return [getattr(t, slot).copy() for _, t in targets]

    once = sweep(module.bprop, "dx", r, q, 1)
    twice = sweep(module.bprop, "dx", r, q, 2)
    for (name, _), a, a2 in zip(targets, once, twice):
        _compare(report, f"bprop to {name}", a, numeric[name][0], rtol, atol, picked[name])
        _compare(report, f"bprop accumulation into {name}", a2, 2 * a, 1e-12, 1e-14)
    once = sweep(module.bbprop, "ddx", r_pos, q, 1)
    twice = sweep(module.bbprop, "ddx", r_pos, q, 2)
    tol = (1e-5, 1e-6) if _has_curvature(module) else (rtol, atol)
    for (name, _), a, a2 in zip(targets, once, twice):
        _compare(report, f"bbprop to {name}", a, numeric[name][1], *tol, picked[name])
        _compare(report, f"bbprop accumulation into {name}", a2, 2 * a, 1e-12, 1e-14)
        if a.size and a.min() < 0:
            report.failures.append(f"{report.module}: bbprop to {name} is negative ({a.min():.3g}); "
                                   f"a Gauss-Newton diagonal must be >= 0")
    if raise_on_fail and not report.ok:
        raise GradcheckError(str(report))
    return report
