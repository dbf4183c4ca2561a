"""Data augmentation (fbprop.data.augment) and dropout: the distortions' shapes, strengths and
seeds, the train/inference switch of Dropout, and exact resume of runs that use them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from scipy import ndimage

import fbprop as fb
from fbprop.data import Affine, Elastic, load_dataset, make_transform
from fbprop.train import Trainer
from test_cli import PNG, fail, ok, one_line


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", limit=400)


def images(n=6, c=1, h=12, w=10, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)


# --- shapes, identity, seeds -----------------------------------------------------------------

@pytest.mark.parametrize("transform", [Affine(), Affine(flip=0.5), Elastic(), Elastic(alpha=3, sigma=1)], ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distortions_keep_shape_and_dtype_and_change_the_images(transform, dtype):
    x = images(c=2, dtype=dtype)
    y = transform(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.isfinite(y).all() and not np.allclose(y, x)
    assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6          # bilinear: a convex mix of pixels


@pytest.mark.parametrize("transform", [Affine(shift=0, scale=0, squeeze=0, shear=0), Elastic(alpha=0)], ids=repr)
def test_zero_strength_is_the_identity(transform):
    x = images(c=3)
    np.testing.assert_array_equal(transform(x, np.random.default_rng(0)), x)


@pytest.mark.parametrize("transform", [Affine(flip=0.5), Elastic()], ids=repr)
def test_the_same_seed_gives_the_same_distortions_and_another_seed_others(transform):
    x = images()
    a, b = (transform(x, np.random.default_rng(7)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, transform(x, np.random.default_rng(8)))
    # each image of a batch gets its own distortion: the same image twice comes out different
    twice = transform(np.concatenate([x[:1], x[:1]]), np.random.default_rng(7))
    assert not np.allclose(twice[0], twice[1])


def test_channels_of_one_image_are_distorted_alike():
    x = images(n=3, c=1)
    both = Elastic(alpha=8, sigma=2)(np.concatenate([x, 2 * x], axis=1), np.random.default_rng(3))
    np.testing.assert_allclose(both[:, 1], 2 * both[:, 0], rtol=1e-5, atol=1e-5)


# --- the affine amounts are the ones drawn, within their ranges --------------------------------

def _blob(size=41, sigma=3.0):
    """A Gaussian spot in the middle of a dark image: its moments give the map applied to it."""
    r = np.arange(size) - (size - 1) / 2
    return np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))[None, None]


def _moments(img):
    """Centroid (row, column) about the image centre and the second central moments (rr, cc, rc)."""
    h, w = img.shape
    rows, cols = np.mgrid[0:h, 0:w]
    rows, cols, m = rows - (h - 1) / 2, cols - (w - 1) / 2, img / img.sum()
    mr, mc = (m * rows).sum(), (m * cols).sum()
    return (mr, mc), ((m * (rows - mr) ** 2).sum(), (m * (cols - mc) ** 2).sum(), (m * (rows - mr) * (cols - mc)).sum())


def test_affine_amounts_are_drawn_uniformly_within_the_ranges():
    t = Affine(shift=2, scale=0.1, squeeze=0.2, shear=0.3, flip=0.25)
    a = t.draw(20000, np.random.default_rng(0))
    for key, low, high in (("tx", -2, 2), ("ty", -2, 2), ("s", 0.9, 1.1), ("q", 1 / 1.2, 1.2), ("k", -0.3, 0.3)):
        assert low <= a[key].min() < low + 0.01 * (high - low), key          # the whole range is used
        assert high - 0.01 * (high - low) < a[key].max() <= high, key
    assert abs(a["mirror"].mean() - 0.25) < 0.02
    assert abs(np.log(a["q"]).mean()) < 0.01                                  # squeeze and stretch alike


def test_each_affine_amount_moves_a_spot_by_what_was_drawn():
    x = np.repeat(_blob(), 30, axis=0)
    t = Affine(shift=2, scale=0.1, squeeze=0.1, shear=0.2)
    a = t.draw(30, np.random.default_rng(5))
    y = t(x, np.random.default_rng(5))                           # the same generator: the same amounts
    (r0, c0), (vr0, vc0, _) = _moments(x[0, 0])
    for i in range(30):
        (r, c), (vr, vc, rc) = _moments(y[i, 0])
        s, q, k = a["s"][i], a["q"][i], a["k"][i]
        assert r == pytest.approx(r0 + a["ty"][i], abs=0.02)
        assert c == pytest.approx(c0 + a["tx"][i] + k * (r0 + a["ty"][i]), abs=0.02)   # sheared along its row
        sr, sc = s * q, s / q                                    # height × s·q, width × s/q
        assert vr == pytest.approx(sr ** 2 * vr0, rel=0.03)
        assert rc == pytest.approx(k * vr, rel=0.05, abs=1e-3)   # shear: column' = … + k·row'
        assert vc - k * rc == pytest.approx(sc ** 2 * vc0, rel=0.03)


def test_flip_mirrors_left_to_right():
    x = images(n=4, h=9, w=7)
    y = Affine(shift=0, scale=0, squeeze=0, shear=0, flip=1.0)(x, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x[..., ::-1])


# --- the elastic field --------------------------------------------------------------------------

def test_elastic_field_is_uniform_noise_smoothed_by_a_gaussian_of_sigma_and_scaled_by_alpha():
    t = Elastic(alpha=34, sigma=4)
    field = t.field(3, 28, 28, np.random.default_rng(2))
    noise = 2 * np.random.default_rng(2).random((2, 3, 28, 28), dtype=np.float32) - 1
    reference = 34 * ndimage.gaussian_filter(noise.astype(float), sigma=(0, 0, 4, 4), mode="constant", truncate=3)
    np.testing.assert_allclose(field, reference, rtol=1e-5, atol=1e-4)


def test_elastic_field_is_smooth_and_sigma_sets_how_smooth():
    def roughness(sigma):
        f = Elastic(alpha=10, sigma=sigma).field(50, 28, 28, np.random.default_rng(0))
        steps = np.concatenate([np.diff(f, axis=2).ravel(), np.diff(f, axis=3).ravel()])
        return steps.std() / f.std()
    assert roughness(4) < 0.3                                     # neighbours move almost together
    assert roughness(1) > 2 * roughness(4)
    assert roughness(0.3) > 1.0                                  # next to raw noise (√2)


def test_a_spot_under_an_elastic_distortion_moves_by_the_field_at_its_place():
    t = Elastic(alpha=20, sigma=6)
    x = _blob(size=41, sigma=1.5)
    d = t.field(1, 41, 41, np.random.default_rng(4))
    y = t(x.astype(np.float64), np.random.default_rng(4))
    (r0, c0), _ = _moments(x[0, 0])
    (r, c), _ = _moments(y[0, 0])
    # output pixel p shows input p + d(p): the spot lands near p = centre − d(centre)
    assert r == pytest.approx(r0 - d[0, 0, 20, 20], abs=0.3) and c == pytest.approx(c0 - d[1, 0, 20, 20], abs=0.3)


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: Affine(shift=-1), "Affine: expected shift a number in"),
    (lambda: Affine(scale=1.5), "Affine: expected scale a number in \\[0, 0.9\\], got 1.5"),
    (lambda: Affine(flip=2), "Affine: expected flip"),
    (lambda: Elastic(sigma=0), "Elastic: expected sigma a finite number > 0, got 0"),
    (lambda: Elastic(alpha=float("nan")), "Elastic: expected alpha"),
    (lambda: make_transform("rotate"), "unknown augmentation 'rotate': expected one of none, affine, elastic"),
    (lambda: make_transform("elastic", {"beta": 1}), "augment elastic: unknown argument 'beta'"),
    (lambda: make_transform("affine", {"shift": "big"}), "augment affine: expected shift a number, got 'big'"),
    (lambda: make_transform("none", {"alpha": 3}), "augment none: takes no arguments"),
])
def test_bad_settings_are_refused_naming_them(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("x", [np.zeros((4, 64), np.float32), np.zeros((2, 1, 8, 8), np.int64)], ids=["flat", "int"])
def test_non_image_batches_are_refused(x):
    with pytest.raises(ValueError, match=r"Affine: expected a float batch of images \(n, channels, height, width\)"):
        Affine()(x, np.random.default_rng(0))


def test_make_transform_builds_by_name():
    assert make_transform("none") is None and make_transform(None) is None
    t = make_transform("elastic", {"alpha": 8})
    assert isinstance(t, Elastic) and t.args == {"alpha": 8.0, "sigma": 4.0}


# --- dropout: training mode only inside Machine.noise ------------------------------------------

def dropout_machine(p=0.5, seed=0):
    return fb.build_machine({"model": "mlp", "hidden": [32], "dropout": p, "input_shape": [1, 8, 8],
                             "n_classes": 10, "seed": seed, "dtype": "float64"})


def test_dropout_masks_only_inside_noise_and_scales_the_kept_units():
    drop = fb.Dropout(0.25)
    x, out = fb.State(np.ones((200, 50))), fb.State()
    drop.fprop(x, out)
    np.testing.assert_array_equal(out.x, x.x)                    # no generator: inference, the identity
    drop.rng = np.random.default_rng(0)
    drop.fprop(x, out)
    assert set(np.unique(out.x)) == {0.0, 4 / 3}
    assert abs((out.x == 0).mean() - 0.25) < 0.02 and abs(out.x.mean() - 1) < 0.03


def test_machine_noise_hands_dropout_a_generator_for_the_block_only(digits):
    m = dropout_machine()
    drops = [d for d in fb.machine.leaves(m.net) if isinstance(d, fb.Dropout)]
    assert len(drops) == 1
    x = digits.test.x[:50].astype(np.float64)
    quiet = m.predict(x)
    with m.noise(np.random.default_rng(0)):
        assert drops[0].rng is not None
        m.fprop(x, None)
        noisy = m.out.x.copy()
        m.fprop(x, None)
        assert not np.array_equal(noisy, m.out.x)                # a fresh mask each time
    assert drops[0].rng is None
    np.testing.assert_array_equal(m.predict(x), quiet)           # predict after training: deterministic


def test_a_machine_without_noise_draws_nothing_from_the_generator():
    m = fb.build_machine({"model": "mlp", "hidden": [8], "input_shape": [1, 8, 8], "n_classes": 10})
    rng = np.random.default_rng(0)
    with m.noise(rng):
        pass
    assert rng.random() == np.random.default_rng(0).random()


@pytest.mark.parametrize("p", [1.0, -0.1, True, "half"])
def test_dropout_refuses_a_bad_probability(p):
    with pytest.raises(ValueError, match="Dropout: expected a drop probability p in"):
        fb.Dropout(p)


def test_a_fixed_mask_of_the_wrong_shape_is_refused():
    drop = fb.Dropout(0.5)
    drop.fix_mask(np.ones(3))
    with pytest.raises(ValueError, match=r"Dropout\(p=0.5\): the fixed mask has shape \(3,\), expected"):
        drop.fprop(fb.State(np.ones((2, 4))), fb.State())


def test_lenet_modern_takes_dropout_before_each_linear_layer():
    m = fb.build_machine({"model": "lenet-modern", "dropout": 0.3, "input_shape": [1, 8, 8], "n_classes": 10})
    leaves = list(fb.machine.leaves(m.net))
    kinds = [type(x).__name__ for x in leaves]
    assert kinds.count("Dropout") == 2 and len({id(x) for x in leaves if isinstance(x, fb.Dropout)}) == 2
    assert kinds[kinds.index("Dropout") + 1] == "Linear" and kinds[-3] == "Dropout"
    x, y = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32), np.arange(5)
    with m.noise(np.random.default_rng(1)):                      # a training step: each mask fits its layer
        assert np.isfinite(m.gradient(x, y))


# --- training with distortions and dropout: exact resume ------------------------------------------

@pytest.mark.parametrize("what", ["affine", "elastic", "dropout"])
def test_a_run_interrupted_and_resumed_ends_bit_for_bit_equal(digits, tmp_path, what):
    def trainer(epochs, out):
        m = dropout_machine(p=0.3) if what == "dropout" else dropout_machine(p=0.0)
        transform = make_transform(what) if what != "dropout" else None
        return Trainer(m, digits, optimizer="momentum", lr=0.02, batch_size=16, epochs=epochs, seed=4,
                       transform=transform, out_dir=out, log=io.StringIO())
    whole = trainer(4, tmp_path / "whole")
    whole.fit()
    first = trainer(2, tmp_path / "part")
    first.fit()
    rest = trainer(4, tmp_path / "part2")
    rest.resume(tmp_path / "part" / "checkpoint.npz")
    rest.fit()
    np.testing.assert_array_equal(rest.machine.pool.x, whole.machine.pool.x)
    assert rest.history == whole.history or [r["train_loss"] for r in rest.history] == \
        [r["train_loss"] for r in whole.history]
    # and the distortions changed the training: the same run without them ends elsewhere
    plain = Trainer(dropout_machine(p=0.0), digits, optimizer="momentum", lr=0.02, batch_size=16, epochs=4, seed=4,
                    log=io.StringIO())
    plain.fit()
    assert not np.array_equal(plain.machine.pool.x, whole.machine.pool.x)


def test_trainer_records_the_distortion_in_its_settings(digits):
    t = Trainer(dropout_machine(p=0.0), digits, transform=Elastic(alpha=5), log=io.StringIO())
    assert t.settings()["augment"] == "elastic" and t.settings()["augment_args"] == {"alpha": 5.0, "sigma": 4.0}
    assert "augment" not in Trainer(dropout_machine(p=0.0), digits, log=io.StringIO()).settings()


# --- the command line ---------------------------------------------------------------------------

def test_cli_augment_is_recorded_drawn_and_kept_on_resume(tmp_path):
    run = tmp_path / "run"
    ok("train", "--hidden", "16", "--epochs", "2", "--augment", "elastic", "--augment-arg", "alpha=8",
       "--out", run)
    training = json.loads((run / "config.json").read_text())["training"]
    assert training["augment"] == "elastic" and training["augment_args"] == {"alpha": 8.0, "sigma": 4.0}
    assert (run / "distortions.png").read_bytes()[:8] == PNG
    # resumed with nothing said about augmentation, it goes on distorting as before: the same end as 3 epochs at once
    ok("train", "--resume", run, "--epochs", "3", "--no-plots")
    whole = tmp_path / "whole"
    ok("train", "--hidden", "16", "--epochs", "3", "--augment", "elastic", "--augment-arg", "alpha=8", "--out", whole,
       "--no-plots")
    a = fb.checkpoint.load_checkpoint(run / "checkpoint.npz")[1]
    b = fb.checkpoint.load_checkpoint(whole / "checkpoint.npz")[1]
    np.testing.assert_array_equal(a, b)
    err = fail("train", "--resume", run, "--epochs", "4", "--augment", "affine")
    assert "--resume: setting augment is 'affine' here but 'elastic' in the run" in one_line(err)


def test_cli_without_augment_draws_no_distortion_grid_and_refuses_bad_arguments(tmp_path):
    ok("train", "--hidden", "16", "--epochs", "1", "--out", tmp_path / "plain")
    assert not (tmp_path / "plain" / "distortions.png").exists()
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["training"]["augment"] == "none"
    err = fail("train", "--epochs", "1", "--augment", "affine", "--augment-arg", "alpha=3", "--out", tmp_path / "a")
    assert "augment affine: unknown argument 'alpha' (it takes shift, scale, squeeze, shear, flip)" in one_line(err)
    err = fail("train", "--epochs", "1", "--augment", "affine", "--optimizer", "lbfgs", "--out", tmp_path / "b")
    assert "--augment: lbfgs trains on the fixed full training set" in one_line(err)


def test_cli_dropout_is_a_model_option(tmp_path):
    ok("train", "--hidden", "16", "--dropout", "0.2", "--epochs", "1", "--no-plots", "--out", tmp_path / "d")
    assert json.loads((tmp_path / "d" / "config.json").read_text())["model"]["dropout"] == 0.2
    err = fail("train", "--model", "lenet5", "--dropout", "0.2", "--epochs", "1", "--out", tmp_path / "e")
    assert "--dropout is an option of mlp, lenet-modern" in one_line(err)


def test_cli_logs_the_test_error_per_epoch_only_with_show_test(tmp_path):
    _, quiet = ok("train", "--hidden", "16", "--epochs", "2", "--no-plots", "--out", tmp_path / "q")
    assert "val err" in quiet and "test err" not in quiet
    _, loud = ok("train", "--hidden", "16", "--epochs", "2", "--no-plots", "--show-test", "--out", tmp_path / "l")
    assert loud.count("test err") == 2


# --- recipes: a model's training defaults per data set ------------------------------------------

def test_a_models_recipe_for_the_data_set_is_the_default_and_options_still_override(tmp_path, monkeypatch):
    from fbprop import models
    base = models.MODELS["mlp"]
    recipe = {"optimizer": "momentum", "lr": 0.02, "momentum": 0.8, "epochs": 2, "batch_size": 16,
              "schedule": "cosine", "augment": "affine", "augment_args": {"shift": 1.0}}
    entry = models.ModelEntry(base.build, base.defaults, base.options, "mlp with a recipe",
                              training={"digits": {**recipe, "dropout": 0.1, "val_size": 200},
                                        "default": {"epochs": 1}})
    monkeypatch.setitem(models.MODELS, "mlp-recipe", entry)
    assert models.recipe("mlp-recipe", "mnist") == {"epochs": 1}
    ok("train", "--model", "mlp-recipe", "--hidden", "8", "--no-plots", "--out", tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    training = config["training"]
    assert config["model"]["dropout"] == 0.1 and "dropout" not in training      # a model option: into the spec
    assert config["model"]["val_size"] == 200 and config["data"]["val"] == 200 and "val_size" not in training
    assert {k: training[k] for k in recipe if k != "augment_args"} == {k: v for k, v in recipe.items()
                                                                       if k != "augment_args"}
    assert training["augment_args"] == Affine(shift=1.0).args
    ok("train", "--model", "mlp-recipe", "--hidden", "8", "--no-plots", "--epochs", "1", "--augment", "none",
       "--optimizer", "sgd", "--out", tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    training = config["training"]
    assert config["model"]["dropout"] == 0.1
    ok("train", "--model", "mlp-recipe", "--hidden", "8", "--dropout", "0", "--no-plots", "--out", tmp_path / "c")
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model"]["dropout"] == 0
    assert training["optimizer"] == "sgd" and training["lr"] == 0.05 and "momentum" not in training
    assert training["epochs"] == 1 and training["augment"] == "none" and training["batch_size"] == 16


def test_every_registered_recipe_names_known_settings():
    from fbprop import cli, models
    from fbprop.optim import OPTIMIZERS
    known = {"optimizer", "lr", "batch_size", "hessian_samples", "epochs", "schedule", "patience", "augment",
             "augment_args", "val_size", "test_mirror", "test_shift"}
    for name, entry in models.MODELS.items():
        for dataset, settings in entry.training.items():
            optimizer = OPTIMIZERS[settings.get("optimizer", "sgd")]
            for key in settings:
                assert key in known | set(optimizer.options) | set(entry.options), (name, dataset, key)
            defaults = cli._defaults(name, dataset)
            make_transform(defaults["augment"], defaults["augment_args"])
            fb.train.schedule_factor(defaults["schedule"], 0, defaults["epochs"])
    assert models.recipe("lenet-modern", "fashion-mnist")["val_size"] == 0
    assert models.recipe("mlp", "digits") == {}                    # the README's first command is unchanged
