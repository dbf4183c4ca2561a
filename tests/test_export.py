"""Export: the ONNX graph run in onnxruntime, and the safetensors weights loaded into hand-written PyTorch modules,
both giving fbprop's energies on real digit images."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fbprop as fb
from fbprop import export

SPECS = {
    "mlp-scores": {"model": "mlp", "input_shape": [64], "hidden": [30, 20]},
    "mlp-rbf": {"model": "mlp", "input_shape": [64], "hidden": [30], "energy": "rbf", "squash": "scaled-tanh"},
    "mlp-logistic-relu": {"model": "mlp", "input_shape": [64], "hidden": [16], "squash": "logistic"},
    "lenet5-rbf": {"model": "lenet5", "input_shape": [1, 8, 8]},
    "lenet5-scores": {"model": "lenet5", "input_shape": [1, 8, 8], "energy": "scores"},
    "lenet-modern": {"model": "lenet-modern", "input_shape": [1, 8, 8]},
    "lenet-modern-groupnorm": {"model": "lenet-modern", "input_shape": [1, 8, 8], "norm_groups": 8},
}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y                              # pixels 0-16


def _trained(spec: dict, x: np.ndarray, y: np.ndarray) -> fb.Machine:
    """A machine a few steps away from its initialisation, so that biases and RBF distances are not trivial."""
    machine = fb.build_machine({**spec, "n_classes": 10, "seed": 1})
    opt = fb.SGD(machine.pool, 0.02)
    for i in range(0, 320, 32):
        machine.gradient(x[i:i + 32], y[i:i + 32])
        opt.step()
    return machine


def _inputs(spec: dict, x: np.ndarray) -> np.ndarray:
    return (x[:600] / 16.0).reshape(-1, *spec["input_shape"])


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal to float32 precision, relative to the energies' range."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * float(np.abs(want).max()))


@pytest.mark.parametrize("name", list(SPECS))
def test_onnx_export_runs_in_onnxruntime_and_gives_fbprops_energies(name, digits, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    spec = SPECS[name]
    x = _inputs(spec, digits[0])
    machine = _trained(spec, x, digits[1])
    export.to_onnx(machine, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["energies"]
    energies = session.run(None, {"x": x})[0]
    want = machine.energies_of(x)
    assert energies.shape == want.shape == (len(x), 10)
    _close(energies, want)
    assert (np.argmin(energies, 1) == machine.predict(x)).mean() > 0.999


def test_onnx_export_with_the_runs_normalisation_takes_raw_pixels(digits):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    spec = SPECS["lenet5-rbf"]
    raw = digits[0][:600].reshape(-1, 1, 8, 8)
    norm = {"mean": 0.3, "std": 0.4, "pixel_scale": 16.0}
    machine = _trained(spec, (raw / 16.0 - 0.3) / 0.4, digits[1])
    model = export.to_onnx(machine, normalisation=norm)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _close(session.run(None, {"x": raw})[0], machine.energies_of((raw / 16.0 - 0.3) / 0.4))


def test_onnx_export_of_a_hand_built_regression_machine_gives_its_output():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pool = fb.ParamPool()
    machine = fb.Machine(fb.Cascade(fb.Reshape(6), fb.Linear(6, 4, pool), fb.Bias(4, pool), fb.ReLU()),
                         fb.Euclidean(), fb.EnergyLoss(), pool)
    machine.net[2].b.x[:] = [0.5, -0.5, 0.1, 0.0]
    with pytest.raises(ValueError, match=r"no spec\['input_shape'\]; pass input_shape"):
        export.to_onnx(machine)
    model = export.to_onnx(machine, input_shape=(2, 3))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    _close(session.run(["output"], {"x": x})[0], machine.predict(x))


def test_a_module_without_an_export_form_is_named():
    class Cube(fb.Squash):
        def f(self, u):
            u **= 3

    pool = fb.ParamPool()
    machine = fb.Machine(fb.Cascade(fb.Linear(3, 2, pool), Cube()), fb.NegatedScores(), fb.NLLLoss(), pool)
    with pytest.raises(TypeError, match=r"export: no ONNX or PyTorch form for Cube\(\) \(Cube\)"):
        export.layers(machine)
    machine = fb.Machine(fb.Cascade(fb.Linear(3, 2, pool), fb.NegatedScores()), None, fb.NLLLoss(), pool)
    with pytest.raises(TypeError, match=r"export: the machine's Cascade computes the energies itself"):
        export.layers(machine)


def test_layers_fuse_each_squash_bias_into_the_layer_before_it():
    machine = fb.build_machine({"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10})
    kinds = [layer.kind for layer in export.layers(machine)]
    assert kinds == ["pad", "conv", "scaled_tanh", "conv", "scaled_tanh", "conv", "scaled_tanh", "conv",
                     "scaled_tanh", "conv", "scaled_tanh", "flatten", "linear", "scaled_tanh", "rbf"]
    tensors = export.state_dict(machine)
    c3 = tensors["5.weight"]
    assert c3.shape == (16, 6, 5, 5) and c3.dtype == np.float32
    assert (c3[~fb.LENET5_C3_TABLE.T] == 0).all() and (c3[fb.LENET5_C3_TABLE.T] != 0).any()
    np.testing.assert_array_equal(tensors["3.weight"][:, 0], np.full((6, 2, 2), 0.25, np.float32))   # a/s², a = 1
    # the pool's numbers, with each subsampling coefficient a spread over its 2x2 window, and the codes
    assert sum(t.size for t in tensors.values()) == machine.pool.size + (6 + 16) * (4 - 1) + 84 * 10


# --- safetensors into hand-written PyTorch modules ---------------------------------------------

def _torch_equivalents(torch):
    """The PyTorch models a user would write for fbprop's built-in ones (written here, not by fbprop)."""
    nn = torch.nn

    class ScaledTanh(nn.Module):
        def forward(self, x):
            return 1.7159 * torch.tanh(2 * x / 3)

    class Negate(nn.Module):
        def forward(self, x):
            return -x

    class RBF(nn.Module):
        def __init__(self, k, d):
            super().__init__()
            self.register_buffer("codes", torch.zeros(k, d))

        def forward(self, x):
            return 0.5 * torch.cdist(x, self.codes) ** 2

    def mlp_scores():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 30), nn.Tanh(), nn.Linear(30, 20), nn.Tanh(),
                             nn.Linear(20, 10), Negate())

    def mlp_rbf():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 30), ScaledTanh(), nn.Linear(30, 10), ScaledTanh(),
                             RBF(10, 10))

    def lenet5():
        return nn.Sequential(
            nn.ZeroPad2d(12),
            nn.Conv2d(1, 6, 5), ScaledTanh(), nn.Conv2d(6, 6, 2, stride=2, groups=6), ScaledTanh(),
            nn.Conv2d(6, 16, 5), ScaledTanh(), nn.Conv2d(16, 16, 2, stride=2, groups=16), ScaledTanh(),
            nn.Conv2d(16, 120, 5), ScaledTanh(), nn.Flatten(), nn.Linear(120, 84), ScaledTanh(), RBF(10, 84))

    def lenet_modern():
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10), Negate())

    def lenet_modern_groupnorm():
        return nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.GroupNorm(8, 32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.GroupNorm(8, 64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10), Negate())

    return {"mlp-scores": mlp_scores, "mlp-rbf": mlp_rbf, "lenet5-rbf": lenet5, "lenet-modern": lenet_modern,
            "lenet-modern-groupnorm": lenet_modern_groupnorm}


@pytest.mark.parametrize("name", ["mlp-scores", "mlp-rbf", "lenet5-rbf", "lenet-modern", "lenet-modern-groupnorm"])
def test_safetensors_load_into_the_equivalent_torch_module_and_give_the_same_energies(name, digits, tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    spec = SPECS[name]
    x = _inputs(spec, digits[0])
    machine = _trained(spec, x, digits[1])
    export.save_safetensors(machine, tmp_path / "weights.safetensors")
    net = _torch_equivalents(torch)[name]()
    net.load_state_dict(safetensors_torch.load_file(tmp_path / "weights.safetensors"), strict=True)
    with torch.no_grad():
        energies = net.eval()(torch.from_numpy(x)).numpy()
    _close(energies, machine.energies_of(x))
    with torch.no_grad():                                        # fbprop's own builder of the same module
        _close(export.torch_module(machine)(torch.from_numpy(x)).numpy(), energies)


def test_safetensors_file_holds_the_state_dict_and_the_layer_list(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    machine = fb.build_machine({**SPECS["lenet-modern"], "n_classes": 10})
    export.save_safetensors(machine, tmp_path / "w.safetensors")
    loaded = st.load_file(tmp_path / "w.safetensors")
    want = export.state_dict(machine)
    assert sorted(loaded) == sorted(want) == ["0.bias", "0.weight", "3.bias", "3.weight", "7.bias", "7.weight",
                                              "9.bias", "9.weight"]
    for k in want:
        np.testing.assert_array_equal(loaded[k], want[k])
    with safe_open(tmp_path / "w.safetensors", framework="numpy") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt"
    assert [layer["kind"] for layer in json.loads(metadata["fbprop_layers"])][:3] == ["conv", "relu", "maxpool"]


# --- fbprop export -----------------------------------------------------------------------------

def test_fbprop_export_writes_an_onnx_model_of_raw_pixels_that_answers_like_predict(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("safetensors")
    from fbprop.data.datasets import load_dataset
    from test_cli import fail, ok, one_line

    run = tmp_path / "run"
    ok("train", "--model", "lenet5", "--epochs", "1", "--limit", "300", "--no-plots", "--out", run)
    out, _ = ok("export", run, "--onnx", tmp_path / "m.onnx", "--safetensors", tmp_path / "m.safetensors")
    assert out.splitlines()[0] == (f"ONNX model written to {tmp_path / 'm.onnx'}: input x (n, 1, 8, 8) of pixel "
                                   f"values 0-16, output energies (n, 10)")
    data = load_dataset("digits")
    pixels = np.rint((data.test.x * data.std + data.mean) * 16).astype(np.uint8)    # counts 0..16
    np.save(tmp_path / "pixels.npy", pixels[:, 0])
    answers = np.array(ok("predict", run, tmp_path / "pixels.npy")[0].split(), dtype=int)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    energies = session.run(None, {"x": pixels.astype(np.float32)})[0]
    assert energies.shape == (len(pixels), 10)
    assert (np.argmin(energies, axis=1) == answers).mean() > 0.99
    assert "nothing to export" in one_line(fail("export", run))
    assert "no such checkpoint" in one_line(fail("export", tmp_path / "nope.npz", "--onnx", tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def test_bench_export_check_runs_and_finds_the_exports_agree():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("safetensors")
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "export_check.py"
    p = subprocess.run([sys.executable, str(script), "--steps", "2", "--samples", "50"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[-1] == "all exports agree with fbprop"
    lines = p.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert [line.split()[0] for line in lines[header + 1:-1]] == ["mlp", "mlp-rbf", "lenet5", "lenet-modern"]
