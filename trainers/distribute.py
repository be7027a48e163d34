"""The execution environment of a run: which tf.distribute strategy, who writes files, and
whether ops are deterministic.

Search and retraining both go through `make_strategy` (config field `strategy`:
default | mirrored | multi_worker) and, under several workers, write their work
directory only from the chief (`output_dir` gives the others a private one, as
TensorFlow's multi-worker checkpointing wants every worker to save).
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy named `name`; one object per name and process.

    "mirrored" uses every GPU or, without GPUs, every logical CPU device (so two
    logical CPUs give two replicas on a CPU-only machine). "multi_worker" reads the
    cluster from TF_CONFIG. Strategies are cached: two MirroredStrategy objects in
    one process start their collective keys at the same base, and the second one's
    all-reduces then meet the first one's ("Shape mismatch in the collective
    instance 100", TF 2.21).
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; expected one of {STRATEGIES}.")
    if name == "default":
        return tf.distribute.get_strategy()
    return _cached_strategy(name)


@functools.lru_cache(maxsize=None)
def _cached_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def output_dir(strategy, workdir: Path) -> Path:
    """`workdir` for the chief; a private `workdir/.worker_{id}` for the other workers."""
    if is_chief(strategy):
        return Path(workdir)
    resolver = strategy.cluster_resolver
    return Path(workdir) / f".{resolver.task_type}_{resolver.task_id}"


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """Deterministic TensorFlow ops for the duration of a run, when `enabled`.

    The switch is process-wide; it is turned back off afterwards, so that a later run
    in the same process (a KerasTuner trial, a test) is not silently deterministic.
    """
    from tensorflow.python.framework import config as tf_config  # pylint: disable=import-outside-toplevel

    switch = enabled and not tf_config.is_op_determinism_enabled()
    if switch:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if switch:
            tf_config.disable_op_determinism()
