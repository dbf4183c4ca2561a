"""Data-parallel training over MPI: K processes train the parameters of one, faults end the job.

The MPI tests start `mpiexec -n 2` in a subprocess (with a timeout: a hang fails, never blocks);
they skip when mpi4py or the mpiexec beside this Python (the `mpich` wheel's) is missing.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from fbprop import cli
from fbprop.checkpoint import load_checkpoint
from fbprop.distributed import LAUNCHER_VARS, launched_size, shard

TIMEOUT = 120
SMALL = ("--hidden", "16", "--dtype", "float64", "--no-plots")
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _mpiexec() -> str | None:
    beside = Path(sys.prefix) / "bin" / "mpiexec"                # pip install mpich puts it here
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and k != "FBPROP_DEBUG"}
    return {**env, **THREADS, **extra}


def mpirun(k: int, *argv, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`mpiexec -n k python argv…` (a script path, or -m …); skips when MPI is not installed."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'fbprop[mpi]')")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec beside this Python or on PATH (pip install mpich)")
    return subprocess.run([mpiexec, "-n", str(k), sys.executable, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=_env())


def train_here(*argv) -> str:
    """`fbprop train argv…` in this process (one process, no MPI); its stderr."""
    err = io.StringIO()
    with mock.patch.dict(os.environ, {"FBPROP_DEBUG": "1"}), redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main(["train", *map(str, argv)])
    assert code == 0, err.getvalue()
    return err.getvalue()


def params(run: Path) -> np.ndarray:
    return load_checkpoint(run / "checkpoint.npz")[1]


def assert_close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-12) -> None:
    scale = np.max(np.abs(b))
    assert np.max(np.abs(a - b)) <= rtol * scale, f"max |a - b| / max |b| = {np.max(np.abs(a - b)) / scale:.3g}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """3 epochs of the small net on digits on one process: the run every K must reproduce."""
    run = tmp_path_factory.mktemp("mpi") / "k1"
    train_here(*SMALL, "--epochs", 3, "--out", run)
    return run


# without MPI ----------------------------------------------------------------------------------
def test_shards_cover_every_sample_once_even_with_fewer_samples_than_ranks():
    for n in (0, 1, 3, 32, 33):
        for size in (1, 2, 3, 5):
            taken = [i for r in range(size) for i in range(n)[shard(n, r, size)]]
            assert taken == list(range(n)), (n, size)


def test_launched_size_reads_the_launchers_variables(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert launched_size() == 1
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert launched_size() == 4


def test_one_process_without_a_launcher_imports_no_mpi4py(tmp_path):
    code = ("import sys; from fbprop import cli; from fbprop.distributed import world; assert world() is None; "
            "code = cli.main(['train', '--hidden', '4', '--epochs', '1', '--limit', '50', '--out', sys.argv[1], "
            "'--no-plots']); assert 'mpi4py' not in sys.modules, 'mpi4py imported'; sys.exit(code)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=TIMEOUT, env=_env())
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "run" / "checkpoint.npz").exists()


def test_launched_as_several_processes_without_mpi4py_is_one_line_and_status_2(tmp_path):
    code = "import sys; sys.modules['mpi4py'] = None; from fbprop import cli; sys.exit(cli.main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "train", "--out", str(tmp_path / "run")], capture_output=True,
                       text=True, timeout=TIMEOUT, env=_env(PMI_SIZE="2", PMI_RANK="0"))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert "started as one of 2 MPI processes but mpi4py cannot be imported" in p.stderr
    assert "pip install 'fbprop[mpi]'" in p.stderr


# two processes --------------------------------------------------------------------------------
EQUIVALENCE = '''
import io, json
import numpy as np
from mpi4py import MPI
import fbprop as fb
from fbprop.data import load_dataset
from fbprop.train import Trainer, TrainingDiverged

comm = MPI.COMM_WORLD
data = load_dataset("digits", limit=300, dtype=np.float64)
LR = {"sgd": 0.05, "momentum": 0.01, "sdlm": 0.001, "batch": 0.5, "lbfgs": 1.0}
CASES = [("sgd", 32, 0.0), ("sgd", 1, 0.0), ("sgd", 3, 1e-3), ("momentum", 7, 0.0), ("sdlm", 16, 1e-3),
         ("batch", 1, 1e-3), ("lbfgs", 1, 0.0)]

def train(optimizer, batch, l2, comm, lr=None, squash="tanh", data=data, transform=None):
    spec = {"model": "mlp", "hidden": [16], "squash": squash, "input_shape": [1, 8, 8], "n_classes": 10,
            "dtype": "float64", "seed": 1}
    if l2:
        spec["regularizer"] = {"kind": "l2", "lam": l2}
    m = fb.build_machine(spec)
    t = Trainer(m, data, optimizer=optimizer, lr=lr or LR[optimizer], batch_size=batch, epochs=2, seed=3,
                hessian_samples=51, log=io.StringIO(), comm=comm, transform=transform, show_test=True,
                **({"max_iter": 5} if optimizer == "lbfgs" else {}))
    t.fit()
    return m.pool.x.copy(), t.history

AUGMENTED = [("sgd", 32, 0.0, fb.data.Affine(shift=1.0)),
             ("sdlm", 16, 0.0, fb.data.Elastic(alpha=4.0, sigma=1.0))]
report = {}
for optimizer, batch, l2, transform in [(*case, None) for case in CASES] + AUGMENTED:
    x, history = train(optimizer, batch, l2, comm, transform=transform)
    every = comm.gather(x, root=0)
    if comm.rank == 0:
        x1, history1 = train(optimizer, batch, l2, None, transform=transform)
        report[f"{optimizer} batch {batch} {transform}"] = {
            "rel": float(np.max(np.abs(x - x1)) / np.max(np.abs(x1))),
            "ranks identical": all(np.array_equal(e, x) for e in every),
            "errors": [[[h[k] for k in ("train_error", "val_error", "test_error")] for h in run]
                       for run in (history, history1)],
            "train loss": [history[-1]["train_loss"], history1[-1]["train_loss"]]}
def diverged(comm, **options):
    try:
        train("sgd", 32, 0.0, comm, **options)
        return "no"
    except TrainingDiverged as e:
        return str(e)

nan_sample = load_dataset("digits", limit=300, dtype=np.float64)
nan_sample.train.x[100] = np.nan                               # in one rank's shard of its batch
for name, options in (("every rank", {"lr": 1e200, "squash": "relu"}), ("one rank", {"data": nan_sample})):
    every = comm.gather(diverged(comm, **options), root=0)
    if comm.rank == 0:
        report[f"diverged on {name}"] = [*every, diverged(None, **options)]
if comm.rank == 0:
    print(json.dumps(report))
'''


def test_two_processes_train_the_parameters_of_one_with_every_optimizer_and_with_distortions(tmp_path):
    script = tmp_path / "equivalence.py"
    script.write_text(EQUIVALENCE)
    p = mpirun(2, "-m", "mpi4py", script, cwd=tmp_path)         # -m mpi4py: an exception aborts, never hangs
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    diverged = [report.pop("diverged on every rank"), report.pop("diverged on one rank")]
    assert len(report) == 9                                      # 7 optimizer cases, 2 with distortions
    for case, r in report.items():
        assert r["rel"] <= 1e-12, (case, r)
        assert r["ranks identical"], case
        assert r["errors"][0] == r["errors"][1], (case, r)
        assert r["train loss"][0] == pytest.approx(r["train loss"][1], rel=1e-12), case
    for rank_0, rank_1, one_process in diverged:             # the same step, the same message
        assert rank_0 == rank_1 == one_process, (rank_0, rank_1, one_process)
        assert rank_0.startswith("training diverged in epoch 1"), rank_0
    assert diverged[1][0].endswith(
        "first non-finite output: the input batch (NaN, infinite, or too large for float64): check the data")


def test_mpiexec_fbprop_train_matches_one_process_and_only_rank_0_reports(tmp_path, one_process):
    p = mpirun(2, "-m", "fbprop.cli", "train", *SMALL, "--epochs", 3, "--out", "k2", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_close(params(tmp_path / "k2"), params(one_process))
    assert p.stderr.count("epoch   3 |") == 1 and "on 2 processes" in p.stderr, p.stderr
    assert p.stdout.count("test error") == 1, p.stdout
    result = json.loads((tmp_path / "k2" / "result.json").read_text())
    expected = {**json.loads((one_process / "result.json").read_text()), "seconds": result["seconds"]}
    # the weights agree to 1e-12, not bit for bit (the gradient is summed over two processes), so
    # a loss computed from them may differ in its last digit (1 ulp on AMD EPYC); the rest exactly
    assert result.pop("test_loss") == pytest.approx(expected.pop("test_loss"), rel=1e-12)
    assert result == expected


def test_two_processes_resume_a_one_process_checkpoint(tmp_path, one_process):
    train_here(*SMALL, "--epochs", 2, "--out", tmp_path / "run")
    p = mpirun(2, "-m", "fbprop.cli", "train", "--resume", "run", "--epochs", 3, "--no-plots", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert_close(params(tmp_path / "run"), params(one_process))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[3]["epoch"] == 3


FAIL_ON_RANK_1 = '''
import sys
from mpi4py import MPI
from fbprop import cli, machine

if MPI.COMM_WORLD.Get_rank() == 1:
    accumulate, calls = machine.Machine.accumulate, [0]
    def failing(self, *args):
        calls[0] += 1
        if calls[0] > 50:                                       # in epoch 2: 41 steps an epoch
            raise RuntimeError("injected failure")
        return accumulate(self, *args)
    machine.Machine.accumulate = failing
sys.exit(cli.main(sys.argv[1:]))
'''


def test_a_failing_rank_ends_the_job_naming_itself_and_one_process_resumes(tmp_path, one_process):
    script = tmp_path / "fail.py"
    script.write_text(FAIL_ON_RANK_1)
    start = time.perf_counter()
    p = mpirun(2, script, "train", *SMALL, "--epochs", 3, "--out", "run", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    assert time.perf_counter() - start < TIMEOUT
    assert "fbprop train: error on rank 1 of 2: RuntimeError: injected failure" in p.stderr, p.stderr
    spec, _, _, state = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert state["epoch"] == 1                                   # epoch 1's checkpoint, whole
    assert not list((tmp_path / "run").glob(".*.tmp"))
    train_here("--resume", tmp_path / "run", "--epochs", 3, "--no-plots")
    assert_close(params(tmp_path / "run"), params(one_process))


DIFFERENT_DATA_ON_RANK_1 = '''
import sys
from mpi4py import MPI
from fbprop import cli

if MPI.COMM_WORLD.Get_rank() == 1:
    load = cli.load_dataset
    def corrupt(*args, **kwargs):
        data = load(*args, **kwargs)
        data.train.x[7, 0, 3, 3] += 1.0                          # one pixel of a bad copy
        return data
    cli.load_dataset = corrupt
sys.exit(cli.main(sys.argv[1:]))
'''


def test_a_rank_holding_different_data_ends_the_job_before_training(tmp_path):
    script = tmp_path / "corrupt.py"
    script.write_text(DIFFERENT_DATA_ON_RANK_1)
    p = mpirun(2, script, "train", *SMALL, "--epochs", 3, "--out", "run", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert re.search(r"fbprop train: error on rank 1 of 2: the data differ from rank 0's: "
                     r"train checksum \w{8} here, \w{8} on rank 0; every process must load the same data set$",
                     p.stderr, re.M), p.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_an_error_on_rank_0_alone_ends_the_job_with_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"not a checkpoint")
    p = mpirun(2, "-m", "fbprop.cli", "train", "--resume", "run", "--epochs", 3, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("fbprop")]
    assert len(lines) == 1 and lines[0].startswith("fbprop train: error on rank 0 of 2: run/checkpoint.npz: corrupt")


def test_allreduce_benchmark_runs_on_two_processes_and_prints_the_cost_model(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "bench" / "mpi_allreduce.py"
    p = mpirun(2, bench, "--steps", 2, "--models", "mlp", "--nodes", "8", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "2 processes" in p.stdout and "cost model" in p.stdout
    rows = [line.split() for line in p.stdout.splitlines() if line.startswith("mlp ")]
    assert [r[:3] for r in rows[:1]] == [["mlp", "266610", "64"]] and rows[1][:3] == ["mlp", "8", "1.91"], p.stdout


@pytest.mark.slow
def test_the_error_line_of_a_failing_rank_reaches_the_user_every_time(tmp_path):
    """Abort kills every process at once; the line must have reached the launcher first, every time.
    FBPROP_MPI_REPEATS sets the count (200 by default: `pytest -m slow -k error_line`)."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"not a checkpoint")
    script = tmp_path / "fail.py"
    script.write_text(FAIL_ON_RANK_1)
    for i in range(int(os.environ.get("FBPROP_MPI_REPEATS", "200"))):
        p = mpirun(2, "-m", "fbprop.cli", "train", "--resume", "run", "--epochs", 3, cwd=tmp_path)
        lines = [line for line in p.stderr.splitlines() if line.startswith("fbprop")]
        assert p.returncode == 2 and len(lines) == 1 and "error on rank 0 of 2" in lines[0], (i, p.stderr)
        p = mpirun(2, script, "train", *SMALL, "--epochs", 2, "--out", f"r{i}", cwd=tmp_path)
        assert "fbprop train: error on rank 1 of 2: RuntimeError: injected failure" in p.stderr, (i, p.stderr)
