"""The search step: one strategy seam for the DARTS bilevel update (Algorithm 1).

`SearchTrainer` creates the model, both optimizers and the architect inside
`strategy.scope()`; `SearchTrainer.step` is one `tf.function` that calls
`strategy.run(_replica_step)` and `strategy.reduce`. Per replica, as the reference
(quark0/darts `cnn/train_search.py` L143-155):

1. architecture step: alpha gradient on the validation batch (`architect.py`,
   first or second order), Adam with coupled weight decay;
2. weight step on the training batch: SGD with momentum and coupled weight
   decay (PyTorch semantics, `MomentumSGD`), gradients clipped by global norm;
   batch-norm moving statistics averaged over replicas.

Every update is applied in cross-replica context to all-reduced values, so the
replicas stay bitwise identical whatever the variables' aggregation.

Two options change the step (README "Collapse: watching and guarding a search"):
- weights-only warm-up (`arch_start_epoch`): before that epoch `step` runs a second
  traced step that has no architecture step (each step function is traced once: two
  traces in a run with a warm-up, never one per epoch); it still reports L_val at the
  current values (one forward pass) so that the epoch metrics stay comparable.
- SDARTS-RS (`sdarts_epsilon` = e > 0; Chen & Hsieh, ICML 2020): the weight step sees
  alpha + U(-e, e), drawn by a stateless generator seeded with (config.seed, step), so
  every replica, a rerun and a resumed run draw the same noise.
"""
from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from configs import ConfigError, SearchConfig
from trainers.runtime import distribute, step_cache
from trainers.runtime.losses import count_correct
from trainers.runtime.optim import Adam, MomentumSGD, assign_from_replicas
from trainers.runtime.run import variable_names
from trainers.search import architect as architect_lib

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


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
        self.strategy, self.graph_mode = distribute.trainer_strategy(config, strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.jit_compile and replicas > 1:
            raise ConfigError("Invalid config value jit_compile=True: only supported with one "
                              f"replica (the strategy has {replicas}).")
        with self.strategy.scope(), distribute.shared_variable_kernels():
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
            self.lr = tf.Variable(config.learning_rate(0), trainable=False, name="w_lr")
            # The run's global step, for the SDARTS noise seed: not checkpointed, the loop sets
            # it from the run state (`set_step`) and each step adds one.
            self.steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="search_steps")
        self.growth_steps = 2000
        self.step_traces = 0
        self.arch_active = config.arch_start_epoch == 0
        self._replica_fns = {"full": self._replica_step, "warmup": self._replica_warmup_step}
        if config.jit_compile:
            self._replica_fns = {k: tf.function(f, jit_compile=True, autograph=False)
                                 for k, f in self._replica_fns.items()}
        # No tensor-dependent Python control flow in the step: AutoGraph would only slow tracing.
        # The warm-up step is traced only if a warm-up epoch runs in this process.
        self._steps = {kind: tf.function(functools.partial(self._distributed_step, kind),
                                         autograph=False) for kind in self._replica_fns}
        # A later process with the same code, model and config loads the traced steps
        # instead of tracing them again (trainers/runtime/step_cache.py).
        self.step_cache = step_cache.StepCache(
            step_cache.resolve_directory(config.step_cache, self.model), config=config,
            model=self.model, variables=self._all_variables(), strategy=self.strategy)
        self._callers = {kind: self.step_cache.wrap(f"search_{kind}", fn)
                         for kind, fn in self._steps.items()}

    def set_epoch(self, epoch: int) -> float:
        """Sets the weight learning rate (and xi) for `epoch`, whether its steps update the
        architecture (from `arch_start_epoch` on) and a DARTS- supernet's `skip_beta`
        (`darts_tf.methods.skip_beta`: linear from 1 towards 0); returns the learning rate."""
        lr = self.config.learning_rate(epoch)
        self.lr.assign(lr)
        self.arch_active = epoch >= self.config.arch_start_epoch
        if getattr(self.model, "skip_beta", None) is not None:
            from darts_tf import methods  # pylint: disable=import-outside-toplevel

            self.model.skip_beta.assign(methods.skip_beta(epoch, self.config.epochs))
        return lr

    def set_step(self, global_step: int) -> None:
        """Sets the step counter that seeds the SDARTS noise (after a restore)."""
        self.steps.assign(global_step)

    def step(self, train_batch, val_batch) -> dict:
        """One search step on distributed (per-replica) batches; returns global-batch metrics."""
        with distribute.graph_optimization(self.graph_mode):
            return self._callers["full" if self.arch_active else "warmup"](train_batch, val_batch)

    @property
    def step_loads(self) -> int:
        """Step functions loaded from the step cache in this process (none traced for them)."""
        return sum(step_cache.loads_of(caller) for caller in self._callers.values())

    def _all_variables(self) -> list:
        """Every variable a step reads or writes, in a fixed order (the step cache's map)."""
        extra = [self.lr, self.steps] + [v for v in (self.loss_scale, self.good_steps)
                                         if v is not None]
        return [*self.model.variables, *self.w_opt.variables, *self.a_opt.variables, *extra]

    def _distributed_step(self, kind, train_batch, val_batch):
        self.step_traces += 1  # Python side effect: runs only while tracing.
        per_replica = self.strategy.run(self._replica_fns[kind], args=(train_batch, val_batch))
        metrics = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                   for k, v in per_replica.items()}
        with tf.control_dependencies(list(metrics.values())):
            self.steps.assign_add(1)
        return metrics

    def _replica_step(self, train_batch, val_batch):
        """Runs on each replica: the architecture step, then the weight step."""
        arch = self.architect
        # Architecture step (Adam adds the coupled weight decay after the all-reduce). The
        # virtual step of second order needs the weight optimizer's momentum buffers.
        w, a, nt = arch.read_values()
        buffers = ([tf.convert_to_tensor(b) for b in self.w_opt.momentum_buffers]
                   if arch.unrolled else None)
        result = arch.gradients(train_batch, val_batch, lr=self.lr, momentum_buffers=buffers,
                                values=(w, a, nt))
        arch_ok = self._all_finite(result.grads)
        self.a_opt.apply(result.grads, arch.arch_variables, apply_if=arch_ok)
        # Weight step at the updated alphas, read again (after Adam's writes: automatic
        # control dependencies order accesses to a variable as written). The architecture
        # step changes no weight and no statistic: their values read above serve again
        # (1,160 fewer reads to trace). Its forward pass waits for the architecture
        # step's gradients: nothing else orders the two passes (its convolutions need only the
        # weights), and run side by side both passes' activations would be alive at once.
        a = [tf.convert_to_tensor(v) for v in arch.arch_variables]
        with tf.control_dependencies(result.grads):
            train_batch = (tf.identity(train_batch[0]), train_batch[1])
        metrics, weights_ok = self._weight_step(train_batch, (w, a, nt))
        self._update_loss_scale(arch_ok, weights_ok)
        return {**metrics, "val_loss": result.val_loss,
                "val_accuracy": self._correct(result.val_logits, val_batch[1])}

    def _replica_warmup_step(self, train_batch, val_batch):
        """Runs on each replica in a weights-only warm-up epoch: L_val at the current values
        (a forward pass, for the metrics), then the weight step."""
        values = self.architect.read_values()
        val_loss, val_logits, _ = self.architect.loss(*values, val_batch)
        with tf.control_dependencies([val_loss]):
            train_batch = (tf.identity(train_batch[0]), train_batch[1])
        metrics, weights_ok = self._weight_step(train_batch, values)
        self._update_loss_scale(weights_ok, weights_ok)
        return {**metrics, "val_loss": val_loss,
                "val_accuracy": self._correct(val_logits, val_batch[1])}

    def _weight_step(self, train_batch, values):
        """SGD on the weights (at the alphas, perturbed under SDARTS-RS); batch-norm statistics.

        `values`: (weights, alphas, non-trainables) as the step read them, the alphas after
        any architecture update.
        """
        arch = self.architect
        w, a, nt = values
        if self.config.sdarts_epsilon:
            a = self.perturbed(a)
        loss, logits, new_nt, w_grads = arch.loss_and_grads(w, a, nt, train_batch, "w")
        weights_ok = self._all_finite(w_grads)
        self.w_opt.apply(w_grads, arch.weight_variables, self.lr, apply_if=weights_ok,
                         values=values[0])
        self._update_non_trainables(new_nt)
        return {"loss": loss, "accuracy": self._correct(logits, train_batch[1])}, weights_ok

    def perturbed(self, alphas, step=None):
        """SDARTS-RS: alpha + U(-e, e) per element, e = `sdarts_epsilon`.

        Stateless: the seed is (config.seed, step) folded with the variable's position, so
        the noise is a function of the run and the step only (the same on every replica, in
        a rerun and after a resume). `step`: default the trainer's step counter.
        """
        step = tf.convert_to_tensor(self.steps) if step is None else step
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.cast(step, tf.int64)])
        eps = self.config.sdarts_epsilon
        return [a + tf.random.stateless_uniform(
                    tf.shape(a), tf.random.experimental.stateless_fold_in(seed, i),
                    minval=-eps, maxval=eps, dtype=a.dtype)
                for i, a in enumerate(alphas)]

    def _all_finite(self, grads):
        """Whether every replica's gradients are finite (None without loss scaling: no check)."""
        if self.loss_scale is None:
            return None
        bad = tf.add_n([tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                        for g in grads if g is not None])
        return tf.equal(distribute.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)

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
        return count_correct(labels, logits) / self.config.batch_size

    def _update_non_trainables(self, values):
        """Batch-norm statistics (and other state): the mean over replicas, on every replica."""
        if not values:
            return
        variables = self.model.non_trainable_variables
        floats = [i for i, v in enumerate(values) if v.dtype.is_floating]
        reduced = distribute.all_reduce(tf.distribute.ReduceOp.MEAN, [values[i] for i in floats])
        values = list(values)
        for i, v in zip(floats, reduced):
            values[i] = v
        assign_from_replicas(variables, values)

    # State -------------------------------------------------------------------------------

    def state_objects(self) -> dict:
        """What a checkpoint holds besides the model variables (`trainers.runtime.run`)."""
        objects = {"w_opt": self.w_opt, "a_opt": self.a_opt, "w_lr": self.lr}
        if self.loss_scale is not None:
            objects.update(loss_scale=self.loss_scale, good_steps=self.good_steps)
        return objects

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
