"""The search networks' variants of the mixed op: PC-DARTS and DARTS-, beside DARTS'.

`darts_tf.Supernet(method=...)` picks one of `METHODS`; the cell, the macro layout and
the op registry (`darts_tf.ops.OPS`) are DARTS', only the mixed op on each edge differs:

- "darts": `cells.MixedOp`, sum_k softmax(alpha)_k * op_k(x).
- "pc_darts" (Xu et al., ICLR 2020; yuhuixu1993/PC-DARTS `model_search.py`,
  `PartialChannelMixedOp`): the mixed op sees the first C/K channels of its input, the
  other channels bypass it (max-pooled 2x2 on stride-2 edges); the two are concatenated
  and shuffled in K groups. Optional edge normalisation: per node, a softmax over the
  betas of its incoming edges (`edge_weights`) weights each edge's output.
- "darts_minus" (Chu et al., ICLR 2021; Meituan-AutoML/DARTS- `src/search/model_search.py`,
  `AuxiliarySkipMixedOp`): DARTS' mixed op plus beta * skip(x), skip being the
  registry's `skip_connect` without affine (identity at stride 1, FactorizedReduce at
  stride 2); beta decays linearly over the search (`skip_beta`).

Every variant keeps `cells.MixedOp`'s batching: the edges into a node that share a stride
are computed at once, side by side on the channel axis.
"""
from __future__ import annotations

import functools

import keras
import tensorflow as tf

from darts_tf import cells, ops
from darts_tf.genotype import PRIMITIVES

METHODS = ("darts", "pc_darts", "darts_minus")


def skip_beta(epoch: int, epochs: int) -> float:
    """DARTS-' auxiliary skip scale at the start of `epoch` (from 0) of `epochs`.

    The authors' linear `DecayScheduler` (src/utils.py, `--decay linear`, stepped at each
    epoch start with T_start=0, T_stop=T_max=epochs): beta = (epochs - epoch) / epochs,
    so 1 in the first epoch and 1/epochs in the last; it reaches 0 after the search.
    """
    return (epochs - epoch) / epochs


def channel_shuffle(x, groups: int):
    """PC-DARTS' `channel_shuffle` in NHWC: channel g * (C / groups) + j moves to j * groups + g."""
    channels = x.shape[-1]
    y = tf.reshape(x, [-1, x.shape[1], x.shape[2], groups, channels // groups])
    y = tf.transpose(y, [0, 1, 2, 4, 3])
    return tf.reshape(y, [-1, x.shape[1], x.shape[2], channels])


def edge_weights(beta, num_nodes: int):
    """Per node, softmax over the betas of its incoming edges (PC-DARTS' edge normalisation).

    `beta` holds one logit per edge in the alpha rows' order (node i has i + 2 edges); the
    result has the same shape, and the weights of each node's edges sum to 1. The numpy
    twin for derivation is `darts_tf.genotype.edge_weights`.
    """
    parts, start = [], 0
    for i in range(num_nodes):
        parts.append(tf.nn.softmax(beta[start:start + i + 2]))
        start += i + 2
    return tf.concat(parts, axis=0)


class PartialChannelMixedOp(cells.MixedOp):
    """PC-DARTS' mixed op on `channels` channels, the candidates on channels / K of them.

    Per edge: y = shuffle_K(concat[sum_k w_k op_k(x[..., :C/K]), bypass(x[..., C/K:])]),
    bypass = identity at stride 1, 2x2 max pooling (stride 2) at stride 2. Edge weights,
    when given, scale each edge's y; as shuffle and concatenation are linear, the weighted
    sum over the edges is taken before them, once per batch of edges. With K = 1 and no
    edge weights this is `cells.MixedOp`, op for op.
    """

    def __init__(self, channels, stride, primitives=PRIMITIVES, num_inputs=1,
                 partial_channels=4, **kwargs):
        if channels % partial_channels:
            raise ValueError(f"PartialChannelMixedOp: partial_channels must divide channels. "
                             f"Received: channels={channels}, partial_channels={partial_channels}")
        super().__init__(channels // partial_channels, stride, primitives, num_inputs, **kwargs)
        self.full_channels, self.partial_channels = channels, partial_channels

    # pylint: disable-next=arguments-differ
    def call(self, inputs, weights, training=None, edge_weights=None):
        """`edge_weights`: (num_inputs,) weights of these edges, or None (all 1)."""
        if edge_weights is not None:
            weights = weights * edge_weights[:, None]
        if self.partial_channels == 1:
            x = inputs[0] if len(inputs) == 1 else tf.concat(inputs, axis=-1)
            return self._sum_edges(self._mix(x, weights, training))
        # Each edge's input split once into its candidates' channels and its bypass, with no
        # concatenation of the whole inputs: a split's gradient is one concatenation, where
        # two strided slices' gradients each write a zero tensor of the input's size and
        # scatter into it (StridedSliceGrad took 23% of the step at batch 256), and a
        # concatenation's gradient slices its whole size again (BENCHMARKS.md).
        parts, bypasses = zip(*(tf.split(x, [self.channels, self.full_channels - self.channels],
                                         axis=-1) for x in inputs))
        part = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        y = self._sum_edges(self._mix(part, weights, training))
        if self.stride == 2:
            bypasses = [tf.nn.max_pool2d(b, 2, 2, "VALID") for b in bypasses]
        if edge_weights is not None:
            scales = tf.unstack(tf.cast(edge_weights, y.dtype))
            bypasses = [scale * b for scale, b in zip(scales, bypasses)]
        bypass = bypasses[0] if len(bypasses) == 1 else tf.add_n(bypasses)
        return channel_shuffle(tf.concat([y, bypass], axis=-1), self.partial_channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.full_channels,
                "partial_channels": self.partial_channels}


class AuxiliarySkipMixedOp(cells.MixedOp):
    """DARTS-' mixed op: DARTS' sum over the candidates plus skip_beta * skip(x) per edge.

    skip is `ops.make_op("skip_connect", ..., affine=False)`: identity at stride 1,
    FactorizedReduce without affine at stride 2. At skip_beta = 0 this computes exactly
    what `cells.MixedOp` computes (y + 0 * skip(x) = y).
    """

    def __init__(self, channels, stride, primitives=PRIMITIVES, num_inputs=1, **kwargs):
        super().__init__(channels, stride, primitives, num_inputs, **kwargs)
        with keras.name_scope(self.name):
            self.auxiliary_skip = ops.make_op("skip_connect", channels, stride, affine=False,
                                              name="auxiliary_skip", groups=num_inputs)

    # pylint: disable-next=arguments-differ
    def call(self, inputs, weights, training=None, skip_beta=None):
        """`skip_beta`: the auxiliary skip's scale, a scalar (None: 0, plain DARTS)."""
        x = inputs[0] if len(inputs) == 1 else tf.concat(inputs, axis=-1)
        if skip_beta is not None and self.stride == 1 and "skip_connect" in self.primitives:
            # At stride 1 the auxiliary skip is the identity, and so is the skip_connect
            # candidate: beta joins that candidate's weight, w_skip * x + beta * x =
            # (w_skip + beta) * x, instead of one more scaled copy of x per edge (the step
            # took 15-42% longer than DARTS' with it, BENCHMARKS.md).
            column = tf.one_hot(list(self.primitives).index("skip_connect"),
                                len(self.primitives), dtype=weights.dtype)
            return self._sum_edges(self._mix(
                x, weights + tf.cast(skip_beta, weights.dtype) * column, training))
        y = self._mix(x, weights, training)
        if skip_beta is not None:
            y = y + tf.cast(skip_beta, y.dtype) * self.auxiliary_skip(x, training=training)
        return self._sum_edges(y)


def mixed_op_factory(method: str, partial_channels: int = 1):
    """The mixed-op class (with its fixed arguments) that `cells.SearchCell` builds for `method`."""
    if method == "pc_darts":
        return functools.partial(PartialChannelMixedOp, partial_channels=partial_channels)
    if method == "darts_minus":
        return AuxiliarySkipMixedOp
    if method == "darts":
        return cells.MixedOp
    raise ValueError(f"Unknown method; expected one of {METHODS}. Received: method={method!r}")
