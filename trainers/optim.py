"""Optimizers with PyTorch semantics, written for tf.distribute (search and retraining).

Keras' SGD keeps m = mu * m - lr * g, which stops matching PyTorch's buffer once
the learning rate changes between epochs, and its `weight_decay` is decoupled;
the reference's SGD couples the decay into the gradient and the unrolled
architect needs PyTorch's momentum buffer itself.
"""
from __future__ import annotations

import keras
import tensorflow as tf


def global_norm(tensors):
    """sqrt(sum of squares) over a list of tensors (as torch.cat(...).norm())."""
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))


def tf_variable(v):
    """The tf.Variable (possibly a MirroredVariable) behind a Keras variable."""
    return v.value if isinstance(v, keras.Variable) else v


def assign_from_replicas(variables, values):
    """Assigns values computed on each replica, in cross-replica context (as Keras optimizers).

    Call from replica context with values that are already identical on all
    replicas (all-reduced); every copy of every variable gets its replica's value.
    """
    def assign(strategy, values):
        for var, value in zip(variables, values):
            strategy.extended.update(tf_variable(var), lambda v, t: v.assign(t),
                                     args=(value,), group=False)
    tf.distribute.get_replica_context().merge_call(assign, args=(values,))


class MomentumSGD(tf.Module):
    """torch.optim.SGD(momentum, weight_decay) preceded by clip_grad_norm_(clip_norm).

    Per variable w with gradient g (all-reduced, then clipped by the global norm
    of all gradients: g *= min(1, clip / (||g|| + 1e-6)); clip = 0 disables)::

        buf = momentum * buf + (g + weight_decay * w)     # buf starts at zeros
        w   = w - lr * buf

    `momentum_buffers` are what the unrolled architect needs for its virtual step.
    """

    def __init__(self, variables, *, momentum: float, weight_decay: float, clip_norm: float):
        super().__init__(name="momentum_sgd")
        self.momentum, self.weight_decay, self.clip_norm = momentum, weight_decay, clip_norm
        self.momentum_buffers = [
            tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                        name="momentum_" + v.path.replace("/", "_"))
            for v in variables]

    def apply(self, grads, variables, lr):
        """One update, called on each replica with this replica's gradient share."""
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if self.clip_norm:
            norm = global_norm(grads)
            coef = tf.minimum(self.clip_norm / (norm + 1e-6), 1.0)
            grads = [g * tf.cast(coef, g.dtype) for g in grads]

        def update(strategy, grads):
            for var, buf, g in zip(variables, self.momentum_buffers, grads):
                strategy.extended.update(buf, self._update_buffer, args=(g, tf_variable(var)),
                                         group=False)
                strategy.extended.update(tf_variable(var), self._update_variable,
                                         args=(buf, lr), group=False)
        tf.distribute.get_replica_context().merge_call(update, args=(grads,))

    def _update_buffer(self, buf, g, var):
        return buf.assign(self.momentum * buf + g + self.weight_decay * var)

    @staticmethod
    def _update_variable(var, buf, lr):
        return var.assign_sub(tf.cast(lr, var.dtype) * buf)
