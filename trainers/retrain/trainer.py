"""The retraining step: one strategy seam for training a fixed network from scratch.

Variables and the optimizer are created in `strategy.scope()`; each step is one
`tf.function` that calls `strategy.run` on the per-replica step and
`strategy.reduce` on its metrics (`RetrainTrainer._run_on_replicas`). Per replica:
loss = CE(logits) + auxiliary_weight * CE(aux_logits) (label-smoothed when
configured) averaged over the global batch; the gradients are all-reduced, clipped
by their global norm and applied by `trainers.runtime.optim.MomentumSGD`
(PyTorch's SGD with coupled weight decay: buf = momentum * buf + g + wd * w;
w -= lr * buf), on every trainable variable, batch-norm scales included, as the
reference's `model.parameters()`. Learning rate and drop path rate are variables
set once per epoch, so the step is traced once.
"""
from __future__ import annotations

import tensorflow as tf

from configs import RetrainConfig
from trainers.runtime import distribute, step_cache
from trainers.runtime.losses import (count_correct, count_in_top_k, cross_entropy,
                                     global_mean)
from trainers.runtime.optim import MomentumSGD

METRICS = ("loss", "accuracy")


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
        self.strategy, self.graph_mode = distribute.trainer_strategy(config, strategy)
        with self.strategy.scope(), distribute.shared_variable_kernels():
            self.model = model_fn()
            self.model(tf.zeros((1, *input_shape)), training=False)  # builds every layer
            self.optimizer = MomentumSGD(
                self.model.trainable_variables, momentum=config.momentum,
                weight_decay=config.weight_decay, clip_norm=config.grad_clip)
            self.lr = tf.Variable(config.learning_rate(0), trainable=False, name="lr")
        self.step_traces = 0
        self._train_step = tf.function(self._distributed_train_step)
        # A later process with the same code, model and config loads the traced step
        # instead of tracing it again (trainers/runtime/step_cache.py).
        self.step_cache = step_cache.StepCache(
            step_cache.resolve_directory(config.step_cache, self.model), config=config,
            model=self.model, variables=self._all_variables(), strategy=self.strategy)
        self._train_caller = self.step_cache.wrap("retrain", self._train_step)
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
            return self._train_caller(batch)

    @property
    def step_loads(self) -> int:
        """Train steps loaded from the step cache in this process (none traced for them)."""
        return step_cache.loads_of(self._train_caller)

    def _all_variables(self) -> list:
        """Every variable the train step reads or writes, in a fixed order (the step cache's)."""
        return [*self.model.variables, *self.optimizer.variables, self.lr]

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
            per_example = cross_entropy(labels, logits, config.label_smoothing, self.num_classes)
            if aux_logits is not None and config.auxiliary_weight:
                per_example += config.auxiliary_weight * cross_entropy(
                    labels, aux_logits, config.label_smoothing, self.num_classes)
            loss = global_mean(per_example, config.batch_size)
        self.optimizer.apply(tape.gradient(loss, variables), variables, self.lr)
        return {"loss": loss, "accuracy": count_correct(labels, logits) / config.batch_size}

    def _replica_eval_step(self, batch):
        """With distribution strategies, this runs on each replica: sums, not means."""
        images, labels = batch
        logits = self.model(images, training=False)
        return {"loss": tf.reduce_sum(cross_entropy(labels, logits)),
                "top1": count_in_top_k(labels, logits, 1),
                "top5": count_in_top_k(labels, logits, min(5, self.num_classes)),
                "count": tf.cast(tf.shape(labels)[0], tf.float32)}

    def state_objects(self) -> dict:
        """What a checkpoint holds besides the model variables (`trainers.runtime.run`)."""
        return {"optimizer": self.optimizer}
