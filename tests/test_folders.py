"""Image folders as a data set (trainers/data/folders.py): layout, split, statistics, the
pipelines' seeds and resumption, the spec stored with a run, and every error naming its path.

The folders are written here: scikit-learn's digits upscaled to 16x16 PNGs (grayscale,
or an RGB variant), one JPEG and one corrupt file (tests/image_folders.py).
"""
import json
import logging

import numpy as np
import pytest
from PIL import Image

from configs import ConfigError, RetrainConfig, SearchConfig
from trainers import data
from trainers.data import folders

from image_folders import write_digits_folder


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("grey"))


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return write_digits_folder(tmp_path_factory.mktemp("rgb"), mode="RGB", corrupt=False)


def _all(ds):
    pairs = [(x.numpy(), y.numpy()) for x, y in ds]
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def test_spec_split_and_statistics(grey, caplog):
    folders.scan.cache_clear()
    with caplog.at_level(logging.WARNING, logger="trainers.data.folders"):
        spec = data.get_spec("folder", str(grey))
    # The corrupt file is skipped, with the count and its path in the log.
    assert f"Skipped 1 unreadable or corrupt image file(s) in {grey}" in caplog.text
    assert str(grey / "1" / "corrupt.png") in caplog.text
    assert spec.class_names == tuple(str(i) for i in range(10))
    assert spec.image_shape == (16, 16, 1) and spec.num_classes == 10
    # 12 images per class (the corrupt 13th of class 1 skipped): round(12 * 0.2) = 2 to test.
    assert (spec.num_train, spec.num_test) == (100, 20)
    x_train, y_train = _all(data.eval_data("folder", batch_size=64, split="train",
                                           data_dir=str(grey), raw=True))
    x_test, y_test = _all(data.eval_data("folder", batch_size=64, data_dir=str(grey), raw=True))
    assert np.bincount(y_train).tolist() == [10] * 10 and np.bincount(y_test).tolist() == [2] * 10
    assert x_train.dtype == np.uint8 and x_train.shape == (100, 16, 16, 1)
    # The statistics are those of the training split's [0, 1] pixels.
    np.testing.assert_allclose(spec.mean, [x_train.mean() / 255], rtol=1e-6)
    np.testing.assert_allclose(spec.std, [x_train.std() / 255], rtol=1e-5)
    normalised, _ = _all(data.eval_data("folder", batch_size=64, split="train",
                                        data_dir=str(grey)))
    np.testing.assert_allclose(normalised.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(), 1.0, atol=1e-4)
    # The JPEG is there, decoded as the PNGs are.
    paths = folders.scan(str(grey), None).splits["test"][0] + folders.scan(
        str(grey), None).splits["train"][0]
    assert str(grey / "0" / "000.jpg") in paths


def test_the_split_is_stable_and_train_test_folders_are_used(tmp_path, grey):
    before = folders.scan(str(grey), None).splits["test"][0]
    copy = write_digits_folder(tmp_path / "more", per_class=13, corrupt=False)
    after = folders.scan(str(copy), None).splits["test"][0]
    # Adding one image per class keeps each class's test count (round(13 * 0.2) = 3? no: 2.6
    # rounds to 3), so compare the relative names of the first two of each class.
    rel = lambda paths, root: {str(p)[len(str(root)) + 1:] for p in paths}  # noqa: E731
    assert rel(before, grey) <= rel(after, copy)
    # Explicit splits: train/ and test/ are used as they are.
    write_digits_folder(tmp_path / "explicit" / "train", per_class=5, classes=3, corrupt=False,
                        jpeg=False)
    write_digits_folder(tmp_path / "explicit" / "test", per_class=2, classes=3, corrupt=False,
                        jpeg=False)
    spec = data.get_spec("folder", str(tmp_path / "explicit"))
    assert (spec.num_train, spec.num_test, spec.class_names) == (15, 6, ("0", "1", "2"))


def test_rgb_and_resizing(rgb):
    spec = data.get_spec("folder", str(rgb), image_size=24)
    assert spec.image_shape == (24, 24, 3) and len(spec.mean) == 3
    assert spec.mean[0] > spec.mean[1] > spec.mean[2]  # the tint: R, 0.8 R, 0.6 R
    x, _ = next(iter(data.train_data("folder", batch_size=8, seed=0, epoch=0,
                                     data_dir=str(rgb), image_size=24)))
    assert x.shape == (8, 24, 24, 3)


def test_streams_depend_only_on_seed_and_epoch_and_resume_with_skip(grey):
    def batches(seed, epoch, skip=0):
        weights, alphas = data.search_data("folder", batch_size=16, seed=seed, epoch=epoch,
                                           data_dir=str(grey))
        train = data.train_data("folder", batch_size=16, seed=seed, epoch=epoch,
                                data_dir=str(grey))
        return [[y.numpy() for _, y in ds.skip(skip)] for ds in (weights, alphas, train)]

    first = batches(0, 1)
    assert [len(b) for b in first] == [3, 3, 6]  # halves of 50 and 50, 100 train
    again = batches(0, 1, skip=2)
    for full, resumed in zip(first, again):
        np.testing.assert_array_equal(np.concatenate(full[2:]), np.concatenate(resumed))
    assert not np.array_equal(first[2][0], batches(0, 2)[2][0])
    # The search halves mix the classes (a fixed shuffle of the training split).
    assert len(set(np.concatenate(first[0]).tolist())) == 10


def test_image_size_is_a_validated_config_field():
    assert SearchConfig(image_size=32).image_size == 32
    for bad in (0, 4, 3.5, "32"):
        with pytest.raises(ConfigError, match=f"image_size={bad!r}"):
            RetrainConfig(image_size=bad)
    with pytest.raises(data.DataError, match="image_size=32 applies to dataset='folder'"):
        data.get_spec("digits", image_size=32)


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.mark.parametrize("case", ["missing", "no_data_dir", "empty", "no_images", "one_class",
                                  "all_corrupt", "mixed_channels", "mixed_sizes"])
def test_errors_name_the_path(tmp_path, case):
    root = tmp_path / "images"
    grey8, rgb8 = np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8)
    if case != "missing":
        root.mkdir()
    if case == "no_images":
        (root / "a").mkdir()
        (root / "b").mkdir()
        (root / "b" / "notes.txt").write_text("not an image")
    if case == "one_class":
        _png(root / "cat" / "1.png", grey8)
    if case == "all_corrupt":
        for name in ("a", "b"):
            (root / name).mkdir()
            (root / name / "x.png").write_bytes(b"garbage")
    if case == "mixed_channels":
        _png(root / "a" / "1.png", grey8)
        _png(root / "b" / "1.png", rgb8)
    if case == "mixed_sizes":
        _png(root / "a" / "1.png", grey8)
        _png(root / "b" / "1.png", np.zeros((9, 8), np.uint8))
    expect = {
        "missing": f"Image folder {root} does not exist",
        "no_data_dir": "dataset='folder' needs data_dir",
        "empty": f"Image folder {root} has no class sub-folders",
        "no_images": f"Image folder {root} holds no images",
        "one_class": f"Image folder {root} has a single class ('cat')",
        "all_corrupt": f"Image folder {root}: none of its 2 image files could be decoded",
        "mixed_channels": f"mixes grayscale images ({root / 'a' / '1.png'}) and colour images "
                          f"({root / 'b' / '1.png'})",
        "mixed_sizes": "has images of different sizes",
    }[case]
    with pytest.raises(data.DataError) as info:
        data.get_spec("folder", None if case == "no_data_dir" else str(root))
    assert expect in str(info.value)
    if case == "mixed_sizes":  # resizing makes them one size
        assert data.get_spec("folder", str(root), image_size=8).image_shape == (8, 8, 1)


def test_the_spec_round_trips_through_json(grey):
    spec = data.get_spec("folder", str(grey))
    assert data.DataSpec.from_json(spec.to_json()) == spec
    assert json.loads(data.get_spec("digits").to_json())["class_names"][:3] == ["0", "1", "2"]


def test_the_tuner_takes_a_folder_as_a_dataset(grey):
    """DartsTuner.search(train, validation_data=test) with the folder's splits: the search
    halves come from `search_data_fn` (checked here; a whole tuner run was checked by hand)."""
    from configs import SearchConfig as Config
    from trainers.data import search_data_fn

    train = data.eval_data("folder", batch_size=16, split="train", data_dir=str(grey))
    data_fn, input_shape = search_data_fn(train, None, Config(batch_size=8))
    weights, alphas = data_fn(0)
    sizes = [sum(int(y.shape[0]) for _, y in ds) for ds in (weights, alphas)]
    assert input_shape == (16, 16, 1) and 80 <= sum(sizes) <= 100 and min(sizes) >= 32
