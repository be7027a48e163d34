"""Evaluation of an exported SavedModel: accuracy, parameter count and latency.

Needs only TensorFlow and `trainers` (no darts_tf): the SavedModel written by
`darts-retrain` (`Model.export`) is served with plain `tf.saved_model.load`,
exactly as a deployment would use it.
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from trainers import data
from trainers.runtime.losses import count_in_top_k, cross_entropy


def _serving_fn(loaded):
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


def evaluate_saved_model(path: str, dataset: str = "digits", split: str = "test",
                         batch_size: int = 256, data_dir: str | None = None,
                         limit: int | None = None, timed_batches: int = 5) -> dict:
    """Top-1 / top-5 accuracy, parameter count and latency of a SavedModel on a data split.

    Args:
      path: SavedModel directory (e.g. `workdir/saved_model` from darts-retrain).
      dataset, split, data_dir, limit: the data (`trainers.data.eval_data`: the
        training normalisation, no augmentation; "test" is ImageNet's validation).
      batch_size: evaluation batch size, also the batch whose latency is timed.
      timed_batches: latency = median over this many calls on the first batch,
        after one warm-up call.

    Returns:
      A JSON-able dict: top1, top5, loss, examples, params / params_auxiliary /
      params_total, latency_ms_per_batch (median), latency_batch_size, and the
      arguments.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: "
                         f"batch_size={batch_size!r}")
    data.get_spec(dataset, data_dir)  # an unknown or absent data set fails before the load
    loaded = tf.saved_model.load(path)
    serve = _serving_fn(loaded)
    ds = data.eval_data(dataset, batch_size=batch_size, split=split, data_dir=data_dir,
                        limit=limit)
    top1 = top5 = loss = 0.0
    count, first = 0, None
    for images, labels in ds:
        first = images if first is None else first
        logits = serve(images)
        top1 += float(count_in_top_k(labels, logits, 1))
        top5 += float(count_in_top_k(labels, logits, min(5, int(logits.shape[-1]))))
        loss += float(tf.reduce_sum(cross_entropy(labels, logits)))
        count += int(labels.shape[0])
    if count == 0:
        raise ValueError(f"{dataset} split {split!r} is empty.")
    serve(first)  # warm-up
    times = []
    for _ in range(max(timed_batches, 1)):
        start = time.perf_counter()
        serve(first).numpy()
        times.append(time.perf_counter() - start)
    return {"saved_model": str(path), "dataset": dataset, "split": split, "examples": count,
            "top1": top1 / count, "top5": top5 / count, "loss": loss / count,
            **count_saved_model_params(loaded),
            "latency_ms_per_batch": 1000.0 * float(np.median(times)),
            "latency_batch_size": int(first.shape[0])}
