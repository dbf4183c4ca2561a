"""Gradient-check cases for every core module and loss.

`CASES` is a list of (name, factory); `factory(pool)` takes a float64 ParamPool and returns
(module, [inputs]) ready for `fbprop.gradcheck(module, *inputs)`. Inputs are small, seeded and
chosen away from kinks (ReLU at 0, hinge margins, the most offending answer's ties, LVQ2's
saturation) so central differences are exact to the checker's tolerance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import fbprop as fb

Factory = Callable[[fb.ParamPool], tuple[fb.Module, list]]


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def _set_bias(module: fb.Squash, rng: np.random.Generator) -> None:
    """Biases start at 0; give them values so the check exercises x + b, not just x."""
    module.b.x[...] = rng.uniform(-0.5, 0.5, module.b.x.shape)


def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...], gap: float = 0.1) -> np.ndarray:
    """Uniform in ±[gap, 1.5]: no component near a ReLU kink."""
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(gap, 1.5, size=shape)


# --- modules ---------------------------------------------------------------------------------

def linear(pool):
    rng = _rng("linear")
    return fb.Linear(4, 3, pool), [rng.standard_normal((3, 4))]


def _squash(cls, with_bias: bool, name: str):
    def factory(pool):
        rng = _rng(name)
        m = cls(5, pool) if with_bias else cls()
        if with_bias:
            _set_bias(m, rng)
        return m, [rng.standard_normal((4, 5))]
    return factory


def relu(pool):
    rng = _rng("relu")
    return fb.ReLU(), [_away_from_zero(rng, (4, 5))]


def relu_bias(pool):
    rng = _rng("relu-bias")
    m = fb.ReLU(5, pool)
    m.b.x[...] = [0.3, -0.2, 0.1, -0.4, 0.0]
    u = _away_from_zero(rng, (4, 5))                 # x + b = u stays clear of 0
    return m, [u - m.b.x]


def bias_1d(pool):
    rng = _rng("bias-1d")
    m = fb.Bias(5, pool)
    _set_bias(m, rng)
    return m, [rng.standard_normal((3, 5))]


def bias_per_map(pool):
    rng = _rng("bias-per-map")
    m = fb.Bias((2, 1, 1), pool)                     # one bias per feature map
    _set_bias(m, rng)
    return m, [rng.standard_normal((3, 2, 3, 3))]


def tanh_per_map(pool):
    rng = _rng("tanh-per-map")
    m = fb.Tanh((2, 1, 1), pool)
    _set_bias(m, rng)
    return m, [rng.standard_normal((3, 2, 3, 3))]


def euclidean(pool):
    rng = _rng("euclidean")
    return fb.Euclidean(), [rng.standard_normal((4, 3)), rng.standard_normal((4, 3))]


def euclidean_maps(pool):
    rng = _rng("euclidean-maps")
    return fb.Euclidean(), [rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))]


def rbf_fixed(pool):
    rng = _rng("rbf-fixed")
    return fb.RBF(fb.random_codes(4, 5, seed=1)), [rng.standard_normal((3, 5))]


def rbf_fixed_in_pool(pool):
    rng = _rng("rbf-fixed-in-pool")
    return fb.RBF(fb.onehot_codes(4), pool), [rng.standard_normal((3, 4))]


def rbf_trainable(pool):
    rng = _rng("rbf-trainable")
    return fb.RBF(rng.standard_normal((4, 5)), pool, trainable=True), [rng.standard_normal((3, 5))]


def negated_scores(pool):
    rng = _rng("negated-scores")
    return fb.NegatedScores(), [rng.standard_normal((4, 3))]


def lecture_2layer(pool):
    """The lecture's nn-2layer: two nn-layers, each a Linear then a Tanh with biases."""
    rng = _rng("lecture-2layer")
    net = fb.Cascade(fb.Linear(5, 4, pool), fb.Tanh(4, pool), fb.Linear(4, 3, pool), fb.Tanh(3, pool))
    _set_bias(net[1], rng)
    _set_bias(net[3], rng)
    return net, [rng.standard_normal((4, 5))]


def shared_linear(pool):
    """One Linear used twice: both uses add their gradients into the same slice of the pool."""
    rng = _rng("shared-linear")
    lin = fb.Linear(4, 4, pool)
    return fb.Cascade(lin, fb.Tanh(4, pool), lin, fb.ScaledTanh()), [rng.standard_normal((3, 4))]


def cascade_rbf(pool):
    """A classifier ending in RBF energies, as LeNet-5's output layer: the chain's bbprop carries the
    RBF's own curvature (it is a convex cost) back through the layers below it."""
    rng = _rng("cascade-rbf")
    net = fb.Cascade(fb.Linear(4, 3, pool), fb.Tanh(3, pool), fb.RBF(fb.onehot_codes(3), pool, trainable=True))
    _set_bias(net[1], rng)
    return net, [rng.standard_normal((3, 4))]


def dropout_fixed_mask(pool):
    """A batch mask of 0 and 1/(1 − p): the function the check probes is x ↦ m ∘ x."""
    rng = _rng("dropout")
    m = fb.Dropout(0.5)
    m.fix_mask(2.0 * (rng.random((4, 5)) < 0.5))
    return m, [rng.standard_normal((4, 5))]


def dropout_inference(pool):
    """No generator and no fixed mask: the identity (inference)."""
    return fb.Dropout(0.3), [_rng("dropout-inference").standard_normal((3, 4))]


def dropout_in_a_net(pool):
    """One sample's mask broadcast over the batch, between two trainable layers."""
    rng = _rng("dropout-net")
    drop = fb.Dropout(0.25)
    drop.fix_mask(np.where(rng.random(6) < 0.25, 0.0, 4 / 3))
    net = fb.Cascade(fb.Linear(4, 6, pool), fb.Tanh(6, pool), drop, fb.Linear(6, 3, pool))
    return net, [rng.standard_normal((3, 4))]


MODULE_CASES: list[tuple[str, Factory]] = [
    ("linear", linear),
    ("tanh", _squash(fb.Tanh, False, "tanh")),
    ("tanh-bias", _squash(fb.Tanh, True, "tanh-bias")),
    ("tanh-per-map", tanh_per_map),
    ("scaled-tanh", _squash(fb.ScaledTanh, False, "scaled-tanh")),
    ("scaled-tanh-bias", _squash(fb.ScaledTanh, True, "scaled-tanh-bias")),
    ("logistic", _squash(fb.Logistic, False, "logistic")),
    ("logistic-bias", _squash(fb.Logistic, True, "logistic-bias")),
    ("relu", relu),
    ("relu-bias", relu_bias),
    ("bias-1d", bias_1d),
    ("bias-per-map", bias_per_map),
    ("euclidean", euclidean),
    ("euclidean-maps", euclidean_maps),
    ("rbf-fixed", rbf_fixed),
    ("rbf-fixed-in-pool", rbf_fixed_in_pool),
    ("rbf-trainable", rbf_trainable),
    ("negated-scores", negated_scores),
    ("cascade-lecture-2layer", lecture_2layer),
    ("cascade-shared-linear", shared_linear),
    ("cascade-rbf", cascade_rbf),
    ("dropout-fixed-mask", dropout_fixed_mask),
    ("dropout-inference", dropout_inference),
    ("dropout-in-a-net", dropout_in_a_net),
]


# --- losses ----------------------------------------------------------------------------------

def _energies(name: str, n: int, k: int, ok: Callable[[np.ndarray, np.ndarray], bool],
              low: float = -2.0, high: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Energies (n, k) and labels (n,), drawn until every row's energies are at least 0.05 apart
    (a unique minimum and a unique most offending answer) and `ok(e, y)` holds."""
    rng = _rng(name)
    for _ in range(10_000):
        e = rng.uniform(low, high, (n, k))
        y = rng.integers(0, k, n)
        s = np.sort(e, axis=1)
        if np.diff(s, axis=1).min() > 0.05 and ok(e, y):
            return e, y
    raise RuntimeError(f"no energies for {name}")


def _ey_ebar(e: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(y))
    masked = e.copy()
    masked[rows, y] = np.inf
    return e[rows, y], masked.min(axis=1)


def _both_sides(u: np.ndarray, kink: float = 0.0, gap: float = 0.1) -> bool:
    """u clear of the kink, with samples on both sides (both branches checked)."""
    return bool(np.all(np.abs(u - kink) > gap) and (u > kink).any() and (u < kink).any())


def _hinge_ok(margin):
    def ok(e, y):
        ey, eb = _ey_ebar(e, y)
        return _both_sides(margin + ey - eb)
    return ok


def _square_square_ok(margin):
    def ok(e, y):
        _, eb = _ey_ebar(e, y)
        return _both_sides(margin - eb)
    return ok


def _lvq2_ok(saturation, delta):
    def ok(e, y):
        ey, eb = _ey_ebar(e, y)
        u = (ey - eb) / (delta * eb)
        inside = (u > 0.1) & (u < saturation - 0.1)
        return bool(np.all((u < -0.1) | inside | (u > saturation + 0.1)) and inside.sum() >= 2
                    and (u < 0).any())
    return ok


def _perceptron_ok(e, y):
    return bool((np.argmin(e, axis=1) != y).any() and (np.argmin(e, axis=1) == y).any())


def _any(e, y):
    return True


def _loss_case(loss: Callable[[], fb.Loss], name: str, ok=_any, n: int = 5, k: int = 4, **ranges) -> Factory:
    def factory(pool):
        e, y = _energies(name, n, k, ok, **ranges)
        return loss(), [e, y]
    return factory


LOSS_CASES: list[tuple[str, Factory]] = [
    ("loss-energy", _loss_case(fb.EnergyLoss, "loss-energy")),
    ("loss-perceptron", _loss_case(fb.PerceptronLoss, "loss-perceptron", _perceptron_ok)),
    ("loss-hinge", _loss_case(lambda: fb.HingeLoss(margin=0.5), "loss-hinge", _hinge_ok(0.5))),
    ("loss-nll", _loss_case(lambda: fb.NLLLoss(beta=1.0), "loss-nll")),
    ("loss-nll-beta3", _loss_case(lambda: fb.NLLLoss(beta=3.0), "loss-nll-beta3")),
    ("loss-log", _loss_case(fb.LogLoss, "loss-log")),
    ("loss-square-square", _loss_case(lambda: fb.SquareSquareLoss(margin=1.0), "loss-square-square",
                                      _square_square_ok(1.0), low=-0.5, high=2.5)),
    ("loss-square-exp", _loss_case(lambda: fb.SquareExpLoss(gamma=0.7), "loss-square-exp")),
    ("loss-mce", _loss_case(fb.MCELoss, "loss-mce")),
    ("loss-lvq2", _loss_case(lambda: fb.LVQ2Loss(saturation=0.6, delta=1.5), "loss-lvq2", _lvq2_ok(0.6, 1.5),
                             n=6, low=0.5, high=3.0)),
]


def energy_loss_regression(pool):
    """EnergyLoss on one energy per sample (n,), as after a Euclidean regression energy."""
    rng = _rng("loss-energy-regression")
    return fb.EnergyLoss(), [rng.uniform(0.1, 2.0, 4), None]


CASES: list[tuple[str, Factory]] = [
    *MODULE_CASES,
    *LOSS_CASES,
    ("loss-energy-regression", energy_loss_regression),
]

