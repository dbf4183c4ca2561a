"""Module values against their formulas, Cascade structure, and the errors bad shapes raise."""

from __future__ import annotations

import copy
import pickle
import re

import numpy as np
import pytest
from scipy.special import expit

import fbprop as fb
from fbprop.state import is_batch_last

RNG = np.random.default_rng(7)
X = RNG.standard_normal((3, 4))


def fprop(module: fb.Module, *inputs: np.ndarray) -> np.ndarray:
    out = fb.State()
    module.fprop(*(fb.State(np.asarray(i, dtype=float)) for i in inputs), out)
    return out.x


def _with_bias(cls, n=4):
    pool = fb.ParamPool(np.float64)
    m = cls(n, pool)
    m.b.x[...] = np.linspace(-0.5, 0.5, n)
    return m


def test_linear_fprop_is_x_times_w_transposed():
    pool = fb.ParamPool(np.float64)
    lin = fb.Linear(4, 3, pool)
    assert lin.w.x.shape == (3, 4)                             # W is (n_out, n_in)
    np.testing.assert_allclose(fprop(lin, X), X @ lin.w.x.T, rtol=1e-14)
    lin.w.x[...] = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(fprop(lin, [[1, 0, 0, 2]]), [[0 + 6, 4 + 14, 8 + 22]])


def test_linear_bprop_is_the_lectures_formulas():
    pool = fb.ParamPool(np.float64)
    lin = fb.Linear(4, 3, pool)
    inp, out = fb.State(X.copy()), fb.State()
    lin.fprop(inp, out)
    out.dx = RNG.standard_normal((3, 3))
    lin.bprop(inp, out)
    np.testing.assert_allclose(inp.dx, out.dx @ lin.w.x, rtol=1e-14)    # ∂E/∂x = Wᵀ ∂E/∂y
    np.testing.assert_allclose(lin.w.dx, out.dx.T @ X, rtol=1e-14)      # ∂E/∂W = ∂E/∂y xᵀ (summed over the batch)


def test_tanh_fprop_is_tanh_of_x_plus_bias():
    tanh = _with_bias(fb.Tanh)
    np.testing.assert_allclose(fprop(tanh, X), np.tanh(X + tanh.b.x), rtol=1e-14)
    np.testing.assert_allclose(fprop(fb.Tanh(), X), np.tanh(X), rtol=1e-14)


def test_scaled_tanh_is_1_7159_tanh_two_thirds_x_with_f_of_1_near_1():
    np.testing.assert_allclose(fprop(fb.ScaledTanh(), X), 1.7159 * np.tanh(2 / 3 * X), rtol=1e-14)
    np.testing.assert_allclose(fprop(fb.ScaledTanh(), [[1.0, -1.0]]), [[1.0, -1.0]], atol=1e-5)
    st = _with_bias(fb.ScaledTanh)
    np.testing.assert_allclose(fprop(st, X), 1.7159 * np.tanh(2 / 3 * (X + st.b.x)), rtol=1e-14)


def test_logistic_is_one_over_one_plus_exp_minus_x_plus_bias():
    lg = _with_bias(fb.Logistic)
    np.testing.assert_allclose(fprop(lg, X), 1 / (1 + np.exp(-(X + lg.b.x))), rtol=1e-14)
    np.testing.assert_allclose(fprop(fb.Logistic(), [[0.0, 40.0, -40.0]]), [[0.5, expit(40.0), expit(-40.0)]])


def test_relu_is_max_of_zero_and_x_plus_bias():
    relu = _with_bias(fb.ReLU)
    np.testing.assert_array_equal(fprop(relu, X), np.maximum(X + relu.b.x, 0))
    np.testing.assert_array_equal(fprop(fb.ReLU(), [[-1.0, 0.0, 2.5]]), [[0.0, 0.0, 2.5]])
    # the slope is 1 where the unit is on, 0 where it is off
    inp, out = fb.State(np.array([[-1.0, 2.0]])), fb.State()
    fb.ReLU().fprop(inp, out)
    out.dx = np.array([[5.0, 7.0]])
    fb.ReLU().bprop(inp, out)
    np.testing.assert_array_equal(inp.dx, [[0.0, 7.0]])


def test_bias_adds_one_bias_per_feature_map():
    pool = fb.ParamPool(np.float64)
    bias = fb.Bias((2, 1, 1), pool)
    bias.b.x[...] = [[[1.0]], [[-2.0]]]
    x = RNG.standard_normal((3, 2, 2, 2))
    y = fprop(bias, x)
    np.testing.assert_allclose(y[:, 0], x[:, 0] + 1.0)
    np.testing.assert_allclose(y[:, 1], x[:, 1] - 2.0)


@pytest.mark.parametrize("zero", [True, False])
@pytest.mark.parametrize("alpha", [1.0, 0.75])
@pytest.mark.parametrize("shape", [(5,), (2, 3), (4, 1, 1)])
def test_a_bias_gradient_of_one_sample_is_the_reductions_to_the_bit(shape, alpha, zero):
    # batch 1 skips numpy's reduction (the sum is the sample); a strided copy of the same sample
    # takes the reduction: the two must agree bit for bit, written (zero) or added into
    from fbprop.modules.squash import add_sum_to
    a = RNG.standard_normal((1, *shape)).astype(np.float32)
    wide = np.zeros((1, *shape[:-1], 2 * shape[-1]), np.float32)
    wide[..., ::2] = a
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous and np.array_equal(strided, a)
    start = RNG.standard_normal(shape).astype(np.float32)
    got, want = start.copy(), start.copy()
    add_sum_to(got, a, fb.State(), alpha, zero)
    add_sum_to(want, strided, fb.State(), alpha, zero)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, (0 if zero else start) + alpha * a[0], rtol=1e-6)


def test_euclidean_is_half_squared_distance_per_sample():
    x = [[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]]
    y = [[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]]
    # ½(0 + 4) = 2; ½(1 + 1) = 1; ½(9 + 16) = 12.5
    np.testing.assert_allclose(fprop(fb.Euclidean(), x, y), [2.0, 1.0, 12.5])


def test_euclidean_bprop_is_x_minus_y_and_y_minus_x():
    x, y, e = fb.State(np.array([[1.0, 2.0]])), fb.State(np.array([[0.5, 3.0]])), fb.State()
    fb.Euclidean().fprop(x, y, e)
    e.dx = np.array([2.0])
    fb.Euclidean().bprop(x, y, e)
    np.testing.assert_allclose(x.dx, [[1.0, -2.0]])            # 2 (x − y)
    np.testing.assert_allclose(y.dx, [[-1.0, 2.0]])            # 2 (y − x)


def test_euclidean_run_answers_y_equals_x_with_zero_energy():
    x, y, e = fb.State(X.copy()), fb.State(), fb.State()
    fb.Euclidean().run(x, y, e)
    np.testing.assert_array_equal(y.x, X)
    assert not np.shares_memory(y.x, x.x)
    np.testing.assert_array_equal(e.x, np.zeros(3))
    fb.Euclidean().fprop(x, y, e)                              # and its energy is indeed 0
    np.testing.assert_array_equal(e.x, 0)


def test_rbf_energies_are_half_squared_distances_to_the_codes():
    codes = [[1.0, 1.0], [-1.0, 0.0]]
    x = [[1.0, 0.0], [0.0, 2.0]]
    # sample 0: ½‖(0, −1)‖² = 0.5, ½‖(2, 0)‖² = 2;  sample 1: ½‖(−1, 1)‖² = 1, ½‖(1, 2)‖² = 2.5
    np.testing.assert_allclose(fprop(fb.RBF(codes), x), [[0.5, 2.0], [1.0, 2.5]])
    pool = fb.ParamPool(np.float64)
    trainable = fb.RBF(codes, pool, trainable=True)
    np.testing.assert_allclose(fprop(trainable, x), [[0.5, 2.0], [1.0, 2.5]])
    assert trainable.params() == [trainable.w] and np.shares_memory(trainable.w.x, pool.x)
    assert fb.RBF(codes, pool).params() == []                  # fixed codes are not parameters
    assert repr(trainable) == "RBF(2 -> 2, trainable)" and repr(fb.RBF(codes)) == "RBF(2 -> 2)"


def test_onehot_and_random_codes():
    np.testing.assert_array_equal(fb.onehot_codes(3), [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    codes = fb.random_codes(10, 7, seed=3)
    assert codes.shape == (10, 7) and set(np.unique(codes)) == {-1.0, 1.0}
    np.testing.assert_array_equal(codes, fb.random_codes(10, 7, seed=3))


def test_negated_scores_are_minus_the_scores():
    np.testing.assert_array_equal(fprop(fb.NegatedScores(), X), -X)
    inp, out = fb.State(X.copy()), fb.State()
    fb.NegatedScores().fprop(inp, out)
    out.dx = np.ones_like(X)
    fb.NegatedScores().bprop(inp, out)
    np.testing.assert_array_equal(inp.dx, -1.0)
    assert fb.infer(fprop(fb.NegatedScores(), X)).tolist() == np.argmax(X, axis=1).tolist()


# --- Cascade ---------------------------------------------------------------------------------

def _two_layer(pool):
    return fb.Cascade(fb.Linear(4, 3, pool), fb.Tanh(3, pool), fb.Linear(3, 2, pool), fb.Tanh(2, pool))


def test_cascade_repr_lists_its_modules():
    net = _two_layer(fb.ParamPool())
    assert repr(net) == "Cascade(\n  Linear(4 -> 3)\n  Tanh(3, bias)\n  Linear(3 -> 2)\n  Tanh(2, bias)\n)"
    assert repr(fb.Cascade(fb.Tanh(), net)) == "Cascade(\n  Tanh()\n  Cascade(\n    Linear(4 -> 3)\n" \
        "    Tanh(3, bias)\n    Linear(3 -> 2)\n    Tanh(2, bias)\n  )\n)"
    assert len(net) == 4 and isinstance(net[2], fb.Linear)


def test_cascade_fprop_composes_its_modules():
    pool = fb.ParamPool(np.float64)
    net = _two_layer(pool)
    h = np.tanh(X @ net[0].w.x.T + net[1].b.x)
    np.testing.assert_allclose(fprop(net, X), np.tanh(h @ net[2].w.x.T + net[3].b.x), rtol=1e-13)


def test_cascade_reuses_its_intermediate_states_across_calls():
    pool = fb.ParamPool(np.float64)
    net = _two_layer(pool)
    assert len(net.states) == 3
    inp, out = fb.State(X.copy()), fb.State()
    net.fprop(inp, out)
    out.dx = np.ones((3, 2))
    net.bprop(inp, out)
    buffers = [(id(s), id(s.x), id(s.dx)) for s in net.states]
    first = out.x.copy()
    inp.set(X * 2)
    net.fprop(inp, out)
    net.bprop(inp, out)
    assert [(id(s), id(s.x), id(s.dx)) for s in net.states] == buffers
    assert not np.allclose(out.x, first)                         # new values in the same buffers
    np.testing.assert_allclose(net.states[0].x, 2 * X @ net[0].w.x.T, rtol=1e-13)


def test_cascade_bprop_does_not_carry_stale_intermediate_gradients():
    pool = fb.ParamPool(np.float64)
    net = _two_layer(pool)
    inp, out = fb.State(X.copy()), fb.State()
    net.fprop(inp, out)
    out.dx = np.ones((3, 2))
    net.bprop(inp, out)
    once = inp.dx.copy()
    inp.clear_dx()
    net.bprop(inp, out)                                          # intermediates cleared: same result
    np.testing.assert_allclose(inp.dx, once, rtol=1e-14)


def test_cascade_params_lists_shared_parameters_once():
    pool = fb.ParamPool()
    lin = fb.Linear(3, 3, pool)
    tanh = fb.Tanh(3, pool)
    net = fb.Cascade(lin, tanh, lin)
    assert net.params() == [lin.w, tanh.b]


def test_cascade_rejects_no_modules_and_non_modules():
    with pytest.raises(ValueError, match="Cascade: expected at least one module, got none"):
        fb.Cascade()
    with pytest.raises(TypeError, match="Cascade: expected Module instances, got ufunc"):
        fb.Cascade(fb.Tanh(), np.tanh)


# --- bad shapes ------------------------------------------------------------------------------

def test_linear_wrong_input_shape_names_module_expected_and_got():
    lin = fb.Linear(4, 3, fb.ParamPool())
    expected = "Linear(4 -> 3): expected input of shape (n, 4), got (2, 5)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        fprop(lin, np.zeros((2, 5)))
    with pytest.raises(ValueError, match=re.escape("Linear(4 -> 3): expected input of shape (n, 4), got (4,)")):
        fprop(lin, np.zeros(4))


def test_squash_wrong_input_shape_names_module_expected_and_got():
    tanh = fb.Tanh(4, fb.ParamPool())
    with pytest.raises(ValueError, match=re.escape("Tanh(4, bias): expected input of shape (n, 4), got (2, 5)")):
        fprop(tanh, np.zeros((2, 5)))
    maps = fb.Bias((2, 1, 1), fb.ParamPool())
    with pytest.raises(ValueError, match=re.escape("Bias(2, 1, 1, bias): expected input of shape (n, 2, 1, 1), "
                                                   "got (3, 4, 5, 5)")):
        fprop(maps, np.zeros((3, 4, 5, 5)))


def test_cascade_reports_the_inner_module_with_the_wrong_shape():
    net = _two_layer(fb.ParamPool())
    with pytest.raises(ValueError, match=re.escape("Linear(4 -> 3): expected input of shape (n, 4), got (2, 6)")):
        fprop(net, np.zeros((2, 6)))


def test_rbf_and_euclidean_wrong_shapes_raise():
    with pytest.raises(ValueError, match=re.escape("RBF(2 -> 3): expected input of shape (n, 2), got (4, 5)")):
        fprop(fb.RBF(np.zeros((3, 2))), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=re.escape("RBF: expected codes of shape (k, d), got (3,)")):
        fb.RBF(np.zeros(3))
    expected = "Euclidean: expected x and y of the same shape, got (2, 3) and (2, 4)"
    with pytest.raises(ValueError, match=re.escape(expected)):
        fprop(fb.Euclidean(), np.zeros((2, 3)), np.zeros((2, 4)))


def test_parameters_need_a_pool():
    with pytest.raises(ValueError, match="RBF: trainable codes need a ParamPool, got pool=None"):
        fb.RBF(np.zeros((3, 2)), trainable=True)
    with pytest.raises(ValueError, match="Tanh: a trainable bias needs its shape, got shape=None"):
        fb.Tanh(pool=fb.ParamPool())


def _sweeps(net: fb.Module, x: np.ndarray, requires_dx: bool) -> tuple[np.ndarray, ...]:
    pool = net.params()[0].pool
    inp, out = fb.State(x.copy(), requires_dx=requires_dx), fb.State()
    net.fprop(inp, out)
    pool.clear_dx()
    pool.clear_ddx()
    out.dx = np.linspace(-1, 1, out.x.size).reshape(out.x.shape)
    out.ddx = np.linspace(0, 1, out.x.size).reshape(out.x.shape)
    net.bprop(inp, out)
    net.bbprop(inp, out)
    return out.x.copy(), pool.dx.copy(), pool.ddx.copy(), inp.dx.copy() if requires_dx else None


@pytest.mark.parametrize("requires_dx", [True, False])
def test_nested_cascades_compute_what_one_flat_cascade_of_their_modules_computes(requires_dx):
    def modules(pool):
        return [fb.Flatten(), fb.Linear(4, 3, pool), fb.Tanh(3, pool), fb.Linear(3, 2, pool), fb.Bias(2, pool)]
    pool_a, pool_b = fb.ParamPool(np.float64, seed=3), fb.ParamPool(np.float64, seed=3)
    a, b = modules(pool_a), modules(pool_b)
    nested = fb.Cascade(a[0], fb.Cascade(fb.Cascade(a[1], a[2]), fb.Cascade(a[3], a[4])))
    flat = fb.Cascade(*b)
    assert len(nested._links) == 5 and nested._links == a
    for got, want in zip(_sweeps(nested, X, requires_dx), _sweeps(flat, X, requires_dx), strict=True):
        np.testing.assert_array_equal(got, want)
    inner = nested.modules[1]                                    # a nested cascade still runs on its own
    inp, out = fb.State(X.copy()), fb.State()
    inner.fprop(inp, out)
    np.testing.assert_array_equal(out.x, _sweeps(flat, X, requires_dx)[0])


def test_a_cascade_subclass_with_its_own_fprop_is_not_opened_up():
    class Checked(fb.Cascade):
        def fprop(self, inp, out):
            if inp.x.shape[1] != 4:
                raise ValueError(f"Checked: expected 4 features, got {inp.x.shape}")
            super().fprop(inp, out)

    pool = fb.ParamPool(np.float64)
    checked = Checked(fb.Linear(4, 3, pool))
    net = fb.Cascade(checked, fb.Tanh(3, pool))
    assert net._links[0] is checked
    with pytest.raises(ValueError, match="Checked: expected 4 features"):
        net.fprop(fb.State(np.ones((2, 5))), fb.State())


# ---- memory layout: batch-last states -----------------------------------------------------------

def test_a_batch_last_state_is_batch_first_in_shape_and_batch_innermost_in_memory():
    s = fb.State().resize(4, 3, 2, 5, dtype=np.float32, batch_last=True)
    assert s.x.shape == (4, 3, 2, 5)
    assert s.x.strides == (4, 2 * 5 * 4 * 4, 5 * 4 * 4, 4 * 4)   # the 4 samples of a pixel are adjacent
    assert is_batch_last(s.x) and is_batch_last(s.dx) and is_batch_last(s.ddx)   # dx and ddx follow x
    x, dx = s.x, s.dx
    assert s.resize(4, 3, 2, 5, dtype=np.float32, batch_last=True).x is x and s.dx is dx   # kept
    assert s.resize(4, 3, 2, 5, dtype=np.float32).x.flags.c_contiguous                  # C order asked: a new buffer
    assert fb.State().resize(1, 3, 2, 5, batch_last=True).x.flags.c_contiguous           # one sample: the same memory
    assert not any(is_batch_last(np.zeros(shape)) for shape in ((4, 3), (4, 1), (4,)))


def test_a_copy_of_a_batch_last_state_keeps_its_layout_and_numbers():
    s = fb.State().resize(4, 3, 5, batch_last=True)
    s.x[...] = np.arange(60.0).reshape(4, 3, 5)
    s.dx[...] = -s.x
    for clone in (copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert is_batch_last(clone.x) and is_batch_last(clone.dx)
        np.testing.assert_array_equal(clone.x, s.x)
        np.testing.assert_array_equal(clone.dx, -s.x)


def test_modules_give_the_same_numbers_for_either_layout_of_their_input():
    rng = np.random.default_rng(3)
    pool = fb.ParamPool(np.float64)
    net = fb.Cascade(fb.Conv2d(2, 3, 3, pool, padding=1), fb.ScaledTanh((3, 1, 1), pool), fb.Subsampling(3, 2, pool),
                     fb.MaxPool(2), fb.Flatten(), fb.Linear(3 * 2 * 2, 4, pool), fb.ScaledTanh(4, pool))
    x = rng.standard_normal((5, 2, 8, 8))
    results = []
    for a in (x, np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 0, -1)), -1, 0)):
        inp, out = fb.State(a.copy()), fb.State()
        pool.clear_dx()
        net.fprop(inp, out)
        out.dx = rng.standard_normal(out.x.shape) if not results else results[0][2]
        net.bprop(inp, out)
        results.append((out.x.copy(), inp.dx.copy(), out.dx.copy(), pool.dx.copy()))
    (y0, dx0, _, dw0), (y1, dx1, _, dw1) = results
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dw1, dw0, rtol=1e-12, atol=1e-14)


# ---- inference in place: a squashing takes over its scratch input ------------------------------

def test_take_over_swaps_only_a_scratch_state_own_buffer_of_the_same_layout():
    src, dst = fb.State().resize(4, 3, dtype=np.float32), fb.State().resize(4, 3, dtype=np.float32)
    a, b = src.x, dst.x
    assert not dst.take_over(src)                                # not scratch: the caller's or a shared state
    src.scratch = True
    assert dst.take_over(src) and dst.x is a and src.x is b      # swapped: two buffers, no alias
    assert dst.take_over(src) and dst.x is b and src.x is a      # and back
    src.x = src.x.reshape(3, 4).reshape(4, 3)                    # a view (Reshape's output): not its own
    assert not dst.take_over(src) and dst.x is b
    src.x = np.zeros((4, 3), np.float32)                         # an array handed in (the caller's data)
    assert not dst.take_over(src)
    src.resize(4, 3, dtype=np.float64)                           # its own again, but another dtype
    assert not dst.take_over(src)
    last = fb.State().resize(4, 3, 2, dtype=np.float32, batch_last=True)
    last.scratch = True
    assert not fb.State().resize(4, 3, 2, dtype=np.float32).take_over(last)   # another layout
    assert fb.State().resize(4, 3, 2, dtype=np.float32, batch_last=True).take_over(last)


def test_a_pickled_state_keeps_whether_it_owns_its_buffer():
    s = fb.State().resize(4, 3, 2, dtype=np.float32, batch_last=True)
    s.scratch = True
    clone = pickle.loads(pickle.dumps(s))
    assert clone.scratch and fb.State().resize(4, 3, 2, dtype=np.float32, batch_last=True).take_over(clone)
    view = fb.State(np.zeros((4, 3)))
    assert pickle.loads(pickle.dumps(view))._own is None          # handed in, not its own


@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_inference_squashes_in_place_to_the_same_bits_and_training_after_it_is_unchanged(model, monkeypatch,
                                                                                          request):
    """Machine.inference lets each squashing compute in its input's buffer (no bprop follows):
    the energies are fprop's, bit for bit; a squashing between two scratch states gives the
    buffers back at the end (the next inference writes the same ones); the next gradient is the
    one computed without the inference in between (no buffer is left shared); a view of the
    caller's data is never written. The MLP on two threads: on one, each Linear writes its
    squashing's output itself (`Cascade._folded`, tests/test_fold.py) and nothing is taken over."""
    if model == "mlp":
        request.getfixturevalue("two_threads")
    spec = {"model": model, "input_shape": [1, 28, 28], "n_classes": 10, "dtype": "float32"}
    if model == "mlp":
        spec["hidden"] = [30, 20]
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 1, 28, 28)).astype(np.float32), np.arange(6)
    plain, inferred = fb.build_machine(spec), fb.build_machine(spec)
    inferred.pool.x[...] = plain.pool.x
    squashes = [m for m in fb.network.leaves(inferred.network) if isinstance(m, fb.Squash)]
    before = {id(s): s.x for s in _scratch_inputs(inferred, squashes, x) if s.x is s._own}   # (not views)
    plain.fprop(x)
    x0 = x.copy()
    lent, end = [], fb.Squash.end_forward_only
    monkeypatch.setattr(fb.Squash, "end_forward_only", lambda self: (lent.append(vars(self).get("_lent")), end(self)))
    inferred.inference(x)
    np.testing.assert_array_equal(inferred.energies.x, plain.energies.x)
    np.testing.assert_array_equal(x, x0)
    assert sum(pair is not None for pair in lent) >= 2           # squashings took scratch inputs over
    after = {id(s): s.x for s in _scratch_inputs(inferred, squashes, None)}
    last = {id(c._link_states[-1]) for c in _modules(inferred.network)
            if isinstance(c, fb.Cascade) and isinstance(c._links[-1], fb.Squash) and len(c._links) > 1}
    assert {k for k in before if after[k] is not before[k]} <= last   # given back, but into a cascade's output
    assert not any(m.forward_only for m in squashes)             # switched back
    for machine in (plain, inferred):
        machine.pool.clear_dx()
        machine.gradient(x, y)
    np.testing.assert_array_equal(inferred.pool.dx, plain.pool.dx)
    owned = [s.x for s in {id(s): s for s in _all_states(inferred)}.values() if s.x is s._own]
    assert len(owned) >= 4 and len({b.__array_interface__["data"][0] for b in owned}) == len(owned)   # none shared


def _all_states(machine):
    """Every Cascade's intermediate states and every Network's, anywhere in the machine's network."""
    found = []
    for m in _modules(machine.network):
        states = getattr(m, "states", [])
        found += list(states.values()) if isinstance(states, dict) else states
    return found


def _modules(module):
    yield module
    for child in getattr(module, "modules", []):
        yield from _modules(child)
    for node in getattr(module, "nodes", []):
        yield from _modules(node.module)


def _scratch_inputs(machine, squashes, x):
    if x is not None:
        machine.fprop(x)
    return [s for s in _all_states(machine) if s.scratch]


def test_a_squashing_never_writes_the_callers_data_in_place():
    """A Cascade's first link reads the caller's state; a squashing after a Reshape reads a view
    of it: neither is taken over, however many inferences run."""
    pool = fb.ParamPool(np.float64)
    net = fb.Cascade(fb.Flatten(), fb.Tanh(12, pool))
    machine = fb.Machine(net, fb.NegatedScores(), fb.NLLLoss(), pool)
    x = np.random.default_rng(1).standard_normal((5, 3, 4))
    x0 = x.copy()
    for _ in range(3):
        machine.predict(x)
    np.testing.assert_array_equal(x, x0)
    first = fb.Machine(fb.Cascade(fb.Tanh(12, pool), fb.Tanh(12, pool)), fb.NegatedScores(), fb.NLLLoss(), pool)
    x2 = x.reshape(5, 12).copy()
    first.predict(x2)
    np.testing.assert_array_equal(x2, x0.reshape(5, 12))
