"""Data for the DARTS search and the retraining, shared by both trainers.

Every dataset yields global batches `(images, labels)`: images float32 NHWC,
normalised per channel by the data set's mean/std (on [0,1]-scaled pixels),
labels int32. Training streams drop the remainder; evaluation keeps it.

Reproducible and resumable: an epoch's order and augmentation depend only on
(seed, epoch). Each stream ("search/weights", "search/alphas", "train") gets its
own seed, a hash of (stream, seed, epoch); augmentation uses stateless ops with
a per-element seed [stream seed, position in the epoch], so the batches are
byte-identical whatever the parallelism, and a trainer resumes mid-epoch with
`ds.skip(k)`. In-memory data (digits) is permuted with numpy; tfds streams use
seeded file shuffling plus a tf.data shuffle buffer, into which tf.data also mixes
TensorFlow's global seed when one is set (the trainers set it from the run seed).

Data sets: "digits" (scikit-learn's bundled 8x8 digits, offline, the default),
and any TFDS image classification data set already prepared in `data_dir`
(cifar10, cifar100, imagenet2012, ...). Nothing is ever downloaded.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
# Shuffle buffers hold encoded images: 50k CIFAR PNGs ~ 120 MB (a full shuffle);
# 10k ImageNet JPEGs ~ 1.1 GB, on top of per-epoch file shuffling.
_SHUFFLE_BUFFER = 50_000
_SHUFFLE_BUFFER_IMAGENET = 10_000


class DataError(ValueError):
    """A data set is unknown, not prepared in data_dir, or unusable."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a trainer needs to know about a data set to build and train a model.

    Attributes:
      name: data set name ("digits", a TFDS name).
      num_classes: number of labels.
      image_shape: (H, W, C) of the model input.
      mean, std: per-channel normalisation, on [0,1]-scaled pixels.
      num_train, num_test: split sizes (test = ImageNet's validation split).
      crop_padding, flip, cutout: the default retrain augmentation (0 disables).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int
    num_test: int
    crop_padding: int
    flip: bool
    cutout: int


_KNOWN_SPECS = {spec.name: spec for spec in (
    # mean/std of the 1437 training images /16 (np.mean/np.std over all pixels).
    DataSpec("digits", 10, (8, 8, 1), (0.30538339422407795,), (0.3761191680900195,),
             1437, 360, crop_padding=1, flip=False, cutout=0),
    # quark0/darts cnn/utils.py _data_transforms_cifar10; cutout 16 as `--cutout`.
    DataSpec("cifar10", 10, (32, 32, 3), (0.49139968, 0.48215827, 0.44653124),
             (0.24703233, 0.24348505, 0.26158768), 50_000, 10_000,
             crop_padding=4, flip=True, cutout=16),
    DataSpec("cifar100", 100, (32, 32, 3), (0.50707516, 0.48654887, 0.44091784),
             (0.26733429, 0.25643846, 0.27615047), 50_000, 10_000,
             crop_padding=4, flip=True, cutout=16),
    # Train uses RandomResizedCrop + flip + ColorJitter (cnn/train_imagenet.py).
    DataSpec("imagenet2012", 1000, (224, 224, 3), (0.485, 0.456, 0.406),
             (0.229, 0.224, 0.225), 1_281_167, 50_000,
             crop_padding=0, flip=True, cutout=0),
)}


def _tfds():
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    return tfds


def _data_dir_text(data_dir: str | None) -> str:
    return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    """((x_train, y_train), (x_test, y_test)): the fixed stratified 1437/360 split."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # values 0..16
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=360, stratify=labels, random_state=0)
    for array in (x_train, x_test, y_train, y_test):
        array.flags.writeable = False  # shared by every caller through the cache
    return (x_train, y_train), (x_test, y_test)


def _builder(name: str, data_dir: str | None):
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as err:
        raise DataError(
            f"Unknown data set {name!r}: not 'digits', not a TFDS builder and not prepared "
            f"in {_data_dir_text(data_dir)}. Choices: 'digits' (built in, offline), "
            f"{', '.join(repr(n) for n in _KNOWN_SPECS if n != 'digits')}, or any TFDS image "
            "classification data set (tfds.list_builders()) prepared in data_dir.") from err


def _feature_keys(info, name: str) -> tuple[str, str]:
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        keys = ("image", "label")  # e.g. data sets stored with store_as_tfds_dataset
    if any(k not in info.features for k in keys):
        raise DataError(f"Data set {name!r} has no {keys} features; it has "
                        f"{list(info.features)}. Only image classification data sets are supported.")
    return keys


def get_spec(name: str, data_dir: str | None = None) -> DataSpec:
    """Returns the spec of data set `name`; known data sets need no data on disk.

    Args:
      name: "digits", "cifar10", "cifar100", "imagenet2012" or any TFDS image
        classification data set prepared in `data_dir`.
      data_dir: TFDS data directory (default ~/tensorflow_datasets).

    Raises:
      DataError: unknown name, not prepared, or not an image classification set.
    """
    if name in _KNOWN_SPECS:
        return _KNOWN_SPECS[name]
    info = _builder(name, data_dir).info
    image_key, label_key = _feature_keys(info, name)
    shape = tuple(info.features[image_key].shape)
    if len(shape) != 3 or None in shape:
        raise DataError(f"Data set {name!r} has images of shape {shape}; only fixed-size "
                        "(H, W, C) images are supported (and imagenet2012, which is resized).")
    if "train" not in info.splits:
        raise _absent_error(name, data_dir)
    test = _resolve_split("test", info.splits)
    num_test = info.splits[test].num_examples if test in info.splits else 0
    channels = shape[-1]
    return DataSpec(name, int(info.features[label_key].num_classes), shape,
                    (0.5,) * channels, (0.5,) * channels, info.splits["train"].num_examples,
                    num_test, crop_padding=0, flip=True, cutout=0)


def _absent_error(name: str, data_dir: str | None, manual: bool = False) -> DataError:
    where = _data_dir_text(data_dir)
    how = (f"run `tfds build {name} --data_dir={where}` on a machine with network access and "
           f"copy that directory here (nothing is downloaded from this code)")
    if manual or name == "imagenet2012":
        how += f"; {name} needs its manual download in {where}/downloads/manual first"
    return DataError(f"Data set {name!r} is not prepared in {where}. To prepare it offline, {how}.")


def _resolve_split(split: str, splits) -> str:
    # ImageNet has no labelled test split: evaluate on validation, as the reference does.
    if split == "test" and splits and "test" not in splits and "validation" in splits:
        return "validation"
    return split


def _stream_seed(stream: str, seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"{stream}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


def _source(name, split, start, stop, data_dir, shuffle_seed=None):
    """(dataset of (raw image, int32 label), decode: raw -> float32 [0,1] image).

    Keeps examples [start, stop) of `split`; with shuffle_seed, in a seeded order.
    """
    if name == "digits":
        if split not in ("train", "test"):
            raise DataError(f"digits has splits 'train' and 'test'; received split={split!r}.")
        images, labels = _digits_arrays()[0 if split == "train" else 1]
        images, labels = images[start:stop], labels[start:stop]
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(labels))
            images, labels = images[order], labels[order]
        return tf.data.Dataset.from_tensor_slices((images, labels)), lambda image: image

    tfds = _tfds()
    builder = _builder(name, data_dir)
    image_key, label_key = _feature_keys(builder.info, name)
    split = _resolve_split(split, builder.info.splits)
    if start is not None or stop is not None:
        split = f"{split}[{'' if start is None else start}:{'' if stop is None else stop}]"
    # Ordered data sets (disable_shuffling) refuse file shuffling; the buffer still shuffles.
    shuffle_files = shuffle_seed is not None and not builder.info.disable_shuffling
    try:  # Images stay encoded until after the shuffle buffer: decoded ImageNet would not fit.
        ds = tfds.load(
            name, data_dir=data_dir, download=False,  # offline: never fetch
            split=split, decoders={image_key: tfds.decode.SkipDecoding()},
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed,
                                        shuffle_reshuffle_each_iteration=False))
    except AssertionError as err:  # tfds: "Dataset x: could not find data in DIR"
        raise _absent_error(name, data_dir, bool(getattr(
            builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))) from err
    ds = ds.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))
    if shuffle_seed is not None:
        cap = _SHUFFLE_BUFFER_IMAGENET if name == "imagenet2012" else _SHUFFLE_BUFFER
        size = int(ds.cardinality())
        ds = ds.shuffle(min(size, cap) if size > 0 else cap, seed=shuffle_seed,
                        reshuffle_each_iteration=False)
    feature = builder.info.features[image_key]
    return ds, lambda raw: tf.image.convert_image_dtype(feature.decode_example(raw), tf.float32)


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
    """(image - mean) / std per channel, on a [0,1] float image."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def random_cutout(image: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
    """Zeroes a length x length square, centre uniform over the image, clipped at the borders.

    As quark0/darts cnn/utils.py Cutout: rows [cy - length//2, cy + length//2) clipped.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    seed_y, seed_x = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    cy = tf.random.stateless_uniform([], seed_y, 0, height, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], seed_x, 0, width, dtype=tf.int32)
    rows, cols = tf.range(height), tf.range(width)
    in_rows = (rows >= cy - length // 2) & (rows < cy + length // 2)
    in_cols = (cols >= cx - length // 2) & (cols < cx + length // 2)
    mask = in_rows[:, None, None] & in_cols[None, :, None]
    return tf.where(mask, tf.zeros_like(image), image)


def augment_image(image: tf.Tensor, seed: tf.Tensor, *, mean, std, crop_padding: int = 0,
                  flip: bool = False, cutout: int = 0) -> tf.Tensor:
    """The reference CIFAR retrain augmentation of one [0,1] image (H, W, C), stateless.

    Zero-pad by crop_padding and randomly crop back to H x W, flip left-right
    with probability 1/2, normalise, then cutout (after normalisation, as the
    reference). Same image and seed (shape [2]) give the same result.
    """
    crop_seed, flip_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if crop_padding:
        pad = [[crop_padding, crop_padding], [crop_padding, crop_padding], [0, 0]]
        image = tf.image.stateless_random_crop(tf.pad(image, pad), tf.shape(image), crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    image = normalize(image, mean, std)
    return random_cutout(image, cutout, cutout_seed) if cutout else image


def _imagenet_train(image: tf.Tensor, seed: tf.Tensor, flip: bool) -> tf.Tensor:
    """RandomResizedCrop(224) + flip + ColorJitter(0.4, 0.4, 0.4, 0.2), fixed jitter order."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seeds[0], min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, size), (224, 224), antialias=True)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[1])
    # torchvision's brightness is multiplicative; each jitter clamps to [0, 1].
    image = tf.clip_by_value(image * tf.random.stateless_uniform([], seeds[2], 0.6, 1.4), 0., 1.)
    image = tf.clip_by_value(tf.image.stateless_random_contrast(image, 0.6, 1.4, seeds[3]), 0., 1.)
    image = tf.clip_by_value(tf.image.stateless_random_saturation(image, 0.6, 1.4, seeds[4]), 0., 1.)
    return tf.clip_by_value(tf.image.stateless_random_hue(image, 0.2, seeds[5]), 0., 1.)


def _imagenet_eval(image: tf.Tensor) -> tf.Tensor:
    """Resize the shorter side to 256, then the centre 224 x 224 crop."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_shape = tf.cast(tf.math.floor(shape * 256.0 / tf.reduce_min(shape)), tf.int32)
    image = tf.image.resize(image, tf.maximum(new_shape, 256), antialias=True)
    return tf.image.resize_with_crop_or_pad(image, 224, 224)


def _plain(spec: DataSpec):
    """Normalisation only (after ImageNet's resize + centre crop); ignores the element seed."""
    def preprocess(image, element_seed=None):
        del element_seed  # deterministic
        if spec.name == "imagenet2012":
            image = _imagenet_eval(image)
        return normalize(image, spec.mean, spec.std)
    return preprocess


def _augmenter(spec: DataSpec, crop_padding: int, flip: bool, cutout: int):
    """preprocess(image, element_seed) for retraining."""
    if spec.name != "imagenet2012":
        return functools.partial(augment_image, mean=spec.mean, std=spec.std,
                                 crop_padding=crop_padding, flip=flip, cutout=cutout)

    def preprocess(image, element_seed):
        image_seed, cutout_seed = tf.unstack(
            tf.random.experimental.stateless_split(element_seed, 2))
        image = normalize(_imagenet_train(image, image_seed, flip), spec.mean, spec.std)
        return random_cutout(image, cutout, cutout_seed) if cutout else image
    return preprocess


def _training_batches(ds, decode, preprocess, *, stream_seed, batch_size):
    """Per-element seeds [stream seed, position in epoch]; then full batches only."""
    count = int(ds.cardinality())
    if 0 <= count < batch_size:
        raise DataError(f"Only {count} examples for batch_size={batch_size}: no full batch.")
    ds = ds.enumerate().map(
        lambda i, ex: (preprocess(decode(ex[0]), tf.stack([tf.constant(stream_seed, tf.int64), i])),
                       ex[1]),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def search_data(name: str, *, batch_size: int, seed: int, epoch: int,
                data_dir: str | None = None, limit: int | None = None):
    """The two halves of the training set for one search epoch, no augmentation.

    As quark0/darts train_search.py (train_portion 0.5): the first half trains
    the weights, the second the alphas; each half shuffled with its own seed.

    Args:
      name: data set name (see `get_spec`).
      batch_size: global batch size (remainders dropped).
      seed, epoch: the order depends only on these.
      data_dir: TFDS data directory.
      limit: use only the first `limit` training examples (halves: limit // 2 and the rest).

    Returns:
      (weights_ds, alphas_ds).
    """
    spec = get_spec(name, data_dir)
    if limit is None and name != "digits":
        halves = ((None, "50%"), ("50%", None))  # tfds split slicing
    else:
        total = spec.num_train if limit is None else min(limit, spec.num_train)
        halves = ((0, total // 2), (total // 2, total))
    result = []
    for stream, (start, stop) in zip(("search/weights", "search/alphas"), halves):
        stream_seed = _stream_seed(stream, seed, epoch)
        ds, decode = _source(name, "train", start, stop, data_dir, stream_seed)
        result.append(_training_batches(ds, decode, _plain(spec), stream_seed=stream_seed,
                                        batch_size=batch_size))
    return tuple(result)


def train_data(name: str, *, batch_size: int, seed: int, epoch: int, augment: bool = True,
               crop_padding: int | None = None, flip: bool | None = None,
               cutout: int | None = None,
               data_dir: str | None = None, limit: int | None = None) -> tf.data.Dataset:
    """The whole training set for one retrain epoch, shuffled and augmented.

    Args:
      name, batch_size, seed, epoch, data_dir, limit: as in `search_data`.
      augment: False gives normalised images only (still shuffled).
      crop_padding, flip, cutout: override the spec's defaults (0 / False disable).
        ImageNet always uses RandomResizedCrop instead of padding + crop.
    """
    spec = get_spec(name, data_dir)
    if augment:
        preprocess = _augmenter(spec, spec.crop_padding if crop_padding is None else crop_padding,
                                spec.flip if flip is None else flip,
                                spec.cutout if cutout is None else cutout)
    else:
        preprocess = _plain(spec)
    stream_seed = _stream_seed("train", seed, epoch)
    ds, decode = _source(name, "train", None, limit, data_dir, stream_seed)
    return _training_batches(ds, decode, preprocess, stream_seed=stream_seed,
                             batch_size=batch_size)


def eval_data(name: str, *, batch_size: int, split: str = "test", data_dir: str | None = None,
              limit: int | None = None) -> tf.data.Dataset:
    """A split in its stored order, normalised, the last batch possibly smaller.

    `split="test"` is ImageNet's validation split (it has no labelled test split).
    """
    spec = get_spec(name, data_dir)
    ds, decode = _source(name, split, None, limit, data_dir)
    preprocess = _plain(spec)
    ds = ds.map(lambda raw, label: (preprocess(decode(raw)), label),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
