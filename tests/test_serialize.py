"""fb.save / fb.load: a JSON description and flat vectors, for every machine and module built from fbprop's parts."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fbprop as fb
from fbprop import serialize
from fbprop.checkpoint import save_checkpoint
from test_gradients import ALL_CASES, _concrete_modules


def _round_trip(obj, tmp_path):
    path = tmp_path / "saved.npz"
    fb.save(obj, path)
    return fb.load(path)


def _energies(machine: fb.Machine, x: np.ndarray) -> np.ndarray:
    machine.fprop(x, None)
    return machine.energies.x.copy()


def _views_of_own_pool(machine: fb.Machine) -> None:
    handles = [h for h, _, _ in machine.pool.handles]
    for p in machine.net.params() + machine.energy.params():
        assert any(p is h for h in handles)
        assert np.shares_memory(p.x, machine.pool.x) and np.shares_memory(p.dx, machine.pool.dx)


SPECS = [
    {"model": "mlp", "input_shape": [64], "hidden": [20, 15], "squash": "relu"},
    {"model": "mlp", "input_shape": [64], "energy": "rbf", "loss": "hinge", "loss_args": {"margin": 0.5}},
    {"model": "linear", "input_shape": [64], "regularizer": {"kind": "l2", "lam": 0.1}},
    {"model": "lenet5", "input_shape": [1, 28, 28]},
    {"model": "lenet5", "input_shape": [1, 8, 8], "energy": "scores", "dtype": "float64"},
    {"model": "lenet-modern", "input_shape": [1, 8, 8], "regularizer": {"kind": "l1", "lam": 0.01}},
    {"model": "lenet-modern", "input_shape": [1, 8, 8], "norm_groups": 4},
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['model']}-{s.get('energy', '')}")
def test_built_in_machines_round_trip_exactly(spec, tmp_path):
    machine = fb.build_machine({**spec, "n_classes": 10, "seed": 3})
    machine.n_train = 1234
    x = np.random.default_rng(0).random((6, *spec["input_shape"])).astype(machine.pool.dtype)
    loaded = _round_trip(machine, tmp_path)
    assert repr(loaded) == repr(machine)
    assert loaded.spec == machine.spec and loaded.n_train == 1234
    assert loaded.pool.dtype == machine.pool.dtype
    np.testing.assert_array_equal(loaded.pool.x, machine.pool.x)
    assert [(o, s) for _, o, s in loaded.pool.handles] == [(o, s) for _, o, s in machine.pool.handles]
    _views_of_own_pool(loaded)
    np.testing.assert_array_equal(_energies(loaded, x), _energies(machine, x))
    y = np.arange(6) % 10
    assert loaded.gradient(x, y) == machine.gradient(x, y)     # same loss and regularizer
    np.testing.assert_array_equal(loaded.pool.dx, machine.pool.dx)


def test_a_hand_built_machine_keeps_shared_weights_and_modules(tmp_path):
    pool = fb.ParamPool(np.float64, seed=1)
    a, b = fb.Linear(5, 5, pool), fb.Linear(5, 5, pool)
    b.w = a.w                                                  # one weight in two modules
    squash = fb.Tanh(5, pool)
    net = fb.Cascade(fb.Cascade(a, squash), fb.Cascade(b, squash), fb.Linear(5, 3, pool))   # squash used twice
    energy = fb.RBF(fb.random_codes(4, 3, seed=2), pool, trainable=True)
    machine = fb.Machine(net, energy, fb.SquareSquareLoss(margin=0.7), pool, fb.L1(0.2), spec={"note": "hand"})
    loaded = _round_trip(machine, tmp_path)
    inner1, inner2 = loaded.net[0], loaded.net[1]
    assert inner1[0].w is inner2[0].w                          # still shared
    assert inner1[1] is inner2[1]                              # still one module
    assert len(loaded.net.params()) == len(net.params()) == 3     # shared W, b, the last W
    assert loaded.loss.margin == 0.7 and loaded.regularizer.lam == 0.2 and loaded.spec == {"note": "hand"}
    _views_of_own_pool(loaded)
    x = np.random.default_rng(1).standard_normal((7, 5))
    np.testing.assert_array_equal(_energies(loaded, x), _energies(machine, x))
    loaded.pool.x[:] = 0                                       # the copy has its own pool
    assert not inner1[0].w.x.any() and a.w.x.any()


def test_a_regression_machine_round_trips(tmp_path):
    pool = fb.ParamPool(np.float64)
    machine = fb.Machine(fb.nn_2layer(3, 4, 2, pool), fb.Euclidean(), fb.EnergyLoss(), pool)
    loaded = _round_trip(machine, tmp_path)
    assert loaded.regression
    x = np.random.default_rng(2).standard_normal((5, 3))
    np.testing.assert_array_equal(loaded.predict(x), machine.predict(x))


def _as_states(inputs):
    return [None if v is None else v if isinstance(v, fb.State) else fb.State(np.array(v)) for v in inputs]


@pytest.mark.parametrize("factory", [f for _, f in ALL_CASES], ids=[n for n, _ in ALL_CASES])   # every module
def test_every_module_case_round_trips_alone(factory, tmp_path):
    module, inputs = factory(fb.ParamPool(np.float64, seed=5))
    loaded = _round_trip(module, tmp_path)
    assert type(loaded) is type(module) and repr(loaded) == repr(module)
    want, got = ([fb.State() for _ in range(module.n_outputs)] for _ in range(2))   # every output state
    module.fprop(*_as_states(inputs), *want)
    loaded.fprop(*_as_states(inputs), *got)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g.x, w.x)
    for p, q in zip(loaded.params(), module.params()):
        np.testing.assert_array_equal(p.x, q.x)
        assert p.pool is loaded.params()[0].pool is not q.pool


def test_every_fbprop_module_class_is_registered():
    names = serialize.registered()
    for cls in _concrete_modules() | {fb.L1, fb.L2}:
        assert names.get(cls.__name__) is cls, cls


class Doubler(fb.Module):
    """y = 2x, a user's own module (outside fbprop)."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    def fprop(self, inp, out):
        out.resize(*inp.x.shape, dtype=inp.x.dtype)
        np.multiply(inp.x, self.factor, out=out.x)


class Opaque(fb.Module):
    def __init__(self, size: int) -> None:
        self.n = size


def test_a_module_from_outside_fbprop_fails_with_one_line_naming_it(tmp_path):
    pool = fb.ParamPool()
    machine = fb.Machine(fb.Cascade(fb.Linear(3, 2, pool), Doubler()), fb.NegatedScores(), fb.NLLLoss(), pool)
    path = tmp_path / "m.npz"
    path.write_bytes(b"the previous file")
    with pytest.raises(TypeError, match=r"cannot describe test_serialize\.Doubler .*register it") as error:
        fb.save(machine, path)
    assert "\n" not in str(error.value)
    assert path.read_bytes() == b"the previous file"          # nothing written
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]   # no temporary left behind

    class MyNet(fb.Cascade):                                   # a container of one's own: a repr of many lines
        pass

    with pytest.raises(TypeError, match=r"cannot describe test_serialize\..*MyNet \(Cascade\): not an fbprop") as error:
        fb.save(MyNet(fb.Linear(3, 2, pool), fb.Tanh()), path)
    assert "\n" not in str(error.value)


def test_non_finite_arguments_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"save: a constructor argument or the spec holds a non-finite number"):
        fb.save(fb.HingeLoss(margin=float("nan")), tmp_path / "h.npz")
    assert not (tmp_path / "h.npz").exists()


def test_a_registered_module_of_your_own_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(serialize, "_REGISTERED", {})
    serialize.register(Doubler)
    pool = fb.ParamPool()
    net = fb.Cascade(fb.Linear(3, 2, pool), Doubler(3.0))
    loaded = _round_trip(net, tmp_path)
    assert isinstance(loaded[1], Doubler) and loaded[1].factor == 3.0
    x = np.ones((2, 3), np.float32)
    a, b = fb.State(), fb.State()
    net.fprop(fb.State(x), a)
    loaded.fprop(fb.State(x), b)
    np.testing.assert_array_equal(a.x, b.x)
    serialize.register(Opaque)
    with pytest.raises(TypeError, match=r"cannot describe Opaque .*argument 'size' is not an attribute"):
        fb.save(Opaque(3), tmp_path / "o.npz")
    with pytest.raises(ValueError, match=r"the name 'Linear' is taken by fbprop"):
        serialize.register(Doubler, name="Linear")


def test_load_refuses_unknown_classes_and_other_files(tmp_path, monkeypatch):
    monkeypatch.setattr(serialize, "_REGISTERED", {})
    serialize.register(Doubler)
    fb.save(Doubler(), tmp_path / "d.npz")
    monkeypatch.setattr(serialize, "_REGISTERED", {})
    with pytest.raises(serialize.SaveFileError, match=r"d\.npz: unknown class 'Doubler'"):
        fb.load(tmp_path / "d.npz")
    machine = fb.build_machine({"model": "linear", "input_shape": [4], "n_classes": 3})
    save_checkpoint(tmp_path / "c.npz", machine.spec, machine.pool.x)
    with pytest.raises(serialize.SaveFileError, match=r"not a file written by fbprop.save \(format fbprop-checkpoint"):
        fb.load(tmp_path / "c.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(serialize.SaveFileError, match=r"junk\.npz: corrupt or unreadable"):
        fb.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match=r"nope\.npz: no such file"):
        fb.load(tmp_path / "nope.npz")


def test_the_file_is_json_and_plain_arrays_without_pickle(tmp_path):
    machine = fb.build_machine({"model": "lenet5", "input_shape": [1, 28, 28], "n_classes": 10})
    fb.save(machine, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        description = json.loads(str(z["description"]))
        assert z["params"].shape == (machine.pool.size,)
        tables = [z[k] for k in z.files if k.startswith("arrays/") and z[k].dtype == bool]
    conv = description["net"]["module"]["args"]["modules"][5]["module"]
    assert conv["class"] == "Conv2d" and conv["args"]["n_in"] == 6
    assert conv["params"] == {"w": 4}                          # after C1's w, its bias, S2's a and b
    assert any(np.array_equal(t, fb.LENET5_C3_TABLE) for t in tables)
    assert description["pool"]["dtype"] == "<f4"


def test_a_loaded_machine_trains(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    machine = fb.build_machine({"model": "mlp", "hidden": [32], "input_shape": [64], "n_classes": 10})
    loaded = _round_trip(machine, tmp_path)
    opt = fb.SGD(loaded.pool, 0.1)
    for i in range(0, 1600, 32):
        loaded.gradient(x[i:i + 32], y[i:i + 32])
        opt.step()
    assert (loaded.predict(x) == y).mean() > 0.8
    assert (machine.predict(x) == y).mean() < 0.3              # the original was not touched
    assert os.path.getsize(tmp_path / "saved.npz") < 4 * machine.pool.x.nbytes


def _tampered(tmp_path, change) -> str:
    """A saved machine whose description `change(description)` rewrote; returns the new file's path."""
    machine = fb.build_machine({"model": "mlp", "hidden": [5], "input_shape": [4], "n_classes": 3})
    fb.save(machine, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    description = json.loads(str(arrays["description"]))
    arrays["description"] = np.array(change(description) or json.dumps(description))
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("change, message", [
    (lambda d: d["pool"]["handles"][0][1].append(1000), r"expected handles one after the other"),
    (lambda d: d["pool"]["handles"][-1].__setitem__(1, [10 ** 12]), r"expected a vector of 1000000000\d+ param"),
    (lambda d: d["pool"].__setitem__("dtype", "<f8"), r"expected a 1-D float64 parameter vector, got float32"),
    (lambda d: d["net"]["module"].__setitem__("class", "os.system"), r"unknown class 'os.system'"),
    (lambda d: d["net"]["module"]["args"].__setitem__("modules", [{"ref": 99}]), r"a reference to module 99"),
    (lambda d: d["net"]["module"]["args"].__setitem__("modules", [{"eval": "1"}]), r"unexpected value"),
    (lambda d: "[" * 100_000 + "]" * 100_000, r"corrupt or unreadable"),
])
def test_a_tampered_description_is_one_clear_error(tmp_path, change, message):
    with pytest.raises(serialize.SaveFileError, match=message) as error:
        fb.load(_tampered(tmp_path, change))
    assert "\n" not in str(error.value)


def test_pool_from_layout_cuts_a_copy_of_the_vector_into_views():
    x = np.arange(10, dtype=np.float64)
    pool = fb.ParamPool.from_layout([(2, 3), (4,)], x)
    (a, off_a, shape_a), (b, off_b, shape_b) = pool.handles
    assert (off_a, shape_a, off_b, shape_b) == (0, (2, 3), 6, (4,)) and pool.dtype == np.float64
    np.testing.assert_array_equal(b.x, [6, 7, 8, 9])
    assert np.shares_memory(a.x, pool.x) and np.shares_memory(b.ddx, pool.ddx) and not np.shares_memory(pool.x, x)
    pool.alloc(3, value=1.0)                                    # still a pool that grows
    np.testing.assert_array_equal(b.x, [6, 7, 8, 9])
    with pytest.raises(ValueError, match=r"from_layout: expected a vector of 7 parameters .* got \(10,\)"):
        fb.ParamPool.from_layout([(7,)], x)
