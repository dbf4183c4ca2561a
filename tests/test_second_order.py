"""SDLM's Hessian estimate against a brute-force Gauss-Newton diagonal; LeNet-5 learns digits."""

import numpy as np

import fbprop as fb
from fbprop.data import load_dataset
from fbprop.models import build_machine


def _regression_machine(seed=0):
    pool = fb.ParamPool(np.float64, seed=seed)
    net = fb.nn_2layer(4, 3, 2, pool)                            # tanh(W2 tanh(W1 x + b1) + b2)
    return fb.Machine(net, fb.Euclidean(), fb.EnergyLoss(), pool)


def _outputs(machine, x):
    machine.inp.x = x
    machine.net.fprop(machine.inp, machine.out)
    return machine.out.x.copy()


def test_bbprop_hessian_equals_brute_force_gauss_newton_diagonal_of_two_layer_net():
    # For L = (1/B) Σ_n ½‖G(x_n) − y_n‖², the Gauss-Newton matrix is (1/B) Σ_n J_nᵀ J_n with J_n =
    # ∂G(x_n)/∂W. In a 2-layer net each weight reaches the outputs through one unit, so bbprop's
    # diagonal propagation drops nothing and must equal diag of that matrix exactly.
    m = _regression_machine()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 4)), rng.standard_normal((5, 2))
    m.curvature(x, y)
    analytic = m.pool.ddx.copy()

    eps, w = 1e-6, m.pool.x
    jac = np.empty((5, 2, w.size))
    for k in range(w.size):
        v = w[k]
        w[k] = v + eps
        up = _outputs(m, x)
        w[k] = v - eps
        down = _outputs(m, x)
        w[k] = v
        jac[:, :, k] = (up - down) / (2 * eps)
    brute = np.einsum("npk,npk->k", jac, jac) / 5                # diag((1/B) Σ_n J_nᵀ J_n)
    np.testing.assert_allclose(analytic, brute, rtol=1e-6, atol=1e-10)


def test_sdlm_rates_from_estimated_hessian():
    m = _regression_machine()
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
    opt = fb.SDLM(m.pool, lr=0.1, mu=0.02)
    m.curvature(x, y)
    h = m.pool.ddx.copy()
    opt.update_hessian(gamma=1.0)
    np.testing.assert_array_equal(opt.rates, 0.1 / (0.02 + h))
    assert (h >= 0).all() and h.max() > 0
    before = m.pool.x.copy()
    m.gradient(x, y)
    opt.step()
    np.testing.assert_allclose(m.pool.x, before - 0.1 / (0.02 + h) * m.pool.dx, rtol=1e-12)


def test_lenet5_hessian_is_nonnegative_and_nonzero_for_every_layer():
    data = load_dataset("digits", val_size=0, limit=64)
    m = build_machine({"model": "lenet5", "input_shape": list(data.image_shape), "n_classes": 10})
    m.n_train = 64
    m.curvature(data.train.x[:32], data.train.y[:32])
    assert (m.pool.ddx >= 0).all()
    for handle, offset, shape in m.pool.handles:
        assert handle.ddx.any(), f"no curvature reached parameter {shape} at offset {offset}"


def test_lenet5_smoke_run_on_digits_slice_learns_far_below_chance():
    data = load_dataset("digits", val_size=0, limit=400, seed=0)
    m = build_machine({"model": "lenet5", "input_shape": list(data.image_shape), "n_classes": 10})
    trainer = fb.Trainer(m, data, optimizer="sdlm", lr=0.002, batch_size=16, epochs=4, hessian_samples=200,
                         progress=False, log=open("/dev/null", "w"))
    before = fb.evaluate(m, data.test, 10).error
    trainer.fit()
    after = fb.evaluate(m, data.test, 10).error
    assert before > 0.6                                           # untrained: near chance (90%)
    assert after < 0.35, f"LeNet-5 test error after 4 epochs on 400 digits: {after:.2%}"
