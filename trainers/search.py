"""The DARTS search loop: alternate architecture and weight steps (Algorithm 1).

    run(SearchConfig(dataset="digits", epochs=2), "/tmp/search")

writes into the work directory `config.json` (the resolved config),
`epoch_{N}.json` (architecture, softmaxed alphas and metrics after epoch N,
counted from 0 as NNI does), `alphas.jsonl` (the raw alphas after every
epoch), `checkpoints/` (resumable state) and finally `genotype.json` (the
supernet's genotype) or `architecture.json` (a user choice model's decisions).

One strategy seam (`SearchTrainer`): variables and optimizers are created in
`strategy.scope()`, `SearchTrainer.step` is one `tf.function` that calls
`strategy.run(_replica_step)` and `strategy.reduce`. Per replica, as the
reference (quark0/darts `cnn/train_search.py` L143-155):

1. architecture step: alpha gradient on the validation batch (trainers/architect.py,
   first or second order), Adam with coupled weight decay;
2. weight step on the training batch: SGD with momentum and coupled weight
   decay (PyTorch semantics, `MomentumSGD`), gradients clipped by global norm;
   batch-norm moving statistics averaged over replicas.

Every update is applied in cross-replica context to all-reduced values, so the
replicas stay bitwise identical whatever the variables' aggregation.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from darts_tf import search_space
from trainers import architect as architect_lib
from trainers import distribute
from trainers.optim import Adam, MomentumSGD, assign_from_replicas, tf_variable
from trainers.progress import Progress
from trainers.config import ConfigError, SearchConfig

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class SearchDivergedError(FloatingPointError):
    """The loss became NaN or infinite; no checkpoint was written after it."""


def cosine_lr(config: SearchConfig, epoch: int) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=w_lr_min), stepped at each epoch start."""
    return config.w_lr_min + (config.w_lr - config.w_lr_min) * (
        1 + math.cos(math.pi * epoch / config.epochs)) / 2


class SearchTrainer:
    """Model, optimizers, architect and the distributed search step for one strategy.

    Args:
      model_fn: builds the searchable model (called inside `strategy.scope()`).
      config: the search config (optimizer settings, unrolled, hessian, batch size).
      strategy: a `tf.distribute.Strategy` (None: the default strategy).
      input_shape: one example's shape, e.g. (32, 32, 3); the model is built on it.
    """

    def __init__(self, model_fn, config: SearchConfig, strategy=None, *, input_shape):
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        # "fast" or "full", decided once (trainers.distribute.graph_optimization).
        self.graph_mode = distribute.resolve_graph_optimization(config.graph_optimization,
                                                                self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ConfigError(f"Invalid config value batch_size={config.batch_size!r}: expected "
                              f"a multiple of the {replicas} replicas.")
        if config.jit_compile and replicas > 1:
            raise ConfigError("Invalid config value jit_compile=True: only supported with one "
                              f"replica (the strategy has {replicas}).")
        with self.strategy.scope():
            self.model = _build_model(model_fn, input_shape, config.mixed_precision)
            # Loss scaling under float16 compute: dynamic, as Keras' LossScaleOptimizer (start
            # 2^15, halve on overflow and skip the update, double after `growth_steps` good
            # steps). bfloat16 has float32's range and needs none. The same on every replica.
            self.loss_scale = self.good_steps = None
            if config.mixed_precision == "mixed_float16":
                first = tf.VariableAggregation.ONLY_FIRST_REPLICA
                self.loss_scale = tf.Variable(2.0 ** 15, trainable=False, name="loss_scale",
                                              aggregation=first)
                self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                              name="loss_scale_good_steps", aggregation=first)
            self.architect = architect_lib.Architect(
                self.model, global_batch_size=config.batch_size, unrolled=config.unrolled,
                hessian=config.hessian, momentum=config.w_momentum,
                weight_decay=config.w_weight_decay, loss_scale=self.loss_scale)
            # Optimizer state stays float32 (the variables are float32 under mixed precision).
            self.w_opt = MomentumSGD(self.architect.weight_variables, momentum=config.w_momentum,
                                     weight_decay=config.w_weight_decay,
                                     clip_norm=config.w_grad_clip)
            self.a_opt = Adam(self.architect.arch_variables, learning_rate=config.alpha_lr,
                              beta_1=config.alpha_beta1, beta_2=config.alpha_beta2,
                              epsilon=1e-8, weight_decay=config.alpha_weight_decay)
            self.lr = tf.Variable(cosine_lr(config, 0), trainable=False, name="w_lr")
        self.growth_steps = 2000
        self.step_traces = 0
        replica_step = self._replica_step
        if config.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True, autograph=False)
        self._replica_fn = replica_step
        # No tensor-dependent Python control flow in the step: AutoGraph would only slow tracing.
        self._step = tf.function(self._distributed_step, autograph=False)

    def set_epoch(self, epoch: int) -> float:
        """Sets the weight learning rate (and xi) for `epoch`; returns it."""
        lr = cosine_lr(self.config, epoch)
        self.lr.assign(lr)
        return lr

    def step(self, train_batch, val_batch) -> dict:
        """One search step on distributed (per-replica) batches; returns global-batch metrics."""
        with distribute.graph_optimization(self.graph_mode):
            return self._step(train_batch, val_batch)

    def _distributed_step(self, train_batch, val_batch):
        self.step_traces += 1  # Python side effect: runs only while tracing.
        per_replica = self.strategy.run(self._replica_fn, args=(train_batch, val_batch))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    def _replica_step(self, train_batch, val_batch):
        """Runs on each replica: the architecture step, then the weight step."""
        arch = self.architect
        alphas = arch.arch_variables
        # Architecture step (Adam adds the coupled weight decay after the all-reduce).
        buffers = [tf.convert_to_tensor(b) for b in self.w_opt.momentum_buffers]
        result = arch.gradients(train_batch, val_batch, lr=self.lr, momentum_buffers=buffers)
        arch_ok = self._all_finite(result.grads)
        self.a_opt.apply(result.grads, alphas, apply_if=arch_ok)
        # Weight step (reads the updated alphas). Its forward pass waits for the architecture
        # step's gradients: nothing else orders the two passes (its convolutions need only the
        # weights), and run side by side both passes' activations would be alive at once.
        with tf.control_dependencies(result.grads):
            train_batch = (tf.identity(train_batch[0]), train_batch[1])
        w, a, nt = arch.read_values()
        loss, logits, new_nt, w_grads = arch.loss_and_grads(w, a, nt, train_batch, "w")
        weights_ok = self._all_finite(w_grads)
        self.w_opt.apply(w_grads, arch.weight_variables, self.lr, apply_if=weights_ok)
        self._update_non_trainables(new_nt)
        self._update_loss_scale(arch_ok, weights_ok)
        return {"loss": loss, "accuracy": self._correct(logits, train_batch[1]),
                "val_loss": result.val_loss,
                "val_accuracy": self._correct(result.val_logits, val_batch[1])}

    def _all_finite(self, grads):
        """Whether every replica's gradients are finite (None without loss scaling: no check)."""
        if self.loss_scale is None:
            return None
        bad = tf.add_n([tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                        for g in grads if g is not None])
        ctx = tf.distribute.get_replica_context()
        return tf.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)

    def _update_loss_scale(self, arch_ok, weights_ok):
        if self.loss_scale is None:
            return
        ok = tf.logical_and(arch_ok, weights_ok)
        good = tf.where(ok, self.good_steps + 1, tf.zeros_like(self.good_steps))
        grow = good >= self.growth_steps
        scale = tf.where(ok, tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                         tf.maximum(self.loss_scale / 2.0, 1.0))
        self.loss_scale.assign(scale)
        self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good))

    def _correct(self, logits, labels):
        hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32))
        return tf.reduce_sum(tf.cast(hits, tf.float32)) / self.config.batch_size

    def _update_non_trainables(self, values):
        """Batch-norm statistics (and other state): the mean over replicas, on every replica."""
        if not values:
            return
        ctx = tf.distribute.get_replica_context()
        variables = self.model.non_trainable_variables
        floats = [i for i, v in enumerate(values) if v.dtype.is_floating]
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [values[i] for i in floats])
        values = list(values)
        for i, v in zip(floats, reduced):
            values[i] = v
        assign_from_replicas(variables, values)

    # Checkpoints ---------------------------------------------------------------------------

    def checkpoint(self, **counters) -> tf.train.Checkpoint:
        """A checkpoint of the model, both optimizers, the lr and the given counter variables.

        The model's variables go in by name (`variable_names`):
        `tf.train.Checkpoint(model=model)` on a Keras 3 model only reaches variables held
        directly as attributes (5 of the tiny supernet's 104: not those in lists of cells
        or in the ops' batch-norm dicts).
        """
        variables = dict(zip(variable_names(self.model, self.model.variables),
                             (tf_variable(v) for v in self.model.variables)))
        if self.loss_scale is not None:
            counters = {**counters, "loss_scale": self.loss_scale, "good_steps": self.good_steps}
        return tf.train.Checkpoint(model_variables=variables, w_opt=self.w_opt,
                                   a_opt=self.a_opt, w_lr=self.lr, **counters)

    def arch_values(self) -> dict[str, np.ndarray]:
        """The raw alphas by name (`variable_names`)."""
        alphas = self.architect.arch_variables
        names = variable_names(self.model, alphas)
        return {k: np.asarray(v.numpy()) for k, v in zip(names, alphas)}


def _build_model(model_fn, input_shape, mixed_precision):
    """model_fn() built on `input_shape`, under the dtype policy `mixed_precision` (or the
    current one): float16/bfloat16 compute, float32 variables (alphas included)."""
    previous = keras.config.dtype_policy()
    if mixed_precision:
        keras.config.set_dtype_policy(mixed_precision)
    try:
        model = model_fn()
        model.build((None, *input_shape))
    finally:
        keras.config.set_dtype_policy(previous)
    return model


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


# The run: data, loop, files -------------------------------------------------------------------


@dataclasses.dataclass
class SearchResult:
    """What `run` returns (the same is on disk in the work directory)."""
    architecture: dict          # export_architecture(model): genotype dict or choice decisions
    alphas: dict                # raw alphas by variable path in the model (numpy arrays)
    history: list               # one dict of metrics per epoch
    global_step: int
    resumed_from_step: int | None
    step_traces: int            # times the step function was traced in this process (1)
    workdir: str


make_strategy = distribute.make_strategy  # kept for callers of trainers.search.make_strategy


def _default_model_fn(config: SearchConfig):
    import darts_tf  # pylint: disable=import-outside-toplevel
    from trainers import data  # pylint: disable=import-outside-toplevel

    spec = data.get_spec(config.dataset, config.data_dir)
    return functools.partial(
        darts_tf.Supernet, num_classes=spec.num_classes, init_channels=config.init_channels,
        num_cells=config.num_cells, num_nodes=config.num_nodes,
        stem_multiplier=config.stem_multiplier, input_channels=spec.image_shape[-1])


def _default_data_fn(config: SearchConfig):
    from trainers import data  # pylint: disable=import-outside-toplevel

    return lambda epoch: data.search_data(
        config.dataset, batch_size=config.batch_size, seed=config.seed, epoch=epoch,
        data_dir=config.data_dir, limit=config.data_limit)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _write_json(path: Path, data) -> None:
    """Atomic write: a reader (or a resumed run) never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _check_config(config, workdir: Path) -> SearchConfig:
    if isinstance(config, dict):
        config = SearchConfig(**config)
    if not isinstance(config, SearchConfig):
        raise ConfigError(f"Expected a SearchConfig, received {type(config).__name__}.")
    previous = workdir / "config.json"
    if previous.exists():  # resuming: the state on disk must belong to the same search
        old = SearchConfig.from_json(previous.read_text(), str(previous))
        harmless = {"log_every", "checkpoint_every"}
        changed = [f.name for f in dataclasses.fields(config) if f.name not in harmless
                   and getattr(old, f.name) != getattr(config, f.name)]
        if changed:
            raise ConfigError(f"{previous} belongs to a search with different {changed}: "
                              "use a new work directory.")
    return config


def run(config: SearchConfig, workdir: str, model_fn=None, data_fn=None) -> SearchResult:
    """Runs (or resumes) a search; see the module docstring for the files written.

    Args:
      config: the search config (a dict is validated into one).
      workdir: output directory; a checkpoint there is resumed.
      model_fn: builds the searchable model (default: `darts_tf.Supernet` from the config and
        the data set's spec).
      data_fn: epoch -> (weights_ds, alphas_ds) of global (images, labels) batches, the same
        order for the same epoch (default: `trainers.data.search_data`).

    Raises:
      ConfigError: an invalid config value (raised before anything is written).
      SearchDivergedError: the loss became NaN/inf; no checkpoint is written after that step.
    """
    config = _check_config(config, Path(workdir))
    with distribute.op_determinism(config.deterministic):
        return _run(config, workdir, model_fn, data_fn)


def _run(config: SearchConfig, workdir: str, model_fn, data_fn) -> SearchResult:
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    # Under several workers only the chief writes `workdir`; the others keep their own
    # checkpoints and files in a private subdirectory.
    workdir = distribute.output_dir(strategy, Path(workdir))
    data_fn = data_fn or _default_data_fn(config)
    model_fn = model_fn or _default_model_fn(config)
    input_shape = tuple(data_fn(0)[0].element_spec[0].shape[1:])
    trainer = SearchTrainer(model_fn, config, strategy, input_shape=input_shape)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_json(workdir / "config.json", dataclasses.asdict(config))

    state = _State(trainer, workdir / "checkpoints")
    resumed_from = state.restore()
    history = [_read_json(workdir / f"epoch_{e}.json")["metrics"] for e in range(state.epoch)]
    writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))
    with writer.as_default():
        while state.epoch < config.epochs:
            _run_epoch(trainer, state, data_fn)
            history.append(_finish_epoch(trainer, state, workdir))
    writer.close()
    architecture = search_space.export_architecture(trainer.model)
    name = "genotype.json" if hasattr(trainer.model, "genotype") else "architecture.json"
    _write_json(workdir / name, architecture)
    return SearchResult(architecture, trainer.arch_values(), history, state.global_step,
                        resumed_from, trainer.step_traces, str(workdir))


class _State:
    """Position in the search (epoch, step in epoch, global step) and its checkpoints."""

    def __init__(self, trainer: SearchTrainer, directory: Path):
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.sums = np.zeros(len(METRICS))  # this epoch's metric sums, for the epoch means
        self._vars = {name: tf.Variable(0, dtype=tf.int64, trainable=False)
                      for name in ("epoch", "step_in_epoch", "step")}
        self._vars["metric_sums"] = tf.Variable(self.sums, trainable=False)
        self.manager = tf.train.CheckpointManager(trainer.checkpoint(**self._vars),
                                                  str(directory), max_to_keep=3)

    def restore(self) -> int | None:
        path = self.manager.latest_checkpoint
        if path is None:
            return None
        self.manager.checkpoint.restore(path).assert_existing_objects_matched()
        self.epoch, self.step_in_epoch, self.global_step = (
            int(self._vars[k].numpy()) for k in ("epoch", "step_in_epoch", "step"))
        self.sums = self._vars["metric_sums"].numpy()
        print(f"Resumed from {path}: epoch {self.epoch}, step {self.step_in_epoch} "
              f"(global step {self.global_step}).", flush=True)
        return self.global_step

    def save(self) -> str:
        for name, value in (("epoch", self.epoch), ("step_in_epoch", self.step_in_epoch),
                            ("step", self.global_step), ("metric_sums", self.sums)):
            self._vars[name].assign(value)
        return self.manager.save(checkpoint_number=self.global_step)


def _run_epoch(trainer: SearchTrainer, state: _State, data_fn) -> None:
    config = trainer.config
    trainer.set_epoch(state.epoch)
    weights_ds, alphas_ds = data_fn(state.epoch)
    ds = tf.data.Dataset.zip((weights_ds, alphas_ds))  # as pt.darts: zip(train, valid)
    if config.steps_per_epoch:
        ds = ds.take(config.steps_per_epoch)
    steps = int(ds.cardinality()) if int(ds.cardinality()) >= 0 else None
    ds = ds.skip(state.step_in_epoch)  # resume mid-epoch on the same batches
    progress = Progress(state.epoch, config.epochs, steps, config.log_every, state.step_in_epoch)
    for train_batch, val_batch in trainer.strategy.experimental_distribute_dataset(ds):
        metrics = {k: float(v) for k, v in trainer.step(train_batch, val_batch).items()}
        state.step_in_epoch += 1
        state.global_step += 1
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["val_loss"])):
            raise SearchDivergedError(
                f"Non-finite loss at epoch {state.epoch}, step {state.step_in_epoch} (global "
                f"step {state.global_step}): {metrics}. Nothing was saved after it; the last "
                f"checkpoint is {state.manager.latest_checkpoint}.")
        state.sums += [metrics[k] for k in METRICS]
        progress.update(state.step_in_epoch, metrics)
        if state.global_step % config.log_every == 0:
            for key, value in metrics.items():
                tf.summary.scalar(f"step/{key}", value, step=state.global_step)
            tf.summary.scalar("step/w_lr", cosine_lr(config, state.epoch), step=state.global_step)
        if state.global_step % config.checkpoint_every == 0:
            state.save()


def _finish_epoch(trainer: SearchTrainer, state: _State, workdir: Path) -> dict:
    """Writes epoch_{N}.json and the alphas line, then checkpoints the start of the next epoch."""
    metrics = dict(zip(METRICS, (state.sums / max(state.step_in_epoch, 1)).tolist()))
    metrics.update(epoch=state.epoch, steps=state.step_in_epoch,
                   w_lr=cosine_lr(trainer.config, state.epoch))
    alphas = trainer.arch_values()
    _write_json(workdir / f"epoch_{state.epoch}.json", {
        "epoch": state.epoch,
        "architecture": search_space.export_architecture(trainer.model),
        "arch_weights": {k: _softmax(v).tolist() for k, v in alphas.items()},
        "metrics": metrics})
    _append_alphas(workdir / "alphas.jsonl", state.epoch, state.global_step, alphas)
    _summarize_epoch(trainer, state, metrics, alphas)
    if hasattr(trainer.model, "genotype"):  # the supernet: draw the cells it encodes now
        from darts_tf import plot  # pylint: disable=import-outside-toplevel

        plot.plot_genotype(trainer.model.genotype(), workdir / "cells.png",
                           title=f"epoch {state.epoch}")
    print(f"epoch {state.epoch}: " + " ".join(f"{k} {metrics[k]:.4f}" for k in METRICS),
          flush=True)
    state.epoch, state.step_in_epoch, state.sums = state.epoch + 1, 0, np.zeros(len(METRICS))
    state.save()
    return metrics


def _summarize_epoch(trainer: SearchTrainer, state: _State, metrics: dict, alphas) -> None:
    """TensorBoard: epoch metrics and learning rate; every alpha's softmax weight per op."""
    step = state.global_step
    for key in (*METRICS, "w_lr"):
        tf.summary.scalar(f"epoch/{key}", metrics[key], step=step)
    primitives = getattr(trainer.model, "primitives", None)
    for name, values in alphas.items():
        weights = _softmax(values)
        tf.summary.histogram(f"alphas/{name}", values, step=step)
        rows = weights.reshape(-1, weights.shape[-1])
        for edge, row in enumerate(rows):
            for k, w in enumerate(row):
                op = primitives[k] if primitives and len(primitives) == len(row) else str(k)
                tf.summary.scalar(f"alpha_softmax/{name}/edge_{edge}/{op}", float(w), step=step)


def _append_alphas(path: Path, epoch: int, step: int, alphas) -> None:
    """One JSON line per epoch; a replayed epoch (after a resume) replaces its line."""
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if json.loads(line)["epoch"] < epoch]
    lines.append(json.dumps({"epoch": epoch, "step": step,
                             "alphas": {k: v.tolist() for k, v in alphas.items()}}))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    return json.loads(path.read_text())
