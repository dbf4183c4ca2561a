"""The systems under test, each behind one small interface, and the GEMM ceiling.

A system is built from a flat initial parameter vector in fbprop's pool order (so every system
starts from the same weights) and offers `native(x, y)` (its own arrays), `train_step(x, y)`
(one SGD step on the batch mean of the loss), `infer(x)` (answers), `params()` and `load(list)`.
`steps_per_call` > 1 marks a system that trains a whole chunk per call (scikit-learn's
`partial_fit`: one epoch over the chunk in mini-batches). Libraries are imported only by the
system that needs them, so each process carries only its own system's footprint.
"""

from __future__ import annotations

import numpy as np
from common import MLP_SIZES, split

# the order run.py runs them in (reversed every other repeat): fbprop between PyTorch and the numpy
# reference, the reference between fbprop and its second process, the control
SYSTEMS = ("sklearn", "pytorch-idiomatic", "pytorch", "fbprop", "numpy-ref", "numpy-ref-2", "numpy-ger", "numpy-fold")
CONTROL = {"numpy-ref-2": "numpy-ref"}                           # the same system again: the harness's noise
MLP_ONLY = {"sklearn", "numpy-fold"}
ONLINE_ONLY = {"numpy-ger"}                                      # MLP training at batch 1 only
LENET5_ONLY = {"pytorch-idiomatic"}


class FbpropSystem:
    """`fbprop.build_machine(spec)`, then `machine.gradient(x, y)` and `SGD(pool, lr).step()`."""

    name = "fbprop"

    def __init__(self, model: str, init: np.ndarray, shapes, lr: float, **_) -> None:
        from common import SPECS

        import fbprop
        self.machine = fbprop.build_machine({**SPECS[model], "dtype": str(init.dtype)})
        got = [shape for _, _, shape in self.machine.pool.handles]
        if got != [tuple(s) for s in shapes]:
            raise ValueError(f"FbpropSystem({model}): expected pool shapes {shapes}, got {got}")
        self.machine.pool.load(init)
        self.opt = fbprop.SGD(self.machine.pool, lr)

    def native(self, x, y):
        return x, y

    def train_step(self, x: np.ndarray, y: np.ndarray) -> None:
        self.machine.gradient(x, y)
        self.opt.step()

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.machine.predict(x, batch_size=len(x))

    def params(self) -> list[np.ndarray]:
        return [h.x.copy() for h, _, _ in self.machine.pool.handles]

    def load(self, params: list[np.ndarray]) -> None:
        for (h, _, _), p in zip(self.machine.pool.handles, params):
            h.x[...] = p


class SklearnSystem:
    """MLPClassifier(sgd, tanh, constant rate, no momentum, no L2); `partial_fit` is one epoch over
    the chunk it is given, in mini-batches of `batch`, each one step of SGD on the batch mean."""

    name = "sklearn"

    def __init__(self, model: str, init: np.ndarray, shapes, lr: float, batch: int, **_) -> None:
        if model != "mlp":
            raise ValueError(f"SklearnSystem: expected model 'mlp', got {model!r}")
        from sklearn.neural_network import MLPClassifier
        self.batch = batch
        self.steps_per_call = max(4, 256 // batch)
        self.clf = MLPClassifier(hidden_layer_sizes=MLP_SIZES[1:-1], activation="tanh", solver="sgd",
                                 batch_size=batch, learning_rate="constant", learning_rate_init=lr,
                                 momentum=0.0, nesterovs_momentum=False, alpha=0.0, shuffle=False,
                                 random_state=0)
        x0 = np.zeros((batch, MLP_SIZES[0]), init.dtype)
        self.clf.partial_fit(x0, np.arange(batch) % 10, classes=np.arange(10))   # allocates coefs_
        self.load(split(init, shapes))

    def native(self, x, y):
        return x.reshape(len(x), -1), y

    def train_step(self, x: np.ndarray, y: np.ndarray) -> None:
        self.clf.partial_fit(x, y)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict(x)

    def params(self) -> list[np.ndarray]:
        out = []
        for w, b in zip(self.clf.coefs_, self.clf.intercepts_):
            out += [w.T.copy(), b.copy()]
        return out

    def load(self, params: list[np.ndarray]) -> None:
        dtype = params[0].dtype
        self.clf.coefs_ = [np.ascontiguousarray(w.T, dtype=dtype) for w in params[0::2]]
        self.clf.intercepts_ = [np.array(b, dtype=dtype) for b in params[1::2]]


class GemmCeiling:
    """Only the matrix products of one MLP training step at batch B, on preallocated arrays in the
    numpy reference's layout: forward x·W1ᵀ, h1·W2ᵀ, h2·W3ᵀ (np.matmul); backward gᵀ·h (three
    weight gradients, np.dot, which hands the K = 1 outer product at B = 1 to BLAS too; numpy's
    matmul does not) and g·W (two hidden-state gradients, np.matmul)."""

    name = "gemm"

    def __init__(self, model: str, init: np.ndarray, shapes, batch: int, **_) -> None:
        if model != "mlp":
            raise ValueError(f"GemmCeiling: expected model 'mlp', got {model!r}")
        rng = np.random.default_rng(0)
        n, dt = batch, init.dtype
        sizes = MLP_SIZES
        self.w = [rng.standard_normal((b, a)).astype(dt) for a, b in zip(sizes[:-1], sizes[1:])]
        self.gw = [np.empty_like(w) for w in self.w]
        self.h = [np.empty((n, s), dt) for s in sizes[1:]]       # h1, h2, scores
        self.d = [rng.standard_normal((n, s)).astype(dt) for s in sizes[1:]]   # ∂E/∂h1, ∂E/∂h2, ∂E/∂s

    def native(self, x, y):
        return x.reshape(len(x), -1), y

    def train_step(self, x: np.ndarray, y: np.ndarray) -> None:
        (w1, w2, w3), (g1, g2, g3), (h1, h2, s), (d1, d2, d3) = self.w, self.gw, self.h, self.d
        np.matmul(x, w1.T, out=h1)
        np.matmul(h1, w2.T, out=h2)
        np.matmul(h2, w3.T, out=s)
        np.dot(d3.T, h2, out=g3)
        np.matmul(d3, w3, out=d2)
        np.dot(d2.T, h1, out=g2)
        np.matmul(d2, w2, out=d1)
        np.dot(d1.T, x, out=g1)


def preload(system: str) -> None:
    """Import the system's library, so that the memory measured from here on is the workload's."""
    if system == "fbprop":
        import scipy.linalg.blas  # noqa: F401                       # fbprop imports it at its first product

        import fbprop  # noqa: F401
    elif system in ("numpy-ger", "numpy-fold"):
        import scipy.linalg.blas  # noqa: F401                       # its ger, its gemm
    elif system in ("pytorch", "pytorch-idiomatic"):
        import sys_torch  # noqa: F401
    elif system == "sklearn":
        import sklearn.neural_network  # noqa: F401


def make(system: str, model: str, **kw):
    if system == "fbprop":
        return FbpropSystem(model, **kw)
    if system in ("numpy-ref", "numpy-ref-2", "numpy-ger", "numpy-fold"):
        import sys_numpy
        return sys_numpy.make(model, online_ger=system == "numpy-ger", fold=system == "numpy-fold", **kw)
    if system == "pytorch":
        import sys_torch
        return sys_torch.TorchSystem(model, **kw)
    if system == "pytorch-idiomatic":
        import sys_torch
        return sys_torch.TorchIdiomaticSystem(model, **kw)
    if system == "sklearn":
        return SklearnSystem(model, **kw)
    if system == "gemm":
        return GemmCeiling(model, **kw)
    raise ValueError(f"unknown system {system!r}: expected one of {', '.join(SYSTEMS + ('gemm',))}")


def supports(system: str, model: str, mode: str, batch: int | None = None) -> bool:
    if system in ONLINE_ONLY:
        return model == "mlp" and mode == "train" and batch in (1, None)
    if system in MLP_ONLY:
        return model == "mlp"
    if system in LENET5_ONLY:
        return model == "lenet5"
    if system == "gemm":
        return model == "mlp" and mode == "train"
    return True
