"""PNG plots of a run: learning curves and the confusion matrix (matplotlib, without pyplot).

Figures are made with `matplotlib.figure.Figure`, so plotting never changes the backend or the
open figures of the program that calls it (a notebook, say).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fbprop.files import atomic_write


def _figure(figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and error rate per epoch for train / val / test."""
    fig = _figure((10, 4))
    ax_loss, ax_err = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    for name, style in (("train", "-o"), ("val", "-s"), ("test", "-^")):
        if any(f"{name}_loss" in r for r in history):
            ax_loss.plot(epochs, [r.get(f"{name}_loss", np.nan) for r in history], style, label=name, ms=3)
        if any(f"{name}_error" in r for r in history):
            ax_err.plot(epochs, [100 * r.get(f"{name}_error", np.nan) for r in history], style, label=name, ms=3)
    ax_loss.set(xlabel="epoch", ylabel="mean loss", title="loss")
    ax_err.set(xlabel="epoch", ylabel="error rate (%)", title="error rate")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_err):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs are whole
        ax.grid(alpha=0.3)
        if ax.lines:                                             # no epoch yet, no curve
            ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, Path(path))


def plot_confusion(confusion: np.ndarray, path: str | Path, title: str = "", labels: list[str] | None = None) -> None:
    """The confusion matrix (rows: true class, columns: answer): counts on the left, and on the right
    each row divided by its total (the fraction of each true class given each answer)."""
    k = confusion.shape[0]
    totals = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, totals, out=np.zeros(confusion.shape), where=totals > 0)
    fig = _figure((2 * (1.0 + 0.6 * k), 0.8 + 0.6 * k))
    ticks = labels or [str(i) for i in range(k)]
    for ax, values, text, name in zip(fig.subplots(1, 2), (confusion, rates), (str, "{:.2f}".format),
                                      ("counts", "normalised by true class")):
        ax.imshow(values, cmap="Blues", vmin=0)
        high = values.max() / 2 if values.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, text(values[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > high else "black")
        ax.set_xticks(range(k), ticks, rotation=45 if labels else 0, ha="right" if labels else "center")
        ax.set_yticks(range(k), ticks)
        ax.set(xlabel="answer", ylabel="true class", title=name)
    fig.suptitle(title or "confusion matrix")
    _save(fig, Path(path))


def plot_distortions(originals: np.ndarray, distorted: list[np.ndarray], path: str | Path, title: str = "") -> None:
    """A grid of images: the originals (n, c, h, w) in the first row, each of `distorted` (same
    shape) in a row below, one column per sample (the first channel shown, grey scale)."""
    rows = [originals, *distorted]
    n = len(originals)
    fig = _figure((1.1 * n, 1.2 * len(rows)))
    axes = np.asarray(fig.subplots(len(rows), n, squeeze=False))
    low, high = float(originals.min()), float(originals.max())
    for i, images in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(images[j, 0], cmap="gray_r", vmin=low, vmax=high, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel("original" if i == 0 else f"distorted {i}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, Path(path))
