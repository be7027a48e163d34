"""Predictions for image files from an exported model (a SavedModel or a .tflite file).

    predict("runs/digits/retrain/saved_model", ["seven.png"], top_k=3)
    -> [{"image": "seven.png", "top_k": [{"class": "7", "probability": 0.98}, ...]}]

Each file is decoded with `tf.io.decode_image` (JPEG, PNG, BMP, GIF), turned grey or
colour as the model's input and resized to its size (`trainers.data.folders`, the
same as training did), then given to the model: a .tflite file takes the uint8 image,
a SavedModel the image normalised with the statistics stored with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from trainers import data
from trainers.data import folders
from trainers.deploy.evaluate import serving_fn
from trainers.deploy.tflite import LiteRTModel, model_spec


def load_image(path, shape) -> np.ndarray:
    """An image file as uint8 (H, W, C) of the model input `shape` (resized if needed).

    Raises:
      DataError: a missing, unreadable or corrupt file (named).
    """
    height, width, channels = shape
    if not Path(path).is_file():
        raise data.DataError(f"No image file at {path}.")
    try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise data.DataError(f"{path} is not a readable JPEG, PNG, BMP or GIF image (corrupt "
                             "or another format).") from None
    if channels == 3 and image.shape[-1] in (1, 2):
        image = tf.image.grayscale_to_rgb(image[..., :1])
    size = None if tuple(image.shape[:2]) == (height, width) else (height, width)
    return folders.to_model_image(image, channels, size).numpy()


def _model(path):
    """(spec, images uint8 -> logits) of a .tflite file or a SavedModel."""
    if str(path).endswith(".tflite"):
        model = LiteRTModel(path)
        if model.spec is None:
            raise data.DataError(f"{path} has no sidecar {Path(path).with_suffix('.json')} "
                                 "(written by darts-export): its class names are unknown.")
        return model.spec, model
    if not Path(path).is_dir():
        raise OSError(f"No SavedModel directory or .tflite file at {path}.")
    spec = model_spec(path)
    loaded = tf.saved_model.load(str(path))  # kept alive by the closure: it owns the variables
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)

    def model(images):
        return serving_fn(loaded)(tf.constant((images / np.float32(255) - mean) / std))
    return spec, model


def predict(model_path, image_paths, top_k: int = 5) -> list[dict]:
    """The `top_k` classes (names and softmax probabilities) of each image file.

    Args:
      model_path: a SavedModel directory of darts-retrain or a .tflite file of darts-export.
      image_paths: image files (any size: resized to the model's input).
      top_k: classes reported per image (at most the number of classes).

    Returns:
      [{"image": path, "top_k": [{"class": name, "probability": p}, ...]}, ...].
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer. Received: top_k={top_k!r}")
    spec, model = _model(model_path)
    names = list(spec.class_names) or [str(i) for i in range(spec.num_classes)]
    images = np.stack([load_image(p, spec.image_shape) for p in image_paths])
    probabilities = tf.nn.softmax(tf.convert_to_tensor(model(images)), axis=-1).numpy()
    results = []
    for path, row in zip(image_paths, probabilities):
        order = np.argsort(-row, kind="stable")[:top_k]
        results.append({"image": str(path), "top_k": [
            {"class": names[i], "probability": float(row[i])} for i in order]})
    return results
