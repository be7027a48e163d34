"""The retrain loop's bookkeeping: set-up, checkpoints, logs and the files it hands on.

Kept apart from `trainers/retrain.py` so that the loop there fits on a screen.
Only the chief (`trainers.distribute.is_chief`) writes into the work directory;
other workers checkpoint into their private `distribute.output_dir`, as
multi-worker checkpointing needs every worker to save.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from trainers import data, distribute
from trainers.config import ConfigError
from trainers.retrain_config import RetrainConfig

# Changing these between a kill and the restart does not change the result.
_HARMLESS = {"log_every", "checkpoint_every", "eval_batch_size", "genotype", "data_dir"}


def write_json(path: Path, content) -> None:
    """Atomic write: a reader (or a resumed run) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _auxiliary_pool_size(config: RetrainConfig, height: int) -> int:
    """Side of the auxiliary head's pooled map (it must be 2: a 2x2 conv, then 768 features).

    The head sits on the second reduction cell's output: H / 4 (CIFAR) or H / 32
    (ImageNet: three stride-2 stem convs first), then a 5x5 pool, stride 3 or 2.
    """
    stages, stride = (5, 2) if config.network == "imagenet" else (2, 3)
    for _ in range(stages):
        height = math.ceil(height / 2)
    return (height - 5) // stride + 1 if height >= 5 else 0


@dataclasses.dataclass
class Setup:
    """A validated config with everything derived from it."""
    config: RetrainConfig
    spec: data.DataSpec
    genotype: object
    model_fn: Callable
    data_fn: Callable
    eval_fn: Callable


def prepare(config, workdir, data_fn=None, eval_fn=None) -> Setup:
    """Validates `config` against the data set and any earlier run in `workdir`, then writes
    `config.json` and `genotype.json`. Nothing is written when it raises ConfigError."""
    from darts_tf import NetworkCIFAR, NetworkImageNet  # pylint: disable=import-outside-toplevel
    from darts_tf.genotype import GenotypeError, load_genotype  # pylint: disable=import-outside-toplevel

    if isinstance(config, dict):
        config = RetrainConfig(**config)
    if not isinstance(config, RetrainConfig):
        raise ConfigError(f"Expected a RetrainConfig, received {type(config).__name__}.")
    try:
        genotype = load_genotype(config.genotype)
    except GenotypeError as err:
        raise ConfigError(f"Invalid config value genotype={config.genotype!r}: {err}") from None
    spec = data.get_spec(config.dataset, config.data_dir)
    pooled = _auxiliary_pool_size(config, min(spec.image_shape[:2]))
    if config.auxiliary and pooled != 2:
        raise ConfigError(
            f"Invalid config value auxiliary=True: the auxiliary head needs a feature map that "
            f"pools to 2x2 (CIFAR: 32x32 input, ImageNet: 224x224), and {config.dataset} "
            f"images {spec.image_shape[:2]} give {pooled}x{pooled}; set auxiliary=False.")
    workdir = Path(workdir)
    _check_previous_run(config, genotype, workdir)
    network = NetworkImageNet if config.network == "imagenet" else NetworkCIFAR
    model_fn = functools.partial(
        network, genotype, num_classes=spec.num_classes, init_channels=config.init_channels,
        num_cells=config.num_cells, auxiliary=config.auxiliary,
        drop_path_rate=config.drop_path_rate, input_channels=spec.image_shape[-1])
    data_fn = data_fn or (lambda epoch: data.train_data(
        config.dataset, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
        augment=config.augment, cutout=config.cutout, data_dir=config.data_dir,
        limit=config.data_limit))
    eval_fn = eval_fn or (lambda: data.eval_data(
        config.dataset, batch_size=config.eval_batch_size, split="test",
        data_dir=config.data_dir))
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(workdir / "config.json", config.to_dict())
    (workdir / "genotype.json").write_text(genotype.to_json())
    return Setup(config, spec, genotype, model_fn, data_fn, eval_fn)


def _check_previous_run(config: RetrainConfig, genotype, workdir: Path) -> None:
    previous = workdir / "config.json"
    if not previous.exists():
        return
    old = RetrainConfig.from_json(previous.read_text(), str(previous))
    changed = [f.name for f in dataclasses.fields(config)
               if f.name not in _HARMLESS and getattr(old, f.name) != getattr(config, f.name)]
    old_genotype = workdir / "genotype.json"
    if old_genotype.exists() and old_genotype.read_text() != genotype.to_json():
        changed.append("genotype")
    if changed:
        raise ConfigError(f"{workdir} holds a run with different {changed}: resume it with the "
                          "same config or use a new work directory.")


class State:
    """Position in the run, its checkpoints, `metrics.jsonl` and TensorBoard scalars."""

    def __init__(self, trainer, workdir: Path, config: RetrainConfig):
        self.workdir, self.config = workdir, config
        self.chief = distribute.is_chief(trainer.strategy)
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.sums = np.zeros(2)  # this epoch's (loss, accuracy) sums, for the epoch means
        self.wall_time, self.history = 0.0, []
        self._vars = {name: tf.Variable(0, dtype=tf.int64, trainable=False)
                      for name in ("epoch", "step_in_epoch", "global_step")}
        self._vars["metric_sums"] = tf.Variable(self.sums, trainable=False)
        self._vars["wall_time"] = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        # The model's variables as a flat list (the model is rebuilt from the same config, so
        # the order is fixed), not `model=`: in Keras 3.15 a checkpoint follows only a layer's
        # direct attributes, never its lists or dicts (our cells, batch norms), so it would
        # miss most weights. The list also holds the drop path SeedGenerator states.
        model_variables = [v.value for v in trainer.model.variables]
        checkpoint = tf.train.Checkpoint(model_variables=model_variables,
                                         optimizer=trainer.optimizer, **self._vars)
        directory = distribute.output_dir(trainer.strategy, workdir) / "checkpoints"
        self.manager = tf.train.CheckpointManager(checkpoint, str(directory), max_to_keep=3)
        self.writer = (tf.summary.create_file_writer(str(workdir / "tensorboard")) if self.chief
                       else tf.summary.create_noop_writer())
        self._mark = time.time()

    def restore(self) -> int | None:
        """Restores the latest checkpoint, if any; returns its global step."""
        path = self.manager.latest_checkpoint
        if path is not None:
            self.manager.checkpoint.restore(path).assert_existing_objects_matched()
            self.epoch, self.step_in_epoch, self.global_step = (
                int(self._vars[k].numpy()) for k in ("epoch", "step_in_epoch", "global_step"))
            self.sums = self._vars["metric_sums"].numpy()
            self.wall_time = float(self._vars["wall_time"].numpy())
            print(f"Resumed from {path}: epoch {self.epoch}, step {self.step_in_epoch} "
                  f"(global step {self.global_step}).", flush=True)
        # Epoch lines written after that checkpoint are written again.
        lines = self.workdir / "metrics.jsonl"
        if lines.exists():
            self.history = [line for line in map(json.loads, lines.read_text().splitlines())
                            if line["epoch"] < self.epoch]
        if self.chief:
            lines.write_text("".join(json.dumps(line) + "\n" for line in self.history))
        self._mark = time.time()
        return self.global_step if path is not None else None

    def save(self) -> str:
        now = time.time()
        self.wall_time, self._mark = self.wall_time + now - self._mark, now
        for name, value in (("epoch", self.epoch), ("step_in_epoch", self.step_in_epoch),
                            ("global_step", self.global_step), ("metric_sums", self.sums),
                            ("wall_time", self.wall_time)):
            self._vars[name].assign(value)
        return self.manager.save(checkpoint_number=self.global_step)

    def step_done(self, metrics: dict, lr: float, drop_path: float) -> None:
        self.step_in_epoch += 1
        self.global_step += 1
        self.sums += (metrics["loss"], metrics["accuracy"])
        if self.global_step % self.config.log_every == 0:
            for name, value in (("train/loss", metrics["loss"]),
                                ("train/accuracy", metrics["accuracy"]), ("lr", lr),
                                ("drop_path_prob", drop_path)):
                tf.summary.scalar(name, value, step=self.global_step)
        if self.global_step % self.config.checkpoint_every == 0:
            self.save()

    def finish_epoch(self, trainer, test: dict) -> None:
        """Appends the epoch's line to metrics.jsonl, then checkpoints the epoch's end."""
        steps = max(self.step_in_epoch, 1)
        line = {"epoch": self.epoch, "global_step": self.global_step,
                "lr": float(trainer.lr.numpy()),
                "drop_path_prob": float(trainer.model.drop_path_prob.numpy())
                                  if hasattr(trainer.model, "drop_path_prob") else 0.0,
                "train_loss": self.sums[0] / steps, "train_accuracy": self.sums[1] / steps,
                "test_loss": test["loss"], "test_top1": test["top1"], "test_top5": test["top5"]}
        for name in ("test_loss", "test_top1", "test_top5"):
            tf.summary.scalar(name.replace("_", "/", 1), line[name], step=self.global_step)
        print(f"epoch {self.epoch}: " + " ".join(
            f"{k} {v:.4g}" for k, v in line.items() if k != "epoch"), flush=True)
        self.history.append(line)
        if self.chief:
            with open(self.workdir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
        self.epoch, self.step_in_epoch, self.sums = self.epoch + 1, 0, np.zeros(2)
        self.save()

    def finish(self, trainer, spec: data.DataSpec) -> dict:
        """Writes model.keras, saved_model/ and final_metrics.json (chief only); returns the
        final metrics."""
        model = trainer.model
        last = self.history[-1]
        final = {"test_top1": last["test_top1"], "test_top5": last["test_top5"],
                 "test_loss": last["test_loss"], "epochs": self.epoch,
                 "global_step": self.global_step,
                 "wall_time_s": self.wall_time + time.time() - self._mark,
                 "params": model.count_params(include_auxiliary=False),
                 "params_with_auxiliary": model.count_params(include_auxiliary=True),
                 "dataset": self.config.dataset}
        if self.chief:
            export_model(model, spec.image_shape, self.workdir)
            write_json(self.workdir / "final_metrics.json", final)
        return final


def export_model(model, input_shape, workdir: Path) -> keras.Model:
    """Saves `model.keras` and `saved_model/` from a copy built outside any strategy.

    The copy is called once on a batch first: our networks record their input
    shape on the first call, which `Model.export` needs for its signature.
    """
    clone = type(model).from_config(model.get_config())
    clone(tf.zeros((1, *input_shape)), training=False)
    clone.set_weights(model.get_weights())
    clone.save(workdir / "model.keras")
    clone.export(str(workdir / "saved_model"), verbose=False)
    return clone
