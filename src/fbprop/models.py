"""The model registry: the lecture's nets, LeNet-5 and others, each built from a JSON-able spec.

A spec (what checkpoints store) names a model of `MODELS` and gives its settings: the input shape
and the number of classes (from the data), the model's own options (e.g. mlp's hidden sizes), the
energy, the loss and its arguments, the regularizer, the dtype and the seed. `build_machine(spec)`
turns it into a Machine. Adding a model is a builder and a `register_model` call in the file that
defines the net (lenet.py registers lenet5 and lenet-modern).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fbprop.losses import L1, L2, LOSSES, Loss
from fbprop.machine import Machine
from fbprop.module import Cascade, Module
from fbprop.modules.distance import RBF, Euclidean, NegatedScores, onehot_codes
from fbprop.modules.dropout import Dropout
from fbprop.modules.linear import Linear
from fbprop.modules.shape import Flatten
from fbprop.modules.squash import Bias, Logistic, ReLU, ScaledTanh, Tanh
from fbprop.params import ParamPool

SQUASHES = {"tanh": Tanh, "scaled-tanh": ScaledTanh, "logistic": Logistic, "relu": ReLU}
ENERGIES = ("scores", "rbf")


@dataclass(frozen=True)
class ModelEntry:
    """build(spec, pool) -> (net, energy); `defaults` are the spec's defaults (its options, energy,
    loss, loss_args); `options` are the spec keys a user may set beyond energy and loss;
    `training` holds the model's recipes, the training settings `fbprop train --model M` starts
    from (optimizer, lr, the optimizer's options, batch_size, epochs, schedule, augment,
    augment_args; and, going into the spec, any of the model's `options`, e.g. dropout, val_size,
    test_mirror and test_shift), by data set name, "default" for the others (see `recipe`)."""

    build: Callable[[dict, ParamPool], tuple[Module, Module]]
    defaults: dict = field(default_factory=dict)
    options: tuple[str, ...] = ()
    help: str = ""
    training: dict = field(default_factory=dict)


MODELS: dict[str, ModelEntry] = {}


def recipe(model: str, dataset: str | None = None) -> dict:
    """The training settings model `model` starts from on `dataset`: its recipe for that data set,
    else its "default" one, else {} (the generic settings of `fbprop train`)."""
    training = model_entry(model).training
    return dict(training.get(dataset, training.get("default", {})))


def register_model(name: str, entry: ModelEntry) -> None:
    MODELS[name] = entry


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    return MODELS[name]


def default_spec(model: str) -> dict:
    """The documented defaults of a model: {"model": name, **its defaults}."""
    return {"model": model, **model_entry(model).defaults}


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


def output_energy(spec: dict, pool: ParamPool) -> Module:
    """The energy stage of a classifier: negated scores, or RBF distances to one-hot codes."""
    kind = spec.get("energy", "scores")
    if kind not in ENERGIES:
        raise ValueError(f"unknown energy {kind!r}: expected one of {', '.join(ENERGIES)}")
    k = int(spec["n_classes"])
    return RBF(onehot_codes(k), pool) if kind == "rbf" else NegatedScores()


def _build_mlp(spec: dict, pool: ParamPool) -> tuple[Module, Module]:
    squash = SQUASHES.get(spec.get("squash", "tanh"))
    if squash is None:
        raise ValueError(f"unknown squash {spec['squash']!r}: expected one of {', '.join(SQUASHES)}")
    hidden = spec.get("hidden", []) if spec["model"] == "mlp" else []
    sizes = [math.prod(spec["input_shape"]), *hidden, int(spec["n_classes"])]
    check_size(spec, sum(a * b + b for a, b in zip(sizes, sizes[1:])))
    net = mlp(sizes, pool, squash, squash_output=spec.get("energy") == "rbf")
    p = spec.get("dropout", 0.0)
    if p:                                                        # dropout on each hidden layer's output
        net = Cascade(*[m for layer in net.modules[:-1] for m in (layer, Dropout(p))], net.modules[-1])
    return Cascade(Flatten(), net), output_energy(spec, pool)


# the recipes of bench/recipes.md: the best validation error measured, on Fashion-MNIST (a net trained on
# mirrored images infers on the image and its mirror: test_mirror)
MIRROR = {"shift": 0.0, "scale": 0.0, "squeeze": 0.0, "shear": 0.0, "flip": 0.5}
FASHION_MLP = {"hidden": [1000, 1000], "squash": "relu", "dropout": 0.3, "optimizer": "momentum", "lr": 0.02,
               "momentum": 0.9, "batch_size": 64, "schedule": "cosine", "epochs": 50, "augment": "affine",
               "augment_args": MIRROR, "test_mirror": True}

register_model("mlp", ModelEntry(_build_mlp, {"hidden": [300, 100], "squash": "tanh", "energy": "scores",
                                              "loss": "nll"}, ("hidden", "squash", "dropout"),
                                 "the lecture's multi-layer net of nn-layers",
                                 training={"fashion-mnist": FASHION_MLP}))
register_model("linear", ModelEntry(_build_mlp, {"energy": "scores", "loss": "nll"}, (),
                                    "one linear layer with bias"))


MAX_PARAMETERS = 1 << 31


def check_size(spec: dict, n_params: int) -> None:
    """Refuse a net whose parameter vectors (x, dx, ddx and two optimizer slots) cannot fit in memory."""
    itemsize = np.dtype(spec.get("dtype", "float32")).itemsize
    need = 5 * n_params * itemsize
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):                # not every system says
        memory = MAX_PARAMETERS * itemsize
    if n_params > MAX_PARAMETERS or need > memory:
        raise ValueError(f"{spec['model']}: {n_params:,} parameters need about {need / 2**30:.1f} GiB, more than "
                         f"this machine's {memory / 2**30:.1f} GiB; choose smaller layers")


def make_loss(name: str, args: dict | None = None) -> Loss:
    """The loss `name` of LOSSES with keyword arguments `args`, each checked against its signature."""
    cls = LOSSES.get(name)
    if cls is None:
        raise ValueError(f"unknown loss {name!r}: expected one of {', '.join(LOSSES)}")
    args = args or {}
    takes = [p for p in inspect.signature(cls).parameters if p != "self"]
    for key in args:
        if key not in takes:
            raise ValueError(f"loss {name!r}: unknown argument {key!r} (it takes {', '.join(takes) or 'none'})")
    return cls(**args)


TASKS = ("classification", "regression")


def build_machine(spec: dict) -> Machine:
    """A Machine from a spec: model, input_shape, n_classes, dtype, seed, loss, loss_args, energy, regularizer, task.

    With task "regression" the model is built as a classifier of `n_classes` scores, which become
    the answer G(X) (n_classes real values, no squashing at the output); its energy is the Euclidean
    ½‖G(X) − Y‖² and its loss the energy loss L = E unless the spec names another.
    """
    if spec.get("model") == "siamese":                           # a network of modules of its own
        from fbprop.siamese import build_siamese
        return build_siamese(spec)
    task = spec.get("task", "classification")
    if task not in TASKS:
        raise ValueError(f"build_machine: unknown task {task!r}: expected one of {', '.join(TASKS)}")
    regression = {"energy": "euclidean", "loss": "energy", "loss_args": {}} if task == "regression" else {}
    model = spec.get("model", "mlp")
    taken = model_entry(model).options
    for key in spec:                                             # another model's option would be ignored
        owners = [name for name, entry in MODELS.items() if key in entry.options]
        if owners and key not in taken:
            raise ValueError(f"build_machine: {key!r} is an option of {', '.join(owners)}, not of {model} "
                             f"(whose options are {', '.join(taken) or 'none'})")
    spec = {**default_spec(model), **regression, **spec}
    for key in ("input_shape", "n_classes"):
        if key not in spec:
            raise ValueError(f"build_machine: the spec has no {key!r}")
    for key in ("test_mirror", "test_shift"):
        if spec.get(key) and len(spec["input_shape"]) != 3:
            raise ValueError(f"build_machine: {key} moves images (channels, height, width), "
                             f"got input_shape {spec['input_shape']}")
    pool = ParamPool(np.dtype(spec.get("dtype", "float32")), seed=spec.get("seed", 0))
    if regression:
        if spec["energy"] != "euclidean":
            raise ValueError(f"build_machine: a regression's energy is 'euclidean', got {spec['energy']!r}")
        net, _ = model_entry(spec["model"]).build({**spec, "energy": "scores"}, pool)
        energy: Module = Euclidean()
    else:
        net, energy = model_entry(spec["model"]).build(spec, pool)
    loss = make_loss(spec.get("loss", "nll"), spec.get("loss_args"))
    reg = spec.get("regularizer") or {}
    regularizer = {"l2": L2, "l1": L1}[reg["kind"]](reg["lam"]) if reg.get("lam") else None
    return Machine(net, energy, loss, pool, regularizer, spec=spec)


from fbprop import lenet  # noqa: E402,F401  (registers lenet5 and lenet-modern)
