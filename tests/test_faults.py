"""Fault injection: what a run directory guarantees after a crash, a full disk, a concurrent run,
a malformed checkpoint or a memory bomb. Each case gives the right result or one line and exit 2."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from fbprop import cli
from fbprop.checkpoint import FORMAT, load_checkpoint

SMALL = ("--hidden", "16", "--limit", "300", "--dtype", "float64", "--no-plots", "--optimizer", "momentum",
         "--schedule", "cosine")
SRC = str(Path(__file__).resolve().parent.parent / "src")


def call(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with mock.patch.dict(os.environ, {"FBPROP_DEBUG": "0"}), redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, err.getvalue()


def run_python(code: str, *argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "FBPROP_DEBUG": "0"}
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted 3-epoch run every crashed-and-resumed run must end equal to."""
    d = tmp_path_factory.mktemp("straight") / "run"
    assert call("train", *SMALL, "--epochs", "3", "--out", d)[0] == 0
    return d


# kill -9 at each point of the save sequence ---------------------------------------------------
KILL_AT = '''
import os, signal, sys
from fbprop import cli
call, n = sys.argv[1], int(sys.argv[2])
real, seen = getattr(os, call), [0]
def killing(*args, **kwargs):
    seen[0] += 1
    if seen[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)                     # as the power going off: no cleanup at all
    return real(*args, **kwargs)
setattr(os, call, killing)
sys.exit(cli.main(sys.argv[3:]))
'''


@pytest.mark.parametrize("call_name, n", [(c, n) for c in ("fsync", "replace") for n in range(1, 10)])
def test_a_run_killed_at_any_point_of_a_save_resumes_to_the_uninterrupted_result(tmp_path, straight, call_name, n):
    run = tmp_path / "run"
    p = run_python(KILL_AT, call_name, n, "train", *SMALL, "--epochs", "3", "--out", run, cwd=tmp_path)
    assert p.returncode == -9, p.stderr                         # killed in config.json's or an epoch's save
    if (run / "config.json").exists():
        code, err = call("train", "--resume", run)
    else:                                                        # killed before the run claimed its directory
        code, err = call("train", *SMALL, "--epochs", "3", "--out", run)
    assert code == 0, err
    assert not list(run.glob(".*.tmp"))                          # leftovers of the killed save are gone
    final, reference = (load_checkpoint(d, with_arrays=True) for d in (run, straight))
    np.testing.assert_array_equal(final[1], reference[1])
    np.testing.assert_array_equal(final[4]["best/params"], reference[4]["best/params"])
    best, reference_best = load_checkpoint(run / "best.npz"), load_checkpoint(straight / "best.npz")
    np.testing.assert_array_equal(best[1], final[4]["best/params"])      # best.npz agrees with the checkpoint
    np.testing.assert_array_equal(best[1], reference_best[1])
    assert best[3]["epoch"] == reference_best[3]["epoch"]


# concurrent runs on one directory ---------------------------------------------------------------
def test_two_runs_started_together_on_one_directory_never_share_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": SRC, "FBPROP_DEBUG": "0"}
    argv = [sys.executable, "-m", "fbprop", "train", "--hidden", "8", "--epochs", "1", "--no-plots", "--out", "run"]
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2, 2], results
    for code, err in results:
        if code == 2:
            assert err.strip().endswith("already holds a run (another process claimed it); choose another --out") or \
                "already holds a run" in err.strip().splitlines()[-1], err


def test_runs_started_in_the_same_second_without_out_get_their_own_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with mock.patch("time.strftime", return_value="20261127-101010"):
        for _ in range(3):
            assert call("train", "--hidden", "8", "--epochs", "0", "--no-plots")[0] == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "digits-mlp-20261127-101010", "digits-mlp-20261127-101010-2", "digits-mlp-20261127-101010-3"]


# a full disk at each write ----------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 7))
def test_a_full_disk_at_any_write_is_one_line_naming_the_file_and_keeps_the_last_checkpoint(tmp_path, n):
    run = tmp_path / "run"
    assert call("train", *SMALL, "--epochs", "1", "--out", run)[0] == 0
    before = (run / "checkpoint.npz").read_bytes()
    real_fsync, seen = os.fsync, [0]

    def full(fd):
        seen[0] += 1
        if seen[0] == n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)
    with mock.patch("os.fsync", full):
        code, err = call("train", "--resume", run, "--epochs", "3")
    line = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert line.startswith(f"fbprop train: error: [Errno {errno.ENOSPC}] {run}/") and "No space left" in line, line
    assert not list(run.glob(".*.tmp"))
    checkpoint = load_checkpoint(run)
    assert checkpoint[3]["epoch"] >= 1                           # the old one, or a newer complete one
    if checkpoint[3]["epoch"] == 1:
        assert (run / "checkpoint.npz").read_bytes() == before


# malformed checkpoints --------------------------------------------------------------------------
def _checkpoint(tmp_path: Path, **change) -> Path:
    """A checkpoint of a real run with some of its members replaced."""
    run = tmp_path / "src"
    if not run.exists():
        assert call("train", "--hidden", "8", "--epochs", "1", "--no-plots", "--out", run)[0] == 0
    with np.load(run / "checkpoint.npz") as z:
        members = {k: z[k] for k in z.files}
    spec, trainer = json.loads(str(members["architecture"])), json.loads(str(members["trainer"]))
    for key, value in change.items():
        where, _, field = key.partition("__")
        target = spec if where == "spec" else trainer if where == "trainer" else None
        if target is None:
            members[where.replace("_", "/", 1) if where.startswith("optimizer") else where] = value
        elif value is DELETE:
            del target[field]
        else:
            target[field] = value
    members["architecture"], members["trainer"] = np.array(json.dumps(spec)), np.array(json.dumps(trainer))
    path = tmp_path / "bad.npz"
    np.savez(path, **members)
    return path


DELETE = object()
MALFORMED = {
    "input_shape missing": ({"spec__input_shape": DELETE}, "has no 'input_shape'"),
    "normalisation missing": ({"spec__normalisation": DELETE}, "has no 'normalisation'"),
    "input_shape of 1e9": ({"spec__input_shape": [1, 100000, 100000]}, "architecture.input_shape"),
    "n_classes a float": ({"spec__n_classes": 1e9}, "architecture.n_classes"),
    "hidden of strings": ({"spec__hidden": ["a"]}, "architecture.hidden"),
    "epoch a list": ({"trainer__epoch": [1]}, "trainer.epoch"),
    "history a number": ({"trainer__history": 5}, "trainer.history"),
    "best error a string": ({"trainer__extensions": {"best": {"error": "low"}}}, "trainer.extensions.best.error"),
    "normalisation std 0": ({"spec__normalisation": {"mean": 0.1, "std": 0.0}}, "architecture.normalisation.std"),
    "optimizer slot of length 1": ({"optimizer_v": np.zeros(1)}, "optimizer/v: expected a float vector"),
    "complex optimizer slot": ({"optimizer_v": np.zeros(610, complex)}, "optimizer/v: expected a float vector"),
    "unknown optimizer slot": ({"optimizer_w": np.zeros(610)}, "unknown optimizer slot 'w'"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_each_malformed_field_is_one_line_naming_the_file_and_the_field(tmp_path, case):
    change, message = MALFORMED[case]
    path = _checkpoint(tmp_path, **change)
    for command in (("eval", path), ("train", "--resume", path, "--optimizer", "sgd")):
        code, err = call(*command)
        if case == "unknown optimizer slot" and command[0] == "eval":
            assert code == 0                                     # eval reads no optimizer slot
            continue
        assert code == 2, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"fbprop {command[0]}: error: ") and message in line, line
        assert len(err.strip().splitlines()) == 1, err


def test_deeply_nested_json_and_a_plain_npy_are_one_line_each(tmp_path):
    deep = _checkpoint(tmp_path)
    with np.load(deep) as z:
        members = {k: z[k] for k in z.files}
    members["trainer"] = np.array("[" * 100000 + "]" * 100000)
    np.savez(deep, **members)
    code, err = call("eval", deep)
    assert code == 2 and "trainer: JSON nested 100000 deep" in err
    np.save(tmp_path / "plain.npy", np.zeros(3))
    code, err = call("eval", tmp_path / "plain.npy")
    assert code == 2 and "not an .npz archive" in err


# memory bombs: refused before anything large is allocated ------------------------------------------
PEAK = '''
import sys
from fbprop import cli
code = cli.main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))   # this process's own
print(int(peak.split()[1]) // 1024, file=sys.stderr)                                 # peak, in MiB
sys.exit(code)
'''


def _bomb_checkpoint(tmp_path: Path) -> Path:
    """A 1 MB zip whose params member inflates to 1 GB of zeros."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in (("format", np.array(FORMAT)), ("architecture", np.array('{"model": "mlp"}')),
                        ("trainer", np.array("{}"))):
            buf = io.BytesIO()
            np.save(buf, a)
            z.writestr(name + ".npy", buf.getvalue())
        with z.open("params.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False,
                                                          "shape": (1 << 27,)})
            zeros = bytes(1 << 20)
            for _ in range(1 << 10):
                member.write(zeros)
    return path


def _huge_header_npy(tmp_path: Path) -> Path:
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (1 << 40, 8, 8)})
        f.write(bytes(64))
    return path


def _gz_idx_claiming_2gb(tmp_path: Path) -> Path:
    """A data directory whose training images are a ~1 MB gzip whose IDX header announces 2 GB."""
    import gzip
    d = tmp_path / "bomb-data"
    d.mkdir()
    n = (2 << 30) // (28 * 28)
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        f.write(bytes(1 << 30))                                  # 1 GiB of zeros compresses to ~1 MB
    for name, count in (("train-labels-idx1-ubyte", n), ("t10k-labels-idx1-ubyte", 1)):
        with open(d / name, "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + count.to_bytes(4, "big"))
    with open(d / "t10k-images-idx3-ubyte", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(784))
    return d


BOMBS = {
    "gzip IDX claiming 2 GB": (lambda d: ("train", "--data", _gz_idx_claiming_2gb(d), "--out", d / "g"),
                               "the gzip file can inflate to at most"),
    "zip-bomb checkpoint": (lambda d: ("eval", _bomb_checkpoint(d)), "compressed members are refused"),
    "npy header claiming 2^40 images": (lambda d: ("predict", d / "run", _huge_header_npy(d)), "not a readable .npy"),
    "hidden 100000,100000": (lambda d: ("train", "--hidden", "100000,100000", "--out", d / "h"), "GiB"),
    "gradcheck of a huge input": (lambda d: ("gradcheck", "mlp", "--input-shape", "1,100000,100000"),
                                  "--input-shape: expected at most"),
}


@pytest.mark.parametrize("case", BOMBS)
def test_memory_bombs_are_one_line_with_a_bounded_peak(tmp_path, case):
    if case.startswith("npy"):
        assert call("train", "--hidden", "8", "--epochs", "1", "--no-plots", "--out", tmp_path / "run")[0] == 0
    argv, message = BOMBS[case]
    p = run_python(PEAK, *argv(tmp_path), cwd=tmp_path)
    *lines, peak = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and message in lines[0], p.stderr
    assert int(peak) < 400, f"peak {peak} MiB"                   # numpy, scipy and fbprop themselves: ~150


def test_labels_too_large_for_a_class_count_are_refused_in_one_line(tmp_path):
    from fbprop.data import write_idx
    d = tmp_path / "data"
    d.mkdir()
    x = np.zeros((20, 4, 4), np.uint8)
    y = np.arange(20, dtype=np.int32)
    y[3] = 2**31 - 1
    for prefix, xs, ys in (("train", x, y), ("t10k", x, np.zeros(20, np.int32))):
        write_idx(d / f"{prefix}-images-idx3-ubyte", xs)
        write_idx(d / f"{prefix}-labels-idx1-ubyte", ys)
    code, err = call("train", "--data", d, "--out", tmp_path / "r")
    assert code == 2 and "expected labels below 65536, got 2147483647" in err and not (tmp_path / "r").exists()


def test_mixed_pixel_types_are_each_scaled_by_their_own_type(tmp_path):
    from fbprop.data import load_dataset, write_idx
    rng = np.random.default_rng(0)
    x8 = rng.integers(0, 256, (60, 6, 6)).astype(np.uint8)
    y = rng.integers(0, 3, 60).astype(np.uint8)
    for test_type, name in ((np.float32, "float-test"), (np.uint8, "byte-test")):
        d = tmp_path / name
        d.mkdir()
        write_idx(d / "train-images-idx3-ubyte", x8)
        write_idx(d / "train-labels-idx1-ubyte", y)
        write_idx(d / "t10k-images-idx3-ubyte", (x8 / 255).astype(np.float32) if test_type is np.float32 else x8)
        write_idx(d / "t10k-labels-idx1-ubyte", y)
    a, b = load_dataset(str(tmp_path / "float-test"), val_size=0), load_dataset(str(tmp_path / "byte-test"), val_size=0)
    np.testing.assert_allclose(a.test.x, b.test.x, atol=1e-5)   # the same pixels, whichever type carried them


# small ones ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trained") / "run"
    assert call("train", "--hidden", "8", "--epochs", "1", "--no-plots", "--out", d)[0] == 0
    return d


def test_predict_refuses_a_fifo_and_a_directory_instead_of_hanging(trained, tmp_path):
    fifo = tmp_path / "images.npy"
    os.mkfifo(fifo)
    for target, message in ((fifo, "expected a file of images"), (tmp_path, "a folder without images")):
        code, err = call("predict", trained, target)                 # a folder is read for its image files
        assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_predict_of_pixels_too_large_for_the_net_is_one_line_not_a_learning_rate_hint(trained, tmp_path):
    x = np.zeros((3, 8, 8))
    x[1, 2, 2] = 1e300
    np.save(tmp_path / "big.npy", x)
    code, err = call("predict", trained, tmp_path / "big.npy")
    assert code == 2 and err.strip().endswith("pixel values too large for float32 (from image 0 on)"), err


def test_an_npy_of_python_objects_is_refused_without_numpys_unsafe_hint(trained, tmp_path):
    a = np.empty(2, dtype=object)
    np.save(tmp_path / "objects.npy", a, allow_pickle=True)
    code, err = call("predict", trained, tmp_path / "objects.npy")
    assert code == 2 and "holds Python objects" in err and "allow_pickle" not in err


def test_ctrl_c_during_start_up_is_one_line_and_status_130(monkeypatch, capsys):
    import builtins

    import fbprop.__main__ as entry
    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "fbprop.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert entry.main() == 130
    assert capsys.readouterr().err == "fbprop: interrupted\n"
