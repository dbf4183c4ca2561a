"""Every module through finite differences, a registry that no module escapes, and the checker's own teeth."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import numpy as np
import pytest

import fbprop as fb
from cases_conv import CASES as CONV
from cases_core import CASES as CORE
from cases_net import CASES as NET

ALL_CASES = [*CORE, *CONV, *NET]
ABSTRACT = {fb.Module, fb.Squash, fb.Loss}


def test_case_names_are_unique():
    names = [name for name, _ in ALL_CASES]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("factory", [f for _, f in ALL_CASES], ids=[name for name, _ in ALL_CASES])
def test_gradcheck_passes_for_every_parameter(factory):
    pool = fb.ParamPool(np.float64)
    module, inputs = factory(pool)
    report = fb.gradcheck(module, *inputs)
    assert report.ok, str(report)
    # something was checked for every differentiable input and every parameter, in each sweep
    float_inputs = [i for i, x in enumerate(inputs) if x is not None and np.asarray(
        x.x if isinstance(x, fb.State) else x).dtype.kind == "f"]
    names = [f"input {i}" for i in float_inputs] + [f"parameter {j} {p.x.shape}" for j, p in enumerate(module.params())]
    for name in names:
        for quantity in ("bprop to", "bprop accumulation into", "bbprop to", "bbprop accumulation into"):
            assert f"{quantity} {name}" in report.checked, (quantity, name, report.checked)
    # a module's parameters are views into the pool, so the pool holds all of them
    assert sum(p.x.size for p in module.params()) <= pool.size


# --- registry: no module lands without a case ------------------------------------------------

def _concrete_modules() -> set[type]:
    for info in pkgutil.walk_packages(fb.__path__, prefix="fbprop."):
        importlib.import_module(info.name)
    found, todo = set(), [fb.Module]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("fbprop") and sub not in ABSTRACT and not inspect.isabstract(sub):
                found.add(sub)
    return found


def _types_in(module: fb.Module) -> set[type]:
    """The module's type and those of every module nested in it (Cascade and other containers)."""
    types, todo = set(), [module]
    while todo:
        m = todo.pop()
        types.add(type(m))
        todo.extend(getattr(m, "modules", []))
    return types


def test_every_concrete_module_has_a_gradient_case():
    covered = set()
    for _, factory in ALL_CASES:
        module, _ = factory(fb.ParamPool(np.float64))
        covered |= _types_in(module)
    missing = sorted(f"{c.__module__}.{c.__qualname__}" for c in _concrete_modules() - covered)
    assert not missing, f"modules with no case in tests/cases_*.py: {', '.join(missing)}"


def test_registry_finds_the_core_modules_and_skips_abstract_bases():
    found = _concrete_modules()
    for cls in (fb.Linear, fb.Tanh, fb.ScaledTanh, fb.Logistic, fb.ReLU, fb.Bias, fb.Euclidean, fb.RBF,
                fb.NegatedScores, fb.Cascade, *fb.LOSSES.values()):
        assert cls in found
    assert not found & ABSTRACT


def test_every_loss_in_LOSSES_has_a_case():
    covered = set()
    for _, factory in ALL_CASES:
        covered |= _types_in(factory(fb.ParamPool(np.float64))[0])
    assert set(fb.LOSSES.values()) <= covered


# --- the checker catches broken modules ------------------------------------------------------

class ScaledBpropLinear(fb.Linear):
    """bprop to the input 1% too large."""

    def bprop(self, inp, out):
        inp.dx += 1.01 * (out.dx @ self.w.x)
        self.w.dx += out.dx.T @ inp.x

    def __repr__(self):
        return f"ScaledBpropLinear({self.n_in} -> {self.n_out})"


class UntransposedLinear(fb.Linear):
    """∂E/∂W = xᵀ ∂E/∂y instead of (∂E/∂y)ᵀ x: the transpose forgotten (shapes agree only for a square W)."""

    def bprop(self, inp, out):
        inp.dx += out.dx @ self.w.x
        self.w.dx += inp.x.T @ out.dx

    def __repr__(self):
        return f"UntransposedLinear({self.n_in} -> {self.n_out})"


class ScaledBbpropLinear(fb.Linear):
    """bbprop to the weights 1% too large."""

    def bbprop(self, inp, out):
        inp.ddx += out.ddx @ (self.w.x * self.w.x)
        self.w.ddx += 1.01 * (out.ddx.T @ (inp.x * inp.x))

    def __repr__(self):
        return f"ScaledBbpropLinear({self.n_in} -> {self.n_out})"


class OverwritingLinear(fb.Linear):
    """bprop assigns the input's dx instead of adding to it: right once, wrong for fan-out."""

    def bprop(self, inp, out):
        inp.dx[...] = out.dx @ self.w.x
        self.w.dx += out.dx.T @ inp.x

    def __repr__(self):
        return f"OverwritingLinear({self.n_in} -> {self.n_out})"


class OverwritingBbpropLinear(fb.Linear):
    def bbprop(self, inp, out):
        inp.ddx += out.ddx @ (self.w.x * self.w.x)
        self.w.ddx[...] = out.ddx.T @ (inp.x * inp.x)

    def __repr__(self):
        return f"OverwritingBbpropLinear({self.n_in} -> {self.n_out})"


NUMBER = r"-?\d+(\.\d+)?(e[-+]?\d+)?"


def _failure(cls, n_in=4, n_out=3):
    pool = fb.ParamPool(np.float64)
    module = cls(n_in, n_out, pool)
    x = np.random.default_rng(1).standard_normal((3, n_in))
    with pytest.raises(fb.GradcheckError) as info:
        fb.gradcheck(module, x)
    return str(info.value)


@pytest.mark.parametrize("cls, n, quantity", [
    (ScaledBpropLinear, 4, "bprop to input 0"),
    (UntransposedLinear, 3, r"bprop to parameter 0 \(3, 3\)"),
    (ScaledBbpropLinear, 4, r"bbprop to parameter 0 \(3, 4\)"),
])
def test_gradcheck_error_names_module_quantity_index_and_both_values(cls, n, quantity):
    message = _failure(cls, n_in=n)
    name = re.escape(f"{cls.__name__}({n} -> 3)")
    pattern = (rf"{name}: {quantity} differs from finite differences at index \(\d+, \d+\): "
               rf"analytic ({NUMBER}), numeric ({NUMBER})")
    match = re.search(pattern, message)
    assert match, message
    analytic, numeric = float(match.group(1)), float(match.group(4))
    assert analytic != pytest.approx(numeric, rel=1e-4)


def test_gradcheck_reports_the_worst_index_with_its_values():
    pool = fb.ParamPool(np.float64)
    module = ScaledBpropLinear(4, 3, pool)
    x = np.random.default_rng(1).standard_normal((3, 4))
    report = fb.gradcheck(module, x, raise_on_fail=False)       # the checker draws r with seed 0
    assert not report.ok
    [failure] = [f for f in report.failures if "bprop to input 0" in f and "accumulation" not in f]
    i, j, analytic, numeric = re.search(rf"index \((\d+), (\d+)\): analytic ({NUMBER}), numeric ({NUMBER})",
                                        failure).group(1, 2, 3, 6)
    # the exact input gradient for the checker's seed r is r W; the broken one is 1.01 r W
    r = np.random.default_rng(0).standard_normal((3, 3))
    exact = r @ module.w.x
    worst = np.unravel_index(np.argmax(np.abs(0.01 * exact) - 1e-6 * np.abs(exact)), exact.shape)
    assert (int(i), int(j)) == worst
    assert float(analytic) == pytest.approx(1.01 * exact[worst], rel=1e-8)
    assert float(numeric) == pytest.approx(exact[worst], rel=1e-6)
    # the parameter's gradient is right and passes
    assert not any("parameter 0" in f for f in report.failures)


def test_gradcheck_catches_bprop_that_overwrites_instead_of_adding():
    message = _failure(OverwritingLinear)
    assert "OverwritingLinear(4 -> 3): bprop accumulation into input 0 differs" in message
    assert ": 8 checks, 1 failed" in message                     # the single sweep is right


def test_gradcheck_catches_bbprop_that_overwrites_instead_of_adding():
    message = _failure(OverwritingBbpropLinear)
    assert "OverwritingBbpropLinear(4 -> 3): bbprop accumulation into parameter 0 (3, 4) differs" in message
    assert ": 8 checks, 1 failed" in message


def test_gradcheck_passes_the_unbroken_linear():
    pool = fb.ParamPool(np.float64)
    report = fb.gradcheck(fb.Linear(4, 3, pool), np.random.default_rng(0).standard_normal((3, 4)))
    assert report.ok and len(report.checked) == 8


def test_gradcheck_rejects_float32_parameters():
    module = fb.Linear(4, 3, fb.ParamPool())
    with pytest.raises(ValueError, match=r"Linear\(4 -> 3\): expected float64 parameters, got float32"):
        fb.gradcheck(module, np.zeros((2, 4)))


def test_gradcheck_with_samples_still_catches_a_wrong_bprop():
    pool = fb.ParamPool(np.float64)
    x = np.random.default_rng(1).standard_normal((3, 4))
    with pytest.raises(fb.GradcheckError, match=r"ScaledBpropLinear\(4 -> 3\): bprop to input 0 differs"):
        fb.gradcheck(ScaledBpropLinear(4, 3, pool), x, samples=6)


def test_gradcheck_with_samples_passes_a_correct_cascade():
    # samples= only limits which entries are differenced; a correct chain must still pass
    module, inputs = dict(CORE)["cascade-lecture-2layer"](fb.ParamPool(np.float64))
    report = fb.gradcheck(module, *inputs, samples=5, raise_on_fail=False)
    assert report.ok, str(report)
