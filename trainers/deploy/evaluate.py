"""Evaluation of an exported model: accuracy, size on disk, parameter count and latency.

Needs only TensorFlow and `trainers` (no darts_tf): the SavedModel written by
`darts-retrain` (`Model.export`) is served with plain `tf.saved_model.load`,
exactly as a deployment would use it; a .tflite file of `darts-export` runs in the
LiteRT interpreter (`trainers.deploy.tflite`) on raw uint8 images. Both are fed
with the normalisation and image size stored with the model (its data set's spec).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainers import data
from trainers.runtime.losses import count_in_top_k, cross_entropy


def serving_fn(loaded):
    """The `serve` endpoint of a Keras export, else the default signature's only output."""
    if hasattr(loaded, "serve"):
        return loaded.serve
    signature = loaded.signatures["serving_default"]

    def serve(x):
        outputs = signature(x)
        if len(outputs) != 1:
            raise ValueError(f"serving_default has outputs {sorted(outputs)}; expected one "
                             "(the logits).")
        return next(iter(outputs.values()))
    return serve


def count_saved_model_params(loaded) -> dict:
    """Sizes of the SavedModel's trainable variables, split by "auxiliary" in the name.

    Returns:
      {"params": without the auxiliary head (as the reference reports),
       "params_auxiliary": the auxiliary head's, "params_total": their sum}.
    """
    variables = list(getattr(loaded, "trainable_variables", None) or [])
    aux = sum(int(np.prod(v.shape)) for v in variables if "auxiliary" in v.name)
    total = sum(int(np.prod(v.shape)) for v in variables)
    return {"params": total - aux, "params_auxiliary": aux, "params_total": total}


def size_on_disk(path) -> int:
    """Bytes of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _data_for(spec, dataset, data_dir, split, batch_size, limit, raw):
    """The evaluation data as the model `spec` was trained on it (size, normalisation)."""
    from trainers.deploy.tflite import data_image_size  # pylint: disable=import-outside-toplevel

    dataset = dataset or spec.name
    image_size = data_image_size(spec, dataset)
    evaluated = data.get_spec(dataset, data_dir, image_size)
    if spec.class_names and evaluated.class_names and (
            tuple(spec.class_names) != tuple(evaluated.class_names)):
        raise data.DataError(
            f"The model was trained on the classes {list(spec.class_names)} and {dataset} "
            f"{data_dir or ''} has the classes {list(evaluated.class_names)}.")
    return dataset, data.eval_data(dataset, batch_size=batch_size, split=split,
                                   data_dir=data_dir, limit=limit, image_size=image_size,
                                   normalization=(spec.mean, spec.std), raw=raw)


def _score(predict, ds, dataset, split) -> tuple[dict, object]:
    """Top-1/top-5/loss of `predict` (a batch -> logits) over `ds`; and its first batch."""
    top1 = top5 = loss = 0.0
    count, first = 0, None
    for images, labels in ds:
        first = images if first is None else first
        logits = tf.convert_to_tensor(predict(images))
        top1 += float(count_in_top_k(labels, logits, 1))
        top5 += float(count_in_top_k(labels, logits, min(5, int(logits.shape[-1]))))
        loss += float(tf.reduce_sum(cross_entropy(labels, logits)))
        count += int(labels.shape[0])
    if count == 0:
        raise ValueError(f"{dataset} split {split!r} is empty.")
    return {"examples": count, "top1": top1 / count, "top5": top5 / count,
            "loss": loss / count}, first


def _median_ms(call, calls: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(max(calls, 1)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def evaluate_saved_model(path: str, dataset: str | None = None, split: str = "test",
                         batch_size: int = 256, data_dir: str | None = None,
                         limit: int | None = None, timed_batches: int = 5) -> dict:
    """Top-1 / top-5 accuracy, size, parameter count and latency of a SavedModel.

    Args:
      path: SavedModel directory (e.g. `workdir/saved_model` from darts-retrain).
      dataset, split, data_dir, limit: the data (`trainers.data.eval_data`, no
        augmentation; "test" is ImageNet's validation). `dataset` defaults to the one
        stored with the model; the model's stored normalisation and image size are used.
      batch_size: evaluation batch size, also the batch whose latency is timed.
      timed_batches: latency = median over this many calls on the first batch (and over
        10x as many calls on its first image), after one warm-up call.

    Returns:
      A JSON-able dict: top1, top5, loss, examples, params / params_auxiliary /
      params_total, size_bytes, latency_ms_per_batch (median), latency_batch_size,
      latency_ms_per_image (batch 1), and the arguments.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: "
                         f"batch_size={batch_size!r}")
    from trainers.deploy.tflite import model_spec  # pylint: disable=import-outside-toplevel

    if dataset is not None:
        data.get_spec(dataset, data_dir)  # an unknown or absent data set fails before the load
    if not Path(path).is_dir():
        raise OSError(f"No SavedModel directory at {path}.")
    spec = model_spec(path, dataset, data_dir)
    loaded = tf.saved_model.load(path)
    serve = serving_fn(loaded)
    dataset, ds = _data_for(spec, dataset, data_dir, split, batch_size, limit, raw=False)
    scores, first = _score(serve, ds, dataset, split)
    return {"saved_model": str(path), "dataset": dataset, "split": split, **scores,
            **count_saved_model_params(loaded), "size_bytes": size_on_disk(path),
            "latency_ms_per_batch": _median_ms(lambda: serve(first).numpy(), timed_batches),
            "latency_batch_size": int(first.shape[0]),
            "latency_ms_per_image": _median_ms(lambda: serve(first[:1]).numpy(),
                                               10 * timed_batches)}


def evaluate_tflite(path: str, dataset: str | None = None, split: str = "test",
                    batch_size: int = 256, data_dir: str | None = None,
                    limit: int | None = None, timed_batches: int = 5) -> dict:
    """`evaluate_saved_model` for a .tflite file of `darts-export`, in the LiteRT
    interpreter, on raw uint8 images (the data set and class names from its sidecar)."""
    from trainers.deploy.tflite import LiteRTModel, model_spec  # pylint: disable=import-outside-toplevel

    model = LiteRTModel(path)
    spec = model.spec or model_spec(Path(path).parent, dataset, data_dir)
    dataset, ds = _data_for(spec, dataset, data_dir, split, batch_size, limit, raw=True)
    scores, first = _score(lambda images: model(images.numpy()), ds, dataset, split)
    first = first.numpy()
    return {"model": str(path), "dataset": dataset, "split": split, **scores,
            "size_bytes": size_on_disk(path),
            "latency_ms_per_batch": _median_ms(lambda: model(first), timed_batches),
            "latency_batch_size": int(first.shape[0]),
            "latency_ms_per_image": _median_ms(lambda: model(first[:1]), 10 * timed_batches)}


def evaluate(path: str, **kwargs) -> dict:
    """`evaluate_tflite` for a .tflite file, else `evaluate_saved_model`."""
    if str(path).endswith(".tflite"):
        return evaluate_tflite(path, **kwargs)
    return evaluate_saved_model(path, **kwargs)
