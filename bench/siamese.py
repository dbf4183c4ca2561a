"""Siamese DrLIM training: fbprop against PyTorch on the same pairs, back to back.

    bench/.venv/bin/python bench/siamese.py --data fashion-mnist --repeats 3
    bench/.venv/bin/python bench/siamese.py --data digits --repeats 3

Both systems train the same net (784-256-64-2 for Fashion-MNIST, 64-256-64-2 for digits: tanh
layers, a linear 2-D output) with the contrastive loss (margin 1) by SGD with momentum 0.9,
rate 0.01, batches of 64 pairs, `--epochs` epochs of `--pairs` pairs drawn afresh each epoch by
`fbprop.siamese.draw_pairs` (half same-class) — identical pair sequences for both systems —
then judge the 2-D embedding by the 5-NN accuracy of the test images (scikit-learn). Timed: the
training loop only (the same scope for both); each repeat runs PyTorch then fbprop, with float32
and the thread count of `--threads` for both. On a machine shared with other jobs the wall times
are upper bounds; the script prints each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def run_pytorch(images, epochs: int, pairs: int, seed: int, threads: int) -> tuple[float, float]:
    import numpy as np
    import torch

    from fbprop.siamese import PairRedraw, knn_accuracy

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    d_in = int(np.prod(images.image_shape))
    g = torch.nn.Sequential(torch.nn.Linear(d_in, 256), torch.nn.Tanh(), torch.nn.Linear(256, 64), torch.nn.Tanh(),
                            torch.nn.Linear(64, 2))
    opt = torch.optim.SGD(g.parameters(), lr=0.01, momentum=0.9)
    x_train = torch.from_numpy(images.train.x.reshape(len(images.train.x), -1))
    redraw = PairRedraw(images.train.x, images.train.y, pairs, seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        split = redraw.split(epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(split))
        index = torch.from_numpy(split.x.pairs[order])
        labels = torch.from_numpy(split.y[order].astype(np.float32))
        for i in range(0, len(order), 64):
            pair, y = index[i:i + 64], labels[i:i + 64]
            d = torch.linalg.vector_norm(g(x_train[pair[:, 0]]) - g(x_train[pair[:, 1]]), dim=1)
            loss = ((1 - y) * 0.5 * d**2 + y * 0.5 * torch.clamp(1.0 - d, min=0) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        train_points = g(x_train).numpy()
        test_points = g(torch.from_numpy(images.test.x.reshape(len(images.test.x), -1))).numpy()
    return seconds, knn_accuracy(train_points, images.train.y, test_points, images.test.y, 5)


def run_fbprop(images, epochs: int, pairs: int, seed: int) -> tuple[float, float]:
    import io

    from fbprop.siamese import train_siamese

    result = train_siamese(images, hidden=[256, 64], dim=2, margin=1.0, lr=0.01, momentum=0.9, batch_size=64,
                           epochs=epochs, pairs=pairs, seed=seed, log=io.StringIO())
    return result["train_seconds"], result["knn_test_accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist", choices=["digits", "fashion-mnist"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=120_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="BLAS / torch threads for both systems")
    parser.add_argument("--systems", default="pytorch,fbprop")
    parser.add_argument("--json", default=None, help="write the runs to this file")
    args = parser.parse_args()
    _threads(args.threads)
    import numpy as np

    from fbprop.data import load_dataset

    images = load_dataset(args.data, val_size=0, seed=0, dtype=np.float32)
    systems = args.systems.split(",")
    runs: dict[str, list[tuple[float, float]]] = {s: [] for s in systems}
    for repeat in range(args.repeats):
        for system in systems:
            if system == "pytorch":
                try:
                    import torch  # noqa: F401
                except ImportError:
                    print("pytorch: not installed here (run with bench/.venv/bin/python)", file=sys.stderr)
                    continue
                seconds, accuracy = run_pytorch(images, args.epochs, args.pairs, repeat, args.threads)
            else:
                seconds, accuracy = run_fbprop(images, args.epochs, args.pairs, repeat)
            runs[system].append((seconds, accuracy))
            print(f"{args.data} repeat {repeat} {system:8s} train {seconds:7.1f} s   5-NN test accuracy "
                  f"{100 * accuracy:.2f}%", flush=True)
    print(f"\n{args.data}: {args.epochs} x {args.pairs} pairs, batch 64, {args.threads} thread(s), medians of "
          f"{args.repeats}:")
    medians = {}
    for system, r in runs.items():
        if r:
            medians[system] = (statistics.median(s for s, _ in r), statistics.median(a for _, a in r))
            print(f"  {system:8s} {medians[system][0]:7.1f} s   {100 * medians[system][1]:.2f}%")
    if len(medians) == 2:
        print(f"  fbprop / pytorch wall time: {medians['fbprop'][0] / medians['pytorch'][0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": args.data, "threads": args.threads, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
