"""The search's data from `Model.fit`-style inputs (numpy arrays or a tf.data dataset), as
KerasTuner trials pass them: split into the weights' and the alphas' halves.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainers.data.sources import stream_seed

_SHUFFLE_BUFFER = 10_000  # search-time shuffle of a tf.data input, per half


def search_data_fn(x, y, config):
    """The search's data hook for `Model.fit`-style inputs: (data_fn, input_shape).

    `config` is the trial's SearchConfig (batch_size, seed and data_limit are read).

    `data_fn(epoch)` returns (weights_ds, alphas_ds) of global batches of
    `config.batch_size` (float32 images, int32 labels, remainders dropped), each half
    reshuffled by (config.seed, epoch) alone.

    - numpy arrays (or tensors) x, y: the first half trains the weights, the second the
      alphas, as the reference (train_portion 0.5);
    - a tf.data dataset x of (images, labels[, weights]) batches, y None: an example
      goes to the weights or the alphas by a hash of its image bytes, so that a dataset
      reshuffled on every pass still splits the same way (about half each); it must be
      finite.
    `config.data_limit` keeps only the first examples.
    """
    if isinstance(x, tf.data.Dataset):
        return _dataset_halves(x, y, config)
    if x is None or y is None:
        raise ValueError("DartsTuner.search: pass x and y (arrays) or x as a tf.data dataset "
                         f"of (images, labels) batches. Received: x={type(x).__name__}, "
                         f"y={type(y).__name__}")
    x, y = np.asarray(x, np.float32), np.asarray(y)
    if x.ndim != 4 or len(y) != len(x):
        raise ValueError("DartsTuner.search: expected images x of shape (N, H, W, C) and N "
                         f"labels y. Received: x.shape={x.shape}, y.shape={y.shape}")
    y = y.reshape(len(y), -1)[:, 0].astype(np.int32) if y.ndim > 1 else y.astype(np.int32)
    if config.data_limit:
        x, y = x[:config.data_limit], y[:config.data_limit]
    half = len(x) // 2
    halves = {"weights": (x[:half], y[:half]), "alphas": (x[half:], y[half:])}
    if half < config.batch_size:
        raise ValueError(f"DartsTuner.search: {len(x)} examples give halves of {half}, fewer "
                         f"than batch_size={config.batch_size}: no full search batch.")

    def data_fn(epoch):
        result = []
        for stream, (images, labels) in halves.items():
            order = np.random.default_rng(stream_seed(f"tuner/{stream}", config.seed, epoch)).permutation(
                len(labels))
            ds = tf.data.Dataset.from_tensor_slices((images[order], labels[order]))
            result.append(ds.batch(config.batch_size, drop_remainder=True).prefetch(2))
        return tuple(result)
    return data_fn, x.shape[1:]


def _dataset_halves(ds: tf.data.Dataset, y, config):
    if y is not None:
        raise ValueError("DartsTuner.search: y must be None when x is a tf.data dataset.")
    if ds.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError("DartsTuner.search: the tf.data dataset is infinite (repeat()); the "
                         "search needs a finite one (it passes over it once per epoch).")
    spec = ds.element_spec
    if not (isinstance(spec, tuple) and len(spec) >= 2 and len(spec[0].shape) == 4):
        raise ValueError("DartsTuner.search: expected a dataset of (images, labels) batches, "
                         f"images (B, H, W, C). Received: element_spec={spec}")

    def example(images, labels, *_):
        return tf.cast(images, tf.float32), tf.reshape(tf.cast(labels, tf.int32), [])
    examples = ds.unbatch().map(example, num_parallel_calls=tf.data.AUTOTUNE)
    if config.data_limit:
        examples = examples.take(config.data_limit)

    def half_of(image):
        return tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(image), 2)

    def data_fn(epoch):
        result = []
        for index, stream in enumerate(("weights", "alphas")):
            half = examples.filter(lambda image, _, i=index: tf.equal(half_of(image), i))
            half = half.shuffle(_SHUFFLE_BUFFER, seed=stream_seed(f"tuner/{stream}", config.seed, epoch),
                                reshuffle_each_iteration=False)
            result.append(half.batch(config.batch_size, drop_remainder=True).prefetch(2))
        return tuple(result)
    return data_fn, tuple(spec[0].shape[1:])
