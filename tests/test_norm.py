"""GroupNorm against its formula; the modern convnet with group normalisation.

(The finite-difference checks of bprop and bbprop are in tests/cases_conv.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import fbprop as fb
from fbprop.cli import main


def _fprop(module, x):
    out = fb.State()
    module.fprop(fb.State(x), out)
    return out.x


def test_group_norm_is_the_formula_per_sample_and_group():
    rng = np.random.default_rng(0)
    m = fb.GroupNorm(6, 3, fb.ParamPool(np.float64), eps=1e-5)
    m.gamma.x[:] = rng.uniform(0.5, 2, 6)
    m.beta.x[:] = rng.standard_normal(6)
    x = 3 + 2 * rng.standard_normal((4, 6, 5, 5))
    y = _fprop(m, x)
    groups = x.reshape(4, 3, -1)                                 # each sample: 3 groups of 2 maps
    xhat = (groups - groups.mean(-1, keepdims=True)) / np.sqrt(groups.var(-1, keepdims=True) + 1e-5)
    want = xhat.reshape(4, 6, 5, 5) * m.gamma.x[:, None, None] + m.beta.x[:, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_group_norm_with_unit_gain_gives_each_group_mean_0_and_variance_1():
    m = fb.GroupNorm(4, 2, fb.ParamPool(np.float64), eps=1e-12)
    y = _fprop(m, np.random.default_rng(1).uniform(-5, 9, (3, 4, 6)))
    g = y.reshape(3, 2, -1)
    np.testing.assert_allclose(g.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(g.var(-1), 1, atol=1e-9)


def test_group_norm_of_a_sample_does_not_depend_on_the_rest_of_the_batch():
    """No batch statistics and no running state: training and inference are the same function."""
    m = fb.GroupNorm(4, 4, fb.ParamPool(np.float32))
    x = np.random.default_rng(2).standard_normal((5, 4, 3, 3)).astype(np.float32)
    whole = _fprop(m, x).copy()
    for i in range(5):
        np.testing.assert_array_equal(_fprop(m, x[i:i + 1])[0], whole[i])
    assert whole.dtype == np.float32


@pytest.mark.parametrize("args, message", [
    ((6, 4), "expected a number of groups that divides 6 channels, got 4"),
    ((6, 0), "expected a number of groups that divides 6 channels, got 0"),
    ((0, 1), "expected channels >= 1, got 0"),
])
def test_group_norm_refuses_bad_sizes_in_one_line(args, message):
    with pytest.raises(ValueError, match=message):
        fb.GroupNorm(*args, fb.ParamPool(np.float32))


def test_group_norm_names_the_expected_channels():
    m = fb.GroupNorm(4, 2, fb.ParamPool(np.float32))
    with pytest.raises(ValueError, match=r"GroupNorm\(4, groups=2\): expected input of shape \(n, 4, \.\.\.\), "
                                         r"got \(2, 3, 5, 5\)"):
        _fprop(m, np.zeros((2, 3, 5, 5), np.float32))


def test_lenet_modern_puts_a_group_norm_after_each_convolution():
    pool = fb.ParamPool(np.float32)
    net = fb.lenet_modern(pool, size=8, norm_groups=8)
    kinds = [type(m).__name__ for m in net.modules]
    assert kinds[:8] == ["Conv2d", "GroupNorm", "ReLU", "MaxPool", "Conv2d", "GroupNorm", "ReLU", "MaxPool"]
    assert [m.groups for m in net.modules if isinstance(m, fb.GroupNorm)] == [8, 8]
    with pytest.raises(ValueError, match="norm_groups 0 \\(none\\) or a divisor of both maps 32 and 64, got 5"):
        fb.lenet_modern(fb.ParamPool(np.float32), size=8, norm_groups=5)


def test_norm_groups_trains_lenet_modern_from_the_command_line_and_is_refused_for_mlp(tmp_path, capsys):
    assert main(["train", "--model", "lenet-modern", "--norm-groups", "4", "--epochs", "2", "--limit", "300",
                 "--no-plots", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    assert '"norm_groups": 4' in (tmp_path / "run" / "config.json").read_text()
    assert main(["eval", str(tmp_path / "run" / "checkpoint.npz")]) == 0
    capsys.readouterr()
    assert main(["train", "--model", "mlp", "--norm-groups", "4", "--out", str(tmp_path / "no")]) == 2
    assert "--norm-groups is an option of lenet-modern, lenet-wide, not of mlp" in capsys.readouterr().err
