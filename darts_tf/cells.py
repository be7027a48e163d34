"""Cells and the macro layout shared by the search and the fixed networks.

Reference: quark0/darts `cnn/model_search.py` and `cnn/model.py` (reference
section 8). A cell takes the outputs of the two previous cells (s0 = k-2,
s1 = k-1), preprocesses them to C channels, computes `num_nodes` intermediate
nodes and outputs their concatenation. The search and the fixed cell differ
only in how an edge is computed: a mixed op over every primitive weighted by
softmax(alpha), or the one op the genotype names.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from darts_tf import kernels, ops
from darts_tf.genotype import PRIMITIVES


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """Where a cell sits: what it reduces and how many channels it sees and makes."""

    reduction: bool
    reduction_prev: bool
    prev_prev_channels: int
    prev_channels: int
    channels: int


def reduction_indices(num_cells: int) -> tuple[int, int]:
    """Reduction cells sit at 1/3 and 2/3 of the depth (reference: layers//3, 2*layers//3)."""
    return num_cells // 3, 2 * num_cells // 3


def cell_layout(num_cells: int, init_channels: int, stem_channels: int, multiplier: int,
                reduction_prev: bool = False) -> list[CellSpec]:
    """The channel bookkeeping of the reference networks, cell by cell.

    Args:
      num_cells: number of cells.
      init_channels: C of the first cells; doubled at each reduction.
      stem_channels: channels the stem outputs (both s0 and s1 of the first cell).
      multiplier: number of nodes a cell concatenates (its output is multiplier * C).
      reduction_prev: whether the first cell's s0 comes from a reducing stem (ImageNet).
    """
    specs = []
    c_pp, c_p, c = stem_channels, stem_channels, init_channels
    reductions = reduction_indices(num_cells)
    for i in range(num_cells):
        reduction = i in reductions
        if reduction:
            c *= 2
        specs.append(CellSpec(reduction, reduction_prev, c_pp, c_p, c))
        reduction_prev = reduction
        c_pp, c_p = c_p, multiplier * c
    return specs


def _preprocess(spec: CellSpec, affine: bool):
    if spec.reduction_prev:
        pre0 = ops.FactorizedReduce(spec.prev_prev_channels, spec.channels, affine, name="preprocess0")
    else:
        pre0 = ops.ReLUConvBN(spec.prev_prev_channels, spec.channels, 1, 1, 0, affine,
                              name="preprocess0")
    pre1 = ops.ReLUConvBN(spec.prev_channels, spec.channels, 1, 1, 0, affine, name="preprocess1")
    pre0.build(None)
    pre1.build(None)
    return pre0, pre1


class MixedOp(keras.layers.Layer):
    """The mixed ops of `num_inputs` edges into one node that share a stride, batched.

    Edge e computes sum_k w[e, k] * op_k(x_e) over the primitives (`none` is skipped:
    its output is zero). The edges' inputs are concatenated on the channel axis and
    every primitive is built with `groups=num_inputs`, so one grouped op computes that
    primitive on all the edges at once: the same function and the same parameters as
    one op per edge, with several times fewer graph ops to trace and differentiate.
    """

    def __init__(self, channels, stride, primitives=PRIMITIVES, num_inputs=1, **kwargs):
        super().__init__(**kwargs)
        # Children are created here (not traced in build): nest their variable paths.
        with keras.name_scope(self.name):
            self.channels, self.stride, self.primitives = channels, stride, tuple(primitives)
            self.num_inputs = num_inputs
            self._indices = [i for i, p in enumerate(self.primitives) if p != "none"]
            self.candidates = [
                ops.make_op(self.primitives[i], channels, stride, affine=False, search=True,
                            name=self.primitives[i], groups=num_inputs) for i in self._indices]
            self.built = True

    def call(self, inputs, weights, training=None):
        """Args:
          inputs: the edges' input states, a list of `num_inputs` NHWC tensors.
          weights: softmax(alpha) rows of these edges, shape (num_inputs, num_primitives).
        Returns:
          The sum over these edges of their mixed-op outputs.
        """
        x = inputs[0] if len(inputs) == 1 else tf.concat(inputs, axis=-1)
        return self._sum_edges(self._mix(x, weights, training))

    def _mix(self, x, weights, training):
        """Per edge, sum_k w[e, k] * op_k(x_e); x and the result hold the edges side by side."""
        # Per-channel weights: edge e's weight for op k on its `channels` channels, applied
        # by the op to its output (most fold it into their last batch norm).
        per_channel = tf.gather(weights, np.repeat(np.arange(self.num_inputs), self.channels))
        columns = tf.unstack(per_channel, axis=1)
        # The candidates that start with ReLU(x) (the separable and dilated convs) share
        # one: one ReLU forward and one gradient for the four, where each took its own and
        # recomputed it in the backward pass (BENCHMARKS.md).
        relu = (tf.nn.relu(x) if any(op.starts_with_relu for op in self.candidates)
                else None)
        return tf.add_n([op(relu, training=training, output_scale=columns[i],
                            input_is_relu=True) if op.starts_with_relu
                         else op(x, training=training, output_scale=columns[i])
                         for i, op in zip(self._indices, self.candidates)])

    def _sum_edges(self, y):
        """The sum over the edges laid side by side on y's channel axis."""
        if self.num_inputs == 1:
            return y
        y = tf.reshape(y, [-1, y.shape[1], y.shape[2], self.num_inputs, self.channels])
        return tf.reduce_sum(y, axis=3)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "stride": self.stride,
                "primitives": list(self.primitives), "num_inputs": self.num_inputs}


def num_edges(num_nodes: int) -> int:
    """Edges of a search cell: node i has 2 + i inputs (14 for 4 nodes)."""
    return sum(2 + i for i in range(num_nodes))


def edge_groups(num_nodes: int, reduction: bool) -> list[list[tuple[int, int, int]]]:
    """Per node, its edges batched by stride: [(first edge, first input, count), ...].

    Edges are numbered node by node (node i has inputs 0 .. i + 1), the order of the
    rows of an alpha matrix. In a reduction cell the edges from the two cell inputs
    have stride 2 and the others stride 1, so they form two batches.
    """
    groups, offset = [], 0
    for i in range(num_nodes):
        inputs = 2 + i
        if reduction:
            node = [(offset, 0, 2)] + ([(offset + 2, 2, inputs - 2)] if inputs > 2 else [])
        else:
            node = [(offset, 0, inputs)]
        groups.append(node)
        offset += inputs
    return groups


def _current_value(variable):
    """A Keras variable's current value as a tensor, not cast by mixed precision: its value
    in the enclosing `keras.StatelessScope` (the trainer's passes), else the variable's."""
    # pylint: disable-next=import-outside-toplevel
    from keras.src.backend.common import stateless_scope, variables as keras_variables
    scope = stateless_scope.get_stateless_scope()
    value = scope.get_current_value(variable) if scope is not None else None
    if value is not None:
        return tf.convert_to_tensor(value)
    with keras_variables.AutocastScope(None):
        return tf.convert_to_tensor(variable.value)


class SearchCell(keras.layers.Layer):
    """A search cell: a mixed op on every edge; all nodes concatenated.

    `mixed_op` builds each batch of edges' mixed op, with `MixedOp`'s arguments (DARTS by
    default; PC-DARTS' and DARTS-' mixed ops are in `darts_tf.methods`). With `recompute`,
    a training call keeps only its inputs for the backward pass and runs again there.
    """

    def __init__(self, spec: CellSpec, num_nodes=4, primitives=PRIMITIVES, mixed_op=None,
                 recompute=False, **kwargs):
        super().__init__(**kwargs)
        mixed_op = mixed_op or MixedOp
        self.recompute = recompute
        # Children are created here (not traced in build): nest their variable paths.
        with keras.name_scope(self.name):
            self.spec, self.num_nodes, self.primitives = spec, num_nodes, tuple(primitives)
            self.preprocess0, self.preprocess1 = _preprocess(spec, affine=False)
            self.groups = edge_groups(num_nodes, spec.reduction)
            self.mixed_ops = []  # flat, node by node; see `edge_groups`
            for i, node in enumerate(self.groups):
                for first_edge, first_input, count in node:
                    stride = 2 if spec.reduction and first_input < 2 else 1
                    self.mixed_ops.append(mixed_op(
                        spec.channels, stride, self.primitives, num_inputs=count,
                        name=f"node_{i + 2}_from_{first_input}_to_{first_input + count - 1}"))
            self.built = True

    def call(self, s0, s1, weights, training=None, edge_weights=None, skip_beta=None):
        """Args:
          weights: softmax(alpha) of this cell type, (num_edges, num_primitives).
          edge_weights: PC-DARTS' per-edge weights (num_edges,), or None.
          skip_beta: DARTS-' auxiliary skip scale (a scalar), or None.
        """
        if self.recompute and training:
            return self._recomputing_call(s0, s1, weights, edge_weights, skip_beta)
        return self._forward(s0, s1, weights, training, edge_weights, skip_beta)

    def _recomputing_call(self, s0, s1, weights, edge_weights, skip_beta):
        """`call` in training whose gradient recomputes the cell: only its arguments are kept.

        The cell runs under a `keras.StatelessScope` that maps its variables to their
        current values, passed in as arguments, so that the custom gradient gets their
        gradients; the batch norms' new running estimates are assigned once, after the
        forward pass (the recomputation's are dropped). The gradient runs the cell again
        from the same values under a tape, after the upstream gradient exists, and is
        itself differentiable (the exact Hessian-vector product goes through it).
        """
        variables = self.variables
        values = [_current_value(v) for v in variables]
        extra = {name: t for name, t in (("edge_weights", edge_weights),
                                         ("skip_beta", skip_beta)) if t is not None}
        names = list(extra)
        updates = []

        def run(s0, s1, weights, extra_values, variable_values):
            with keras.StatelessScope(list(zip(variables, variable_values))) as scope:
                out = self._forward(s0, s1, weights, True, **dict(zip(names, extra_values)))
            return out, [(v, scope.get_current_value(v)) for v in variables]

        @kernels.custom_gradient
        def cell(s0, s1, weights, *rest):
            extra_values, variable_values = rest[:len(names)], rest[len(names):]
            out, new_values = run(s0, s1, weights, extra_values, variable_values)
            updates.extend((v, new) for (v, new), old in zip(new_values, variable_values)
                           if new is not old)

            def grad(upstream):
                # Without the dependency on the upstream gradient the executor would run the
                # recomputation as soon as s0 and s1 exist, in the forward pass.
                with tf.control_dependencies([upstream]):
                    s0_again, s1_again = tf.identity(s0), tf.identity(s1)
                sources = [s0_again, s1_again, weights, *extra_values, *variable_values]
                with tf.GradientTape(watch_accessed_variables=False) as tape, \
                        kernels.keeping_activations():
                    tape.watch(sources)
                    again, _ = run(s0_again, s1_again, weights, extra_values, variable_values)
                return tape.gradient(again, sources, output_gradients=upstream)

            return out, grad

        out = cell(s0, s1, weights, *extra.values(), *values)
        for variable, value in updates:  # the running estimates of the batch norms
            variable.assign(value)
        return out

    def _forward(self, s0, s1, weights, training, edge_weights=None, skip_beta=None):
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        mixed = iter(self.mixed_ops)
        for node in self.groups:
            parts = []
            for edge, first, count in node:
                extra = {} if edge_weights is None else {
                    "edge_weights": edge_weights[edge:edge + count]}
                if skip_beta is not None:
                    extra["skip_beta"] = skip_beta
                parts.append(next(mixed)(states[first:first + count], weights[edge:edge + count],
                                         training=training, **extra))
            states.append(parts[0] if len(parts) == 1 else parts[0] + parts[1])
        return tf.concat(states[2:], axis=-1)


class FixedCell(keras.layers.Layer):
    """A cell of a genotype: two chosen ops per node, drop path on all but identity.

    `recompute`: the separable and dilated convs keep only their inputs for the backward
    pass and recompute the rest there (`kernels.relu_depthwise_pointwise`)."""

    def __init__(self, spec: CellSpec, op_names, indices, concat, recompute=False, **kwargs):
        super().__init__(**kwargs)
        # Children are created here (not traced in build): nest their variable paths.
        with keras.name_scope(self.name):
            self.spec, self.op_names, self.indices, self.concat = (
                spec, tuple(op_names), tuple(indices), tuple(concat))
            self.preprocess0, self.preprocess1 = _preprocess(spec, affine=True)
            self.ops = []
            for k, (name, index) in enumerate(zip(self.op_names, self.indices)):
                stride = 2 if spec.reduction and index < 2 else 1
                self.ops.append(ops.make_op(name, spec.channels, stride, affine=True,
                                            name=f"node_{k // 2 + 2}_{k % 2}_{name}",
                                            recompute=recompute))
            self.seed_generator = keras.random.SeedGenerator(0, name="drop_path_seed")
            self.built = True

    def _drop_path(self, x, drop_prob):
        """Per-sample drop: keep with probability 1 - p, scale by 1 / (1 - p)."""
        keep = 1.0 - tf.cast(drop_prob, x.dtype)
        shape = tf.stack([tf.shape(x)[0], 1, 1, 1])
        mask = tf.floor(keep + keras.random.uniform(shape, dtype=x.dtype, seed=self.seed_generator))
        return x / keep * mask

    def call(self, s0, s1, drop_prob=None, training=None):
        states = [self.preprocess0(s0, training=training), self.preprocess1(s1, training=training)]
        for i in range(len(self.ops) // 2):
            node = []
            for op, index in zip(self.ops[2 * i:2 * i + 2], self.indices[2 * i:2 * i + 2]):
                h = op(states[index], training=training)
                if training and drop_prob is not None and not isinstance(op, ops.Identity):
                    # At drop_prob 0 the mask is all ones: the same function, no branch.
                    h = self._drop_path(h, drop_prob)
                node.append(h)
            states.append(node[0] + node[1])
        return tf.concat([states[i] for i in self.concat], axis=-1)
