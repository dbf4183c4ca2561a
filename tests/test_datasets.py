"""Data sets: shapes, splits, standardisation, lookup of IDX directories, mini-batches."""

import os

import numpy as np
import pytest

from fbprop.data import DATASETS, Dataset, Split, batches, load_dataset, write_idx

FASHION = "/usr/share/datasets/fashion-mnist"
STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def write_four(directory, n_train=50, n_test=20, size=6, n_classes=4, gz=True, seed=0):
    """A tiny IDX data set; returns its raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
              (np.arange(n_train) % n_classes).astype(np.uint8),
              rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
              (np.arange(n_test) % n_classes).astype(np.uint8)]
    os.makedirs(directory, exist_ok=True)
    for stem, array in zip(STEMS, arrays, strict=True):
        write_idx(os.path.join(directory, stem + (".gz" if gz else "")), array)
    return arrays


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_dtypes_and_split_sizes(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1293, 144, 360)
    assert digits.image_shape == (1, 8, 8) and digits.n_classes == 10
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == np.float32 and split.x.flags.c_contiguous
        assert split.x.shape == (len(split), 1, 8, 8)
        assert split.y.dtype == np.int64 and split.y.shape == (len(split),)
        assert split.y.min() >= 0 and split.y.max() < 10


def test_digits_train_split_is_standardised(digits):
    assert abs(digits.train.x.mean()) < 1e-5
    assert abs(digits.train.x.std() - 1) < 1e-5
    assert abs(digits.val.x.mean()) < 0.2 and abs(digits.test.x.mean()) < 0.2


def test_digits_mean_and_std_are_those_of_the_unit_scaled_train_pixels(digits):
    # Undoing x' = (x - mean) / std must give the original pixels 0..16 over 16.
    pixels = (digits.test.x * digits.std + digits.mean) * 16
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-4)
    assert 0 <= pixels.min() and pixels.max() <= 16


def test_digits_splits_partition_all_samples(digits):
    from sklearn.datasets import load_digits

    raw = load_digits().images.reshape(1797, -1) / 16
    splits = (digits.train, digits.val, digits.test)
    ours = np.concatenate([s.x.reshape(len(s), -1) for s in splits]) * digits.std + digits.mean

    def rows(a):
        return sorted(map(tuple, np.round(a * 16).astype(int)))

    assert rows(ours) == rows(raw)


def test_same_seed_same_split_other_seed_other_val_same_test(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(again.val.x, digits.val.x)
    np.testing.assert_array_equal(again.train.y, digits.train.y)
    assert not np.array_equal(other.val.x, digits.val.x)
    assert len(other.val) == len(digits.val)
    # The test split is fixed; only its standardisation follows the train split.
    np.testing.assert_allclose(other.test.x * other.std + other.mean,
                               digits.test.x * digits.std + digits.mean, atol=1e-5)


@pytest.mark.parametrize(("val_size", "n_val"), [(0, 0), (100, 100), (0.25, 359), (0.5, 718)])
def test_val_size_count_or_fraction(val_size, n_val):
    ds = load_dataset("digits", val_size=val_size)
    assert len(ds.val) == n_val and len(ds.train) == 1437 - n_val
    assert ds.val.x.shape == (n_val, 1, 8, 8)


@pytest.mark.parametrize("val_size", [-1, 1437, 1.0, -0.1, True, "0.1"])
def test_bad_val_size_rejected(val_size):
    with pytest.raises(ValueError, match=f"val_size.*got {val_size!r}"):
        load_dataset("digits", val_size=val_size)


def test_limit_caps_only_the_train_split_and_dtype_is_honoured():
    ds = load_dataset("digits", limit=50, dtype=np.float64)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 144, 360)
    assert ds.train.x.dtype == np.float64 and abs(ds.train.x.mean()) < 1e-12
    with pytest.raises(ValueError, match="floating dtype, got int32"):
        load_dataset("digits", dtype=np.int32)
    with pytest.raises(ValueError, match="limit None or an int >= 1, got 0"):
        load_dataset("digits", limit=0)


def test_batches_cover_every_sample_once_per_epoch():
    split = Split(np.arange(23, dtype=np.float32).reshape(23, 1, 1, 1), np.arange(23))
    seen = [(x, y) for x, y in batches(split, 5, np.random.default_rng(3))]
    assert [len(y) for _, y in seen] == [5, 5, 5, 5, 3]
    ys = np.concatenate([y for _, y in seen])
    assert sorted(ys) == list(range(23)) and list(ys) != list(range(23))
    for x, y in seen:
        np.testing.assert_array_equal(x.reshape(-1), y)


def test_batches_deterministic_for_seeded_rng_and_new_order_each_epoch():
    split = Split(np.zeros((40, 1, 2, 2), np.float32), np.arange(40))

    def order(rng):
        return np.concatenate([y for _, y in batches(split, 8, rng)])

    np.testing.assert_array_equal(order(np.random.default_rng(7)), order(np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    assert not np.array_equal(order(rng), order(rng))


def test_batches_without_shuffle_in_stored_order():
    split = Split(np.zeros((7, 1, 2, 2), np.float32), np.arange(7))
    ys = [y.tolist() for _, y in batches(split, 3, None, shuffle=False)]
    assert ys == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="Generator to shuffle with.*got None"):
        next(batches(split, 3, None))
    with pytest.raises(ValueError, match="batch_size an int >= 1, got 0"):
        next(batches(split, 0, None, shuffle=False))


def test_split_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\).*got \(2,\)"):
        Split(np.zeros((3, 1, 2, 2)), np.zeros(2))


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"{FASHION} not installed")
def test_fashion_mnist_loads_from_system_directory(monkeypatch):
    monkeypatch.delenv("FBPROP_DATA", raising=False)
    ds = load_dataset("fashion-mnist")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (54000, 6000, 10000)
    assert ds.train.x.shape == (54000, 1, 28, 28) and ds.image_shape == (1, 28, 28)
    assert ds.n_classes == 10
    assert set(np.unique(ds.train.y)) == set(np.unique(ds.test.y)) == set(range(10))
    assert abs(ds.train.x.mean()) < 1e-4 and abs(ds.train.x.std() - 1) < 1e-4
    assert 0.2 < ds.mean < 0.4 and 0.3 < ds.std < 0.4


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_directory_of_idx_files_loads_by_path_and_by_root(tmp_path, gz):
    arrays = write_four(tmp_path / "tiny", gz=gz)
    by_path = load_dataset(str(tmp_path / "tiny"), val_size=10)
    by_root = load_dataset("fashion-mnist", root=tmp_path / "tiny", val_size=10)
    for ds in (by_path, by_root):
        assert (len(ds.train), len(ds.val), len(ds.test)) == (40, 10, 20)
        assert ds.image_shape == (1, 6, 6) and ds.train.x.shape == (40, 1, 6, 6)
        assert ds.mean == by_path.mean
    assert by_path.n_classes == 4 and by_root.n_classes == 10
    np.testing.assert_array_equal(by_path.test.y, arrays[3])
    np.testing.assert_allclose(by_path.test.x[:, 0] * by_path.std + by_path.mean,
                               arrays[2] / 255, atol=1e-5)
    order = np.random.default_rng(0).permutation(50)
    train_pixels = arrays[0][order[10:]] / 255
    assert by_path.mean == pytest.approx(train_pixels.mean())
    assert by_path.std == pytest.approx(train_pixels.std())


def test_root_subdirectory_named_after_the_data_set_is_found(tmp_path):
    write_four(tmp_path / "mnist")
    assert len(load_dataset("mnist", root=tmp_path, val_size=0).train) == 50


def test_fbprop_data_env_var_honoured(tmp_path, monkeypatch):
    write_four(tmp_path / "fashion-mnist", n_train=30)
    write_four(tmp_path / "mnist", n_train=35)
    monkeypatch.setenv("FBPROP_DATA", str(tmp_path))
    assert len(load_dataset("fashion-mnist", val_size=0).train) == 30
    assert len(load_dataset("mnist", val_size=0).train) == 35
    write_four(tmp_path / "flat", n_train=25)
    monkeypatch.setenv("FBPROP_DATA", str(tmp_path / "flat"))
    assert len(load_dataset("fashion-mnist", val_size=0).train) == 25


def test_missing_file_names_directory_file_and_fix(tmp_path):
    write_four(tmp_path)
    os.remove(tmp_path / (STEMS[2] + ".gz"))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    text = str(info.value)
    assert f"{tmp_path} (missing t10k-images-idx3-ubyte[.gz])" in text
    assert "apt-get install dataset-fashion-mnist" in text and "\n" not in text


def test_missing_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FBPROP_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download the four MNIST files") as info:
        load_dataset("mnist")
    assert str(tmp_path / "mnist") in str(info.value)
    monkeypatch.delenv("FBPROP_DATA")
    with pytest.raises(FileNotFoundError, match="FBPROP_DATA not set"):
        load_dataset("mnist")


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="digits.*fashion-mnist.*mnist.*got 'cifar'") as info:
        load_dataset("cifar")
    assert all(name in str(info.value) for name in DATASETS)


def test_mismatched_counts_name_both_files(tmp_path):
    write_four(tmp_path)
    write_idx(tmp_path / (STEMS[1] + ".gz"), np.zeros(49, np.uint8))
    with pytest.raises(ValueError, match=r"expected 50 labels, one per image in .*train-images"):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize(("labels", "message"), [
    (np.full(50, 10, np.uint8), r"expected labels in \[0, 10\), got values in \[10, 10\]"),
    (np.full(50, -1, np.int8), r"expected labels in \[0, 10\), got values in \[-1, -1\]"),
    (np.zeros(50, np.float32), "expected integer labels, got float32"),
])
def test_bad_labels_rejected_naming_the_file(tmp_path, labels, message):
    write_four(tmp_path)
    write_idx(tmp_path / (STEMS[1] + ".gz"), labels)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset("mnist", root=tmp_path)
    assert STEMS[1] in str(info.value)


def test_test_labels_beyond_train_classes_rejected(tmp_path):
    write_four(tmp_path)
    write_idx(tmp_path / (STEMS[3] + ".gz"), np.full(20, 4, np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels.*expected labels in \[0, 4\)"):
        load_dataset(str(tmp_path))


def test_nan_images_and_wrong_rank_rejected_naming_the_file(tmp_path):
    write_four(tmp_path)
    images = np.zeros((50, 6, 6), np.float32)
    images[3, 2, 1] = np.nan
    write_idx(tmp_path / (STEMS[0] + ".gz"), images)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: expected finite pixel"):
        load_dataset(str(tmp_path))
    write_idx(tmp_path / (STEMS[0] + ".gz"), np.zeros((50, 36), np.uint8))
    with pytest.raises(ValueError, match=r"expected images \(n, h, w\).*got shape \(50, 36\)"):
        load_dataset(str(tmp_path))


def test_float_images_taken_as_unit_scaled(tmp_path):
    arrays = write_four(tmp_path)
    write_idx(tmp_path / (STEMS[0] + ".gz"), arrays[0].astype(np.float32) / 255)
    write_idx(tmp_path / (STEMS[2] + ".gz"), arrays[2].astype(np.float32) / 255)
    floats = load_dataset(str(tmp_path), val_size=0)
    write_four(tmp_path)
    ints = load_dataset(str(tmp_path), val_size=0)
    np.testing.assert_allclose(floats.train.x, ints.train.x, atol=1e-5)
    assert floats.mean == pytest.approx(ints.mean)
