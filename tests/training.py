"""What the training tests share: a small machine and a quiet trainer (the `digits` fixture is in conftest)."""

from __future__ import annotations

import io

import fbprop as fb
from fbprop.train import Trainer


def small_machine(seed: int = 0, **spec) -> fb.Machine:
    return fb.build_machine({"model": "mlp", "hidden": [16], "input_shape": [1, 8, 8], "n_classes": 10,
                             "seed": seed, **spec})


def trainer(data, machine=None, **options) -> Trainer:
    return Trainer(machine or small_machine(), data, log=io.StringIO(), **options)
