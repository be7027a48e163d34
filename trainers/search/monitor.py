"""The collapse monitor: what a search's epoch says about skip-connect collapse.

Each epoch (`CollapseMonitor.measure`) records

- the skip-connect count of the derived normal and reduction cells (models with a
  genotype; a user choice model has none, and gets no counts);
- the dominant eigenvalue of the Hessian of L_val with respect to the alphas, RobustDARTS'
  indicator (Zela et al., ICLR 2020): a sharp minimum in alpha space (a large eigenvalue)
  goes with a large drop when the architecture is discretised, and its rise precedes the
  collapse onto parameter-free ops.

The eigenvalue comes from power iteration (`monitor_iterations` steps)::

    v_0 = the last epoch's final v (first epoch: u / ||u||, u ~ N(0, 1) seeded by config.seed)
    h_k = H v_k,  lambda_k = v_k . h_k,  v_{k+1} = h_k / ||h_k||

Starting from the previous epoch's eigenvector makes a few iterations enough once the
Hessian changes slowly (from a random start, 3 iterations can be far off: the tests' tiny
supernet gives 0.14 for 0.52). `hessian_residual` = ||h_k - lambda_k v_k|| / |lambda_k|
says how far from converged the reported value is (0: an exact eigenpair).

on the exact Hessian-vector product H v = grad_a (grad_a L_val(w, a) . v), nested tapes
through the architect's functional pass (`Architect.loss`: `stateless_call`, so the
monitor changes no variable, batch-norm statistics included). Power iteration finds the
eigenvalue of largest magnitude; lambda_k is its Rayleigh quotient (signed).

The batch is fixed: the first validation batch of epoch 0, held in two variables that
the run's checkpoints carry (key "monitor", with v), so that a resumed run measures on
the same examples, from the same start vector, even if its data source changed.

Memory: the nested tapes keep the forward, the backward and its backward alive at once,
which on the reference network (C=16, 8 cells, 32x32) took more than 20 GB for a batch of
64 and 5.5 GB for 16 (BENCHMARKS.md). So the batch goes through in chunks of
`monitor_chunk` examples (default 8), one call of one traced function per chunk, and the
chunks' products are summed: the Hessian of the batch's mean loss
with each chunk's own batch-norm statistics ("ghost" batch norm). `monitor_chunk=None`
takes the whole batch in one pass (its own statistics: the architect's L_val exactly).

Distribution: each replica computes the product on its part of each chunk (the loss
divided by the global batch size, the supernet's batch norms synchronized), and
`strategy.reduce` sums the parts: one product, which every replica then receives as the
next v.
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from configs import ConfigError
from trainers.runtime import distribute


def skip_connect_counts(model) -> dict[str, int] | None:
    """{"normal": n, "reduce": m}: skip_connect ops in the derived cells (None: no genotype)."""
    if not hasattr(model, "genotype"):
        return None
    genotype = model.genotype()
    return {cell: sum(op == "skip_connect" for op, _ in getattr(genotype, cell))
            for cell in ("normal", "reduce")}


class CollapseMonitor:
    """Skip-connect counts and the dominant Hessian eigenvalue of a `SearchTrainer`'s model.

    Args:
      trainer: the search trainer (its model, architect, strategy and config).
      batch: the fixed validation batch (images, labels): a global batch.
      chunk: examples per Hessian pass (default: the config's `monitor_chunk`).
    """

    def __init__(self, trainer, batch, chunk: int | None = -1):
        self.trainer = trainer
        self.iterations = trainer.config.monitor_iterations
        images, labels = (np.asarray(t) for t in batch)
        # Host variables, as the run state's counters: restored from a checkpoint, if any.
        self.images = tf.Variable(images, trainable=False, name="monitor_images")
        self.labels = tf.Variable(labels, trainable=False, name="monitor_labels")
        size = len(images)
        chunk = trainer.config.monitor_chunk if chunk == -1 else chunk
        self.chunk = size if chunk is None else min(chunk, size)
        replicas = trainer.strategy.num_replicas_in_sync
        if size % self.chunk or self.chunk % replicas:
            raise ConfigError(
                f"Invalid config value monitor_chunk={chunk!r}: the monitor's batch of {size} "
                f"must split into chunks of {self.chunk} examples, each split over {replicas} "
                "replica(s); choose a divisor of batch_size that the replicas divide.")
        sizes = [int(np.prod(a.shape)) for a in trainer.architect.arch_variables]
        start = tf.random.stateless_normal([sum(sizes)], seed=[trainer.config.seed, 0])
        self.vector = tf.Variable(start / tf.norm(start), trainable=False, name="monitor_v")
        self.traces = 0
        # Its trace is long (nested tapes: ~30 s even for a tiny supernet): kept in the
        # trainer's step cache, if it has one (trainers/runtime/step_cache.py).
        self._hvp = trainer.step_cache.wrap(
            "monitor_hvp", tf.function(self._distributed_hvp, autograph=False),
            variables=(self.images, self.labels))

    def state_objects(self) -> dict:
        """What the run's checkpoints hold for the monitor: the fixed batch."""
        return {"monitor": tf.train.Checkpoint(images=self.images, labels=self.labels,
                                               vector=self.vector)}

    def measure(self) -> tuple[dict, float]:
        """The epoch's monitor values (for epoch_N.json, TensorBoard and the epoch line), and
        the seconds they took (kept apart: the values are reproducible, the time is not)."""
        start = time.time()
        eigenvalue, residual = self.power_iteration()
        values = {"hessian_eigenvalue": eigenvalue, "hessian_residual": residual}
        counts = skip_connect_counts(self.trainer.model)
        if counts is not None:
            values.update(skip_connect_normal=counts["normal"],
                          skip_connect_reduce=counts["reduce"])
        return values, time.time() - start

    def dominant_eigenvalue(self, iterations: int | None = None) -> float:
        """Power iteration on H v (see the module docstring); the last Rayleigh quotient."""
        return self.power_iteration(iterations)[0]

    def power_iteration(self, iterations: int | None = None) -> tuple[float, float]:
        """(eigenvalue, residual) after `iterations` (default `monitor_iterations`) steps from
        the stored v; stores the new v."""
        v = tf.convert_to_tensor(self.vector)
        eigenvalue, residual = 0.0, float("nan")
        with distribute.graph_optimization(self.trainer.graph_mode):
            for _ in range(iterations or self.iterations):
                h = self.hessian_vector_product(v)
                eigenvalue = float(tf.reduce_sum(v * h))
                residual = float(tf.norm(h - eigenvalue * v)) / max(abs(eigenvalue), 1e-30)
                norm = float(tf.norm(h))
                if norm == 0.0:  # v is in the null space: 0 is an eigenvalue, stop
                    break
                v = h / norm
        self.vector.assign(v)
        return eigenvalue, residual

    def hessian_vector_product(self, vector) -> tf.Tensor:
        """H v on the fixed batch, flat (alphas in `arch_variables` order, row-major): the sum
        of the chunks' products, one call (and one chunk's memory) at a time."""
        vector = tf.convert_to_tensor(vector, tf.float32)
        total = None
        for first in range(0, int(self.images.shape[0]), self.chunk):
            hv = self._hvp(vector, tf.constant(first, tf.int32))
            total = hv if total is None else total + hv
        return total

    def _distributed_hvp(self, vector, first):
        self.traces += 1  # Python side effect: runs only while tracing (once: `first` is a tensor).
        strategy = self.trainer.strategy
        per_replica = strategy.run(self._replica_hvp,
                                   args=(self.images, self.labels, vector, first))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _replica_hvp(self, images, labels, vector, first):
        """Runs on each replica: its share of H v on the chunk that starts at `first`.

        Chunk c is examples [c * m, (c + 1) * m) of the fixed batch (m = `chunk`); a
        replica takes its 1/R of the chunk, so a chunk's synchronized batch-norm
        statistics are those one device computes on it.
        """
        arch = self.trainer.architect
        ctx = tf.distribute.get_replica_context()
        share = self.chunk // ctx.num_replicas_in_sync
        start = first + ctx.replica_id_in_sync_group * share
        batch = (tf.slice(images, [start] + [0] * (images.shape.rank - 1),
                          [share, *images.shape[1:]]),
                 tf.slice(labels, [start] + [0] * (labels.shape.rank - 1),
                          [share, *labels.shape[1:]]))
        w, a, nt = arch.read_values()
        parts = tf.split(vector, [int(np.prod(x.shape)) for x in a])
        v = [tf.cast(tf.reshape(p, x.shape), x.dtype) for p, x in zip(parts, a)]
        return self._chunk_hvp(w, a, nt, batch, v)

    def _chunk_hvp(self, w, a, nt, batch, v):
        """grad_a (grad_a L(w, a) . v) on one chunk (L divided by the whole batch's size)."""
        hv = self.trainer.architect.exact_product(w, a, nt, batch, "a", v)
        return tf.concat([tf.reshape(tf.cast(h, tf.float32), [-1]) for h in hv], axis=0)
