"""The run skeleton shared by search, retraining and tuner trials.

A run lives in a work directory. This module owns what every stage does there the same
way: the check that the directory belongs to the same run (`check_same_run`), atomic
file writes (`write_json`, `write_text`, `write_jsonl_line`), and `RunState`: the
position in the run (epoch, step in epoch, global step, the epoch's metric sums, wall
time), its checkpoints (model variables by name, plus the stage's optimizers and
counters) and their restore.

Write policy (one for every stage): the chief (`distribute.is_chief`: the only process
without a cluster) writes the work directory: config, JSON, JSONL, TensorBoard,
checkpoints and the final artifacts. Another worker of a multi-worker cluster writes
only its checkpoints, into `WORKDIR/.{task_type}_{task_id}/checkpoints`, because
TensorFlow's multi-worker checkpointing has every worker save and they must not
overwrite the chief's; it writes no other file (its TensorBoard writer is a no-op).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from configs.base import ConfigError
from trainers.runtime import distribute
from trainers.runtime.optim import tf_variable

logger = logging.getLogger(__name__)

_OPTIONAL_IN_CHECKPOINT = {"wall_time"}  # absent from search checkpoints of darts-tf 0.1


class DivergedError(FloatingPointError):
    """A loss became NaN or infinite; nothing was saved after the last good checkpoint."""


class RunMismatchError(ConfigError):
    """The work directory holds another run (another config, genotype or checkpoint layout)."""


# Files ---------------------------------------------------------------------------------------


def write_text(path, text: str) -> None:
    """Atomic write: a reader (or a resumed run) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path, content) -> None:
    """`content` as indented, sorted JSON, written atomically."""
    write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def read_jsonl(path, before_epoch: int | None = None) -> list[dict]:
    """The lines of a JSONL file (none if absent), only those of epochs < `before_epoch`."""
    path = Path(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if before_epoch is None or line["epoch"] < before_epoch]


def write_jsonl_line(path, line: dict) -> None:
    """Appends `line` (one epoch's record); a replayed epoch (after a resume) replaces its
    line and drops the later ones. Atomic, like `write_json`."""
    lines = read_jsonl(path, before_epoch=line["epoch"]) + [line]
    write_text(path, "".join(json.dumps(item) + "\n" for item in lines))


def check_same_run(config, workdir, files: dict[str, str] | None = None) -> None:
    """Refuses a work directory that holds a different run.

    Args:
      config: the run's config (a ConfigIO dataclass); its RESUMABLE_CHANGES may differ.
      workdir: the work directory (nothing to check if it has no config.json).
      files: {file name in workdir: the text this run writes there} that must match too
        (e.g. the genotype a retraining trains).

    Raises:
      RunMismatchError: naming the directory and the fields that differ.
    """
    workdir = Path(workdir)
    previous = workdir / "config.json"
    if not previous.exists():
        return
    changed = config.changed_fields(type(config).from_json(previous.read_text(), str(previous)))
    for name, text in (files or {}).items():
        if (workdir / name).exists() and (workdir / name).read_text() != text:
            changed.append(name.rsplit(".", 1)[0])
    if changed:
        raise RunMismatchError(f"{workdir} holds a run with different {changed}: resume it "
                               "with the same config or use a new work directory.")


def variable_names(model, variables) -> list[str]:
    """Stable, unique names: the path without the model's name (Keras numbers models per
    process: supernet, supernet_1, ...), then "#2", "#3"... for repeated paths (layers built
    outside their parent's scope share paths, e.g. every cell's "preprocess0/kernel")."""
    prefix, seen, names = model.name + "/", {}, []
    for v in variables:
        path = v.path[len(prefix):] if v.path.startswith(prefix) else v.path
        seen[path] = seen.get(path, 0) + 1
        names.append(path if seen[path] == 1 else f"{path}#{seen[path]}")
    return names


# The run's position and checkpoints ------------------------------------------------------------


class RunState:
    """Position in a run, its checkpoints and where this process writes.

    Args:
      workdir: the work directory.
      strategy: the run's tf.distribute strategy (for the write policy).
      model: its variables are checkpointed by name (`variable_names`): a
        `tf.train.Checkpoint(model=model)` on a Keras 3 model reaches only variables held
        directly as attributes, not those in lists of cells or dicts of batch norms.
      objects: the stage's other trackables by name (optimizers, learning rate, ...).
      metrics: the names of the per-step metrics whose epoch sums are kept.
      checkpoint_every: steps between checkpoints (`step_done`; epoch ends save too).
    """

    def __init__(self, workdir, strategy, model, objects: dict, *, metrics: tuple[str, ...],
                 checkpoint_every: int):
        self.workdir = Path(workdir)
        self.chief = distribute.is_chief(strategy)
        self.checkpoint_every = checkpoint_every
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.metrics = tuple(metrics)
        self.sums = np.zeros(len(self.metrics))  # this epoch's metric sums, for the epoch means
        self.wall_time = 0.0
        self._counters = {name: tf.Variable(0, dtype=tf.int64, trainable=False)
                          for name in ("epoch", "step_in_epoch", "step")}
        self._counters["metric_sums"] = tf.Variable(self.sums, trainable=False)
        self._counters["wall_time"] = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        model_variables = dict(zip(variable_names(model, model.variables),
                                   (tf_variable(v) for v in model.variables)))
        self._objects = {"model_variables": model_variables, **objects, **self._counters}
        worker = distribute.worker_name(strategy)
        directory = self.workdir if worker is None else self.workdir / f".{worker}"
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(**self._objects),
                                                  str(directory / "checkpoints"), max_to_keep=3)
        self._mark = time.time()

    def summary_writer(self):
        """TensorBoard writer into WORKDIR/tensorboard (a no-op writer on other workers)."""
        if self.chief:
            return tf.summary.create_file_writer(str(self.workdir / "tensorboard"))
        return tf.summary.create_noop_writer()

    def restore(self) -> int | None:
        """Restores the latest checkpoint, if any; returns its global step (None if none)."""
        path = self.manager.latest_checkpoint
        if path is None:
            self._mark = time.time()
            return None
        present = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
        missing = set(self._objects) - present
        legacy = any(name.split("/")[1].isdigit() for name, _ in tf.train.list_variables(path)
                     if name.startswith("model_variables/"))
        if legacy or missing - _OPTIONAL_IN_CHECKPOINT:
            raise RunMismatchError(
                f"{path} has another checkpoint layout (written by an older darts-tf, which "
                f"kept {'the model variables by position' if legacy else 'no ' + str(sorted(missing))}"
                "): it cannot be resumed by this version; use a new work directory.")
        objects = {k: v for k, v in self._objects.items() if k in present}
        tf.train.Checkpoint(**objects).restore(path).assert_existing_objects_matched()
        self.epoch, self.step_in_epoch, self.global_step = (
            int(self._counters[k].numpy()) for k in ("epoch", "step_in_epoch", "step"))
        self.sums = self._counters["metric_sums"].numpy()
        self.wall_time = float(self._counters["wall_time"].numpy())
        logger.info("Resumed from %s: epoch %d, step %d (global step %d).", path, self.epoch,
                    self.step_in_epoch, self.global_step)
        self._mark = time.time()
        return self.global_step

    def elapsed(self) -> float:
        """Wall time of the run so far, resumed parts included (seconds)."""
        return self.wall_time + time.time() - self._mark

    def save(self) -> str:
        """Checkpoints the current position (every worker saves; see the write policy)."""
        now = time.time()
        self.wall_time, self._mark = self.wall_time + now - self._mark, now
        for name, value in (("epoch", self.epoch), ("step_in_epoch", self.step_in_epoch),
                            ("step", self.global_step), ("metric_sums", self.sums),
                            ("wall_time", self.wall_time)):
            self._counters[name].assign(value)
        return self.manager.save(checkpoint_number=self.global_step)

    def step_done(self, metrics: dict, finite=("loss",)) -> None:
        """Counts one step and adds its `metrics` to the epoch's sums.

        Raises:
          DivergedError: a metric named in `finite` is NaN or infinite; the step is not
            counted and nothing is saved.
        """
        if not all(math.isfinite(metrics[k]) for k in finite):
            raise DivergedError(
                f"Non-finite loss at epoch {self.epoch} step {self.step_in_epoch} (global step "
                f"{self.global_step}): {metrics}. Nothing was saved after it; the last "
                f"checkpoint is {self.manager.latest_checkpoint}.")
        self.step_in_epoch += 1
        self.global_step += 1
        self.sums += [metrics[k] for k in self.metrics]
        if self.global_step % self.checkpoint_every == 0:
            self.save()

    def epoch_means(self) -> dict[str, float]:
        """The means of this epoch's metrics so far."""
        return dict(zip(self.metrics, (self.sums / max(self.step_in_epoch, 1)).tolist()))

    def next_epoch(self) -> None:
        """Moves to the next epoch and checkpoints its start."""
        self.epoch, self.step_in_epoch, self.sums = self.epoch + 1, 0, np.zeros(len(self.metrics))
        self.save()
