"""Image classification data sets as standardised (n, 1, h, w) arrays, and mini-batches.

`digits` comes with scikit-learn; `fashion-mnist` and `mnist` are the four IDX files of
the MNIST family in a directory; any other name is taken as such a directory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike

from .idx import read_idx
from .own import is_own, read_own

__all__ = ["DATASETS", "Dataset", "Normalisation", "Split", "batches", "load_dataset"]

DATASETS: tuple[str, ...] = ("digits", "fashion-mnist", "mnist")
FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SYSTEM_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}
HOW_TO_GET = {
    "fashion-mnist": "install it with `apt-get install dataset-fashion-mnist`, "
    "or pass root=DIR (fbprop --data-dir DIR) or set FBPROP_DATA to a directory holding the four files",
    "mnist": "download the four MNIST files (train-images-idx3-ubyte.gz, ...) "
    "and pass root=DIR (fbprop --data-dir DIR) or set FBPROP_DATA to a directory with them in DIR/mnist",
}
# The digits test set is the same for every `seed`, so test scores stay comparable.
TEST_SEED = 12345
MAX_CLASSES = 65536
DIGITS_TEST_FRACTION = 0.2
CLASS_NAMES = {"fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
               "digits": [str(d) for d in range(10)], "mnist": [str(d) for d in range(10)]}


@dataclass
class Split:
    """Inputs `x` (n, …) — images (n, c, h, w) or feature vectors (n, d) — and their answers `y`,
    batch axis first: integer labels (n,) for a classifier, real-valued targets (n, t) for a regression."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        float_targets = self.y.dtype.kind == "f" and self.y.ndim == 2
        if self.x.shape[:1] != self.y.shape[:1] or not (self.y.ndim == 1 or float_targets):
            raise ValueError(
                f"Split: expected labels of shape ({self.x.shape[0]},) or real targets of shape "
                f"({self.x.shape[0]}, t) to match inputs {self.x.shape}, got {self.y.shape} ({self.y.dtype})"
            )

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Normalisation:
    """Raw pixels to a model's inputs: x' = (x / pixel_scale − mean) / std.

    `pixel_scale` brings integer pixels to [0, 1] (255 for 8-bit images, 16 for the digits'
    counts, 1 for float images taken as already in [0, 1]); `mean` and `std` are those of
    the training split after that scaling. Training, evaluation and prediction all go through it.
    """

    mean: float
    std: float
    pixel_scale: float = 255.0

    def __call__(self, x: np.ndarray, dtype: DTypeLike = np.float32, unit: bool = False) -> np.ndarray:
        """Standardised float copy of raw images `x` (`unit`: already scaled to [0, 1])."""
        dtype = np.dtype(dtype)
        x = _to_unit(x, 1.0 if unit else 1.0 / self.pixel_scale, dtype)
        x -= dtype.type(self.mean)
        x /= dtype.type(self.std)
        return x

    def convert(self, x: np.ndarray, target: Normalisation) -> None:
        """Re-standardise `x` (standardised by this) in place as `target` would have."""
        x *= x.dtype.type(self.std / target.std)
        x += x.dtype.type((self.mean - target.mean) / target.std)

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "pixel_scale": self.pixel_scale}

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        return cls(float(d["mean"]), float(d["std"]), float(d.get("pixel_scale", 255.0)))


@dataclass
class Dataset:
    """Train/val/test splits standardised with the train split's pixel `mean` and `std`.

    `task` is "classification" (`n_classes` labels) or "regression" (`n_classes` is then the
    number of real-valued targets per sample, the width of the machine's output); `class_names`
    names the classes where they are known.
    """

    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    image_shape: tuple[int, ...]
    mean: float
    std: float
    pixel_scale: float = 255.0
    task: str = "classification"
    class_names: list[str] | None = None

    @property
    def normalisation(self) -> Normalisation:
        return Normalisation(self.mean, self.std, self.pixel_scale)

    def standardise_as(self, target: Normalisation) -> None:
        """Re-standardise every split in place as `target` would have (a model's own normalisation)."""
        if (self.mean, self.std) != (target.mean, target.std):
            for split in (self.train, self.val, self.test):
                self.normalisation.convert(split.x, target)
            self.mean, self.std = target.mean, target.std


def load_dataset(name: str = "digits", root: str | os.PathLike | None = None, *, val_size: float = 0.1,
                 seed: int = 0, dtype: DTypeLike = np.float32, limit: int | None = None, task: str = "auto",
                 label_column: str | None = None) -> Dataset:
    """Load `name` and split it into train/val/test.

    `fashion-mnist` and `mnist` are looked for in `root` (or `root/<name>`), else in
    `$FBPROP_DATA/<name>` (fashion-mnist also directly in `$FBPROP_DATA`), then for
    fashion-mnist in /usr/share/datasets/fashion-mnist.  Any other name is a directory of the
    four IDX files.  `root` is ignored for `digits` and for a directory name.

    `val_size` (a count, or a fraction of the train split) samples are drawn into val by a
    permutation from `np.random.default_rng(seed)`.  `limit` caps the train split (not val,
    not test), for quick runs.  Pixels are scaled to [0, 1], then standardised with the scalar
    mean and std of the resulting train split: x' = (x - mean) / std.

    `name` may also be your own data (fbprop.data.own): a folder of images in class
    sub-folders, a CSV file (answers in `label_column`), an .npz or .npy file; their values
    are divided by 255 when they are 8-bit, else taken as they are, then standardised the same
    way. `task` ("auto", "classification", "regression") says what their answers are.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"load_dataset: expected a floating dtype, got {dtype}")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"load_dataset: expected limit None or an int >= 1, got {limit!r}")
    class_names, kind = CLASS_NAMES.get(name), "classification"
    if name == "digits":
        x_all, y_all, x_test, y_test = _digits()
        pixel_scale, n_classes = 16.0, 10  # digits pixels are counts 0..16, stored as floats

        def unit(x: np.ndarray) -> bool:
            return False
    elif name not in DATASETS and is_own(name):
        raw = read_own(name, task, label_column)
        x_all, y_all, x_test, y_test, kind = raw.x, raw.y, raw.x_test, raw.y_test, raw.task
        pixel_scale, class_names = raw.pixel_scale, raw.class_names
        n_classes = _count_answers(name, raw)

        def unit(x: np.ndarray) -> bool:
            return False
    else:
        directory = _find(name, root)
        known = 10 if name in DATASETS else None
        x_all, y_all, x_test, y_test, n_classes = _read_four(directory, known)
        pixel_scale = 255.0  # 8-bit images; float images are taken as in [0, 1], each file by its own type

        def unit(x: np.ndarray) -> bool:
            return x.dtype.kind == "f"

    n_val = _val_count(val_size, len(y_all))
    order = np.random.default_rng(seed).permutation(len(y_all))
    val, train = order[:n_val], order[n_val:][:limit]
    test = np.arange(len(y_test))

    x_train = _to_unit(x_all[train], 1.0 if unit(x_all) else 1 / pixel_scale, dtype)
    mean, std = _centre(x_train)
    x_train /= dtype.type(std)
    normalisation = Normalisation(mean, std, pixel_scale)
    val_x, test_x = (normalisation(x[i], dtype, unit=unit(x)) for x, i in ((x_all, val), (x_test, test)))
    for split, x in (("train", x_train), ("val", val_x), ("test", test_x)):
        if not np.isfinite(x).all():
            raise ValueError(f"load_dataset({name!r}): the {split} images hold values that are not finite "
                             f"in {dtype} once standardised (pixels too large for the data type?)")

    answers = (lambda y: y.astype(dtype)) if kind == "regression" else (lambda y: y.astype(np.int64))
    splits = [_split(x, answers(y)) for x, y in ((x_train, y_all[train]), (val_x, y_all[val]), (test_x, y_test[test]))]
    return Dataset(
        name=name,
        train=splits[0],
        val=splits[1],
        test=splits[2],
        n_classes=n_classes,
        image_shape=tuple(splits[0].x.shape[1:]),
        mean=mean,
        std=std,
        pixel_scale=pixel_scale,
        task=kind,
        class_names=class_names,
    )


def _count_answers(name: str, raw) -> int:
    """The number of classes (the largest label + 1, or the class names given) or of regression targets."""
    if raw.task == "regression":
        return int(raw.y.shape[1])
    top = int(max(raw.y.max(initial=0), raw.y_test.max(initial=0)))
    if min(raw.y.min(initial=0), raw.y_test.min(initial=0)) < 0 or top >= MAX_CLASSES:
        raise ValueError(f"{name}: expected labels in [0, {MAX_CLASSES}), got values from "
                         f"{min(raw.y.min(), raw.y_test.min())} to {top}")
    n = max(top + 1, len(raw.class_names or ()))
    if raw.class_names is not None and len(raw.class_names) != n:
        raise ValueError(f"{name}: {len(raw.class_names)} class names for labels up to {top}")
    return n


def batches(
    split: Split, batch_size: int, rng: np.random.Generator | None, shuffle: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of `(x, y)` mini-batches of `batch_size` samples, the last one partial.

    With `shuffle` the order is a permutation drawn from `rng`, so a seeded generator gives
    the same epochs every run; without it the batches are views in stored order.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batches: expected batch_size an int >= 1, got {batch_size!r}")
    if shuffle and rng is None:
        raise ValueError(
            "batches: expected a np.random.Generator to shuffle with "
            "(np.random.default_rng(seed)), got None; pass shuffle=False for stored order"
        )
    order = rng.permutation(len(split)) if shuffle else None
    return _epoch(split, batch_size, order)


def _epoch(split: Split, batch_size: int, order: np.ndarray | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(split), batch_size):
        chosen = slice(start, start + batch_size) if order is None else order[start:][:batch_size]
        yield split.x[chosen], split.y[chosen]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _to_unit(x: np.ndarray, scale: float, dtype: np.dtype) -> np.ndarray:
    """Pixels as a fresh `dtype` array scaled to [0, 1]."""
    with np.errstate(over="ignore", invalid="ignore"):           # too large for dtype: inf, refused by callers
        x = x.astype(dtype, order="C")
    x *= dtype.type(scale)
    return x


def _centre(x: np.ndarray) -> tuple[float, float]:
    """Subtract the mean of all elements from `x` in place; return that mean and the std."""
    mean = float(x.mean(dtype=np.float64))
    x -= x.dtype.type(mean)
    flat = x.reshape(-1)
    # std = sqrt(mean((x - mean)²)), accumulated in float64 without a float64 copy of x.
    std = math.sqrt(np.einsum("i,i->", flat, flat, dtype=np.float64) / flat.size)
    return mean, std or 1.0  # constant images: centre only


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    """(n, h, w) images as (n, 1, h, w): one input plane; (n, c, h, w) images and (n, d) vectors as they are."""
    return Split(x.reshape(len(x), 1, *x.shape[1:]) if x.ndim == 3 else x, y)


def _val_count(val_size: float, n: int) -> int:
    if _is_int(val_size) and 0 <= val_size < n:
        return int(val_size)
    if isinstance(val_size, (float, np.floating)) and 0 <= val_size < 1 and round(val_size * n) < n:
        return round(val_size * n)
    raise ValueError(
        f"load_dataset: expected val_size an int in [0, {n}) or a fraction in [0, 1) "
        f"leaving at least one train sample, got {val_size!r}"
    )


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Imported here, not at the top: scikit-learn takes a second to import.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images, digits.target
    # 20 % test rounded up, as scikit-learn's train_test_split does: 360 of 1797.
    n_test = math.ceil(DIGITS_TEST_FRACTION * len(y))
    order = np.random.default_rng(TEST_SEED).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _find(name: str, root: str | os.PathLike | None) -> str:
    """The directory holding the four IDX files of `name`; FileNotFoundError if none."""
    env = os.environ.get("FBPROP_DATA")
    if name in DATASETS:
        if root is not None:
            candidates = [root, os.path.join(root, name)]
        else:
            # FBPROP_DATA itself may hold fashion-mnist; mnist has the same file names.
            candidates = [env] if env and name == "fashion-mnist" else []
            candidates += [os.path.join(env, name)] if env else []
            candidates += [SYSTEM_DIRS[name]] if name in SYSTEM_DIRS else []
    elif os.path.isdir(os.path.expanduser(name)):
        candidates = [os.path.expanduser(name)]
    else:
        raise ValueError(f"load_dataset: expected a name in {DATASETS}, a directory of IDX files, a folder of images "
                         f"in class sub-folders, a .csv, .npz or .npy file, got {name!r}")
    looked = []
    for directory in map(os.fspath, candidates):
        missing = [stem for stem in FILES if _locate(directory, stem) is None]
        if not missing:
            return directory
        state = f"missing {missing[0]}[.gz]" if os.path.isdir(directory) else "no such directory"
        looked.append(f"{directory} ({state})")
    where = ", ".join(looked) or "nowhere (no root given, FBPROP_DATA not set)"
    how = HOW_TO_GET.get(name, "put the four IDX files (train-images-idx3-ubyte[.gz], ...) in it, or give a "
                               "folder of images in class sub-folders, a .csv, .npz or .npy file")
    raise FileNotFoundError(f"load_dataset({name!r}): data set not found, looked in {where}; {how}")


def _locate(directory: str, stem: str) -> str | None:
    """The file for `stem` in `directory`, plain or gzipped, `-idx` or `.idx` naming."""
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem, stem + ".gz", dotted, dotted + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_four(directory: str, n_classes: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Train images and labels, test images and labels, checked; then the number of classes,
    `n_classes` or else the largest train label + 1."""
    paths = [_locate(directory, stem) for stem in FILES]
    x_train, y_train, x_test, y_test = (read_idx(path) for path in paths)
    for x, y, x_path, y_path in ((x_train, y_train, *paths[:2]), (x_test, y_test, *paths[2:])):
        if x.ndim != 3 or not (x.dtype == np.uint8 or x.dtype.kind == "f"):
            raise ValueError(
                f"{x_path}: expected images (n, h, w) of uint8 or float, "
                f"got shape {x.shape} of {x.dtype}"
            )
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{x_path}: expected finite pixel values, got NaN or inf")
        if y.shape != x.shape[:1]:
            raise ValueError(f"{y_path}: expected {len(x)} labels, one per image in {x_path}, " f"got shape {y.shape}")
        if y.dtype.kind not in "iu":
            raise ValueError(f"{y_path}: expected integer labels, got {y.dtype}")
    if len(x_train) == 0:
        raise ValueError(f"{paths[0]}: expected at least one training image, got none")
    if len(x_test) == 0:
        raise ValueError(f"{paths[2]}: expected at least one test image, got none")
    if 0 in x_train.shape[1:]:
        raise ValueError(f"{paths[0]}: expected images of at least 1x1 pixels, got {x_train.shape[1:]}")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"{paths[2]}: expected images of size {x_train.shape[1:]} as in {paths[0]}, "
            f"got {x_test.shape[1:]}"
        )
    if n_classes is None:
        top = int(y_train.max()) if len(y_train) else 0
        if top >= MAX_CLASSES:
            raise ValueError(f"{paths[1]}: expected labels below {MAX_CLASSES}, got {top}")
        n_classes = top + 1
    for y, y_path in ((y_train, paths[1]), (y_test, paths[3])):
        if len(y) and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{y_path}: expected labels in [0, {n_classes}), " f"got values in [{y.min()}, {y.max()}]")
    return x_train, y_train, x_test, y_test, n_classes
