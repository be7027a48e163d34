"""Tests for trainers/data: splits, determinism, augmentation, tfds paths, errors."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from trainers import data  # noqa: E402


def _arrays(ds):
    """All batches of a dataset as a list of (images, labels) numpy pairs."""
    return [(x.numpy(), y.numpy()) for x, y in ds]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def _sorted_rows(images):
    rows = np.asarray(images, np.float32).reshape(len(images), -1)
    return rows[np.lexsort(rows.T[::-1])]


# --- digits ----------------------------------------------------------------------------

def test_digits_spec_and_fixed_stratified_split():
    spec = data.get_spec("digits")
    assert (spec.num_train, spec.num_test, spec.num_classes) == (1437, 360, 10)
    assert spec.image_shape == (8, 8, 1)
    assert (spec.crop_padding, spec.flip, spec.cutout) == (1, False, 0)
    (x_train, y_train), (x_test, y_test) = data.digits_arrays()
    assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    # train_test_split(test_size=360, stratify=y, random_state=0): pinned.
    assert y_test[:5].tolist() == [7, 6, 3, 7, 7]
    assert int(y_test.sum()) == 1618 and int(y_train.sum()) == 6452
    assert np.bincount(y_test).tolist() == [36, 36, 35, 37, 36, 37, 36, 36, 35, 36]


def test_digits_mean_std_are_those_of_the_train_split():
    spec = data.get_spec("digits")
    (x_train, _), _ = data.digits_arrays()
    np.testing.assert_allclose(spec.mean, x_train.astype(np.float64).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(spec.std, x_train.astype(np.float64).std(axis=(0, 1, 2)), rtol=1e-6)
    images = np.concatenate([x for x, _ in _arrays(
        data.eval_data("digits", batch_size=500, split="train"))])
    assert images.shape == (1437, 8, 8, 1)
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), [0.0], atol=1e-5)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), [1.0], atol=1e-5)


def test_digits_eval_keeps_the_remainder_in_stored_order():
    batches = _arrays(data.eval_data("digits", batch_size=100))
    assert [len(y) for _, y in batches] == [100, 100, 100, 60]
    labels = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(labels, data.digits_arrays()[1][1])
    assert batches[0][0].dtype == np.float32 and labels.dtype == np.int32
    assert len(_arrays(data.eval_data("digits", batch_size=16, limit=40))) == 3


def test_search_halves_are_the_two_halves_of_train():
    spec = data.get_spec("digits")
    weights, alphas = data.search_data("digits", batch_size=1, seed=0, epoch=0)
    (x_train, _), _ = data.digits_arrays()
    expected = (x_train - spec.mean[0]) / spec.std[0]
    halves = [np.concatenate([x for x, _ in _arrays(ds)]) for ds in (weights, alphas)]
    assert [len(h) for h in halves] == [718, 719]  # 1437 // 2, then the rest
    np.testing.assert_allclose(_sorted_rows(halves[0]), _sorted_rows(expected[:718]), atol=1e-6)
    np.testing.assert_allclose(_sorted_rows(halves[1]), _sorted_rows(expected[718:]), atol=1e-6)
    # Search has no augmentation and full batches only.
    weights, alphas = data.search_data("digits", batch_size=64, seed=0, epoch=0, limit=300)
    assert [len(_arrays(ds)) for ds in (weights, alphas)] == [2, 2]  # 150 and 150 examples


def test_batches_depend_only_on_seed_and_epoch():
    def build(seed, epoch):
        return _arrays(data.train_data("digits", batch_size=128, seed=seed, epoch=epoch,
                                       cutout=3))

    first = build(0, 1)
    tf.random.set_seed(1234)  # the global seed does not change the in-memory order
    _assert_same_batches(first, build(0, 1))
    assert len(first) == 1437 // 128
    assert not np.array_equal(first[0][1], build(0, 2)[0][1])
    assert not np.array_equal(first[0][1], build(1, 1)[0][1])
    w1, a1 = data.search_data("digits", batch_size=128, seed=0, epoch=3)
    w2, a2 = data.search_data("digits", batch_size=128, seed=0, epoch=3)
    _assert_same_batches(_arrays(w1), _arrays(w2))
    _assert_same_batches(_arrays(a1), _arrays(a2))
    w3, _ = data.search_data("digits", batch_size=128, seed=0, epoch=4)
    assert not np.array_equal(_arrays(w1)[0][1], _arrays(w3)[0][1])


def test_resume_mid_epoch_with_skip():
    def build():
        return data.train_data("digits", batch_size=100, seed=7, epoch=5, cutout=4)

    full = _arrays(build())
    _assert_same_batches(full[6:], _arrays(build().skip(6)))
    weights, _ = data.search_data("digits", batch_size=100, seed=7, epoch=5)
    again, _ = data.search_data("digits", batch_size=100, seed=7, epoch=5)
    _assert_same_batches(_arrays(weights)[3:], _arrays(again.skip(3)))


def test_train_data_without_augmentation_is_a_shuffled_normalised_train_set():
    spec = data.get_spec("digits")
    (x_train, _), _ = data.digits_arrays()
    ds = data.train_data("digits", batch_size=479, seed=0, epoch=0, augment=False)
    images = np.concatenate([x for x, _ in _arrays(ds)])
    assert images.shape == (1437, 8, 8, 1)  # 3 full batches of 479
    np.testing.assert_allclose(_sorted_rows(images),
                               _sorted_rows((x_train - spec.mean[0]) / spec.std[0]), atol=1e-6)


def test_batch_larger_than_data_is_an_error():
    with pytest.raises(data.DataError, match="no full batch"):
        data.search_data("digits", batch_size=64, seed=0, epoch=0, limit=100)


# --- augmentation on constant images ----------------------------------------------------

def _augmented(image, n, **kwargs):
    image = tf.constant(image, tf.float32)
    ds = tf.data.Dataset.range(n).map(
        lambda i: data.augment_image(image, tf.stack([tf.constant(42, tf.int64), i]),
                                     mean=(0.0,) * image.shape[-1],
                                     std=(1.0,) * image.shape[-1], **kwargs))
    return next(iter(ds.batch(n))).numpy()


def test_cutout_zeroes_a_clipped_square_after_normalisation():
    # mean 0.5, std 0.25: a constant 1.0 image normalises to 2.0, cutout writes zeros.
    image = tf.ones([32, 32, 3])
    out = tf.stack([data.augment_image(image, tf.constant([3, i], tf.int64), mean=(0.5,) * 3,
                                       std=(0.25,) * 3, cutout=16) for i in range(300)]).numpy()
    assert set(np.unique(out)) <= {0.0, 2.0}
    extents = []
    for sample in out:
        zero = sample[..., 0] == 0
        assert np.array_equal(zero, np.all(sample == 0, axis=-1))  # every channel
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        # One axis-aligned rectangle, as wide as rows [c - 8, c + 8) clipped to [0, 32).
        assert zero.sum() == len(rows) * len(cols) == zero[np.ix_(rows, cols)].sum()
        for kept in (rows, cols):
            assert 8 <= len(kept) <= 16
            assert len(kept) == 16 or kept[0] == 0 or kept[-1] == 31
        extents.append(len(rows))
    # Centre uniform over 0..31: P(16 rows) = 17/32; mean extent = 13.75.
    assert 0.42 < np.mean(np.array(extents) == 16) < 0.64
    assert 13.0 < np.mean(extents) < 14.5


def test_random_crop_shifts_a_padded_constant_image():
    out = _augmented(np.ones([32, 32, 1]), 400, crop_padding=4)
    shifts = []
    for sample in out[..., 0]:
        rows = np.flatnonzero(sample.any(1))
        cols = np.flatnonzero(sample.any(0))
        assert sample.sum() == len(rows) * len(cols)  # the image stays a solid block
        assert len(rows) >= 28 and len(cols) >= 28
        # top zero rows = 4 - dy when the crop starts above the image, etc.
        shifts.append((rows[0] - (32 - rows[-1] - 1), cols[0] - (32 - cols[-1] - 1)))
    shifts = np.array(shifts)
    assert shifts.min() == -4 and shifts.max() == 4  # every offset 0..8 reachable
    assert abs(shifts.mean()) < 0.5
    np.testing.assert_array_equal(_augmented(np.ones([32, 32, 1]), 2), np.ones([2, 32, 32, 1]))


def test_flip_mirrors_about_half_of_the_images():
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))[..., None]
    out = _augmented(ramp, 400, flip=True)
    flipped = np.array([np.array_equal(x, ramp[:, ::-1]) for x in out])
    kept = np.array([np.array_equal(x, ramp) for x in out])
    assert np.all(flipped | kept)
    assert 0.4 < flipped.mean() < 0.6


# --- TFDS: mocked cifar10 / imagenet2012, a real local data set, errors ------------------

def test_cifar10_through_mocked_tfds():
    spec = data.get_spec("cifar10")  # known: no data needed
    assert (spec.num_classes, spec.image_shape, spec.num_train, spec.cutout) == (
        10, (32, 32, 3), 50_000, 16)
    low = (0 - np.array(spec.mean)) / np.array(spec.std)
    high = (1 - np.array(spec.mean)) / np.array(spec.std)
    with tfds.testing.mock_data(num_examples=20):
        weights, alphas = data.search_data("cifar10", batch_size=8, seed=0, epoch=0)
        for ds in (weights, alphas):
            batches = _arrays(ds)
            assert len(batches) == 2  # the mock yields 20 per split; remainder dropped
            x, y = batches[0]
            assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
            assert np.all(x >= low - 1e-5) and np.all(x <= high + 1e-5)
        train = _arrays(data.train_data("cifar10", batch_size=4, seed=0, epoch=0))
        assert len(train) == 5 and train[0][0].shape == (4, 32, 32, 3)
        assert any((x == 0).all(-1).sum() >= 64 for x, _ in train)  # cutout squares (>= 8x8)
        _assert_same_batches(train, _arrays(data.train_data("cifar10", batch_size=4, seed=0,
                                                            epoch=0)))
        evaluation = _arrays(data.eval_data("cifar10", batch_size=8))
        assert [len(y) for _, y in evaluation] == [8, 8, 4]


def test_imagenet_pipeline_through_mocked_tfds():
    with tfds.testing.mock_data(num_examples=3):
        x, y = next(iter(data.train_data("imagenet2012", batch_size=2, seed=0, epoch=0)))
        assert x.shape == (2, 224, 224, 3) and y.dtype == tf.int32
        x, _ = next(iter(data.eval_data("imagenet2012", batch_size=3)))
        assert x.shape == (3, 224, 224, 3)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """40 train + 8 test random 8x8x3 images, 4 classes, stored in TFDS format."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 48)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)),
        "label": tfds.features.ClassLabel(num_classes=4)})
    # Python iterables must yield (key, example); all splits must have the same type.
    splits = {split: [(i, {"image": images[i], "label": int(labels[i])}) for i in indices]
              for split, indices in (("train", range(40)), ("test", range(40, 48)))}
    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_images", version="1.0.0", features=features, split_datasets=splits,
        data_dir=data_dir, disable_shuffling=True)
    return data_dir, images, labels


def test_local_tfds_data_set_by_name(tiny_images):
    data_dir, images, labels = tiny_images
    spec = data.get_spec("tiny_images", data_dir=data_dir)
    assert (spec.num_classes, spec.image_shape, spec.num_train, spec.num_test) == (
        4, (8, 8, 3), 40, 8)
    assert spec.mean == (0.5,) * 3 and (spec.crop_padding, spec.flip, spec.cutout) == (0, True, 0)
    normalised = (images.astype(np.float32) / 255 - 0.5) / 0.5
    weights, alphas = data.search_data("tiny_images", batch_size=4, seed=0, epoch=0,
                                       data_dir=data_dir)
    halves = [_arrays(ds) for ds in (weights, alphas)]
    assert [len(h) for h in halves] == [5, 5]
    for half, expected in zip(halves, (normalised[:20], normalised[20:40])):
        got = np.concatenate([x for x, _ in half])
        np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(expected), atol=1e-6)
    again, _ = data.search_data("tiny_images", batch_size=4, seed=0, epoch=0, data_dir=data_dir)
    _assert_same_batches(halves[0], _arrays(again))
    x, y = next(iter(data.eval_data("tiny_images", batch_size=8, data_dir=data_dir)))
    np.testing.assert_allclose(x.numpy(), normalised[40:], atol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels[40:])
    train = _arrays(data.train_data("tiny_images", batch_size=16, seed=0, epoch=0,
                                    data_dir=data_dir, limit=32))
    assert len(train) == 2 and train[0][0].shape == (16, 8, 8, 3)


def test_absent_data_set_error_names_it_and_the_directory(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.train_data("cifar10", batch_size=8, seed=0, epoch=0, data_dir=str(tmp_path))
    assert "'cifar10'" in str(err.value) and str(tmp_path) in str(err.value)
    assert "tfds build cifar10" in str(err.value)
    with pytest.raises(data.DataError, match="downloads/manual"):
        data.eval_data("imagenet2012", batch_size=8, data_dir=str(tmp_path))
    with pytest.raises(data.DataError, match="'mnist' is not prepared"):
        data.get_spec("mnist", data_dir=str(tmp_path))


def test_unknown_name_lists_the_choices(tmp_path):
    with pytest.raises(data.DataError, match="Unknown data set 'no_such_data_set'") as err:
        data.get_spec("no_such_data_set", data_dir=str(tmp_path))
    assert "'digits'" in str(err.value) and "'cifar10'" in str(err.value)
