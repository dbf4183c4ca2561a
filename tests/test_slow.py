"""Long end-to-end runs on Fashion-MNIST: the README's documented commands and their results.

Kept out of the default run (`-m 'not slow'` in pyproject.toml); run them with
`python -m pytest -m slow` (about 5 minutes for the MLP and 20 for LeNet-5 on 2 idle cores).
"""

import json
import os

import pytest

from fbprop.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                       reason="needs apt-get install dataset-fashion-mnist"),
]


def _accuracy(out):
    return 1 - json.loads((out / "result.json").read_text())["test_error"]


def test_fashion_mnist_mlp_command_reaches_89_percent(tmp_path):
    args = "--data fashion-mnist --optimizer momentum --lr 0.01 --schedule cosine --epochs 30".split()
    assert main(["train", *args, "--out", str(tmp_path), "--no-plots"]) == 0
    assert _accuracy(tmp_path) >= 0.89


def test_fashion_mnist_lenet5_command_reaches_91_percent(tmp_path):
    args = LENET5_COMMAND.split()
    assert main(["train", *args, "--out", str(tmp_path), "--no-plots"]) == 0
    assert _accuracy(tmp_path) >= 0.91


LENET5_COMMAND = ("--data fashion-mnist --model lenet5 --optimizer sdlm --lr 0.002 --val-size 0 "
                  "--schedule cosine --epochs 20")
