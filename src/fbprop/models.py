"""The nets of the lecture and of LeNet, built from a JSON-able spec (what checkpoints store)."""

from __future__ import annotations

import math

import numpy as np

from fbprop.losses import L1, L2, LOSSES, Loss
from fbprop.machine import Machine
from fbprop.module import Cascade, Module
from fbprop.modules.distance import RBF, NegatedScores, onehot_codes
from fbprop.modules.linear import Linear
from fbprop.modules.shape import Flatten
from fbprop.modules.squash import Bias, Logistic, ReLU, ScaledTanh, Tanh
from fbprop.params import ParamPool

SQUASHES = {"tanh": Tanh, "scaled-tanh": ScaledTanh, "logistic": Logistic, "relu": ReLU}
MODELS = ("mlp", "linear", "lenet5", "lenet-modern")
ENERGIES = ("scores", "rbf")


def nn_layer(n_in: int, n_out: int, pool: ParamPool, squash: type = Tanh) -> Cascade:
    """The lecture's nn-layer: a Linear module then a sigmoid module with trainable bias."""
    return Cascade(Linear(n_in, n_out, pool), squash(n_out, pool))


def nn_2layer(n_in: int, n_hidden: int, n_out: int, pool: ParamPool, squash: type = Tanh) -> Cascade:
    """The lecture's 2-layer net: two nn-layers with a hidden state between them."""
    return Cascade(nn_layer(n_in, n_hidden, pool, squash), nn_layer(n_hidden, n_out, pool, squash))


def mlp(sizes: list[int], pool: ParamPool, squash: type = Tanh, squash_output: bool = True) -> Cascade:
    """nn-layers of the given sizes; the last layer is Linear + Bias when `squash_output` is off."""
    layers: list[Module] = [nn_layer(a, b, pool, squash) for a, b in zip(sizes[:-2], sizes[1:-1])]
    if squash_output:
        layers.append(nn_layer(sizes[-2], sizes[-1], pool, squash))
    else:
        layers.append(Cascade(Linear(sizes[-2], sizes[-1], pool), Bias(sizes[-1], pool)))
    return Cascade(*layers)


def default_spec(model: str) -> dict:
    """The documented defaults of each model."""
    if model == "mlp":
        return {"model": "mlp", "hidden": [300, 100], "squash": "tanh", "energy": "scores", "loss": "nll"}
    if model == "linear":
        return {"model": "linear", "energy": "scores", "loss": "nll"}
    if model == "lenet5":
        return {"model": "lenet5", "energy": "rbf", "loss": "nll", "loss_args": {"beta": 0.1}}
    if model == "lenet-modern":
        return {"model": "lenet-modern", "energy": "scores", "loss": "nll"}
    raise ValueError(f"unknown model {model!r}: expected one of {', '.join(MODELS)}")


def build_machine(spec: dict) -> Machine:
    """A Machine from a spec: model, input_shape, n_classes, dtype, seed, loss, energy, regularizer."""
    if spec.get("model") == "siamese":                           # a network of modules of its own
        from fbprop.siamese import build_siamese
        return build_siamese(spec)
    spec = {**default_spec(spec.get("model", "mlp")), **spec}
    pool = ParamPool(np.dtype(spec.get("dtype", "float32")), seed=spec.get("seed", 0))
    shape, k = tuple(spec["input_shape"]), int(spec["n_classes"])
    squash = SQUASHES.get(spec.get("squash", "tanh"))
    if squash is None:
        raise ValueError(f"unknown squash {spec['squash']!r}: expected one of {', '.join(SQUASHES)}")
    energy_kind = spec.get("energy", "scores")
    if energy_kind not in ENERGIES:
        raise ValueError(f"unknown energy {energy_kind!r}: expected one of {', '.join(ENERGIES)}")
    model = spec["model"]
    if model in ("mlp", "linear"):
        sizes = [math.prod(shape), *(spec.get("hidden", []) if model == "mlp" else []), k]
        net = Cascade(Flatten(), mlp(sizes, pool, squash, squash_output=energy_kind == "rbf"))
        energy: Module = RBF(onehot_codes(k), pool) if energy_kind == "rbf" else NegatedScores()
    else:
        from fbprop import lenet
        if model == "lenet5":
            if shape[0] != 1 or shape[1] != shape[2] or (32 - shape[-1]) % 2 or shape[-1] > 32:
                raise ValueError(f"lenet5: expected square one-channel images of at most 32x32 with an even "
                                 f"border to 32 (e.g. 28x28), got {shape}")
            net = lenet.lenet5(pool, n_classes=k, pad=(32 - shape[-1]) // 2)
            if energy_kind == "rbf":
                energy = lenet.lenet5_energy(pool, k)
            else:                                                # F6's 84 units -> k scores
                net = Cascade(net, Linear(84, k, pool), Bias(k, pool))
                energy = NegatedScores()
        else:
            net = lenet.lenet_modern(pool, n_classes=k, size=shape[-1])
            energy = NegatedScores()
    loss_cls = LOSSES.get(spec.get("loss", "nll"))
    if loss_cls is None:
        raise ValueError(f"unknown loss {spec['loss']!r}: expected one of {', '.join(LOSSES)}")
    loss: Loss = loss_cls(**spec.get("loss_args", {}))
    reg = spec.get("regularizer") or {}
    regularizer = {"l2": L2, "l1": L1}[reg["kind"]](reg["lam"]) if reg.get("lam") else None
    return Machine(net, energy, loss, pool, regularizer, spec=spec)
