"""Optimizers with PyTorch semantics, written for tf.distribute (search and retraining).

Keras' SGD keeps m = mu * m - lr * g, which stops matching PyTorch's buffer once
the learning rate changes between epochs, and its `weight_decay` is decoupled;
the reference's SGD couples the decay into the gradient and the unrolled
architect needs PyTorch's momentum buffer itself.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from trainers.runtime import distribute


def global_norm(tensors):
    """sqrt(sum of squares) over a list of tensors (as torch.cat(...).norm())."""
    axes = {}  # all axes, one constant per rank (not one per tensor: fewer ops to trace)

    def all_axes(t):
        rank = t.shape.rank
        if rank is None:
            return None
        if rank not in axes:
            axes[rank] = tf.constant(list(range(rank)), tf.int32)
        return axes[rank]
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t), all_axes(t)) for t in tensors]))


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

    def apply(self, grads, variables, lr, apply_if=None, values=None):
        """One update, called on each replica with this replica's gradient share.

        `apply_if`: a boolean scalar, the same on every replica (e.g. "the gradients are
        finite" under loss scaling); when False, weights and buffers stay as they are.
        `values`: the variables' values as this step read them (they are the same until
        this update), for the weight decay; None: the decay reads the variables.
        """
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        grads = distribute.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        self._apply_if = apply_if
        if self.clip_norm:
            norm = global_norm(grads)
            coef = tf.minimum(self.clip_norm / (norm + 1e-6), 1.0)
            grads = [g * tf.cast(coef, g.dtype) for g in grads]

        def update(strategy, grads, values):
            scalars = {}  # (lr, momentum, weight decay) per dtype, made once: ~1,500 fewer
            for i, (var, buf, g) in enumerate(zip(variables, self.momentum_buffers, grads)):
                if apply_if is None:  # one fused kernel per variable: fewer ops to trace
                    if var.dtype not in scalars:
                        # Read once: tf.cast of a variable to its own dtype returns the
                        # variable, and each update would read it again (495 reads).
                        scalars[var.dtype] = (tf.cast(tf.convert_to_tensor(lr), var.dtype),
                                              tf.constant(self.momentum, var.dtype),
                                              tf.constant(self.weight_decay, var.dtype))
                    decayed = None if values is None else values[i]
                    strategy.extended.update(tf_variable(var), self._fused_update,
                                             args=(buf, g, decayed, *scalars[var.dtype]),
                                             group=False)
                    continue
                strategy.extended.update(buf, self._update_buffer, args=(g, tf_variable(var)),
                                         group=False)
                strategy.extended.update(tf_variable(var), self._update_variable,
                                         args=(buf, lr), group=False)
        tf.distribute.get_replica_context().merge_call(update, args=(grads, values))

    def _fused_update(self, var, buf, g, decayed, lr, momentum, weight_decay):
        """buf = momentum * buf + (g + wd * decayed); var -= lr * buf, as one ApplyMomentum
        op; `decayed` is var's value read earlier in the step (None: read var here).

        `lr`, `momentum` and `weight_decay` are tensors of var's dtype."""
        if self.weight_decay:
            g = g + weight_decay * (var if decayed is None else decayed)
        return tf.raw_ops.ResourceApplyMomentum(
            var=var.handle, accum=buf.handle, lr=lr, grad=g, momentum=momentum,
            use_locking=False, use_nesterov=False)

    def _update_buffer(self, buf, g, var):
        return buf.assign(_keep_unless(self._apply_if, self.momentum * buf + g + self.weight_decay * var, buf))

    def _update_variable(self, var, buf, lr):
        return var.assign(_keep_unless(self._apply_if, var - tf.cast(lr, var.dtype) * buf, var))


def _keep_unless(apply_if, new, old):
    """`new`, or `old` where the update is skipped (`apply_if` False)."""
    return new if apply_if is None else tf.where(apply_if, new, old)


class Adam(tf.Module):
    """torch.optim.Adam(betas, eps, weight_decay) for the alphas, written for tf.distribute.

    Per variable a with gradient g (all-reduced), at step t (from 1)::

        g = g + weight_decay * a                       # coupled decay, as PyTorch
        m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2
        a = a - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    `apply_if` skips a step entirely (moments, step count and variables unchanged).
    """

    def __init__(self, variables, *, learning_rate, beta_1, beta_2, epsilon=1e-8,
                 weight_decay=0.0):
        super().__init__(name="adam")
        self.learning_rate, self.beta_1, self.beta_2 = learning_rate, beta_1, beta_2
        self.epsilon, self.weight_decay = epsilon, weight_decay
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="adam_step")
        self.m = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                              name="adam_m_" + v.path.replace("/", "_")) for v in variables]
        self.v = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                              name="adam_v_" + v.path.replace("/", "_")) for v in variables]

    def apply(self, grads, variables, apply_if=None):
        """One update, called on each replica with this replica's gradient share."""
        grads = distribute.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        t = tf.cast(tf.convert_to_tensor(self.iterations) + 1, tf.float32)  # this step's t

        def update(strategy, grads):
            for var, m, v, g in zip(variables, self.m, self.v, grads):
                tv = tf_variable(var)
                strategy.extended.update(m, self._moment, args=(g, tv, 1, apply_if), group=False)
                strategy.extended.update(v, self._moment, args=(g, tv, 2, apply_if), group=False)
                strategy.extended.update(tv, self._step, args=(m, v, t, apply_if), group=False)
            strategy.extended.update(
                self.iterations, lambda it: it.assign(_keep_unless(apply_if, it + 1, it)),
                group=False)
        tf.distribute.get_replica_context().merge_call(update, args=(grads,))

    def _moment(self, moment, g, var, power, apply_if):
        """m (power 1) or v (power 2) of the coupled-decay gradient g + wd * var."""
        g = g + self.weight_decay * var
        beta = self.beta_1 if power == 1 else self.beta_2
        value = g if power == 1 else tf.square(g)
        return moment.assign(_keep_unless(apply_if, beta * moment + (1.0 - beta) * value, moment))

    def _step(self, var, m, v, t, apply_if):
        m_hat = m / (1.0 - tf.pow(self.beta_1, t))
        v_hat = v / (1.0 - tf.pow(self.beta_2, t))
        new = var - self.learning_rate * m_hat / (tf.sqrt(v_hat) + self.epsilon)
        return var.assign(_keep_unless(apply_if, new, var))
