"""The `fbprop` command: train, eval, predict, gradcheck.

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

from fbprop.checkpoint import CheckpointError, atomic_write, load_checkpoint
from fbprop.data.datasets import DATASETS, load_dataset
from fbprop.data.idx import IdxError, read_idx
from fbprop.distributed import DataParallel, MPIUnavailable, world
from fbprop.losses import LOSSES
from fbprop.models import ENERGIES, MODELS, SQUASHES, build_machine, default_spec
from fbprop.train import OPTIMIZERS, SCHEDULES, Trainer, TrainingDiverged, evaluate

DEFAULT_LR = {"sgd": 0.05, "momentum": 0.01, "sdlm": 0.001, "batch": 0.5, "lbfgs": 1.0}
RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.json", "metrics.csv", "result.json")
CLASS_NAMES = {"fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]}


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


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="NAME",
                   help=f"dataset: {', '.join(DATASETS)}, or a directory holding the four MNIST-format files "
                        "(default: a checkpoint's own, else digits, scikit-learn's bundled 8x8 digits)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="where the dataset's files are (or set FBPROP_DATA)")
    p.add_argument("--limit", type=_positive(int), default=None, help="use at most this many training samples")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fbprop", description="Gradient-based learning in multi-module systems.",
                                     epilog="Errors are one line on stderr; set FBPROP_DEBUG=1 for a traceback.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write checkpoint, metrics and plots",
                       formatter_class=_DefaultsFormatter)
    _data_args(t)
    t.add_argument("--model", default="mlp", choices=MODELS)
    t.add_argument("--hidden", type=_sizes, default=None, help="hidden layer sizes of mlp (default 300,100)")
    t.add_argument("--squash", default=None, choices=list(SQUASHES), help="mlp's sigmoid (default tanh)")
    t.add_argument("--energy", default=None, choices=ENERGIES,
                   help="scores: energies are negated outputs; rbf: distances to per-class target codes")
    t.add_argument("--loss", default=None, choices=list(LOSSES), help="energy-based loss (default nll)")
    t.add_argument("--beta", type=_positive(float), default=None, help="inverse temperature of the nll loss")
    t.add_argument("--margin", type=_positive(float), default=None, help="margin of hinge / square-square")
    t.add_argument("--optimizer", default=None, choices=OPTIMIZERS, help="update rule (default sgd)")
    t.add_argument("--lr", type=_positive(float), default=None,
                   help="learning rate η (default per optimizer: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--mu", type=_positive(float), default=0.02, help="SDLM's μ in η/(μ + h_kk)")
    t.add_argument("--hessian-samples", type=_positive(int), default=500, help="samples for SDLM's Hessian estimate")
    t.add_argument("--schedule", default="constant", choices=SCHEDULES)
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=_positive(int), default=32, help="1 is on-line learning")
    t.add_argument("--l2", type=float, default=0.0, help="λ of the L2 regularizer ½‖W‖²")
    t.add_argument("--l1", type=float, default=0.0, help="λ of the L1 regularizer ‖W‖₁")
    t.add_argument("--val-size", type=float, default=0.1, help="validation fraction (or count) of the training set")
    t.add_argument("--patience", type=_positive(int), default=None, help="early stopping after this many epochs "
                   "without a better validation error")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, metavar="DIR", help="output directory (default runs/DATA-MODEL-TIME)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its checkpoint.npz (or its directory); the model, data split, "
                        "seed and dtype are the run's, the optimizer and lr too unless given")
    t.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")
    t.add_argument("--mpi", action=argparse.BooleanOptionalAction, default=None,
                   help="data-parallel training over the MPI processes of `mpiexec -n K fbprop train ...` "
                        "(default: when an MPI launcher started several processes)")

    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    e.add_argument("checkpoint", help="a checkpoint .npz or a run directory (uses best.npz there)")
    _data_args(e)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])

    p = sub.add_parser("predict", help="answers of a checkpoint for images in an IDX or .npy file")
    p.add_argument("checkpoint")
    p.add_argument("file", help="images (n, h, w) as IDX (.idx3-ubyte, optionally .gz) or .npy")
    p.add_argument("--out", default=None, help="write the answers to this .npy (default: print them)")

    g = sub.add_parser("gradcheck", help="finite-difference check of every module of a model (float64)")
    g.add_argument("model", choices=MODELS)
    g.add_argument("--input-shape", type=_sizes, default=[1, 28, 28], help="one sample's shape, e.g. 1,28,28")
    g.add_argument("--samples", type=_positive(int), default=20, help="entries checked per input and parameter")
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
        path, spec, machine = _load_model(args.eval)
        data = load_dataset(args.data or spec.get("dataset", "digits"), args.data_dir, val_size=0,
                            seed=spec.get("seed", 0), dtype=machine.pool.dtype, limit=args.limit)
        print(json.dumps({"checkpoint": str(path), **evaluate_siamese(machine, data, args.k)}))
        return 0
    data = load_dataset(name, args.data_dir, val_size=0, seed=args.seed, dtype=np.dtype(args.dtype), limit=args.limit)
    out = Path(args.out) if args.out else Path("runs") / f"{data.name}-siamese-{time.strftime('%Y%m%d-%H%M%S')}"
    _refuse_existing_run(out)
    result = train_siamese(data, hidden=args.hidden, dim=args.dim, margin=args.margin, lr=args.lr,
                           momentum=args.momentum, batch_size=args.batch_size, epochs=args.epochs, pairs=args.pairs,
                           k=args.k, seed=args.seed, dtype=args.dtype, out_dir=out)
    print(f"{args.k}-NN test accuracy in the learned {args.dim}-D space {100 * result['knn_test_accuracy']:.2f}%"
          f" after {result['epochs']} epochs in {result['train_seconds']:.1f}s; results in {out}")
    return 0


def _spec(args, data) -> dict:
    spec = default_spec(args.model)
    for key in ("hidden", "squash", "energy", "loss"):
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    loss_args = dict(spec.get("loss_args", {})) if spec.get("loss") == default_spec(args.model)["loss"] else {}
    if args.beta is not None:
        loss_args["beta"] = args.beta
    if args.margin is not None:
        loss_args["margin"] = args.margin
    spec["loss_args"] = loss_args
    if args.l2 and args.l1:
        raise CommandError("give one regularizer: --l2 or --l1, not both")
    if args.l2 or args.l1:
        spec["regularizer"] = {"kind": "l2" if args.l2 else "l1", "lam": args.l2 or args.l1}
    spec.update(input_shape=list(data.image_shape), n_classes=data.n_classes, dtype=args.dtype, seed=args.seed,
                dataset=data.name, val_size=len(data.val), limit=args.limit,
                normalisation={"mean": data.mean, "std": data.std,
                                                  "pixel_scale": 16.0 if data.name == "digits" else 255.0})
    return spec


def _build(spec: dict):
    try:
        return build_machine(spec)
    except TypeError as e:
        raise CommandError(f"bad option for loss {spec.get('loss')!r}: {e}") from None


def _run_data(path: Path, spec: dict, args, limit: int | None):
    """The data set a checkpoint was trained on: its split (seed, validation size) and its standardisation."""
    data = load_dataset(args.data or spec.get("dataset", "digits"), args.data_dir, val_size=spec.get("val_size", 0.1),
                        seed=spec.get("seed", 0), dtype=np.dtype(spec.get("dtype", "float32")), limit=limit)
    if list(data.image_shape) != list(spec["input_shape"]) or data.n_classes != spec["n_classes"]:
        raise CommandError(f"{path}: the model expects images {tuple(spec['input_shape'])} in {spec['n_classes']} "
                           f"classes, dataset {data.name} has {data.image_shape} in {data.n_classes}")
    norm = spec["normalisation"]
    if (data.mean, data.std) != (norm["mean"], norm["std"]):    # the model's x' = (x − mean) / std, not this split's
        for split in (data.train, data.val, data.test):
            split.x *= split.x.dtype.type(data.std / norm["std"])
            split.x += split.x.dtype.type((data.mean - norm["mean"]) / norm["std"])
    return data


def _refuse_existing_run(out: Path) -> None:
    if any((out / name).exists() for name in RUN_FILES):
        raise CommandError(f"{out} already holds a run; pass --resume {out / 'checkpoint.npz'} or another --out")


def _parallel(use_mpi: bool | None) -> DataParallel | None:
    try:
        comm = world(use_mpi)
    except MPIUnavailable as e:
        raise CommandError(str(e)) from None
    return DataParallel(comm) if comm is not None else None


def cmd_train(args) -> int:
    parallel = getattr(args, "parallel", None)
    root = parallel is None or parallel.is_root
    if args.epochs < 0:
        raise CommandError(f"--epochs: expected a count >= 0, got {args.epochs}")
    if args.resume:
        resume = Path(args.resume)
        resume = resume / "checkpoint.npz" if resume.is_dir() else resume
        spec, state = None, None
        if root:                                                 # rank 0 reads, the others hear
            spec, _, _, state = load_checkpoint(resume)
        if parallel is not None:
            spec, state = parallel.share((spec, state))
        data = _run_data(resume, spec, args, spec.get("limit"))
        out = Path(args.out) if args.out else resume.parent
        if out != resume.parent and root:
            _refuse_existing_run(out)
        optimizer = args.optimizer or state.get("optimizer", "sgd")
        lr = args.lr or (state.get("lr") if optimizer == state.get("optimizer") else None)
    else:
        val = int(args.val_size) if args.val_size >= 1 else args.val_size
        data = load_dataset(args.data or "digits", args.data_dir, val_size=val, seed=args.seed,
                            dtype=np.dtype(args.dtype), limit=args.limit)
        spec = _spec(args, data)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path("runs") / f"{data.name}-{args.model}-{stamp}"
        if parallel is not None:
            out = parallel.share(out)                            # rank 0's clock names the run
        if root:
            _refuse_existing_run(out)
        optimizer, lr = args.optimizer or "sgd", args.lr
    lr = lr or DEFAULT_LR[optimizer]
    machine = _build(spec)
    trainer = Trainer(machine, data, optimizer=optimizer, lr=lr, batch_size=args.batch_size, epochs=args.epochs,
                      momentum=args.momentum, mu=args.mu, schedule=args.schedule, patience=args.patience,
                      seed=spec["seed"], hessian_samples=args.hessian_samples, out_dir=out, progress=args.progress,
                      comm=parallel.comm if parallel is not None else None)
    if args.resume:
        trainer.resume(resume)
    if root:
        where = f" on {parallel.size} processes" if parallel is not None else ""
        print(f"fbprop train: {data.name} ({len(data.train)} train / {len(data.val)} val / {len(data.test)} test), "
              f"{machine.pool.size} parameters, {optimizer} lr {lr:g}, batch {args.batch_size}{where}, -> {out}",
              file=sys.stderr)
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
    best = trainer.best_error if len(data.val) and math.isfinite(trainer.best_error) else None   # strict JSON
    summary = {"test_error": test.error, "test_loss": test.loss, "seconds": round(seconds, 2),
               "epochs": trainer.epoch, "best_val_error": best,
               "confusion": test.confusion.tolist()}
    text = json.dumps(summary, indent=1)
    atomic_write(out / "result.json", lambda f: f.write(text.encode()))
    if not args.no_plots:
        from fbprop.plots import plot_confusion, plot_curves
        plot_curves(trainer.history, out / "curves.png", f"{spec['model']} on {data.name}")
        plot_confusion(test.confusion, out / "confusion.png", f"{spec['model']} on {data.name}: test",
                       CLASS_NAMES.get(data.name))
    print(f"test error {100 * test.error:.2f}% (accuracy {100 * (1 - test.error):.2f}%) "
          f"after {trainer.epoch} epochs in {seconds:.1f}s; results in {out}")
    return 0


def _load_model(checkpoint: str):
    """The machine of a checkpoint file, or of a run directory's best.npz (else its checkpoint.npz)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.npz" if (path / "best.npz").exists() else path / "checkpoint.npz"
    spec, params, _, _ = load_checkpoint(path)
    machine = _build(spec)
    machine.pool.load(params)
    return path, spec, machine


def cmd_eval(args) -> int:
    path, spec, machine = _load_model(args.checkpoint)
    data = _run_data(path, spec, args, args.limit)
    split = getattr(data, args.split)
    meter = evaluate(machine, split, data.n_classes)
    print(json.dumps({"split": args.split, "samples": len(split), "error": meter.error,
                      "accuracy": 1 - meter.error, "loss": meter.loss}))
    return 0


def cmd_predict(args) -> int:
    _, spec, machine = _load_model(args.checkpoint)
    path = Path(args.file)
    if not path.exists():
        raise CommandError(f"{path}: no such file")
    x = np.load(path, allow_pickle=False) if path.suffix == ".npy" else read_idx(path)
    if not isinstance(x, np.ndarray):
        raise CommandError(f"{path}: expected one array in a .npy file, got an .npz archive")
    shape, given = tuple(spec["input_shape"]), x.shape
    if x.ndim == len(shape) and shape[0] == 1:                  # (n, h, w): one input plane
        x = x[:, None]
    if x.shape[1:] != shape:
        raise CommandError(f"{path}: expected images of shape (n, {', '.join(map(str, shape[1:]))}), got {given}")
    norm = spec["normalisation"]
    x = x.astype(np.float64) / norm["pixel_scale"] if x.dtype.kind in "iu" else x.astype(np.float64)
    if not np.isfinite(x).all():
        raise CommandError(f"{path}: the images hold NaN or infinite values")
    x = ((x - norm["mean"]) / norm["std"]).astype(machine.pool.dtype)
    answers = machine.predict(x)
    if args.out:
        atomic_write(args.out, lambda f: np.save(f, answers))
        print(f"{len(answers)} answers written to {args.out}")
    else:
        print("\n".join(map(str, answers.tolist())))
    return 0


def cmd_gradcheck(args) -> int:
    from fbprop.gradcheck import gradcheck
    from fbprop.machine import _leaves
    from fbprop.state import State

    spec = {**default_spec(args.model), "input_shape": args.input_shape, "n_classes": 10, "dtype": "float64"}
    machine = _build(spec)
    state = State(np.random.default_rng(0).standard_normal((2, *args.input_shape)))
    failures = 0
    for m in [*_leaves(machine.net), machine.energy]:
        report = gradcheck(m, state.x.copy(), samples=args.samples, raise_on_fail=False)
        print(f"{'ok  ' if report.ok else 'FAIL'} {m!r}: {len(report.checked)} checks")
        for line in report.failures:
            print("     " + line)
        failures += not report.ok
        out = State()
        m.fprop(state, out)
        state = out
    print(f"{args.model}: {'all modules pass' if not failures else f'{failures} modules fail'}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    command = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "gradcheck": cmd_gradcheck,
               "siamese": cmd_siamese}
    parallel = None
    try:
        if args.command == "train":
            args.parallel = parallel = _parallel(args.mpi)
        if parallel is None:
            return command[args.command](args)
        with parallel.abort_on_error(f"fbprop {args.command}", USER_ERRORS, collective=(CollectiveError,)):
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
