"""Your own data: image folders, CSV files, .npz and .npy arrays, read into the arrays `load_dataset` splits.

- a folder of images in class sub-folders (`cats/1.png`, `dogs/7.jpg`, …), or a folder with `train/`
  and `test/` folders each holding the same class sub-folders. PNG, JPEG, BMP, GIF and TIFF through
  Pillow (`pip install fbprop[images]`); every image must have the same size; grey images give one
  input map, any colour one three (RGB; an alpha channel is dropped). Class names are the folders'.
- a CSV file with a header row: one column holds the answer (`label_column`, default "label", else
  the last column), every other column is a numeric feature.
- an .npz archive with `x_train`, `y_train` and optionally `x_test`, `y_test`: images (n, h, w),
  (n, c, h, w) or (n, h, w, c) with c in 1, 3, 4, or feature vectors (n, d); integer labels, or real
  targets (n,) or (n, t); optionally `class_names`, a string array.
- an .npy array (n, d + 1): d features and the answer in the last column.

Without a separate test set, `TEST_FRACTION` of the samples (drawn by a fixed seed, the same for
every run) are the test split. Like images, tables are standardised with one mean and one standard
deviation over all their values (the model's `Normalisation`, shared by train, eval and predict);
columns of very different scales are best standardised beforehand — `fbprop.sklearn`'s estimators
standardise column by column. Regression targets are used as given. The answers are labels
(classification) unless `task` says "regression", or it is "auto" and they are real numbers that
are not all whole.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.2
TEST_SEED = 12345
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
TASKS = ("auto", "classification", "regression")


class Raw:
    """What a reader found: inputs and answers of the training and test samples, and what they are."""

    def __init__(self, x, y, x_test, y_test, task: str, class_names: list[str] | None = None,
                 pixel_scale: float = 255.0) -> None:
        self.x, self.y, self.x_test, self.y_test = x, y, x_test, y_test
        self.task, self.class_names, self.pixel_scale = task, class_names, pixel_scale


def is_own(name: str) -> bool:
    """Whether `name` is a file or folder these readers take (not a built-in name, not an IDX folder)."""
    path = Path(os.path.expanduser(name))
    if path.is_file():
        return path.suffix.lower() in (".csv", ".npz", ".npy")
    return path.is_dir() and bool(_class_dirs(path) or (path / "train").is_dir())


def read_own(name: str, task: str = "auto", label_column: str | None = None) -> Raw:
    if task not in TASKS:
        raise ValueError(f"load_dataset: expected task one of {', '.join(TASKS)}, got {task!r}")
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return read_image_folders(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        x, y = read_csv(path, label_column)
        return _held_out(x, y, _answers(path, y, task))
    if suffix == ".npz":
        return read_npz(path, task)
    if suffix == ".npy":
        a = _load_npy(path)
        if a.ndim != 2 or a.shape[1] < 2:
            raise ValueError(f"{path}: expected an array (n, d + 1) of d features and the answer in the last column, "
                             f"got shape {a.shape}")
        return _held_out(a[:, :-1], a[:, -1], _answers(path, a[:, -1], task))
    raise ValueError(f"{path}: expected a folder of images, a .csv, .npz or .npy file, got {suffix or 'no suffix'}")


# image folders -----------------------------------------------------------------------------------
def read_image_folders(path: Path) -> Raw:
    if (path / "train").is_dir():
        if not (path / "test").is_dir():
            raise ValueError(f"{path}: has train/ but no test/ folder; give both, or the class folders alone")
        x, y, names = _read_classes(path / "train")
        x_test, y_test, test_names = _read_classes(path / "test", names)
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"{path / 'test'}: expected images of {_describe(x.shape[1:])} as in train/, "
                             f"got {_describe(x_test.shape[1:])}")
        return Raw(x, y, x_test, y_test, "classification", names)
    x, y, names = _read_classes(path)
    raw = _held_out(x, y, "classification")
    raw.class_names = names
    return raw


def _class_dirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")) if path.is_dir() else []


def _read_classes(path: Path, names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    dirs = _class_dirs(path)
    if names is None:
        names = [d.name for d in dirs]
        if len(names) < 2:
            raise ValueError(f"{path}: expected one sub-folder of images per class (at least 2), got {len(names)}")
    else:
        unknown = [d.name for d in dirs if d.name not in names]
        if unknown:
            raise ValueError(f"{path}: class folder {unknown[0]!r} is not one of the training classes {names}")
    files = [(f, names.index(d.name)) for d in dirs for f in sorted(d.iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    images = read_images([f for f, _ in files])
    return images, np.array([label for _, label in files], np.int64), names


def read_images(files: list[Path]) -> np.ndarray:
    """uint8 images (n, c, h, w) of one size: c = 1 if every image is grey, else 3 (RGB)."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading PNG/JPEG images needs Pillow: pip install 'fbprop[images]'") from None
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                grey = im.mode in ("1", "L", "LA", "I", "I;16", "F") or (im.mode == "P" and _grey_palette(im))
                arrays.append(np.asarray(im.convert("L" if grey else "RGB")))
        except OSError as e:
            raise ValueError(f"{f}: not a readable image ({e})") from None
    colour = any(a.ndim == 3 for a in arrays)
    arrays = [np.repeat(a[..., None], 3, axis=2) if colour and a.ndim == 2 else a for a in arrays]
    size = arrays[0].shape
    for f, a in zip(files, arrays):
        if a.shape[:2] != size[:2]:
            raise ValueError(f"{f}: expected every image of {size[1]}x{size[0]} pixels as {files[0].name}, "
                             f"got {a.shape[1]}x{a.shape[0]}; resize them to one size")
    x = np.stack(arrays)
    return x.transpose(0, 3, 1, 2).copy() if colour else x[:, None]


def _grey_palette(im) -> bool:
    palette = np.array(im.getpalette() or [0, 0, 0]).reshape(-1, 3)
    return bool((palette == palette[:, :1]).all())


# tables ------------------------------------------------------------------------------------------
def read_csv(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if r]
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header row and at least one row of values, got {len(rows)} rows")
    header = [h.strip() for h in rows[0]]
    if label_column is None:
        column = header.index("label") if "label" in header else len(header) - 1
    elif label_column in header:
        column = header.index(label_column)
    else:
        raise ValueError(f"{path}: no column {label_column!r} for the answers (columns: {', '.join(header)})")
    if len(header) < 2:
        raise ValueError(f"{path}: expected at least one feature column beside the answers, got {header}")
    values = np.empty((len(rows) - 1, len(header)), np.float64)
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: line {i}: expected {len(header)} values as the header, got {len(row)}")
        try:
            values[i - 2] = [float(v) for v in row]
        except ValueError:
            bad = next(v for v in row if not _is_float(v))
            raise ValueError(f"{path}: line {i}: expected numbers, got {bad!r}") from None
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: expected finite numbers, got NaN or inf")
    return np.delete(values, column, axis=1), values[:, column]


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def read_npz(path: Path, task: str) -> Raw:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npz archive without Python objects ({str(e).split(';')[0]})") \
            from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ValueError(f"{path}: expected arrays x_train, y_train (and optionally x_test, y_test), "
                             f"got {', '.join(arrays) or 'none'}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: give x_test and y_test together, or neither")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    x, y = _channels_first(path, arrays["x_train"]), arrays["y_train"]
    if "x_test" not in arrays:
        raw = _held_out(x, y, _answers(path, y, task))
    else:
        x_test = _channels_first(path, arrays["x_test"])
        if x_test.shape[1:] != x.shape[1:]:
            raise ValueError(f"{path}: x_test holds samples of shape {x_test.shape[1:]}, x_train {x.shape[1:]}")
        kind = _answers(path, y, task)
        raw = Raw(x, _cast(y, kind), x_test, _cast(arrays["y_test"], kind), kind)
    raw.class_names = names
    raw.pixel_scale = 255.0 if x.dtype == np.uint8 else 1.0
    return raw


def _channels_first(path: Path, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{path}: expected numeric inputs, got {x.dtype}")
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)                              # (n, h, w, c): channels last
    return x


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npy array without Python objects ({str(e).split(';')[0]})") \
            from None


def _answers(path: Path, y: np.ndarray, task: str) -> str:
    """The task the answers make: labels or real targets."""
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise ValueError(f"{path}: expected numeric answers, got {y.dtype}")
    whole = y.dtype.kind in "iub" or bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    if task == "classification" or (task == "auto" and whole and y.ndim == 1):
        if not whole or y.ndim != 1:
            raise ValueError(f"{path}: expected one whole-number label per sample for a classification, "
                             f"got {y.dtype} answers of shape {y.shape} (use --task regression)")
        return "classification"
    return "regression"


def _cast(y: np.ndarray, task: str) -> np.ndarray:
    y = np.asarray(y)
    return y.astype(np.int64) if task == "classification" else y.astype(np.float64).reshape(len(y), -1)


def _held_out(x: np.ndarray, y: np.ndarray, task: str) -> Raw:
    """TEST_FRACTION of the samples as the test split, the same ones every run."""
    y = _cast(y, task)
    n_test = math.ceil(TEST_FRACTION * len(y))
    if len(y) - n_test < 1:
        raise ValueError(f"expected at least 2 samples to hold {TEST_FRACTION:.0%} out for testing, got {len(y)}")
    order = np.random.default_rng(TEST_SEED).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    return Raw(x[train], y[train], x[test], y[test], task, pixel_scale=255.0 if x.dtype == np.uint8 else 1.0)


def _describe(shape: tuple) -> str:
    return f"{shape[0]} channel(s) of {shape[2]}x{shape[1]} pixels" if len(shape) == 3 else str(shape)
