"""Small command-line behaviours: --version, and --val-size refused unless a fraction or a whole count."""

from __future__ import annotations

import pytest

import fbprop
from test_cli import call


def test_version_prints_the_package_version():
    code, out, err = call("--version", debug=False)
    assert code == 0 and out == f"fbprop {fbprop.__version__}\n"


@pytest.mark.parametrize("value", ["2.5", "-0.1", "1.0000001", "nan", "ten"])
def test_val_size_neither_a_fraction_nor_a_whole_count_is_refused(value, tmp_path):
    code, out, err = call("train", "--val-size", value, "--out", tmp_path / "run", debug=False)
    assert code == 2
    assert err.splitlines()[-1] == (f"fbprop train: error: argument --val-size: expected a fraction in [0, 1) "
                                    f"or a whole number of samples, got {value!r}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, n_val", [("0", 0), ("0.25", 359), ("100", 100), ("100.0", 100)])  # 359 = ¼ of 1437
def test_val_size_takes_fractions_and_whole_counts(value, n_val, tmp_path):
    code, out, err = call("train", "--val-size", value, "--epochs", "0", "--hidden", "4", "--no-plots",
                          "--out", tmp_path / "run", debug=True)
    assert code == 0, err
    assert f"/ {n_val} val /" in err
