"""Test-time mirroring: inference on E'(W, y, X) = ½ [E(W, y, X) + E(W, y, mirror(X))]; and lenet-wide."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fbprop as fb
from fbprop.checkpoint import CheckpointError, check_spec
from fbprop.data.datasets import Normalisation, load_dataset
from fbprop.models import build_machine
from fbprop.train import evaluate
from test_cli import fail, ok, one_line

SPEC = {"model": "lenet-modern", "input_shape": [1, 8, 8], "n_classes": 10, "dtype": "float64", "seed": 3}


def _pair():
    """The same net twice (same seed, so the same parameters): plain, and mirroring at inference."""
    return build_machine(SPEC), build_machine({**SPEC, "test_mirror": True})


def test_mirrored_energies_are_the_mean_over_the_image_and_its_mirror():
    plain, mirroring = _pair()
    assert np.array_equal(plain.pool.x, mirroring.pool.x)
    x = np.random.default_rng(0).standard_normal((7, 1, 8, 8))
    want = 0.5 * (plain.energies_of(x) + plain.energies_of(x[..., ::-1]))
    got = mirroring.energies_of(x, batch_size=3)                 # batches of 3, 3 and 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    assert not np.allclose(got, plain.energies_of(x))           # the mirror does change them
    assert np.array_equal(mirroring.predict(x, batch_size=2), want.argmin(1))
    symmetric = x + x[..., ::-1]                                 # an image equal to its mirror: no change
    np.testing.assert_allclose(mirroring.energies_of(symmetric), plain.energies_of(symmetric), rtol=0, atol=1e-13)


def test_evaluation_reports_the_loss_and_error_of_the_mirrored_energies_and_training_ignores_them():
    plain, mirroring = _pair()
    data = load_dataset("digits", val_size=0, dtype=np.float64, limit=200)
    meter = evaluate(mirroring, data.test, 10, batch_size=100)
    e = 0.5 * (plain.energies_of(data.test.x) + plain.energies_of(data.test.x[..., ::-1]))
    assert meter.error == pytest.approx(np.mean(e.argmin(1) != data.test.y), abs=1e-12)
    nll = fb.NLLLoss()
    losses = fb.State()
    nll.fprop(fb.State(e), fb.State(data.test.y), losses)
    assert meter.loss == pytest.approx(losses.x.mean(), rel=1e-12)
    x, y = data.train.x[:16], data.train.y[:16]                  # a training step sees the image alone
    assert plain.gradient(x, y) == mirroring.gradient(x, y)
    assert np.array_equal(plain.pool.dx, mirroring.pool.dx)


def test_test_mirror_is_refused_for_a_regression_and_for_inputs_that_are_not_images():
    with pytest.raises(ValueError, match="test_mirror moves images .* got input_shape .64."):
        build_machine({"model": "mlp", "input_shape": [64], "n_classes": 10, "test_mirror": True})
    with pytest.raises(ValueError, match="test_mirror .* needs a classifier, not a regression"):
        build_machine({"model": "mlp", "input_shape": [1, 8, 8], "n_classes": 2, "task": "regression",
                       "test_mirror": True})
    with pytest.raises(CheckpointError, match="architecture.test_mirror: expected true or false, got 'yes'"):
        check_spec("c.npz", {"test_mirror": "yes"})


def test_the_command_line_records_test_mirror_and_eval_infers_with_it(tmp_path):
    d = tmp_path / "run"
    ok("train", "--model", "lenet-modern", "--test-mirror", "--epochs", "2", "--limit", "300", "--out", d,
       "--no-plots")
    spec = json.loads((d / "config.json").read_text())["model"]
    assert spec["test_mirror"] is True
    out, _ = ok("eval", d / "checkpoint.npz")
    report = json.loads(out.strip().splitlines()[-1])
    machine = build_machine(spec)
    machine.pool.load(np.load(d / "checkpoint.npz")["params"])
    data = load_dataset("digits", val_size=spec["val_size"], seed=spec["seed"])
    data.standardise_as(Normalisation.from_dict(spec["normalisation"]))
    x = data.test.x
    machine.test_mirror = False
    e = 0.5 * (machine.energies_of(x) + machine.energies_of(x[..., ::-1]))
    assert report["error"] == pytest.approx(np.mean(e.argmin(1) != data.test.y), abs=1e-12)
    losses = fb.State()
    fb.NLLLoss().fprop(fb.State(e), fb.State(data.test.y), losses)
    plain = fb.State()
    fb.NLLLoss().fprop(fb.State(machine.energies_of(x)), fb.State(data.test.y), plain)
    assert report["loss"] == pytest.approx(losses.x.mean(), rel=1e-5)
    assert report["loss"] != pytest.approx(plain.x.mean(), rel=1e-3)       # not the plain energies' loss


# ---- lenet-wide and the sizes of lenet-modern ---------------------------------------------------

def test_lenet_wide_is_lenet_modern_with_twice_the_maps_and_256_hidden_units():
    m = build_machine({"model": "lenet-wide", "input_shape": [1, 28, 28], "n_classes": 10})
    kinds = [(type(mod).__name__, sum(p.x.size for p in mod.params())) for mod in fb.network.leaves(m.net)]
    assert kinds == [("Conv2d", 9 * 64), ("ReLU", 64), ("MaxPool", 0), ("Conv2d", 9 * 64 * 128), ("ReLU", 128),
                     ("MaxPool", 0), ("Flatten", 0), ("Linear", 128 * 7 * 7 * 256), ("ReLU", 256),
                     ("Linear", 256 * 10), ("Bias", 10)]
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert m.energies_of(x).shape == (2, 10)


def test_lenet_modern_takes_several_hidden_layers_and_refuses_bad_sizes_in_one_line(tmp_path):
    net = fb.lenet_modern(fb.ParamPool(), size=8, maps=(4, 6), hidden=[5, 3], dropout=0.1)
    names = [type(mod).__name__ for mod in net.modules]
    assert names == ["Conv2d", "ReLU", "MaxPool", "Conv2d", "ReLU", "MaxPool", "Flatten", "Dropout", "Linear",
                     "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "Bias"]
    assert [mod.w.x.shape for mod in net.modules if isinstance(mod, fb.Linear)] == [(5, 24), (3, 5), (10, 3)]
    with pytest.raises(ValueError, match="expected maps, two positive numbers of feature maps, got \\[4\\]"):
        fb.lenet_modern(fb.ParamPool(), size=8, maps=[4])
    with pytest.raises(ValueError, match="expected hidden, one or more positive layer sizes, got \\[0\\]"):
        fb.lenet_modern(fb.ParamPool(), size=8, hidden=[0])
    with pytest.raises(ValueError, match="a divisor of both maps 8 and 12, got 8"):
        fb.lenet_modern(fb.ParamPool(), size=8, maps=(8, 12), norm_groups=8)
    d = tmp_path / "run"
    ok("train", "--model", "lenet-modern", "--maps", "4,8", "--hidden", "16", "--epochs", "1", "--limit", "100",
       "--out", d, "--no-plots")
    spec = json.loads((d / "config.json").read_text())["model"]
    assert spec["maps"] == [4, 8] and spec["hidden"] == [16]
    assert "--maps is an option of lenet-modern, lenet-wide, not of lenet5" in one_line(
        fail("train", "--model", "lenet5", "--maps", "4,8", "--out", tmp_path / "r2"))


def test_export_of_a_mirroring_run_says_how_to_reproduce_its_answers(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    ok("train", "--model", "lenet-modern", "--test-mirror", "--epochs", "2", "--limit", "300", "--no-plots",
       "--out", run)
    out, _ = ok("export", run, "--onnx", tmp_path / "m.onnx")
    assert out.splitlines()[1] == (f"note: {run} infers on several views of each image; the ONNX graph gives the "
                                   f"energies of x alone: average them over x, x[..., ::-1] for fbprop's answers")
    data = load_dataset("digits")
    pixels = np.rint((data.test.x * data.std + data.mean) * 16).astype(np.float32)    # counts 0..16
    np.save(tmp_path / "pixels.npy", pixels[:, 0])
    answers = np.array(ok("predict", run, tmp_path / "pixels.npy")[0].split(), dtype=int)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    energies = [session.run(None, {"x": np.ascontiguousarray(p)})[0] for p in (pixels, pixels[..., ::-1])]
    assert (np.argmin(energies[0] + energies[1], axis=1) == answers).mean() > 0.99


def test_the_attribute_turns_mirroring_on_and_fb_save_keeps_it(tmp_path):
    plain, _ = _pair()
    machine = build_machine(SPEC)
    machine.test_mirror = True
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8))
    want = 0.5 * (plain.energies_of(x) + plain.energies_of(x[..., ::-1]))
    np.testing.assert_allclose(machine.energies_of(x), want, rtol=0, atol=1e-13)
    fb.save(machine, tmp_path / "m.npz")
    loaded = fb.load(tmp_path / "m.npz")
    assert loaded.test_mirror is True
    np.testing.assert_allclose(loaded.energies_of(x), want, rtol=0, atol=1e-13)
    with pytest.raises(TypeError, match="test_mirror is True or False, got 'yes'"):
        machine.test_mirror = "yes"


def _shifted(x, dy, dx):
    """x moved dy rows down and dx columns right, the edges repeated (numpy's edge padding, then a crop)."""
    h, w = x.shape[-2:]
    p = np.pad(x, ((0, 0), (0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    return p[..., abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


@pytest.mark.parametrize("mirror", [False, True])
def test_shifted_views_average_the_energies_of_the_image_moved_each_way(mirror):
    plain = build_machine(SPEC)
    views = build_machine({**SPEC, "test_mirror": mirror, "test_shift": 1})
    x = np.random.default_rng(2).standard_normal((5, 1, 8, 8))
    images = [x, x[..., ::-1]] if mirror else [x]
    moves = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
    want = np.mean([plain.energies_of(_shifted(im, dy, dx)) for im in images for dy, dx in moves], axis=0)
    np.testing.assert_allclose(views.energies_of(x, batch_size=2), want, rtol=0, atol=1e-12)
    assert np.array_equal(views.predict(x), want.argmin(1))
    two = build_machine({**SPEC, "test_shift": 2})
    want2 = np.mean([plain.energies_of(_shifted(x, dy, dx)) for dy, dx in [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)]],
                    axis=0)
    np.testing.assert_allclose(two.energies_of(x), want2, rtol=0, atol=1e-12)


def test_test_shift_is_refused_when_negative_or_not_for_images_and_recorded_by_the_command_line(tmp_path):
    with pytest.raises(ValueError, match="test_shift is a number of pixels >= 0, got -1"):
        build_machine({**SPEC, "test_shift": -1})
    with pytest.raises(ValueError, match="test_shift moves images .* got input_shape .64."):
        build_machine({"model": "mlp", "input_shape": [64], "n_classes": 10, "test_shift": 1})
    with pytest.raises(CheckpointError, match="architecture.test_shift: expected 0 to 64 pixels, got 100"):
        check_spec("c.npz", {"test_shift": 100})
    d = tmp_path / "run"
    ok("train", "--model", "lenet-modern", "--test-mirror", "--test-shift", "1", "--epochs", "1", "--limit", "200",
       "--out", d, "--no-plots")
    spec = json.loads((d / "config.json").read_text())["model"]
    assert spec["test_mirror"] is True and spec["test_shift"] == 1
    assert "test_shift is a number of pixels >= 0, got -2" in one_line(
        fail("train", "--model", "lenet-modern", "--test-shift", "-2", "--out", tmp_path / "r2"))
