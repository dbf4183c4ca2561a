"""What every benchmark process shares: the workloads, the data, the timing loop, the machine report.

A workload is one model, one mode (train: fprop + bprop + SGD step; infer: fprop + argmin) and
one batch size. Every system sees the same float32 batches in the same order, drawn in turn from
one slice of Fashion-MNIST's training split (random data with a note when it is absent).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
CORETYPE_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

MLP_SPEC = {"model": "mlp", "hidden": [300, 100], "squash": "tanh", "energy": "scores", "loss": "nll",
            "input_shape": [1, 28, 28], "n_classes": 10}
LENET5_SPEC = {"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10}   # rbf energy, nll β = 0.1
SPECS = {"mlp": MLP_SPEC, "lenet5": LENET5_SPEC}


def model_spec(name: str) -> dict:
    """The bench's spec of a model: its own for the MLP and LeNet-5, else the model's defaults
    on 28×28 images and 10 classes."""
    return SPECS.get(name) or {"model": name, "input_shape": [1, 28, 28], "n_classes": 10}

MLP_SIZES = (784, 300, 100, 10)
LR = 0.01


@dataclass(frozen=True)
class Workload:
    model: str          # "mlp" | "lenet5"
    mode: str           # "train" | "infer"
    batch: int

    @property
    def name(self) -> str:
        return f"{self.model}-{self.mode}-b{self.batch}"


WORKLOADS = (
    Workload("mlp", "train", 1), Workload("mlp", "train", 32), Workload("mlp", "train", 128),
    Workload("lenet5", "train", 32), Workload("lenet5", "train", 128),
    Workload("mlp", "infer", 1024), Workload("lenet5", "infer", 1024),
)


def parse_workload(name: str) -> Workload:
    model, mode, batch = name.split("-")
    return Workload(model, mode, int(batch.removeprefix("b")))


def mlp_flops(batch: int) -> int:
    """Multiply-adds ×2 of one MLP training step's matrix products (no ∂E/∂input for the data)."""
    weights = sum(a * b for a, b in zip(MLP_SIZES[:-1], MLP_SIZES[1:]))
    hidden_inputs = sum(a * b for a, b in zip(MLP_SIZES[1:-1], MLP_SIZES[2:]))
    return 2 * batch * (weights + weights + hidden_inputs)        # forward, ∂E/∂W, ∂E/∂x of hidden states


# data -------------------------------------------------------------------------------------------
def load_data(n: int, source: str = "fashion-mnist") -> tuple[np.ndarray, np.ndarray, str]:
    """(x (n, 1, 28, 28) float32 standardised, y (n,) int64, a note on where they came from)."""
    if source == "fashion-mnist":
        try:
            import fbprop
            data = fbprop.data.load_dataset("fashion-mnist", limit=n)
            return (np.ascontiguousarray(data.train.x[:n]), data.train.y[:n].astype(np.int64),
                    f"Fashion-MNIST train, first {n} of a fixed permutation")
        except FileNotFoundError as e:
            note = f"random data (Fashion-MNIST not found: {e})"
    else:
        note = "random data (--data random)"
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n), note)


def make_workspace(path: str, n: int, source: str = "fashion-mnist", dtype: str = "float32") -> str:
    """Write the data, both nets' initial fbprop pools and LeNet-5's constants to one .npz; the note.

    Every system process reads this file, so all of them train from the same weights on the same
    batches without importing fbprop (which would add its footprint to their peak memory).
    """
    import fbprop
    x, y, note = load_data(n, source)
    arrays = {"x": x.astype(dtype), "y": y}
    shapes = {}
    for model, spec in SPECS.items():
        pool = fbprop.build_machine({**spec, "dtype": dtype}).pool
        arrays[f"{model}_init"] = pool.x.copy()
        shapes[model] = [list(shape) for _, _, shape in pool.handles]
    arrays["codes"] = fbprop.lenet5_codes(10)
    arrays["table"] = np.asarray(fbprop.LENET5_C3_TABLE)
    arrays["meta"] = np.array(json.dumps({"note": note, "shapes": shapes}))
    np.savez(path, **arrays)
    return note


def read_workspace(path: str) -> dict:
    with np.load(path) as f:
        ws = {k: f[k] for k in f.files}
    meta = json.loads(str(ws.pop("meta")))
    ws["note"], ws["shapes"] = meta["note"], {k: [tuple(s) for s in v] for k, v in meta["shapes"].items()}
    return ws


def split(flat: np.ndarray, shapes) -> list[np.ndarray]:
    """A flat parameter vector as arrays of the given shapes (views, in order)."""
    out, off = [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(flat[off:off + n].reshape(shape))
        off += n
    return out


def batch_starts(n: int, batch: int) -> list[int]:
    """Start offsets of the full batches of an n-sample slice, in order (cycled by the loop)."""
    if batch > n:
        raise ValueError(f"benchmark: expected a data slice of at least {batch} samples, got {n}")
    return list(range(0, n - batch + 1, batch))


# timing -----------------------------------------------------------------------------------------
def measure(step: Callable[[int], None], starts: list[int], batch: int, seconds: float,
            warmup: int = 3, min_steps: int = 3) -> dict:
    """Run `step(start)` over the batches in turn for `seconds` (after `warmup` steps); samples/s."""
    k = 0
    for _ in range(warmup):
        step(starts[k % len(starts)])
        k += 1
    steps, t0 = 0, time.perf_counter()
    while True:
        step(starts[k % len(starts)])
        k += 1
        steps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and steps >= min_steps:
            break
    return {"samples_per_s": steps * batch / elapsed, "steps": steps, "seconds": elapsed}


def same_process_steps(name: str, source: str = "fashion-mnist") -> tuple:
    """fbprop's step and the numpy reference's for one workload (`name`, e.g. mlp-train-b1), from
    the same initial weights over the same batches, for the same-process comparisons (ab.py,
    routes.py): (workload, fbprop's step, the reference's step, batch starts, data note),
    each step a function of its batch's first index. ValueError naming what was expected for a
    workload neither system runs."""
    import sys_numpy

    import fbprop
    try:
        wl = parse_workload(name)
    except ValueError:
        wl = None
    if wl is None or wl.model not in SPECS or wl.mode not in ("train", "infer") or wl.batch < 1:
        raise ValueError(f"expected a workload like mlp-train-b1 or lenet5-infer-b1024, got {name!r}")
    x, y, note = load_data(max(4096, 4 * wl.batch), source)
    machine = fbprop.build_machine({**SPECS[wl.model], "dtype": "float32"})
    opt = fbprop.SGD(machine.pool, LR)
    shapes = [shape for _, _, shape in machine.pool.handles]
    ref = sys_numpy.make(wl.model, init=machine.pool.x.copy(), shapes=shapes, lr=LR,
                         codes=fbprop.lenet5_codes(10), table=np.asarray(fbprop.LENET5_C3_TABLE))
    b = wl.batch
    if wl.mode == "train":
        def ours(i):
            machine.gradient(x[i:i + b], y[i:i + b])
            opt.step()

        def theirs(i):
            ref.train_step(x[i:i + b], y[i:i + b])
    else:
        def ours(i):
            machine.predict(x[i:i + b], batch_size=b)

        def theirs(i):
            ref.infer(x[i:i + b])
    return wl, ours, theirs, batch_starts(len(y), b), note


def alternating_blocks(steps: dict[str, Callable[[int], None]], starts: list[int], blocks: int,
                       seconds: float) -> tuple[dict[str, list[float]], int]:
    """µs a step of each of `steps`, timed in `blocks` rounds of one block of n steps each, in
    turn (a machine drifting between speeds slows a round's blocks alike), after 3 warm-up steps
    each; n is sized so that the first step's block lasts about `seconds`. ({name: µs per
    round}, n)."""
    def block(step, n):
        t = time.perf_counter()
        for k in range(n):
            step(starts[k % len(starts)])
        return (time.perf_counter() - t) / n * 1e6

    for k in range(3):
        for step in steps.values():
            step(starts[k % len(starts)])
    n = max(3, int(seconds * 1e6 / block(next(iter(steps.values())), 3)))
    us: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(blocks):
        for name, step in steps.items():
            us[name].append(block(step, n))
    return us, n


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM, else ru_maxrss.

    On Linux ru_maxrss(RUSAGE_SELF) survives execve, so a worker started by a 100 MB parent
    reports at least 100 MB; VmHWM is the high-water mark of the process's own address space,
    which starts afresh at exec. Where /proc is missing, ru_maxrss is the best there is.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024                       # kB
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024                 # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def private_mb(pid: int) -> float:
    """A process's private resident memory (its clean and dirty pages no other process maps), in
    MiB; 0 where unknown. For a forked worker: what it holds beyond the pages it still shares
    with its parent, which the parent's own figure counts."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f
                       if line.startswith(("Private_Clean", "Private_Dirty"))) / 1024
    except (OSError, ValueError):
        return 0.0


def workers_mb(sut) -> float:
    """The private memory of the worker processes an fbprop machine (or the system holding it as
    `machine`) forked for its training split (0 for other systems, or none forked), to add to the
    process's own peak."""
    machine = getattr(sut, "machine", sut)
    return sum(private_mb(w.pid) for w in (getattr(machine, "__dict__", {}).get("_workers") or ()))


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def start_working_memory() -> float | None:
    """Reset this process's peak resident memory to its present one and return that, in MiB
    (None where Linux's /proc/self/clear_refs is missing). `working_memory_mb(start)` is then
    the memory a workload itself needed at its peak: its model, buffers, temporaries and the
    library's caches, without the interpreter, the libraries' code or the data slice."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                             # 5: reset VmHWM to VmRSS
    except OSError:
        return None
    rss = _status_kb("VmRSS")
    return None if rss is None else rss / 1024


def working_memory_mb(start: float | None) -> float | None:
    """The peak resident memory since `start_working_memory`, above what the process held then."""
    peak = _status_kb("VmHWM") if start is not None else None
    return None if peak is None else peak / 1024 - start


def blas_report() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("internal_api", "prefix", "version", "architecture", "num_threads", "threading_layer")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


@dataclass
class Result:
    system: str
    workload: str
    samples_per_s: float
    steps: int
    seconds: float
    maxrss_mb: float
    extra: dict
    working_mb: float | None = None

    def emit(self) -> None:
        print("RESULT " + json.dumps(asdict(self)), flush=True)


def fail(who: str, message: str) -> None:
    print(f"{who}: {message}", file=sys.stderr)
    raise SystemExit(2)
