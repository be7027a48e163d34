"""The data pipelines of the search, the retraining and the evaluation.

Every dataset yields global batches `(images, labels)`: images float32 NHWC,
normalised per channel by the data set's mean/std (on [0,1]-scaled pixels),
labels int32. Training streams drop the remainder; evaluation keeps it.

Reproducible and resumable: an epoch's order and augmentation depend only on
(seed, epoch). Each stream ("search/weights", "search/alphas", "train") gets its
own seed (`sources.stream_seed`); augmentation uses stateless ops with a
per-element seed [stream seed, position in the epoch], so the batches are
byte-identical whatever the parallelism, and a trainer resumes mid-epoch with
`ds.skip(k)`. In-memory data (digits, the file list of an image folder) is permuted
with numpy; tfds streams use seeded file shuffling plus a tf.data shuffle buffer, into
which tf.data also mixes TensorFlow's global seed when one is set (the trainers set it
from the run seed).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from trainers.data.sources import (AUTOTUNE, IN_MEMORY, DataError, DataSpec, get_spec, source,
                                   stream_seed)


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


def _plain(spec: DataSpec, normalize_images: bool = True):
    """Normalisation only (after ImageNet's resize + centre crop); ignores the element seed."""
    def preprocess(image, element_seed=None):
        del element_seed  # deterministic
        if spec.name == "imagenet2012":
            image = _imagenet_eval(image)
        return normalize(image, spec.mean, spec.std) if normalize_images else image
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


def _training_batches(ds, decode, preprocess, *, seed, batch_size):
    """Per-element seeds [stream seed, position in epoch]; then full batches only."""
    count = int(ds.cardinality())
    if 0 <= count < batch_size:
        raise DataError(f"Only {count} examples for batch_size={batch_size}: no full batch.")
    ds = ds.enumerate().map(
        lambda i, ex: (preprocess(decode(ex[0]), tf.stack([tf.constant(seed, tf.int64), i])),
                       ex[1]),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def search_data(name: str, *, batch_size: int, seed: int, epoch: int,
                data_dir: str | None = None, limit: int | None = None,
                image_size: int | None = None):
    """The two halves of the training set for one search epoch, no augmentation.

    As quark0/darts train_search.py (train_portion 0.5): the first half trains
    the weights, the second the alphas; each half shuffled with its own seed.

    Args:
      name: data set name (see `get_spec`).
      batch_size: global batch size (remainders dropped).
      seed, epoch: the order depends only on these.
      data_dir: TFDS data directory, or the image folder.
      limit: use only the first `limit` training examples (halves: limit // 2 and the rest).
      image_size: an image folder's image side (see `get_spec`).

    Returns:
      (weights_ds, alphas_ds).
    """
    spec = get_spec(name, data_dir, image_size)
    if limit is None and name not in IN_MEMORY:
        halves = ((None, "50%"), ("50%", None))  # tfds split slicing
    else:
        total = spec.num_train if limit is None else min(limit, spec.num_train)
        halves = ((0, total // 2), (total // 2, total))
    result = []
    for stream, (start, stop) in zip(("search/weights", "search/alphas"), halves):
        epoch_seed = stream_seed(stream, seed, epoch)
        ds, decode = source(name, "train", start, stop, data_dir, epoch_seed, image_size)
        result.append(_training_batches(ds, decode, _plain(spec), seed=epoch_seed,
                                        batch_size=batch_size))
    return tuple(result)


def train_data(name: str, *, batch_size: int, seed: int, epoch: int, augment: bool = True,
               crop_padding: int | None = None, flip: bool | None = None,
               cutout: int | None = None,
               data_dir: str | None = None, limit: int | None = None,
               image_size: int | None = None) -> tf.data.Dataset:
    """The whole training set for one retrain epoch, shuffled and augmented.

    Args:
      name, batch_size, seed, epoch, data_dir, limit, image_size: as in `search_data`.
      augment: False gives normalised images only (still shuffled).
      crop_padding, flip, cutout: override the spec's defaults (0 / False disable).
        ImageNet always uses RandomResizedCrop instead of padding + crop.
    """
    spec = get_spec(name, data_dir, image_size)
    preprocess = _train_preprocess(spec, augment, crop_padding, flip, cutout)
    epoch_seed = stream_seed("train", seed, epoch)
    ds, decode = source(name, "train", None, limit, data_dir, epoch_seed, image_size)
    return _training_batches(ds, decode, preprocess, seed=epoch_seed,
                             batch_size=batch_size)


def _train_preprocess(spec: DataSpec, augment: bool, crop_padding, flip, cutout):
    """The training split's per-example function: the spec's augmentation (each of
    crop_padding, flip, cutout overriding its default when not None), or only the
    normalisation when `augment` is False."""
    if not augment:
        return _plain(spec)
    return _augmenter(spec, spec.crop_padding if crop_padding is None else crop_padding,
                      spec.flip if flip is None else flip,
                      spec.cutout if cutout is None else cutout)


def train_data_from_arrays(images, labels, spec: DataSpec, *, batch_size: int, seed: int,
                           epoch: int, augment: bool = True, crop_padding: int | None = None,
                           flip: bool | None = None, cutout: int | None = None) -> tf.data.Dataset:
    """`train_data` on in-memory [0,1] images (e.g. one fold of a k-fold study).

    The same epoch order rule (a numpy permutation seeded by the "train" stream of
    (seed, epoch), as for digits), the same per-element augmentation seeds and full
    batches, with `spec`'s normalisation and default augmentation.

    Args:
      images: (N, H, W, C) float images in [0, 1]; labels: (N,) ints.
      spec, batch_size, seed, epoch, augment, crop_padding, flip, cutout: as `train_data`.
    """
    preprocess = _train_preprocess(spec, augment, crop_padding, flip, cutout)
    epoch_seed = stream_seed("train", seed, epoch)
    order = np.random.default_rng(epoch_seed).permutation(len(labels))
    ds = tf.data.Dataset.from_tensor_slices((np.asarray(images, np.float32)[order],
                                             np.asarray(labels, np.int32)[order]))
    return _training_batches(ds, lambda image: image, preprocess, seed=epoch_seed,
                             batch_size=batch_size)


def eval_data_from_arrays(images, labels, spec: DataSpec, *, batch_size: int) -> tf.data.Dataset:
    """`eval_data` on in-memory [0,1] images: normalised by `spec`, in the given order."""
    images = normalize(tf.constant(np.asarray(images, np.float32)), spec.mean, spec.std)
    return tf.data.Dataset.from_tensor_slices(
        (images, np.asarray(labels, np.int32))).batch(batch_size).prefetch(AUTOTUNE)


def eval_data(name: str, *, batch_size: int, split: str = "test", data_dir: str | None = None,
              limit: int | None = None, image_size: int | None = None,
              normalization: tuple | None = None, raw: bool = False) -> tf.data.Dataset:
    """A split in its stored order, normalised, the last batch possibly smaller.

    `split="test"` is ImageNet's validation split (it has no labelled test split).

    Args:
      name, batch_size, data_dir, limit, image_size: as in `search_data`.
      normalization: (mean, std) to use instead of the spec's: an exported model's own
        (the statistics stored with its run).
      raw: uint8 images in [0, 255] as a deployed model takes them (ImageNet resized and
        centre-cropped), not normalised.
    """
    spec = get_spec(name, data_dir, image_size)
    if normalization is not None:
        spec = dataclasses.replace(spec, mean=tuple(normalization[0]),
                                   std=tuple(normalization[1]))
    ds, decode = source(name, split, None, limit, data_dir, image_size=image_size)
    preprocess = _plain(spec, normalize_images=not raw)
    if raw:
        def to_uint8(image):
            return tf.cast(tf.clip_by_value(tf.round(image * 255.0), 0, 255), tf.uint8)
    else:
        def to_uint8(image):
            return image
    ds = ds.map(lambda raw_image, label: (to_uint8(preprocess(decode(raw_image))), label),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
