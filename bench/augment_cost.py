"""What data augmentation costs: one LeNet-5 training epoch with no distortion, the 1998 affine
distortions and the elastic ones, interleaved and repeated, on the same data and settings.

    OPENBLAS_NUM_THREADS=1 python bench/augment_cost.py                     # Fashion-MNIST, 6000 samples
    python bench/augment_cost.py --data digits --model lenet-modern --limit 500 --repeats 1   # smoke test

Prints the median epoch time of each and its ratio to the undistorted epoch (the target: ≤ 1.3).
An epoch here is what `fbprop train` times: the training pass and the validation pass. The time
is this process's CPU time (`time.process_time`; run it with one BLAS thread), which other jobs
on a shared machine disturb far less than wall time.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

from fbprop.data import load_dataset, make_transform
from fbprop.models import build_machine
from fbprop.train import Trainer


def epoch_seconds(data, model: str, augment: str) -> float:
    spec = {"model": model, "input_shape": list(data.image_shape), "n_classes": data.n_classes}
    if model == "lenet5":
        spec.update(energy="rbf", loss_args={"beta": 0.1})
    t = Trainer(build_machine(spec), data, optimizer="sgd", lr=0.01, batch_size=32, epochs=1,
                transform=make_transform(augment), log=io.StringIO())
    start = time.process_time()
    t.fit()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--model", default="lenet5")
    p.add_argument("--limit", type=int, default=6000, help="training samples per epoch")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    data = load_dataset(args.data, limit=args.limit)
    kinds = ("none", "affine", "elastic")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):                                # interleaved: a load change hits all alike
        for k in kinds:
            times[k].append(epoch_seconds(data, args.model, k))
    base = statistics.median(times["none"])
    print(f"{args.model} on {args.data}, {len(data.train)} training samples, {args.repeats} repeats (median):")
    for k in kinds:
        m = statistics.median(times[k])
        print(f"  {k:8s} {m:7.2f} s CPU  {m / base:.2f}x   (all: {', '.join(f'{t:.2f}' for t in times[k])})")


if __name__ == "__main__":
    main()
