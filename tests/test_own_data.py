"""Your own data (fbprop.data.own) in load_dataset and the command line; regression from the Trainer and the
CLI; predict on image files with --proba / --top-k; colour images in lenet-modern."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import fbprop as fb
from fbprop.data import Split, load_dataset
from fbprop.data.datasets import Dataset
from fbprop.train import Trainer, evaluate
from test_cli import fail, ok, one_line

Image = pytest.importorskip("PIL.Image")


def save_images(root: Path, classes: dict[str, np.ndarray]) -> None:
    """One PNG per image (n, h, w) grey or (n, h, w, 3) colour, in root/<class>/<i>.png."""
    for name, images in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(images):
            Image.fromarray(a, "L" if a.ndim == 2 else "RGB").save(root / name / f"{i:03d}.png")


def colour_squares(rng, n: int, size: int = 8) -> dict[str, np.ndarray]:
    """Two classes told apart by colour alone: red or blue pixels over noise."""
    out = {}
    for name, channel in (("red", 0), ("blue", 2)):
        a = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
        a[..., channel] = rng.integers(160, 256, (n, size, size))
        out[name] = a
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    save_images(root / "colour", colour_squares(rng, 25))
    for split, n in (("train", 20), ("test", 6)):
        dark = rng.integers(0, 80, (n, 8, 8)).astype(np.uint8)
        save_images(root / "grey" / split, {"dark": dark, "light": dark + 150})
    x = rng.normal(size=(250, 3))
    y = 2 * x[:, 0] - x[:, 1] + 0.5 + 0.01 * rng.normal(size=250)
    lines = ["a,b,price,c"] + [f"{a:.6f},{b:.6f},{t:.6f},{c:.6f}" for (a, b, c), t in zip(x, y)]
    (root / "prices.csv").write_text("\n".join(lines) + "\n")
    return root


# loading -----------------------------------------------------------------------------------------
def test_a_colour_image_folder_loads_as_three_maps_with_its_class_names_and_a_held_out_fifth(folders):
    d = load_dataset(str(folders / "colour"), val_size=5, limit=30)
    assert d.image_shape == (3, 8, 8) and d.class_names == ["blue", "red"] and d.n_classes == 2
    assert (len(d.train), len(d.val), len(d.test)) == (30, 5, 10)   # 50 images: 10 test; limit caps train only
    assert d.pixel_scale == 255 and d.task == "classification"
    assert abs(d.train.x.mean()) < 1e-5 and d.train.x.std() == pytest.approx(1, rel=1e-4)


def test_train_and_test_folders_and_their_errors(folders, tmp_path):
    d = load_dataset(str(folders / "grey"), val_size=0)
    assert d.image_shape == (1, 8, 8) and (len(d.train), len(d.test)) == (40, 12)
    save_images(tmp_path / "a", {"x": np.zeros((2, 8, 8), np.uint8), "y": np.zeros((1, 9, 8), np.uint8)})
    with pytest.raises(ValueError, match=r"000.png: expected every image of 8x8 pixels as 000.png, got 8x9"):
        load_dataset(str(tmp_path / "a"))
    save_images(tmp_path / "b" / "train", {"x": np.zeros((2, 8, 8), np.uint8), "y": np.zeros((2, 8, 8), np.uint8)})
    save_images(tmp_path / "b" / "test", {"z": np.zeros((2, 8, 8), np.uint8)})
    with pytest.raises(ValueError, match=r"class folder 'z' is not one of the training classes \['x', 'y'\]"):
        load_dataset(str(tmp_path / "b"))


def test_csv_targets_make_a_regression_and_whole_ones_a_classification(folders, tmp_path):
    d = load_dataset(str(folders / "prices.csv"), label_column="price", val_size=0.1)
    assert d.task == "regression" and d.n_classes == 1 and d.image_shape == (3,)
    assert d.train.y.shape == (len(d.train), 1) and d.train.y.dtype == np.float32 and len(d.test) == 50
    (tmp_path / "c.csv").write_text("u,label\n0.5,1\n0.1,0\n0.7,1\n0.2,0\n0.9,1\n")
    c = load_dataset(str(tmp_path / "c.csv"), val_size=0)
    assert c.task == "classification" and c.n_classes == 2 and c.train.y.dtype == np.int64
    with pytest.raises(ValueError, match="no column 'nope' for the answers \\(columns: u, label\\)"):
        load_dataset(str(tmp_path / "c.csv"), label_column="nope")
    (tmp_path / "bad.csv").write_text("u,label\n0.5,1\nhello,0\n")
    with pytest.raises(ValueError, match="line 3: expected numbers, got 'hello'"):
        load_dataset(str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match="expected one whole-number label per sample"):
        load_dataset(str(folders / "prices.csv"), label_column="price", task="classification")


def test_npz_channels_last_class_names_and_npy_rows(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x[:30], y_train=np.arange(30) % 2, x_test=x[30:], y_test=np.arange(10) % 2,
             class_names=np.array(["even", "odd"]))
    d = load_dataset(str(tmp_path / "d.npz"), val_size=0)
    assert d.image_shape == (3, 6, 6) and d.class_names == ["even", "odd"] and len(d.test) == 10
    np.testing.assert_allclose(d.test.x[0, 2] * d.std + d.mean, x[30, ..., 2] / 255, atol=1e-5)   # test: in order
    np.save(tmp_path / "rows.npy", np.c_[rng.normal(size=(20, 4)), np.arange(20) % 3])
    r = load_dataset(str(tmp_path / "rows.npy"), val_size=0)
    assert r.image_shape == (4,) and r.n_classes == 3 and len(r.test) == 4
    np.savez(tmp_path / "e.npz", x_train=x)
    with pytest.raises(ValueError, match="expected arrays x_train, y_train"):
        load_dataset(str(tmp_path / "e.npz"))


# regression in the Trainer ----------------------------------------------------------------------
def test_meter_rmse_and_mae_follow_their_formulas_and_best_params_watch_val_rmse():
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(200, 3)), np.array([[1.0], [-2.0], [0.5]])
    y = x @ w + 0.1 * rng.normal(size=(200, 1))
    m = fb.build_machine({"model": "linear", "input_shape": [3], "n_classes": 1, "task": "regression",
                          "dtype": "float64"})
    assert repr(m.energy) == "Euclidean()" and type(m.loss).__name__ == "EnergyLoss"
    meter = evaluate(m, Split(x, y), 1)
    d = m.predict(x) - y
    assert meter.rmse == pytest.approx(math.sqrt(np.mean(d**2)), rel=1e-12)
    assert meter.mae == pytest.approx(np.mean(np.abs(d)), rel=1e-12)
    assert meter.loss == pytest.approx(np.mean(0.5 * (d**2).sum(axis=1)), rel=1e-12) and math.isnan(meter.error)
    data = Dataset("line", Split(x[:150], y[:150]), Split(x[150:], y[150:]), Split(x[:0], y[:0]), 1, (3,), 0.0, 1.0,
                   1.0, task="regression")
    t = Trainer(m, data, optimizer="sgd", lr=0.05, epochs=15, log=open("/dev/null", "w"))
    history = t.fit()
    assert history[-1]["val_rmse"] < 0.15 and {"train_rmse", "train_mae", "val_mae"} <= history[-1].keys()
    best = min(range(len(history)), key=lambda i: history[i]["val_rmse"])
    assert t.best.epoch == best + 1 and t.best.error == history[best]["val_rmse"]
    with pytest.raises(ValueError, match="expected labels of shape \\(3,\\) or real targets of shape \\(3, t\\)"):
        Split(np.zeros((3, 2)), np.zeros((3, 2), np.int64))


def test_lenet_modern_takes_colour_maps_and_lenet5_says_it_takes_one():
    m = fb.build_machine({"model": "lenet-modern", "input_shape": [3, 8, 8], "n_classes": 2, "dtype": "float64"})
    m.fprop(np.zeros((2, 3, 8, 8)), None)
    assert m.energies.x.shape == (2, 2) and "Conv2d(3 -> 32" in repr(m.net)
    with pytest.raises(ValueError, match="expected input of shape \\(n, 3, 8, 8\\), got \\(2, 1, 8, 8\\)"):
        m.fprop(np.zeros((2, 1, 8, 8)), None)
    with pytest.raises(ValueError, match="lenet5: expected square one-channel images .* got \\(3, 28, 28\\)"):
        fb.build_machine({"model": "lenet5", "input_shape": [3, 28, 28], "n_classes": 2})


# the command line --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colour_run(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "colour"
    ok("train", "--data", folders / "colour", "--model", "lenet-modern", "--epochs", "3", "--lr", "0.02",
       "--out", out)
    return out


def test_train_on_a_colour_folder_predicts_files_and_folders_with_names_and_probabilities(colour_run, folders):
    spec = json.loads((colour_run / "config.json").read_text())["model"]
    assert spec["input_shape"] == [3, 8, 8] and spec["class_names"] == ["blue", "red"]
    result = json.loads((colour_run / "result.json").read_text())
    assert result["test_error"] == 0 and result["confusion_normalised"] == [[1.0, 0.0], [0.0, 1.0]]
    red = folders / "colour" / "red" / "000.png"
    out, _ = ok("predict", colour_run, red, folders / "colour" / "blue", "--top-k", "2")
    lines = out.splitlines()
    assert len(lines) == 26 and lines[0].startswith(f"{red}\tred 0.") and lines[0].split("\t")[2].startswith("blue")
    assert all(line.split("\t")[1].startswith("blue") for line in lines[1:])
    out, _ = ok("predict", colour_run, red, "--proba")
    p = np.array(out.split("\t")[1].split(), dtype=float)
    assert p.shape == (2,) and p.sum() == pytest.approx(1, abs=1e-3) and p[1] > p[0]
    err = one_line(fail("predict", colour_run, folders / "grey" / "train" / "dark"))
    assert err.endswith("the model takes images of 3 channel(s) of 8x8 pixels, got 1 channel(s) of 8x8")


def test_predict_scales_uint8_and_float_0_255_arrays_alike_and_takes_channels_last(colour_run, folders, tmp_path):
    from fbprop.data.own import read_images
    files = sorted((folders / "colour").rglob("*.png"))
    x = read_images(files)                                        # (n, 3, 8, 8) uint8
    np.save(tmp_path / "u8.npy", x)
    np.save(tmp_path / "f255.npy", x.astype(np.float32))
    np.save(tmp_path / "unit.npy", x.astype(np.float32) / 255)
    np.save(tmp_path / "last.npy", x.transpose(0, 2, 3, 1))
    answers = [ok("predict", colour_run, tmp_path / f"{n}.npy")[0] for n in ("u8", "f255", "unit", "last")]
    assert answers[0] == answers[1] == answers[2] == answers[3]
    assert answers[0].split() == [str(int(f.parent.name == "red")) for f in files]
    np.save(tmp_path / "small.npy", np.zeros((2, 3, 4, 4), np.uint8))
    err = one_line(fail("predict", colour_run, tmp_path / "small.npy"))
    assert err.endswith("small.npy: expected images of shape (n, 3, 8, 8) or (n, 8, 8, 3), got (2, 3, 4, 4)")


def test_regression_from_a_csv_trains_evaluates_and_predicts_in_the_targets_units(folders, tmp_path):
    run = tmp_path / "reg"
    _, err = ok("train", "--data", folders / "prices.csv", "--label-column", "price", "--model", "linear",
                "--epochs", "15", "--no-plots", "--out", run)
    assert "val rmse" in err
    spec = json.loads((run / "config.json").read_text())["model"]
    assert spec["task"] == "regression" and spec["energy"] == "euclidean" and spec["loss"] == "energy"
    result = json.loads((run / "result.json").read_text())
    assert result["test_rmse"] < 0.1 and "test_error" not in result     # targets' std: 2.2
    report = json.loads(ok("eval", run)[0])
    assert report["rmse"] == pytest.approx(result["test_rmse"]) and report["samples"] == 50
    np.save(tmp_path / "x.npy", np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    values = np.array(ok("predict", run, tmp_path / "x.npy")[0].split(), dtype=float)
    np.testing.assert_allclose(values, [2.5, -0.5], atol=0.2)          # y = 2a − b + 0.5
    err = one_line(fail("predict", run, tmp_path / "x.npy", "--top-k", "2"))
    assert "--proba and --top-k need a classifier" in err


def test_the_final_line_names_the_epoch_whose_parameters_it_reports(tmp_path):
    out, _ = ok("train", "--hidden", "8", "--epochs", "2", "--limit", "200", "--no-plots", "--out", tmp_path / "r")
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert f", parameters of epoch {result['params_epoch']} (best validation error); " in out.splitlines()[-1]


def test_help_shows_the_new_options_and_their_defaults():
    out, _ = ok("train", "--help")
    for text in ("--label-column", "--task", "(default: auto)", "(default: all)", "(default: the model's, 20 for mlp)"):
        assert text in " ".join(out.split()), text
    out, _ = ok("predict", "--help")
    assert "--top-k" in out and "--proba" in out


def test_a_broken_pipe_is_one_line(colour_run, tmp_path):
    """`fbprop predict ... | head -1`: the reader is gone before the answers are all written."""
    import io
    import os
    from contextlib import redirect_stderr
    from unittest import mock

    from fbprop import cli

    class ClosedPipe(io.StringIO):
        def __init__(self, fd: int) -> None:
            super().__init__()
            self.fd = fd

        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return self.fd

    np.save(tmp_path / "few.npy", np.zeros((3, 3, 8, 8), np.uint8))
    fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)
    err = io.StringIO()
    try:
        with mock.patch.object(sys, "stdout", ClosedPipe(fd)), redirect_stderr(err):
            code = cli.main(["predict", str(colour_run), str(tmp_path / "few.npy")])
    finally:
        os.close(fd)
    assert code == 2
    assert err.getvalue().splitlines() == ["fbprop predict: error: the output was closed before every answer "
                                           "was written (broken pipe)"]
