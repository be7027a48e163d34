"""The architecture gradient of DARTS: first order, and second order (unrolled).

Notation (reference section 1; Liu et al. 2019, eq. 6-8; quark0/darts
`cnn/architect.py`): w are the network weights, a the architecture variables
(alphas), L_train / L_val the cross-entropy on a training / validation batch,
xi the current learning rate of the weight optimizer.

First order (`unrolled=False`)::

    g = grad_a L_val(w, a)

Second order (`unrolled=True`) differentiates L_val after one virtual step of
the weight optimizer (the reference's SGD with momentum mu and coupled weight
decay wd, whose momentum buffer is `buf`, zeros before the first weight step)::

    w' = w - xi * (mu * buf + grad_w L_train(w, a) + wd * w)           (eq. 6)
    g  = grad_a L_val(w', a) - xi * H dw'                              (eq. 7)
    dw' = grad_w' L_val(w', a)
    H dw' = grad_a (grad_w L_train(w, a) . dw')     (hessian="exact")
          ~ (grad_a L_train(w+, a) - grad_a L_train(w-, a)) / (2 eps)  (eq. 8)
    w+- = w +- eps * dw',   eps = 0.01 / ||dw'||   (global norm over all weights)

This is the exact gradient of L_val(w'(a), a) when mu * buf and wd * w do not
depend on a (they do not), up to the O(eps^2) error of the central difference.

Nothing leaks: every pass goes through `model.stateless_call` with explicit
weight values, so w', w+ and w- are tensors that never touch the model's
variables (the NNI bug of reference section 6, `w = w - lr * g` rebinding a
local, cannot happen here: the value L_val sees is the argument we pass), and
the batch-norm statistics those passes compute are discarded.

Distribution: `Architect.gradients` runs on each replica (inside
`strategy.run`). Losses are summed per replica and divided by the GLOBAL batch
size, so replica gradients sum to the full-batch gradient. The gradients that
define the virtual step (grad_w L_train and dw') are all-reduced first, so every
replica builds the same w', w+ and w-; the returned alpha gradient is this
replica's share, to be summed across replicas (the optimizer's all-reduce).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from darts_tf import search_space
from trainers.runtime import distribute
from trainers.runtime.losses import cross_entropy, global_mean
from trainers.runtime.optim import global_norm

FINITE_DIFFERENCE_R = 1e-2  # eps = r / ||dw'||, quark0 `_hessian_vector_product(r=1e-2)`


def _as_dtype(value, dtype):
    """A Python float straight to `dtype` (tf.cast(0.3, float64) would round it through float32)."""
    if isinstance(value, (int, float)):
        return tf.constant(value, dtype)
    return tf.cast(value, dtype)


def _all_reduce_sum(tensors):
    """Sum across replicas (identity outside a strategy: the default replica context)."""
    return distribute.all_reduce(tf.distribute.ReduceOp.SUM, tensors)


@dataclasses.dataclass
class ArchGradients:
    """What one architect call computed on this replica.

    Attributes:
      grads: one gradient per architecture variable (this replica's share).
      val_loss: L_val at the weights the gradient was taken at (w' when unrolled).
      val_logits: the logits of that validation pass.
    """
    grads: list
    val_loss: tf.Tensor
    val_logits: tf.Tensor


class Architect:
    """Computes d L_val / d alpha for a searchable Keras model, without side effects.

    Args:
      model: a built Keras model; its architecture variables are found with
        `darts_tf.search_space.arch_variables`, all other trainable variables
        are weights.
      global_batch_size: the batch size the losses are averaged over (all replicas).
      unrolled: second order (eq. 6-8) when True, first order otherwise.
      hessian: "finite_difference" (eq. 8, the reference) or "exact" (nested tapes).
      momentum: mu of the weight optimizer, for the virtual step.
      weight_decay: wd of the weight optimizer (coupled, PyTorch SGD), for the virtual step.
    """

    def __init__(self, model, *, global_batch_size: int, unrolled: bool = False,
                 hessian: str = "finite_difference", momentum: float = 0.0,
                 weight_decay: float = 0.0, loss_scale=None):
        if hessian not in ("finite_difference", "exact"):
            raise ValueError(f"hessian must be 'finite_difference' or 'exact'. Received: "
                             f"hessian={hessian!r}")
        self.model = model
        self.global_batch_size = int(global_batch_size)
        self.unrolled = unrolled
        self.hessian = hessian
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.loss_scale = loss_scale  # a float32 variable under float16 compute, else None
        arch_ids = {id(v) for v in search_space.arch_variables(model)}
        trainable = model.trainable_variables
        self.arch_index = [i for i, v in enumerate(trainable) if id(v) in arch_ids]
        self.weight_index = [i for i, v in enumerate(trainable) if id(v) not in arch_ids]
        if len(self.arch_index) != len(arch_ids):
            raise ValueError("Some architecture variables are not trainable variables of "
                             f"model {model.name!r}.")
        # Every pass of the step (two in first order: alphas on the validation batch, weights
        # on the training batch; five in second order) is one traced function, gradients for
        # the weights and the alphas, that is inlined where the step is instantiated, where
        # the gradients a call does not use are pruned. So the graph that runs is the same as
        # with the passes written out, but one pass is traced instead of two or five: tracing
        # is most of a cold start-up (BENCHMARKS.md, "One traced pass in first order too").
        self._pass = tf.function(self._loss_and_grads, autograph=False)

    # Functional views of the model ---------------------------------------------------------

    @property
    def arch_variables(self) -> list:
        trainable = self.model.trainable_variables
        return [trainable[i] for i in self.arch_index]

    @property
    def weight_variables(self) -> list:
        trainable = self.model.trainable_variables
        return [trainable[i] for i in self.weight_index]

    def read_values(self):
        """(weights, alphas, non_trainables) of the model as tensors (this replica's copies)."""
        def read(variables):
            return [tf.convert_to_tensor(v) for v in variables]
        return (read(self.weight_variables), read(self.arch_variables),
                read(self.model.non_trainable_variables))

    def forward(self, weights, alphas, non_trainables, x, training=True):
        """The model's logits and new non-trainable values at the given values; assigns nothing."""
        values = [None] * (len(weights) + len(alphas))
        for i, w in zip(self.weight_index, weights):
            values[i] = w
        for i, a in zip(self.arch_index, alphas):
            values[i] = a
        return self.model.stateless_call(values, non_trainables, x, training=training)

    def loss(self, weights, alphas, non_trainables, batch):
        """(loss, logits, new non-trainables) on one (x, y) batch, stateless."""
        x, y = batch
        logits, new_non_trainables = self.forward(weights, alphas, non_trainables, x)
        loss = global_mean(cross_entropy(y, logits), self.global_batch_size)
        return loss, logits, new_non_trainables

    # The gradients ------------------------------------------------------------------------

    def gradient(self, tape, target, sources):
        """tape.gradient, with loss scaling under float16 compute (`loss_scale` not None).

        The backward pass starts from `loss_scale` instead of 1 (the same as
        differentiating loss * scale, without recomputing it), so that small float16
        gradients do not flush to zero; the results are divided by the scale again.
        Overflow shows up as non-finite gradients, which the trainer checks.
        """
        if self.loss_scale is None:
            return tape.gradient(target, sources)
        scale = tf.convert_to_tensor(self.loss_scale)
        grads = tape.gradient(target, sources, output_gradients=tf.cast(scale, target.dtype))
        return [None if g is None else g / tf.cast(scale, g.dtype) for g in grads]

    def gradients(self, train_batch, val_batch, lr=None, momentum_buffers=None,
                  values=None) -> ArchGradients:
        """The architecture gradient at the model's current values (see the module docstring).

        Runs on one replica. Args: `train_batch` and `val_batch` are (x, y) pairs
        (this replica's part); `lr` is xi (only used when unrolled);
        `momentum_buffers` the weight optimizer's buf per weight variable, in
        `weight_variables` order (None: zeros); `values` the model's (weights, alphas,
        non-trainables) as `read_values` gives them, if already read (None: read here).
        """
        w, a, nt = self.read_values() if values is None else values
        if not self.unrolled:
            val_loss, val_logits, grads = self._loss_and_alpha_grads(w, a, nt, val_batch)
            return ArchGradients(grads, val_loss, val_logits)
        if lr is None:
            raise ValueError("The unrolled (second order) architect needs lr (xi).")
        w_virtual = self.virtual_step(w, a, nt, train_batch, lr, momentum_buffers)
        val_loss, val_logits, _, grads = self.loss_and_grads(w_virtual, a, nt, val_batch, "wa")
        dw, dalpha = _all_reduce_sum(grads[:len(w)]), grads[len(w):]
        hvp = self.hessian_vector_product(w, a, nt, train_batch, dw)
        xi = _as_dtype(lr, a[0].dtype)
        grads = [g - xi * h for g, h in zip(dalpha, hvp)]
        return ArchGradients(grads, val_loss, val_logits)

    def loss_and_grads(self, w, a, nt, batch, wrt: str):
        """(loss, logits, new non-trainables, gradients) of one stateless pass.

        `wrt` names the sources: "w" (the weights), "a" (the alphas) or "wa" (both, weights
        first). Second order: one traced function for every pass (see __init__).
        """
        if wrt not in ("w", "a", "wa"):
            raise ValueError(f"wrt must be 'w', 'a' or 'wa'. Received: wrt={wrt!r}")
        replica = tf.distribute.get_replica_context()
        if self._pass is None or (replica is not None and replica.num_replicas_in_sync > 1):
            # Several replicas: the batch norms all-reduce their statistics in the pass, and
            # MirroredStrategy cannot merge replicas inside a nested function: written out.
            return self._loss_and_grads(w, a, nt, batch, wrt)
        loss, logits, new_nt, grads = self._pass(list(w), list(a), list(nt), tuple(batch), "wa")
        grads = {"w": grads[:len(w)], "a": grads[len(w):], "wa": grads}[wrt]
        return loss, logits, new_nt, grads

    def _loss_and_grads(self, w, a, nt, batch, wrt):
        sources = {"w": w, "a": a, "wa": w + a}[wrt]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(sources)
            loss, logits, new_nt = self.loss(w, a, nt, batch)
        return loss, logits, new_nt, self.gradient(tape, loss, sources)

    def _loss_and_alpha_grads(self, w, a, nt, batch):
        loss, logits, _, grads = self.loss_and_grads(w, a, nt, batch, "a")
        return loss, logits, grads

    def virtual_step(self, w, a, nt, train_batch, lr, momentum_buffers=None):
        """w' = w - xi * (mu * buf + grad_w L_train(w, a) + wd * w), as new tensors (eq. 6).

        grad_w L_train is all-reduced: w' is the same on every replica.
        """
        _, _, _, grads = self.loss_and_grads(w, a, nt, train_batch, "w")
        grads = _all_reduce_sum(grads)
        if momentum_buffers is None:
            momentum_buffers = [tf.zeros_like(v) for v in w]
        scalars = {}  # per dtype, made once (per weight: 988 more ops in the traced step)

        def xi_mu_wd(dtype):
            if dtype not in scalars:
                scalars[dtype] = (_as_dtype(lr, dtype), tf.constant(self.momentum, dtype),
                                  tf.constant(self.weight_decay, dtype))
            return scalars[dtype]

        w_virtual = []
        for v, g, buf in zip(w, grads, momentum_buffers):
            xi, mu, wd = xi_mu_wd(v.dtype)
            w_virtual.append(v - xi * (mu * tf.cast(buf, v.dtype) + g + wd * v))
        return w_virtual

    def exact_product(self, w, a, nt, batch, wrt: str, vector):
        """grad_a (grad_x L(w, a) . vector) by nested tapes, x = the weights (`wrt="w"`: the
        mixed second derivative of eq. 7) or the alphas (`wrt="a"`: the Hessian of L in the
        alphas times `vector`, the collapse monitor's product); this replica's share."""
        sources = {"w": w, "a": a}[wrt]
        with tf.GradientTape(watch_accessed_variables=False) as outer:
            outer.watch(a)
            with tf.GradientTape(watch_accessed_variables=False) as inner:
                inner.watch(sources)
                loss, _, _ = self.loss(w, a, nt, batch)
            grads = self.gradient(inner, loss, sources)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vector)])
        return self.gradient(outer, dot, a)

    def hessian_vector_product(self, w, a, nt, train_batch, vector):
        """grad_a (grad_w L_train(w, a) . vector), this replica's share (eq. 8 or exact)."""
        if self.hessian == "exact":
            return self.exact_product(w, a, nt, train_batch, "w", vector)
        # A zero direction would give eps = inf and 0 * inf = nan; its product is 0 anyway.
        eps = FINITE_DIFFERENCE_R / tf.maximum(global_norm(vector), 1e-30)
        w_plus = [v + tf.cast(eps, v.dtype) * d for v, d in zip(w, vector)]
        w_minus = [v - tf.cast(eps, v.dtype) * d for v, d in zip(w, vector)]
        _, _, grads_plus = self._loss_and_alpha_grads(w_plus, a, nt, train_batch)
        # The second pass waits for the first: nothing else orders them, and side by side
        # both passes' activations would be alive at once. Through an op that reads the
        # gradients as data: a control edge from an inlined function call waits only for
        # the call's side effects (it has none), not for its outputs.
        with tf.control_dependencies(tf.identity_n(grads_plus)):
            train_batch = (tf.identity(train_batch[0]), train_batch[1])
        _, _, grads_minus = self._loss_and_alpha_grads(w_minus, a, nt, train_batch)
        return [(p - m) / (2.0 * tf.cast(eps, p.dtype)) for p, m in zip(grads_plus, grads_minus)]
