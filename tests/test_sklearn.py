"""fbprop.sklearn: scikit-learn's own estimator checks, model selection tools, and what the estimators promise."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import fbprop as fb
from fbprop.sklearn import EnergyClassifier, EnergyRegressor

SMALL = {"hidden": (16,), "epochs": 30}


# Every check of sklearn.utils.estimator_checks.check_estimator, one test each, none expected to fail.
@parametrize_with_checks([EnergyClassifier(**SMALL), EnergyRegressor(**SMALL)])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.data[:600], d.target[:600], d.data[600:900], d.target[600:900]


def test_pipeline_grid_search_on_two_processes_and_cross_val_score(digits):
    x, y, x_test, y_test = digits
    pipe = make_pipeline(MinMaxScaler(), EnergyClassifier(hidden=(32,), epochs=15, random_state=0))
    search = GridSearchCV(pipe, {"energyclassifier__lr": [1e-4, 3e-3]}, cv=3, n_jobs=2).fit(x, y)
    assert search.best_params_ == {"energyclassifier__lr": 3e-3}     # 15 epochs at 1e-4 barely move
    assert search.cv_results_["mean_test_score"][1] > search.cv_results_["mean_test_score"][0] + 0.1
    assert search.score(x_test, y_test) > 0.85
    scores = cross_val_score(EnergyClassifier(hidden=(32,), epochs=15, lr=3e-3, random_state=0), x, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.75                  # chance: 0.1


def test_predict_proba_is_the_gibbs_distribution_of_the_machines_energies(digits):
    x, y, x_test, _ = digits
    clf = EnergyClassifier(hidden=(16,), epochs=10, loss_args={"beta": 0.5}, random_state=0).fit(x, y)
    e = clf.energies(x_test)
    p = np.exp(-0.5 * (e - e.min(axis=1, keepdims=True)))
    np.testing.assert_allclose(clf.predict_proba(x_test), p / p.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(clf.predict_log_proba(x_test), np.log(clf.predict_proba(x_test)), atol=1e-10)
    assert (clf.classes_[clf.predict_proba(x_test).argmax(axis=1)] == clf.predict(x_test)).all()
    hinge = EnergyClassifier(hidden=(16,), epochs=10, lr=3e-3, loss="hinge", random_state=0).fit(x, y)
    assert hinge.score(x_test, digits[3]) > 0.8                 # probabilities at β = 1 still rank as predict does
    assert (hinge.classes_[hinge.predict_proba(x_test).argmax(axis=1)] == hinge.predict(x_test)).all()


def test_string_labels_map_back_and_unknown_labels_are_refused():
    x = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + np.random.default_rng(0).normal(0, 0.1, (40, 2))
    y = np.array(["cat"] * 20 + ["dog"] * 20)
    clf = EnergyClassifier(**SMALL, random_state=0).fit(x, y)
    assert clf.classes_.tolist() == ["cat", "dog"] and (clf.predict(x) == y).all()
    with pytest.raises(ValueError, match="label 'cow' is not one of the classes"):
        clf.partial_fit(x[:2], np.array(["cow", "dog"]))


def test_same_random_state_same_weights_another_one_others(digits):
    x, y = digits[0][:200], digits[1][:200]
    a, b, c = (EnergyClassifier(hidden=(8,), epochs=2, random_state=s).fit(x, y) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.machine_.pool.x, b.machine_.pool.x)
    assert not np.array_equal(a.machine_.pool.x, c.machine_.pool.x)


def test_partial_fit_trains_one_epoch_a_call_and_keeps_the_optimizer_state(digits):
    x, y, x_test, y_test = digits
    clf = EnergyClassifier(hidden=(32,), lr=3e-3, random_state=0)
    with pytest.raises(ValueError, match="first call needs classes="):
        clf.partial_fit(x, y)
    clf.partial_fit(x[:300], y[:300], classes=np.arange(10))
    first = clf.score(x_test, y_test)
    for _ in range(5):
        clf.partial_fit(x, y)
    assert clf.n_iter_ == 6 and len(clf.history_) == 6
    assert clf.score(x_test, y_test) > first + 0.1
    assert int(clf._optimizer_state["t"]) == 10 + 5 * 19           # Adam's step count carried over (batches of 32)


def test_warm_start_continues_and_cold_start_starts_over(digits):
    x, y = digits[0], digits[1]
    warm = EnergyClassifier(hidden=(16,), epochs=3, warm_start=True, random_state=0).fit(x, y)
    machine, after3 = warm.machine_, warm.machine_.pool.x.copy()
    warm.fit(x, y)
    assert warm.machine_ is machine and warm.n_iter_ == 6 and not np.array_equal(after3, machine.pool.x)
    six = EnergyClassifier(hidden=(16,), epochs=6, random_state=0).fit(x, y)
    cold = EnergyClassifier(hidden=(16,), epochs=3, random_state=0).fit(x, y).fit(x, y)
    np.testing.assert_array_equal(cold.machine_.pool.x, after3)   # a refit without warm_start is a fresh fit
    assert cold.n_iter_ == 3 and six.n_iter_ == 6


def test_early_stopping_holds_out_a_stratified_fraction_and_keeps_the_best_epoch(digits):
    x, y = digits[0], digits[1]
    clf = EnergyClassifier(hidden=(32,), lr=0.02, epochs=200, early_stopping=True, validation_fraction=0.2,
                           n_iter_no_change=3, random_state=0).fit(x, y)
    assert clf.n_iter_ < 200
    errors = [r["val_error"] for r in clf.history_]
    assert clf.best_validation_error_ == min(errors)
    assert errors.index(min(errors)) <= len(errors) - 1 - 3      # stopped 3 epochs after its best one
    assert all(r["train_loss"] > 0 for r in clf.history_) and "val_loss" in clf.history_[0]
    with pytest.raises(ValueError, match="validation_fraction in \\(0, 1\\)"):
        EnergyClassifier(early_stopping=True, validation_fraction=1.5).fit(x, y)


def test_verbose_prints_the_trainers_lines_and_is_silent_by_default(digits, capsys):
    x, y = digits[0][:100], digits[1][:100]
    EnergyClassifier(hidden=(8,), epochs=2).fit(x, y)
    assert capsys.readouterr() == ("", "")
    EnergyClassifier(hidden=(8,), epochs=2, verbose=True).fit(x, y)
    out = capsys.readouterr().out.splitlines()
    assert [line[:9] for line in out] == ["epoch   1", "epoch   2"]


def test_any_registry_model_a_machine_or_a_builder(digits):
    x, y, x_test, y_test = digits
    conv = EnergyClassifier("lenet-modern", input_shape=(1, 8, 8), epochs=3, lr=3e-3, random_state=0).fit(x, y)
    assert conv.score(x_test, y_test) > 0.8
    assert conv.machine_.spec["model"] == "lenet-modern" and conv.machine_.spec["input_shape"] == [1, 8, 8]

    def builder(shape, k, seed):
        return fb.build_machine({"model": "mlp", "hidden": [12], "input_shape": list(shape), "n_classes": k,
                                 "seed": seed, "dtype": "float32", "loss": "hinge"})
    built = EnergyClassifier(builder, epochs=10, lr=3e-3, random_state=0).fit(x, y)
    assert built.machine_.pool.dtype == np.float32 and built.score(x_test, y_test) > 0.8
    template = builder((64,), 10, 3)
    start = template.pool.x.copy()
    copied = EnergyClassifier(template, epochs=10, lr=3e-3).fit(x, y)
    np.testing.assert_array_equal(template.pool.x, start)        # the template is copied, never trained
    assert copied.score(x_test, y_test) > 0.8
    with pytest.raises(ValueError, match="input_shape \\(1, 7, 7\\) holds 49 values, but X has 64 features"):
        EnergyClassifier("lenet-modern", input_shape=(1, 7, 7)).fit(x, y)
    with pytest.raises(TypeError, match="expected model a registry name, a Machine or a callable"):
        EnergyClassifier(model=3).fit(x, y)
    with pytest.raises(TypeError, match="expected the model builder to return a Machine, got dict"):
        EnergyClassifier(model=lambda shape, k, seed: {}).fit(x, y)
    with pytest.raises(ValueError, match="expected a machine of a regression"):
        EnergyRegressor(builder).fit(x, y.astype(float))
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        EnergyClassifier("resnet").fit(x, y)


def test_the_trained_machine_saves_loads_and_pickles(digits, tmp_path):
    x, y, x_test, _ = digits
    clf = EnergyClassifier(hidden=(16,), epochs=5, random_state=0).fit(x, y)
    fb.save(clf.machine_, tmp_path / "m.npz")
    loaded = fb.load(tmp_path / "m.npz")
    inputs = clf._inputs(x_test)
    np.testing.assert_array_equal(loaded.proba(inputs), clf.predict_proba(x_test))
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(x_test), clf.predict_proba(x_test))
    again.partial_fit(x, y)                                      # a copy trains, the original stays
    assert not np.array_equal(again.machine_.pool.x, clf.machine_.pool.x)


def test_regressor_fits_single_and_multiple_targets_in_their_units():
    x, y = make_regression(300, 5, n_targets=2, noise=1.0, random_state=0)
    y = y * 100 + 5000                                           # far from standardised: the estimator scales
    reg = EnergyRegressor(hidden=(32,), epochs=60, lr=3e-3, random_state=0).fit(x, y)
    assert reg.predict(x).shape == (300, 2) and reg.score(x, y) > 0.95
    assert reg.machine_.spec["task"] == "regression" and repr(reg.machine_.energy) == "Euclidean()"
    one = EnergyRegressor(hidden=(32,), epochs=60, lr=3e-3, random_state=0).fit(x, y[:, 0])
    assert one.predict(x).shape == (300,) and one.score(x, y[:, 0]) > 0.95
    rmse = np.sqrt(np.mean((one.predict(x) - y[:, 0]) ** 2))
    assert rmse == pytest.approx(one.history_[-1]["train_rmse"] * one.y_scale_[0], rel=0.2)
    early = EnergyRegressor(hidden=(32,), epochs=300, lr=3e-3, early_stopping=True, n_iter_no_change=5,
                            random_state=0).fit(x, y[:, 0])
    assert early.best_validation_error_ == min(r["val_rmse"] for r in early.history_)
    with pytest.raises(ValueError, match="expected 2 targets per sample as in the first fit, got 1"):
        reg.partial_fit(x, y[:, 0])


def test_the_log_sink_is_not_kept(digits):
    clf = EnergyClassifier(hidden=(4,), epochs=1).fit(digits[0][:50], digits[1][:50])
    assert not any(isinstance(v, io.StringIO) for v in vars(clf).values())
