"""The DARTS primitives as Keras layers, and the one registry that builds them.

Reference: quark0/darts `cnn/operations.py` (see ../shared/DARTS_REFERENCE.md
section 3). Every op is one Keras layer that owns its variables and computes
with the plain TensorFlow kernels of `darts_tf.kernels` (PyTorch padding, few
graph ops): a supernet holds 8 cells x 14 edges x 7 ops, and the time to trace a
step grows with the number of Keras layer calls and graph ops, so each op is one
layer call rather than a stack of ReLU/Conv/BN layers.

Variables are created in `build()`, which only needs the channel counts given to
the constructor, so containers build their children explicitly and Keras never
has to trace a call to learn shapes (slow on a full supernet).

BatchNorm follows PyTorch: momentum 0.1 (Keras 0.9), eps 1e-5, unbiased
variance in the running estimate, biased variance to normalise. Moving
statistics are created with `aggregation="mean"` so that under a
`tf.distribute` strategy replicas average them instead of silently diverging.
`affine=False` (the search network) creates no scale or offset.

`OPS` maps each name of `PRIMITIVES` to a factory; `make_op` builds one. The
search cell and the fixed cell both build their ops through it.
"""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from darts_tf import kernels

BN_MOMENTUM = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="darts_tf")
class Op(keras.layers.Layer):
    """Base class: helpers to create conv kernels and batch norms on a layer.

    An op whose first step is a ReLU of its input sets `starts_with_relu` and takes
    `input_is_relu=True` in `call`: then x is that ReLU's output already (a search mixed
    op computes it once for all such candidates, `cells.MixedOp`).
    """

    starts_with_relu = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._bns = []

    def _kernel(self, name, shape):
        return self.add_weight(name=name, shape=shape, initializer="he_normal")

    def _batch_norm(self, name, channels, affine):
        """Creates the variables of one BN; returns an index for `_bn`."""
        variables = {
            "moving_mean": self.add_weight(
                name=f"{name}_moving_mean", shape=(channels,), initializer="zeros",
                trainable=False, autocast=False, aggregation="mean"),
            "moving_variance": self.add_weight(
                name=f"{name}_moving_variance", shape=(channels,), initializer="ones",
                trainable=False, autocast=False, aggregation="mean"),
        }
        if affine:
            variables["gamma"] = self.add_weight(
                name=f"{name}_gamma", shape=(channels,), initializer="ones", autocast=False)
            variables["beta"] = self.add_weight(
                name=f"{name}_beta", shape=(channels,), initializer="zeros", autocast=False)
        self._bns.append(variables)
        return len(self._bns) - 1

    def _bn(self, x, index, training, output_scale=None):
        """One fused batch-norm op (and its one gradient op): cheap to trace.

        In training it normalises with the biased batch variance and returns the
        running estimates (1 - m) * old + m * batch with the unbiased variance,
        which is exactly PyTorch's update with momentum m = 0.1. Under a strategy
        with several replicas the batch statistics are those of the global batch
        (synchronized across replicas), so that a data-parallel step computes the
        same function as one device on the whole batch.

        `output_scale` (a BN without affine parameters only): per-channel factors of the
        output, the mixed op's weights of this candidate. The op's scale input multiplies
        them in and its gradient op returns their gradient, where a multiplication, its
        two gradient multiplications and a reduction per candidate did that work (a
        search step 4-9% shorter, start-up 12% shorter, BENCHMARKS.md). Its gradient keeps
        the input, not the output: no more memory, as nothing keeps the weighted output.
        """
        v = self._bns[index]
        channels = v["moving_mean"].shape[0]
        if output_scale is None:
            scale = v["gamma"] if "gamma" in v else kernels.graph_constant(1.0, channels)
        elif "gamma" in v:
            raise ValueError(f"{self.name}: an output scale is only for a batch norm without "
                             "affine parameters (the search ops).")
        else:
            scale = tf.cast(output_scale, tf.float32)
        offset = v["beta"] if "beta" in v else kernels.graph_constant(0.0, channels)
        replica = tf.distribute.get_replica_context()
        if training and replica is not None and replica.num_replicas_in_sync > 1:
            return self._synchronized_bn(x, v, scale, offset, replica)
        if training and x.dtype == tf.float32 and "gamma" not in v and output_scale is None:
            # The search cells' other batch norms: a gradient that keeps y, not x (kernels).
            y, mean, variance = kernels.batch_norm_keeping_output(
                x, tf.convert_to_tensor(v["moving_mean"]),
                tf.convert_to_tensor(v["moving_variance"]), BN_EPSILON, BN_MOMENTUM)
        elif training and x.dtype == tf.float32:
            # The op's first version: the gradient tape knows that its gradient needs no zeros
            # for the unused statistics outputs; for V3 it makes a zero constant for each of
            # them, five per BN (3,230 dead ops in the reference search step's graph, traced
            # and then pruned). Its forward runs on the faster layout (kernels).
            y, mean, variance = kernels.batch_norm_training(
                x, tf.convert_to_tensor(scale), tf.convert_to_tensor(offset),
                tf.convert_to_tensor(v["moving_mean"]),
                tf.convert_to_tensor(v["moving_variance"]), BN_EPSILON, BN_MOMENTUM)
        else:
            # Inference (the first version in float32), and training in float16 / bfloat16
            # (V3).
            bn = (tf.raw_ops.FusedBatchNorm if x.dtype == tf.float32
                  else tf.raw_ops.FusedBatchNormV3)
            y, mean, variance = bn(
                x=x, scale=tf.convert_to_tensor(scale), offset=tf.convert_to_tensor(offset),
                mean=tf.convert_to_tensor(v["moving_mean"]),
                variance=tf.convert_to_tensor(v["moving_variance"]),
                epsilon=BN_EPSILON, is_training=bool(training),
                exponential_avg_factor=BN_MOMENTUM if training else 1.0)[:3]
        if training:
            v["moving_mean"].assign(mean)
            v["moving_variance"].assign(variance)
        return y

    @staticmethod
    def _scaled(y, output_scale):
        """y times the per-channel `output_scale`, if given (the ops without a final BN)."""
        return y if output_scale is None else y * tf.cast(output_scale, y.dtype)

    @staticmethod
    def _synchronized_bn(x, v, scale, offset, replica):
        """Batch norm with the statistics of the global batch (sums all-reduced)."""
        dtype = x.dtype
        x32 = tf.cast(x, tf.float32)
        count = tf.cast(tf.reduce_prod(tf.shape(x32)[:3]), tf.float32)
        total, squares, count = replica.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [tf.reduce_sum(x32, [0, 1, 2]), tf.reduce_sum(tf.square(x32), [0, 1, 2]), count])
        mean = total / count
        variance = tf.maximum(squares / count - tf.square(mean), 0.0)
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        # Every replica computes the same values: the assignment agrees across replicas.
        v["moving_mean"].assign((1.0 - BN_MOMENTUM) * v["moving_mean"] + BN_MOMENTUM * mean)
        v["moving_variance"].assign(
            (1.0 - BN_MOMENTUM) * v["moving_variance"] + BN_MOMENTUM * unbiased)
        y = tf.nn.batch_normalization(x32, mean, variance, offset, scale, BN_EPSILON)
        return tf.cast(y, dtype)


@keras.saving.register_keras_serializable(package="darts_tf")
class Zero(Op):
    """`none`: zeros, subsampled at stride 2 (reference `Zero`)."""

    def __init__(self, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def build(self, input_shape=None):
        self.built = True

    def call(self, x, training=None, output_scale=None):  # zeros, whatever the scale
        return tf.zeros_like(x[:, ::self.stride, ::self.stride, :])

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


@keras.saving.register_keras_serializable(package="darts_tf")
class Identity(Op):
    """`skip_connect` at stride 1."""

    def build(self, input_shape=None):
        self.built = True

    def call(self, x, training=None, output_scale=None):
        return self._scaled(x, output_scale)


@keras.saving.register_keras_serializable(package="darts_tf")
class Pool(Op):
    """3x3 max or average pooling, padding 1; optional BN(affine=False) as in the search."""

    def __init__(self, mode, channels, stride=1, batch_norm=False, groups=1, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("max", "avg"):
            raise ValueError(f"Pool mode must be 'max' or 'avg'. Received: mode={mode!r}")
        self.mode, self.channels, self.stride, self.batch_norm = mode, channels, stride, batch_norm
        self.groups = groups

    def build(self, input_shape=None):
        if self.batch_norm:
            self._bn_index = self._batch_norm("bn", self.groups * self.channels, affine=False)
        self.built = True

    def call(self, x, training=None, output_scale=None):
        y = kernels.pool_3x3(x, self.mode, self.stride)
        if self.batch_norm:
            return self._bn(y, self._bn_index, training, output_scale)
        return self._scaled(y, output_scale)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "channels": self.channels,
                "stride": self.stride, "batch_norm": self.batch_norm, "groups": self.groups}


@keras.saving.register_keras_serializable(package="darts_tf")
class ReLUConvBN(Op):
    """ReLU -> conv k x k (stride, padding) -> BN."""

    def __init__(self, in_channels, out_channels, kernel_size=1, stride=1, padding=0,
                 affine=True, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.affine = (
            kernel_size, stride, padding, affine)

    def build(self, input_shape=None):
        k = self.kernel_size
        self.kernel = self._kernel("kernel", (k, k, self.in_channels, self.out_channels))
        self._bn_index = self._batch_norm("bn", self.out_channels, self.affine)
        self.built = True

    def call(self, x, training=None, output_scale=None):
        y = kernels.conv2d(tf.nn.relu(x), self.kernel, self.stride, self.padding)
        return self._bn(y, self._bn_index, training, output_scale)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "affine": self.affine}


@keras.saving.register_keras_serializable(package="darts_tf")
class FactorizedReduce(Op):
    """ReLU -> concat[conv1x1/2 on x, conv1x1/2 on x shifted by one pixel] -> BN.

    With `groups` = G > 1 the input holds G independent inputs side by side on the
    channel axis and the layer computes G independent FactorizedReduce ops at once
    (grouped 1x1 convs), output laid out the same way: group g in channels
    [g * out_channels, (g + 1) * out_channels).
    """

    def __init__(self, in_channels, out_channels, affine=True, groups=1, **kwargs):
        super().__init__(**kwargs)
        if out_channels % 2:
            raise ValueError("FactorizedReduce needs an even number of output channels. "
                             f"Received: out_channels={out_channels}")
        self.in_channels, self.out_channels, self.affine = in_channels, out_channels, affine
        self.groups = groups

    def build(self, input_shape=None):
        half = self.out_channels // 2
        self.kernel_1 = self._kernel("kernel_1", (1, 1, self.in_channels, self.groups * half))
        self.kernel_2 = self._kernel("kernel_2", (1, 1, self.in_channels, self.groups * half))
        self._bn_index = self._batch_norm("bn", self.groups * self.out_channels, self.affine)
        self.built = True

    def call(self, x, training=None, output_scale=None):
        y = kernels.factorized_reduce(x, self.kernel_1, self.kernel_2)
        return self._bn(y, self._bn_index, training, output_scale)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "affine": self.affine, "groups": self.groups}


@keras.saving.register_keras_serializable(package="darts_tf")
class SepConv(Op):
    """(ReLU -> depthwise k x k -> pointwise 1x1 -> BN) twice; the stride on the first.

    `groups` = G computes G independent ops on G inputs side by side on the channel
    axis (depthwise convs are per channel anyway; the pointwise conv is grouped).
    """

    starts_with_relu = True

    def __init__(self, channels, kernel_size, stride=1, affine=True, groups=1, recompute=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size, self.stride, self.affine = (
            channels, kernel_size, stride, affine)
        self.groups, self.recompute = groups, recompute

    def build(self, input_shape=None):
        c, k, gc = self.channels, self.kernel_size, self.groups * self.channels
        self.depthwise_1 = self._kernel("depthwise_1", (k, k, gc, 1))
        self.pointwise_1 = self._kernel("pointwise_1", (1, 1, c, gc))
        self._bn_1 = self._batch_norm("bn_1", gc, self.affine)
        self.depthwise_2 = self._kernel("depthwise_2", (k, k, gc, 1))
        self.pointwise_2 = self._kernel("pointwise_2", (1, 1, c, gc))
        self._bn_2 = self._batch_norm("bn_2", gc, self.affine)
        self.built = True

    def call(self, x, training=None, output_scale=None, input_is_relu=False):
        pad, recompute = self.kernel_size // 2, self.recompute
        y = kernels.relu_depthwise_pointwise(x, self.depthwise_1, self.pointwise_1, self.stride,
                                             pad, recompute=recompute, relu=not input_is_relu)
        y = self._bn(y, self._bn_1, training)
        y = kernels.relu_depthwise_pointwise(y, self.depthwise_2, self.pointwise_2, 1, pad,
                                             recompute=recompute)
        return self._bn(y, self._bn_2, training, output_scale)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "affine": self.affine,
                "groups": self.groups, "recompute": self.recompute}


@keras.saving.register_keras_serializable(package="darts_tf")
class DilConv(Op):
    """ReLU -> depthwise k x k dilation 2 -> pointwise 1x1 -> BN (once)."""

    starts_with_relu = True

    def __init__(self, channels, kernel_size, stride=1, dilation=2, affine=True, groups=1,
                 recompute=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.kernel_size, self.stride, self.dilation, self.affine = (
            channels, kernel_size, stride, dilation, affine)
        self.groups, self.recompute = groups, recompute

    def build(self, input_shape=None):
        c, k, gc = self.channels, self.kernel_size, self.groups * self.channels
        self.depthwise = self._kernel("depthwise", (k, k, gc, 1))
        self.pointwise = self._kernel("pointwise", (1, 1, c, gc))
        self._bn_index = self._batch_norm("bn", gc, self.affine)
        self.built = True

    def call(self, x, training=None, output_scale=None, input_is_relu=False):
        pad = self.dilation * (self.kernel_size - 1) // 2
        y = kernels.relu_depthwise_pointwise(x, self.depthwise, self.pointwise, self.stride, pad,
                                             self.dilation, self.recompute,
                                             relu=not input_is_relu)
        return self._bn(y, self._bn_index, training, output_scale)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "dilation": self.dilation, "affine": self.affine, "groups": self.groups,
                "recompute": self.recompute}


def _skip(channels, stride, affine, name, groups):
    if stride == 1:
        return Identity(name=name)
    return FactorizedReduce(channels, channels, affine=affine, groups=groups, name=name)


# name -> factory(channels, stride, affine, search, name, groups, recompute), in the order of
# `genotype.PRIMITIVES` (the alpha columns). `search=True` adds the BN(affine=False) the
# reference's search MixedOp puts after each pooling op. `recompute=True` makes the convs
# recompute their ReLU and depthwise outputs in the backward pass (memory: see
# `kernels.relu_depthwise_pointwise`); the search ops do, the fixed networks only when asked
# (`recompute=True`: less memory, more time). `groups` = G builds G independent copies of
# the op that run side by side on the channel axis (the search cell batches the edges into
# a node this way: far fewer graph ops to trace).
OPS: dict[str, Callable[..., Op]] = {
    "none": lambda c, s, affine, search, name, g, r: Zero(s, name=name),
    "max_pool_3x3": lambda c, s, affine, search, name, g, r: Pool("max", c, s, search, g,
                                                                  name=name),
    "avg_pool_3x3": lambda c, s, affine, search, name, g, r: Pool("avg", c, s, search, g,
                                                                  name=name),
    "skip_connect": lambda c, s, affine, search, name, g, r: _skip(c, s, affine, name, g),
    "sep_conv_3x3": lambda c, s, affine, search, name, g, r: SepConv(c, 3, s, affine, g, r,
                                                                     name=name),
    "sep_conv_5x5": lambda c, s, affine, search, name, g, r: SepConv(c, 5, s, affine, g, r,
                                                                     name=name),
    "dil_conv_3x3": lambda c, s, affine, search, name, g, r: DilConv(c, 3, s, 2, affine, g, r,
                                                                     name=name),
    "dil_conv_5x5": lambda c, s, affine, search, name, g, r: DilConv(c, 5, s, 2, affine, g, r,
                                                                     name=name),
}


def make_op(op_name: str, channels: int, stride: int, affine: bool, search: bool = False,
            name: str | None = None, groups: int = 1, recompute: bool | None = None) -> Op:
    """Builds primitive `op_name` (one of `OPS`) on `channels` channels, already built.

    With `groups` = G the op takes G inputs of `channels` channels concatenated on the
    channel axis and computes G independent copies of itself (one per input).
    `recompute`: whether the separable and dilated convs recompute their activations in the
    backward pass (None: as `search`).
    """
    if op_name not in OPS:
        raise ValueError(f"Unknown op; expected one of {sorted(OPS)}. "
                         f"Received: op_name={op_name!r}")
    if stride not in (1, 2):
        raise ValueError(f"Op stride must be 1 or 2. Received: stride={stride}")
    op = OPS[op_name](channels, stride, affine, search, name, groups,
                      search if recompute is None else bool(recompute))
    op.build(None)
    return op

