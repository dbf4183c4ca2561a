"""Network: wiring checked at build time, sweeps in graph order, shared weights through twins."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb
from cases_net import two_inputs_skip_shared


def _layer(pool, n_in=4, n_out=3):
    return fb.Cascade(fb.Linear(n_in, n_out, pool), fb.Tanh(n_out, pool))


# --- wiring errors, one line naming the module and the state ---------------------------------

def test_a_cycle_is_refused_naming_the_modules_on_it():
    pool = fb.ParamPool(np.float64)
    with pytest.raises(ValueError) as info:
        fb.Network(inputs="x", outputs="y", modules=[
            (fb.Linear(4, 4, pool), "x -> a"),
            (fb.Sum(2), "a, c -> b"),
            (fb.Tanh(4, pool), "b -> c"),
            (fb.Copy(), "c -> y"),
        ])
    message = str(info.value)
    assert "\n" not in message
    assert "form a cycle" in message
    assert "[Sum(2): a, c -> b]" in message and "[Tanh(4, bias): b -> c]" in message
    assert "Linear" not in message                               # not on the cycle
    assert "fbprop.unfold" in message


def test_a_state_written_twice_is_refused():
    pool = fb.ParamPool(np.float64)
    with pytest.raises(ValueError, match=r"^Network: state 'h' is written by Linear\(4 -> 3\): x -> h and by "
                                         r"Linear\(4 -> 3\): x -> h; a state has one writer"):
        fb.Network("x", "h", [(fb.Linear(4, 3, pool), "x -> h"), (fb.Linear(4, 3, pool), "x -> h")])


def test_a_state_read_but_never_written_is_refused():
    pool = fb.ParamPool(np.float64)
    with pytest.raises(ValueError, match=r"^Network: Tanh\(3, bias\) reads state 'hiden', which no module writes "
                                         r"and which is not an input \(inputs: x\)$"):
        fb.Network("x", "y", [(fb.Linear(4, 3, pool), "x -> hidden"), (fb.Tanh(3, pool), "hiden -> y")])


def test_an_unconnected_input_is_refused():
    pool = fb.ParamPool(np.float64)
    with pytest.raises(ValueError, match=r"^Network: input 'y' is read by no module$"):
        fb.Network("x, y", "h", [(fb.Linear(4, 3, pool), "x -> h")])


def test_a_state_nobody_reads_gets_no_gradient():
    net = fb.Network("x", "y", [(fb.Split(2), "x -> a, b"), (fb.Scale(3.0), "a -> y")])
    x, y = fb.State(np.ones((2, 4))), fb.State()
    net.fprop(x, y)
    y.dx = np.ones((2, 2))
    net.bprop(x, y)
    assert x.dx.tolist() == [[3.0, 3.0, 0.0, 0.0]] * 2


def test_an_output_never_written_and_an_input_written_are_refused():
    with pytest.raises(ValueError, match=r"^Network: output 'z' is written by no module$"):
        fb.Network("x", "y, z", [(fb.Copy(), "x -> y")])
    with pytest.raises(ValueError, match=r"^Network: Copy\(\) writes 'x', which is an input of the network$"):
        fb.Network("x", "y", [(fb.Copy(), "x -> y"), (fb.Copy(), "y -> x")])


def test_an_output_read_inside_the_network_asks_for_a_copy():
    pool = fb.ParamPool(np.float64)
    with pytest.raises(ValueError, match=r"Tanh\(3, bias\) reads 'h', an output of the network; .*Copy"):
        fb.Network("x", "h, y", [(fb.Linear(4, 3, pool), "x -> h"), (fb.Tanh(3, pool), "h -> y")])


def test_one_instance_in_two_places_is_refused_and_share_is_suggested():
    pool = fb.ParamPool(np.float64)
    g = _layer(pool)
    with pytest.raises(ValueError, match=r"^Network: Linear\(4 -> 3\) is used twice .*module\.share\(\)$"):
        fb.Network("x1, x2", "h1, h2", [(g, "x1 -> h1"), (g, "x2 -> h2")])


def test_wrong_arity_and_bad_entries_are_refused():
    with pytest.raises(ValueError, match=r"^Network: SquaredDistance\(\) reads 2 state\(s\) and writes 1, "
                                         r"got wiring 'a -> d'$"):
        fb.Network("a", "d", [(fb.SquaredDistance(), "a -> d")])
    with pytest.raises(ValueError, match=r"expected wiring 'inputs -> outputs', got 'a, d'"):
        fb.Network("a", "d", [(fb.Copy(), "a, d")])
    with pytest.raises(TypeError, match=r"expected a Module in \('tanh', 'a -> d'\), got str"):
        fb.Network("a", "d", [("tanh", "a -> d")])
    with pytest.raises(ValueError, match=r"expected inputs as state names"):
        fb.Network("a b", "d", [(fb.Copy(), "a -> d")])


def test_a_shape_mismatch_at_fprop_names_the_node_and_its_states():
    pool = fb.ParamPool(np.float64)
    net = fb.Network("x", "y", [(fb.Linear(4, 3, pool), "x -> h"), (fb.Linear(5, 2, pool), "h -> y")])
    with pytest.raises(ValueError) as info:
        net.fprop(fb.State(np.zeros((2, 4))), fb.State())
    assert str(info.value) == ("Network node [Linear(5 -> 2): h -> y] reading h (2, 3): "
                               "Linear(5 -> 2): expected input of shape (n, 5), got (2, 3)")


def test_fprop_with_the_wrong_number_of_states_says_what_it_expects():
    net, _ = two_inputs_skip_shared(fb.ParamPool(np.float64))
    with pytest.raises(TypeError, match=r"expected 2 input and 1 output states \(x1, x2 -> out\), got 2"):
        net.fprop(fb.State(np.zeros((1, 4))), fb.State())


# --- sweeps ---------------------------------------------------------------------------------

def test_a_chain_network_computes_what_the_cascade_computes():
    pool_a, pool_b = fb.ParamPool(np.float64, seed=3), fb.ParamPool(np.float64, seed=3)
    cascade = fb.Cascade(fb.Linear(4, 3, pool_a), fb.Tanh(3, pool_a), fb.Linear(3, 2, pool_a))
    net = fb.Network("x", "y", [(fb.Linear(4, 3, pool_b), "x -> s1"), (fb.Tanh(3, pool_b), "s1 -> s2"),
                                (fb.Linear(3, 2, pool_b), "s2 -> y")])
    pool_b.x[:] = pool_a.x + np.arange(pool_a.size) * 0.01
    pool_a.x[:] = pool_b.x
    x = np.random.default_rng(0).standard_normal((5, 4))
    results = []
    for module, pool in ((cascade, pool_a), (net, pool_b)):
        inp, out = fb.State(x.copy()), fb.State()
        module.fprop(inp, out)
        out.dx, out.ddx = np.ones_like(out.x), np.ones_like(out.x)
        pool.clear_dx(), pool.clear_ddx()
        module.bprop(inp, out)
        module.bbprop(inp, out)
        results.append((out.x.copy(), inp.dx.copy(), inp.ddx.copy(), pool.dx.copy(), pool.ddx.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_twins_share_parameter_handles_but_not_scratch_and_their_gradients_add():
    pool = fb.ParamPool(np.float64)
    g = _layer(pool)
    twin = g.share()
    assert [id(p) for p in twin.params()] == [id(p) for p in g.params()]
    assert twin[0]._x2 is not g[0]._x2 and twin.states[0] is not g.states[0]      # scratch of its own
    size = pool.size
    net = fb.Network("x1, x2", "h1, h2", [(g, "x1 -> h1"), (twin, "x2 -> h2")])
    assert net.params() == g.params() and pool.size == size       # no new parameters
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    states = [fb.State(x1), fb.State(x2), fb.State(), fb.State()]
    net.fprop(*states)
    states[2].dx, states[3].dx = np.ones((2, 3)), np.ones((2, 3))
    pool.clear_dx()
    net.bprop(*states)
    both = pool.dx.copy()
    separate = np.zeros_like(both)
    for x in (x1, x2):                                           # each half alone, through g
        inp, out = fb.State(x), fb.State()
        g.fprop(inp, out)
        out.dx = np.ones((2, 3))
        pool.clear_dx()
        g.bprop(inp, out)
        separate += pool.dx
    np.testing.assert_allclose(both, separate, rtol=1e-14)


def test_raw_inputs_get_no_dx_and_intermediates_after_parameters_do():
    pool = fb.ParamPool(np.float64)
    net = fb.Network("x, y", "e", [(fb.Scale(2.0), "y -> y2"), (fb.Linear(4, 3, pool), "x -> h"),
                                   (fb.SquaredDistance(), "h, y2 -> e")])
    x, y, e = fb.State(np.ones((2, 4)), requires_dx=False), fb.State(np.ones((2, 3)), requires_dx=False), fb.State()
    net.fprop(x, y, e)
    e.dx = np.ones(2)
    net.bprop(x, y, e)
    assert net.state("h").requires_dx and not net.state("y2").requires_dx
    assert x._dx is None and y._dx is None                       # never allocated


def test_picture_shows_every_state_and_module_in_order():
    net, _ = two_inputs_skip_shared(fb.ParamPool(np.float64))
    lines = net.picture().splitlines()
    assert lines[0] == "inputs: x1, x2" and lines[-1] == "outputs: out"
    assert [line.split("─▶")[-1].strip() for line in lines[1:-1]] == ["h1", "h2", "a", "u", "v", "c", "out"]
    assert "u, h1 ─▶ [Sum(2)] ─▶ v" in net.picture()
    assert repr(net).startswith("Network(x1, x2 -> out:\n")


def test_matches_pytorch_autograd_to_1e_10_in_float64():
    torch = pytest.importorskip("torch")
    pool = fb.ParamPool(np.float64)
    net, (x1, x2) = two_inputs_skip_shared(pool)
    w1, b1, w2, b2, w3 = (torch.tensor(p.x, requires_grad=True) for p in net.params())
    t1, t2 = torch.tensor(x1, requires_grad=True), torch.tensor(x2, requires_grad=True)

    def g(x):
        return torch.tanh(x @ w1.T + b1)
    h1 = g(t1)
    v = torch.tanh(h1 @ w2.T + b2) + h1
    out = torch.cat([v, g(t2)], dim=1) @ w3.T
    r = np.random.default_rng(7).standard_normal(out.shape)
    (out * torch.tensor(r)).sum().backward()

    states = [fb.State(x1), fb.State(x2), fb.State()]
    net.fprop(*states)
    states[2].dx = r
    pool.clear_dx()
    net.bprop(*states)
    pairs = [(states[2].x, out), (states[0].dx, t1.grad), (states[1].dx, t2.grad),
             *[(p.dx, t.grad) for p, t in zip(net.params(), (w1, b1, w2, b2, w3))]]
    for ours, theirs in pairs:
        theirs = theirs.detach().numpy()
        assert np.abs(ours - theirs).max() <= 1e-10 * np.abs(theirs).max()


def test_network_passes_gradcheck_first_and_second_order_with_shared_weights():
    net, inputs = two_inputs_skip_shared(fb.ParamPool(np.float64))
    report = fb.gradcheck(net, *inputs)
    assert report.ok
    assert sum("bbprop to parameter" in c for c in report.checked) == 5   # the shared g counted once
