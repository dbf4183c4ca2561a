"""Optimizers on the flat vector: SGD, momentum, SDLM, L-BFGS, and the lecture's batch / on-line formulas."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb


def _pool(n: int = 6, seed: int = 0) -> fb.ParamPool:
    pool = fb.ParamPool(np.float64, seed=seed)
    pool.alloc(2, n // 2)
    return pool


def test_sgd_step_is_w_minus_lr_dx_exactly():
    pool = _pool()
    rng = np.random.default_rng(1)
    pool.dx[...] = rng.standard_normal(pool.size)
    w, dx = pool.x.copy(), pool.dx.copy()
    x_buffer = pool.x
    fb.SGD(pool, 0.3).step()
    np.testing.assert_array_max_ulp(pool.x, w - 0.3 * dx, maxulp=1)   # axpy may fuse the multiply-add: one rounding
    assert pool.x is x_buffer                                  # updated in place: the handles still see it
    np.testing.assert_array_equal(pool.dx, dx)                 # the gradient is read, not consumed


def test_sgd_momentum_matches_a_hand_loop_over_three_steps():
    pool = _pool()
    rng = np.random.default_rng(2)
    grads = rng.standard_normal((3, pool.size))
    opt = fb.SGD(pool, 0.1, momentum=0.9)
    w, v = pool.x.copy(), np.zeros(pool.size)
    for g in grads:
        pool.dx[...] = g
        opt.step()
        v = 0.9 * v - 0.1 * g                                  # v ← αv − η dx
        w = w + v                                              # W ← W + v
        np.testing.assert_allclose(pool.x, w, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(opt.v, v, rtol=1e-14, atol=1e-15)
    assert set(opt.state()) == {"v"}


def test_sdlm_keeps_a_running_average_of_ddx_and_rates_eta_over_mu_plus_h():
    pool = _pool()
    rng = np.random.default_rng(3)
    eta, mu, gamma = 0.05, 0.1, 0.2
    opt = fb.SDLM(pool, eta, mu=mu, gamma=gamma)
    np.testing.assert_allclose(opt.rates, eta / mu)            # h starts at 0
    h = np.zeros(pool.size)
    for _ in range(3):
        pool.ddx[...] = rng.uniform(0, 2, pool.size)
        opt.update_hessian()
        h = (1 - gamma) * h + gamma * pool.ddx                 # h ← (1−γ)h + γ ddx
        np.testing.assert_allclose(opt.h, h, rtol=1e-14)
        np.testing.assert_allclose(opt.rates, eta / (mu + h), rtol=1e-14)
    pool.dx[...] = rng.standard_normal(pool.size)
    w = pool.x.copy()
    opt.step()
    np.testing.assert_allclose(pool.x, w - eta / (mu + h) * pool.dx, rtol=1e-14)  # W − rates·dx


def test_sdlm_update_hessian_with_gamma_one_replaces_h_and_set_lr_rescales_rates():
    pool = _pool()
    opt = fb.SDLM(pool, 0.01, mu=0.5)
    opt.update_hessian(np.full(pool.size, 3.0))
    opt.update_hessian(np.full(pool.size, 1.5), gamma=1.0)
    np.testing.assert_allclose(opt.h, 1.5)
    opt.set_lr(0.2)
    np.testing.assert_allclose(opt.rates, 0.2 / 2.0)


def test_lbfgs_reaches_the_least_squares_solution():
    rng = np.random.default_rng(4)
    x_data, y_data = rng.standard_normal((30, 4)), rng.standard_normal((30, 2))
    pool = fb.ParamPool(np.float64)
    linear, euclidean = fb.Linear(4, 2, pool), fb.Euclidean()
    x, y, h, energy = fb.State(x_data), fb.State(y_data), fb.State(), fb.State()

    def objective() -> float:                                  # Σ_i ½‖W x_i − y_i‖²
        pool.clear_dx()
        h.clear_dx()
        linear.fprop(x, h)
        euclidean.fprop(h, y, energy)
        energy.dx = np.ones(len(x_data))
        euclidean.bprop(h, y, energy)
        linear.bprop(x, h)
        return float(energy.x.sum())

    seen = []
    result = fb.lbfgs(pool, objective, max_iter=200, tol=1e-12, callback=lambda i, f: seen.append((i, f)))
    w_star = np.linalg.lstsq(x_data, y_data, rcond=None)[0].T
    np.testing.assert_allclose(linear.w.x, w_star, atol=1e-6)
    best = 0.5 * ((x_data @ w_star.T - y_data) ** 2).sum()
    assert result["fun"] == pytest.approx(best, rel=1e-10)
    assert result["nit"] == len(seen) > 0 and [i for i, _ in seen] == list(range(1, len(seen) + 1))


@pytest.mark.parametrize("make, message", [
    (lambda p: fb.SGD(p, 0.0), r"SGD: expected a learning rate > 0, got 0"),
    (lambda p: fb.SGD(p, -0.1), r"SGD: expected a learning rate > 0, got -0.1"),
    (lambda p: fb.SGD(p, 0.1, momentum=1.0), r"SGD: expected 0 <= momentum < 1, got 1"),
    (lambda p: fb.SGD(p, 0.1, momentum=-0.5), r"SGD: expected 0 <= momentum < 1, got -0.5"),
    (lambda p: fb.SDLM(p, 0.0), r"SDLM: expected a learning rate > 0, got 0"),
    (lambda p: fb.SDLM(p, 0.1, mu=0.0), r"SDLM: expected mu > 0, got 0"),
    (lambda p: fb.SDLM(p, 0.1, mu=-1.0), r"SDLM: expected mu > 0, got -1"),
    (lambda p: fb.SDLM(p, 0.1, gamma=0.0), r"SDLM: expected 0 < gamma <= 1, got 0"),
    (lambda p: fb.SGD(p, float("nan")), r"SGD: expected a learning rate > 0, got nan"),
])
def test_bad_hyper_parameters_raise_naming_the_optimizer(make, message):
    with pytest.raises(ValueError, match=message):
        make(_pool())


# --- the lecture's batch and on-line gradient descent ----------------------------------------

P, LAM, ETA = 5, 0.3, 0.2


def _data():
    rng = np.random.default_rng(5)
    return rng.standard_normal((P, 3)), rng.uniform(-0.8, 0.8, (P, 2))


def _net():
    pool = fb.ParamPool(np.float64, seed=6)
    linear, tanh = fb.Linear(3, 2, pool), fb.Tanh(2, pool)
    tanh.b.x[...] = [0.1, -0.2]
    return pool, linear, tanh


def _hand_gradient(w, b, x, y):
    """Σ_i ∂L_i/∂W and ∂L_i/∂b for L_i = ½‖tanh(W x_i + b) − y_i‖², written out with numpy."""
    u = x @ w.T + b
    out = np.tanh(u)
    d_u = (out - y) * (1 - out**2)                             # ∂L/∂u = (out − y) tanh'(u)
    return d_u.T @ x, d_u.sum(axis=0)


def _fbprop_step(pool, linear, tanh, x_data, y_data, loss_scale, reg_scale, lr):
    """pool.clear_dx(); fprop; seed the per-sample loss dx; bprop; L2.bprop(pool, scale); SGD step."""
    x, y = fb.State(x_data), fb.State(y_data)
    a, out, energy, loss = fb.State(), fb.State(), fb.State(), fb.State()
    euclidean, energy_loss = fb.Euclidean(), fb.EnergyLoss()
    pool.clear_dx()
    linear.fprop(x, a)
    tanh.fprop(a, out)
    euclidean.fprop(out, y, energy)
    energy_loss.fprop(energy, None, loss)
    loss.dx = np.full(len(x_data), loss_scale)
    energy_loss.bprop(energy, None, loss)
    euclidean.bprop(out, y, energy)
    tanh.bprop(a, out)
    linear.bprop(x, a)
    fb.L2(LAM).bprop(pool, scale=reg_scale)
    fb.SGD(pool, lr).step()


def test_batch_gradient_descent_follows_the_lecture_formula_step_by_step():
    x_data, y_data = _data()
    pool, linear, tanh = _net()
    w, b = linear.w.x.copy(), tanh.b.x.copy()
    for _ in range(3):
        g_w, g_b = _hand_gradient(w, b, x_data, y_data)
        # W ← W − (η/P)[∂Σ_i L_i/∂W + λ ∂H/∂W], H = ½‖W‖² over every parameter, biases included
        w = w - ETA / P * (g_w + LAM * w)
        b = b - ETA / P * (g_b + LAM * b)
        _fbprop_step(pool, linear, tanh, x_data, y_data, 1 / P, 1 / P, ETA)
        np.testing.assert_allclose(linear.w.x, w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(tanh.b.x, b, rtol=1e-12, atol=1e-14)
    assert not np.allclose(w, _net()[1].w.x)                   # it moved


def test_online_gradient_descent_follows_the_lecture_formula():
    x_data, y_data = _data()
    pool, linear, tanh = _net()
    w, b = linear.w.x.copy(), tanh.b.x.copy()
    for i in (2, 0, 4):
        g_w, g_b = _hand_gradient(w, b, x_data[i:i + 1], y_data[i:i + 1])
        # W ← W − η[∂L_i/∂W + (λ/P) ∂H/∂W]
        w = w - ETA * (g_w + LAM / P * w)
        b = b - ETA * (g_b + LAM / P * b)
        _fbprop_step(pool, linear, tanh, x_data[i:i + 1], y_data[i:i + 1], 1.0, 1 / P, ETA)
        np.testing.assert_allclose(linear.w.x, w, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(tanh.b.x, b, rtol=1e-12, atol=1e-14)


# the registry -------------------------------------------------------------------------------------
class SignSGD(fb.Optimizer):
    """W ← W − η·scale·sign(dx): an optimizer defined outside fbprop, to add through the registry."""

    def __init__(self, pool, lr, scale):
        super().__init__(pool, lr)
        self.scale = scale

    def step(self):
        self.pool.x -= self.lr * self.scale * np.sign(self.pool.dx)


@pytest.fixture
def sign_sgd():
    from fbprop.optim import OPTIMIZERS, OptimizerEntry, register_optimizer
    register_optimizer("sign", OptimizerEntry(lambda pool, lr, scale: SignSGD(pool, lr, scale), 0.01,
                                              options={"scale": 1.0}, help="sign of the gradient"))
    yield
    del OPTIMIZERS["sign"]


def test_an_optimizer_added_to_the_registry_trains_from_python_and_the_command_line(sign_sgd, tmp_path):
    import json

    from fbprop import cli
    from fbprop.optim import make_optimizer
    pool = fb.ParamPool(np.float64)
    opt = make_optimizer("sign", pool, scale=0.5)
    assert isinstance(opt, SignSGD) and opt.lr == 0.01 and opt.scale == 0.5
    assert cli.main(["train", "--hidden", "16", "--no-plots", "--epochs", "2", "--optimizer", "sign",
                     "--optimizer-arg", "scale=0.5", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["training"]["optimizer"] == "sign" and config["training"]["scale"] == 0.5
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert history[-1]["val_error"] < 0.5                        # chance is 0.9


def test_unknown_optimizer_and_unknown_option_are_value_errors_naming_them():
    from fbprop.optim import make_optimizer
    pool = fb.ParamPool(np.float64)
    with pytest.raises(ValueError, match="unknown optimizer 'adadelta': expected one of sgd, momentum"):
        make_optimizer("adadelta", pool)
    with pytest.raises(ValueError, match="optimizer 'sgd': unknown option 'momentum' \\(it takes no options\\)"):
        make_optimizer("sgd", pool, momentum=0.9)


def test_every_registered_optimizer_builds_with_its_defaults():
    from fbprop.optim import OPTIMIZERS, make_optimizer
    pool = fb.ParamPool(np.float64)
    fb.Linear(3, 2, pool)
    for name, entry in OPTIMIZERS.items():
        opt = make_optimizer(name, pool)
        assert opt.lr == entry.lr and entry.updater in ("minibatch", "full-batch", "lbfgs"), name
