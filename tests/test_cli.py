"""The `fbprop` command end to end on digits: train, eval, predict, gradcheck, and its errors."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from fbprop import cli
from fbprop.checkpoint import load_checkpoint
from fbprop.data import Split, load_dataset, write_idx
from fbprop.models import build_machine
from fbprop.train import evaluate

RUN_FILES = ["best.npz", "checkpoint.npz", "config.json", "confusion.png", "curves.png", "metrics.csv", "metrics.json",
             "result.json"]
PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ("--hidden", "16", "--no-plots")


def call(*argv, debug: bool) -> tuple[int, str, str]:
    """cli.main(argv) with stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"FBPROP_DEBUG": "1" if debug else "0"}), redirect_stdout(out), \
            redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:                                  # argparse: usage errors, --help
            code = e.code
    return code, out.getvalue(), err.getvalue()


def ok(*argv) -> tuple[str, str]:
    """A command that must succeed; FBPROP_DEBUG=1 lets any exception out as a traceback."""
    code, out, err = call(*argv, debug=True)
    assert code == 0, err
    return out, err


def fail(*argv) -> str:
    """A command that must fail; returns its stderr."""
    code, out, err = call(*argv, debug=False)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err
    return err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-epoch run on digits with plots: (directory, stdout, stderr)."""
    d = tmp_path_factory.mktemp("cli") / "run"
    out, err = ok("train", "--hidden", "16", "--epochs", "3", "--out", d)
    return d, out, err


@pytest.fixture(scope="module")
def raw_test_digits():
    """The digits test images as the raw 0..16 pixel counts, and their labels."""
    data = load_dataset("digits")
    pixels = np.rint((data.test.x[:, 0] * data.std + data.mean) * 16)
    return pixels.astype(np.uint8), data.test.y


# train ----------------------------------------------------------------------------------------
def test_train_writes_checkpoints_metrics_result_and_plots(run):
    d, _, _ = run
    assert sorted(p.name for p in d.iterdir()) == RUN_FILES                 # no temporary file left
    metrics = json.loads((d / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]
    assert metrics["spec"]["hidden"] == [16]
    with open(d / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_error"]) == pytest.approx(metrics["history"][-1]["val_error"])
    result = json.loads((d / "result.json").read_text())
    assert result["epochs"] == 3 and 0 <= result["test_error"] < 0.5
    assert np.sum(result["confusion"]) == 360
    for png in ("curves.png", "confusion.png"):
        assert (d / png).read_bytes()[:8] == PNG
    assert load_checkpoint(d / "checkpoint.npz")[3]["epoch"] == 3


def test_train_writes_one_line_per_epoch_to_a_non_terminal_and_the_test_error_to_stdout(run):
    d, out, err = run
    lines = err.splitlines()
    assert lines[0].startswith("fbprop train: digits (1293 train / 144 val / 360 test), 1210 parameters")
    assert [line[:9] for line in lines[1:]] == ["epoch   1", "epoch   2", "epoch   3"]
    assert "\r" not in err
    test_error = json.loads((d / "result.json").read_text())["test_error"]
    assert out.startswith(f"test error {100 * test_error:.2f}% (accuracy {100 * (1 - test_error):.2f}%) "
                          "after 3 epochs")


def test_progress_option_draws_a_bar_naming_the_epoch(tmp_path):
    _, err = ok("train", *SMALL, "--epochs", "1", "--progress", "--out", tmp_path / "run")
    assert "epoch 1/1" in err


def test_zero_epochs_evaluates_the_initial_net_and_writes_strict_json(tmp_path):
    ok("train", "--hidden", "16", "--epochs", "0", "--out", tmp_path)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    result = json.loads((tmp_path / "result.json").read_text(), parse_constant=refuse)
    assert result["epochs"] == 0 and result["best_val_error"] is None
    assert 0.5 < result["test_error"] <= 1                                  # an untrained net
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG


def test_resume_continues_a_run_with_its_own_seed_and_optimizer(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    options = (*SMALL, "--seed", "3", "--optimizer", "momentum")
    ok("train", *options, "--epochs", "2", "--out", straight)
    ok("train", *options, "--epochs", "1", "--out", split)
    _, err = ok("train", "--no-plots", "--resume", split, "--epochs", "2")        # a directory
    assert f"momentum lr 0.01, batch 32, -> {split}" in err.splitlines()[0]
    assert [line[:9] for line in err.splitlines()[1:]] == ["epoch   2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split", "straight"]
    np.testing.assert_array_equal(load_checkpoint(split)[1], load_checkpoint(straight)[1])
    with open(split / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]
    assert json.loads((split / "result.json").read_text()) | {"seconds": 0} == \
        json.loads((straight / "result.json").read_text()) | {"seconds": 0}


def test_output_directory_holding_a_run_is_refused_and_left_untouched(run):
    d, _, _ = run
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()}
    err = one_line(fail("train", *SMALL, "--epochs", "1", "--out", d))
    assert err == f"fbprop train: error: {d} already holds a run; pass --resume {d / 'checkpoint.npz'} or another --out"
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in d.iterdir()} == before


def test_directory_holding_only_a_result_is_refused_too(tmp_path):
    ok("train", *SMALL, "--epochs", "0", "--out", tmp_path)
    assert "already holds a run" in one_line(fail("train", *SMALL, "--epochs", "0", "--out", tmp_path))


# eval and predict -----------------------------------------------------------------------------
def test_eval_of_a_run_directory_prints_the_test_error_of_result_json(run):
    d, _, _ = run
    result = json.loads((d / "result.json").read_text())
    for checkpoint in (d, d / "best.npz"):
        report = json.loads(ok("eval", checkpoint)[0])
        assert report["split"] == "test" and report["samples"] == 360
        assert report["error"] == result["test_error"] and report["accuracy"] == 1 - result["test_error"]


def test_predict_answers_for_idx_and_npy_files_give_evals_accuracy(run, raw_test_digits, tmp_path):
    d, _, _ = run
    pixels, labels = raw_test_digits
    write_idx(tmp_path / "test-images-idx3-ubyte", pixels)
    np.save(tmp_path / "counts.npy", pixels)
    np.save(tmp_path / "unit.npy", pixels.astype(np.float32) / 16)          # floats are taken as in [0, 1]
    answers = np.array(ok("predict", d, tmp_path / "test-images-idx3-ubyte")[0].split(), dtype=int)
    accuracy = json.loads(ok("eval", d)[0])["accuracy"]
    assert answers.shape == labels.shape and np.mean(answers == labels) == pytest.approx(accuracy, abs=1e-12)
    for name in ("counts.npy", "unit.npy"):
        np.testing.assert_array_equal(np.array(ok("predict", d, tmp_path / name)[0].split(), dtype=int), answers)
    out, _ = ok("predict", d, tmp_path / "counts.npy", "--out", tmp_path / "answers.npy")
    assert out == f"360 answers written to {tmp_path / 'answers.npy'}\n"
    np.testing.assert_array_equal(np.load(tmp_path / "answers.npy"), answers)


def test_eval_standardises_with_the_checkpoints_normalisation_not_the_datasets(raw_test_digits, tmp_path):
    # Trained on 300 samples, the model's mean and std are not those of the full train split.
    ok("train", *SMALL, "--epochs", "2", "--limit", "300", "--out", tmp_path)
    report = json.loads(ok("eval", tmp_path)[0])
    spec, params, _, _ = load_checkpoint(tmp_path / "best.npz")
    machine = build_machine(spec)
    machine.pool.load(params)
    norm = spec["normalisation"]
    pixels, labels = raw_test_digits
    x = ((pixels[:, None] / norm["pixel_scale"] - norm["mean"]) / norm["std"]).astype(np.float32)
    meter = evaluate(machine, Split(x, labels), 10)
    assert report["samples"] == 360
    assert report["error"] == pytest.approx(meter.error, abs=1e-12)
    assert report["loss"] == pytest.approx(meter.loss, rel=1e-5)


def test_predict_rejects_images_of_the_wrong_size_in_one_line(run, tmp_path):
    d, _, _ = run
    np.save(tmp_path / "big.npy", np.zeros((2, 28, 28), np.uint8))
    err = one_line(fail("predict", d, tmp_path / "big.npy"))
    assert err == f"fbprop predict: error: {tmp_path / 'big.npy'}: expected images of shape (n, 8, 8), got (2, 28, 28)"


def test_train_help_states_each_default_once():
    out, _ = ok("train", "--help")
    text = " ".join(out.split())                                 # argparse wraps lines anywhere
    assert "(default: None)" not in text
    assert "(default: mlp 300,100; lenet-modern 128; lenet-wide 256)" in text
    assert "(default: the model's, 32 for mlp)" in text


# gradcheck ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["mlp", "linear", "lenet5", "lenet-modern", "lenet-wide"])
def test_gradcheck_passes_every_module_of_the_model(model):
    out, _ = ok("gradcheck", model)
    assert out.splitlines()[-1] == f"{model}: all modules pass"
    assert "FAIL" not in out


# errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--model", "mlp", "--dropout", "1.5"], "Dropout: expected a drop probability p in [0, 1), got 1.5"),
    (["--model", "lenet-modern", "--norm-groups", "5"], "or a divisor of both maps 32 and 64, got 5"),
    (["--optimizer", "lbfgs", "--augment", "affine"], "--augment: lbfgs trains on the fixed full training set"),
])
def test_a_model_or_distortion_refused_at_build_claims_no_run_directory(tmp_path, args, message):
    err = one_line(fail("train", *args, "--out", tmp_path / "r"))
    assert message in err
    assert not (tmp_path / "r").exists()                         # no config.json left to be taken for a run


def test_missing_fashion_mnist_is_one_line_naming_where_it_looked_and_writes_nothing(tmp_path):
    err = one_line(fail("train", "--data", "fashion-mnist", "--data-dir", "/nonexistent", "--out", tmp_path / "r"))
    assert err.startswith("fbprop train: error: load_dataset('fashion-mnist'): data set not found, "
                          "looked in /nonexistent (no such directory)")
    assert not (tmp_path / "r").exists()


def test_missing_mnist_without_a_data_directory_says_none_was_given(tmp_path):
    with mock.patch.dict(os.environ):
        os.environ.pop("FBPROP_DATA", None)
        err = one_line(fail("train", "--data", "mnist", "--out", tmp_path / "r"))
    assert "looked in nowhere (no root given, FBPROP_DATA not set)" in err


@pytest.mark.parametrize("command", [["eval", "{ck}"], ["predict", "{ck}", "{ck}"], ["train", "--resume", "{ck}"]])
def test_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path, command):
    ck = tmp_path / "checkpoint.npz"
    ck.write_bytes(b"PK\x03\x04 not really a zip file")
    err = one_line(fail(*[a.format(ck=ck) for a in command]))
    assert err.startswith(f"fbprop {command[0]}: error: {ck}: corrupt or unreadable checkpoint")


@pytest.mark.parametrize("option, message", [
    (["--epochs", "-1"], "error: --epochs: expected a count >= 0, got -1"),
    (["--lr", "0"], "error: argument --lr: expected a value > 0, got '0'"),
    (["--hidden", "abc"], "error: argument --hidden: expected comma-separated layer sizes like 300,100, got 'abc'"),
    (["--model", "resnet"], "error: argument --model: invalid choice: 'resnet'"),
    (["--batch-size", "0"], "error: argument --batch-size: expected a value > 0, got '0'"),
])
def test_bad_option_exits_2_with_a_message_naming_it(tmp_path, option, message):
    err = fail("train", *option, "--out", tmp_path / "r")
    assert message in err.splitlines()[-1]
    assert not (tmp_path / "r").exists()


def test_divergence_is_one_line_without_numpy_warnings(tmp_path):
    header, error = fail("train", "--hidden", "16", "--squash", "relu", "--lr", "1e20", "--out", tmp_path).splitlines()
    assert header.startswith("fbprop train: digits")
    assert re.match(r"fbprop train: error: training diverged in epoch 1 after \d+ steps", error)


def test_programming_errors_surface_as_tracebacks(run, monkeypatch):
    d, _, _ = run

    def broken(*args, **kwargs):
        raise TypeError("a bug, not a user error")
    monkeypatch.setattr(cli, "evaluate", broken)
    with pytest.raises(TypeError, match="a bug"):
        call("eval", d, debug=False)


def test_fbprop_debug_reraises_user_errors_too(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        call("eval", tmp_path / "none.npz", debug=True)
    assert "no such checkpoint" in one_line(fail("eval", tmp_path / "none.npz"))


# through a real process -----------------------------------------------------------------------
def _process(*argv, cwd) -> subprocess.CompletedProcess:
    # One BLAS thread: on a shared 2-core machine threaded BLAS on tiny matrices is many times slower.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("FBPROP_DEBUG", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_fbprop_script_trains_digits_with_no_option_and_prints_the_test_error(tmp_path):
    script = Path(sysconfig.get_path("scripts")) / "fbprop"
    done = _process(str(script), "train", "--out", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"test error \d+\.\d\d% \(accuracy \d+\.\d\d%\) after 20 epochs in \d+\.\ds, "
                        r"parameters of epoch \d+ \(best validation error\); results in run\n",
                        done.stdout)
    lines = done.stderr.splitlines()
    assert lines[0].endswith("50610 parameters, sgd lr 0.05, batch 32, -> run")
    assert [line[:9] for line in lines[1:]] == [f"epoch {e:3d}" for e in range(1, 21)]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == RUN_FILES


def test_python_m_fbprop_cli_missing_data_exits_2_with_one_stderr_line(tmp_path):
    done = _process(sys.executable, "-m", "fbprop.cli", "train", "--data", "fashion-mnist", "--data-dir",
                    "/nonexistent", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert one_line(done.stderr).startswith("fbprop train: error: load_dataset('fashion-mnist'): data set not found")
    assert list(tmp_path.iterdir()) == []


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from fbprop.plots import plot_confusion, plot_curves

    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        plot_curves([{"epoch": 1, "train_loss": 1.0, "train_error": 0.5}], tmp_path / "curves.png")
        plot_confusion(np.eye(3, dtype=np.int64), tmp_path / "confusion.png")
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG


# resume keeps every setting of the run ------------------------------------------------------------
RESUME_CASES = {
    "sgd": ("--lr", "0.03"),
    "momentum": ("--momentum", "0.5", "--lr", "0.02"),
    "sdlm": ("--mu", "0.05", "--hessian-samples", "100"),
    "batch": ("--lr", "0.3"),
    "lbfgs": ("--lbfgs-iters", "4"),
    "adam": ("--lr", "0.002", "--optimizer-arg", "beta1=0.8"),
    "adamw": ("--optimizer-arg", "weight_decay=0.05"),
}


def test_every_optimizer_has_a_resume_case():
    from fbprop.optim import OPTIMIZERS
    assert set(RESUME_CASES) == set(OPTIMIZERS)


def interrupted_after(epoch: int, *argv) -> int:
    """Run `fbprop train argv` and press Ctrl-C once epoch `epoch` is written (as a user would)."""
    from fbprop.train.extensions import MetricsFiles
    write = MetricsFiles.on_epoch_end

    def write_then_interrupt(self, trainer, record):
        write(self, trainer, record)
        if record["epoch"] == epoch:
            raise KeyboardInterrupt
    with mock.patch.object(MetricsFiles, "on_epoch_end", write_then_interrupt):
        code, _, err = call(*argv, debug=False)
    assert err.splitlines()[-1] == "fbprop train: interrupted", err
    return code


@pytest.mark.parametrize("optimizer", list(RESUME_CASES))
def test_an_interrupted_run_resumed_with_no_option_ends_bit_for_bit_as_the_uninterrupted_one(tmp_path, optimizer):
    options = (*SMALL, "--dtype", "float64", "--limit", "400", "--optimizer", optimizer, *RESUME_CASES[optimizer],
               "--batch-size", "16", "--schedule", "cosine", "--epochs", "4", "--seed", "5")
    ok("train", *options, "--out", tmp_path / "straight")
    assert interrupted_after(2, "train", *options, "--out", tmp_path / "split") == 130
    assert load_checkpoint(tmp_path / "split")[3]["epoch"] == 2
    _, err = ok("train", "--resume", tmp_path / "split")
    assert [line[:9] for line in err.splitlines()[1:]] == ["epoch   3", "epoch   4"]
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "split")[1], load_checkpoint(tmp_path / "straight")[1])
    split, straight = (load_checkpoint(tmp_path / d, with_arrays=True) for d in ("split", "straight"))
    assert split[2].keys() == straight[2].keys()
    for slot in split[2]:                                        # the optimizer's velocity, curvature, …
        np.testing.assert_array_equal(split[2][slot], straight[2][slot])
    np.testing.assert_array_equal(split[4]["best/params"], straight[4]["best/params"])
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "split" / "best.npz")[1],
                                  load_checkpoint(tmp_path / "straight" / "best.npz")[1])


def test_options_given_again_on_resume_must_equal_the_runs_and_epochs_may_grow(tmp_path):
    run = tmp_path / "run"
    ok("train", *SMALL, "--batch-size", "64", "--schedule", "cosine", "--epochs", "1", "--out", run)
    before = load_checkpoint(run)[1]
    for option, message in [(("--batch-size", "32"), "setting batch_size is 32 here but 64 in the run"),
                            (("--schedule", "lenet"), "setting schedule is 'lenet' here but 'cosine' in the run"),
                            (("--hidden", "8"), "model setting hidden is [8] here but [16] in the run"),
                            (("--optimizer", "momentum"), "setting optimizer is 'momentum' here but 'sgd' in the run"),
                            (("--val-size", "0.2"), "--val-size is 0.2 here but 0.1 in the run")]:
        err = one_line(fail("train", "--resume", run, *option))
        assert message in err, err
    np.testing.assert_array_equal(load_checkpoint(run)[1], before)   # nothing trained, nothing written
    _, err = ok("train", *SMALL, "--batch-size", "64", "--schedule", "cosine", "--resume", run, "--epochs", "2")
    assert [line[:9] for line in err.splitlines()[1:]] == ["epoch   2"]
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["epochs"] == 2 and config["training"]["batch_size"] == 64


def test_config_json_records_every_setting_the_data_and_the_version(run):
    d, _, _ = run
    config = json.loads((d / "config.json").read_text())
    import fbprop
    assert config["fbprop"] == fbprop.__version__
    assert config["training"] == {"optimizer": "sgd", "lr": 0.05, "batch_size": 32, "hessian_samples": 500,
                                  "epochs": 3, "schedule": "constant", "patience": None, "seed": 0, "augment": "none",
                                  "augment_args": {}}
    assert config["model"]["hidden"] == [16] and config["model"]["dataset"] == "digits"
    assert re.fullmatch(r"[0-9a-f]{8}", config["model"]["data_checksum"])
    assert config["data"] == {"name": "digits", "train": 1293, "val": 144, "test": 360}


def test_loss_arguments_reach_the_loss_and_unknown_ones_are_refused(tmp_path):
    ok("train", *SMALL, "--epochs", "0", "--loss", "hinge", "--loss-arg", "margin=0.25", "--out", tmp_path / "a")
    spec = json.loads((tmp_path / "a" / "config.json").read_text())["model"]
    assert spec["loss"] == "hinge" and spec["loss_args"] == {"margin": 0.25}
    err = one_line(fail("train", *SMALL, "--loss", "hinge", "--loss-arg", "gamma=2", "--out", tmp_path / "b"))
    assert "loss 'hinge': unknown argument 'gamma' (it takes margin)" in err


@pytest.mark.parametrize("argv, message", [
    (("--model", "lenet5", "--hidden", "10"), "--hidden is an option of mlp, lenet-modern, lenet-wide, not of lenet5"),
    (("--momentum", "0.5"), "--momentum is an option of momentum, not of sgd"),
    (("--optimizer", "lbfgs", "--lr", "0.1"), "--lr: lbfgs has no learning rate"),
    (("--val-size", "2.5"), "--val-size: expected a fraction in [0, 1) or a whole count, got 2.5"),
])
def test_options_that_do_not_apply_are_refused_in_one_line(tmp_path, argv, message):
    assert message in one_line(fail("train", *argv, "--out", tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_two_runs_claiming_one_directory_get_it_once(tmp_path):
    from fbprop.runs import RunExists, claim
    claim(tmp_path / "r", {"run": 1})
    with pytest.raises(RunExists, match="already holds a run"):
        claim(tmp_path / "r", {"run": 2})
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == {"run": 1}
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json"]
