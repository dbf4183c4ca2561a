"""Take a trained machine elsewhere: an ONNX graph of its energies, its weights as PyTorch names them.

Both formats read one list of layers (`layers(machine)`): the machine's chain of modules, with each
Linear or Conv2d fused with the bias of the squashing module after it — y = f(W x + b), the form
PyTorch and ONNX write a layer in — and the energy module last. Layer i is module i of the
equivalent `torch.nn.Sequential`, so its tensors are named `"{i}.weight"`, `"{i}.bias"`:

    fbprop                                      PyTorch equivalent (layer i of the Sequential)
    Linear(n_in → n_out) + Squash with bias     nn.Linear(n_in, n_out)  (then the activation)
    Conv2d(n_in → n_out, k, stride, padding)    nn.Conv2d(n_in, n_out, k, stride, padding); a
      (+ squash bias per map)                     connection table (LeNet-5's C3) is a weight of 0
                                                  where a map does not feed another
    Subsampling(c maps, s)                      nn.Conv2d(c, c, s, stride=s, groups=c): weight a/s²
                                                  on each window, bias b
    MaxPool(s, stride) / Pad(p) / Flatten()     nn.MaxPool2d(s, stride) / nn.ZeroPad2d(p) / nn.Flatten()
    Reshape(*shape)                             x.reshape(n, *shape), no parameters
    Tanh / Logistic / ReLU (no bias)            nn.Tanh() / nn.Sigmoid() / nn.ReLU()
    ScaledTanh                                  1.7159 tanh(2x/3), no parameters
    a squash's bias on its own                  a module with one parameter "bias"
    NegatedScores                               E = −s, no parameters
    RBF(codes t)                                E_k = ½‖x − t_k‖², the codes as "codes"

`torch_module(machine)` builds that Sequential with the weights loaded, `torch_sequential(layer_list)`
builds it from the layer list a .safetensors file carries (PyTorch is imported only there). Exported weights
and graphs are float32; the ONNX input is "x" of shape (n, *input_shape) and the output
"energies" (n, k) — or "output", G(X), for a regression machine — and, given the run's
normalisation, the graph first maps raw pixels x to (x / pixel_scale − mean) / std.

onnx, onnxruntime and safetensors come with the `export` extra: `pip install 'fbprop[export]'`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from fbprop.files import atomic_write
from fbprop.machine import Machine
from fbprop.module import Cascade, Module
from fbprop.modules.conv import Conv2d, MaxPool, Subsampling
from fbprop.modules.distance import RBF, Euclidean, NegatedScores
from fbprop.modules.linear import Linear
from fbprop.modules.norm import GroupNorm
from fbprop.modules.shape import Flatten, Pad, Reshape
from fbprop.modules.squash import Bias, Logistic, ReLU, ScaledTanh, Squash, Tanh

ACTIVATIONS = {Tanh: "tanh", ScaledTanh: "scaled_tanh", Logistic: "sigmoid", ReLU: "relu", Bias: None}


@dataclass
class Layer:
    """One layer of the exported chain: its kind, settings and tensors (named as in PyTorch)."""

    kind: str
    source: str
    attrs: dict = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def _chain(m: Module) -> list[Module]:
    # only a Cascade is a chain: any other container (a network of named states) is refused by name
    return [leaf for c in m.modules for leaf in _chain(c)] if isinstance(m, Cascade) else [m]


def _unexportable(m: Module) -> TypeError:
    return TypeError(f"export: no ONNX or PyTorch form for {m!r} ({type(m).__name__}); the chain may hold "
                     f"Linear, Conv2d, Subsampling, MaxPool, Pad, Flatten, Reshape, Tanh, ScaledTanh, Logistic, "
                     f"ReLU, Bias, and end in NegatedScores, RBF or Euclidean")


def _squash(m: Squash, bias: bool) -> list[Layer]:
    if type(m) not in ACTIVATIONS:
        raise _unexportable(m)
    out = []
    if bias and m.b is not None:
        out.append(Layer("bias", repr(m), {"shape": list(m.b.x.shape)}, {"bias": m.b.x.copy()}))
    if ACTIVATIONS[type(m)] is not None:
        out.append(Layer(ACTIVATIONS[type(m)], repr(m)))
    return out


def _fused_bias(m: Linear | Conv2d, nxt: Module | None) -> np.ndarray | None:
    """The bias of the squashing module after m when it is one number per output (unit or map)."""
    if not isinstance(nxt, Squash) or type(nxt) not in ACTIVATIONS or nxt.b is None:
        return None
    want = (m.n_out,) if isinstance(m, Linear) else (m.n_out, 1, 1)
    return nxt.b.x.reshape(-1).copy() if nxt.b.x.shape == want else None


def layers(machine: Machine) -> list[Layer]:
    """The machine as a chain of PyTorch/ONNX-style layers, the energy last (none for a regression)."""
    if machine.energy is None:
        raise TypeError(f"export: the machine's {type(machine.net).__name__} computes the energies itself; export "
                        f"takes a machine made of a chain of modules (Cascade) and an energy module")
    modules = _chain(machine.net)
    if not isinstance(machine.energy, Euclidean):
        modules.append(machine.energy)
    out: list[Layer] = []
    i = 0
    while i < len(modules):
        m, nxt = modules[i], modules[i + 1] if i + 1 < len(modules) else None
        i += 1
        if isinstance(m, (Linear, Conv2d)) and type(m) in (Linear, Conv2d):
            bias = _fused_bias(m, nxt)
            if isinstance(m, Linear):
                layer = Layer("linear", repr(m), {"n_in": m.n_in, "n_out": m.n_out}, {"weight": m.w.x.copy()})
            else:
                w = m.w.x * m.table.T[:, :, None, None] if m.table is not None else m.w.x.copy()  # 0: not connected
                layer = Layer("conv", repr(m), {"n_in": m.n_in, "n_out": m.n_out, "kernel": m.kernel,
                                                "stride": m.stride, "padding": m.padding, "groups": 1},
                              {"weight": w})
            layer.attrs["bias"] = bias is not None
            if bias is not None:
                layer.tensors["bias"] = bias
            out.append(layer)
            if bias is not None:                                 # the squash after it: its activation only
                out.extend(_squash(nxt, bias=False))
                i += 1
        elif type(m) is Subsampling:
            s, c = m.size, m.n_maps
            weight = np.broadcast_to(m.a.x.reshape(c, 1, 1, 1) / s**2, (c, 1, s, s)).copy()   # a/s² on the window
            out.append(Layer("conv", repr(m), {"n_in": c, "n_out": c, "kernel": s, "stride": s, "padding": 0,
                                               "groups": c, "bias": True},
                             {"weight": weight, "bias": m.b.x.reshape(-1).copy()}))
        elif type(m) is MaxPool:
            out.append(Layer("maxpool", repr(m), {"size": m.size, "stride": m.stride}))
        elif type(m) is GroupNorm:
            out.append(Layer("groupnorm", repr(m), {"channels": m.channels, "groups": m.groups, "eps": m.eps},
                             {"weight": m.gamma.x.copy(), "bias": m.beta.x.copy()}))
        elif type(m) is Pad:
            out.append(Layer("pad", repr(m), {"p": m.p}))
        elif type(m) is Flatten:
            out.append(Layer("flatten", repr(m)))
        elif type(m) is Reshape:
            out.append(Layer("reshape", repr(m), {"shape": list(m.shape)}))
        elif isinstance(m, Squash):
            out.extend(_squash(m, bias=True))
        elif type(m) is NegatedScores:
            out.append(Layer("negate", repr(m)))
        elif type(m) is RBF:
            out.append(Layer("rbf", repr(m), {"k": m.k, "d": m.d}, {"codes": m.w.x.copy()}))
        else:
            raise _unexportable(m)
    return out


def state_dict(machine: Machine) -> dict[str, np.ndarray]:
    """The exported tensors by their PyTorch names, "{layer}.{weight|bias|codes}", float32."""
    return {f"{i}.{name}": np.ascontiguousarray(t, dtype=np.float32)
            for i, layer in enumerate(layers(machine)) for name, t in layer.tensors.items()}


def architecture(machine: Machine) -> list[dict]:
    """The layers' kinds and settings, JSON-able: what `torch_sequential` rebuilds a module from."""
    return [{"kind": layer.kind, **layer.attrs} for layer in layers(machine)]


def _need(package: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"export: {package} is not installed; pip install 'fbprop[export]'") from None


def save_safetensors(machine: Machine, path: str | os.PathLike) -> None:
    """The weights as a .safetensors file, named like `torch_module(machine).state_dict()`.

    The file's metadata holds "format": "pt" and "fbprop_layers", the JSON list of layers (kind and
    settings): `torch_sequential(json.loads(metadata["fbprop_layers"]))` rebuilds the Sequential
    from the file alone.
    """
    st = _need("safetensors.numpy")
    tensors = state_dict(machine)
    data = st.save(tensors, metadata={"format": "pt", "fbprop_layers": json.dumps(architecture(machine))})
    atomic_write(path, lambda f: f.write(data))


def torch_module(machine: Machine):
    """The equivalent torch.nn.Sequential, in eval mode, with the machine's weights loaded."""
    torch = _need("torch")
    net = torch_sequential(architecture(machine))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(machine).items()})
    return net.eval()


def torch_sequential(layer_list: list[dict]):
    """A torch.nn.Sequential of the given layers (`architecture(machine)`), weights not loaded."""
    torch = _need("torch")
    nn = torch.nn

    class ScaledTanh(nn.Module):
        def forward(self, x):
            return 1.7159 * torch.tanh(x * (2.0 / 3.0))

    class Negate(nn.Module):
        def forward(self, x):
            return -x

    class Bias(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(shape))

        def forward(self, x):
            return x + self.bias

    class Reshape(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = tuple(shape)

        def forward(self, x):
            return x.reshape(x.shape[0], *self.shape)

    class RBF(nn.Module):
        def __init__(self, k, d):
            super().__init__()
            self.codes = nn.Parameter(torch.zeros(k, d))

        def forward(self, x):                                    # E_k = ½‖x‖² − x·t_k + ½‖t_k‖²
            return 0.5 * (x * x).sum(1, keepdim=True) - x @ self.codes.T + 0.5 * (self.codes**2).sum(1)

    parts = []
    for a in layer_list:
        kind = a["kind"]
        if kind == "linear":
            parts.append(nn.Linear(a["n_in"], a["n_out"], bias=a["bias"]))
        elif kind == "conv":
            parts.append(nn.Conv2d(a["n_in"], a["n_out"], a["kernel"], stride=a["stride"], padding=a["padding"],
                                   groups=a["groups"], bias=a["bias"]))
        elif kind == "maxpool":
            parts.append(nn.MaxPool2d(a["size"], a["stride"]))
        elif kind == "groupnorm":
            parts.append(nn.GroupNorm(a["groups"], a["channels"], eps=a["eps"]))
        elif kind == "pad":
            parts.append(nn.ZeroPad2d(a["p"]))
        elif kind == "flatten":
            parts.append(nn.Flatten())
        elif kind == "reshape":
            parts.append(Reshape(a["shape"]))
        elif kind == "bias":
            parts.append(Bias(a["shape"]))
        elif kind == "rbf":
            parts.append(RBF(a["k"], a["d"]))
        else:
            parts.append({"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "scaled_tanh": ScaledTanh,
                          "negate": Negate}[kind]())
    return nn.Sequential(*parts)


# --- ONNX ------------------------------------------------------------------------------------

class _Graph:
    """Nodes and initializers of an ONNX graph under construction, each value named once."""

    def __init__(self, helper, numpy_helper) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers = [], []

    def const(self, name: str, value: np.ndarray | float | list, dtype=np.float32) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op: str, inputs: list[str], out: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _emit(g: _Graph, i: int, layer: Layer, x: str) -> str:
    """The ONNX nodes of layer i applied to the value x; returns the name of its output."""
    a, t, out = layer.attrs, {k: g.const(f"{i}.{k}", v) for k, v in layer.tensors.items()}, f"layer{i}"
    kind = layer.kind
    if kind == "linear":                                         # y = x Wᵀ + b
        return g.op("Gemm", [x, t["weight"]] + ([t["bias"]] if "bias" in t else []), out, transB=1)
    if kind == "conv":
        k, s, p = a["kernel"], a["stride"], a["padding"]
        return g.op("Conv", [x, t["weight"]] + ([t["bias"]] if "bias" in t else []), out, kernel_shape=[k, k],
                    strides=[s, s], pads=[p, p, p, p], group=a["groups"])
    if kind == "maxpool":
        return g.op("MaxPool", [x], out, kernel_shape=[a["size"]] * 2, strides=[a["stride"]] * 2)
    if kind == "groupnorm":                                      # opset 17 has no GroupNormalization: spelt out
        groups = g.op("Reshape", [x, g.const(f"{i}.groups", [0, a["groups"], -1], np.int64)], f"{out}.groups")
        mean = g.op("ReduceMean", [groups], f"{out}.mean", axes=[2], keepdims=1)
        centred = g.op("Sub", [groups, mean], f"{out}.centred")
        var = g.op("ReduceMean", [g.op("Mul", [centred, centred], f"{out}.sq")], f"{out}.var", axes=[2], keepdims=1)
        std = g.op("Sqrt", [g.op("Add", [var, g.const(f"{i}.eps", a["eps"])], f"{out}.var_eps")], f"{out}.std")
        maps = g.op("Reshape", [g.op("Div", [centred, std], f"{out}.xhat"),
                                g.const(f"{i}.maps", [0, a["channels"], -1], np.int64)], f"{out}.maps")
        axis = g.const(f"{i}.axis", [1], np.int64)                # γ, β (C,) -> (C, 1) against (n, C, rest)
        gamma = g.op("Unsqueeze", [t["weight"], axis], f"{out}.gamma")
        beta = g.op("Unsqueeze", [t["bias"], axis], f"{out}.beta")
        shifted = g.op("Add", [g.op("Mul", [maps, gamma], f"{out}.scaled"), beta], f"{out}.shifted")
        return g.op("Reshape", [shifted, g.op("Shape", [x], f"{out}.shape")], out)
    if kind == "pad":
        p = a["p"]
        return g.op("Pad", [x, g.const(f"{i}.pads", [0, 0, p, p, 0, 0, p, p], np.int64)], out, mode="constant")
    if kind == "flatten":
        return g.op("Flatten", [x], out, axis=1)
    if kind == "reshape":                                        # 0: keep the batch size
        return g.op("Reshape", [x, g.const(f"{i}.shape", [0, *a["shape"]], np.int64)], out)
    if kind == "bias":
        return g.op("Add", [x, t["bias"]], out)
    if kind in ("tanh", "sigmoid", "relu"):
        return g.op({"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}[kind], [x], out)
    if kind == "scaled_tanh":                                    # 1.7159 tanh(2x/3)
        u = g.op("Mul", [x, g.const(f"{i}.S", ScaledTanh.S)], f"{out}.su")
        u = g.op("Tanh", [u], f"{out}.tanh")
        return g.op("Mul", [u, g.const(f"{i}.A", ScaledTanh.A)], out)
    if kind == "negate":                                         # E = −s
        return g.op("Neg", [x], out)
    if kind == "rbf":                                            # E_k = ½‖x‖² − x·t_k + ½‖t_k‖²
        half_tt = g.const(f"{i}.half_code_norms", 0.5 * (layer.tensors["codes"].astype(np.float64) ** 2).sum(1))
        cross = g.op("Gemm", [x, t["codes"], half_tt], f"{out}.cross", alpha=-1.0, transB=1)
        xx = g.op("ReduceSumSquare", [x], f"{out}.xx", axes=[1], keepdims=1)
        half_xx = g.op("Mul", [xx, g.const(f"{i}.half", 0.5)], f"{out}.half_xx")
        return g.op("Add", [cross, half_xx], out)
    raise ValueError(f"export: unknown layer kind {kind!r}")


def to_onnx(machine: Machine, path: str | os.PathLike | None = None, input_shape: tuple[int, ...] | None = None,
            normalisation: dict | None = None, opset: int = 17):
    """The machine as an ONNX model (returned, and written to `path` when given).

    `input_shape` (one sample's) defaults to the machine's spec; `normalisation` ({"mean", "std",
    "pixel_scale"}, as a training run records it) puts x ↦ (x / pixel_scale − mean) / std first.
    """
    onnx = _need("onnx")
    from onnx import TensorProto, helper, numpy_helper

    shape = input_shape if input_shape is not None else machine.spec.get("input_shape")
    if shape is None:
        raise ValueError("export: the machine has no spec['input_shape']; pass input_shape=(…) for one sample")
    shape = tuple(int(s) for s in shape)
    probe = np.zeros((1, *shape), machine.pool.dtype)
    k = machine.predict(probe).shape[1:] if machine.regression else (machine.energies_of(probe).shape[1],)
    g = _Graph(helper, numpy_helper)
    x = "x"
    if normalisation:
        norm = normalisation
        x = g.op("Mul", [x, g.const("norm.inverse_scale", 1.0 / norm.get("pixel_scale", 255.0))], "norm.scaled")
        x = g.op("Sub", [x, g.const("norm.mean", norm["mean"])], "norm.centred")
        x = g.op("Div", [x, g.const("norm.std", norm["std"])], "norm.out")
    for i, layer in enumerate(layers(machine)):
        x = _emit(g, i, layer, x)
    output = "output" if machine.regression else "energies"
    g.op("Identity", [x], output)
    graph = helper.make_graph(
        g.nodes, "fbprop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["n", *k])], g.initializers)
    graph.doc_string = (f"fbprop machine: {repr(machine.net).splitlines()[0]} … {machine.energy!r}; "
                        f"output {output} of shape (n, {', '.join(map(str, k))})"
                        + ("; input raw pixels, normalised in the graph" if normalisation else ""))
    from fbprop import __version__

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fbprop",
                              producer_version=__version__, ir_version=8)
    onnx.checker.check_model(model)
    if path is not None:
        data = model.SerializeToString()
        atomic_write(path, lambda f: f.write(data))
    return model
