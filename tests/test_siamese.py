"""The siamese energy machine: pairs, shared weights, training from Python and the command line, checkpoints."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import fbprop as fb
from fbprop.checkpoint import load_checkpoint
from fbprop.cli import main
from fbprop.models import build_machine
from fbprop.siamese import (
    PairArray,
    branch_of,
    build_siamese,
    draw_pairs,
    embed,
    pair_dataset,
    train_siamese,
)

pytest.importorskip("sklearn")


def test_draw_pairs_gives_half_same_class_pairs_of_two_different_samples():
    labels = np.repeat(np.arange(5), [3, 2, 7, 4, 4])
    pairs, y = draw_pairs(labels, 20_000, np.random.default_rng(0))
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    np.testing.assert_array_equal(same, y == 0)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert abs(y.mean() - 0.5) < 0.02
    # the partner of a same-class pair is uniform over the rest of its class
    partners = pairs[(y == 0) & (pairs[:, 0] == 2)][:, 1]          # sample 2 is in class 0: samples 0, 1, 2
    assert set(partners) == {0, 1}
    with pytest.raises(ValueError, match=r"draw_pairs: expected at least 2 classes of at least 2 samples each"):
        draw_pairs(np.array([0, 0, 1]), 4, np.random.default_rng(0))


def test_pair_array_builds_rows_on_demand():
    images = np.arange(12.0).reshape(6, 1, 2)
    pairs = np.array([[0, 1], [5, 2], [3, 3]])
    x = PairArray(images, pairs)
    assert x.shape == (3, 2, 1, 2) and len(x) == 3
    np.testing.assert_array_equal(x[np.array([1])], [[images[5], images[2]]])
    np.testing.assert_array_equal(np.asarray(x)[2], [images[3], images[3]])


def test_the_two_branches_share_one_set_of_parameters():
    machine = build_siamese({"input_shape": [1, 8, 8], "hidden": [16], "dim": 2, "dtype": "float64"})
    first, second = (n.module for n in machine.network.nodes[1:3])
    assert first is not second
    assert [id(p) for p in first.params()] == [id(p) for p in second.params()]
    assert machine.pool.size == 64 * 16 + 16 + 16 * 2 + 2
    x = np.random.default_rng(0).standard_normal((3, 2, 1, 8, 8))
    machine.fprop(x, np.array([0, 1, 1]))
    g1, g2 = embed(machine, x[:, 0]), embed(machine, x[:, 1])
    np.testing.assert_allclose(machine.energies.x, np.linalg.norm(g1 - g2, axis=1), rtol=1e-12)
    report = fb.gradcheck(machine.network, x[:2], samples=6)      # first and second order
    assert report.ok


def test_training_from_python_learns_a_useful_embedding_of_digits(tmp_path):
    result = train_siamese("digits", hidden=[64, 32], epochs=2, pairs=30_000, seed=0, out_dir=tmp_path,
                           log=io.StringIO())
    assert result["knn_test_accuracy"] >= 0.85                   # 10 classes, chance 10%
    history = result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "embedding.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["knn_test_accuracy"] == result["knn_test_accuracy"]


def test_a_checkpoint_rebuilds_the_same_siamese_machine(tmp_path):
    result = train_siamese("digits", hidden=[32], epochs=1, pairs=2000, seed=3, out_dir=tmp_path, plot=False,
                           log=io.StringIO())
    spec, params, _, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    assert spec["model"] == "siamese"
    machine = build_machine(spec)
    machine.pool.load(params)
    x = fb.data.load_dataset("digits").test.x[:20]
    np.testing.assert_array_equal(embed(machine, x), embed(result["machine"], x))
    assert repr(branch_of(machine)) == repr(branch_of(result["machine"]))


def test_command_line_trains_then_reloads_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["siamese", "--data", "digits", "--hidden", "32", "--epochs", "1", "--pairs", "3000",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    trained = json.loads((out / "result.json").read_text())["knn_test_accuracy"]
    assert f"5-NN test accuracy in the learned 2-D space {100 * trained:.2f}%" in printed
    assert main(["siamese", "--eval", str(out)]) == 0
    reloaded = json.loads(capsys.readouterr().out)
    assert reloaded["knn_test_accuracy"] == trained


def test_command_line_refuses_an_unknown_dataset_in_one_line(capsys):
    assert main(["siamese", "--data", "/nonexistent-dir", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fbprop siamese: error:") and err.count("\n") == 1


def test_pair_dataset_has_two_classes_and_fixed_test_pairs():
    images = fb.data.load_dataset("digits", val_size=0)
    a, b = pair_dataset(images, 1000, test_pairs=300, seed=1), pair_dataset(images, 1000, test_pairs=300, seed=1)
    assert a.n_classes == 2 and a.image_shape == (2, 1, 8, 8) and len(a.val) == 0
    np.testing.assert_array_equal(a.test.x.pairs, b.test.x.pairs)
    assert set(np.unique(a.train.y)) == {0, 1}


def test_siamese_training_follows_pytorch_step_for_step_in_float64():
    torch = pytest.importorskip("torch")
    images = fb.data.load_dataset("digits", val_size=0, dtype=np.float64)
    machine = build_siamese({"input_shape": [1, 8, 8], "hidden": [32, 16], "dtype": "float64"})
    layers = [m for m in branch_of(machine).modules if m.params()]          # Linear, Tanh, Linear, Tanh, Linear, Bias
    g = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 16), torch.nn.Tanh(),
                            torch.nn.Linear(16, 2)).double()
    with torch.no_grad():
        for i, lin in enumerate((g[0], g[2], g[4])):
            lin.weight.copy_(torch.from_numpy(layers[2 * i].w.x))
            lin.bias.copy_(torch.from_numpy(layers[2 * i + 1].b.x))
    ours, theirs = fb.SGD(machine.pool, 0.01, momentum=0.9), torch.optim.SGD(g.parameters(), lr=0.01, momentum=0.9)
    pairs, y = draw_pairs(images.train.y, 64 * 100, np.random.default_rng(0))
    x = torch.from_numpy(images.train.x.reshape(len(images.train.x), -1))
    for i in range(0, len(y), 64):
        p, t = pairs[i:i + 64], torch.from_numpy(y[i:i + 64].astype(np.float64))
        d = torch.linalg.vector_norm(g(x[p[:, 0]]) - g(x[p[:, 1]]), dim=1)
        loss = ((1 - t) * 0.5 * d**2 + t * 0.5 * torch.clamp(1.0 - d, min=0) ** 2).mean()
        theirs.zero_grad()
        loss.backward()
        theirs.step()
        assert machine.gradient(PairArray(images.train.x, p)[:], y[i:i + 64]) == pytest.approx(loss.item(), rel=1e-12)
        ours.step()
    np.testing.assert_allclose(layers[0].w.x, g[0].weight.detach().numpy(), rtol=1e-9, atol=1e-12)
