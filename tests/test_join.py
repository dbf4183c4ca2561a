"""Join and split modules and the contrastive loss: hand-computed values and error messages."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb


def _run(module, *xs):
    outs = [fb.State() for _ in range(module.n_outputs)]
    module.fprop(*[fb.State(np.asarray(x, dtype=float)) for x in xs], *outs)
    return [o.x for o in outs]


def test_sum_product_scale_values():
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0, -1.0]])
    assert _run(fb.Sum(3), a, b, a)[0].tolist() == [[5.0, 3.0]]
    assert _run(fb.Product(), a, b)[0].tolist() == [[3.0, -2.0]]
    assert _run(fb.Scale(-2), a)[0].tolist() == [[-2.0, -4.0]]


def test_concat_then_split_gives_the_parts_back():
    a, b = np.arange(6.0).reshape(2, 3), np.arange(4.0).reshape(2, 2)
    [c] = _run(fb.Concat(2), a, b)
    assert c.tolist() == [[0, 1, 2, 0, 1], [3, 4, 5, 2, 3]]
    p, q = _run(fb.Split((3, 2)), c)
    np.testing.assert_array_equal(p, a)
    np.testing.assert_array_equal(q, b)
    x1, x2 = _run(fb.Split(2, squeeze=True), np.stack([a, a + 10], axis=1))
    np.testing.assert_array_equal(x2, a + 10)


def test_copy_fans_out_and_sums_the_gradients_back():
    inp, outs = fb.State(np.ones((1, 2))), [fb.State(), fb.State()]
    copy = fb.Copy(2)
    copy.fprop(inp, *outs)
    outs[0].dx, outs[1].dx = np.array([[1.0, 2.0]]), np.array([[10.0, 20.0]])
    copy.bprop(inp, *outs)
    assert inp.dx.tolist() == [[11.0, 22.0]]


def test_distances_and_cosine_values():
    a, b = np.array([[3.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 4.0], [1.0, 1.0]])
    assert _run(fb.SquaredDistance(), a, b)[0].tolist() == [25.0, 0.0]
    assert _run(fb.Distance(), a, b)[0].tolist() == [5.0, 0.0]
    np.testing.assert_allclose(_run(fb.CosineSimilarity(), a, b)[0], [0.0, 1.0], atol=1e-15)


def test_distance_gradient_is_zero_where_the_two_points_meet():
    a, b, out = fb.State(np.ones((1, 2))), fb.State(np.ones((1, 2))), fb.State()
    d = fb.Distance()
    d.fprop(a, b, out)
    out.dx = np.ones(1)
    d.bprop(a, b, out)
    assert a.dx.tolist() == [[0.0, 0.0]] and np.isfinite(b.dx).all()


@pytest.mark.parametrize("module, inputs, message", [
    (fb.Sum(2), [np.zeros((2, 3)), np.zeros((2, 4))],
     r"Sum\(2\): expected inputs of one shape, got \(2, 3\), \(2, 4\)"),
    (fb.Concat(2), [np.zeros((2, 3, 1)), np.zeros((2, 3, 2))],
     r"Concat\(2, axis=1\): expected inputs that agree on every axis but 1, got \(2, 3, 1\), \(2, 3, 2\)"),
    (fb.Split((1, 3)), [np.zeros((2, 5))],
     r"Split\(\(1, 3\), axis=1\): expected an input whose axis 1 splits into parts \(1, 3\), got \(2, 5\)"),
    (fb.Split(2, squeeze=True), [np.zeros((2, 4, 3))],
     r"Split\(2, axis=1, squeeze\): expected an input whose axis 1 splits into 2 equal parts of size 1, "
     r"got \(2, 4, 3\)"),
    (fb.CosineSimilarity(), [np.zeros((2, 3)), np.ones((2, 3))],
     r"CosineSimilarity\(\): expected nonzero vectors, got a zero vector in sample 0"),
])
def test_bad_inputs_get_one_clear_line(module, inputs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        _run(module, *inputs)


def test_bad_construction_is_refused():
    with pytest.raises(ValueError, match=r"Split: expected an axis >= 1 \(axis 0 is the batch\), got 0"):
        fb.Split(2, axis=0)
    with pytest.raises(ValueError, match=r"Sum: expected n >= 1 inputs, got 0"):
        fb.Sum(0)


# --- the contrastive loss ----------------------------------------------------------------------

def test_contrastive_loss_is_the_drlim_formula():
    m = 1.5
    d, y = np.array([0.5, 0.5, 2.0, 1.0]), np.array([0, 1, 1, 0])
    loss, out = fb.ContrastiveLoss(margin=m), fb.State()
    loss.fprop(fb.State(d), fb.State(y), out)
    expected = (1 - y) * 0.5 * d**2 + y * 0.5 * np.maximum(0, m - d) ** 2
    np.testing.assert_allclose(out.x, expected, rtol=1e-15)
    assert out.x.tolist() == [0.125, 0.5, 0.0, 0.5]
    energies = fb.State(d)
    out.dx = np.ones(4)
    loss.bprop(energies, fb.State(y), out)
    assert energies.dx.tolist() == [0.5, -1.0, 0.0, 1.0]         # (1 − Y) D − Y [m − D]⁺
    assert loss.answers(d).tolist() == [0, 0, 1, 1]              # dissimilar where D > m/2


def test_contrastive_loss_rejects_labels_other_than_0_and_1():
    loss = fb.ContrastiveLoss()
    with pytest.raises(ValueError, match=r"expected labels 0 \(similar\) or 1 \(dissimilar\) of shape \(2,\)"):
        loss.fprop(fb.State(np.ones(2)), fb.State(np.array([0, 2])), fb.State())
    with pytest.raises(ValueError, match=r"expected one energy per pair, shape \(n,\), got \(2, 3\)"):
        loss.fprop(fb.State(np.ones((2, 3))), fb.State(np.array([0, 1])), fb.State())
    assert "contrastive" in fb.LOSSES
