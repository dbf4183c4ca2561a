"""The benchmark scripts run end to end on tiny sizes (no timing is asserted: timing lives in bench/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_mlp_script_prints_samples_per_second_for_each_batch_size():
    p = _run(str(BENCH / "mlp.py"), "--seconds", "0.05", "--samples", "256", "--data", "random", "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert "batch    samples/s" in p.stdout
    rows = [line.split()[0] for line in p.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert rows == ["1", "32", "128"], p.stdout


def test_run_quick_prints_the_check_and_the_table_for_the_available_systems():
    pytest.importorskip("sklearn")
    # PyTorch takes part only when this interpreter can import it (not bench/.venv's: it would
    # add two torch start-ups, ~10 s, to the test)
    p = _run(str(BENCH / "run.py"), "--quick", "--data", "random", "--threads", "1", "--torch-python", sys.executable)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "like-with-like check" in out and "check: passed" in out
    assert "workload             system      samples/s" in out
    assert "GEMM ceiling" in out
    control = out.split("control, the same system in two processes a repeat (numpy-ref ÷ numpy-ref-2")[1].splitlines()
    assert [line.split()[0] for line in control[1:8]] == [
        "mlp-train-b1", "mlp-train-b32", "mlp-train-b128", "lenet5-train-b32", "lenet5-train-b128",
        "mlp-infer-b256", "lenet5-infer-b256"], out
    for system in ("fbprop", "numpy-ref", "numpy-fold", "sklearn"):
        assert f" {system} " in out, out
    torch_here = "skipping pytorch" not in out
    assert (" pytorch " in out) == torch_here


def test_numpy_fold_is_the_reference_with_its_biases_added_by_the_products(monkeypatch):
    """The `numpy-fold` system: with one thread its forward products add the biases (gemm, β = 1),
    giving the reference's activations; with more threads it is the reference."""
    monkeypatch.syspath_prepend(str(BENCH))
    import numpy as np
    import sys_numpy
    rng = np.random.default_rng(2)
    shapes = [(5, 7), (5,), (4, 5), (4,), (3, 4), (3,)]
    init = rng.standard_normal(sum(int(np.prod(s)) for s in shapes))
    ref = sys_numpy.make("mlp", init=init, shapes=shapes, lr=0.1)
    fold = sys_numpy.make("mlp", fold=True, threads=1, init=init, shapes=shapes, lr=0.1)
    assert fold.gemm is not None and ref.gemm is None
    assert sys_numpy.make("mlp", fold=True, threads=2, init=init, shapes=shapes, lr=0.1).gemm is None
    x = rng.standard_normal((6, 7))
    for got, want in zip(fold._forward(x), ref._forward(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
    y = rng.integers(0, 3, 6)
    fold.train_step(x, y)
    ref.train_step(x, y)
    np.testing.assert_allclose(fold.p.w, ref.p.w, rtol=1e-14, atol=1e-15)


def test_bias_fold_script_prints_each_layer_and_the_whole_pass():
    p = _run(str(BENCH / "bias_fold.py"), "--batch", "8", "--repeats", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [line.split()[0] for line in p.stdout.splitlines()[2:]]
    assert rows == ["784", "300", "100", "whole"], p.stdout
    assert "(> 1: the fold is faster)" in p.stdout


def test_bias_fold_script_compares_a_trained_nets_answers_with_the_fold_and_without(tmp_path):
    pytest.importorskip("sklearn")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    train = subprocess.run([sys.executable, "-m", "fbprop", "train", "--epochs", "1", "--out", str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert train.returncode == 0, train.stdout + train.stderr
    p = _run(str(BENCH / "bias_fold.py"), "--checkpoint", str(tmp_path / "run" / "best.npz"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 Linear and squashing pairs folded; with the fold and without, 0 of 360 test answers differ, " \
           "energies at most" in p.stdout, p.stdout


def test_run_counterbalances_the_order_of_the_systems_between_repeats(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))                       # (sys.path as it was, after the test)
    import run
    order = ["pytorch", "fbprop", "numpy-ref", "numpy-ref-2", "gemm"]
    assert [run.run_order(order, r) for r in range(3)] == [order, order[::-1], order]
    assert order == ["pytorch", "fbprop", "numpy-ref", "numpy-ref-2", "gemm"]        # (not reversed in place)


def test_siamese_script_trains_and_prints_accuracy_time_and_medians():
    pytest.importorskip("sklearn")
    p = _run(str(BENCH / "siamese.py"), "--data", "digits", "--epochs", "1", "--pairs", "2000", "--systems", "fbprop")
    assert p.returncode == 0, p.stderr
    assert "digits repeat 0 fbprop   train" in p.stdout and "5-NN test accuracy" in p.stdout
    assert "digits: 1 x 2000 pairs, batch 64, 1 thread(s), medians of 1:" in p.stdout


def test_augment_cost_script_prints_each_distortion_against_none():
    p = _run(str(BENCH / "augment_cost.py"), "--data", "digits", "--model", "lenet-modern", "--limit", "200",
             "--repeats", "1")
    assert p.returncode == 0, p.stderr
    rows = [line.split()[0] for line in p.stdout.splitlines()[1:]]
    assert rows == ["none", "affine", "elastic"], p.stdout
    assert p.stdout.splitlines()[1].split()[4] == "1.00x", p.stdout


@pytest.mark.parametrize("workload", ["mlp-train-b4", "lenet5-train-b4", "mlp-infer-b64"])
def test_same_process_ab_prints_both_steps_and_their_ratio(workload):
    p = _run(str(BENCH / "ab.py"), workload, "--blocks", "2", "--seconds", "0.01")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{workload}, 1 thread(s), 2 pairs of"), p.stdout
    assert len(lines[1].split()) == 4 and len(lines[2].split()) == 4       # a label and 2 blocks each
    assert lines[3].startswith("fbprop ÷ numpy reference "), p.stdout
    assert float(lines[3].split()[4]) > 0


@pytest.mark.parametrize("workload", ["resnet-train-b4", "mlp", "mlp-train-bx", "mlp-train-b0"])
def test_same_process_ab_refuses_an_unknown_workload(workload):
    p = _run(str(BENCH / "ab.py"), workload)
    assert p.returncode == 2 and "expected a workload like mlp-train-b1" in p.stderr, p.stderr


@pytest.mark.parametrize("workload", ["mlp-train-b4", "lenet5-train-b4", "mlp-infer-b64"])
def test_routes_prints_both_rule_sets_against_the_reference_and_leaves_the_found_one(workload):
    p = _run(str(BENCH / "routes.py"), workload, "--blocks", "2", "--seconds", "0.01", "--data", "random")
    if p.returncode == 2 and "numpy's own OpenBLAS" in p.stderr:
        pytest.skip("numpy's own OpenBLAS is not found in this numpy build")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"{workload}, 1 thread(s), 2 rounds of") and "OpenBLAS core" in lines[0], p.stdout
    assert [line.split("  ")[0] for line in lines[1:]] == ["small-kernel routes", "other routes", "numpy-ref"]
    assert all(float(line.split()[-1]) > 0 for line in lines[1:]), p.stdout
    assert lines[3].split()[-1] == "1.000"                      # the reference against itself


@pytest.mark.parametrize("args", [["resnet-train-b4"], ["mlp-train-b0"], ["mlp-train-b4", "--blocks", "0"]])
def test_routes_refuses_bad_arguments_in_one_line(args):
    p = _run(str(BENCH / "routes.py"), *args, "--data", "random")
    assert p.returncode == 2 and "expected" in p.stderr, p.stderr
    assert len([line for line in p.stderr.splitlines() if "error" in line]) == 1, p.stderr


def test_parallel_passes_prints_both_splits_for_each_size_with_and_without_a_product():
    p = _run(str(BENCH / "parallel_passes.py"), "--sizes", "4096,64", "--repeats", "3")
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("4096", "nothing"), ("4096", "an"), ("64", "nothing"), ("64", "an")]
    assert all(len(r) == (7 if r[1] == "nothing" else 8) for r in rows), p.stdout   # 3 µs, 2 ratios each


@pytest.mark.parametrize("sizes", ["1000,x", "1", ""])
def test_parallel_passes_refuses_bad_sizes_in_one_line(sizes):
    p = _run(str(BENCH / "parallel_passes.py"), "--sizes", sizes, "--repeats", "1")
    assert p.returncode == 2 and ("--sizes: expected" in p.stderr or "expected sizes >= 2" in p.stderr), p.stderr
    assert len([line for line in p.stderr.splitlines() if "error" in line]) == 1, p.stderr


def test_split_inference_prints_both_timings_for_each_model_and_batch():
    p = _run(str(BENCH / "split_inference.py"), "--models", "lenet5,mlp", "--batches", "16",
             "--repeats", "1", "--seconds", "0.01", "--data", "random")
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.split()[:1] in (["lenet5"], ["mlp"])]
    assert [(r[0], r[1], r[2]) for r in rows] == [("lenet5", "16", "yes"), ("mlp", "16", "no")], p.stdout
    assert all(len(r) == 6 and float(r[5]) > 0 for r in rows), p.stdout


@pytest.mark.parametrize("args", [["--batches", "16,x"], ["--batches", "0"], ["--models", "lenet9"]])
def test_split_inference_refuses_bad_arguments_in_one_line(args):
    p = _run(str(BENCH / "split_inference.py"), *args, "--repeats", "1", "--data", "random")
    assert p.returncode == 2 and "expected" in p.stderr, p.stderr
    assert len([line for line in p.stderr.splitlines() if "error" in line]) == 1, p.stderr


def test_infer_parts_prints_each_variant_against_the_reference():
    p = _run(str(BENCH / "infer_parts.py"), "--batch", "16", "--repeats", "1", "--passes", "2", "--data", "random")
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line and not line.startswith("#") and "µs a pass" not in line]
    rows = [line.rsplit(None, 2) for line in lines]
    names = [r[0].strip() for r in rows]
    assert names == ["fbprop predict", "fbprop inference", "fbprop network.fprop", "fbprop's calls, bare",
                     "the same, two h1 in turn", "reference's calls, bare", "numpy reference infer"], p.stdout
    assert float(rows[-1][2]) == 1.0 and "disagree" not in p.stderr, p.stdout


def test_step_overhead_prints_both_nets_at_each_batch_after_one_equal_step():
    p = _run(str(BENCH / "step_overhead.py"), "--batches", "1,3", "--blocks", "1", "--seconds", "0.01",
             "--data", "random")
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.strip().startswith(("784-", "4-3-3-10"))]
    assert [(r[0], r[1]) for r in rows] == [("784-300-100-10", "1"), ("784-300-100-10", "3"),
                                            ("4-3-3-10", "1"), ("4-3-3-10", "3")], p.stdout
    for r in rows:              # fbprop, floor, reference µs, difference, two ratios, calls fbprop / floor / reference
        assert len(r) == 13 and r[9] == r[11] == "/", r
        assert min(float(v) for v in r[2:5]) > 0 and float(r[6]) > 0 and float(r[7]) > 0, r
        assert int(r[8]) > int(r[12]) > 0 and int(r[8]) > int(r[10]) > 0, r


@pytest.mark.parametrize("batch", [1, 5])
def test_contract_floor_trains_as_the_reference_does(batch, monkeypatch):
    # the floor's modules make the reference's step in another order of operations: the same
    # weights to float64's rounding after three steps, and not the starting ones
    monkeypatch.syspath_prepend(str(BENCH))
    import numpy as np
    import sys_floor
    import sys_numpy
    rng = np.random.default_rng(batch)
    shapes = [(7, 6), (7,), (5, 7), (5,), (4, 5), (4,)]
    init = rng.standard_normal(sum(int(np.prod(s)) for s in shapes))
    floor = sys_floor.ContractMLP(init, shapes, 0.3, batch)
    ref = sys_numpy.NumpyMLP(init, shapes, 0.3)
    for _ in range(3):
        x, y = rng.standard_normal((batch, 6)), rng.integers(0, 4, batch)
        floor.train_step(x, y)
        ref.train_step(x, y)
    assert not np.allclose(floor.p.w, init, rtol=0, atol=1e-3)
    np.testing.assert_allclose(floor.p.w, ref.p.w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("args", [("--batches", "0"), ("--batches", "a,1"), ("--blocks", "0")])
def test_step_overhead_refuses_bad_arguments_in_one_line(args):
    p = _run(str(BENCH / "step_overhead.py"), *args, "--data", "random")
    assert p.returncode == 2 and "expected --batches" in p.stderr, p.stderr


needs_callgrind = pytest.mark.skipif(
    not (Path("/usr/include/valgrind/callgrind.h").exists() and __import__("shutil").which("valgrind")),
    reason="needs valgrind and its callgrind.h")


def _count_rows(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]


@pytest.fixture(scope="module")
def training_instructions():
    """step_instructions' training counts at batch 2, split by library (one run for the tests below)."""
    p = _run(str(BENCH / "step_instructions.py"), "--batches", "2", "--steps", "3", "--parts", timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout


@needs_callgrind
def test_step_instructions_counts_each_system_and_the_ratios_follow_from_the_counts(training_instructions):
    rows = _count_rows(training_instructions)
    assert len(rows) == 4 and rows[0][0] == "2", training_instructions
    fb, floor, ref, r_fb, r_floor = (float(v) for v in rows[0][1:])
    assert min(fb, floor, ref) > 1000, rows                      # a step runs thousands of instructions
    assert r_fb == pytest.approx(ref / fb, abs=0.006) and r_floor == pytest.approx(ref / floor, abs=0.006)
    # --parts: each system's count split by library (BLAS, numpy, libc, Python, other), summing to it
    parts = {row[1]: [float(v) for v in row[2:]] for row in rows[1:]}
    assert sorted(parts) == ["fbprop", "floor", "ref"] and all(len(v) == 5 for v in parts.values()), rows
    for system, total in (("fbprop", fb), ("floor", floor), ("ref", ref)):
        assert min(parts[system]) >= 0 and sum(parts[system]) == pytest.approx(total, abs=3), (system, rows)
        blas, numpy, _, python, other = parts[system]
        assert blas > 0 and numpy > 0 and python > 0 and other < 0.1 * total, (system, rows)


@needs_callgrind
def test_step_instructions_counts_inference_for_fbprop_and_the_reference_only(training_instructions):
    p = _run(str(BENCH / "step_instructions.py"), "--infer", "--batches", "2", "--steps", "3", timeout=300)
    assert p.returncode == 0, p.stderr
    assert "instructions an inference (predict) on the 4-3-3-10 net" in p.stdout, p.stdout
    rows = _count_rows(p.stdout)
    assert len(rows) == 1 and rows[0][0] == "2" and rows[0][2] == rows[0][5] == "-", p.stdout
    fb, ref, ratio = float(rows[0][1]), float(rows[0][3]), float(rows[0][4])
    assert min(fb, ref) > 1000 and ratio == pytest.approx(ref / fb, abs=0.006), p.stdout
    # an inference is a forward pass, no backward sweep and no update: fewer instructions than a step
    trained = _count_rows(training_instructions)[0]
    assert fb < float(trained[1]) and ref < float(trained[3]), (p.stdout, trained)


@needs_callgrind
def test_step_instructions_counts_lenet5_and_its_simulated_cache_misses():
    p = _run(str(BENCH / "step_instructions.py"), "--net", "lenet5", "--batches", "2", "--steps", "1", "--cache",
             timeout=300)
    assert p.returncode == 0, p.stderr
    assert "instructions a step on the LeNet-5 net" in p.stdout, p.stdout
    counts, *misses = _count_rows(p.stdout)
    assert counts[0] == "2" and counts[2] == counts[5] == "-", p.stdout      # no floor for LeNet-5
    fb, ref = float(counts[1]), float(counts[3])
    assert min(fb, ref) > 1e6 and float(counts[4]) == pytest.approx(ref / fb, abs=0.006), p.stdout
    # each system's misses a step at the L1s and the L2: some at each level, never more in the
    # L2 than in the L1 it stands behind (it only sees what the L1 missed), nor more than the loads
    assert [row[:2] for row in misses] == [["2", "fbprop"], ["2", "ref"]], p.stdout
    for row, total in zip(misses, (fb, ref), strict=True):
        i1, d1r, d1w, i2, d2r, d2w = (float(v) for v in row[2:])
        assert min(i1, d1r, d1w, i2, d2r, d2w) > 0 and i1 < total, row
        assert i2 <= i1 and d2r <= d1r and d2w <= d1w, row


@pytest.mark.parametrize("args", [("--batches", "0"), ("--batches", "x"), ("--steps", "0")])
def test_step_instructions_refuses_bad_arguments_in_one_line(args):
    p = _run(str(BENCH / "step_instructions.py"), *args)
    assert p.returncode == 2 and "expected --batches" in p.stderr, p.stderr


def test_gemm_floor_prints_the_products_each_pass_and_the_bound():
    p = _run(str(BENCH / "gemm_floor.py"), "--batch", "4", "--repeats", "1")
    assert p.returncode == 0, p.stderr
    times = {line[:36].strip(): float(line[36:].split()[0]) for line in p.stdout.splitlines()[1:-1]}
    assert len(times) == 8 and all(t > 0 for t in times.values()), p.stdout
    passes = sum(t for name, t in times.items() if not name.startswith("the "))
    assert abs(times["the passes besides the products"] - passes) < 0.35, p.stdout   # six roundings to 0.1
    products = times["the products (the GEMM ceiling)"]
    last = p.stdout.splitlines()[-1]
    assert last.startswith("best possible step: ") and last.endswith("% of the GEMM ceiling"), p.stdout
    assert abs(float(last.split()[3].rstrip("%")) - 100 * products / (products + passes)) <= 1, p.stdout


def test_gemm_floor_refuses_a_bad_batch_in_one_line():
    p = _run(str(BENCH / "gemm_floor.py"), "--batch", "0")
    assert p.returncode == 2 and "expected --batch >= 1" in p.stderr, p.stderr


def test_infer_parts_refuses_a_bad_batch_in_one_line():
    p = _run(str(BENCH / "infer_parts.py"), "--batch", "0", "--data", "random")
    assert p.returncode == 2 and "expected --batch" in p.stderr, p.stderr


def test_split_training_prints_both_timings_for_each_model_and_batch():
    p = _run(str(BENCH / "split_training.py"), "--models", "lenet5,mlp", "--batches", "8,16", "--split-min", "8",
             "--repeats", "1", "--seconds", "0.01", "--gap", "0", "--data", "random")
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.split()[:1] in (["lenet5"], ["mlp"])]
    assert [(r[0], r[1], r[2]) for r in rows] == [("lenet5", "8", "no/no"), ("lenet5", "16", "yes/yes"),
                                                  ("mlp", "8", "no/no"), ("mlp", "16", "no/no")], p.stdout
    assert all(len(r) == 8 and min(map(float, r[3:])) > 0 for r in rows), p.stdout


def test_split_training_force_splits_the_mlp_too():
    p = _run(str(BENCH / "split_training.py"), "--models", "mlp", "--batches", "16", "--split-min", "8", "--force",
             "--repeats", "1", "--seconds", "0.01", "--gap", "0", "--data", "random")
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.split()[:1] == ["mlp"]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("mlp", "16", "yes/yes")], p.stdout


@pytest.mark.parametrize("args", [["--batches", "16,x"], ["--batches", "0"], ["--split-min", "0"],
                                  ["--gap", "-1"], ["--models", "lenet9"]])
def test_split_training_refuses_bad_arguments_in_one_line(args):
    p = _run(str(BENCH / "split_training.py"), *args, "--repeats", "1", "--data", "random")
    assert p.returncode == 2 and "expected" in p.stderr, p.stderr
    assert len([line for line in p.stderr.splitlines() if "error" in line]) == 1, p.stderr


def test_core_contention_prints_the_five_timings():
    p = _run(str(BENCH / "core_contention.py"), "--part", "4", "--seconds", "0.01", "--data", "random")
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stdout.splitlines() if line and not line.startswith("#")]
    labels = ["one process alone", "two processes at once, each", "one part alone, in this process",
              "two parts in turn, one thread", "two parts at once, two threads"]
    assert [next((label for label in labels if label in line), None) for line in lines] == labels, p.stdout
    assert all(float(line.split()[-1]) > 0 for line in lines), p.stdout


@pytest.mark.parametrize("args", [["--part", "0"], ["--model", "lenet9"]])
def test_core_contention_refuses_bad_arguments_in_one_line(args):
    p = _run(str(BENCH / "core_contention.py"), *args, "--data", "random")
    assert p.returncode == 2 and "expected" in p.stderr, p.stderr
