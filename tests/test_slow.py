"""Long end-to-end runs on Fashion-MNIST: the README's documented commands and their results.

Kept out of the default run (`-m 'not slow'` in pyproject.toml); run them with
`python -m pytest -m slow` (the MLP and lenet-modern on one core, about 9 and 7 minutes; LeNet-5
and lenet-wide on two processes, `mpiexec -n 2`, about 15 and 17 minutes of both cores).
Each command is the README's, `fbprop train --data fashion-mnist --model M`, with the model's
recipe; the thresholds are the README's figures rounded down to the percent below, so a recipe or
a change to the code that costs accuracy fails here.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fbprop.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                       reason="needs apt-get install dataset-fashion-mnist"),
]


def _accuracy(out):
    return 1 - json.loads((out / "result.json").read_text())["test_error"]


@pytest.mark.parametrize("model, least", [("mlp", 0.90), ("lenet-modern", 0.92)])
def test_the_readme_fashion_mnist_command_reaches_its_figure(model, least, tmp_path):
    args = ["train", "--data", "fashion-mnist", "--model", model, "--no-plots", "--no-progress"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert _accuracy(tmp_path) >= least


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs an MPI launcher (pip install -e '.[mpi]')")
@pytest.mark.parametrize("model, least", [("lenet5", 0.92), ("lenet-wide", 0.93)])
def test_the_readme_command_on_two_processes_reaches_its_figure(model, least, tmp_path):
    args = ["train", "--data", "fashion-mnist", "--model", model, "--no-plots", "--no-progress"]
    subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "fbprop.cli", *args, "--out", str(tmp_path)],
                   check=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert _accuracy(tmp_path) >= least
