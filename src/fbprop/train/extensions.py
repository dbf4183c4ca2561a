"""Extensions: what the epoch loop calls around the updater — logs, progress, best parameters,
early stopping, checkpoints, metrics files, plots, and a user's own callbacks.

An extension overrides the hooks it needs (Keras-style names); the loop calls them in list order.
Setting `trainer.stop` to a reason ends training after the current epoch. An extension with
state to keep across a resume returns it from `state()` (JSON) and `arrays()` (flat vectors) and
takes it back in `load(state, arrays)`; checkpoints carry it under the extension's `name`.
Extensions that print or write files act on the first process only (`trainer.is_root`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from fbprop.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fbprop.files import atomic_write

if TYPE_CHECKING:
    from fbprop.train.loop import Trainer


class Extension:
    """Hooks of the epoch loop; each does nothing unless overridden."""

    name = ""                                                    # the key of its state in checkpoints

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, samples: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict) -> None: ...
    def on_fit_end(self, trainer: Trainer) -> None: ...

    def state(self) -> dict:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def load(self, state: dict, arrays: dict[str, np.ndarray]) -> None: ...


class Callback(Extension):
    """A plain function called as fn(trainer, record) after each epoch."""

    def __init__(self, fn: Callable[[Trainer, dict], object]) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.fn(trainer, record)


class LogLine(Extension):
    """One line per epoch (`epoch 3 | lr 0.05 | train loss … | val err …% | 1.2s`) and why training stopped early."""

    def __init__(self, log: TextIO) -> None:
        self.log = log

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.is_root:
            self.log.write(self.line(record) + "\n")
            self.log.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.is_root and trainer.stop:
            self.log.write(f"{trainer.stop}\n")
            self.log.flush()

    @staticmethod
    def line(r: dict) -> str:
        parts = [f"epoch {r['epoch']:3d}", f"lr {r['lr']:.3g}" if r.get("lr") else "",
                 f"train loss {r['train_loss']:.4f}"]
        for split in ("train", "val", "test"):
            if f"{split}_error" in r and not math.isnan(r[f"{split}_error"]):
                parts.append(f"{split} err {100 * r[f'{split}_error']:.2f}%")
            elif f"{split}_rmse" in r:
                parts.append(f"{split} rmse {r[f'{split}_rmse']:.4g}")
            elif f"{split}_loss" in r and split != "train":
                parts.append(f"{split} loss {r[f'{split}_loss']:.4f}")
        parts.append(f"{r['seconds']:.1f}s")
        return " | ".join(p for p in parts if p)


class ProgressBar(Extension):
    """A tqdm bar over each epoch's training samples."""

    def __init__(self, log: TextIO) -> None:
        self.log, self.bar = log, None

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.is_root:
            from tqdm import tqdm
            self.bar = tqdm(total=len(trainer.data.train), desc=f"epoch {trainer.epoch + 1}/{trainer.epochs}",
                            unit="sample", file=self.log, leave=False)

    def on_batch_end(self, trainer: Trainer, samples: int) -> None:
        if self.bar is not None:
            self.bar.update(samples)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:                                 # an epoch that ended in an exception
            self.bar.close()
            self.bar = None


class BestParams(Extension):
    """Keeps the parameters of the lowest validation error (a regression's RMSE; the training one
    without a validation set), the lower loss breaking ties (a 144-sample validation set ties
    often); with `patience`, stops after that many epochs without a strictly lower error (only a
    strictly lower one resets it)."""

    name = "best"

    def __init__(self, patience: int | None = None) -> None:
        if patience is not None and not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"Trainer: expected patience None or >= 1, got {patience}")
        self.patience = patience
        self.error = self.loss = math.inf
        self.params: np.ndarray | None = None
        self.stale = 0
        self.epoch = 0                                           # the epoch whose parameters these are
        self.improved = False

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.improved = self.track(record, trainer.machine.pool.x)
        if self.patience is not None and self.stale >= self.patience:
            trainer.stop = f"early stopping: no better validation error for {self.patience} epochs"

    def track(self, record: dict, params: np.ndarray) -> bool:
        """Take `params` when the record's error (then loss) is the best so far; True when taken."""
        split = "val" if "val_loss" in record else "train"
        error, loss = record.get(f"{split}_error", math.nan), record.get(f"{split}_loss", math.inf)
        if math.isnan(error):                                    # a regression: its RMSE
            error = record.get(f"{split}_rmse", math.nan)
        if math.isnan(error):                                    # no answers (siamese): the loss decides
            error = loss
        if error is None or math.isnan(error):
            self.stale += 1
            return False
        self.stale = 0 if error < self.error else self.stale + 1
        if (error, loss) >= (self.error, self.loss):
            return False
        self.error, self.loss = error, loss
        self.epoch = int(record.get("epoch", 0))
        self.params = params.copy()
        return True

    def state(self) -> dict:
        return {"error": strict_json(self.error), "loss": strict_json(self.loss), "stale": self.stale,
                "epoch": self.epoch}

    def arrays(self) -> dict[str, np.ndarray]:
        return {} if self.params is None else {"params": self.params}

    def load(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        self.error = _or_inf(state.get("error"))
        self.loss = _or_inf(state.get("loss"))
        self.stale = int(state.get("stale", 0))
        self.epoch = int(state.get("epoch", 0))
        if "params" in arrays:
            self.params = arrays["params"].copy()


class Checkpoint(Extension):
    """After each epoch, out_dir/checkpoint.npz: everything a resume needs (parameters, optimizer
    slots, epoch, history, settings, the extensions' state, the best parameters among them), in
    one atomic write; then best.npz, the best parameters alone, when they changed."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_fit_start(self, trainer: Trainer) -> None:
        """A resumed run first makes best.npz agree with checkpoint.npz (a crash between their two
        writes leaves the older best.npz), and removes the temporary files a killed save left."""
        if not trainer.is_root:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for temp in self.out_dir.glob(".*.tmp"):
            temp.unlink(missing_ok=True)
        if trainer.best.params is not None:
            self.save_best(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if not trainer.is_root:
            return
        trainer.save(self.out_dir / "checkpoint.npz")
        if trainer.best.improved:
            self.save_best(trainer)

    def save_best(self, trainer: Trainer) -> None:
        best = trainer.best
        record = trainer.history[best.epoch - 1] if 0 < best.epoch <= len(trainer.history) else {}
        save_checkpoint(self.out_dir / "best.npz", trainer.machine.spec, best.params,
                        trainer={**record, "epoch": best.epoch})


class MetricsFiles(Extension):
    """out_dir/metrics.json and metrics.csv, one row per epoch, rewritten atomically after each."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if not trainer.is_root:
            return
        text = json.dumps(strict_json({"spec": trainer.machine.spec, "history": trainer.history}), indent=1,
                          allow_nan=False)
        atomic_write(self.out_dir / "metrics.json", lambda f: f.write(text.encode()))
        keys = sorted({k for r in trainer.history for k in r}, key=lambda k: (k != "epoch", k))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(trainer.history)
        atomic_write(self.out_dir / "metrics.csv", lambda f: f.write(buf.getvalue().encode()))


class Plots(Extension):
    """out_dir/curves.png, loss and error per epoch, when training ends."""

    def __init__(self, out_dir: str | Path, title: str = "") -> None:
        self.out_dir, self.title = Path(out_dir), title

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.is_root:
            from fbprop.plots import plot_curves
            plot_curves(trainer.history, self.out_dir / "curves.png", self.title)


def strict_json(value):
    """`value` with every NaN or infinity replaced by None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


class DistortionSamples(Extension):
    """out_dir/distortions.png when training starts: `samples` (n, c, h, w) in the first row and
    `rows` distorted copies by `transform` below, drawn from a generator of the trainer's seed
    (the training batches' own distortions are not disturbed)."""

    def __init__(self, out_dir: str | Path, transform: Callable, samples: np.ndarray, rows: int = 3) -> None:
        self.out_dir, self.transform, self.samples, self.rows = Path(out_dir), transform, samples, rows

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.is_root and trainer.epoch == 0:
            from fbprop.plots import plot_distortions
            rng = np.random.default_rng([trainer.seed, 1998])
            distorted = [self.transform(self.samples, rng) for _ in range(self.rows)]
            self.out_dir.mkdir(parents=True, exist_ok=True)
            plot_distortions(self.samples, distorted, self.out_dir / "distortions.png", repr(self.transform))


def _or_inf(v) -> float:
    return math.inf if v is None else float(v)


def standard(log: TextIO, best: BestParams, out_dir: str | Path | None, progress: bool | None) -> list[Extension]:
    """The Trainer's own extensions: a progress bar on a terminal (or when asked) and the log line,
    best parameters and early stopping, and with `out_dir` checkpoints and metrics files."""
    bar = log.isatty() if progress is None else progress
    extensions = [ProgressBar(log)] if bar else []
    extensions += [LogLine(log), best]
    if out_dir is not None:
        extensions += [Checkpoint(out_dir), MetricsFiles(out_dir)]
    return extensions


def save_run(trainer: Trainer, path: str | Path) -> None:
    """checkpoint.npz: parameters, optimizer slots, epoch, step, history, settings and every
    extension's state and arrays, in one atomic write."""
    state = {"epoch": trainer.epoch, "step": trainer.step, "history": trainer.history,
             "settings": trainer.settings(), "extensions": {e.name: e.state() for e in trainer.extensions if e.name}}
    arrays = {f"{e.name}/{k}": v for e in trainer.extensions if e.name for k, v in e.arrays().items()}
    save_checkpoint(path, trainer.machine.spec, trainer.machine.pool.x, trainer.optimizer.state(), state, arrays)


def resume_run(trainer: Trainer, path: str | Path) -> None:
    """Put a checkpoint's parameters, optimizer slots, loop state and extension states into `trainer`."""
    r = trainer.machine.reducer
    with r.guard():
        params, opt, state, arrays = r.share(_read_run(path) if r.is_root else None)
    trainer.machine.pool.load(params)
    if state.get("settings", {}).get("optimizer") == trainer.optimizer_name:
        trainer.optimizer.load_state(opt)
    trainer.epoch, trainer.step = int(state["epoch"]), int(state["step"])
    trainer.history = list(state["history"])
    for e in trainer.extensions:
        if e.name:
            prefix = f"{e.name}/"
            e.load(state.get("extensions", {}).get(e.name, {}),
                   {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})


def _read_run(path: str | Path) -> tuple:
    _, params, opt, state, arrays = load_checkpoint(path, with_arrays=True)
    if "history" not in state:                                   # best.npz: resuming would lose the history
        raise CheckpointError(f"{path}: holds parameters but no training state; resume from checkpoint.npz")
    return params, opt, state, arrays
