"""Each loss against its formula on hand-computed values; inference; regularizers; bad input.

The energies used throughout (two samples, three answers) and the desired answers:

    E = [[1.0, 3.0, 0.5],        Y = [0, 1]
         [2.0, 0.2, 4.0]]

so E_Y = [1.0, 0.2]; the most offending incorrect answers are Ē = [0.5 (answer 2), 2.0 (answer 0)];
min_y E_y = [0.5, 0.2]; E_Y − Ē = [0.5, −1.8].
"""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb

E = np.array([[1.0, 3.0, 0.5],
              [2.0, 0.2, 4.0]])
Y = np.array([0, 1])
PER_ANSWER = [name for name, cls in fb.LOSSES.items() if cls is not fb.ContrastiveLoss]   # energies (n, k)


def losses(loss: fb.Loss, e=E, y=Y) -> np.ndarray:
    out = fb.State()
    loss.fprop(fb.State(np.asarray(e, dtype=float)), fb.State(np.asarray(y)), out)
    assert out.x.shape == (len(y),)
    return out.x.copy()


def gradient(loss: fb.Loss, e=E, y=Y) -> np.ndarray:
    energies, labels, out = fb.State(np.asarray(e, dtype=float)), fb.State(np.asarray(y)), fb.State()
    loss.fprop(energies, labels, out)
    out.dx = np.ones(len(y))
    loss.bprop(energies, labels, out)
    return energies.dx.copy()


def test_energy_loss_is_the_energy_of_the_desired_answer():
    np.testing.assert_allclose(losses(fb.EnergyLoss()), [1.0, 0.2])                 # L = E_Y
    np.testing.assert_allclose(gradient(fb.EnergyLoss()), [[1, 0, 0], [0, 1, 0]])


def test_energy_loss_on_one_energy_per_sample_passes_it_through():
    energies, out = fb.State(np.array([0.5, 2.0, 0.0])), fb.State()
    fb.EnergyLoss().fprop(energies, None, out)
    np.testing.assert_array_equal(out.x, [0.5, 2.0, 0.0])
    out.dx = np.array([1.0, 0.5, 2.0])
    fb.EnergyLoss().bprop(energies, None, out)
    np.testing.assert_array_equal(energies.dx, [1.0, 0.5, 2.0])                      # ∂L/∂E = 1


def test_perceptron_loss_is_desired_energy_minus_lowest():
    # row 0: 1.0 − 0.5 = 0.5; row 1: the desired answer is the lowest, 0.2 − 0.2 = 0
    np.testing.assert_allclose(losses(fb.PerceptronLoss()), [0.5, 0.0])
    # ∂L/∂E: +1 at Y, −1 at argmin (they cancel where Y is the argmin)
    np.testing.assert_allclose(gradient(fb.PerceptronLoss()), [[1, 0, -1], [0, 0, 0]])


def test_hinge_loss_uses_the_most_offending_incorrect_answer():
    # m = 1: row 0: [1 + 1.0 − 0.5]⁺ = 1.5; row 1: [1 + 0.2 − 2.0]⁺ = [−0.8]⁺ = 0
    np.testing.assert_allclose(losses(fb.HingeLoss(margin=1.0)), [1.5, 0.0])
    # m = 2: row 1: [2 + 0.2 − 2.0]⁺ = 0.2 (Ē is the incorrect 2.0, not the desired 0.2)
    np.testing.assert_allclose(losses(fb.HingeLoss(margin=2.0)), [2.5, 0.2])
    np.testing.assert_allclose(gradient(fb.HingeLoss(margin=2.0)), [[1, 0, -1], [-1, 1, 0]])
    np.testing.assert_allclose(gradient(fb.HingeLoss(margin=1.0)), [[1, 0, -1], [0, 0, 0]])


def test_nll_loss_is_energy_plus_free_energy():
    # β = 1, row 0: 1.0 + log(e^−1 + e^−3 + e^−0.5) = 1.0 + log(1.0241971...) = 1.0239090561799077
    #        row 1: 0.2 + log(e^−2 + e^−0.2 + e^−4) = 0.2 + log(0.9723816...) = 0.1719931183659007
    np.testing.assert_allclose(losses(fb.NLLLoss(beta=1.0)), [1.0239090561799077, 0.1719931183659007], rtol=1e-12)
    # β = 2, row 0: 1.0 + ½ log(e^−2 + e^−6 + e^−1) = 0.6590877146237270
    assert losses(fb.NLLLoss(beta=2.0))[0] == pytest.approx(0.6590877146237270, rel=1e-12)
    # ∂L/∂E_k = δ_kY − softmax(−βE)_k
    p = np.exp(-E) / np.exp(-E).sum(1, keepdims=True)
    np.testing.assert_allclose(gradient(fb.NLLLoss()), np.eye(3)[Y] - p, rtol=1e-12)


def test_nll_loss_is_stable_for_large_energies_and_large_beta():
    # β = 100, E = [1e4, 1e4 + 0.01, 2e4], Y = 0: exp(−βE) would overflow or underflow, yet
    # L = 1e4 + (1/100) log(e^(−1e6) (1 + e^−1 + e^−1e6)) = (1/100) log(1 + e^−1) = 0.0031326168751822283
    # Shifting every energy by −3e4 changes nothing (there exp(−βE) = e^(+2e6) would overflow).
    e = np.array([[1e4, 1e4 + 0.01, 2e4],
                  [-2e4, -2e4 + 0.01, -1e4]])
    loss = fb.NLLLoss(beta=100.0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):             # underflow to 0 is fine
        value = losses(loss, e, [0, 0])
        g = gradient(loss, e, [0, 0])
    np.testing.assert_allclose(value, 0.0031326168751822283, rtol=1e-6)
    p1 = np.exp(-1) / (1 + np.exp(-1))                                           # softmax weight of answer 1
    np.testing.assert_allclose(g, [[p1, -p1, 0.0], [p1, -p1, 0.0]], atol=1e-9)


def test_nll_loss_of_one_sample_is_the_same_formula():
    # a batch of 1 (on-line learning) goes through Python floats instead of numpy's batch path
    for beta, want in ((1.0, [1.0239090561799077, 0.1719931183659007]), (2.0, [0.6590877146237270, None])):
        for i in range(2):
            if want[i] is not None:
                assert losses(fb.NLLLoss(beta=beta), E[i:i + 1], Y[i:i + 1])[0] == pytest.approx(want[i], rel=1e-12)
    p = np.exp(-E) / np.exp(-E).sum(1, keepdims=True)
    for i in range(2):
        np.testing.assert_allclose(gradient(fb.NLLLoss(), E[i:i + 1], Y[i:i + 1]), (np.eye(3)[Y] - p)[i:i + 1],
                                   rtol=1e-12)
    big = np.array([[2e4, 1e4, 1e4 + 0.01]])                       # as in the test below: shifted by min E
    assert losses(fb.NLLLoss(beta=100.0), big, [1])[0] == pytest.approx(0.0031326168751822283, rel=1e-6)
    for e in ([[0.3, np.nan, 1.0]], [[np.nan, 0.3, 1.0]]):                           # NaN anywhere: NaN loss
        assert np.isnan(losses(fb.NLLLoss(), e, [0])[0])
    # the curvature β p (1 − p) that bbprop adds; float32 in, float32 out, computed in double
    for beta in (1.0, 3.0):
        energies, labels, out = fb.State(E.copy()), fb.State(Y), fb.State()               # float64 batch path
        fb.NLLLoss(beta=beta).fprop(energies, labels, out)
        out.dx, out.ddx = np.ones(2), np.zeros(2)
        fb.NLLLoss(beta=beta).bbprop(energies, labels, out)
        for i in range(2):
            one = (fb.State(E[i:i + 1].astype(np.float32)), fb.State(Y[i:i + 1]), fb.State())
            loss = fb.NLLLoss(beta=beta)
            loss.fprop(*one)
            one[2].dx, one[2].ddx = np.ones(1, np.float32), np.zeros(1, np.float32)
            loss.bbprop(*one)
            assert one[2].x.dtype == np.float32 and one[0].ddx.dtype == np.float32
            assert one[2].x[0] == pytest.approx(out.x[i], rel=1e-6)
            np.testing.assert_allclose(one[0].ddx, energies.ddx[i:i + 1], rtol=1e-6)


def test_nll_loss_tends_to_the_perceptron_loss_as_beta_grows():
    e = np.random.default_rng(3).uniform(-2, 2, (6, 5))
    y = np.random.default_rng(4).integers(0, 5, 6)
    perceptron = losses(fb.PerceptronLoss(), e, y)
    gaps = [np.abs(losses(fb.NLLLoss(beta=b), e, y) - perceptron).max() for b in (1, 10, 100, 1000)]
    assert all(a > b for a, b in zip(gaps[:-1], gaps[1:], strict=True)), gaps
    assert gaps[-1] < 1e-2


def test_log_loss_is_softplus_of_the_energy_gap():
    # row 0: log(1 + e^0.5) = 0.9740769841801067; row 1: log(1 + e^−1.8) = 0.1529776105260741
    np.testing.assert_allclose(losses(fb.LogLoss()), [0.9740769841801067, 0.1529776105260741], rtol=1e-12)
    s = 1 / (1 + np.exp(-np.array([0.5, -1.8])))                                    # ∂L/∂E_Y = σ(E_Y − Ē)
    np.testing.assert_allclose(gradient(fb.LogLoss()), [[s[0], 0, -s[0]], [-s[1], s[1], 0]], rtol=1e-12)


def test_square_square_loss_pushes_the_offending_answer_above_the_margin():
    # m = 1: row 0: 1.0² + ([1 − 0.5]⁺)² = 1.25; row 1: 0.2² + ([1 − 2.0]⁺)² = 0.04
    np.testing.assert_allclose(losses(fb.SquareSquareLoss(margin=1.0)), [1.25, 0.04], rtol=1e-12)
    # m = 3: row 1: 0.04 + (3 − 2)² = 1.04
    np.testing.assert_allclose(losses(fb.SquareSquareLoss(margin=3.0)), [1 + 6.25, 1.04], rtol=1e-12)
    # ∂L/∂E_Y = 2E_Y, ∂L/∂Ē = −2[m − Ē]⁺
    np.testing.assert_allclose(gradient(fb.SquareSquareLoss(margin=1.0)), [[2, 0, -1], [0, 0.4, 0]], rtol=1e-12)


def test_square_exp_loss_is_square_plus_gamma_exp():
    # γ = 1: row 0: 1 + e^−0.5 = 1.6065306597126334; row 1: 0.04 + e^−2 = 0.17533528323661270
    np.testing.assert_allclose(losses(fb.SquareExpLoss()), [1.6065306597126334, 0.1753352832366127], rtol=1e-12)
    # γ = 2: 1 + 2e^−0.5 = 2.2130613194252668; 0.04 + 2e^−2 = 0.3106705664732254
    np.testing.assert_allclose(losses(fb.SquareExpLoss(gamma=2.0)), [2.2130613194252668, 0.3106705664732254],
                               rtol=1e-12)


def test_mce_loss_is_the_logistic_of_the_energy_gap():
    # σ(0.5) = 0.6224593312018546; σ(−1.8) = 0.1418510649004878
    np.testing.assert_allclose(losses(fb.MCELoss()), [0.6224593312018546, 0.1418510649004878], rtol=1e-12)


def test_lvq2_loss_is_the_saturated_relative_gap():
    e = np.array([[2.0, 1.5, 3.0],      # Ē = 1.5: (2.0 − 1.5) / (δ 1.5) = 1/3 for δ = 1, 1/6 for δ = 2
                  [1.0, 2.0, 4.0],      # Ē = 2.0: (1.0 − 2.0) / 2.0 = −0.5 → 0
                  [1.2, 1.0, 5.0]])     # Ē = 1.0: (1.2 − 1.0) / 1.0 = 0.2 for δ = 1, 0.1 for δ = 2
    y = [0, 0, 0]
    np.testing.assert_allclose(losses(fb.LVQ2Loss(saturation=1.0, delta=1.0), e, y), [1 / 3, 0, 0.2], rtol=1e-12)
    np.testing.assert_allclose(losses(fb.LVQ2Loss(saturation=0.25, delta=1.0), e, y), [0.25, 0, 0.2], rtol=1e-12)
    np.testing.assert_allclose(losses(fb.LVQ2Loss(saturation=1.0, delta=2.0), e, y), [1 / 6, 0, 0.1], rtol=1e-12)
    # saturated and negative rows have no gradient; row 2: ∂/∂E_Y = 1/(δĒ) = 1, ∂/∂Ē = −E_Y/(δĒ²) = −1.2
    np.testing.assert_allclose(gradient(fb.LVQ2Loss(saturation=0.25), e, y), [[0, 0, 0], [0, 0, 0], [1, -1.2, 0]],
                               rtol=1e-12)


def test_losses_scale_their_gradient_by_the_output_dx():
    energies, labels, out = fb.State(E.copy()), fb.State(Y), fb.State()
    loss = fb.HingeLoss(margin=2.0)
    loss.fprop(energies, labels, out)
    out.dx = np.array([0.5, 3.0])
    loss.bprop(energies, labels, out)
    np.testing.assert_allclose(energies.dx, [[0.5, 0, -0.5], [-3, 3, 0]])


def test_infer_is_the_argmin_of_the_energies():
    np.testing.assert_array_equal(fb.infer(E), [2, 1])
    e = np.random.default_rng(0).standard_normal((7, 4))
    np.testing.assert_array_equal(fb.infer(e), [int(np.argmin(row)) for row in e])


# --- regularizers ----------------------------------------------------------------------------

def _pool(values) -> fb.ParamPool:
    pool = fb.ParamPool(np.float64)
    pool.alloc(len(values), value=0.0).x[...] = values
    return pool


def test_l2_is_half_lambda_squared_norm_with_gradient_lambda_w_and_curvature_lambda():
    pool = _pool([1.0, -2.0, 3.0])
    l2 = fb.L2(0.1)
    assert l2.fprop(pool) == pytest.approx(0.5 * 0.1 * 14)                           # ½λ‖W‖² = 0.7
    pool.dx[...] = [1.0, 1.0, 1.0]
    l2.bprop(pool)
    np.testing.assert_allclose(pool.dx, [1.1, 0.8, 1.3])                            # adds λW
    l2.bprop(pool, scale=0.5)
    np.testing.assert_allclose(pool.dx, [1.15, 0.7, 1.45])                          # adds scale·λW
    l2.bbprop(pool)
    l2.bbprop(pool, scale=2.0)
    np.testing.assert_allclose(pool.ddx, [0.3, 0.3, 0.3])                           # λ + 2λ


def test_l1_is_lambda_abs_norm_with_gradient_lambda_sign():
    pool = _pool([1.0, -2.0, 3.0])
    l1 = fb.L1(0.1)
    assert l1.fprop(pool) == pytest.approx(0.6)                                      # λ‖W‖₁ = 0.1 · 6
    l1.bprop(pool, scale=2.0)
    np.testing.assert_allclose(pool.dx, [0.2, -0.2, 0.2])                           # scale·λ·sign(W)
    l1.bbprop(pool)
    np.testing.assert_array_equal(pool.ddx, 0)


@pytest.mark.parametrize("cls", [fb.L1, fb.L2])
def test_regularizer_rejects_negative_lambda(cls):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected lam >= 0, got -1"):
        cls(-1)


# --- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PER_ANSWER)
def test_labels_out_of_range_raise_naming_the_loss_and_range(name):
    loss = fb.LOSSES[name]()
    for bad in ([0, 3], [-1, 0], np.array([0, -128], np.int8), np.array([2, 3], ">i4"), np.array([0, 7], np.uint16)):
        with pytest.raises(ValueError, match=r"expected labels in \[0, 3\)") as info:
            losses(loss, E, bad)
        assert str(info.value).startswith(f"{type(loss).__name__}(")


@pytest.mark.parametrize("name", PER_ANSWER)
def test_labels_out_of_range_raise_in_one_sample_and_in_a_long_batch(name):
    # a few labels are checked as Python ints, more in one numpy pass: both paths refuse both ends
    loss = fb.LOSSES[name]()
    long = np.tile(E, (6, 1))                                    # 12 samples
    for e, y in [(E[:1], [3]), (E[:1], [-1]), (long, [0, 1] * 5 + [1, 3]), (long, [-1] + [0] * 11),
                 (long, np.array([0] * 11 + [-128], np.int8))]:
        with pytest.raises(ValueError, match=r"expected labels in \[0, 3\)"):
            losses(loss, e, y)
    assert losses(loss, long, [0, 1] * 6).shape == (12,)        # and in range, both pass
    assert losses(loss, E[:1], [2]).shape == (1,)


@pytest.mark.parametrize("name", PER_ANSWER)
def test_labels_of_the_wrong_shape_or_type_raise(name):
    loss = fb.LOSSES[name]()
    expected = rf"{type(loss).__name__}\(.*\): expected integer labels of shape \(2,\)"
    for bad in (np.array([[0], [1]]), np.array([0, 1, 2]), np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match=expected):
            losses(loss, E, bad)
    with pytest.raises(ValueError, match=expected + ", got no labels"):
        loss.fprop(fb.State(E.copy()), None, fb.State())


@pytest.mark.parametrize("name", PER_ANSWER)
def test_energies_that_are_not_2d_raise(name):
    loss = fb.LOSSES[name]()
    bad = [np.zeros((2, 3, 1))] + ([] if name == "energy" else [np.zeros(2)])
    for e in bad:
        with pytest.raises(ValueError, match=rf"{type(loss).__name__}\(.*\): expected energies of shape \(n, k\)"):
            loss.fprop(fb.State(e), fb.State(np.array([0, 1])), fb.State())


def test_lvq2_rejects_non_positive_energies():
    # LVQ2 divides by δĒ: with Ē = −1 below, (1 − (−1)) / (−1) = −2 would silently give L = 0 for a wrong answer
    for bad in ([[1.0, 0.0]], [[1.0, -1.0]]):
        with pytest.raises(ValueError, match=r"LVQ2Loss\(.*\): expected positive energies"):
            losses(fb.LVQ2Loss(), bad, [0])


def test_nll_rejects_non_positive_beta():
    for beta in (0.0, -1.0):
        with pytest.raises(ValueError, match="NLLLoss: expected beta > 0"):
            fb.NLLLoss(beta=beta)
