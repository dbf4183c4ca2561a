"""Network: modules wired through named states, any directed acyclic graph; `unfold` for loops in time."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from fbprop.module import Module
from fbprop.state import State, clear_dx

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\[\]]*$")


def _names(spec: str | Sequence[str], who: str, what: str) -> tuple[str, ...]:
    """State names from "a, b" or ["a", "b"]; each must read as a name."""
    parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p).strip() for p in spec]
    for p in parts:
        if not _NAME.match(p):
            raise ValueError(f"{who}: expected {what} as state names like 'x' or 'x1, x2', got {spec!r}")
    return tuple(parts)


def short_name(module: Module) -> str:
    """A module's name on one line (a container's first line)."""
    if isinstance(module, Network):
        return f"Network({', '.join(module.input_names)} -> {', '.join(module.output_names)})"
    return repr(module).splitlines()[0].removesuffix("(")


@dataclass(eq=False)
class Node:
    """One module and the states it reads and writes: `Linear(64 -> 30): x -> hidden`."""

    module: Module
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    args: tuple[int, ...] = ()                                   # slots of reads + writes, set by the network

    def __str__(self) -> str:
        return f"{short_name(self.module)}: {', '.join(self.reads)} -> {', '.join(self.writes)}"


def leaves(module: Module) -> Iterator[Module]:
    """The modules inside `module` (itself when it is not a container), depth first."""
    inner = getattr(module, "modules", None)
    if isinstance(inner, list) and inner and all(isinstance(m, Module) for m in inner):
        for m in inner:
            yield from leaves(m)
    else:
        yield module


class Network(Module):
    """Modules wired through named states, in any directed acyclic graph; itself a Module.

    Declared as the lecture's nn-2layer reads — the states, and which module goes from which to
    which::

        net = Network(inputs="x", outputs="out", modules=[
            (Linear(64, 30, pool), "x -> hidden"),
            (Tanh(30, pool),       "hidden -> out"),
        ])
        net.fprop(x, out)                       # inputs in declared order, then outputs

    A module may read several states and write several (`"z1, z2 -> d"`, `"pair -> x1, x2"`); a
    state may feed several modules (their bprops add into its dx). The order is computed once,
    fprop runs it forward, bprop and bbprop backward. The network owns its intermediate states
    and clears their dx / ddx before each sweep. Weight sharing: put `module.share()` (same
    parameter handles, own scratch) where the weights appear again — one instance twice is refused.

    Every wiring mistake is found here, with one line naming the module and the state: a cycle
    (and the modules on it), a state written twice, a state read that nothing writes, an input
    that nothing reads, an output that is also read inside (use Copy). A state written and never
    read is allowed (a split's unused part, an unfolded net's last hidden state): its dx is 0.
    A shape error at fprop names the node it came from.
    """

    def __init__(self, inputs: str | Sequence[str], outputs: str | Sequence[str],
                 modules: Sequence[tuple[Module, str]]) -> None:
        self.input_names = _names(inputs, "Network", "inputs")
        self.output_names = _names(outputs, "Network", "outputs")
        nodes = [self._node(entry) for entry in modules]
        if not nodes:
            raise ValueError("Network: expected at least one (module, 'inputs -> outputs') entry, got none")
        self.n_inputs, self.n_outputs = len(self.input_names), len(self.output_names)
        self._check_wiring(nodes)
        self.nodes = self._order(nodes)
        self.modules = [n.module for n in self.nodes]
        boundary = (*self.input_names, *self.output_names)
        inner = [s for n in self.nodes for s in n.writes if s not in boundary]
        self.slot_names = [*boundary, *inner]
        slot = {name: i for i, name in enumerate(self.slot_names)}
        for n in self.nodes:
            n.args = tuple(slot[s] for s in (*n.reads, *n.writes))
        self.states = {name: State() for name in inner}
        self._inner = list(self.states.values())
        self._upstream = self._upstream_of(inner)

    def init_args(self) -> dict:
        """The constructor's arguments, for fbprop.serialize: the states and the wired modules."""
        return {"inputs": list(self.input_names), "outputs": list(self.output_names),
                "modules": [(n.module, f"{', '.join(n.reads)} -> {', '.join(n.writes)}") for n in self.nodes]}

    # building ---------------------------------------------------------------------------------
    @staticmethod
    def _node(entry: tuple[Module, str]) -> Node:
        if not (isinstance(entry, tuple) and len(entry) == 2):
            raise TypeError(f"Network: expected entries (module, 'inputs -> outputs'), got {entry!r}")
        module, wiring = entry
        if not isinstance(module, Module):
            raise TypeError(f"Network: expected a Module in ({module!r}, {wiring!r}), got {type(module).__name__}")
        if not isinstance(wiring, str) or wiring.count("->") != 1:
            raise ValueError(f"Network: {module!r}: expected wiring 'inputs -> outputs', got {wiring!r}")
        left, right = wiring.split("->")
        who = f"Network: {module!r}"
        reads, writes = _names(left, who, "inputs"), _names(right, who, "outputs")
        if len(reads) != module.n_inputs or len(writes) != module.n_outputs:
            raise ValueError(f"{who} reads {module.n_inputs} state(s) and writes {module.n_outputs}, "
                             f"got wiring {wiring!r}")
        return Node(module, reads, writes)

    def _check_wiring(self, nodes: list[Node]) -> None:
        where: dict[int, Node] = {}
        for n in nodes:
            for leaf in leaves(n.module):
                if id(leaf) in where and where[id(leaf)] is not n:  # inside one node, its container's business
                    raise ValueError(f"Network: {leaf!r} is used twice ({where[id(leaf)]} and {n}); a module keeps "
                                     f"scratch between fprop and bprop, so the second place needs its own twin "
                                     f"with the same weights: module.share()")
                where[id(leaf)] = n
        ins, outs = self.input_names, self.output_names
        for names, what in ((ins, "inputs"), (outs, "outputs"), ((*ins, *outs), "inputs and outputs")):
            twice = sorted({s for s in names if names.count(s) > 1})
            if twice:
                raise ValueError(f"Network: state {twice[0]!r} is listed twice in the {what}")
        writer: dict[str, Node] = {}
        for n in nodes:
            for s in n.writes:
                if s in ins:
                    raise ValueError(f"Network: {short_name(n.module)} writes {s!r}, which is an input of the network")
                if s in writer:
                    raise ValueError(f"Network: state {s!r} is written by {writer[s]} and by {n}; "
                                     f"a state has one writer (add the two with Sum)")
                writer[s] = n
        readers = {s for n in nodes for s in n.reads}
        for n in nodes:
            for s in n.reads:
                if s not in writer and s not in ins:
                    raise ValueError(f"Network: {short_name(n.module)} reads state {s!r}, which no module writes and "
                                     f"which is not an input (inputs: {', '.join(ins)})")
                if s in outs:
                    raise ValueError(f"Network: {short_name(n.module)} reads {s!r}, an output of the network; give "
                                     f"the output its own state with Copy ('{s} -> {s}_out')")
        for s in ins:
            if s not in readers:
                raise ValueError(f"Network: input {s!r} is read by no module")
        for s in outs:
            if s not in writer:
                raise ValueError(f"Network: output {s!r} is written by no module")

    def _order(self, nodes: list[Node]) -> list[Node]:
        """Modules in an order where each one's inputs are computed before it (declared order kept)."""
        ready, order, todo = set(self.input_names), [], list(nodes)
        while todo:
            runnable = [n for n in todo if all(s in ready for s in n.reads)]
            if not runnable:
                raise ValueError(f"Network: the modules {self._cycle(todo)} form a cycle; a loop must be "
                                 f"unfolded in time (fbprop.unfold)")
            for n in runnable:
                ready.update(n.writes)
                order.append(n)
            todo = [n for n in todo if n not in runnable]
        return order

    @staticmethod
    def _cycle(stuck: list[Node]) -> str:
        """One cycle among nodes none of which can run: follow a missing input back until a node repeats."""
        writer = {s: n for n in stuck for s in n.writes}
        path, n = [], stuck[0]
        while n not in path:
            path.append(n)
            n = next(writer[s] for s in n.reads if s in writer)
        loop = path[path.index(n):]
        return " and ".join(f"[{m}]" for m in loop)

    def _upstream_of(self, inner: list[str]) -> list[tuple[bool, tuple[int, ...]]]:
        """For each intermediate state: whether a module before it has parameters, and which inputs reach it."""
        params: dict[str, bool] = {s: False for s in self.input_names}
        reach: dict[str, set[int]] = {s: {i} for i, s in enumerate(self.input_names)}
        for n in self.nodes:
            p = bool(n.module.params()) or any(params[s] for s in n.reads)
            r = set().union(*(reach[s] for s in n.reads))
            for s in n.writes:
                params[s], reach[s] = p, r
        return [(params[s], tuple(sorted(reach[s]))) for s in inner]

    # the three sweeps -------------------------------------------------------------------------
    def _slots(self, states: tuple[State, ...]) -> list[State]:
        if len(states) != self.n_inputs + self.n_outputs:
            raise TypeError(f"{short_name(self)}: expected {self.n_inputs} input and {self.n_outputs} output states "
                            f"({', '.join(self.input_names)} -> {', '.join(self.output_names)}), got {len(states)}")
        return [*states, *self._inner]

    _wired: tuple | None = None                                  # (states, each node's arguments)

    def _arguments(self, states: tuple[State, ...]) -> list[list[State]]:
        """Each node's states, in the order of `nodes` (kept while the same states come in: a State
        compares by identity)."""
        wired = self._wired
        if wired is None or wired[0] != states:
            slots = self._slots(states)
            wired = self._wired = (states, [[slots[i] for i in n.args] for n in self.nodes])
        return wired[1]

    def fprop(self, *states: State) -> None:
        for n, args in zip(self.nodes, self._arguments(states), strict=True):
            try:
                n.module.fprop(*args)
            except (ValueError, TypeError) as error:
                if str(error).startswith("Network node"):
                    raise
                shapes = ", ".join(f"{s} {a.x.shape}" for s, a in zip(n.reads, args))
                kind = TypeError if isinstance(error, TypeError) else ValueError
                raise kind(f"Network node [{n}] reading {shapes}: {error}") from None

    _marked: tuple[bool, ...] | None = None                     # the inputs' requires_dx at the last _mark

    def _mark(self, slots: tuple[State, ...]) -> None:
        """An intermediate state needs dx only if parameters, or an input that needs dx, lie before
        it (set again only when the inputs' needs change: the network owns those states)."""
        need = tuple([slots[i].requires_dx for i in range(self.n_inputs)])
        if need == self._marked:
            return
        for s, (params, inputs) in zip(self._inner, self._upstream, strict=True):
            s.requires_dx = params or any(need[i] for i in inputs)
        self._marked = need

    _sweeping: tuple | None = None                               # (states, (module, arguments) reversed)

    def _sweep(self, states: tuple[State, ...], ddx: bool) -> None:
        """One backward sweep; the nodes with their arguments are kept while the same states come
        in and the inputs' needs for dx are the ones `_mark` last saw."""
        kept = self._sweeping
        fresh = kept is None or kept[0] != states
        if not fresh:
            for s, need in zip(states, self._marked):            # (the inputs' needs: a loop, no call)
                if s.requires_dx is not need:
                    fresh = True
                    break
        if fresh:
            arguments = self._arguments(states)
            self._mark(states)
            kept = self._sweeping = (states, [(n.module, args) for n, args in zip(self.nodes, arguments,
                                                                                  strict=True)][::-1])
        if ddx:
            for s in self._inner:
                s.clear_ddx()
            for m, args in kept[1]:
                m.bbprop(*args)
        else:
            clear_dx(self._inner)
            for m, args in kept[1]:
                m.bprop(*args)

    def bprop(self, *states: State) -> None:
        self._sweep(states, False)

    def bbprop(self, *states: State) -> None:
        self._sweep(states, True)

    # inspection -------------------------------------------------------------------------------
    def state(self, name: str) -> State:
        """An intermediate state by name (its value after the last fprop)."""
        if name not in self.states:
            raise KeyError(f"{short_name(self)}: no intermediate state {name!r} (have: {', '.join(self.states)})")
        return self.states[name]

    def trace(self, *states: State) -> Iterator[tuple[Node, list[State]]]:
        """fprop one module at a time, yielding each node with the states it just wrote."""
        slots = self._slots(states)
        for n in self.nodes:
            n.module.fprop(*[slots[i] for i in n.args])
            yield n, [slots[i] for i in n.args[len(n.reads):]]

    def picture(self) -> str:
        """The states and the modules between them, one module a line, in the order fprop runs them."""
        lines = [f"inputs: {', '.join(self.input_names)}"]
        width = max(len(", ".join(n.reads)) for n in self.nodes)
        for n in self.nodes:
            lines.append(f"  {', '.join(n.reads):>{width}} ─▶ [{short_name(n.module)}] ─▶ {', '.join(n.writes)}")
        lines.append(f"outputs: {', '.join(self.output_names)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        body = "\n".join("  " + line for line in self.picture().splitlines()[1:-1])
        return f"Network({', '.join(self.input_names)} -> {', '.join(self.output_names)}:\n{body}\n)"


def unfold(cell: Callable[[int], Module] | Module, steps: int, state_in: str = "h", inputs: str = "x",
           outputs: str = "y") -> Network:
    """A recurrent cell unfolded over `steps` time steps: one Network, every copy sharing the cell's weights.

    The cell is a module reading (x_t, h_{t−1}) and writing (y_t, h_t); the unfolded network reads
    x_0 … x_{T−1} and h_init and writes y_0 … y_{T−1} (states named `{inputs}{t}`, `{outputs}{t}`,
    `{state_in}{t}`). Step 0 runs the cell itself and step t a `cell.share()` twin, so back-propagation
    through time is the network's ordinary bprop: the twins' gradients add into one set of weights.
    The last hidden state is an output too (`{state_in}{T}`).
    """
    if not isinstance(cell, Module):
        raise TypeError(f"unfold: expected a Module as the cell, got {type(cell).__name__}")
    if cell.n_inputs != 2 or cell.n_outputs != 2:
        raise ValueError(f"unfold: expected a cell reading (x_t, h_t-1) and writing (y_t, h_t), got {cell!r} with "
                         f"{cell.n_inputs} inputs and {cell.n_outputs} outputs")
    if int(steps) != steps or steps < 1:
        raise ValueError(f"unfold: expected steps >= 1, got {steps}")
    h, x, y = state_in, inputs, outputs
    wired = [(cell if t == 0 else cell.share(), f"{x}{t}, {h}{t} -> {y}{t}, {h}{t + 1}") for t in range(steps)]
    return Network(inputs=[*(f"{x}{t}" for t in range(steps)), f"{h}0"],
                   outputs=[*(f"{y}{t}" for t in range(steps)), f"{h}{steps}"], modules=wired)

