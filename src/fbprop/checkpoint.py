"""Checkpoints: the architecture as JSON plus flat vectors in one .npz — no pickle anywhere.

Loading an untrusted checkpoint cannot run code: arrays are read with allow_pickle=False and
the architecture is a JSON spec that `fbprop.models.build_machine` interprets. Saving writes a
temporary file in the same directory, fsyncs it and renames it over the old one, so a process
killed mid-save leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import json
import math
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
    and the trainer's arrays as a fifth item `with_arrays`.

    Everything is checked before use: the archive's members (no compressed or oversized member,
    no Python objects), the JSON (its depth and size), the architecture's and the trainer state's
    fields against their schema, and every vector's dtype and length against the parameters'.
    Any failure is one CheckpointError naming the file and the field.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{path}: expected a checkpoint file, got {_kind(path)}")
    try:
        with open(path, "rb") as f:
            if not zipfile.is_zipfile(f):
                raise CheckpointError(f"{path}: corrupt or unreadable checkpoint (not an .npz archive)")
            f.seek(0)
            _check_members(path, f)
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                if "format" not in z.files or _text(z["format"]) != FORMAT:
                    raise CheckpointError(f"{path}: not an fbprop checkpoint (expected format {FORMAT})")
                for key in ("architecture", "params", "trainer"):
                    if key not in z.files:
                        raise CheckpointError(f"{path}: the checkpoint has no {key!r}")
                spec = _json(path, "architecture", z["architecture"])
                params = z["params"]
                trainer = _json(path, "trainer", z["trainer"])
                optimizer = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("optimizer/")}
                arrays = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("state/")}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        text = str(e).split(";")[0]                               # not numpy's hint to load it unsafely
        if "pickle" in text:
            text = "it holds Python objects, which are refused: loading them could run code"
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {text})") from None
    if params.ndim != 1 or params.dtype.kind != "f":
        raise CheckpointError(f"{path}: expected a 1-D float parameter vector, got {params.dtype} {params.shape}")
    check_spec(path, spec)
    _check_trainer(path, trainer)
    for name, v in [*(("optimizer/" + k, v) for k, v in optimizer.items()),
                    *(("state/" + k, v) for k, v in arrays.items())]:
        scalar = v.ndim == 0 and v.dtype.kind in "iuf" and np.isfinite(v)      # a step count, say
        if not scalar and (v.dtype.kind != "f" or v.shape != params.shape):
            raise CheckpointError(f"{path}: {name}: expected a float vector of {params.size} like the parameters, "
                                  f"or one number, got {v.dtype} {v.shape}")
    return (spec, params, optimizer, trainer, arrays) if with_arrays else (spec, params, optimizer, trainer)


MAX_JSON = 64 << 20                                              # bytes of JSON text in one member
MAX_DEPTH = 32


def _kind(path: Path) -> str:
    return "a directory" if path.is_dir() else "a device, FIFO or socket"


def _check_members(path: Path, f) -> None:
    """Refuse compressed members (fbprop never writes them: a zip bomb is one) and members whose
    .npy header announces more bytes than the member holds, before anything is read."""
    with zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(f"{path}: {info.filename}: compressed members are refused (fbprop writes none)")
            with archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member)
                except ValueError as e:
                    raise CheckpointError(f"{path}: {info.filename}: not a .npy array ({e})") from None
            if dtype.hasobject:
                raise CheckpointError(f"{path}: {info.filename}: holds Python objects, which are refused: "
                                      "loading them could run code")
            if math.prod(shape) * dtype.itemsize > info.file_size:
                raise CheckpointError(f"{path}: {info.filename}: its header announces {shape} of {dtype}, "
                                      f"more than the {info.file_size} bytes it holds")


def _text(a: np.ndarray) -> str:
    if a.dtype.kind != "U" or a.ndim != 0:
        raise CheckpointError("expected a text member")
    return str(a)


def _json(path: Path, name: str, a: np.ndarray) -> dict:
    if a.dtype.kind != "U" or a.ndim != 0 or a.dtype.itemsize > 4 * MAX_JSON:
        raise CheckpointError(f"{path}: {name}: expected JSON text, got {a.dtype} {a.shape}")
    text = str(a)
    depth = max(_depths(text), default=0)
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{path}: {name}: JSON nested {depth} deep, more than {MAX_DEPTH}")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as e:
        raise CheckpointError(f"{path}: {name}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: {name}: expected a JSON object, got {type(value).__name__}")
    return value


def _depths(text: str):
    depth = 0
    for ch in text:                                              # brackets inside strings only overcount
        if ch in "[{":
            depth += 1
            yield depth
        elif ch in "]}":
            depth -= 1


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _field(path, where: str, value, kinds, check=None, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, kinds) or (check is not None and not check(value)):
        raise CheckpointError(f"{path}: {where}: expected {what}, got {value!r}"[:300])


MAX_SIZE = 1 << 24                                               # a bound on any size read from a checkpoint


def check_spec(path, spec: dict) -> None:
    """The architecture's fields that are present have the types and ranges a machine can be built from."""
    def size(v):
        return 1 <= v <= MAX_SIZE
    if "model" in spec:
        _field(path, "architecture.model", spec["model"], str, what="a model name")
    if "input_shape" in spec:
        shape = spec["input_shape"]
        _field(path, "architecture.input_shape", shape, list, lambda s: 1 <= len(s) <= 4, "a list of 1 to 4 sizes")
        for v in shape:
            _field(path, "architecture.input_shape", v, int, size, f"sizes from 1 to {MAX_SIZE}")
        _field(path, "architecture.input_shape", math.prod(shape), int, size, f"at most {MAX_SIZE} values a sample")
    if "n_classes" in spec:
        _field(path, "architecture.n_classes", spec["n_classes"], int, lambda v: 1 <= v <= 65536, "1 to 65536")
    for key in ("hidden", "maps"):
        if key in spec:
            _field(path, f"architecture.{key}", spec[key], list, what="a list of layer sizes")
            for v in spec[key]:
                _field(path, f"architecture.{key}", v, int, size, f"sizes from 1 to {MAX_SIZE}")
    if "task" in spec:
        _field(path, "architecture.task", spec["task"], str, lambda v: v in ("classification", "regression"),
               "classification or regression")
    if "class_names" in spec:
        _field(path, "architecture.class_names", spec["class_names"], list,
               lambda v: len(v) == spec.get("n_classes", len(v)) and all(isinstance(n, str) for n in v),
               "one name (a string) per class")
    for key in ("squash", "energy", "loss", "dataset", "label_column"):
        if key in spec:
            _field(path, f"architecture.{key}", spec[key], str, what="a name")
    if "test_mirror" in spec and not isinstance(spec["test_mirror"], bool):
        got = repr(spec["test_mirror"])[:100]
        raise CheckpointError(f"{path}: architecture.test_mirror: expected true or false, got {got}")
    if "test_shift" in spec:
        _field(path, "architecture.test_shift", spec["test_shift"], int, lambda v: 0 <= v <= 64, "0 to 64 pixels")
    if "dtype" in spec:
        _field(path, "architecture.dtype", spec["dtype"], str, lambda v: v in ("float32", "float64"),
               "float32 or float64")
    if "seed" in spec:
        _field(path, "architecture.seed", spec["seed"], int, lambda v: v >= 0, "an int >= 0")
    if "loss_args" in spec:
        _field(path, "architecture.loss_args", spec["loss_args"], dict, what="an object")
        for k, v in spec["loss_args"].items():
            _field(path, f"architecture.loss_args.{k}", v, (int, float), math.isfinite, "a finite number")
    if spec.get("regularizer") is not None:
        reg = spec["regularizer"]
        _field(path, "architecture.regularizer", reg, dict, lambda r: r.get("kind") in ("l1", "l2"),
               "{kind: l1|l2, lam}")
        _field(path, "architecture.regularizer.lam", reg.get("lam"), (int, float), math.isfinite, "a finite number")
    if "normalisation" in spec:
        norm = spec["normalisation"]
        _field(path, "architecture.normalisation", norm, dict, what="{mean, std, pixel_scale}")
        for key in ("mean", "std", "pixel_scale"):
            if key in norm or key != "pixel_scale":
                _field(path, f"architecture.normalisation.{key}", norm.get(key), (int, float),
                       lambda v, key=key: math.isfinite(v) and (key == "mean" or v > 0), "a finite number")


def _check_trainer(path, state: dict) -> None:
    """The trainer state's fields that are present have the types the loop reads."""
    for key in ("epoch", "step"):
        if key in state:
            _field(path, f"trainer.{key}", state[key], int, lambda v: 0 <= v <= 1 << 40, "an int >= 0")
    if "history" in state:
        _field(path, "trainer.history", state["history"], list, lambda h: all(isinstance(r, dict) for r in h),
               "a list of records")
    for key in ("settings", "extensions"):
        if key in state:
            _field(path, f"trainer.{key}", state[key], dict, what="an object")
    best = state.get("extensions", {}).get("best")
    if best is not None:
        _field(path, "trainer.extensions.best", best, dict, what="an object")
        for key in ("error", "loss"):
            if best.get(key) is not None:
                _field(path, f"trainer.extensions.best.{key}", best[key], (int, float), math.isfinite,
                       "a finite number or null")
        _field(path, "trainer.extensions.best.stale", best.get("stale", 0), int, lambda v: v >= 0, "an int >= 0")
