"""Do two fbprop source trees train to bit-identical parameters?

    python bench/bitwise.py --base /work/main/src              # this checkout's src/ against another
    python bench/bitwise.py --base /work/main/src --steps 100  # shorter

A speed change that keeps the arithmetic (same products, same order of every sum, same rounding)
must leave training results bit for bit as they were: figures measured with the old code stay
reproducible with the new. Each tree trains, in its own process, the same short runs — the MLP
with on-line SGD and with mini-batches, LeNet-5 with SDLM (its curvature estimate included),
lenet-modern with momentum, all float32 on a slice of Fashion-MNIST (the 8×8 digits when it is
not installed) — and writes the final parameters, the optimizer state and the energies of a
held-out batch. The parent compares them with `np.array_equal`; any difference exits 1.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# (name, spec, trainer options, samples trained on): a few hundred steps each
RUNS = [
    ("mlp-sgd-b1", {"model": "mlp"}, {"optimizer": "sgd", "lr": 0.01, "batch_size": 1}, 300),
    ("mlp-sgd-b32", {"model": "mlp"}, {"optimizer": "sgd", "lr": 0.05, "batch_size": 32}, 6400),
    ("lenet5-sdlm-b32", {"model": "lenet5"},
     {"optimizer": "sdlm", "lr": 0.002, "mu": 0.02, "batch_size": 32, "hessian_samples": 200}, 6400),
    ("lenet5-sdlm-b1", {"model": "lenet5"},
     {"optimizer": "sdlm", "lr": 0.002, "mu": 0.02, "batch_size": 1, "hessian_samples": 100}, 200),
    ("lenet-modern-momentum-b32", {"model": "lenet-modern"},
     {"optimizer": "momentum", "lr": 0.01, "momentum": 0.9, "batch_size": 32}, 6400),
]


def child(out: str, steps_scale: float, data_name: str) -> None:
    """Train every run with the fbprop on sys.path and save what it ends with to `out`."""
    import fbprop as fb
    from fbprop.train import Trainer

    arrays: dict[str, np.ndarray] = {"fbprop_file": np.array(fb.__file__)}
    for name, spec, options, samples in RUNS:
        n = max(int(samples * steps_scale), options["batch_size"])
        data = fb.data.load_dataset(data_name, limit=n, val_size=256)
        machine = fb.build_machine({**spec, "input_shape": list(data.train.x.shape[1:]),
                                    "n_classes": data.n_classes, "dtype": "float32", "seed": 1})
        trainer = Trainer(machine, data, epochs=1, seed=2, log=io.StringIO(), **options)
        trainer.fit()
        arrays[f"{name}/w"] = machine.pool.x.copy()
        for k, v in trainer.optimizer.state().items():
            arrays[f"{name}/opt.{k}"] = v.copy()
        arrays[f"{name}/energies"] = machine.energies_of(data.val.x)
        arrays[f"{name}/energies64"] = machine.energies_of(data.val.x.astype(np.float64))
    np.savez(out, **arrays)


def run_tree(src: str, out: str, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONPATH": src, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", out, "--scale", str(args.scale), "--data", args.data],
                   env=env, check=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="/work/main/src", help="the src/ directory to compare against")
    ap.add_argument("--src", default=str(HERE.parent / "src"), help="the src/ directory under test (this checkout)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every run's number of samples")
    ap.add_argument("--data", default=None, help="data set (default: fashion-mnist if installed, else digits)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.data is None:
        import fbprop as fb
        try:
            fb.data.load_dataset("fashion-mnist", limit=1)
            args.data = "fashion-mnist"
        except FileNotFoundError:
            args.data = "digits"
    if args.child:
        child(args.child, args.scale, args.data)
        return 0
    with tempfile.TemporaryDirectory(prefix="fbprop-bitwise-") as tmp:
        a, b = os.path.join(tmp, "src.npz"), os.path.join(tmp, "base.npz")
        ta, tb = run_tree(args.src, a, args), run_tree(args.base, b, args)
        mine, base = np.load(a), np.load(b)
        print(f"data {args.data}; trained with {mine['fbprop_file']} ({ta:.1f} s) and {base['fbprop_file']} "
              f"({tb:.1f} s)")
        if str(mine["fbprop_file"]) == str(base["fbprop_file"]):
            print("error: both runs imported the same fbprop; check --src and --base")
            return 2
        bad = 0
        for key in sorted(k for k in mine.files if k != "fbprop_file"):
            same = key in base.files and mine[key].dtype == base[key].dtype and np.array_equal(mine[key], base[key])
            moved = "" if same else (f" (max |diff| {np.max(np.abs(mine[key] - base[key])):.3g})"
                                     if key in base.files and mine[key].shape == base[key].shape else " (missing)")
            print(f"  {key:40} {'identical' if same else 'DIFFERENT' + moved}")
            bad += not same
        missing = sorted(set(base.files) - set(mine.files))
        for key in missing:
            print(f"  {key:40} missing from {args.src}")
        print("bit-identical" if not bad and not missing else f"{bad + len(missing)} arrays differ")
        return 1 if bad or missing else 0


if __name__ == "__main__":
    sys.exit(main())
