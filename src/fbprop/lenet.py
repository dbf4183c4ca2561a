"""LeNet-5 (LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 1998) and a modern ReLU/max-pooling counterpart, built from fbprop modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fbprop.models import MIRROR, ModelEntry, register_model
from fbprop.module import Cascade, Module
from fbprop.modules.conv import LENET5_C3_TABLE, Conv2d, MaxPool, Subsampling
from fbprop.modules.distance import RBF, NegatedScores, random_codes
from fbprop.modules.dropout import Dropout
from fbprop.modules.linear import Linear
from fbprop.modules.norm import GroupNorm
from fbprop.modules.shape import Flatten, Pad
from fbprop.modules.squash import Bias, ReLU, ScaledTanh
from fbprop.params import ParamPool
from fbprop.state import State

_GLYPHS = {
    0: "..###.. .#...#. #.....# #.....# #.....# #.....# #.....# #.....# #.....# #.....# .#...#. ..###..",
    1: "...#... ..##... .#.#... ...#... ...#... ...#... ...#... ...#... ...#... ...#... ...#... .#####.",
    2: "..###.. .#...#. #.....# ......# .....#. ....#.. ...#... ..#.... .#..... #...... #...... #######",
    3: ".#####. #.....# ......# ......# .....#. ..###.. .....#. ......# ......# ......# #.....# .#####.",
    4: ".....#. ....##. ...#.#. ..#..#. .#...#. #....#. ####### .....#. .....#. .....#. .....#. .....#.",
    5: "####### #...... #...... #...... ######. ......# ......# ......# ......# ......# #.....# .#####.",
    6: "..####. .#..... #...... #...... #.###.. ##...#. #.....# #.....# #.....# #.....# .#...#. ..###..",
    7: "####### ......# ......# .....#. .....#. ....#.. ....#.. ...#... ...#... ..#.... ..#.... ..#....",
    8: "..###.. .#...#. #.....# #.....# .#...#. ..###.. .#...#. #.....# #.....# #.....# .#...#. ..###..",
    9: "..###.. .#...#. #.....# #.....# #.....# .#...## ..###.# ......# ......# .....#. ....#.. .###...",
}

LENET5_BITMAPS = np.array([[1.0 if ch == "#" else -1.0 for ch in _GLYPHS[d].replace(" ", "")] for d in range(10)])
"""(10, 84) target codes for the digits 0-9: 7-wide × 12-tall glyphs, '#' = +1, '.' = −1, row by row.

LeNet-5's output RBF units compare F6 with stylised bitmaps of the characters (paper, Fig. 3).
The paper's own bitmaps are not available to us; these are simple glyphs drawn for fbprop, in the
same spirit: ±1 codes that ScaledTanh (f(±1) = ±1) can reach without saturating, where digits that
look alike are nearer (0-6: 11 pixels apart, 0-8: 13) than the rest (up to 41). View digit d with
`LENET5_BITMAPS[d].reshape(12, 7)`.
"""
LENET5_BITMAPS.flags.writeable = False


def lenet5_codes(k: int) -> np.ndarray:
    """(k, 84) RBF target codes: the digit bitmaps for k ≤ 10, else k random ±1 codes."""
    if k < 1:
        raise ValueError(f"lenet5_codes: expected k >= 1 classes, got {k}")
    return LENET5_BITMAPS[:k].copy() if k <= 10 else random_codes(k, 84)


class ImageCascade(Cascade):
    """A Cascade that first checks its input is a batch of `channels`-map images of one size."""

    def __init__(self, name: str, size: int, hint: str, *modules, channels: int = 1) -> None:
        super().__init__(*modules)
        self.name, self.size, self.hint, self.channels = name, size, hint, channels

    def fprop(self, inp: State, out: State) -> None:
        if inp.x.shape[1:] != (self.channels, self.size, self.size):
            raise ValueError(f"{self.name}: expected input of shape (n, {self.channels}, {self.size}, {self.size}), "
                             f"got {inp.x.shape}{self.hint}")
        super().fprop(inp, out)

    def __repr__(self) -> str:
        return self.name + super().__repr__().removeprefix("Cascade")


def lenet5(pool: ParamPool, pad: int = 2) -> Cascade:
    """LeNet-5 up to F6: images (n, 1, 32 − 2·pad, 32 − 2·pad) -> F6 states (n, 84).

    Pad - C1 Conv(1→6, 5×5) - tanh - S2 Subsampling(2) - tanh - C3 Conv(6→16, 5×5, Table I) - tanh -
    S4 - tanh - C5 Conv(16→120, 5×5) - tanh - Flatten - F6 Linear(120→84) - tanh, every tanh the
    scaled one, 1.7159 tanh(2u/3). The network is built for 32×32 images (C5 sees all of S4's 5×5);
    `pad` zero-pads the input up to that: 2 for MNIST's 28×28, 0 for 32×32, 12 for 8×8 digits
    (or upsample those). The bias of each map sits in the ScaledTanh after C1, C3, C5 and F6 and
    in the Subsampling layers (whose squashing has none), so the counts are the paper's: 156, 12,
    1516, 32, 48120, 10164 — 60000 trainable parameters. The number of classes sizes only the
    energy stage, `lenet5_energy(pool, n_classes)`, which follows F6.
    """
    if int(pad) != pad or not 0 <= pad <= 14:
        raise ValueError(f"lenet5: expected 0 <= pad <= 14 (images of 32 − 2·pad pixels), got {pad}")
    size = 32 - 2 * pad
    return ImageCascade(
        f"LeNet-5[{size}x{size}]", size, f" (images of {size}x{size} padded by {pad} to 32x32; choose pad)",
        Pad(pad),
        Conv2d(1, 6, 5, pool), ScaledTanh((6, 1, 1), pool),                               # C1: 32 -> 28
        Subsampling(6, 2, pool), ScaledTanh((6, 1, 1)),                                    # S2: 28 -> 14
        Conv2d(6, 16, 5, pool, table=LENET5_C3_TABLE), ScaledTanh((16, 1, 1), pool),      # C3: 14 -> 10
        Subsampling(16, 2, pool), ScaledTanh((16, 1, 1)),                                  # S4: 10 -> 5
        Conv2d(16, 120, 5, pool), ScaledTanh((120, 1, 1), pool),                           # C5: 5 -> 1
        Flatten(),
        Linear(120, 84, pool), ScaledTanh(84, pool),                                       # F6
    )


def lenet5_energy(pool: ParamPool, n_classes: int = 10) -> RBF:
    """LeNet-5's output layer: E_k = ½‖F6 − t_k‖² to fixed codes t = lenet5_codes(n_classes)."""
    return RBF(lenet5_codes(n_classes), pool, trainable=False)


def lenet_modern(pool: ParamPool, n_classes: int = 10, size: int = 28, hidden: int | Sequence[int] = 128,
                 channels: int = 1, dropout: float = 0.0, norm_groups: int = 0,
                 maps: Sequence[int] = (32, 64)) -> Cascade:
    """Conv(C→32, 3×3, pad 1) - ReLU - MaxPool 2 - Conv(32→64, 3×3, pad 1) - ReLU - MaxPool 2 -
    Flatten - Linear(64·(size/4)² → hidden) - ReLU - Linear(hidden → n_classes) - Bias; with
    `dropout` p > 0, a Dropout(p) before each Linear. `maps` are the two convolutions' output
    maps (32, 64), `hidden` the size of the hidden layer (or sizes of several, ReLU after each).

    Input (n, C, size, size), C = `channels` input maps (1 grey, 3 RGB), with size a multiple
    of 4 (28 for MNIST, 8 for the 8×8 digits),
    output scores (n, n_classes): feed them to NegatedScores and NLLLoss. Each ReLU carries its
    layer's bias (y = max(0, x + b), one b per map after a convolution), as Bias then ReLU would.
    """
    if int(size) != size or size < 4 or size % 4:
        raise ValueError(f"lenet_modern: expected an image size that is a multiple of 4, got {size}")
    if n_classes < 1:
        raise ValueError(f"lenet_modern: expected n_classes >= 1, got {n_classes}")
    if int(channels) != channels or channels < 1:
        raise ValueError(f"lenet_modern: expected channels >= 1 input maps, got {channels}")
    maps = list(maps) if isinstance(maps, (list, tuple)) else maps
    if not isinstance(maps, list) or len(maps) != 2 or any(isinstance(m, bool) or int(m) != m or m < 1 for m in maps):
        raise ValueError(f"lenet_modern: expected maps, two positive numbers of feature maps, got {maps!r}")
    hidden = [hidden] if isinstance(hidden, int) and not isinstance(hidden, bool) else list(hidden)
    if not hidden or any(isinstance(h, bool) or int(h) != h or h < 1 for h in hidden):
        raise ValueError(f"lenet_modern: expected hidden, one or more positive layer sizes, got {hidden!r}")
    if (isinstance(norm_groups, bool) or int(norm_groups) != norm_groups or norm_groups < 0
            or any(m % max(norm_groups, 1) for m in maps)):
        raise ValueError(f"lenet_modern: expected norm_groups 0 (none) or a divisor of both maps "
                         f"{maps[0]} and {maps[1]}, got {norm_groups!r}")
    (m1, m2), q = (int(m) for m in maps), size // 4

    def drop() -> list[Module]:                                  # one module per place: its mask is its state
        return [Dropout(dropout)] if dropout else []

    def act(maps: int) -> list[Module]:
        if norm_groups:
            return [GroupNorm(maps, norm_groups, pool), ReLU()]
        return [ReLU((maps, 1, 1), pool)]

    # the modules are made in the order they run: the pool hands out (and initialises) parameters in that order
    convs = [Conv2d(channels, m1, 3, pool, padding=1), *act(m1), MaxPool(2),
             Conv2d(m1, m2, 3, pool, padding=1), *act(m2), MaxPool(2), Flatten()]
    widths = [m2 * q * q, *(int(h) for h in hidden)]
    layers = [m for a, b in zip(widths, widths[1:]) for m in (*drop(), Linear(a, b, pool), ReLU(b, pool))]
    return ImageCascade(
        f"LeNetModern[{size}x{size}]" if channels == 1 else f"LeNetModern[{channels}x{size}x{size}]", size,
        " (set size=, a multiple of 4, and channels=)",
        *convs, *layers, *drop(), Linear(widths[-1], n_classes, pool), Bias(n_classes, pool), channels=channels,
    )


def _build_lenet5(spec: dict, pool: ParamPool) -> tuple[Module, Module]:
    shape = tuple(spec["input_shape"])
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2] or (32 - shape[2]) % 2 or shape[2] > 32:
        raise ValueError(f"lenet5: expected square one-channel images of at most 32x32 with an even border to 32 "
                         f"(e.g. 28x28; colour images go to lenet-modern or mlp), got {shape}")
    w = shape[2]
    net, k = lenet5(pool, pad=(32 - w) // 2), int(spec["n_classes"])
    if spec.get("energy") == "rbf":
        return net, lenet5_energy(pool, k)
    return Cascade(net, Linear(84, k, pool), Bias(k, pool)), NegatedScores()     # F6's 84 units -> k scores


def _build_lenet_modern(spec: dict, pool: ParamPool) -> tuple[Module, Module]:
    if spec.get("energy", "scores") != "scores":
        raise ValueError(f"lenet-modern: expected energy 'scores', got {spec['energy']!r}")
    shape = tuple(spec["input_shape"])
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"lenet-modern: expected square images (channels, size, size), got {shape}")
    return lenet_modern(pool, n_classes=int(spec["n_classes"]), size=shape[2], channels=shape[0],
                        dropout=spec.get("dropout", 0.0), norm_groups=spec.get("norm_groups", 0),
                        maps=spec.get("maps", (32, 64)), hidden=spec.get("hidden", 128)), NegatedScores()


# the recipes of bench/recipes.md, on all 60,000 Fashion-MNIST images (no validation split: the epoch of
# least training error is kept, the last or nearly): LeNet-5
# for 120 epochs with half the images mirrored and shifts of up to 1 pixel (the best validation error
# of the three distortions tried; 120 epochs did better than 60), inferring on the image and its mirror,
# each also moved by 1 pixel each way (test_mirror, test_shift: both chosen on the validation split);
# lenet-modern for 8 epochs undistorted (distortions and group normalisation did no better on the
# validation split, at 2.6-3 times the time)
FASHION_LENET5 = {"optimizer": "sdlm", "lr": 0.002, "mu": 0.02, "schedule": "cosine", "epochs": 120, "val_size": 0,
                  "augment": "affine", "augment_args": {**MIRROR, "shift": 1.0}, "test_mirror": True, "test_shift": 1}
FASHION_LENET_MODERN = {"optimizer": "momentum", "lr": 0.01, "momentum": 0.9, "schedule": "cosine", "epochs": 8,
                        "val_size": 0}
# lenet-wide: 15 epochs fit in 20 minutes of 2 cores (mpiexec -n 2), with half the images mirrored and shifts
# of up to 1 pixel, inferring on the image and its mirror, each also moved by 1 pixel each way
FASHION_LENET_WIDE = {"optimizer": "momentum", "lr": 0.02, "momentum": 0.9, "batch_size": 64, "schedule": "cosine",
                      "epochs": 15, "val_size": 0, "augment": "affine", "augment_args": {**MIRROR, "shift": 1.0},
                      "test_mirror": True, "test_shift": 1}
# elsewhere (the 8x8 digits, MNIST) LeNet-5 starts with the paper's optimizer: plain SGD at 0.05
# saturates its RBF layer on the digits and stays at chance
LENET5_DEFAULT = {"optimizer": "sdlm", "lr": 0.002, "mu": 0.02, "schedule": "cosine", "epochs": 20}

register_model("lenet5", ModelEntry(_build_lenet5, {"energy": "rbf", "loss": "nll", "loss_args": {"beta": 0.1}},
                                    help="LeNet-5 (1998): C1-S2-C3-S4-C5-F6, RBF energies",
                                    training={"fashion-mnist": FASHION_LENET5, "default": LENET5_DEFAULT}))
register_model("lenet-modern", ModelEntry(_build_lenet_modern, {"maps": [32, 64], "hidden": [128], "energy": "scores",
                                                               "loss": "nll"},
                                          ("dropout", "norm_groups", "maps", "hidden"),
                                          help="a small ReLU / max-pooling convnet",
                                          training={"fashion-mnist": FASHION_LENET_MODERN}))
register_model("lenet-wide", ModelEntry(_build_lenet_modern, {"maps": [64, 128], "hidden": [256], "energy": "scores",
                                                             "loss": "nll"},
                                        ("dropout", "norm_groups", "maps", "hidden"),
                                        help="lenet-modern with twice the maps (64, 128) and 256 hidden units",
                                        training={"fashion-mnist": FASHION_LENET_WIDE}))
