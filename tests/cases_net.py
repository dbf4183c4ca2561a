"""Gradient-check cases for networks of modules, the join/split modules and the contrastive loss.

Same shape as cases_core.py: (name, factory), factory(pool) -> (module, [inputs]) on a float64
pool. Inputs are seeded and kept away from kinks (a distance of 0, the contrastive margin).
"""

from __future__ import annotations

import numpy as np

import fbprop as fb


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def _biased(module, rng):
    module.b.x[...] = rng.uniform(-0.5, 0.5, module.b.x.shape)
    return module


def two_inputs_skip_shared(pool, rng=None):
    """Two inputs, a shared-weight branch (g and its twin), a skip connection around a layer, a join."""
    rng = rng or _rng("network")
    g = fb.Cascade(fb.Linear(4, 3, pool), _biased(fb.Tanh(3, pool), rng))
    net = fb.Network(inputs="x1, x2", outputs="out", modules=[
        (g,                                          "x1 -> h1"),
        (g.share(),                                  "x2 -> h2"),     # same weights as g
        (fb.Linear(3, 3, pool),                      "h1 -> a"),
        (_biased(fb.Tanh(3, pool), rng),             "a -> u"),
        (fb.Sum(2),                                  "u, h1 -> v"),   # skip: v = u + h1
        (fb.Concat(2),                               "v, h2 -> c"),
        (fb.Linear(6, 2, pool),                      "c -> out"),
    ])
    return net, [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))]


def network_two_outputs(pool):
    rng = _rng("network-two-outputs")
    net = fb.Network(inputs="pair", outputs="d, s", modules=[
        (fb.Split(2, axis=1, squeeze=True),          "pair -> x1, x2"),
        (fb.Linear(3, 2, pool),                      "x1 -> z1"),
        (fb.Linear(3, 2, pool),                      "x2 -> z2"),
        (fb.Copy(2),                                 "z1 -> z1a, z1b"),
        (fb.SquaredDistance(),                       "z1a, z2 -> d"),
        (fb.Product(),                               "z1b, z2 -> s"),
    ])
    return net, [rng.standard_normal((3, 2, 3))]


def network_nested(pool):
    rng = _rng("network-nested")
    inner, _ = two_inputs_skip_shared(pool, rng)
    net = fb.Network(inputs="x", outputs="e", modules=[
        (fb.Copy(2),                                 "x -> x1, x2"),
        (inner,                                      "x1, x2 -> y"),
        (fb.Scale(0.5),                              "y -> e"),
    ])
    return net, [rng.standard_normal((2, 4))]


def siamese_contrastive(pool):
    """The DrLIM machine's loss network: a shared branch, the distance, the contrastive loss."""
    rng = _rng("siamese")
    g = fb.Cascade(fb.Linear(3, 2, pool), _biased(fb.Tanh(2, pool), rng))
    net = fb.Network(inputs="pair, y", outputs="loss", modules=[
        (fb.Split(2, axis=1, squeeze=True),          "pair -> x1, x2"),
        (g,                                          "x1 -> g1"),
        (g.share(),                                  "x2 -> g2"),
        (fb.Distance(),                              "g1, g2 -> d"),
        (fb.ContrastiveLoss(margin=1.5),             "d, y -> loss"),
    ])
    return net, [rng.standard_normal((4, 2, 3)), np.array([0, 1, 0, 1])]


def unfolded_rnn(pool):
    """An Elman cell unfolded over 3 steps: back-propagation through time through shared weights."""
    from fbprop.recurrent import rnn_cell

    rng = _rng("unfolded")
    cell = rnn_cell(2, 3, 1, pool)
    for m in cell.modules:
        if getattr(m, "b", None) is not None:
            _biased(m, rng)
    return fb.unfold(cell, 3), [*(rng.standard_normal((2, 2)) for _ in range(3)), rng.standard_normal((2, 3))]


def _pair(name, shape=(3, 4)):
    rng = _rng(name)
    return [rng.standard_normal(shape), rng.standard_normal(shape)]


def contrastive(pool):
    # distances on both sides of the margin 1, none at it or at 0
    return fb.ContrastiveLoss(margin=1.0), [np.array([0.3, 1.4, 0.6, 0.4, 2.0]), np.array([0, 0, 1, 1, 1])]


CASES = [
    ("network-two-inputs-skip-shared", two_inputs_skip_shared),
    ("network-two-outputs-split-copy", network_two_outputs),
    ("network-nested", network_nested),
    ("network-siamese-contrastive", siamese_contrastive),
    ("network-unfolded-rnn", unfolded_rnn),
    ("sum-3", lambda pool: (fb.Sum(3), [*_pair("sum"), _rng("sum3").standard_normal((3, 4))])),
    ("product", lambda pool: (fb.Product(), _pair("product"))),
    ("scale", lambda pool: (fb.Scale(-1.5), _pair("scale")[:1])),
    ("copy", lambda pool: (fb.Copy(), _pair("copy")[:1])),
    ("copy-3", lambda pool: (fb.Copy(3), _pair("copy3")[:1])),
    ("concat-axis-1", lambda pool: (fb.Concat(2), [_rng("c").standard_normal((2, 3)),
                                                  _rng("c2").standard_normal((2, 2))])),
    ("concat-axis-2", lambda pool: (fb.Concat(3, axis=2), [_rng(f"c{i}").standard_normal((2, 2, i + 1))
                                                          for i in range(3)])),
    ("split-sizes", lambda pool: (fb.Split((1, 3), axis=1), _pair("split")[:1])),
    ("split-equal-axis-2", lambda pool: (fb.Split(2, axis=2), [_rng("s2").standard_normal((2, 3, 4))])),
    ("split-squeeze", lambda pool: (fb.Split(2, squeeze=True), [_rng("sq").standard_normal((3, 2, 4))])),
    ("squared-distance", lambda pool: (fb.SquaredDistance(), _pair("sqdist"))),
    ("distance", lambda pool: (fb.Distance(), _pair("dist"))),
    ("cosine-similarity", lambda pool: (fb.CosineSimilarity(), _pair("cos"))),
    ("zeros", lambda pool: (fb.Zeros(2, 3), _pair("zeros")[:1])),
    ("loss-contrastive", contrastive),
]
