"""Checkpoints: the architecture as JSON plus flat vectors in one .npz — no pickle anywhere.

Loading an untrusted checkpoint cannot run code: arrays are read with allow_pickle=False and
the architecture is a JSON spec that `fbprop.models.build_machine` interprets. Saving writes a
temporary file in the same directory, fsyncs it and renames it over the old one, so a process
killed mid-save leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from fbprop.files import atomic_write

FORMAT = "fbprop-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as one."""


def save_checkpoint(path: str | os.PathLike, spec: dict, params: np.ndarray,
                    optimizer: dict[str, np.ndarray] | None = None, trainer: dict | None = None,
                    state_arrays: dict[str, np.ndarray] | None = None) -> None:
    """Write a checkpoint atomically: the architecture `spec`, the flat `params`, the optimizer's
    slots, the trainer's JSON state and its arrays (e.g. the best parameters)."""
    arrays = {"format": np.array(FORMAT), "architecture": np.array(json.dumps(spec)),
              "params": params, "trainer": np.array(json.dumps(trainer or {}))}
    arrays.update({f"optimizer/{k}": v for k, v in (optimizer or {}).items()})
    arrays.update({f"state/{k}": v for k, v in (state_arrays or {}).items()})
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike, with_arrays: bool = False) -> tuple:
    """(spec, params, optimizer slots, trainer state) from a checkpoint file (or a run directory),
    and the trainer's arrays as a fifth item `with_arrays`."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:   # np.load leaks the file of a bad zip
            if "format" not in z.files or str(z["format"]) != FORMAT:
                raise CheckpointError(f"{path}: not an fbprop checkpoint (expected format {FORMAT})")
            spec = json.loads(str(z["architecture"]))
            params = z["params"]
            trainer = json.loads(str(z["trainer"]))
            optimizer = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("optimizer/")}
            arrays = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("state/")} if with_arrays else None
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(spec, dict) or not isinstance(trainer, dict):
        raise CheckpointError(f"{path}: expected JSON objects for the architecture and the trainer state")
    if params.ndim != 1 or params.dtype.kind != "f":
        raise CheckpointError(f"{path}: expected a 1-D float parameter vector, got {params.dtype} {params.shape}")
    return (spec, params, optimizer, trainer, arrays) if with_arrays else (spec, params, optimizer, trainer)
