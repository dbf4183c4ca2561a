"""Data augmentation on the fly: random distortions of each training batch, drawn from the
updater's seeded generator.

Two families, each a callable `transform(x, rng) -> x'` for `Trainer(transform=...)`:

- `Affine`: the planar affine distortions LeCun, Bottou, Bengio and Haffner trained LeNet-5 with
  ("Gradient-based learning applied to document recognition", Proc. IEEE 1998, §III.C and
  Fig. 7): horizontal and vertical translation, scaling, squeezing (the width shrinks while the
  height grows, or the reverse) and horizontal shearing. The paper names these five kinds and
  reports 0.95% → 0.8% test error on MNIST from training on distorted copies, but as far as we
  could find it gives no numeric ranges. Our defaults are modest amounts in the spirit of its
  Fig. 7: shifts up to ±2 pixels, scale factors in [0.9, 1.1], squeeze factors in [1/1.1, 1.1]
  (area kept) and shears up to ±0.2 (a pixel's column moves by 0.2 × its row offset from
  the centre). `flip` (not in the paper) mirrors a fraction of the images left to right, which
  suits clothes (Fashion-MNIST) but not digits.
- `Elastic`: the elastic distortions of Simard, Steinkraus and Platt ("Best practices for
  convolutional neural networks applied to visual document analysis", ICDAR 2003, §2): every
  pixel moves by a displacement field drawn uniformly in [−1, 1], smoothed by a Gaussian of
  standard deviation σ pixels and scaled by α. Their MNIST setting is α = 34, σ = 4.

Both resample the whole batch with one `scipy.ndimage.map_coordinates` call (bilinear
interpolation, pixels outside the image take the value of the nearest border pixel) and draw
every random number from the generator they are handed, so the same seed gives the same
distortions: an interrupted run resumes to the same result, and MPI ranks, which get the same
global batch and the same generator, distort it identically.
"""

from __future__ import annotations

import math

import numpy as np


def _check_images(who: str, x: np.ndarray) -> tuple[int, ...]:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype.kind != "f":
        shape = getattr(x, "shape", None)
        raise ValueError(f"{who}: expected a float batch of images (n, channels, height, width), got "
                         f"{type(x).__name__} of shape {shape} and dtype {getattr(x, 'dtype', None)}")
    return x.shape


def _resample(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x (n, c, h, w) sampled at (rows, cols) (n, h, w) given per image, bilinearly, nearest border outside.

    The n·c planes are stacked into one (n·c·h, w) image; each plane's row coordinates are
    clipped to its own rows and offset to them, so one map_coordinates call serves the batch
    and no interpolation reaches into a neighbouring plane. Coordinates are float32 (exact to
    about 1e-5 pixel here), which halves the cost of the call.
    """
    from scipy import ndimage  # here: `import fbprop` stays light

    n, c, h, w = x.shape
    coords = np.empty((2, n, c, h, w), np.float32)
    np.clip(rows[:, None], 0, h - 1, out=coords[0])
    np.clip(cols[:, None], 0, w - 1, out=coords[1])
    coords[0] += (np.arange(n * c, dtype=np.float32) * h).reshape(n, c, 1, 1)
    out = ndimage.map_coordinates(x.reshape(n * c * h, w), coords.reshape(2, -1), order=1, mode="nearest",
                                  prefilter=False, output=x.dtype)
    return out.reshape(x.shape)


class Affine:
    """Random planar affine distortion of each image (LeCun et al. 1998): see the module docstring.

    Per image, uniformly: tx, ty ∈ [−shift, shift] pixels; s ∈ [1 − scale, 1 + scale];
    q ∈ [1/(1 + squeeze), 1 + squeeze] log-uniformly; k ∈ [−shear, shear]; and with probability
    `flip` a left-right mirror. The image content is mapped by
        column' = s/q·column + k·row' + tx,   row' = s·q·row + ty
    about the image centre (width × 1/q, height × q: a squeeze keeps the area). Zero for every
    amount (and flip 0) is the identity.
    """

    name = "affine"

    def __init__(self, shift: float = 2.0, scale: float = 0.1, squeeze: float = 0.1, shear: float = 0.2,
                 flip: float = 0.0) -> None:
        for key, value, top in (("shift", shift, math.inf), ("scale", scale, 0.9), ("squeeze", squeeze, math.inf),
                                ("shear", shear, math.inf), ("flip", flip, 1.0)):
            if not (isinstance(value, (int, float)) and 0 <= value <= top):
                raise ValueError(f"Affine: expected {key} a number in [0, {top:g}], got {value!r}")
        self.shift, self.scale, self.squeeze, self.shear, self.flip = (float(v) for v in
                                                                      (shift, scale, squeeze, shear, flip))

    @property
    def args(self) -> dict:
        return {"shift": self.shift, "scale": self.scale, "squeeze": self.squeeze, "shear": self.shear,
                "flip": self.flip}

    def draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The random amounts of n distortions: tx, ty, s, q, k, mirror (each (n,))."""
        u = rng.uniform(-1.0, 1.0, size=(5, n))
        return {"tx": self.shift * u[0], "ty": self.shift * u[1], "s": 1 + self.scale * u[2],
                "q": np.exp(math.log1p(self.squeeze) * u[3]), "k": self.shear * u[4],
                "mirror": rng.random(n) < self.flip}

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, _, h, w = _check_images("Affine", x)
        a = self.draw(n, rng)
        cy, cx = (h - 1) / 2, (w - 1) / 2
        r = (np.arange(h) - cy)[None, :, None]                       # output row, about the centre
        c = (np.arange(w) - cx)[None, None, :]
        tx, ty, s, q, k = (a[key][:, None, None] for key in ("tx", "ty", "s", "q", "k"))
        src_r = (r - ty) / (s * q)                                   # invert row' = s q row + ty
        src_c = (c - k * r - tx) * q / s                             # invert column' = s/q column + k row' + tx
        src_c = np.where(a["mirror"][:, None, None], -src_c, src_c)
        return _resample(x, np.broadcast_to(src_r + cy, (n, h, w)), np.broadcast_to(src_c + cx, (n, h, w)))

    def __repr__(self) -> str:
        return "Affine(" + ", ".join(f"{k}={v:g}" for k, v in self.args.items()) + ")"


class Elastic:
    """Elastic distortion (Simard, Steinkraus and Platt 2003): each pixel samples the input at
    its own position plus α·(G_σ * U), U uniform in [−1, 1] per pixel and direction, G_σ a
    Gaussian of σ pixels. α = 0 is the identity."""

    name = "elastic"

    def __init__(self, alpha: float = 34.0, sigma: float = 4.0) -> None:
        if not (isinstance(alpha, (int, float)) and 0 <= alpha < math.inf):
            raise ValueError(f"Elastic: expected alpha a finite number >= 0, got {alpha!r}")
        if not (isinstance(sigma, (int, float)) and 0 < sigma < math.inf):
            raise ValueError(f"Elastic: expected sigma a finite number > 0, got {sigma!r}")
        self.alpha, self.sigma = float(alpha), float(sigma)

    @property
    def args(self) -> dict:
        return {"alpha": self.alpha, "sigma": self.sigma}

    def field(self, n: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        """(2, n, h, w) displacements (rows, columns) in pixels: α · Gaussian-smoothed uniform noise.

        The smoothing is `scipy.ndimage.gaussian_filter(u, (0, 0, σ, σ), mode="constant",
        truncate=3)` written as two matrix products, G_h · u · G_wᵀ, which BLAS does several
        times faster for images this small.
        """
        u = rng.random((2, n, h, w), dtype=np.float32)
        u = (2 * u - 1) @ _smoothing(w, self.sigma).T                         # along the rows
        u = _smoothing(h, self.sigma) @ u.transpose(2, 0, 1, 3).reshape(h, -1)   # along the columns: one product
        return self.alpha * u.reshape(h, 2, n, w).transpose(1, 2, 0, 3)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, _, h, w = _check_images("Elastic", x)
        d = self.field(n, h, w, rng)
        rows = np.arange(h, dtype=np.float32)[None, :, None] + d[0]
        cols = np.arange(w, dtype=np.float32)[None, None, :] + d[1]
        return _resample(x, rows, cols)

    def __repr__(self) -> str:
        return f"Elastic(alpha={self.alpha:g}, sigma={self.sigma:g})"


def _smoothing(n: int, sigma: float, truncate: float = 3.0) -> np.ndarray:
    """(n, n) matrix of 1-D Gaussian smoothing with zeros outside: row i holds g(j − i) for |j − i| ≤ r,
    g the Gaussian of σ sampled on [−r, r] (r = ⌊truncate·σ + ½⌋) and normalised to sum 1."""
    r = int(truncate * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]
    return np.where(np.abs(offset) <= r, taps[np.clip(offset + r, 0, 2 * r)], 0.0).astype(np.float32)


AUGMENTATIONS: dict[str, type] = {"affine": Affine, "elastic": Elastic}
"""name → transform class; `make_transform` builds one from its name and keyword arguments."""


def make_transform(name: str | None, args: dict | None = None):
    """The transform `name` of AUGMENTATIONS with keyword `args`; None for "none" (or None)."""
    args = dict(args or {})
    if name in (None, "none"):
        if args:
            raise ValueError(f"augment none: takes no arguments, got {', '.join(args)}")
        return None
    cls = AUGMENTATIONS.get(name)
    if cls is None:
        raise ValueError(f"unknown augmentation {name!r}: expected one of none, {', '.join(AUGMENTATIONS)}")
    takes = list(cls().args)
    for key, value in args.items():
        if key not in takes:
            raise ValueError(f"augment {name}: unknown argument {key!r} (it takes {', '.join(takes)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"augment {name}: expected {key} a number, got {value!r}")
    return cls(**args)
