"""End to end: the lecture's 2-layer net learns a regression; classifiers reach ≤ 4% on digits."""

import io

import numpy as np
import pytest

import fbprop as fb
from fbprop.data import Dataset, Split, load_dataset
from fbprop.models import build_machine


def test_two_layer_tanh_net_learns_a_regression_with_the_euclidean_energy():
    # y = sin(x1) cos(x2) on [−2, 2]²: the lecture's 2-layer net (tanh on both layers) with the
    # Euclidean energy ½‖G(X) − Y‖² and the energy loss, trained on-line.
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, size=(400, 2))
    y = (np.sin(x[:, 0]) * np.cos(x[:, 1]))[:, None] * 0.8
    pool = fb.ParamPool(np.float64, seed=0)
    machine = fb.Machine(fb.nn_2layer(2, 20, 1, pool), fb.Euclidean(), fb.EnergyLoss(), pool)
    machine.n_train = len(x)
    sgd = fb.SGD(pool, lr=0.05)

    def mse():
        return float(np.mean((machine.predict(x) - y) ** 2))

    before = mse()
    for _ in range(60):
        for i in rng.permutation(len(x)):
            machine.gradient(x[i:i + 1], y[i:i + 1])
            sgd.step()
    after = mse()
    assert after < 0.01 < before / 10, f"mean squared error {before:.4f} -> {after:.4f}"


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", val_size=0, seed=0, dtype=np.float64)


CLASSIFIERS = {
    "online-sgd": dict(optimizer="sgd", lr=0.01, batch_size=1, epochs=8),
    "minibatch-sgd": dict(optimizer="sgd", lr=0.1, batch_size=32, epochs=30),
    "sdlm": dict(optimizer="sdlm", lr=0.005, batch_size=32, epochs=30),
    "lbfgs": dict(optimizer="lbfgs", epochs=5),
}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_digits_classifier_reaches_four_percent_test_error(digits, name):
    spec = {"model": "mlp", "hidden": [64], "input_shape": list(digits.image_shape), "n_classes": 10,
            "dtype": "float64", "seed": 0}
    machine = build_machine(spec)
    trainer = fb.Trainer(machine, digits, progress=False, log=io.StringIO(), **CLASSIFIERS[name])
    trainer.fit()
    error = fb.evaluate(machine, digits.test, 10).error
    assert error <= 0.04, f"{name}: test error {error:.2%}"


def test_end_to_end_split_is_the_fixed_digits_test_set(digits):
    assert isinstance(digits.test, Split) and len(digits.test) == 360 and len(digits.val) == 0


def test_fbprop_train_with_no_option_reaches_three_percent_on_digits(tmp_path, monkeypatch):
    import json

    from fbprop.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--no-plots"]) == 0
    (result,) = tmp_path.glob("runs/digits-mlp-*/result.json")
    assert json.loads(result.read_text())["test_error"] <= 0.03
