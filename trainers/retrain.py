"""Retraining a genotype from scratch with the reference recipe (quark0/darts `cnn/train.py`).

    run(configs.retrain.digits().replace(genotype="DARTS_V2"), "/tmp/retrain")

writes into the work directory `config.json` (resolved config), `genotype.json`
(the genotype trained, our JSON), `metrics.jsonl` (one line per epoch: train
loss/accuracy, test top-1/top-5, lr, drop path), `tensorboard/`, `checkpoints/`
(resumable: the same command continues after a kill), and at the end
`model.keras`, `saved_model/` (`Model.export`, served without darts_tf) and
`final_metrics.json`.

One strategy seam (`RetrainTrainer._run_on_replicas`): variables and the
optimizer are created in `strategy.scope()`; each step is one `tf.function`
that calls `strategy.run` on the per-replica step and `strategy.reduce` on its
metrics. Per replica: loss = CE(logits) + auxiliary_weight * CE(aux_logits)
(label-smoothed when configured) averaged over the global batch
(`tf.nn.compute_average_loss`); the gradients are all-reduced, clipped by
their global norm and applied by `trainers.optim.MomentumSGD` (PyTorch's SGD
with coupled weight decay: buf = momentum * buf + g + wd * w; w -= lr * buf),
on every trainable variable, batch-norm scales included, as the reference's
`model.parameters()`. Learning rate and drop path rate are variables set once
per epoch, so the step is traced once.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import keras
import tensorflow as tf

from trainers import distribute, retrain_state
from trainers.progress import Progress
from trainers.config import ConfigError
from trainers.retrain_config import RetrainConfig
from trainers.optim import MomentumSGD


class RetrainDivergedError(FloatingPointError):
    """The loss became NaN or infinite; nothing was saved after the last good checkpoint."""


def cross_entropy(labels, logits, num_classes: int, label_smoothing: float = 0.0):
    """Per-example CE; with smoothing eps the target is (1 - eps) * onehot + eps / K
    (the reference's CrossEntropyLabelSmooth)."""
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    target = tf.one_hot(labels, num_classes)
    if label_smoothing:
        target = (1.0 - label_smoothing) * target + label_smoothing / num_classes
    return -tf.reduce_sum(target * log_probs, axis=-1)


class RetrainTrainer:
    """Model, optimizer and the distributed train / eval steps for one strategy.

    Args:
      model_fn: builds the model (called inside `strategy.scope()`); its
        `call(x, training, return_aux=True)` returns (logits, aux_logits or None).
      config: the retrain config (optimizer, loss and batch settings).
      strategy: a `tf.distribute.Strategy` (None: the default strategy).
      input_shape: one example's shape, e.g. (32, 32, 3).
      num_classes: number of labels.
    """

    def __init__(self, model_fn, config: RetrainConfig, strategy=None, *, input_shape,
                 num_classes: int):
        self.config, self.num_classes = config, num_classes
        self.strategy = strategy or tf.distribute.get_strategy()
        # "fast" or "full", decided once (trainers.distribute.graph_optimization).
        self.graph_mode = distribute.resolve_graph_optimization(config.graph_optimization,
                                                                self.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ConfigError(f"Invalid config value batch_size={config.batch_size!r}: expected "
                              f"a multiple of the {replicas} replicas.")
        with self.strategy.scope():
            self.model = model_fn()
            self.model(tf.zeros((1, *input_shape)), training=False)  # builds every layer
            self.optimizer = MomentumSGD(
                self.model.trainable_variables, momentum=config.momentum,
                weight_decay=config.weight_decay, clip_norm=config.grad_clip)
            self.lr = tf.Variable(config.learning_rate(0), trainable=False, name="lr")
        self.step_traces = 0
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(
            lambda batch: self._run_on_replicas(self._replica_eval_step, batch))

    def set_epoch(self, epoch: int) -> tuple[float, float]:
        """Sets the learning rate and the drop path rate of `epoch`; returns both."""
        lr, drop = self.config.learning_rate(epoch), self.config.drop_path_prob(epoch)
        self.lr.assign(lr)
        if hasattr(self.model, "drop_path_prob"):
            self.model.drop_path_prob.assign(drop)
        return lr, drop

    def train_step(self, batch) -> dict:
        """One step on a distributed global batch; returns {"loss", "accuracy"} (global means)."""
        with distribute.graph_optimization(self.graph_mode):
            return self._train_step(batch)

    def evaluate(self, dataset) -> dict:
        """Test loss, top-1 and top-5 accuracy over a (not yet distributed) dataset."""
        sums = {}
        for batch in self.strategy.experimental_distribute_dataset(dataset):
            with distribute.graph_optimization(self.graph_mode):
                outputs = self._eval_step(batch)
            for k, v in outputs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        n = max(sums.get("count", 0.0), 1.0)
        return {"loss": sums["loss"] / n, "top1": sums["top1"] / n, "top5": sums["top5"] / n}

    def _run_on_replicas(self, replica_fn, batch):
        """The strategy seam: the replica function everywhere, then the sum of its outputs."""
        per_replica = self.strategy.run(replica_fn, args=(batch,))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()}

    def _distributed_train_step(self, batch):
        self.step_traces += 1  # Python side effect: runs only while tracing.
        return self._run_on_replicas(self._replica_train_step, batch)

    def _replica_train_step(self, batch):
        """With distribution strategies, this runs on each replica (its share of the batch)."""
        images, labels = batch
        config, variables = self.config, self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits, aux_logits = self.model(images, training=True, return_aux=True)
            per_example = cross_entropy(labels, logits, self.num_classes, config.label_smoothing)
            if aux_logits is not None and config.auxiliary_weight:
                per_example += config.auxiliary_weight * cross_entropy(
                    labels, aux_logits, self.num_classes, config.label_smoothing)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
        self.optimizer.apply(tape.gradient(loss, variables), variables, self.lr)
        hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32),
                        tf.cast(labels, tf.int32))
        return {"loss": loss,
                "accuracy": tf.reduce_sum(tf.cast(hits, tf.float32)) / config.batch_size}

    def _replica_eval_step(self, batch):
        """With distribution strategies, this runs on each replica: sums, not means."""
        images, labels = batch
        labels = tf.cast(labels, tf.int32)
        logits = tf.cast(self.model(images, training=False), tf.float32)
        k = min(5, self.num_classes)
        return {"loss": tf.reduce_sum(cross_entropy(labels, logits, self.num_classes)),
                "top1": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)),
                "top5": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32)),
                "count": tf.cast(tf.shape(labels)[0], tf.float32)}


@dataclasses.dataclass
class RetrainResult:
    """What `run` returns; `final_metrics` is also `final_metrics.json`."""
    final_metrics: dict
    history: list               # metrics.jsonl, one dict per epoch
    global_step: int
    resumed_from_step: int | None
    step_traces: int            # times the train step was traced in this process (1)
    workdir: str


def run(config: RetrainConfig, workdir: str, data_fn=None, eval_fn=None) -> RetrainResult:
    """Runs (or resumes) a retraining; see the module docstring for the files written.

    Args:
      config: the retrain config (a dict is validated into one).
      workdir: output directory; a checkpoint there is resumed.
      data_fn: epoch -> dataset of global (images, labels) training batches, the
        same for the same epoch (default: `trainers.data.train_data`).
      eval_fn: () -> dataset of (images, labels) test batches (default:
        `trainers.data.eval_data` on the test split).

    Raises:
      ConfigError: an invalid config value or a work directory of another run.
      RetrainDivergedError: the loss became NaN/inf (named with epoch and step).
    """
    setup = retrain_state.prepare(config, workdir, data_fn, eval_fn)
    with distribute.op_determinism(setup.config.deterministic):
        return _run(setup, Path(workdir))


def _run(setup, workdir: Path) -> RetrainResult:
    config, spec = setup.config, setup.spec
    keras.utils.set_random_seed(config.seed)
    trainer = RetrainTrainer(setup.model_fn, config, distribute.make_strategy(config.strategy),
                             input_shape=spec.image_shape, num_classes=spec.num_classes)
    state = retrain_state.State(trainer, workdir, config)
    resumed_from = state.restore()
    with state.writer.as_default():
        while state.epoch < config.epochs:
            _train_epoch(trainer, state, setup.data_fn)
            test = trainer.evaluate(setup.eval_fn())
            state.finish_epoch(trainer, test)
    final = state.finish(trainer, spec)
    return RetrainResult(final, state.history, state.global_step, resumed_from,
                         trainer.step_traces, str(workdir))


def _train_epoch(trainer: RetrainTrainer, state: "retrain_state.State", data_fn) -> None:
    config = trainer.config
    lr, drop = trainer.set_epoch(state.epoch)
    ds = data_fn(state.epoch)
    steps = config.steps_per_epoch or int(ds.cardinality())
    steps = steps if steps > 0 else None
    ds = ds.skip(state.step_in_epoch)
    if config.steps_per_epoch:
        ds = ds.take(config.steps_per_epoch - state.step_in_epoch)
    progress = Progress(state.epoch, config.epochs, steps, config.log_every, state.step_in_epoch,
                        stateful_metrics=["loss", "accuracy"])
    for batch in trainer.strategy.experimental_distribute_dataset(ds):
        metrics = {k: float(v) for k, v in trainer.train_step(batch).items()}
        if not math.isfinite(metrics["loss"]):
            raise RetrainDivergedError(
                f"Loss is {metrics['loss']} at epoch {state.epoch} step {state.step_in_epoch} "
                f"(global step {state.global_step}); stopped without saving. The last good "
                f"checkpoint is {state.manager.latest_checkpoint}.")
        state.step_done(metrics, lr, drop)
        progress.update(state.step_in_epoch, metrics)
