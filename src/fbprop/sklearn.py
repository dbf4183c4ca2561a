"""scikit-learn estimators around fbprop's machines: `EnergyClassifier` and `EnergyRegressor`.

Each wraps a model of the registry (`fbprop.models.MODELS`: "mlp", "linear", "lenet5",
"lenet-modern", or one registered by the user) or a machine of the user's own, and trains it
through `fbprop.Trainer` on a `Dataset` built from the arrays. They follow scikit-learn's contract
(`check_estimator` passes), so they sit in a `Pipeline`, `GridSearchCV` or `cross_val_score`:

    >>> from fbprop.sklearn import EnergyClassifier
    >>> clf = EnergyClassifier(hidden=(32,), epochs=30, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:3])

`model` is one of:
- a registry name; `hidden`, `energy`, `loss`, `loss_args` and `model_options` fill its spec
  (`hidden` only for models that take it, e.g. mlp);
- a `Machine`, copied at each fit from scratch (its weights are where training starts, so a
  refit gives the same result);
- a callable `model(input_shape, n_outputs, seed) -> Machine` building a fresh machine, e.g.
  `lambda shape, k, seed: fb.build_machine({"model": "mlp", "hidden": [20], "input_shape": list(shape),
  "n_classes": k, "seed": seed, "dtype": "float64"})`. For a regression the machine's energy must be
  `Euclidean` and its output (n, n_outputs).

Inputs are standardised column by column with the mean and standard deviation of the first fit's
data (remembered as `x_mean_`, `x_scale_`; `standardize=False` leaves them as given); a regression's
targets are standardised the same way for training and its answers mapped back. `input_shape`
reshapes each row, e.g. (1, 8, 8) for the digits' 64 pixels into the conv models (channels first).
"""

from __future__ import annotations

import copy
import io
import math
import sys
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from fbprop.data.datasets import Dataset, Split
from fbprop.machine import Machine
from fbprop.models import build_machine, model_entry
from fbprop.train import Trainer

__all__ = ["EnergyClassifier", "EnergyRegressor"]

ModelBuilder = Callable[[tuple, int, int], Machine]


class _EnergyEstimator(BaseEstimator):
    """What the classifier and the regressor share: building, standardising, training."""

    _task = ""

    def __init__(self, model: str | Machine | ModelBuilder = "mlp", *, hidden: tuple[int, ...] | None = (64,),
                 energy: str | None = None, loss: str | None = None, loss_args: dict | None = None,
                 model_options: dict | None = None, input_shape: tuple[int, ...] | None = None,
                 optimizer: str = "adam", lr: float | None = None, optimizer_options: dict | None = None,
                 batch_size: int = 32, epochs: int = 50, schedule: str = "constant", alpha: float = 0.0,
                 early_stopping: bool = False, validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 standardize: bool = True, dtype: str = "float64", random_state=None, warm_start: bool = False,
                 verbose: bool = False) -> None:
        self.model, self.hidden, self.energy, self.loss, self.loss_args = model, hidden, energy, loss, loss_args
        self.model_options, self.input_shape = model_options, input_shape
        self.optimizer, self.lr, self.optimizer_options = optimizer, lr, optimizer_options
        self.batch_size, self.epochs, self.schedule, self.alpha = batch_size, epochs, schedule, alpha
        self.early_stopping, self.validation_fraction = early_stopping, validation_fraction
        self.n_iter_no_change, self.standardize, self.dtype = n_iter_no_change, standardize, dtype
        self.random_state, self.warm_start, self.verbose = random_state, warm_start, verbose

    # scikit-learn's entry points -----------------------------------------------------------------
    def fit(self, X, y):
        """Train for `epochs` epochs (fewer with early stopping): from scratch, or with `warm_start`
        from the machine of the previous fit (same standardisation, same optimizer state)."""
        return self._fit(X, y, self.epochs, keep=self.warm_start, validate=self.early_stopping)

    def _partial_fit(self, X, y, classes=None):
        return self._fit(X, y, 1, keep=True, validate=False, classes=classes)

    # building -----------------------------------------------------------------------------------
    def _fit(self, X, y, epochs: int, keep: bool, validate: bool, classes=None):
        first = not (keep and hasattr(self, "machine_"))
        X, y = self._check_data(X, y, first)
        if first:
            self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
            self._start_targets(y, classes)
            self._start_inputs(X)
            self.machine_ = self._build(X.shape[1], self._n_outputs(), self._seed)
            self._optimizer_state, self.n_iter_, self.history_ = None, 0, []
        targets, x = self._targets(y), self._inputs(X)
        train, val = self._split(x, targets, validate)
        data = Dataset(f"{type(self).__name__} data", train, val, Split(x[:0], targets[:0]), self._n_outputs(),
                       tuple(x.shape[1:]), 0.0, 1.0, 1.0, task=self._task, class_names=self._class_names())
        trainer = Trainer(self.machine_, data, optimizer=self.optimizer, lr=self.lr, batch_size=self.batch_size,
                          epochs=epochs, schedule=self.schedule, seed=self._seed + self.n_iter_,
                          patience=self.n_iter_no_change if validate and len(val) else None,
                          log=sys.stdout if self.verbose else io.StringIO(), progress=False,
                          **(self.optimizer_options or {}))
        if self._optimizer_state is not None:
            trainer.optimizer.load_state(self._optimizer_state)
        trainer.fit()
        if len(val):                                             # early stopping: the best epoch's parameters
            trainer.restore_best()
        self._optimizer_state = {k: np.array(v, copy=True) for k, v in trainer.optimizer.state().items()}
        self.n_iter_ += trainer.epoch
        self.history_ = [*self.history_, *trainer.history]
        if len(val):
            self.best_validation_error_ = trainer.best.error
        return self

    def _check_data(self, X, y, first: bool):
        return validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32])

    def _start_inputs(self, X: np.ndarray) -> None:
        if self.standardize:
            self.x_mean_ = X.mean(axis=0, dtype=np.float64)
            scale = X.std(axis=0, dtype=np.float64)
            self.x_scale_ = np.where(scale > 1e3 * np.finfo(np.float64).eps * np.abs(self.x_mean_) + 1e-300,
                                     scale, 1.0)                 # constant columns: centred only
        else:
            self.x_mean_, self.x_scale_ = np.zeros(X.shape[1]), np.ones(X.shape[1])

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        """Rows of X standardised, reshaped to the machine's input shape, in its pool's dtype."""
        dtype = self.machine_.pool.dtype
        x = ((X - self.x_mean_) / self.x_scale_).astype(dtype, copy=False)
        if not np.isfinite(x).all():
            raise ValueError(f"{type(self).__name__}: the inputs hold values too large for {dtype} once standardised")
        shape = self._input_shape(X.shape[1])
        return np.ascontiguousarray(x.reshape(len(x), *shape))

    def _input_shape(self, n_features: int) -> tuple[int, ...]:
        if self.input_shape is None:
            return (n_features,)
        shape = tuple(int(s) for s in self.input_shape)
        if math.prod(shape) != n_features:
            raise ValueError(f"{type(self).__name__}: input_shape {shape} holds {math.prod(shape)} values, "
                             f"but X has {n_features} features")
        return shape

    def _build(self, n_features: int, n_outputs: int, seed: int) -> Machine:
        name, shape = type(self).__name__, self._input_shape(n_features)
        if isinstance(self.model, str):
            entry = model_entry(self.model)
            spec = {"model": self.model, **(self.model_options or {}), "input_shape": list(shape),
                    "n_classes": n_outputs, "task": self._task, "dtype": self.dtype, "seed": seed}
            if self.hidden is not None and "hidden" in entry.options:
                spec["hidden"] = [int(h) for h in self.hidden]
            for key in ("energy", "loss", "loss_args"):
                if getattr(self, key) is not None:
                    spec[key] = getattr(self, key)
            if self.alpha:
                spec["regularizer"] = {"kind": "l2", "lam": float(self.alpha)}
            return build_machine(spec)
        if isinstance(self.model, Machine):
            machine = copy.deepcopy(self.model)
        elif callable(self.model):
            machine = self.model(shape, n_outputs, seed)
        else:
            raise TypeError(f"{name}: expected model a registry name, a Machine or a callable "
                            f"(input_shape, n_outputs, seed) -> Machine, got {type(self.model).__name__}")
        if not isinstance(machine, Machine):
            raise TypeError(f"{name}: expected the model builder to return a Machine, got {type(machine).__name__}")
        if machine.regression != (self._task == "regression"):
            kind = "a regression (Euclidean energy)" if self._task == "regression" else "a classifier"
            raise ValueError(f"{name}: expected a machine of {kind}, got {machine!r}")
        return machine

    def _split(self, x: np.ndarray, targets: np.ndarray, validate: bool) -> tuple[Split, Split]:
        """The training split and, for early stopping, `validation_fraction` of it held out."""
        if not validate:
            return Split(x, targets), Split(x[:0], targets[:0])
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"{type(self).__name__}: expected validation_fraction in (0, 1), "
                             f"got {self.validation_fraction!r}")
        n_val = math.ceil(self.validation_fraction * len(x))
        if n_val >= len(x):
            raise ValueError(f"{type(self).__name__}: early stopping needs at least 2 samples, got {len(x)}")
        stratify = self._stratify(targets, n_val, len(x) - n_val)
        train, val = train_test_split(np.arange(len(x)), test_size=n_val, random_state=self._seed, stratify=stratify)
        return Split(x[train], targets[train]), Split(x[val], targets[val])

    def _stratify(self, targets, n_val: int, n_train: int):
        return None

    def _class_names(self) -> list[str] | None:
        return None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


class EnergyClassifier(ClassifierMixin, _EnergyEstimator):
    """A classifier trained by energy-based learning: the answer is argmin_y E(W, y, X).

    Parameters (all optional):
    - `model` "mlp": a registry name, a Machine, or a callable (input_shape, n_outputs, seed) -> Machine;
    - `hidden` (64,): hidden layer sizes, for models that take them (mlp);
    - `energy`, `loss`, `loss_args`, `model_options`: the spec's (None: the model's defaults, e.g.
      negated scores and the NLL loss for mlp); `input_shape`: one row's shape for the model, e.g. (1, 8, 8);
    - `optimizer` "adam" (any name of `fbprop.optim.OPTIMIZERS`), `lr` (None: its default),
      `optimizer_options` (e.g. {"momentum": 0.5}), `batch_size` 32, `epochs` 50, `schedule` "constant";
    - `alpha` 0: λ of the L2 regularizer ½λ‖W‖², spread over the training samples;
    - `early_stopping` False: hold `validation_fraction` 0.1 of the data out (stratified), stop after
      `n_iter_no_change` 10 epochs without a lower validation error, keep the best epoch's parameters;
    - `standardize` True, `dtype` "float64", `random_state` None, `warm_start` False, `verbose` False
      (True: the Trainer's line per epoch on stdout).

    Fitted attributes: `classes_`, `n_features_in_`, `machine_` (the trained fbprop Machine: save it
    with `fb.save`), `x_mean_`, `x_scale_`, `n_iter_` (epochs trained), `history_` (the Trainer's records).

    `predict_proba` is the Gibbs distribution p(y | X) = softmax(−β E(W, y, X)) over the classes
    (`Machine.proba`). For a machine trained with the NLL loss (the default) it is the distribution
    that loss fits, at the loss's β. For other losses (hinge, perceptron, square-square, …) the
    training shaped only which energy is lowest and by what margin: the probabilities rank the classes
    as `predict` does, but their sharpness (β = 1) is not trained — calibrate them (e.g. with
    `sklearn.calibration.CalibratedClassifierCV`) before reading them as frequencies.
    """

    _task = "classification"

    def partial_fit(self, X, y, classes=None):
        """One epoch on (X, y); the first call needs `classes` (every label there will ever be) unless
        the estimator was fitted already. The standardisation is the first call's."""
        if not hasattr(self, "machine_") and classes is None:
            raise ValueError(f"{type(self).__name__}.partial_fit: the first call needs classes=, "
                             "every label of the task")
        return self._partial_fit(X, y, classes)

    def _check_data(self, X, y, first: bool):
        X, y = super()._check_data(X, y, first)
        check_classification_targets(y)
        return X, y

    def _start_targets(self, y: np.ndarray, classes) -> None:
        self.classes_ = np.unique(y) if classes is None else np.unique(np.asarray(classes))
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__}: needs samples of at least 2 classes to train, "
                             f"got 1 class ({self.classes_[0]!r})")

    def _targets(self, y: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.classes_, y)
        index[index >= len(self.classes_)] = 0
        unknown = self.classes_[index] != y
        if unknown.any():
            raise ValueError(f"{type(self).__name__}: label {y[unknown][0].tolist()!r} is not one of the classes "
                             f"{self.classes_.tolist()}")
        return index.astype(np.int64)

    def _n_outputs(self) -> int:
        return len(self.classes_)

    def _class_names(self) -> list[str]:
        return [str(c) for c in self.classes_]

    def _stratify(self, targets, n_val: int, n_train: int):
        counts = np.bincount(targets)
        k = np.count_nonzero(counts)
        return targets if counts[counts > 0].min() >= 2 and n_val >= k and n_train >= k else None

    def _energies_ready(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return self._inputs(X)

    def predict(self, X) -> np.ndarray:
        """The class of lowest energy for each row of X."""
        x = self._energies_ready(X)
        return self.classes_[self.machine_.predict(x)]

    def predict_proba(self, X) -> np.ndarray:
        """(n, n_classes) Gibbs probabilities softmax(−βE), columns in the order of `classes_` (see the class doc)."""
        x = self._energies_ready(X)
        return self.machine_.proba(x).astype(np.float64)

    def predict_log_proba(self, X) -> np.ndarray:
        """log of `predict_proba`, computed without underflow: −βE − log Σ exp(−βE)."""
        x = self._energies_ready(X)
        e = -self.machine_.beta * self.machine_.energies_of(x).astype(np.float64)
        top = e.max(axis=1, keepdims=True)
        return e - top - np.log(np.exp(e - top).sum(axis=1, keepdims=True))

    def energies(self, X) -> np.ndarray:
        """(n, n_classes) energies E(W, y, X), columns in the order of `classes_`: lower is better."""
        x = self._energies_ready(X)
        return self.machine_.energies_of(x).astype(np.float64)


class EnergyRegressor(RegressorMixin, _EnergyEstimator):
    """A regression machine: answer G(X), energy E = ½‖G(X) − Y‖² (Euclidean), loss L = E by default.

    Parameters as `EnergyClassifier`'s (the spec's `task` is "regression"; `energy` may only be
    "euclidean"); `y` is (n,) or (n, t) real targets, standardised per column for training
    (`y_mean_`, `y_scale_`) and mapped back by `predict`. Early stopping watches the validation RMSE.
    `score` is R², as every scikit-learn regressor's.
    """

    _task = "regression"

    def partial_fit(self, X, y):
        """One epoch on (X, y); the standardisation of inputs and targets is the first call's."""
        return self._partial_fit(X, y)

    def _check_data(self, X, y, first: bool):
        return validate_data(self, X, y, reset=first, dtype=[np.float64, np.float32], multi_output=True,
                             y_numeric=True)

    def _start_targets(self, y: np.ndarray, classes) -> None:
        y = np.asarray(y, dtype=np.float64)
        self._y_ndim = y.ndim
        y2 = y.reshape(len(y), -1)
        self.n_outputs_ = y2.shape[1]
        self.y_mean_ = y2.mean(axis=0) if self.standardize else np.zeros(self.n_outputs_)
        scale = y2.std(axis=0) if self.standardize else np.ones(self.n_outputs_)
        self.y_scale_ = np.where(scale > 0, scale, 1.0)

    def _targets(self, y: np.ndarray) -> np.ndarray:
        y2 = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if y2.shape[1] != self.n_outputs_:
            raise ValueError(f"{type(self).__name__}: expected {self.n_outputs_} targets per sample as in the "
                             f"first fit, got {y2.shape[1]}")
        return ((y2 - self.y_mean_) / self.y_scale_).astype(self.machine_.pool.dtype, copy=False)

    def _n_outputs(self) -> int:
        return self.n_outputs_

    def predict(self, X) -> np.ndarray:
        """G(X) for each row, in the targets' units: (n,) for targets given as (n,), else (n, t)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        out = self.machine_.predict(self._inputs(X)).reshape(len(X), -1).astype(np.float64)
        out = out * self.y_scale_ + self.y_mean_
        return out.ravel() if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True                     # (n, t) targets: one Euclidean energy over t
        return tags
