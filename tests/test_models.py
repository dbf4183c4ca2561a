"""The model registry: defaults, specs, errors, and a model added from outside fbprop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import fbprop as fb
from fbprop import cli
from fbprop.models import MODELS, ModelEntry, build_machine, default_spec, register_model


def test_every_model_builds_from_its_defaults_and_its_net_maps_images_to_energies():
    for name in MODELS:
        spec = {"model": name, "input_shape": [1, 28, 28], "n_classes": 10, "dtype": "float64"}
        machine = build_machine(spec)
        machine.fprop(np.zeros((2, 1, 28, 28)), np.array([0, 1]))
        assert machine.energies.x.shape == (2, 10), name
        assert machine.spec == {**default_spec(name), **spec}


@pytest.mark.parametrize("spec, message", [
    ({"model": "resnet"}, "unknown model 'resnet': expected one of mlp, linear, lenet5, lenet-modern"),
    ({"model": "mlp", "n_classes": 10}, "the spec has no 'input_shape'"),
    ({"model": "mlp", "input_shape": [1, 8, 8], "n_classes": 10, "squash": "cube"}, "unknown squash 'cube'"),
    ({"model": "mlp", "input_shape": [1, 8, 8], "n_classes": 10, "loss": "ranking"}, "unknown loss 'ranking'"),
    ({"model": "mlp", "input_shape": [1, 8, 8], "n_classes": 10, "loss_args": {"gamma": 2}},
     "loss 'nll': unknown argument 'gamma' \\(it takes beta\\)"),
    ({"model": "lenet5", "input_shape": [1, 27, 27], "n_classes": 10}, "lenet5: expected square one-channel images"),
    ({"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10, "dropout": 0.2},   # was built without it
     "'dropout' is an option of mlp, lenet-modern, lenet-wide, not of lenet5 \\(whose options are none\\)"),
    ({"model": "mlp", "input_shape": [1, 8, 8], "n_classes": 10, "maps": [4, 8]},
     "'maps' is an option of lenet-modern, lenet-wide, not of mlp \\(whose options are hidden, squash, dropout\\)"),
])
def test_bad_specs_are_one_value_error_naming_the_setting(spec, message):
    with pytest.raises(ValueError, match=message):
        build_machine(spec)


def _tiny(spec: dict, pool: fb.ParamPool):
    k = int(spec["n_classes"])
    return fb.Cascade(fb.Flatten(), fb.Linear(math.prod(spec["input_shape"]), k, pool), fb.Bias(k, pool)), \
        fb.NegatedScores()


@pytest.fixture
def tiny_model():
    register_model("tiny", ModelEntry(_tiny, {"energy": "scores", "loss": "nll"}, help="one linear layer"))
    yield
    del MODELS["tiny"]


def test_a_model_added_to_the_registry_trains_evaluates_and_predicts_from_the_command_line(tiny_model, tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "tiny", "--epochs", "2", "--no-plots", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["model"] == "tiny"
    assert cli.main(["eval", str(run)]) == 0
    assert json.loads((run / "result.json").read_text())["test_error"] < 0.3
