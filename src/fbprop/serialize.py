"""Save and load any machine or module built from fbprop's parts: a JSON description and flat vectors.

`save(obj, path)` writes one .npz, `load(path)` reads it back with allow_pickle=False, so loading
a file cannot run code: it only builds classes from the registry below, with the saved arguments.

    format        "fbprop-saved-1"
    description   JSON: what to build (below)
    params        the pool's flat parameter vector x
    arrays/<i>    numpy arrays met among constructor arguments (RBF codes, connection tables)

The description protocol. A module (or a loss, or a regularizer) is described as

    {"class": "Linear", "id": 3, "args": {"n_in": 784, "n_out": 300}, "pool": true, "params": {"w": 0}}

- "class": its name in the registry (`registered()`): every Module, Loss and Regularizer class
  defined in fbprop is there; `register(cls)` adds a class of your own (before save and load).
- "args": its constructor arguments by name. They come from `obj.init_args()` when the class
  defines it, else from the attribute with the name of each `__init__` parameter — the
  convention every fbprop module follows (`Linear(n_in, n_out, pool)` keeps `self.n_in`,
  `self.n_out`); a `*modules` parameter is read the same way, as a list. `pool` is not an
  argument: the constructor gets a pool when the object owns parameters ("pool": true).
- Values: JSON numbers, strings, booleans, null and lists; every JSON object is a tag —
  {"tuple": [...]}, {"dict": {...}}, {"array": "arrays/3"}, {"dtype": "float32"}, and for a
  module {"module": {...its description...}} or {"ref": 3} when module 3 was described already
  (a module used in two places stays one module).
- "params": for each attribute that holds a parameter handle, the handle's index in the pool's
  table (offset and shape of every handle, saved with the pool): two modules sharing a weight
  name the same index and share it again after loading.

Loading builds each object from its class and arguments (children first, with a throwaway pool),
then points its parameter attributes at the handles of the rebuilt pool, whose layout and values
are exactly the saved ones. So a module must keep its handles as attributes and derive nothing
from their values in its constructor.

Containers need nothing more: their children and wiring are constructor arguments, and modules
may appear anywhere in the arguments (inside lists, tuples, dicts). `Cascade(*modules)` keeps
`self.modules`, so it is described by the default. A container whose constructor arguments are
not kept under their own names adds one method that returns them — for a network of named
states built as `Network(inputs="x", outputs="out", modules=[(Linear(…), "x -> hidden"), …])`:

    def init_args(self) -> dict:
        return {"inputs": list(self.input_names), "outputs": list(self.output_names),
                "modules": [(n.module, f"{', '.join(n.reads)} -> {', '.join(n.writes)}") for n in self.nodes]}

An object that cannot be described (a class outside the registry, a constructor argument that is
not an attribute of that name, an argument of a kind not listed above) stops `save` with one
TypeError naming it, before anything is written.

The command line could read such a file beside its checkpoints by dispatching on the "format"
entry: `fbprop eval` / `predict` would call `load(path)` when it is "fbprop-saved-1" and use the
machine's `spec` (input shape, normalisation) as it does a checkpoint's architecture.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fbprop.files import atomic_write
from fbprop.losses import Regularizer
from fbprop.machine import Machine
from fbprop.module import Module
from fbprop.params import Param, ParamPool
from fbprop.state import State

FORMAT = "fbprop-saved-1"

_REGISTERED: dict[str, type] = {}


class SaveFileError(ValueError):
    """A file that cannot be read as a saved fbprop machine or module."""


def register(cls: type, name: str | None = None) -> type:
    """Let `save` and `load` describe and build instances of your own Module class (a decorator too)."""
    if not isinstance(cls, type) or not issubclass(cls, (Module, Regularizer)):
        raise TypeError(f"register: expected a Module or Regularizer subclass, got {cls!r}")
    name = name or cls.__name__
    known = registered().get(name)
    if known is not None and known is not cls:
        raise ValueError(f"register: the name {name!r} is taken by {known.__module__}.{known.__qualname__}; "
                         f"pass another name=")
    _REGISTERED[name] = cls
    return cls


def registered() -> dict[str, type]:
    """Every class `load` may build, by name: fbprop's own modules, losses, regularizers, and yours."""
    import fbprop  # noqa: F401  (imports every module family, so every class is defined)

    found, todo = {}, [Module, Regularizer]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] == "fbprop":
            found.setdefault(cls.__name__, cls)
    return {**found, **_REGISTERED}


def _short(obj: object) -> str:
    """An object's repr on one line (a container's first line)."""
    return repr(obj).splitlines()[0].removesuffix("(")


def _unregistered(obj: object) -> TypeError:
    cls = type(obj)
    return TypeError(f"save: cannot describe {cls.__module__}.{cls.__qualname__} ({_short(obj)}): not an fbprop "
                    f"class; register it with fbprop.serialize.register({cls.__name__})")


def _signature(cls: type) -> list[inspect.Parameter]:
    if cls.__init__ is object.__init__:
        return []
    return list(inspect.signature(cls.__init__).parameters.values())[1:]     # without self


class _Writer:
    """Turns objects into the JSON description, collecting arrays and parameter handles on the way."""

    def __init__(self, pool: ParamPool | None) -> None:
        self.pool = pool
        self.classes = {cls: name for name, cls in registered().items()}
        self.arrays: dict[str, np.ndarray] = {}
        self.ids: dict[int, int] = {}
        self.keep: list[object] = []                             # ids stay unique while we describe

    def handle(self, who: object, attr: str, p: Param) -> int:
        if self.pool is None:
            self.pool = p.pool
        if p.pool is not self.pool:
            raise TypeError(f"save: {_short(who)}.{attr} is a parameter of another ParamPool than the rest")
        for i, (h, _, _) in enumerate(self.pool.handles):
            if h is p:
                return i
        raise TypeError(f"save: {_short(who)}.{attr} is not in its pool's handle table")

    def describe(self, obj: Module | Regularizer) -> dict:
        if id(obj) in self.ids:
            return {"ref": self.ids[id(obj)]}
        name = self.classes.get(type(obj))
        if name is None:
            raise _unregistered(obj)
        self.ids[id(obj)] = n = len(self.ids)
        self.keep.append(obj)
        args = obj.init_args() if hasattr(obj, "init_args") else self._default_args(obj)
        params = {k: self.handle(obj, k, v) for k, v in vars(obj).items() if isinstance(v, Param)}
        takes_pool = any(p.name == "pool" for p in _signature(type(obj)))
        return {"class": name, "id": n, "args": {k: self.value(obj, k, v) for k, v in args.items()},
                "pool": bool(params) and takes_pool, "params": params}

    def _default_args(self, obj: object) -> dict:
        args = {}
        for p in _signature(type(obj)):
            if p.name == "pool":
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD or not hasattr(obj, p.name):
                cls = type(obj)
                raise TypeError(f"save: cannot describe {cls.__qualname__} ({_short(obj)}): its constructor argument "
                                f"{p.name!r} is not an attribute of that name; give the class an init_args() method")
            args[p.name] = getattr(obj, p.name)
        return args

    def value(self, who: object, name: str, v: Any) -> Any:
        if isinstance(v, (Module, Regularizer)):
            d = self.describe(v)
            return d if "ref" in d else {"module": d}
        if isinstance(v, (State, ParamPool)):
            raise TypeError(f"save: cannot describe {_short(who)}: argument {name!r} is a {type(v).__name__}")
        if isinstance(v, np.ndarray):
            key = f"arrays/{len(self.arrays)}"
            self.arrays[key] = v
            return {"array": key}
        if isinstance(v, np.dtype):
            return {"dtype": v.str}
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, tuple):
            return {"tuple": [self.value(who, name, x) for x in v]}
        if isinstance(v, list):
            return [self.value(who, name, x) for x in v]
        if isinstance(v, dict) and all(isinstance(k, str) for k in v):
            return {"dict": {k: self.value(who, name, x) for k, x in v.items()}}
        raise TypeError(f"save: cannot describe {_short(who)}: argument {name!r} is a {type(v).__name__}, "
                        f"expected numbers, strings, lists, tuples, dicts, arrays or modules")


class _Reader:
    """Builds objects from their description, in the rebuilt pool."""

    def __init__(self, pool: ParamPool, arrays: dict[str, np.ndarray], where: str) -> None:
        self.pool, self.arrays, self.where = pool, arrays, where
        self.classes = registered()
        self.built: dict[int, object] = {}

    def fail(self, message: str) -> SaveFileError:
        return SaveFileError(f"{self.where}: {message}")

    def build(self, d: dict) -> object:
        if "ref" in d:
            if d["ref"] not in self.built:
                raise self.fail(f"a reference to module {d['ref']}, which is not described before it")
            return self.built[d["ref"]]
        cls = self.classes.get(d.get("class"))
        if cls is None:
            raise self.fail(f"unknown class {d.get('class')!r}: expected one of fbprop's, or one registered "
                            f"with fbprop.serialize.register before loading")
        args = {k: self.value(v) for k, v in d["args"].items()}
        scratch = ParamPool(self.pool.dtype) if d["pool"] else None
        positional, keywords, by_keyword = [], {}, False
        for p in _signature(cls):
            if p.name == "pool":
                v = scratch
            elif p.name in args:
                v = args.pop(p.name)
            else:
                by_keyword = True                                # a default: name the ones after it
                continue
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                positional.extend(v)
            elif p.kind is inspect.Parameter.KEYWORD_ONLY or by_keyword:
                keywords[p.name] = v
            else:
                positional.append(v)
        obj = cls(*positional, **keywords, **args)
        handles = self.pool.handles
        for attr, i in d["params"].items():
            if not 0 <= i < len(handles):
                raise self.fail(f"{cls.__name__}.{attr} names handle {i}, the pool has {len(handles)}")
            setattr(obj, attr, handles[i][0])
        self.built[d["id"]] = obj
        return obj

    def value(self, v: Any) -> Any:
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if not isinstance(v, dict):
            return v
        if len(v) != 1:
            raise self.fail(f"unexpected value {json.dumps(v)[:80]} in a description")
        tag, inner = next(iter(v.items()))
        if tag == "module":
            return self.build(inner)
        if tag == "ref":
            return self.build(v)
        if tag == "tuple":
            return tuple(self.value(x) for x in inner)
        if tag == "dict":
            return {k: self.value(x) for k, x in inner.items()}
        if tag == "array":
            if inner not in self.arrays:
                raise self.fail(f"missing array {inner!r}")
            return self.arrays[inner]
        if tag == "dtype":
            return np.dtype(inner)
        raise self.fail(f"unexpected value {json.dumps(v)[:80]} in a description")


def _pool_description(pool: ParamPool) -> dict:
    rng = pool.rng.bit_generator.state
    return {"dtype": pool.dtype.str, "handles": [[off, list(shape)] for _, off, shape in pool.handles],
            "rng": rng if rng.get("bit_generator") == "PCG64" else None}


def _rebuild_pool(d: dict, x: np.ndarray, where: str) -> ParamPool:
    dtype = np.dtype(d["dtype"])
    if dtype.kind != "f" or x.dtype != dtype or x.ndim != 1:
        raise SaveFileError(f"{where}: expected a 1-D {dtype} parameter vector, got {x.dtype} {x.shape}")
    offsets = [off for off, _ in d["handles"]]
    shapes = [shape for _, shape in d["handles"]]
    if not all(isinstance(n, int) for shape in shapes for n in shape):
        raise SaveFileError(f"{where}: expected integer handle shapes, got {shapes}")
    if offsets != list(np.cumsum([0] + [math.prod(s) for s in shapes])[:-1]):
        raise SaveFileError(f"{where}: expected handles one after the other, got offsets {offsets}")
    try:
        pool = ParamPool.from_layout(shapes, x, seed=None)
    except ValueError as e:
        raise SaveFileError(f"{where}: {e}") from None
    if d.get("rng"):
        pool.rng.bit_generator.state = d["rng"]
    return pool


def save(obj: Machine | Module, path: str | os.PathLike) -> None:
    """Write a Machine (net, energy, loss, regularizer, spec, pool) or a Module and its pool to `path`.

    The file is complete or absent: it is written under a temporary name and renamed.
    """
    if isinstance(obj, Machine):
        writer = _Writer(obj.pool)
        parts = {k: writer.value(obj, k, getattr(obj, k)) for k in ("net", "energy", "loss", "regularizer")}
        try:
            spec = json.loads(json.dumps(obj.spec))
        except (TypeError, ValueError) as e:
            raise TypeError(f"save: the machine's spec is not JSON ({e})") from None
        body = {"kind": "machine", **parts, "spec": spec, "n_train": int(obj.n_train)}
    elif isinstance(obj, Module):
        writer = _Writer(None)
        body = {"kind": "module", "module": writer.value(obj, "module", obj)}
    else:
        raise TypeError(f"save: expected a Machine or a Module, got {type(obj).__name__}")
    pool = writer.pool if writer.pool is not None else ParamPool()
    try:
        description = json.dumps({**body, "pool": _pool_description(pool)}, allow_nan=False)   # strict JSON
    except ValueError as e:
        raise TypeError(f"save: a constructor argument or the spec holds a non-finite number ({e})") from None
    arrays = {"format": np.array(FORMAT), "description": np.array(description),
              "params": pool.x, **writer.arrays}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path: str | os.PathLike) -> Machine | Module:
    """Read back what `save` wrote: a Machine or a Module whose parameters live in a new pool."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file" if not path.exists() else f"{where}: not a file")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FORMAT:
                found = str(z["format"]) if "format" in z.files else "none"
                raise SaveFileError(f"{where}: not a file written by fbprop.save (format {found}, "
                                    f"expected {FORMAT})")
            description = json.loads(str(z["description"]))
            x = z["params"]
            arrays = {k: z[k] for k in z.files if k.startswith("arrays/")}
    except SaveFileError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, RecursionError) as e:
        raise SaveFileError(f"{where}: corrupt or unreadable ({type(e).__name__}: {e})") from None
    try:
        pool = _rebuild_pool(description["pool"], x, where)
        reader = _Reader(pool, arrays, where)
        if description["kind"] == "module":
            return reader.value(description["module"])
        parts = {k: reader.value(description[k]) for k in ("net", "energy", "loss", "regularizer")}
        machine = Machine(parts["net"], parts["energy"], parts["loss"], pool, parts["regularizer"],
                          spec=description["spec"])
        machine.n_train = int(description["n_train"])
        return machine
    except SaveFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError) as e:
        raise SaveFileError(f"{where}: a description fbprop cannot build ({type(e).__name__}: {e})") from None
