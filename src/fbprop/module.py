"""The module contract, stated once, and the containers built on it."""

from __future__ import annotations

import copy
import gc
import operator
from itertools import accumulate

import numpy as np

from fbprop.blas import one_thread_products
from fbprop.params import Param
from fbprop.state import State, clear_dx


class Plan:
    """The decisions a module took in one call, kept for the next calls with the same operands.

    A module's fprop or bprop decides before it computes: it checks its input's shape, resizes its
    output, and chooses a route for each product (`blas.product_call`). For a step at a fixed shape
    these decisions come out the same every time, and at batch 1 they are a large part of the step
    (keeping them took the MLP's on-line step from 0.73–0.75 to 0.84–0.86 of the numpy reference
    on AMD EPYC, `bench/step_overhead.py`). A Plan keeps them with the calls they chose, while the
    operands stay what they were: the array the module reads (a new array every step when it is a
    batch of data) with the same shape, strides and dtype, and up to three more arrays — the
    buffers it writes, the weights it reads — the very same objects (a resize, a dtype change or a
    pool that grows replaces them). The module's one numpy code path stays where it was: the calls
    a plan keeps are the ones that path built. `calls` is the module's own: a tuple of whatever it
    kept.
    """

    __slots__ = ("x", "shape", "strides", "dtype", "a", "b", "c", "calls")

    def __init__(self, x: np.ndarray, a: object, b: object = None, c: object = None, *, calls: tuple) -> None:
        self.x, self.shape, self.strides, self.dtype = x, x.shape, x.strides, x.dtype
        self.a, self.b, self.c, self.calls = a, b, c, calls

    def fits(self, x: np.ndarray, a: object, b: object = None, c: object = None) -> bool:
        if a is not self.a or b is not self.b or c is not self.c:
            return False
        if x is self.x:
            return True
        if x.shape == self.shape and x.strides == self.strides and x.dtype is self.dtype:
            self.x = x
            return True
        return False

    def __reduce__(self) -> tuple:
        # a copy holds no plan: its calls would write the original's buffers (a deep copy gives the
        # twin its own arrays, but the calls' closures are shared); the twin makes its own
        return _no_plan, ()


def _no_plan() -> None:
    return None


def _attribute_values(obj: object) -> list:
    """The values of obj's attributes, without reading `obj.__dict__` where that can be helped.

    CPython 3.11 keeps an instance's attributes inline in the object until something asks for its
    `__dict__`, which moves them into a dict for good; every attribute read after that runs the
    slower way (the 4-3-3-10 net's on-line step: 3.4% more instructions, its modules' attributes
    moved by `params`). The garbage collector's referents of an object are those inline values
    (and its type); an object whose only referents are a dict and its type is asked through
    `vars` (already moved, or one attribute that is a dict)."""
    refs = gc.get_referents(obj)
    if not refs or (len(refs) == 2 and type(refs[0]) is dict and refs[1] is type(obj)):
        return list(vars(obj).values())
    return refs


class Module:
    """A learning-machine component: states in, states out, derivatives back.

    All three methods take the same arguments, inputs first and the output last, as in Lush:
    `module.fprop(inp, out)`, `euclidean.fprop(x, y, energy)`.

    - `fprop` sets the output's `x` from the inputs' `x` (resizing the output as needed).
    - `bprop` ADDS ∂L/∂input (the output's `dx` times the module's Jacobian) into each input's
      `dx`, and ∂L/∂w into each parameter's `dx`.
    - `bbprop` ADDS the Gauss-Newton diagonal (J∘J)ᵀ·ddx into each input's and parameter's
      `ddx`. Modules whose `curvature` is True are costs whose own second derivative is kept
      (convex costs: energies and losses); they also add dx·∂²F/∂x² — for all others that term
      is dropped, which keeps every ddx ≥ 0.

    bbprop runs after a bprop of the same sweep and may read the `dx` it left in the output
    (modules with `curvature` do). An input whose `requires_dx` is False (raw data) may be skipped by bprop and bbprop.
    The caller clears `dx`/`ddx` before a sweep. Accumulating instead of overwriting is what
    makes fan-out and shared weights correct with no extra code.
    """

    curvature: bool = False
    samplewise: bool = True        # each sample's output reads only that sample's input (no batch statistics)
    split_by_samples: bool = False  # inference runs faster with the batch split between threads than with
    #                                 the library's threads inside each product (Machine._fprop_apart)
    n_inputs: int = 1                                            # states read (a network checks the wiring)
    n_outputs: int = 1                                           # states written, after the inputs

    def fprop(self, *states: State) -> None:
        raise NotImplementedError(f"{type(self).__name__}.fprop")

    def bprop(self, *states: State) -> None:
        raise NotImplementedError(f"{type(self).__name__}.bprop")

    def bbprop(self, *states: State) -> None:
        raise NotImplementedError(f"{type(self).__name__}.bbprop")

    def params(self) -> list[State]:
        """The parameter handles this module owns or shares, then those of the modules it contains
        (a container's `modules`), each listed once."""
        seen: dict[int, State] = {}
        for p in [v for v in _attribute_values(self) if isinstance(v, Param)]:
            seen.setdefault(id(p), p)
        for m in getattr(self, "modules", ()):
            for p in m.params():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def share(self) -> Module:
        """A twin of this module holding the same parameter handles (shared weights) and its own scratch.

        A module keeps scratch between its fprop and its bprop (a Linear's products, a Conv2d's
        im2col columns), so one instance must not sit in two places of a network; two twins can,
        and their gradients add into the one set of weights.
        """
        return copy.deepcopy(self, {id(p): p for p in self.params()})

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def expect_shape(who: Module, state: State, shape: tuple[int | None, ...], what: str = "input") -> None:
    """Raise one clear ValueError when `state.x` does not have `shape` (None matches any size)."""
    got = state.x.shape
    if len(got) == len(shape):
        for s, g in zip(shape, got):
            if s is not None and s != g:
                break
        else:
            return                                               # (a loop: any() over a generator costs 1 µs)
    names = ["n" if i == 0 else "*" for i in range(len(shape))]          # the batch, then any size
    want = "(" + ", ".join(nm if s is None else str(s) for nm, s in zip(names, shape, strict=True))
    want += ("," if len(shape) == 1 else "") + ")"
    raise ValueError(f"{who!r}: expected {what} of shape {want}, got {got}")


class Cascade(Module):
    """X_i = F_i(X_{i-1}, W_i) for i = 1..n: modules in a chain, one input and one output each.

    The cascade owns the n-1 intermediate states and reuses them across calls; bprop and bbprop
    clear them before sweeping back, so the contract (add into the caller's states) still holds.
    Each is read by the next module alone (`State.scratch`): during `Machine.inference` a
    squashing computes in its input's buffer, or the Linear before it writes the squashing's
    output itself (`_folded`), so those states' values are not kept there.
    With an input that needs no dx (raw data) the sweep stops at the first module with parameters.

    A cascade nested in a cascade (the lecture's nn-layers in a net) is one longer chain: the
    sweeps run over the chain of the innermost modules and the states between them, opened up
    once at construction, rather than through each level's own calls (the same modules, states
    and order, so the same numbers; only the per-call glue of every level is saved).
    """

    def __init__(self, *modules: Module) -> None:
        if not modules:
            raise ValueError("Cascade: expected at least one module, got none")
        for m in modules:
            if not isinstance(m, Module):
                raise TypeError(f"Cascade: expected Module instances, got {type(m).__name__}")
        self.modules = list(modules)
        self.states = [State() for _ in modules[:-1]]
        for s in self.states:
            s.scratch = True                                     # each is read by the next module alone
        self._links, self._link_states = self._open()
        self._fold_at = _folds(self._links)
        # the state after link i needs its dx only if a link up to i has parameters (or the
        # cascade's own input needs dx): raw data never pays for ∂E/∂x; and the links before the
        # first with parameters then have nothing to compute backwards
        trainable = list(accumulate((bool(m.params()) for m in self._links), operator.or_))
        self._trainable_prefix = trainable[:-1]
        self._first_trainable = trainable.index(True) if any(trainable) else len(trainable)

    def _open(self) -> tuple[list[Module], list[State]]:
        """The chain with nested cascades opened up: its modules (links) and the states between them."""
        links, states = [], []
        for i, m in enumerate(self.modules):
            if i:
                states.append(self.states[i - 1])
            if _plain_cascade(m):
                links += m._links
                states += m._link_states
            else:
                links.append(m)
        return links, states

    _wired: tuple | None = None                                  # (inp, out, each link with its two states)

    def _chain(self, inp: State, out: State) -> list[tuple[Module, State, State]]:
        """Each link with the state it reads and the one it writes (kept while inp and out are the same)."""
        wired = self._wired
        if wired is None or wired[0] is not inp or wired[1] is not out:
            chain = [inp, *self._link_states, out]
            wired = self._wired = (inp, out, [(m, chain[i], chain[i + 1]) for i, m in enumerate(self._links)])
        return wired[2]

    _fold_at: tuple[int, ...] = ()                               # links that fold into the next (see _folded)
    _folding: tuple | None = None                                # (inp, out, the folded chain)

    def fprop(self, inp: State, out: State) -> None:
        fold = self._fold_at
        chain = self._folded(inp, out) if fold and self._links[fold[0] + 1].forward_only else self._chain(inp, out)
        for m, a, b in chain:
            m.fprop(a, b)

    def _folded(self, inp: State, out: State) -> list[tuple[Module, State, State]]:
        """The chain run when no bprop follows (`Machine.inference`, which sets the squashings'
        `forward_only`): each link that can add an offset into its output for free (a Linear's
        product, gemm with β = 1) and the squashing after it, which adds its bias to its input
        first, run as one (`_Fold`): the product writes W x + b straight into the squashing's
        output, which f then maps in place. The state between them is not written (a link
        state's value is not kept through inference, see `State.scratch`): one pass over the
        layer's output less than the product, then the bias add (the 784-300-100-10 MLP's
        inference at batch 1,024, one thread, `bench/ab.py mlp-infer-b1024`: 0.996–0.997 →
        1.013–1.018 of the numpy reference, AMD EPYC Zen 4). With more threads `_Fold` runs the
        two links apart."""
        kept = self._folding
        if kept is None or kept[0] is not inp or kept[1] is not out:
            chain, folded, i = self._chain(inp, out), [], 0
            while i < len(chain):
                m, a, b = chain[i]
                if i in self._fold_at:
                    folded.append((_Fold(m, chain[i + 1][0], b), a, chain[i + 1][2]))
                    i += 2
                else:
                    folded.append((m, a, b))
                    i += 1
            kept = self._folding = (inp, out, folded)
        return kept[2]

    _marked: bool | None = None                                  # the input's requires_dx at the last _mark

    def _mark(self, inp: State) -> None:
        """Each link state needs dx when a link before it has parameters or the input needs dx
        (set again only when the input's need changes: the cascade owns those states)."""
        need = inp.requires_dx
        if need is self._marked:
            return
        for s, trainable in zip(self._link_states, self._trainable_prefix, strict=True):
            s.requires_dx = trainable or need
        self._marked = need

    _sweeping: tuple | None = None                               # (inp, out, states, links): see _sweep

    def _sweep(self, inp: State, out: State, ddx: bool) -> None:
        """One backward sweep, from the last link down to the first whose bprop has anything to
        compute: with an input that needs no dx, the links before the first one with parameters
        are skipped, and so are the states between them (their dx is never cleared, nor allocated).
        Which states to clear and which links to run are kept while the same states come in and
        the input's need for dx is the one `_mark` last saw."""
        kept = self._sweeping
        if kept is None or kept[0] is not inp or kept[1] is not out or self._marked is not inp.requires_dx:
            chain = self._chain(inp, out)
            self._mark(inp)
            first = 0 if inp.requires_dx else self._first_trainable
            kept = self._sweeping = (inp, out, self._link_states[first:], chain[first:][::-1])
        if ddx:
            for s in kept[2]:
                s.clear_ddx()
            for m, a, b in kept[3]:
                m.bbprop(a, b)
        else:
            clear_dx(kept[2])
            for m, a, b in kept[3]:
                m.bprop(a, b)

    def bprop(self, inp: State, out: State) -> None:
        self._sweep(inp, out, False)

    def bbprop(self, inp: State, out: State) -> None:
        self._sweep(inp, out, True)

    def __getitem__(self, i: int) -> Module:
        return self.modules[i]

    def __len__(self) -> int:
        return len(self.modules)

    def __repr__(self) -> str:
        inner = "\n".join("  " + line for m in self.modules for line in repr(m).splitlines())
        return f"Cascade(\n{inner}\n)"


class _Fold:
    """A link that adds an offset into its output (`fprop_plus`) and the squashing after it, whose
    fprop adds its bias first (`input_offset`), run as one during inference (`Cascade._folded`)
    where the product runs on one thread; with more, as two links through the state between them
    (`mid`): the offset copied on this core and then read by the product's other threads never
    made the MLP's inference faster on 2 threads, and at times 9% slower (AMD EPYC Zen 4, `bench/ab.py
    mlp-infer-b1024 --threads 2` with the fold forced: 0.89–0.91 of the reference against 0.98–0.99)."""

    __slots__ = ("producer", "consumer", "mid")

    def __init__(self, producer: Module, consumer: Module, mid: State) -> None:
        self.producer, self.consumer, self.mid = producer, consumer, mid

    def fprop(self, inp: State, out: State) -> None:
        consumer = self.consumer
        if one_thread_products():
            self.producer.fprop_plus(inp, out, consumer.input_offset())
            consumer.fprop_added(out)
        else:
            self.producer.fprop(inp, self.mid)
            consumer.fprop(self.mid, out)


def _folds(links: list[Module]) -> tuple[int, ...]:
    """The links i that `Cascade._folded` runs with link i + 1: i adds an offset for free, i + 1
    has a bias of the shape i adds and a forward-only switch (the sign that no bprop follows)."""
    at = []
    for i in range(len(links) - 1):
        producer, consumer = links[i], links[i + 1]
        offset = getattr(consumer, "input_offset", None)
        offset = offset() if offset is not None and hasattr(consumer, "forward_only") else None
        if offset is not None and hasattr(producer, "fprop_plus") and producer.can_add(offset.shape) \
                and (not at or at[-1] != i - 1):
            at.append(i)
    return tuple(at)


def _plain_cascade(m: Module) -> bool:
    """A Cascade whose sweeps are Cascade's own (a subclass that checks its input in fprop is kept whole)."""
    t = type(m)
    return isinstance(m, Cascade) and (t.fprop, t.bprop, t.bbprop) == (Cascade.fprop, Cascade.bprop, Cascade.bbprop)
