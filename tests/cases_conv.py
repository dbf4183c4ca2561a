"""Gradient-check cases for the convolutional and shape modules: (name, factory) pairs, where
factory(pool) -> (module, [inputs as float64 arrays]), small enough to check by finite differences
in a fraction of a second. The pool must be a float64 ParamPool."""

from __future__ import annotations

import numpy as np

import fbprop as fb
from fbprop.lenet import ImageCascade


def _images(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _batch_last(a: np.ndarray) -> np.ndarray:
    """The same numbers stored batch innermost (see fbprop.State), as a convolution's output is."""
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 0, -1)), -1, 0)


def _last(factory):
    """The case with its inputs batch-last: the modules' batch-last code paths."""
    def made(pool):
        module, inputs = factory(pool)
        return module, [_batch_last(a) for a in inputs]
    return made


def _conv(**kw):
    return lambda pool: (fb.Conv2d(2, 3, 3, pool, **kw), [_images(2, 2, 5, 5)])


def _table(pool):
    table = [(0, 0), (1, 1), (0, 2), (1, 2)]                     # out maps 0, 1 see one map, map 2 both
    return fb.Conv2d(2, 3, 3, pool, table=table), [_images(2, 2, 5, 5)]


def _cascade(pool):
    net = fb.Cascade(
        fb.Conv2d(1, 2, 3, pool),                                # (2, 1, 6, 6) -> (2, 2, 4, 4)
        fb.Tanh((2, 1, 1), pool),
        fb.Subsampling(2, 2, pool),                              # -> (2, 2, 2, 2)
        fb.Flatten(),                                            # -> (2, 8)
        fb.Linear(8, 3, pool),
    )
    return net, [_images(2, 1, 6, 6)]


def _group_norm(channels, groups, shape, seed):
    """γ and β moved off 1 and 0, so their gradients and the input's are not the trivial ones."""
    def factory(pool):
        m = fb.GroupNorm(channels, groups, pool)
        rng = np.random.default_rng(seed)
        m.gamma.x[:] = rng.uniform(0.5, 1.5, channels)
        m.beta.x[:] = rng.standard_normal(channels)
        return m, [_images(*shape, seed=seed)]
    return factory


def _group_norm_net(pool):
    """Conv - GroupNorm - ReLU - Linear: the normalisation between two trainable layers."""
    norm = fb.GroupNorm(4, 2, pool)
    net = fb.Cascade(fb.Conv2d(1, 4, 3, pool), norm, fb.ReLU(), fb.Flatten(), fb.Linear(16, 3, pool))
    norm.beta.x[:] = [0.3, -0.2, 0.1, 0.5]                       # keep ReLU's kinks away from the probes
    return net, [_images(2, 1, 4, 4, seed=7)]


def _image_cascade(pool):
    net = ImageCascade("tiny", 4, "",                           # checks (n, 1, 4, 4), then pads to 6x6
                       fb.Pad(1), fb.Conv2d(1, 2, 3, pool, stride=2), fb.Flatten(), fb.Linear(8, 2, pool))
    return net, [_images(2, 1, 4, 4)]


CASES = [
    ("Conv2d", _conv()),
    ("Conv2d stride 2", _conv(stride=2)),
    ("Conv2d padding 1", _conv(padding=1)),
    ("Conv2d stride 2 padding 1", _conv(stride=2, padding=1)),
    ("Conv2d table", _table),
    ("Subsampling", lambda pool: (fb.Subsampling(2, 2, pool), [_images(2, 2, 4, 6)])),
    ("MaxPool", lambda pool: (fb.MaxPool(2), [_images(2, 2, 4, 4)])),
    ("MaxPool leaving a border", lambda pool: (fb.MaxPool(2), [_images(2, 2, 5, 7)])),
    ("MaxPool overlapping", lambda pool: (fb.MaxPool(3, stride=2), [_images(2, 2, 5, 5)])),
    ("Flatten", lambda pool: (fb.Flatten(), [_images(2, 2, 3, 3)])),
    ("Reshape", lambda pool: (fb.Reshape(2, 3, 3), [_images(2, 18)])),
    ("Pad", lambda pool: (fb.Pad(2), [_images(2, 2, 3, 3)])),
    ("GroupNorm 2 groups of maps", _group_norm(4, 2, (3, 4, 3, 3), 3)),
    ("GroupNorm 1 group (layer norm)", _group_norm(3, 1, (2, 3, 2, 2), 4)),
    ("GroupNorm a group per map", _group_norm(3, 3, (2, 3, 2, 3), 5)),
    ("GroupNorm features", _group_norm(6, 2, (3, 6), 6)),
    ("Cascade conv-groupnorm-relu-flatten-linear", _group_norm_net),
    ("Cascade conv-tanh-subsampling-flatten-linear", _cascade),
    ("ImageCascade pad-conv-flatten-linear", _image_cascade),
    # one window covering the whole image (LeNet-5's C5): the image is the column matrix
    ("Conv2d one window, the whole image", lambda pool: (fb.Conv2d(2, 3, 3, pool), [_images(2, 2, 3, 3)])),
    ("Conv2d one window, padded image", lambda pool: (fb.Conv2d(2, 3, 3, pool, padding=1), [_images(2, 2, 1, 1)])),
    ("Conv2d one window, a batch of one", lambda pool: (fb.Conv2d(2, 3, 3, pool), [_images(1, 2, 3, 3)])),
    ("Conv2d one window, batch-last input", _last(lambda pool: (fb.Conv2d(2, 3, 3, pool), [_images(3, 2, 3, 3)]))),
    # the same modules reading batch-last states (a convolution's output, and what follows it)
    ("Conv2d, batch-last input (col2im straight into dx)", _last(_conv())),
    ("Conv2d stride 2 padding 1, batch-last input", _last(_conv(stride=2, padding=1))),
    ("Conv2d table, batch-last input", _last(_table)),
    ("Subsampling, batch-last input", _last(lambda pool: (fb.Subsampling(2, 2, pool), [_images(2, 2, 4, 6)]))),
    ("Subsampling 1x1, batch-last input", _last(lambda pool: (fb.Subsampling(2, 1, pool), [_images(2, 2, 3, 3)]))),
    ("Subsampling 3x3, batch-last input", _last(lambda pool: (fb.Subsampling(1, 3, pool), [_images(3, 1, 6, 3)]))),
    ("MaxPool leaving a border, batch-last input", _last(lambda pool: (fb.MaxPool(2), [_images(2, 2, 5, 7)]))),
    ("MaxPool overlapping, batch-last input", _last(lambda pool: (fb.MaxPool(3, stride=2), [_images(2, 2, 5, 5)]))),
    ("Pad, batch-last input", _last(lambda pool: (fb.Pad(2), [_images(2, 2, 3, 3)]))),
    ("Flatten, batch-last input", _last(lambda pool: (fb.Flatten(), [_images(2, 2, 3, 3)]))),
    ("ScaledTanh with a bias per map, batch-last input",
     _last(lambda pool: (fb.ScaledTanh((2, 1, 1), pool), [_images(3, 2, 3, 4)]))),
    ("Linear, batch-last input", _last(lambda pool: (fb.Linear(6, 4, pool), [_images(3, 6)]))),
    ("GroupNorm, batch-last input", _last(_group_norm(4, 2, (3, 4, 3, 3), 3))),
    ("Dropout with a fixed mask, batch-last input",
     _last(lambda pool: (fb.Dropout(0.5, mask=np.random.default_rng(2).integers(0, 2, (2, 3, 3)) * 2.0),
                         [_images(3, 2, 3, 3)]))),
]
