"""Machine: a net, an energy and a loss over one ParamPool — the thing a Trainer trains."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from fbprop.blas import apart_enter, apart_exit, apart_threads, run_apart
from fbprop.distributed import SingleProcess
from fbprop.losses import Loss, Regularizer, infer
from fbprop.module import Cascade, Module
from fbprop.network import Network, leaves, short_name
from fbprop.params import ParamPool
from fbprop.state import State, is_batch_last
from fbprop.workers import PartWorker, WorkerError, can_fork, part_states


class Machine:
    """An energy-based learning machine: a network computing energies E(W, Y, X), trained through a loss.

    Two ways to give the network:

    - `Machine(net, energy, loss, pool)`: the net G maps X to G(X) and the energy module reads it —
      classification: `energy` maps G(X) (n, d) to one energy per answer (n, k) (RBF, NegatedScores),
      the loss reads them with integer labels, inference is argmin over answers;
      regression: `energy` is Euclidean(G(X), Y) (n,), the loss is the energy loss.
    - `Machine(network, None, loss, pool)`: any module (a `Network`) whose one output is the
      energies. With one input it reads X, and the loss reads the desired answers Y with the
      energies (per answer (n, k), or one per sample or pair, e.g. the contrastive loss); with two
      inputs it reads X and Y — the answer enters the network wherever the machine needs it — and
      the loss reads the energies alone (the energy loss).

    `fprop(x, y)`, `bprop()` and `bbprop()` are one forward and two backward sweeps through network
    and loss (the caller sets `losses.dx`, ∂objective/∂L_i, and clears `pool.dx` first).
    `gradient` leaves in `pool.dx` the batch mean of ∂L_i/∂W plus (λ/P) ∂H/∂W, P = `n_train`:
    the quantity every optimizer in `fbprop.optim` steps along (see the lecture's formulas there).
    """

    def __init__(self, net: Module, energy: Module | None, loss: Loss, pool: ParamPool,
                 regularizer: Regularizer | None = None, spec: dict | None = None) -> None:
        self.net, self.energy, self.loss, self.pool = net, energy, loss, pool
        self.regularizer = regularizer
        self.spec = spec or {}
        self.n_train = 1
        self.reducer = SingleProcess()                           # fbprop.distributed.data_parallel replaces it
        self.regression = energy is not None and energy.n_inputs == 2
        self.inp = State(requires_dx=False)
        self._converted = {"x": State(), "y": State()}          # the boundary's buffers (see `_own_dtype`)
        self.out, self.target, self.energies, self.labels, self.losses = (State() for _ in range(5))
        self.target.requires_dx = False
        if energy is None:
            if not isinstance(net, Module):
                raise TypeError(f"Machine: expected a Module as the network, got {type(net).__name__}")
            if net.n_inputs not in (1, 2) or net.n_outputs != 1:
                raise ValueError(f"Machine: expected a network reading X (or X and Y) and writing the energies, "
                                 f"got {short_name(net)} with {net.n_inputs} inputs and {net.n_outputs} outputs")
            self.network = net
        else:
            reads = "out, y" if self.regression else "out"
            self.network = Network(inputs="x, y" if self.regression else "x", outputs="energies",
                                   modules=[(net, "x -> out"), (energy, f"{reads} -> energies")])
            self.out = self.network.state("out")
        self.y_enters = self.network.n_inputs == 2
        self.inputs = [self.inp, self.target] if self.y_enters else [self.inp]
        self._view, self._view_energies = State(), State()
        self.test_mirror = self.spec.get("test_mirror", False)
        self.test_shift = self.spec.get("test_shift", 0)

    @property
    def test_mirror(self) -> bool:
        """Inference on the image and its mirror (see `inference`); kept in the spec, so `fb.save`
        and checkpoints carry it."""
        return bool(self.spec.get("test_mirror", False))

    @test_mirror.setter
    def test_mirror(self, on: bool) -> None:
        if not isinstance(on, (bool, np.bool_)):
            raise TypeError(f"Machine: test_mirror is True or False, got {on!r}")
        self._set_view("test_mirror", bool(on))

    @property
    def test_shift(self) -> int:
        """Inference also on the image moved by this many pixels each way (see `inference`); 0: off."""
        return int(self.spec.get("test_shift", 0))

    @test_shift.setter
    def test_shift(self, pixels: int) -> None:
        if isinstance(pixels, (bool, np.bool_)) or not isinstance(pixels, (int, np.integer)) or pixels < 0:
            raise ValueError(f"Machine: test_shift is a number of pixels >= 0, got {pixels!r}")
        self._set_view("test_shift", int(pixels))

    def _set_view(self, key: str, value: bool | int) -> None:
        """Record an inference view option in the spec (left out while off and never set)."""
        if value and (self.regression or self.y_enters):
            raise ValueError(f"Machine: {key} averages the energies of each answer over views of an image; "
                             f"it needs a classifier, not a regression or a machine reading Y")
        if value or key in self.spec:
            self.spec[key] = value

    # forward ------------------------------------------------------------------------------
    def fprop(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        """Energies of the batch x (and, given the desired answers y, the losses).

        Floating inputs of another precision than the pool's are converted here, once, rather than
        promoted through every module (float64 input to a float32 net: 2-3x slower steps), into a
        buffer kept for the next batch of the same shape.
        """
        self.inp.x = x if type(x) is np.ndarray and x.dtype is self.pool.dtype else self._own_dtype(x, "x")
        if self.y_enters:
            if y is None:
                if not self.regression:
                    raise ValueError("Machine: the answer Y is an input of this machine's network; fprop needs "
                                     "y (minimize_energy finds the Y of least energy), got y=None")
                self.net.fprop(self.inp, self.out)               # no target: G(X) is the answer
                return
            self.target.x = y = self._own_dtype(y, "y")
        if self._inferring and self.split_inference and not self.y_enters:
            self._fprop_apart()
        else:
            self.network.fprop(*self.inputs, self.energies)
        if y is not None:
            self.labels.x = y
            self.loss.fprop(self.energies, None if self.y_enters else self.labels, self.losses)

    def inference(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        """fprop for inference (predict, energies_of, evaluation). With `test_mirror` or `test_shift`
        set, each answer's energy is its mean energy over views of the image, E'(W, y, X) =
        mean_T E(W, y, T X): the image and its left-right mirror (test_mirror), each of them also
        moved by `test_shift` pixels up, down, left and right (edges repeated, as the training
        distortions do); the losses are those of E'."""
        with self._forward_only():
            self._inference(x, y)

    _switched: list[Module] | None = None                       # the modules _forward_only switches
    # made when first needed; class defaults rather than `self.__dict__` lookups, which in Python
    # 3.11 turn the instance's attributes into a dict of their own and slow every later access
    _splits_net: bool | None = None
    _splits_step: tuple | None = None
    _twin_nets = _part_outs = _train_twins = _twins_of = _workers = _workers_of = None
    _inferring = False                                           # inside inference (no bprop follows)
    split_inference = True         # inference split by samples over numpy's library's threads (see _fprop_apart)
    split_min = 64                 # samples a part at least

    @contextmanager
    def _forward_only(self) -> Iterator[None]:
        """Tell the modules that have a `forward_only` switch (Conv2d, the squashings) that no bprop follows."""
        modules = self._switched
        if modules is None:
            modules = self._switched = [m for m in leaves(self.network) if hasattr(m, "forward_only")]
        for m in modules:
            m.forward_only = True
        self._inferring = True
        try:
            yield
        finally:
            self._inferring = False
            for m in modules:
                m.forward_only = False
                end = getattr(m, "end_forward_only", None)
                if end is not None:
                    end()

    def _fprop_apart(self) -> None:
        """The network's fprop for inference, split by samples: with numpy's library on T ≥ 2
        threads and at least `split_min` samples a part, T parts of the batch run at once, the
        first through `network` on this thread, each other through a twin of it (`Module.share`:
        the same parameter handles, its own states and scratch) on a worker thread, numpy's library
        on one thread each (`blas.run_apart`); the parts' energies are copied into `energies`.
        Each part's energies are those of a one-thread pass over it (see `blas.run_apart`).

        Only where a module gains from it (`split_by_samples`: Conv2d, whose forward-only products
        run on one thread) and every module is `samplewise`, and not for a machine reading Y.
        Measured on 2 threads, split on and off in one process (`bench/split_inference.py`):
        LeNet-5 at batch 1,024 27.2 against 42.6 ms, lenet-wide 0.33 against 0.59 s; an MLP loses
        (forced: 4.0 against 3.4 ms, as OpenBLAS's own threads share one packed copy of W; on AMD
        EPYC Zen 4, its parts' products folding their biases, 3.9 against 3.3 ms), so it is not
        split. After a split the network's own states hold the first part. The twins are
        made at the first split: a module setting changed later (not its weights, which are
        shared) does not reach them; a copy of the machine makes them again."""
        x = self.inp.x
        cut = self._cut(x, self.split_min)
        if cut is None or not self._splits():
            self.network.fprop(*self.inputs, self.energies)
            return
        parts = len(cut) - 1
        nets = [self.network, *self._twins(parts - 1)]
        outs = self._part_energies(parts)

        def part(i: int):
            return lambda: nets[i].fprop(State(x[cut[i]:cut[i + 1]], requires_dx=False), outs[i])

        try:
            run_apart([part(i) for i in range(parts)])
        except Exception:
            self.network.fprop(*self.inputs, self.energies)      # the error again, naming the whole batch
            raise
        _gather(self.energies, [out.x for out in outs], cut)

    def _cut(self, x, least: int) -> list[int] | None:
        """Where the batch x is cut into parts to run at once (`blas.run_apart`): one part per
        thread of numpy's library, at least `least` samples each; None for fewer than two."""
        n = len(x) if getattr(x, "ndim", 0) else 0
        if n < 2 * least:
            return None                                          # (before asking the library: the batch-1 path)
        parts = min(apart_threads(), n // least)
        return [n * i // parts for i in range(parts + 1)] if parts >= 2 else None

    def _splits(self) -> bool:
        """Whether inference splits batches: every module samplewise and one that gains from it."""
        known = self._splits_net
        if known is None:
            modules = list(leaves(self.network))
            known = self._splits_net = all(getattr(m, "samplewise", True) for m in modules) and \
                any(getattr(m, "split_by_samples", False) for m in modules)
        return known

    def _twins(self, k: int) -> list[Module]:
        """k twins of the network for `_fprop_apart`, made once (and switched with the network's
        modules by `_forward_only`)."""
        twins = self._twin_nets
        if twins is None:
            twins = self._twin_nets = []
        while len(twins) < k:
            twin = self.network.share()
            switched = [m for m in leaves(twin) if hasattr(m, "forward_only")]
            for m in switched:
                m.forward_only = True
            if self._switched is not None:
                self._switched.extend(switched)
            twins.append(twin)
        return twins[:k]

    def _part_energies(self, k: int) -> list[State]:
        outs = self._part_outs
        if outs is None:
            outs = self._part_outs = []
        outs.extend(State() for _ in range(k - len(outs)))
        return outs[:k]

    def __getstate__(self) -> dict:
        # a copy or a pickle leaves the twins behind (made again when needed)
        state = dict(vars(self))
        for name in ("_twin_nets", "_part_outs", "_switched", "_splits_net", "_train_twins", "_splits_step",
                     "_twins_of", "_workers", "_workers_of"):
            state.pop(name, None)
        return state

    def _inference(self, x: np.ndarray, y: np.ndarray | None) -> None:
        views = self._views()
        if len(views) == 1:
            self.fprop(x, y)
            return
        if np.ndim(x) != 4:
            raise ValueError(f"Machine: test_mirror and test_shift need image batches (n, c, h, w), got input "
                             f"of shape {np.shape(x)}")
        view = self._view.resize(*x.shape, dtype=self.pool.dtype).x
        total = None
        for mirror, dy, dx in views:
            _moved(view, x[..., ::-1] if mirror else x, dy, dx)
            self.fprop(view, None)
            if total is None:
                total = self._view_energies.set(self.energies.x).x
            else:
                total += self.energies.x
        np.multiply(total, 1 / len(views), out=self.energies.x)
        if y is not None:
            self.labels.x = y
            self.loss.fprop(self.energies, self.labels, self.losses)

    def _views(self) -> list[tuple[bool, int, int]]:
        """(mirrored?, rows down, columns right) of each view inference averages over."""
        s = self.test_shift
        moves = [(0, 0), (s, 0), (-s, 0), (0, s), (0, -s)] if s else [(0, 0)]
        return [(m, dy, dx) for m in ((False, True) if self.test_mirror else (False,)) for dy, dx in moves]

    def _own_dtype(self, a, slot: str):
        """`a` itself, or for a floating array of another dtype than the pool's, its values
        rounded to the pool's dtype in the buffer `slot` (what astype computes, without a new array)."""
        if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.dtype != self.pool.dtype:
            converted = self._converted[slot].resize(*a.shape, dtype=self.pool.dtype).x
            np.copyto(converted, a, casting="same_kind")
            return converted
        return a

    def answers(self) -> np.ndarray | None:
        """argmin_y E(W, y, X) for the batch of the last fprop: over the k answers for energies
        (n, k), the loss's own inference for one energy per sample (a pair's same/different), None
        where Y is continuous."""
        e = self.energies.x
        if self.y_enters:
            return None
        if e.ndim == 2:
            return infer(e)
        answers = getattr(self.loss, "answers", None)
        return answers(e) if answers is not None else None

    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """argmin_y E(W, y, X) for each sample (classification, pairs) or G(X) (regression)."""
        if self.y_enters and not self.regression:
            raise ValueError("Machine: Y is a continuous input of this machine's network; use "
                             "fbprop.minimize_energy(machine, x, y0) to find the Y of least energy")
        parts = []
        for i in range(0, len(x), batch_size):
            self.inference(x[i:i + batch_size], None)
            parts.append(self.out.x.copy() if self.regression else self.answers())
        if parts and parts[0] is None:
            raise ValueError(f"Machine: {self.loss!r} gives no discrete answers to predict")
        if len(parts) == 1 and (self.regression or self.energies.x.ndim == 2):
            return parts[0]                                      # (made here, the copy or argmin's: not copied again)
        return np.concatenate(parts) if parts else np.zeros(0, np.intp)

    @contextmanager
    def noise(self, rng: np.random.Generator) -> Iterator[None]:
        """Training mode for the span of the block: each stochastic module (Dropout: `stochastic`
        True) draws its noise from a generator seeded from `rng` (one draw; per process under MPI,
        so ranks do not repeat each other's masks). Outside any such block they are deterministic
        (inference), so predict and evaluation need no switch. Nothing is drawn from `rng` for a
        machine without stochastic modules."""
        noisy = [m for m in leaves(self.network) if getattr(m, "stochastic", False)]
        if not noisy:
            yield
            return
        child = np.random.default_rng([int(rng.integers(2**63)), self.reducer.rank])
        for m in noisy:
            m.rng = child
        try:
            yield
        finally:
            for m in noisy:
                m.rng = None

    # backward -----------------------------------------------------------------------------
    def _sweep(self, method: str, slot: str) -> None:
        """One backward sweep (method "bprop" or "bbprop") from the losses down to the inputs."""
        if slot == "dx":
            self.energies.clear_dx()
        else:
            self.energies.clear_ddx()
            self.losses.clear_ddx()                              # the objective is linear in each L_i
        getattr(self.loss, method)(self.energies, None if self.y_enters else self.labels, self.losses)
        getattr(self.network, method)(*self.inputs, self.energies)

    def bprop(self) -> None:
        """Add ∂objective/∂W into pool.dx (and ∂/∂X, ∂/∂Y into the inputs that require it), from losses.dx."""
        self._sweep("bprop", "dx")

    def bbprop(self) -> None:
        """Add the Gauss-Newton diagonal into pool.ddx; runs after the bprop of the same sweep."""
        self._sweep("bbprop", "ddx")

    def accumulate(self, x: np.ndarray, y: np.ndarray, weight: float) -> float:
        """fprop and bprop one batch, adding weight · Σ_i ∂L_i/∂W into pool.dx; returns Σ_i L_i."""
        self.fprop(x, y)
        self.losses.dx.fill(weight)                              # ∂objective/∂L_i
        self.bprop()
        loss = self.losses.x
        return float(loss[0]) if len(loss) == 1 else float(np.add.reduce(loss))   # (a reduction: 2-4 µs)

    def _accumulate_part(self, x: np.ndarray, y: np.ndarray, weight: float,
                         batch_size: int | None = None, split: bool = True) -> tuple[float, int]:
        """`accumulate` over this process's part of (x, y), in batches of `batch_size` (one batch
        when None), each split between threads where `_accumulate_apart` does; returns (Σ_i L_i of
        that part, its number of samples)."""
        if self.reducer.size > 1:
            part = self.reducer.part(len(x))
            x, y = x[part], y[part]
        if not batch_size or batch_size >= len(x):
            return (self._accumulate_batch(x, y, weight, split) if len(x) else 0.0), len(x)   # the usual step
        total = sum((self._accumulate_batch(x[i:i + batch_size], y[i:i + batch_size], weight, split)
                     for i in range(0, len(x), batch_size)), 0.0)
        return total, len(x)

    def _accumulate_batch(self, x: np.ndarray, y: np.ndarray, weight: float, split: bool) -> float:
        if split and self.split_training and len(x) >= 2 * min(self.split_min, self.split_min_processes) and \
                not self.y_enters and self._splits_steps():         # (a net that never splits asks no more)
            total = self._accumulate_apart(x, y, weight)
            if total is not None:
                return total
        return self.accumulate(x, y, weight)                     # (too few to split, tested first: the on-line step)

    split_training = True          # gradient steps split by samples over numpy's library's threads (see below)

    def _accumulate_apart(self, x: np.ndarray, y: np.ndarray, weight: float) -> float | None:
        """`accumulate` split by samples, or None where it does not split (the caller then runs it
        whole). With numpy's library on T ≥ 2 threads and at least `split_min` samples a part, T
        parts of the batch run fprop and bprop at once, each in a twin machine on its own thread
        with numpy's library on one thread (`blas.run_apart`; the first on this thread). A twin
        reads this machine's weights (its pool's `x` is this pool's) and adds its part's gradient
        into a `dx` of its own; the parts' gradients are then added into `pool.dx`, and the
        energies, losses and the net's output of the whole batch are copied into this machine's
        states (what `answers` and the trainer's meter read). The sum is that of the parts'
        one-thread gradients, in order: not the bits of the whole batch's on T threads.

        Where inference splits (see `_splits`), for a machine with no stochastic module (Dropout:
        its noise is drawn by this machine's modules) and a loss of one term per sample.
        Measured with 2 threads, split on and off in one process (`bench/split_training.py`, SGD
        steps): LeNet-5 at batch 128 9.2 against 10.0 ms and 11.2 against 11.4, at 256 17.4
        against 19.9 and 22.3 against 26.0; at batch 64 (parts of 32) it loses, 5.6 against 5.3
        ms (a step's few hundred small calls, each holding the GIL, then weigh more than the
        products), hence `split_min` 64; an MLP loses at any batch (forced: 2.3 against 1.4 ms at
        128; on AMD EPYC Zen 4 1.38 in processes and 1.61 in threads against 1.16), so it is not
        split. `curvature` (SDLM's bbprop) is not split.

        With `split_processes` (the default), on Linux without MPI, the parts after the first run
        in forked worker processes instead, from `split_min_processes` samples a part (see
        `_accumulate_in_processes`). The caller runs it from 2 · min(split_min, split_min_processes)
        samples, for a machine whose steps split (`_splits_steps`) and whose network does not read Y."""
        processes = self.split_processes and isinstance(y, np.ndarray) and self.reducer.size == 1 and can_fork()
        cut = self._cut(x, self.split_min_processes if processes else self.split_min)
        if cut is None:
            return None
        x = self._own_dtype(x, "x")
        workers = self._part_workers(x, y, cut) if processes else None
        if workers:
            return self._accumulate_in_processes(x, y, weight, cut, workers)
        if processes:                                            # (no fork: threads, with their own least part)
            cut = self._cut(x, self.split_min)
            if cut is None:
                return None
        parts = len(cut) - 1
        twins = self._training_twins(parts)
        totals = [0.0] * parts

        def part(i: int):
            def run() -> None:
                twin, a, b = twins[i], cut[i], cut[i + 1]
                twin.pool.clear_dx()
                totals[i] = twin.accumulate(x[a:b], y[a:b], weight)
            return run

        try:
            run_apart([part(i) for i in range(parts)])
        except Exception:
            self.fprop(x, y)                                     # the error again, naming the whole batch
            raise
        dx = self.pool.dx
        for twin in twins:
            dx += twin.pool.dx
        self.inp.x, self.labels.x = x, y
        for name in part_states(self):
            _gather(getattr(self, name), [getattr(twin, name).x for twin in twins], cut)
        return sum(totals, 0.0)

    split_processes = True         # the training split's other parts in forked worker processes (see below)
    split_min_processes = 16       # samples a part at least there

    def _accumulate_in_processes(self, x: np.ndarray, y: np.ndarray, weight: float, cut: list[int],
                                 workers: list[PartWorker]) -> float:
        """The split of `_accumulate_apart` with the parts after the first in forked worker
        processes (`fbprop.workers`), each a copy of this machine with its own interpreter, and
        the first in the thread split's first twin here. The parts' gradients are added into
        `pool.dx` in the thread split's order and each is a one-thread pass over its part, so the
        sum is the thread split's, bit for bit. Measured with 2 threads (`bench/split_training.py`,
        SGD steps, one process, median of 7): LeNet-5 at batch 32 4.03 against 4.96 ms for the
        whole batch on BLAS's two threads, at 128 12.75 against 18.98 (the thread split: 15.49).
        Where it applies: where the thread split does, on Linux without MPI (`workers.can_fork`),
        with `split_processes` set, from `split_min_processes` samples a part."""
        twin = self._training_twins(1)[0]
        names = part_states(self)
        try:
            for k, worker in enumerate(workers, 1):
                worker.send(x[cut[k]:cut[k + 1]], y[cut[k]:cut[k + 1]], weight, self.pool.x)
            apart_enter()
            try:
                twin.pool.clear_dx()
                first = twin.accumulate(x[:cut[1]], y[:cut[1]], weight)
            finally:
                apart_exit()
            like = [getattr(twin, name).x for name in names]
            replies = [worker.receive(like) for worker in workers]
        except WorkerError:
            self._stop_workers()
            raise
        except BaseException as e:                               # (the workers' answers unread: they go)
            self._stop_workers(kill=True)
            if isinstance(e, Exception):
                self.fprop(x, y)                                 # the error again, naming the whole batch
            raise
        failed = next((r for r in replies if isinstance(r, str)), None)
        if failed is not None:
            self.fprop(x, y)
            raise RuntimeError(f"Machine: a part of the batch failed in a worker process: {failed}")
        dx = self.pool.dx
        dx += twin.pool.dx
        for worker in workers:
            dx += worker.dx
        self.inp.x, self.labels.x = x, y
        for i, name in enumerate(names):
            _gather(getattr(self, name), [like[i]] + [arrays[i] for _, arrays in replies], cut)
        return sum((total for total, _ in replies), first)

    def _part_workers(self, x, y, cut: list[int]) -> list[PartWorker] | None:
        """The worker processes for the parts after the first, forked at the first split step and
        again when the machine's network, energy, loss or weights vector is replaced, or a batch
        brings larger parts or other shapes or dtypes. None where a fork fails: the machine then
        warns once and splits between threads (`split_processes` set to False)."""
        need = max(b - a for a, b in zip(cut[1:], cut[2:]))
        made_of = (self.network, self.energy, self.loss, self.pool.x)
        workers = self._workers
        if workers and (len(workers) != len(cut) - 2 or not all(w.fits(need, x, y) for w in workers)
                        or any(a is not b for a, b in zip(self._workers_of, made_of, strict=True))):
            need = max(need, workers[0].capacity)
            self._stop_workers()
            workers = None
        if not workers:
            self._workers_of = made_of
            self._training_twins(1)                              # (made before the fork: the worker has it too)
            workers = self._workers = []
            try:
                for _ in range(len(cut) - 2):
                    workers.append(PartWorker(self, need, x, y))
            except OSError as e:                                 # (out of processes or memory)
                self._stop_workers()
                self.split_processes = False
                warnings.warn(f"Machine: could not fork a worker process for the training split ({e}); "
                              f"splitting between threads from now on", RuntimeWarning, stacklevel=6)
                return None
        return workers

    def _stop_workers(self, kill: bool = False) -> None:
        workers, self._workers = self._workers, None
        for worker in workers or ():
            worker.stop(kill=kill)                               # (in a forked copy of the owner: dropped only)

    def _splits_steps(self) -> bool:
        """Whether gradient steps split batches: where inference does, with no stochastic module
        and a loss of one term per sample (decided again for another loss)."""
        known = self._splits_step
        if known is None or known[0] is not self.loss:
            known = self._splits_step = (self.loss, self._splits() and getattr(self.loss, "samplewise", True) and
                                         not any(getattr(m, "stochastic", False) for m in leaves(self.network)))
        return known[1]

    def _training_twins(self, k: int) -> list[Machine]:
        """k twin machines for `_accumulate_apart`: copies of this one whose pool shares this
        pool's `x` (the weights) with a `dx` and `ddx` of their own, on one process. Made once,
        and again when the machine's network, energy, loss or weights vector is replaced; a
        setting changed inside a module or the loss (not a weight) does not reach them: set
        `split_training = False`, or copy the machine, which makes them anew."""
        twins = self._train_twins
        if twins is None:
            twins = self._train_twins = []
        made_of = (self.network, self.energy, self.loss, self.pool.x)
        if twins and any(a is not b for a, b in zip(self._twins_of or made_of, made_of, strict=True)):
            twins.clear()
        self._twins_of = made_of
        while len(twins) < k:
            twin = copy.deepcopy(self, {id(self.pool.x): self.pool.x, id(self.reducer): SingleProcess()})
            twin.split_training = twin.split_inference = False
            twins.append(twin)
        return twins[:k]

    def _summed_dx(self, total: float) -> float:
        """pool.dx ← Σ over processes; NaN on every process when any process's total is not finite."""
        dx = self.pool.dx
        if not math.isfinite(total):
            dx[0] = np.nan                                       # NaN + anything = NaN: every process sees it
        self.reducer.sum(dx)
        return total if math.isfinite(dx[0]) else math.nan

    def gradient(self, x: np.ndarray, y: np.ndarray) -> float:
        """pool.dx ← (1/B) Σ_B ∂L_i/∂W + (λ/P) ∂H/∂W; returns the mean loss of the samples this process took.

        NaN when any process's loss is not finite.
        """
        self.pool.clear_dx()
        total, count = self._accumulate_part(x, y, 1.0 / len(x))
        total = self._summed_dx(total)
        if self.regularizer is not None:
            self.regularizer.bprop(self.pool, 1.0 / self.n_train)
        return total / max(count, 1)

    def curvature(self, x: np.ndarray, y: np.ndarray) -> float:
        """pool.ddx ← Gauss-Newton diagonal of the same objective as `gradient`; dx is left as the local part's."""
        self.pool.clear_dx()
        self.pool.clear_ddx()
        total, count = self._accumulate_part(x, y, 1.0 / len(x), split=False)   # the fprop bbprop reads
        if count:
            self.bbprop()
        self.reducer.sum(self.pool.ddx)
        if self.regularizer is not None:
            self.regularizer.bbprop(self.pool, 1.0 / self.n_train)
        return total / max(count, 1)

    def full_gradient(self, x: np.ndarray, y: np.ndarray, batch_size: int = 1024) -> float:
        """The lecture's batch gradient: pool.dx ← (1/P)[Σ_i ∂L_i/∂W + λ ∂H/∂W] over all of x.

        Returns the objective (1/P)[Σ_i L_i + λ H(W)], whose gradient this is.
        """
        p = len(x)
        self.pool.clear_dx()
        total = np.array([self._accumulate_part(x, y, 1.0 / p, batch_size)[0]])
        self.reducer.sum(self.pool.dx)
        value = float(self.reducer.sum(total)[0])
        if self.regularizer is not None:
            self.regularizer.bprop(self.pool, 1.0 / p)
            value += self.regularizer.fprop(self.pool)
        return value / p

    def first_nonfinite(self, x: np.ndarray, y: np.ndarray | None = None) -> str | None:
        """Run x forward module by module and name the first module whose output is not finite."""
        if not np.isfinite(x).all():
            return "the input batch"
        if self.y_enters and y is None:
            return _first_nonfinite(self.net, [State(x)])[0] if self.regression else None
        inputs = [State(x)] + ([State(y)] if self.y_enters else [])
        return _first_nonfinite(self.network, inputs)[0]

    def __repr__(self) -> str:
        head = f"net={self.net!r},\n        energy={self.energy!r}" if self.energy is not None \
            else f"network={self.network!r}"
        return (f"Machine({head}, loss={self.loss!r}, "
                f"regularizer={self.regularizer!r}, parameters={self.pool.size})")

    # energies and probabilities of the answers --------------------------------------------
    def energies_of(self, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 1024) -> np.ndarray:
        """The energies E(W, ·, X) of every sample of x, in batches: (n, k), one per answer, for a
        classifier; (n,) for a regression machine, whose energy needs the answers y.

        A list, or an array of another dtype than the pool's (integers, float64), is converted to
        it, a batch at a time.
        """
        if self.regression and y is None:
            raise ValueError("Machine.energies_of: a regression machine has one energy per (X, Y) pair: give y, "
                             "or use predict(x) for G(X), its answer of least energy")
        x = np.asarray(x) if isinstance(x, (list, tuple)) else x
        if isinstance(x, np.ndarray) and x.dtype.kind != "f":          # floats: fprop's boundary, per batch
            x = x.astype(self.pool.dtype)
        parts = []
        for i in range(0, len(x), batch_size):
            self.inference(x[i:i + batch_size], None if y is None else y[i:i + batch_size])
            parts.append(self.energies.x.copy())
        if not parts:                                            # k from the energy or the spec, as known
            k = getattr(self.energy, "k", None) or self.spec.get("n_classes", 0)
            return np.zeros((0,) if self.regression else (0, k), self.pool.dtype)
        return np.concatenate(parts)

    @property
    def beta(self) -> float:
        """The inverse temperature of `proba`: the NLL loss's β, or 1 for any other loss."""
        return float(getattr(self.loss, "beta", 1.0))

    def proba(self, x: np.ndarray, beta: float | None = None, batch_size: int = 1024) -> np.ndarray:
        """The Gibbs distribution over answers, p(y | X) = exp(−β E(W, y, X)) / Σ_y' exp(−β E(W, y', X)).

        (n, k), each row summing to 1; argmax p = argmin E, the machine's answer. For a machine
        trained with the NLL loss this is the distribution the loss fits (−log p(Y | X) = β·L), at
        that loss's β. Other losses (hinge, perceptron, square-square, …) shape only which energy is
        lowest and by what margin: p still ranks the answers as inference does, but its sharpness
        is set by `beta` (default 1), a choice to calibrate on held-out data, not a trained quantity.
        """
        beta = self.beta if beta is None else float(beta)
        if not beta > 0:
            raise ValueError(f"Machine.proba: expected beta > 0, got {beta}")
        e = self.energies_of(x, batch_size=batch_size)
        if e.ndim != 2:
            raise ValueError(f"Machine.proba: expected one energy per answer, (n, k), got energies of shape {e.shape}")
        p = e - e.min(axis=1, keepdims=True)                     # shift: exp never overflows
        p *= -beta
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)                        # softmax(−βE)
        return p


def _gather(into: State, parts: list[np.ndarray], cut: list[int]) -> None:
    """`into` ← the parts of a batch cut at `cut`, one after the other, in the first's layout."""
    first = parts[0]
    whole = into.resize(cut[-1], *first.shape[1:], dtype=first.dtype, batch_last=is_batch_last(first)).x
    for i, part in enumerate(parts):
        whole[cut[i]:cut[i + 1]] = part


def _first_nonfinite(module: Module, inputs: list[State]) -> tuple[str | None, list[State]]:
    """(the first module, inside containers too, whose output is not finite, or None; the outputs)."""
    if isinstance(module, Cascade):
        states = inputs
        for m in module.modules:
            culprit, states = _first_nonfinite(m, states)
            if culprit is not None:
                return culprit, states
        return None, states
    if isinstance(module, Network):
        values = dict(zip(module.input_names, inputs))
        for node in module.nodes:
            culprit, outs = _first_nonfinite(node.module, [values[n] for n in node.reads])
            if culprit is not None:
                return culprit, outs
            values.update(zip(node.writes, outs))
        return None, [values[n] for n in module.output_names]
    outs = [State() for _ in range(module.n_outputs)]
    module.fprop(*inputs, *outs)
    bad = any(o.x.dtype.kind == "f" and not np.isfinite(o.x).all() for o in outs)
    return (repr(module) if bad else None), outs


def _moved(dst: np.ndarray, src: np.ndarray, dy: int, dx: int) -> None:
    """dst = src moved dy rows down and dx columns right (negative: up, left), the edge rows and
    columns repeated into the space left behind."""
    h, w = src.shape[-2:]
    dy, dx = max(-h + 1, min(h - 1, dy)), max(-w + 1, min(w - 1, dx))
    rows = (slice(dy, None), slice(None, h - dy)) if dy >= 0 else (slice(None, h + dy), slice(-dy, None))
    cols = (slice(dx, None), slice(None, w - dx)) if dx >= 0 else (slice(None, w + dx), slice(-dx, None))
    np.copyto(dst[..., rows[0], cols[0]], src[..., rows[1], cols[1]], casting="same_kind")
    if dy > 0:
        dst[..., :dy, :] = dst[..., dy:dy + 1, :]
    elif dy < 0:
        dst[..., h + dy:, :] = dst[..., h + dy - 1:h + dy, :]
    if dx > 0:
        dst[..., :, :dx] = dst[..., :, dx:dx + 1]
    elif dx < 0:
        dst[..., :, w + dx:] = dst[..., :, w + dx - 1:w + dx]
