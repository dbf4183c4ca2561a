"""Adam and AdamW on the flat vector: step by step against torch.optim's formulas, and against torch itself."""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb


def _pool(n: int = 12, seed: int = 0, dtype=np.float64) -> fb.ParamPool:
    pool = fb.ParamPool(dtype, seed=seed)
    pool.alloc(3, n // 3)
    return pool


def _torch_formula(w, grads, lr, betas, eps, weight_decay, decoupled):
    """torch.optim.Adam / AdamW (amsgrad off, maximize off) written out in numpy; yields W after each step."""
    b1, b2 = betas
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        if decoupled:
            w = w * (1 - lr * weight_decay)                     # AdamW: param.mul_(1 − lr·wd)
        else:
            g = g + weight_decay * w                            # Adam: grad.add(param, alpha=wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        yield w, m, v


CONFIGS = [
    pytest.param(fb.Adam, dict(lr=0.01), id="adam"),
    pytest.param(fb.Adam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), id="adam-l2"),
    pytest.param(fb.AdamW, dict(lr=0.01), id="adamw-default-decay"),
    pytest.param(fb.AdamW, dict(lr=0.05, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.3), id="adamw"),
]


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
def test_adam_follows_torch_formulas_step_by_step(cls, kwargs):
    pool = _pool()
    rng = np.random.default_rng(1)
    grads = rng.standard_normal((6, pool.size)) * np.logspace(-3, 1, pool.size)   # scales 1e-3 … 10
    opt = cls(pool, **kwargs)
    defaults = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01 if cls is fb.AdamW else 0.0}
    hyper = {**defaults, **kwargs}
    expected = _torch_formula(pool.x.copy(), grads, hyper["lr"], hyper["betas"], hyper["eps"],
                              hyper["weight_decay"], decoupled=cls is fb.AdamW)
    x_buffer = pool.x
    for step, (g, (w, m, v)) in enumerate(zip(grads, expected), 1):
        pool.dx[...] = g
        opt.step()
        assert opt.t == step
        np.testing.assert_allclose(opt.m, m, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(opt.v, v, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(pool.x, w, rtol=1e-12, atol=1e-14)
    assert pool.x is x_buffer                                   # in place: the handles still see it
    np.testing.assert_array_equal(pool.dx, grads[-1])           # the gradient is read, not consumed


def test_adam_first_step_moves_every_weight_by_lr_against_the_sign_of_its_gradient():
    pool = _pool()
    pool.dx[...] = np.random.default_rng(2).standard_normal(pool.size)
    w = pool.x.copy()
    fb.Adam(pool, lr=0.01, eps=1e-12).step()                    # m̂ = g, √v̂ = |g|: a step of η·sign(g)
    np.testing.assert_allclose(pool.x, w - 0.01 * np.sign(pool.dx), rtol=1e-10)


def test_adamw_decay_is_decoupled_from_the_gradient_scale():
    pool_a, pool_w = _pool(), _pool()
    pool_a.dx[...] = pool_w.dx[...] = 0.0                       # no gradient: only the decay acts
    w = pool_a.x.copy()
    fb.Adam(pool_a, lr=0.1, eps=1e-12, weight_decay=0.5).step()  # coupled: g = cW, normalised: ≈ η sign(W)
    fb.AdamW(pool_w, lr=0.1, weight_decay=0.5).step()           # decoupled: W (1 − ηc)
    np.testing.assert_allclose(pool_w.x, w * (1 - 0.1 * 0.5), rtol=1e-14)
    np.testing.assert_allclose(pool_a.x, w - 0.1 * np.sign(w), rtol=1e-8)


def test_adam_state_round_trip_continues_exactly():
    rng = np.random.default_rng(3)
    grads = rng.standard_normal((5, 12))
    pool, copy_pool = _pool(), _pool()
    opt = fb.AdamW(pool, lr=0.02, weight_decay=0.1)
    for g in grads[:3]:
        pool.dx[...] = g
        opt.step()
    saved = {k: np.array(v) for k, v in opt.state().items()}
    assert set(saved) == {"m", "v", "t"} and int(saved["t"]) == 3
    copy_pool.load(pool.x)
    resumed = fb.AdamW(copy_pool, lr=0.02, weight_decay=0.1)
    resumed.load_state(saved)
    for g in grads[3:]:
        pool.dx[...] = copy_pool.dx[...] = g
        opt.step()
        resumed.step()
    np.testing.assert_array_equal(copy_pool.x, pool.x)
    assert resumed.t == opt.t == 5


def test_adam_set_lr_changes_the_step():
    pool = _pool()
    pool.dx[...] = 1.0
    w = pool.x.copy()
    opt = fb.Adam(pool, lr=0.5, eps=1e-12)
    opt.set_lr(0.01)
    opt.step()
    np.testing.assert_allclose(pool.x, w - 0.01, rtol=1e-10)


def test_adam_trains_a_machine_on_digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    machine = fb.build_machine({"model": "mlp", "hidden": [32], "input_shape": [64], "n_classes": 10})
    before = (machine.predict(x) == y).mean()
    opt = fb.Adam(machine.pool, lr=0.01)
    rng = np.random.default_rng(0)
    for _ in range(3):
        for idx in np.array_split(rng.permutation(len(x)), len(x) // 64):
            machine.gradient(x[idx], y[idx])
            opt.step()
    after = (machine.predict(x) == y).mean()
    assert before < 0.3 and after > 0.9, (before, after)


@pytest.mark.parametrize("make, message", [
    (lambda p: fb.Adam(p, 0.0), r"Adam: expected a learning rate > 0, got 0"),
    (lambda p: fb.Adam(p, 0.1, betas=(0.9, 1.0)),
     r"Adam: expected betas \(β₁, β₂\) each in \[0, 1\), got \(0.9, 1.0\)"),
    (lambda p: fb.AdamW(p, 0.1, betas=(-0.1, 0.9)), r"AdamW: expected betas .* got \(-0.1, 0.9\)"),
    (lambda p: fb.Adam(p, 0.1, eps=0.0), r"Adam: expected eps > 0, got 0"),
    (lambda p: fb.AdamW(p, 0.1, weight_decay=-1.0), r"AdamW: expected weight_decay >= 0, got -1"),
])
def test_bad_adam_hyper_parameters_raise_naming_the_optimizer(make, message):
    with pytest.raises(ValueError, match=message):
        make(_pool())


@pytest.mark.parametrize("cls, kwargs", CONFIGS)
def test_adam_matches_torch_optim(cls, kwargs):
    torch = pytest.importorskip("torch")
    pool = _pool()
    rng = np.random.default_rng(4)
    grads = rng.standard_normal((8, pool.size))
    param = torch.nn.Parameter(torch.tensor(pool.x.copy()))
    reference = getattr(torch.optim, cls.__name__)([param], **kwargs)
    opt = cls(pool, **kwargs)
    for g in grads:
        pool.dx[...] = g
        opt.step()
        param.grad = torch.tensor(g)
        reference.step()
        np.testing.assert_allclose(pool.x, param.detach().numpy(), rtol=1e-12, atol=1e-14)
    state = reference.state[param]
    np.testing.assert_allclose(opt.m, state["exp_avg"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(opt.v, state["exp_avg_sq"].numpy(), rtol=1e-12)
