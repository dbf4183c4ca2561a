"""The `fbprop` command: train, eval, predict, export, gradcheck.

User errors (bad options, missing data, unreadable files, divergence) are one line on stderr and
exit status 2. Set FBPROP_DEBUG=1 to get the traceback of any error instead.

`mpiexec -n K fbprop train ...` trains one model on K processes (fbprop.distributed): MPI is used
when the launcher's environment says this process is one of several (PMI_SIZE,
OMPI_COMM_WORLD_SIZE, MV2_COMM_WORLD_SIZE), or with --mpi. Rank 0 alone prints and writes the
run's files; an error on any rank ends the job with one line naming the rank.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from fbprop import __version__
from fbprop.checkpoint import CheckpointError, check_spec, load_checkpoint
from fbprop.data.augment import AUGMENTATIONS, make_transform
from fbprop.data.datasets import CLASS_NAMES, DATASETS, Normalisation, load_dataset
from fbprop.data.idx import IdxError, read_idx
from fbprop.data.own import IMAGE_SUFFIXES, TASKS, read_images
from fbprop.distributed import SingleProcess, checksum, world
from fbprop.files import atomic_write
from fbprop.losses import LOSSES
from fbprop.models import ENERGIES, MODELS, SQUASHES, build_machine, default_spec, model_entry, recipe
from fbprop.network import leaves
from fbprop.optim import OPTIMIZERS
from fbprop.runs import claim, new_run_dir, write_config
from fbprop.train import SCHEDULES, DistortionSamples, Plots, Trainer, TrainingDiverged, evaluate
from fbprop.train.extensions import strict_json

# Settings a resumed run may change; every other one given again must equal the run's.
RESUMABLE = ("epochs", "patience")


class CommandError(Exception):
    """A user error, reported as one line on stderr."""


class CollectiveError(CommandError):
    """A user error that every process of an MPI job raises at the same point: rank 0 reports it."""


USER_ERRORS = (CommandError, CheckpointError, IdxError, OSError, ValueError)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except None, where the help text says what happens."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes like 300,100, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"expected positive layer sizes, got {text!r}")
    return sizes


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a value > 0, got {text!r}")
        return value
    return parse


def _key_value(text: str) -> tuple[str, float | int | str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, e.g. beta=0.5, got {text!r}")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="NAME|PATH",
                   help=f"dataset: {', '.join(DATASETS)}; a directory holding the four MNIST-format files; a folder "
                        "of images in class sub-folders, or with train/ and test/ folders of them (PNG, JPEG, ...; "
                        "grey or colour, all of one size); a CSV file with a header row (answers in --label-column); "
                        "an .npz with x_train, y_train and optionally x_test, y_test, class_names; an .npy (n, d+1) "
                        "with the answer last. Data without a test set has 20%% of its samples held out for testing "
                        "(default: a checkpoint's own, else digits, scikit-learn's bundled 8x8 digits)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the dataset's files are (default: FBPROP_DATA, then the system's)")
    p.add_argument("--label-column", default=None, metavar="NAME",
                   help="the CSV column holding the answers (default: 'label', else the last column)")
    p.add_argument("--limit", type=_positive(int), default=None,
                   help="use at most this many training samples; validation and test sets stay whole (default: all)")


def train_options() -> dict[str, tuple]:
    """train's options: name -> (default, argparse keywords), from the registries as they are now.

    The parser's defaults are None and the settings are filled in after parsing, so that a resumed
    run can tell the options given again from those left out.
    """
    return {
        "task": (None, {"choices": TASKS, "help": "what the answers are. auto: labels, unless a CSV, .npz or .npy "
                                                  "holds real numbers that are not all whole: then a regression, "
                                                  "energy ½‖G(X) − Y‖² (euclidean), energy loss (default: auto)"}),
        "model": ("mlp", {"choices": list(MODELS), "help": "; ".join(f"{k}: {e.help}" for k, e in MODELS.items())}),
        "hidden": (None, {"type": _sizes, "help": "hidden layer sizes (default: " + "; ".join(
            f"{k} {','.join(map(str, e.defaults['hidden']))}" for k, e in MODELS.items() if "hidden" in e.options)
            + ")"}),
        "maps": (None, {"type": _sizes, "help": "feature maps of the two convolutions (default: " + "; ".join(
            f"{k} {','.join(map(str, e.defaults['maps']))}" for k, e in MODELS.items() if "maps" in e.options)
            + ")"}),
        "squash": (None, {"choices": list(SQUASHES), "help": "mlp's sigmoid (default tanh)"}),
        "energy": (None, {"choices": ENERGIES, "help": "scores: energies are negated outputs; rbf: distances to "
                                                       "per-class target codes (default: the model's)"}),
        "loss": (None, {"choices": list(LOSSES), "help": "energy-based loss (default: the model's, nll)"}),
        "beta": (None, {"type": _positive(float), "help": "inverse temperature of the nll loss (--loss-arg beta=; "
                                                                     "default: the model's, 1; lenet5's 0.1)"}),
        "margin": (None, {"type": _positive(float), "help": "margin of hinge / square-square (--loss-arg margin=; "
                                                                       "default: the loss's own)"}),
        "loss_arg": (None, {"type": _key_value, "action": "append", "metavar": "NAME=VALUE",
                            "help": "any argument of the loss, e.g. --loss-arg gamma=2 (repeatable; default: none)"}),
        "dropout": (None, {"type": float, "help": "drop probability of the dropout layers of " + ", ".join(
            k for k, e in MODELS.items() if "dropout" in e.options) + " (default: the model's)"}),
        "norm_groups": (None, {"type": int, "metavar": "G", "help": "group normalisation after each convolution of "
                               + ", ".join(k for k, e in MODELS.items() if "norm_groups" in e.options)
                               + ", G groups of maps (0: none; default: the model's)"}),
        "test_mirror": (None, {"action": argparse.BooleanOptionalAction,
                               "help": "at inference (validation, test, eval, predict), average each answer's energy "
                                       "over the image and its left-right mirror (default: the model's recipe, off)"}),
        "test_shift": (None, {"type": int, "metavar": "PIXELS",
                              "help": "at inference, average also over the image (and its mirror, with --test-mirror) "
                                      "moved by PIXELS up, down, left and right (default: the model's recipe, 0)"}),
        "optimizer": (None, {"choices": list(OPTIMIZERS),
                             "help": "; ".join(f"{k}: {e.help}" for k, e in OPTIMIZERS.items())
                             + " (default: the model's recipe, sgd for mlp)"}),
        "lr": (None, {"type": _positive(float), "help": "learning rate η (default per optimizer: " + ", ".join(
            f"{k} {e.lr:g}" for k, e in OPTIMIZERS.items() if e.lr) + ")"}),
        "optimizer_arg": (None, {"type": _key_value, "action": "append", "metavar": "NAME=VALUE",
                                 "help": "any option of the optimizer, e.g. momentum=0.5 (repeatable; default: none)"}),
        "momentum": (None, {"type": float, "help": "momentum's α (default 0.9)"}),
        "mu": (None, {"type": _positive(float), "help": "SDLM's μ in η/(μ + h_kk) (default 0.02)"}),
        "lbfgs_iters": (None, {"type": _positive(int), "help": "L-BFGS iterations per epoch (default 20)"}),
        "hessian_samples": (500, {"type": _positive(int), "help": "samples for SDLM's Hessian estimate"}),
        "schedule": (None, {"choices": list(SCHEDULES), "help": "learning-rate schedule (default: the model's, "
                                                                "constant for mlp)"}),
        "epochs": (None, {"type": int, "help": "passes over the training set (default: the model's, 20 for mlp)"}),
        "batch_size": (None, {"type": _positive(int), "help": "1 is on-line learning (default: the model's, 32 "
                                                              "for mlp)"}),
        "augment": (None, {"choices": ["none", *AUGMENTATIONS], "help": "distort each training batch: affine "
                                     "(LeCun et al. 1998: shift, scale, squeeze, shear) or elastic (Simard et al. "
                                     "2003) (default: the model's, none for mlp)"}),
        "augment_arg": (None, {"type": _key_value, "action": "append", "metavar": "NAME=VALUE",
                               "help": "a parameter of the distortion, e.g. alpha=34 (repeatable; default: none)"}),
        "l2": (0.0, {"type": float, "help": "λ of the L2 regularizer ½‖W‖²"}),
        "l1": (0.0, {"type": float, "help": "λ of the L1 regularizer ‖W‖₁"}),
        "val_size": (0.1, {"type": float, "help": "validation fraction (or count) of the training set"}),
        "patience": (None, {"type": _positive(int), "help": "early stopping after this many epochs without a better "
                                                           "validation error (default: none)"}),
        "dtype": ("float32", {"choices": ["float32", "float64"], "help": "parameters and data"}),
        "seed": (0, {"type": int, "help": "initial weights, validation split and batch order"}),
    }
# optimizer options of the command line -> the registry's names
OPTIMIZER_FLAGS = {"momentum": "momentum", "mu": "mu", "lbfgs_iters": "max_iter"}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fbprop", description="Gradient-based learning in multi-module systems.",
                                     epilog="Errors are one line on stderr; set FBPROP_DEBUG=1 for a traceback.")
    parser.add_argument("--version", action="version", version=f"fbprop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write checkpoint, metrics and plots")
    _data_args(t)
    for name, (default, kwargs) in train_options().items():
        kwargs = dict(kwargs)
        if default is not None:
            kwargs["help"] = f"{kwargs.get('help', '')} (default: {default})".lstrip()
        t.add_argument("--" + name.replace("_", "-"), default=None, **kwargs)
    t.add_argument("--out", default=None, metavar="DIR", help="output directory (default runs/DATA-MODEL-TIME)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its checkpoint.npz (or its directory) with the run's own settings "
                        "(config.json); options given again must equal the run's, except "
                        + ", ".join(f"--{k}" for k in RESUMABLE) + " (default: a new run)")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG plots (default: write them)")
    t.add_argument("--show-test", action="store_true",
                   help="also evaluate, log and plot the test error after each epoch (for teaching: choosing a "
                        "model or an epoch by it makes the final test error optimistic); by default the test set "
                        "is used once, at the end")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")
    t.add_argument("--mpi", action=argparse.BooleanOptionalAction, default=None,
                   help="data-parallel training over the MPI processes of `mpiexec -n K fbprop train ...` "
                        "(default: when an MPI launcher started several processes)")

    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    e.add_argument("checkpoint", help="a checkpoint .npz or a run directory (uses best.npz there)")
    _data_args(e)
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="(default: test)")

    p = sub.add_parser("predict", help="answers of a checkpoint for images: IDX, .npy, image files, folders")
    p.add_argument("checkpoint", help="a checkpoint .npz or a run directory (uses best.npz there)")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="images (n, h, w), (n, c, h, w) or (n, h, w, c) as IDX (.idx3-ubyte, optionally .gz) or .npy "
                        "(feature vectors (n, d) for a model trained on them); PNG/JPEG/... image files; folders of "
                        "them (searched recursively, in sorted order). Integer pixels, and float pixels when any "
                        "exceeds 1, are scaled as the training images were; float pixels all within [0, 1] are "
                        "taken as already scaled")
    p.add_argument("--proba", action="store_true",
                   help="print each sample's class probabilities softmax(−βE), β the nll loss's (else 1)")
    p.add_argument("--top-k", type=_positive(int), default=None, metavar="K",
                   help="print each sample's K most probable classes with their probabilities, by name when the "
                        "data set names its classes")
    p.add_argument("--out", default=None, help="write the answers (with --proba the probabilities) to this .npy "
                                               "(default: print them)")

    x = sub.add_parser("export", help="write a trained model as ONNX (graph to the energies) and/or safetensors")
    x.add_argument("checkpoint", help="a checkpoint .npz or a run directory (uses best.npz there)")
    x.add_argument("--onnx", default=None, metavar="FILE", help="ONNX model: input x (n, *image shape), "
                   "output energies (n, k); the answer is argmin")
    x.add_argument("--safetensors", default=None, metavar="FILE",
                   help="weights named like the state_dict of the equivalent torch.nn.Sequential (fbprop.export)")
    x.add_argument("--normalisation", action=argparse.BooleanOptionalAction, default=True,
                   help="the ONNX graph takes pixel values (0-255, or the digits' 0-16 counts) as floats and "
                        "standardises them as training did (default: on)")

    g = sub.add_parser("gradcheck", help="finite-difference check of every module of a model (float64)")
    g.add_argument("model", choices=MODELS)
    g.add_argument("--input-shape", type=_sizes, default=[1, 28, 28],
                   help="one sample's shape (default: 1,28,28)")
    g.add_argument("--samples", type=_positive(int), default=20,
                   help="entries checked per input and parameter (default: 20)")
    s = sub.add_parser("siamese", help="train a siamese energy machine on pairs (DrLIM contrastive loss): "
                       "k-NN accuracy and scatter plot of the learned embedding", formatter_class=_DefaultsFormatter)
    _data_args(s)
    s.add_argument("--hidden", type=_sizes, default=[256, 64], help="hidden layer sizes of the shared net G")
    s.add_argument("--dim", type=_positive(int), default=2, help="dimension of the embedding G(X)")
    s.add_argument("--margin", type=_positive(float), default=1.0, help="contrastive margin m")
    s.add_argument("--lr", type=_positive(float), default=0.01)
    s.add_argument("--momentum", type=float, default=0.9)
    s.add_argument("--batch-size", type=_positive(int), default=64, help="pairs per step")
    s.add_argument("--epochs", type=int, default=15)
    s.add_argument("--pairs", type=_positive(int), default=120_000, help="pairs drawn per epoch, half same-class")
    s.add_argument("--k", type=_positive(int), default=5, help="neighbours of the k-NN accuracy")
    s.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, metavar="DIR", help="output directory (default runs/DATA-siamese-TIME)")
    s.add_argument("--eval", default=None, metavar="RUN", help="instead of training, reload a run's checkpoint "
                   "and report the k-NN test accuracy of its embedding")
    return parser


def cmd_siamese(args) -> int:
    from fbprop.siamese import evaluate_siamese, train_siamese

    name = args.data or "digits"
    if args.eval:
        path, spec, machine = _load_model(args.eval, needed=("model", "input_shape"))
        data = load_dataset(args.data or spec.get("dataset", "digits"), args.data_dir, val_size=0,
                            seed=spec.get("seed", 0), dtype=machine.pool.dtype, limit=args.limit)
        print(json.dumps({"checkpoint": str(path), **evaluate_siamese(machine, data, args.k)}))
        return 0
    data = load_dataset(name, args.data_dir, val_size=0, seed=args.seed, dtype=np.dtype(args.dtype), limit=args.limit)
    config = {"fbprop": __version__, "command": "siamese", "settings": {k: v for k, v in vars(args).items()
                                                                         if k not in ("parallel", "eval")}}
    if args.out:
        out = Path(args.out)
        claim(out, config)
    else:
        out = new_run_dir(Path("runs"), f"{data.name}-siamese", config)
    result = train_siamese(data, hidden=args.hidden, dim=args.dim, margin=args.margin, lr=args.lr,
                           momentum=args.momentum, batch_size=args.batch_size, epochs=args.epochs, pairs=args.pairs,
                           k=args.k, seed=args.seed, dtype=args.dtype, out_dir=out)
    print(f"{args.k}-NN test accuracy in the learned {args.dim}-D space {100 * result['knn_test_accuracy']:.2f}%"
          f" after {result['epochs']} epochs in {result['train_seconds']:.1f}s; results in {out}")
    return 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


VIEW_KEYS = ("test_mirror", "test_shift")                        # inference options: any image classifier's


def _model_spec(args, base: dict) -> dict:
    """The model spec: `base` with the model options given on the command line applied."""
    spec = dict(base)
    entry = model_entry(spec["model"])
    for key in VIEW_KEYS:
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    for key in ("hidden", "squash", "dropout", "norm_groups", "maps"):
        if getattr(args, key) is not None:
            if key not in entry.options:
                owners = ", ".join(k for k, e in MODELS.items() if key in e.options)
                raise CommandError(f"{_flag(key)} is an option of {owners}, not of {spec['model']}")
            spec[key] = getattr(args, key)
    if args.energy is not None:
        spec["energy"] = args.energy
    loss_args = dict(spec.get("loss_args", {}))
    if args.loss is not None and args.loss != spec.get("loss"):
        spec["loss"], loss_args = args.loss, {}                  # another loss starts from its own defaults
    for key, value in [("beta", args.beta), ("margin", args.margin), *(args.loss_arg or [])]:
        if value is not None:
            loss_args[key] = value
    spec["loss_args"] = loss_args
    l2, l1 = args.l2 or 0.0, args.l1 or 0.0
    if l2 and l1:
        raise CommandError("give one regularizer: --l2 or --l1, not both")
    if args.l2 is not None or args.l1 is not None:
        spec["regularizer"] = {"kind": "l2" if l2 else "l1", "lam": l2 or l1} if l2 or l1 else None
    for key in ("dtype", "seed"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    return spec


def _training_settings(args, base: dict) -> dict:
    """The Trainer's settings: `base` with the training options given on the command line applied."""
    settings = dict(base)
    optimizer = args.optimizer or settings["optimizer"]
    entry = OPTIMIZERS[optimizer]
    if optimizer != settings["optimizer"]:                       # another optimizer: its own defaults
        settings = {**{k: v for k, v in settings.items() if k not in OPTIMIZERS[settings["optimizer"]].options},
                    "optimizer": optimizer, "lr": entry.lr, **entry.options}
    given = [(_flag(flag), option, getattr(args, flag)) for flag, option in OPTIMIZER_FLAGS.items()]
    given += [(f"--optimizer-arg {k}", k, v) for k, v in args.optimizer_arg or []]
    for flag, option, value in given:
        if value is not None:
            if option not in entry.options:
                owners = ", ".join(k for k, e in OPTIMIZERS.items() if option in e.options) or "no optimizer"
                raise CommandError(f"{flag} is an option of {owners}, not of {optimizer}")
            settings[option] = value
    if args.lr is not None:
        if entry.lr is None:
            raise CommandError(f"--lr: {optimizer} has no learning rate (its line search sets each step)")
        settings["lr"] = args.lr
    for key in ("batch_size", "hessian_samples", "epochs", "schedule", "patience", "seed"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings.setdefault("augment", "none")                       # runs saved before augmentation existed
    settings.setdefault("augment_args", {})
    if args.augment is not None and args.augment != settings["augment"]:
        settings["augment"], settings["augment_args"] = args.augment, {}   # another distortion: its own defaults
    if args.augment_arg:
        settings["augment_args"] = {**settings["augment_args"], **dict(args.augment_arg)}
    transform = make_transform(settings["augment"], settings["augment_args"])   # checks names and values
    if transform is not None:
        settings["augment_args"] = transform.args                # every parameter recorded, defaults included
    if settings["epochs"] < 0:
        raise CommandError(f"--epochs: expected a count >= 0, got {settings['epochs']}")
    return settings


def _defaults(model: str | None = None, dataset: str | None = None) -> dict:
    """The training settings a new run starts from: the generic ones, then the model's recipe for the data."""
    settings = recipe(model, dataset) if model else {}
    spec_keys = {*model_entry(model).options, "val_size", *VIEW_KEYS} if model else set()
    settings = {k: v for k, v in settings.items() if k not in spec_keys}
    entry = OPTIMIZERS[settings.get("optimizer", "sgd")]
    return {"optimizer": "sgd", "lr": entry.lr, **entry.options, "batch_size": 32, "hessian_samples": 500,
            "epochs": 20, "schedule": "constant", "patience": None, "seed": 0, "augment": "none",
            "augment_args": {}, **settings}


def _refuse_changes(what: str, run: dict, now: dict, allowed: tuple[str, ...] = ()) -> dict:
    """Raise CommandError naming the first setting given on resume that differs from the run's."""
    for key in sorted(set(run) | set(now), key=lambda k: (k not in ("optimizer", "model"), k)):
        if key not in allowed and run.get(key) != now.get(key):
            raise CommandError(f"--resume: {what} {key} is {now.get(key)!r} here but {run.get(key)!r} in the run; "
                               f"a resumed run keeps its settings (only {', '.join(map(_flag, allowed))} may change)")
    return now


def _load_data(name: str, args, spec: dict, limit: int | None, dtype: str):
    val = spec.get("val_size", 0.1)
    val = int(val) if val >= 1 else val
    task = getattr(args, "task", None) or spec.get("task", "auto")
    column = args.label_column or spec.get("label_column")
    return load_dataset(name, args.data_dir, val_size=val, seed=spec.get("seed", 0), dtype=np.dtype(dtype), limit=limit,
                        task=task, label_column=column)


NEEDED = ("model", "input_shape", "n_classes", "normalisation")


def _require(path: Path, spec: dict, needed: tuple[str, ...] = NEEDED) -> dict:
    """The spec, when it has the fields the command line needs to rebuild the machine and its inputs."""
    for key in needed:
        if key not in spec:
            raise CommandError(f"{path}: the architecture has no {key!r} (saved outside `fbprop train`?)")
    return spec


def _run_data(path: Path, spec: dict, args, limit: int | None):
    """The data set a checkpoint was trained on: its split (seed, validation size) and its standardisation."""
    _require(path, spec)
    data = _load_data(args.data or spec.get("dataset", "digits"), args, spec, limit, spec.get("dtype", "float32"))
    if list(data.image_shape) != list(spec["input_shape"]) or data.n_classes != spec["n_classes"]:
        raise CommandError(f"{path}: the model expects images {tuple(spec['input_shape'])} in {spec['n_classes']} "
                           f"classes, dataset {data.name} has {data.image_shape} in {data.n_classes}")
    data.standardise_as(Normalisation.from_dict(spec["normalisation"]))   # the model's x' = (x − mean) / std
    return data


def _new_run(args, root: bool):
    """Data, model spec, training settings, and the claimed output directory of a new run."""
    planned = recipe(args.model or "mlp", args.data or "digits")     # a recipe may hold out no validation set
    val_size = args.val_size if args.val_size is not None else planned.get("val_size", 0.1)
    if val_size >= 1 and val_size != int(val_size):
        raise CommandError(f"--val-size: expected a fraction in [0, 1) or a whole count, got {val_size}")
    spec = _model_spec(args, default_spec(args.model or "mlp"))
    spec.setdefault("seed", 0)
    spec["val_size"] = int(val_size) if val_size >= 1 else val_size
    data = _load_data(args.data or "digits", args, spec, args.limit, spec.get("dtype", "float32"))
    options = model_entry(spec["model"]).options                 # a recipe may set the model's options (dropout)
    for key, value in recipe(spec["model"], data.name).items():
        if key in (*options, *VIEW_KEYS) and getattr(args, key, None) is None:
            spec[key] = value
    settings = _training_settings(args, {**_defaults(spec["model"], data.name), "seed": spec["seed"]})
    spec.update(input_shape=list(data.image_shape), n_classes=data.n_classes, dataset=data.name, limit=args.limit,
                normalisation=data.normalisation.as_dict(), data_checksum=checksum(data.train.x, data.train.y),
                task=data.task)
    if data.class_names:
        spec["class_names"] = list(data.class_names)
    if args.label_column:
        spec["label_column"] = args.label_column
    if data.task == "regression":                                # G(X) is the answer: Euclidean energy
        if args.energy is not None:
            raise CommandError(f"--energy {args.energy}: a regression's energy is ½‖G(X) − Y‖² (euclidean)")
        spec["energy"] = "euclidean"
        if args.loss is None:
            spec["loss"], spec["loss_args"] = "energy", {}
    return data, spec, settings


def _read_resume(resume: Path) -> tuple[dict, dict]:
    """(spec, trainer state) of the run to resume; a run killed before its first checkpoint starts
    over from its config.json ({"settings": …} with no epoch done)."""
    config = resume.parent / "config.json"
    if not resume.exists() and resume.name == "checkpoint.npz" and config.is_file():
        try:
            run = json.loads(config.read_text())
            spec, settings = run["model"], run["training"]
        except (ValueError, KeyError, TypeError) as e:
            raise CommandError(f"{config}: unreadable run configuration ({type(e).__name__}: {e})") from None
        check_spec(config, spec)
        return spec, {"settings": settings, "fresh": True}
    spec, _, _, state = load_checkpoint(resume)
    return spec, state


def _resumed_run(args, resume: Path, parallel):
    spec, state = parallel.share(_read_resume(resume) if parallel.is_root else None)   # rank 0 reads
    run_settings = state.get("settings") or {**_defaults(), "optimizer": state.get("optimizer", "sgd"),
                                             "lr": state.get("lr"), "seed": spec.get("seed", 0)}
    run_settings = {"augment": "none", "augment_args": {}, **run_settings}   # a run without distortions
    _refuse_changes("model setting", spec, {**_model_spec(args, spec)})
    given = {"dataset": args.data, "limit": args.limit, "val_size": args.val_size}
    for key, value in given.items():
        if value is not None and value != spec.get(key):
            raise CommandError(f"--resume: {_flag(key if key != 'dataset' else 'data')} is {value!r} here but "
                               f"{spec.get(key)!r} in the run; a resumed run keeps its data")
    settings = _refuse_changes("setting", run_settings, _training_settings(args, run_settings), RESUMABLE)
    data = _run_data(resume, spec, args, spec.get("limit"))
    if "data_checksum" in spec and checksum(data.train.x, data.train.y) != spec["data_checksum"]:
        raise CommandError(f"--resume: the training data differ from the run's ({data.name} changed on disk?)")
    return data, spec, settings


def cmd_train(args) -> int:
    parallel = args.parallel or SingleProcess()
    root = parallel.is_root
    if args.resume:
        resume = Path(args.resume)
        resume = resume / "checkpoint.npz" if resume.is_dir() else resume
        data, spec, settings = _resumed_run(args, resume, parallel)
        out = Path(args.out) if args.out else resume.parent
    else:
        data, spec, settings = _new_run(args, root)
        out = Path(args.out) if args.out else None
    # the machine and the distortions are built (and refused) before the run directory is claimed
    machine = build_machine(spec)
    takes = OPTIMIZERS[settings["optimizer"]].options
    options = {k: v for k, v in settings.items() if k in takes}
    transform = make_transform(settings.get("augment"), settings.get("augment_args"))
    if transform is not None and OPTIMIZERS[settings["optimizer"]].updater != "minibatch":
        raise CommandError(f"--augment: {settings['optimizer']} trains on the fixed full training set; distortions "
                           "need a mini-batch optimizer (sgd, momentum, sdlm)")
    config = {"fbprop": __version__, "model": spec, "training": settings,
              "data": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test)}}
    if root:
        if args.resume and out == resume.parent:
            write_config(out, config)
        elif out is None:
            out = new_run_dir(Path("runs"), f"{data.name}-{spec['model']}", config)
        else:
            claim(out, config)
    out = parallel.share(out)                                    # rank 0's clock names the run
    extensions = [] if args.no_plots else [Plots(out, f"{spec['model']} on {data.name}")]
    if transform is not None and not args.no_plots:
        extensions.append(DistortionSamples(out, transform, data.train.x[:8]))
    trainer = Trainer(machine, data, optimizer=settings["optimizer"], lr=settings["lr"],
                      batch_size=settings["batch_size"], epochs=settings["epochs"], schedule=settings["schedule"],
                      patience=settings["patience"], seed=settings["seed"], hessian_samples=settings["hessian_samples"],
                      transform=transform, show_test=args.show_test, out_dir=out, progress=args.progress,
                      extensions=extensions, comm=getattr(parallel, "comm", None), **options)
    if args.resume and resume.exists():
        trainer.resume(resume)
    if root:
        where = f" on {parallel.size} processes" if parallel.size > 1 else ""
        rate = f" lr {settings['lr']:g}" if settings["lr"] else ""
        print(f"fbprop train: {data.name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test), "
              f"{machine.pool.size} parameters, {settings['optimizer']}{rate}, batch {settings['batch_size']}{where}, "
              f"-> {out}", file=sys.stderr)
    start = time.perf_counter()
    try:
        trainer.fit()
    except TrainingDiverged as e:                                # every rank diverges at the same step
        last = out / "checkpoint.npz"
        kept = f"; the last good checkpoint is {last}" if root and last.exists() else ""
        raise CollectiveError(f"{e}{kept}") from None
    seconds = time.perf_counter() - start
    trainer.restore_best()
    test = trainer.evaluate(data.test)
    if not root:
        return 0
    best = trainer.best.error if len(data.val) and math.isfinite(trainer.best.error) else None   # strict JSON
    which = trainer.best.epoch if trainer.best.params is not None else trainer.epoch
    split = "validation" if len(data.val) else "training"
    measure = "RMSE" if data.task == "regression" else "error"
    reported = (f"parameters of epoch {which} (best {split} {measure})" if trainer.best.params is not None
                else f"parameters of epoch {which} (the last)")
    summary = {"test_loss": test.loss, "seconds": round(seconds, 2), "epochs": trainer.epoch, "params_epoch": which}
    if data.task == "regression":
        summary.update(test_rmse=test.rmse, test_mae=test.mae, best_val_rmse=best)
        line = f"test RMSE {test.rmse:.4g}, MAE {test.mae:.4g}"
    else:
        total = test.confusion.sum(axis=1, keepdims=True)
        normalised = np.divide(test.confusion, total, out=np.zeros(test.confusion.shape), where=total > 0)
        summary.update(test_error=test.error, best_val_error=best, confusion=test.confusion.tolist(),
                       confusion_normalised=np.round(normalised, 6).tolist())
        line = f"test error {100 * test.error:.2f}% (accuracy {100 * (1 - test.error):.2f}%)"
    text = json.dumps(strict_json(summary), indent=1, allow_nan=False)
    atomic_write(out / "result.json", lambda f: f.write(text.encode()))
    if not args.no_plots and data.task != "regression":
        from fbprop.plots import plot_confusion
        plot_confusion(test.confusion, out / "confusion.png", f"{spec['model']} on {data.name}: test",
                       data.class_names or CLASS_NAMES.get(data.name))
    print(f"{line} after {trainer.epoch} epochs in {seconds:.1f}s, {reported}; results in {out}")
    return 0


def _load_model(checkpoint: str, needed: tuple[str, ...] = NEEDED):
    """The machine of a checkpoint file, or of a run directory's best.npz (else its checkpoint.npz)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.npz" if (path / "best.npz").exists() else path / "checkpoint.npz"
    spec, params, _, _ = load_checkpoint(path)
    machine = build_machine(_require(path, spec, needed))
    if params.shape != machine.pool.x.shape:
        raise CommandError(f"{path}: expected {machine.pool.size} parameters for its architecture, got {params.size}")
    machine.pool.load(params)
    return path, spec, machine


def cmd_eval(args) -> int:
    path, spec, machine = _load_model(args.checkpoint)
    data = _run_data(path, spec, args, args.limit)
    split = getattr(data, args.split)
    meter = evaluate(machine, split, data.n_classes)
    if machine.regression:
        print(json.dumps({"split": args.split, "samples": len(split), "rmse": meter.rmse, "mae": meter.mae,
                          "loss": meter.loss}))
    else:
        print(json.dumps({"split": args.split, "samples": len(split), "error": meter.error,
                          "accuracy": 1 - meter.error, "loss": meter.loss}))
    return 0


def cmd_predict(args) -> int:
    _, spec, machine = _load_model(args.checkpoint)
    regression = machine.regression
    if (args.proba or args.top_k) and regression:
        raise CommandError("--proba and --top-k need a classifier; this model is a regression (its answers are G(X))")
    names = spec.get("class_names") or CLASS_NAMES.get(spec.get("dataset", "")) or \
        [str(i) for i in range(spec["n_classes"])]
    normalise = Normalisation.from_dict(spec["normalisation"])
    rows, labels = [], []
    for path, x, tags in _inputs(args.files, tuple(spec["input_shape"])):
        unit = x.dtype.kind == "f" and normalise.pixel_scale != 1 and not _above_one(x, path)
        for i in range(0, len(x), PREDICT_BATCH):               # one batch in memory at a time
            batch = x[i:i + PREDICT_BATCH]
            if batch.dtype.kind == "f" and not np.isfinite(batch).all():
                raise CommandError(f"{path}: the images hold NaN or infinite values (from image {i} on)")
            inputs = normalise(batch, machine.pool.dtype, unit=unit)
            if not np.isfinite(inputs).all():
                raise CommandError(f"{path}: pixel values too large for {machine.pool.dtype} (from image {i} on)")
            if regression:
                rows.append(machine.predict(inputs).reshape(len(batch), -1))
            elif args.proba or args.top_k:
                rows.append(machine.proba(inputs))
            else:
                rows.append(machine.predict(inputs))
        labels += tags
    answers = np.concatenate(rows)
    if args.out and Path(args.out).is_dir():
        raise CommandError(f"--out {args.out}: is a directory; give a file name, e.g. {Path(args.out) / 'answers.npy'}")
    if args.out:
        atomic_write(args.out, lambda f: np.save(f, answers))
        print(f"{len(answers)} {'probability rows' if args.proba else 'answers'} written to {args.out}")
        return 0
    lines = _answer_lines(answers, args, names, regression)
    prefix = [f"{tag}\t" if tag else "" for tag in labels]
    try:
        sys.stdout.write("".join(f"{p}{line}\n" for p, line in zip(prefix, lines)))
        sys.stdout.flush()
    except BrokenPipeError:                                      # `fbprop predict ... | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no second error when Python exits
        raise CommandError("the output was closed before every answer was written (broken pipe)") from None
    return 0


def _answer_lines(answers: np.ndarray, args, names: list[str], regression: bool) -> list[str]:
    if regression:
        return [" ".join(f"{v:.6g}" for v in row) for row in answers]
    if args.top_k:
        k = min(args.top_k, answers.shape[1])
        top = np.argsort(-answers, axis=1, kind="stable")[:, :k]
        return ["\t".join(f"{names[j]} {p[j]:.4f}" for j in order) for p, order in zip(answers, top)]
    if args.proba:
        return [" ".join(f"{v:.4f}" for v in row) for row in answers]
    return [str(a) for a in answers.tolist()]


def _above_one(x: np.ndarray, path: Path) -> bool:
    """Whether float pixels go above 1 anywhere in the file (then they are 0-255 like integers)."""
    for i in range(0, len(x), PREDICT_BATCH):
        batch = x[i:i + PREDICT_BATCH]
        if np.isfinite(batch).all() and batch.size and batch.max() > 1:
            return True
    return False


def _inputs(files: list[str], shape: tuple):
    """(path, samples in the model's input shape, a tag per sample) for each array file, image file or folder;
    images read from files are tagged with their file name, samples of an array file are not tagged."""
    images: list[Path] = []
    for name in files:
        path = Path(name)
        if not path.exists():
            raise CommandError(f"{path}: no such file or folder")
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CommandError(f"{path}: a folder without images ({', '.join(IMAGE_SUFFIXES)})")
            images += found
        elif not path.is_file():
            raise CommandError(f"{path}: expected a file of images, got a device or FIFO")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            x = _shaped(_open_images(path), shape, path)
            yield path, x, [""] * len(x)
    if images:
        x = read_images(images)
        yield images[0].parent, _shaped(x, shape, images[0].parent, images), [str(f) for f in images]


def _shaped(x: np.ndarray, shape: tuple, path: Path, files: list[Path] | None = None) -> np.ndarray:
    """x as (n, *shape): a channel axis added to grey (n, h, w) images, channels-last images turned; else one error."""
    given = x.shape
    if x.dtype.kind not in "fiub":
        raise CommandError(f"{path}: expected integer or float pixels, got {x.dtype}")
    if x.ndim == len(shape) and shape[0] == 1 and len(shape) == 3:  # (n, h, w): one input plane
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1:] != shape and x.shape[-1] == shape[0] and x.shape[1:3] == shape[1:]:
        x = x.transpose(0, 3, 1, 2)                              # (n, h, w, c): channels last
    if x.shape[1:] != shape:
        if files and len(shape) == 3:
            raise CommandError(f"{path}: the model takes images of {shape[0]} channel(s) of {shape[2]}x{shape[1]} "
                               f"pixels, got {given[1]} channel(s) of {given[3]}x{given[2]}")
        c, rest = shape[0], ", ".join(map(str, shape[1:]))
        forms = (f"(n, {rest})" if c == 1 else f"(n, {c}, {rest}) or (n, {rest}, {c})") if len(shape) == 3 \
            else f"(n, {', '.join(map(str, shape))})"
        raise CommandError(f"{path}: expected {'images' if len(shape) == 3 else 'samples'} of shape {forms}, "
                           f"got {given}")
    return x


PREDICT_BATCH = 4096
MAX_GRADCHECK_INPUT = 1 << 16


def _open_images(path: Path) -> np.ndarray:
    """The images of an .npy file (memory-mapped: read as they are used) or of an IDX file."""
    if path.suffix.lower() in (".npz", ".csv"):
        raise CommandError(f"{path}: predict reads images (IDX, .npy, PNG/JPEG files or folders) or an .npy of "
                           f"feature vectors, not {path.suffix}; save the inputs as an .npy array")
    if path.suffix != ".npy":
        return read_idx(path)
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        text = str(e).split(";")[0]
        if "pickle" in text or "object" in text:
            text = "it holds Python objects, which are refused: loading them could run code"
        raise CommandError(f"{path}: not a readable .npy array ({text})") from None
    if not isinstance(x, np.ndarray):
        raise CommandError(f"{path}: expected one array in a .npy file, got an .npz archive")
    return x


def cmd_export(args) -> int:
    from fbprop import export

    if not (args.onnx or args.safetensors):
        raise CommandError("nothing to export: give --onnx FILE, --safetensors FILE or both")
    _, spec, machine = _load_model(args.checkpoint)
    try:
        if args.onnx:
            norm = spec.get("normalisation") if args.normalisation else None
            export.to_onnx(machine, args.onnx, normalisation=norm)
            takes = f"pixel values 0-{norm['pixel_scale']:g}" if norm else "standardised images"
            print(f"ONNX model written to {args.onnx}: input x (n, {', '.join(map(str, spec['input_shape']))}) "
                  f"of {takes}, output energies (n, {spec['n_classes']})")
            if machine.test_mirror or machine.test_shift:
                views = [*(["x[..., ::-1]"] if machine.test_mirror else []),
                         *([f"copies moved by {machine.test_shift} px each way (edges repeated)"]
                           if machine.test_shift else [])]
                print(f"note: {args.checkpoint} infers on several views of each image; the ONNX graph gives the "
                      f"energies of x alone: average them over x, {' and '.join(views)} for fbprop's answers")
        if args.safetensors:
            export.save_safetensors(machine, args.safetensors)
            print(f"weights written to {args.safetensors}: {', '.join(export.state_dict(machine))}")
    except ImportError as e:
        raise CommandError(str(e)) from None
    return 0


def cmd_gradcheck(args) -> int:
    from fbprop.gradcheck import gradcheck
    from fbprop.state import State

    if math.prod(args.input_shape) > MAX_GRADCHECK_INPUT:
        raise CommandError(f"--input-shape: expected at most {MAX_GRADCHECK_INPUT} values a sample, "
                           f"got {math.prod(args.input_shape)}")
    spec = {**default_spec(args.model), "input_shape": args.input_shape, "n_classes": 10, "dtype": "float64"}
    machine = build_machine(spec)
    rng = np.random.default_rng(0)
    state = State(rng.standard_normal((2, *args.input_shape)))
    failures = 0
    for m in [*leaves(machine.net), machine.energy]:
        # each module sees the batch's state where it stands in the net, moved by a little noise: a ReLU's
        # zeros would tie in the windows of a max-pooling that follows, where max is not differentiable
        x = state.x + 1e-3 * rng.standard_normal(state.x.shape)
        report = gradcheck(m, x, samples=args.samples, raise_on_fail=False)
        print(f"{'ok  ' if report.ok else 'FAIL'} {m!r}: {len(report.checked)} checks")
        for line in report.failures:
            print("     " + line)
        failures += not report.ok
        out = State()
        m.fprop(state, out)
        state = out
    print(f"{args.model}: {'all modules pass' if not failures else f'{failures} modules fail'}")
    return 1 if failures else 0


def _parallel(use_mpi: bool | None):
    """The DataParallel reducer of this process when MPI is in use, else None."""
    from fbprop.distributed import DataParallel, MPIUnavailable
    try:
        comm = world(use_mpi)
    except MPIUnavailable as e:
        raise CommandError(str(e)) from None
    return DataParallel(comm) if comm is not None else None


def _guarded(parallel, command, args) -> int:
    with parallel.guard(f"fbprop {args.command}", USER_ERRORS, collective=(CollectiveError,)):
        return command[args.command](args)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    command = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "gradcheck": cmd_gradcheck,
               "siamese": cmd_siamese, "export": cmd_export}
    parallel = None
    try:
        if args.command == "train":
            args.parallel = parallel = _parallel(args.mpi)
            if parallel is not None:
                return _guarded(parallel, command, args)
        return command[args.command](args)
    except USER_ERRORS as e:
        if os.environ.get("FBPROP_DEBUG", "0") not in ("", "0"):
            raise
        if parallel is None or parallel.is_root:
            print(f"fbprop {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fbprop {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
