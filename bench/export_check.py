"""Cross-check of fbprop's exports: the ONNX graph in onnxruntime and the safetensors weights in PyTorch
give fbprop's energies, for each built-in model, on real images.

For each model: train it briefly with fbprop, write model.onnx and weights.safetensors, then
- run the ONNX file in onnxruntime;
- rebuild the torch.nn.Sequential from the .safetensors file alone (its "fbprop_layers" metadata,
  `fbprop.export.torch_sequential`) and load the weights with `load_state_dict(strict=True)`;
and print the largest energy difference of each against fbprop's (relative to the energies'
range), the share of answers (argmin) they agree on, and the inference time per 1000 images.
Run it in the benchmark's venv so that PyTorch is there:  bench/.venv/bin/python bench/export_check.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="digits", help="digits (bundled), fashion-mnist or mnist (as fbprop train)")
    ap.add_argument("--steps", type=int, default=100, help="SGD steps of batch 32 before exporting")
    ap.add_argument("--samples", type=int, default=2000, help="test images compared")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-5, help="largest relative energy difference accepted")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import onnxruntime as ort
    from safetensors import safe_open

    import fbprop as fb
    from fbprop import export
    from fbprop.data.datasets import load_dataset

    try:
        import torch
        from safetensors.torch import load_file
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch is not importable here: the safetensors check is skipped (use bench/.venv/bin/python)")

    data = load_dataset(args.data)
    x_train, y_train = data.train.x, data.train.y
    x_test = data.test.x[:args.samples]
    models = [("mlp", {"model": "mlp"}), ("mlp-rbf", {"model": "mlp", "energy": "rbf"}),
              ("lenet5", {"model": "lenet5"}), ("lenet-modern", {"model": "lenet-modern"})]
    print(f"{args.data}: {len(x_test)} test images {x_test.shape[1:]}, {args.steps} SGD steps each; "
          f"differences relative to max |E|; time per 1000 images, {args.threads} thread(s)")
    print(f"{'model':13} {'onnx |dE|':>10} {'agree':>7} {'torch |dE|':>11} {'agree':>7} "
          f"{'fbprop ms':>10} {'onnx ms':>8} {'torch ms':>9}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in models:
            if spec["model"] == "lenet5" and data.image_shape[1] > 32:
                continue
            machine = fb.build_machine({**spec, "input_shape": list(data.image_shape), "n_classes": data.n_classes})
            opt = fb.SGD(machine.pool, 0.02)
            rng = np.random.default_rng(0)
            for _ in range(args.steps):
                i = rng.integers(0, len(x_train), 32)
                machine.gradient(x_train[i], y_train[i])
                opt.step()
            want = machine.energies_of(x_test)
            answers, scale = want.argmin(1), float(np.abs(want).max())
            onnx_path, st_path = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.safetensors"
            export.to_onnx(machine, onnx_path)
            export.save_safetensors(machine, st_path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            got = session.run(None, {"x": x_test})[0]
            d_onnx = float(np.abs(got - want).max()) / scale
            row = [f"{name:13}", f"{d_onnx:10.1e}", f"{(got.argmin(1) == answers).mean():7.2%}"]
            per_k = 1000 / len(x_test)
            t_fb = _timed(lambda m=machine: m.energies_of(x_test)) * per_k * 1e3
            t_onnx = _timed(lambda s=session: s.run(None, {"x": x_test})) * per_k * 1e3
            failures += d_onnx > args.tol
            if torch is not None:
                with safe_open(st_path, framework="pt") as f:
                    layer_list = json.loads(f.metadata()["fbprop_layers"])
                net = export.torch_sequential(layer_list)
                net.load_state_dict(load_file(st_path), strict=True)
                net.eval()
                xt = torch.from_numpy(x_test)
                with torch.no_grad():
                    got_t = net(xt).numpy()
                    t_torch = _timed(lambda n=net, x=xt: n(x)) * per_k * 1e3
                d_torch = float(np.abs(got_t - want).max()) / scale
                failures += d_torch > args.tol
                row += [f"{d_torch:11.1e}", f"{(got_t.argmin(1) == answers).mean():7.2%}"]
            else:
                row += [f"{'-':>11}", f"{'-':>7}"]
                t_torch = float("nan")
            row += [f"{t_fb:10.2f}", f"{t_onnx:8.2f}", f"{t_torch:9.2f}"]
            print(" ".join(row))
    print("all exports agree with fbprop" if not failures else f"{failures} exports differ by more than {args.tol:g}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
