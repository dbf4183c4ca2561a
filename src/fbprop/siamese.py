"""Siamese energy machines trained with the contrastive loss (DrLIM).

Hadsell, Chopra and LeCun, "Dimensionality reduction by learning an invariant mapping" (CVPR 2006):
two copies of a net G that share one set of weights map the two images of a pair to points in a
low-dimensional space; the energy is their distance E = D = ‖G(X1) − G(X2)‖, and the contrastive
loss pulls similar pairs (Y = 0) together and pushes dissimilar ones (Y = 1) out to a margin m.

    pair ─▶ [Split] ─▶ x1 ─▶ [G]         ─▶ g1 ─┐
                    └▶ x2 ─▶ [G, shared] ─▶ g2 ─┴▶ [Distance] ─▶ D ─▶ [Contrastive(Y)] ─▶ L

Training data are pairs packed as one array x (n, 2, …) with labels y (n,), so the ordinary
Trainer, its batching and its checkpoints serve the pair machine unchanged; `PairArray` builds
the rows of a batch from the images on demand, so 120,000 pairs cost an index array, not a copy
of every image. The pairs are drawn afresh for every epoch (`PairRedraw`), half of them
same-class. The learned map is judged by the k-nearest-neighbour accuracy of the test images
in the embedding (scikit-learn) and shown as a scatter plot coloured by class (matplotlib).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from fbprop.data.datasets import Dataset, Split, load_dataset
from fbprop.files import atomic_write
from fbprop.losses import ContrastiveLoss
from fbprop.machine import Machine
from fbprop.module import Cascade, Module
from fbprop.modules.join import Distance
from fbprop.modules.join import Split as SplitModule
from fbprop.modules.linear import Linear
from fbprop.modules.shape import Flatten
from fbprop.modules.squash import Bias
from fbprop.network import Network
from fbprop.params import ParamPool
from fbprop.state import State

DEFAULTS = {"model": "siamese", "hidden": [256, 64], "dim": 2, "squash": "tanh", "margin": 1.0,
            "init_scale": 3 ** -0.5}


def siamese_network(branch: Module) -> Network:
    """pair (n, 2, …) -> D (n,): the branch G on each half, the second a twin sharing G's weights."""
    return Network(inputs="pair", outputs="distance", modules=[
        (SplitModule(2, axis=1, squeeze=True), "pair -> x1, x2"),
        (branch,                               "x1 -> g1"),
        (branch.share(),                       "x2 -> g2"),
        (Distance(),                           "g1, g2 -> distance"),
    ])


def build_siamese(spec: dict) -> Machine:
    """A siamese Machine from a JSON-able spec (what checkpoints store): input_shape, hidden, dim,
    squash, margin, init_scale, dtype, seed. G is one chain: Flatten, then the lecture's layer
    (Linear, then a sigmoid with bias) for each hidden size, then Linear and Bias to `dim`
    dimensions. The initial weights are the pool's, times `init_scale`: the default 1/√3 draws
    them uniform in ±1/√fan_in, which starts the embedding's distances well inside the margin;
    with the pool's own scale (1) the 5-NN accuracy on digits came out 1-4 points lower (seeds 0, 1)."""
    from fbprop.models import SQUASHES

    spec = {**DEFAULTS, **spec}
    squash = SQUASHES.get(spec["squash"])
    if squash is None:
        raise ValueError(f"siamese: unknown squash {spec['squash']!r}: expected one of {', '.join(SQUASHES)}")
    if int(spec["dim"]) < 1:
        raise ValueError(f"siamese: expected an embedding dimension >= 1, got {spec['dim']}")
    pool = ParamPool(np.dtype(spec.get("dtype", "float32")), seed=spec.get("seed", 0))
    sizes = [math.prod(spec["input_shape"]), *spec["hidden"], int(spec["dim"])]
    layers = [m for a, b in zip(sizes[:-2], sizes[1:-1]) for m in (Linear(a, b, pool), squash(b, pool))]
    branch = Cascade(Flatten(), *layers, Linear(sizes[-2], sizes[-1], pool), Bias(sizes[-1], pool))
    pool.x *= pool.dtype.type(spec["init_scale"])               # biases start at 0 and stay there
    return Machine(siamese_network(branch), None, ContrastiveLoss(spec["margin"]), pool, spec=spec)


def branch_of(machine: Machine) -> Module:
    """G, the net that maps one image to its point in the embedding."""
    return next(n.module for n in machine.network.nodes if n.writes == ("g1",))


def embed(machine: Machine, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """G(X) for every image of x: the learned low-dimensional map."""
    g, inp, out = branch_of(machine), State(requires_dx=False), State()
    parts = []
    for i in range(0, len(x), batch_size):
        inp.x = x[i:i + batch_size]
        g.fprop(inp, out)
        parts.append(out.x.copy())
    return np.concatenate(parts)


# --- pairs ------------------------------------------------------------------------------------

class PairArray:
    """A read-only (n, 2, *image) array of image pairs, `images[pairs[i]]`, made row by row on demand."""

    def __init__(self, images: np.ndarray, pairs: np.ndarray) -> None:
        self.images, self.pairs = images, pairs
        self.shape = (len(pairs), 2, *images.shape[1:])
        self.dtype, self.ndim = images.dtype, len(self.shape)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index) -> np.ndarray:
        return self.images[self.pairs[index]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)


def draw_pairs(labels: np.ndarray, n: int, rng: np.random.Generator,
               same: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """n random pairs of indices into `labels`, a fraction `same` of them same-class (Y = 0), the
    rest of two different classes (Y = 1): the first index uniform, the second uniform among the
    samples of its class (not itself) or among those of the other classes."""
    labels = np.asarray(labels)
    if n < 1 or len(labels) < 2:
        raise ValueError(f"draw_pairs: expected n >= 1 pairs from at least 2 samples, got n={n}, {len(labels)} samples")
    order = np.argsort(labels, kind="stable")
    classes, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    if len(classes) < 2 or count.min() < 2:
        raise ValueError(f"draw_pairs: expected at least 2 classes of at least 2 samples each, got counts {count}")
    first = rng.integers(0, len(labels), n)
    cls = np.searchsorted(classes, labels[first])
    y = (rng.random(n) >= same).astype(np.intp)                  # 0 similar, 1 dissimilar
    second = np.empty(n, np.intp)
    sim = y == 0
    rank = np.empty(len(labels), np.intp)
    rank[order] = np.arange(len(labels))                         # where each sample sits in `order`
    c = cls[sim]
    k = rng.integers(0, count[c] - 1)                            # among its class, itself left out
    k += k >= rank[first[sim]] - start[c]
    second[sim] = order[start[c] + k]
    dis = ~sim
    todo = np.flatnonzero(dis)
    while len(todo):                                             # uniform over the other classes, by rejection
        pick = rng.integers(0, len(labels), len(todo))
        ok = labels[pick] != labels[first[todo]]
        second[todo[ok]] = pick[ok]
        todo = todo[~ok]
    return np.stack([first, second], axis=1), y


def pair_split(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> Split:
    pairs, y = draw_pairs(labels, n, rng)
    return Split(PairArray(images, pairs), y)


def pair_dataset(data: Dataset, n_pairs: int = 120_000, test_pairs: int = 5_000, seed: int = 0) -> Dataset:
    """The pairs of a labelled image Dataset: train pairs from its train split, test pairs from its
    test split (fixed), no validation; 2 classes (similar, dissimilar)."""
    empty = Split(np.zeros((0, 2, *data.image_shape), data.train.x.dtype), np.zeros(0, np.intp))
    train = pair_split(data.train.x, data.train.y, n_pairs, np.random.default_rng([seed, 0]))
    test = pair_split(data.test.x, data.test.y, test_pairs, np.random.default_rng([seed, 1_000_000]))
    return Dataset(name=f"{data.name}-pairs", train=train, val=empty, test=test, n_classes=2,
                   image_shape=(2, *data.image_shape), mean=data.mean, std=data.std)


class PairRedraw:
    """A Trainer callback that draws the next epoch's training pairs (from the seed and the epoch)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> None:
        self.images, self.labels, self.n, self.seed = images, labels, n, seed

    def split(self, epoch: int) -> Split:
        return pair_split(self.images, self.labels, self.n, np.random.default_rng([self.seed, epoch]))

    def __call__(self, trainer, record: dict) -> None:
        trainer.data.train = self.split(trainer.epoch)


# --- judging the embedding --------------------------------------------------------------------

def knn_accuracy(train_points: np.ndarray, train_labels: np.ndarray, test_points: np.ndarray,
                 test_labels: np.ndarray, k: int = 5) -> float:
    """The k-nearest-neighbour test accuracy in the learned space (scikit-learn)."""
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=k).fit(train_points, train_labels)
    return float(knn.score(test_points, test_labels))


def plot_embedding(points: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "",
                   names: list[str] | None = None) -> None:
    """A scatter plot PNG of 2-D points coloured by class (the first two coordinates if more)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    colours = [f"C{i}" for i in range(10)] if labels.max() < 10 else None
    for c in np.unique(labels):
        mask = labels == c
        ax.scatter(points[mask, 0], points[mask, 1], s=2, alpha=0.5, label=names[c] if names else str(c),
                   c=colours[c] if colours else None, rasterized=True)
    ax.legend(markerscale=6, fontsize=8, loc="best")
    ax.set(title=title, xlabel="G(X)₁", ylabel="G(X)₂")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


# --- train and judge, from Python and from the command line ------------------------------------

def evaluate_siamese(machine: Machine, images: Dataset, k: int = 5) -> dict:
    """The k-NN test accuracy of a siamese machine's embedding (neighbours from the train split)."""
    train_points, test_points = embed(machine, images.train.x), embed(machine, images.test.x)
    return {"dataset": images.name, "k": k, "knn_test_accuracy": knn_accuracy(train_points, images.train.y, test_points,
                                                                        images.test.y, k)}


def train_siamese(data: str | Dataset = "digits", *, data_dir: str | None = None, hidden: list[int] = (256, 64),
                  dim: int = 2, margin: float = 1.0, lr: float = 0.01, momentum: float = 0.9, batch_size: int = 64,
                  epochs: int = 15, pairs: int = 120_000, k: int = 5, seed: int = 0, dtype: str = "float32",
                  out_dir: str | Path | None = None, log: TextIO | None = None, plot: bool = True) -> dict:
    """Train a siamese machine on pairs of `data` with SGD + momentum; return the k-NN test accuracy
    of the embedding, the training time and the history. With `out_dir`: checkpoint.npz, metrics,
    result.json and embedding.png (the test set's embedding) there."""
    from fbprop.train import Trainer

    images = load_dataset(data, data_dir, val_size=0, seed=seed, dtype=np.dtype(dtype)) \
        if isinstance(data, str) else data
    spec = {**DEFAULTS, "hidden": list(hidden), "dim": int(dim), "margin": float(margin),
            "input_shape": list(images.image_shape), "dtype": dtype, "seed": seed, "dataset": images.name,
            "val_size": 0, "n_classes": 2, "pairs": pairs}
    machine = build_siamese(spec)
    redraw = PairRedraw(images.train.x, images.train.y, pairs, seed)
    data_pairs = pair_dataset(images, pairs, seed=seed)                 # its train pairs are redraw.split(0)
    trainer = Trainer(machine, data_pairs, optimizer="momentum", lr=lr, batch_size=batch_size, epochs=epochs,
                      momentum=momentum, seed=seed, out_dir=out_dir, callbacks=[redraw],
                      log=log if log is not None else sys.stderr)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    train_points, test_points = embed(machine, images.train.x), embed(machine, images.test.x)
    accuracy = knn_accuracy(train_points, images.train.y, test_points, images.test.y, k)
    result = {"dataset": images.name, "k": k, "knn_test_accuracy": accuracy, "train_seconds": round(seconds, 2),
              "epochs": trainer.epoch, "pairs_per_epoch": pairs, "parameters": machine.pool.size}
    if out_dir is not None:
        out = Path(out_dir)
        text = json.dumps(result, indent=1)
        atomic_write(out / "result.json", lambda f: f.write(text.encode()))
        if plot:
            plot_embedding(test_points, images.test.y, out / "embedding.png",
                           f"siamese {'-'.join(map(str, [math.prod(spec['input_shape']), *hidden, dim]))} on "
                           f"{images.name}: {k}-NN test accuracy {100 * accuracy:.2f}%")
    return {**result, "history": trainer.history, "machine": machine}
