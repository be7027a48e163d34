"""The DARTS primitives, built exactly as the reference builds them.

Reference: quark0/darts `cnn/operations.py` (see ../shared/DARTS_REFERENCE.md
section 3). Every op is one Keras layer that owns its variables and computes
with plain TensorFlow ops: a supernet holds 8 cells x 14 edges x 7 ops, and the
time to trace a step grows with the number of Keras layer calls and graph ops,
so each op is one layer call rather than a stack of ReLU/Conv/BN layers.

Layout is NHWC. Padding is PyTorch's explicit symmetric padding (k // 2 each
side; 2 and 4 for the dilated 3x3 / 5x5), not Keras' "same", which pads
asymmetrically at stride 2 and so computes a different function (reference
section 8). Average pooling divides by the number of valid (unpadded) elements
(`count_include_pad=False`), max pooling pads with -inf.

Variables are created in `build()`, which only needs the channel counts given to
the constructor, so containers build their children explicitly and Keras never
has to trace a call to learn shapes (that took minutes on a full supernet).

BatchNorm follows PyTorch: momentum 0.1 (Keras 0.9), eps 1e-5, unbiased
variance in the running estimate, biased variance to normalise. Moving
statistics are created with `aggregation="mean"` so that under a
`tf.distribute` strategy replicas average them instead of silently diverging.
`affine=False` (the search network) creates no scale or offset.
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable

import numpy as np

import keras
import tensorflow as tf

from darts_tf.genotype import PRIMITIVES

BN_MOMENTUM = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch
BN_EPSILON = 1e-5


class Op(keras.layers.Layer):
    """Base class: helpers to create conv kernels and batch norms on a layer."""

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

    def _bn(self, x, index, training):
        """One fused batch-norm op (and its one gradient op): cheap to trace.

        In training it normalises with the biased batch variance and returns the
        running estimates (1 - m) * old + m * batch with the unbiased variance,
        which is exactly PyTorch's update with momentum m = 0.1. Under a strategy
        with several replicas the batch statistics are those of the global batch
        (synchronized across replicas), so that a data-parallel step computes the
        same function as one device on the whole batch.
        """
        v = self._bns[index]
        channels = v["moving_mean"].shape[0]
        scale = v["gamma"] if "gamma" in v else _graph_constant(1.0, channels)
        offset = v["beta"] if "beta" in v else _graph_constant(0.0, channels)
        replica = tf.distribute.get_replica_context()
        if training and replica is not None and replica.num_replicas_in_sync > 1:
            return self._synchronized_bn(x, v, scale, offset, replica)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, mean=v["moving_mean"], variance=v["moving_variance"],
            epsilon=BN_EPSILON, is_training=bool(training),
            exponential_avg_factor=BN_MOMENTUM if training else 1.0)[:3]
        if training:
            v["moving_mean"].assign(mean)
            v["moving_variance"].assign(variance)
        return y

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

_GRAPH_CONSTANTS = weakref.WeakKeyDictionary()


def _graph_constant(value: float, channels: int):
    """A float32 vector of `channels` x `value`, created once per graph being traced.

    The non-affine batch norms of a supernet need hundreds of ones/zeros vectors; one
    constant per graph and size keeps them out of the op count (tracing time).
    """
    if tf.executing_eagerly():
        return tf.fill([channels], value)
    graph = tf.compat.v1.get_default_graph()
    cache = _GRAPH_CONSTANTS.setdefault(graph, {})
    key = (value, channels)
    if key not in cache:
        with graph.control_dependencies(None):  # usable anywhere in the graph
            cache[key] = tf.constant(np.full([channels], value, np.float32))
    return cache[key]


@functools.lru_cache(maxsize=None)
def _onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU ops with oneDNN (off with TF_ENABLE_ONEDNN_OPTS=0)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # an other build: assume the default (oneDNN on)
        return True


@functools.lru_cache(maxsize=None)
def _valid_count_scale(height, width, stride):
    """9 / (number of unpadded elements) under each 3x3 window, padding 1."""
    def counts(n):
        starts = np.arange(0, n, stride) - 1
        return np.minimum(starts + 3, n) - np.maximum(starts, 0)
    return (9.0 / np.outer(counts(height), counts(width)))[None, :, :, None].astype(np.float32)


def _per_group_matmul(groups: int, dtype) -> bool:
    """Whether a grouped 1x1 conv is computed as a batched matmul per group (the same function).

    TensorFlow's CPU kernels have no float16 gradient for grouped convolutions, and no
    gradient at all without oneDNN (TF_ENABLE_ONEDNN_OPTS=0).
    """
    return groups > 1 and (dtype == tf.float16 or not _onednn_enabled())


def _conv(x, kernel, stride=1, padding=0, dilation=1):
    """A full (or grouped) conv with PyTorch padding semantics."""
    kernel = tf.cast(kernel, x.dtype)
    groups = x.shape[-1] // kernel.shape[2]
    if kernel.shape[:2] == (1, 1) and stride == 1 and _per_group_matmul(groups, x.dtype):
        c_in, c_out = kernel.shape[2], kernel.shape[3] // groups
        xg = tf.reshape(x, [-1, x.shape[1], x.shape[2], groups, c_in])
        kg = tf.transpose(tf.reshape(kernel, [c_in, groups, c_out]), [1, 0, 2])
        y = tf.einsum("nhwgc,gcd->nhwgd", xg, kg)
        return tf.reshape(y, [-1, x.shape[1], x.shape[2], groups * c_out])
    pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    return tf.nn.conv2d(x, kernel, strides=stride, padding=pads if padding else "VALID",
                        dilations=dilation)


def _depthwise(x, kernel, stride=1, padding=0, dilation=1):
    """A depthwise conv with PyTorch padding semantics, built from few graph ops.

    TensorFlow refuses stride 2 together with dilation 2. With an even padding p,
    out[i] = sum_k w[k] x[2i + 2k - p] = sum_k w[k] x_sub[i + k - p/2] where
    x_sub = x[::2]: the same function as a stride-1, dilation-1 conv over every
    other pixel with the padding halved.

    A stride-1 conv with dilation d is an undilated conv on each of the d x d phases of
    the padded input (`space_to_batch_nd` with the padding, VALID conv, `batch_to_space`);
    `tf.nn.depthwise_conv2d` does the same but with several times the graph ops, which
    cost start-up time (tracing and graph optimisation) in a supernet of 200+ such convs.
    """
    if stride > 1 and dilation > 1:
        assert stride == dilation == 2 and padding % 2 == 0, (stride, dilation, padding)
        x = x[:, ::2, ::2, :]
        stride, dilation, padding = 1, 1, padding // 2
    kernel = tf.cast(kernel, x.dtype)
    if dilation == 1:
        # Explicit padding inside the conv op: no padded copy of x is kept for the backward.
        return tf.raw_ops.DepthwiseConv2dNative(
            input=x, filter=kernel, strides=[1, stride, stride, 1],
            padding="EXPLICIT" if padding else "VALID",
            explicit_paddings=[0, 0, padding, padding, padding, padding, 0, 0] if padding else [])
    spatial = x.shape[1:3]
    if stride == 1 and all(n is not None and (n + 2 * padding) % dilation == 0 for n in spatial):
        block, pads = [dilation, dilation], [[padding, padding], [padding, padding]]
        phases = tf.space_to_batch_nd(x, block, pads)
        y = tf.raw_ops.DepthwiseConv2dNative(input=phases, filter=kernel, strides=[1, 1, 1, 1],
                                             padding="VALID")
        return tf.batch_to_space(y, block, [[0, 0], [0, 0]])
    # Odd sizes (e.g. 7x7 in ImageNet networks): TensorFlow's general dilated path.
    pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]] if padding else "VALID"
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding=pads,
                                  dilations=[dilation, dilation])


def _relu_depthwise_pointwise(x, depthwise, pointwise, stride, padding, dilation=1):
    """ReLU -> depthwise -> pointwise 1x1, keeping only `x` for the backward pass.

    Backprop would otherwise keep the ReLU output (the depthwise filter gradient's
    input), the dilated conv's padded phases and the depthwise output (the pointwise
    filter gradient's input) of every such block alive until its gradient runs. In a
    supernet that is most of a weight pass's activation memory: four of the seven ops
    of every edge start with such a block. The gradient recomputes them from `x` when
    it runs (the recomputed pointwise output is unused and pruned); `x` is kept
    instead: the edge's input, shared by its ops, or a batch-norm output inside a
    separable conv. The search ops use it (`recompute=True`): 2.64 -> 2.47 GB peak
    for the reference first-order step at batch 16, ~7% more time (BENCHMARKS.md).
    """
    depthwise = tf.convert_to_tensor(depthwise)
    pointwise = tf.convert_to_tensor(pointwise)

    @tf.custom_gradient
    def block(x, depthwise, pointwise):
        d = _depthwise(tf.nn.relu(x), depthwise, stride, padding, dilation)

        def grad(upstream):
            # Recompute when the backward pass gets here: without the dependency on the
            # upstream gradient the executor would run the recomputation as soon as x is
            # ready, in the forward pass, and keep its outputs alive until they are used.
            with tf.control_dependencies([upstream]):
                x_again = tf.identity(x)
            # The pointwise input gradient needs no input values: an architecture pass
            # (no filter gradients) recomputes no depthwise conv.
            d_grad = _pointwise_input_grad(upstream, pointwise, d.shape[-1])
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch([x_again, depthwise])
                d_again = _depthwise(tf.nn.relu(x_again), depthwise, stride, padding, dilation)
            x_grad, depthwise_grad = tape.gradient(d_again, [x_again, depthwise],
                                                   output_gradients=d_grad)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(pointwise)
                y_again = _conv(d_again, pointwise)
            return x_grad, depthwise_grad, tape.gradient(y_again, pointwise,
                                                         output_gradients=upstream)

        return _conv(d, pointwise), grad

    return block(x, depthwise, pointwise)


def _pointwise_input_grad(upstream, kernel, channels: int):
    """The gradient of `_conv(x, kernel)` (1x1, stride 1) for an x of `channels` channels.

    The ops TensorFlow's conv gradient uses (or, where `_conv` computes per-group
    matmuls, their transposed product), with x's shape taken from `upstream` (a 1x1
    stride-1 conv keeps the batch and spatial sizes) instead of from x.
    """
    kernel = tf.cast(kernel, upstream.dtype)
    groups = channels // kernel.shape[2]
    if _per_group_matmul(groups, upstream.dtype):
        c_in, c_out = kernel.shape[2], kernel.shape[3] // groups
        g = tf.reshape(upstream, [-1, upstream.shape[1], upstream.shape[2], groups, c_out])
        kg = tf.transpose(tf.reshape(kernel, [c_in, groups, c_out]), [1, 0, 2])
        x_grad = tf.einsum("nhwgd,gcd->nhwgc", g, kg)
        return tf.reshape(x_grad, [-1, upstream.shape[1], upstream.shape[2], channels])
    if upstream.shape[:3].is_fully_defined():  # the usual case: a constant, no shape ops
        sizes = tf.constant(upstream.shape[:3].as_list() + [channels], tf.int32)
    else:
        sizes = tf.concat([tf.shape(upstream)[:3], [channels]], axis=0)
    return tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes, filter=kernel, out_backprop=upstream,
                                          strides=[1, 1, 1, 1], padding="VALID")


def _relu_conv(x, depthwise, pointwise, stride, padding, dilation=1, recompute=False):
    """ReLU -> depthwise -> pointwise; see `_relu_depthwise_pointwise` for `recompute`."""
    if recompute:
        return _relu_depthwise_pointwise(x, depthwise, pointwise, stride, padding, dilation)
    return _conv(_depthwise(tf.nn.relu(x), depthwise, stride, padding, dilation), pointwise)


class Zero(Op):
    """`none`: zeros, subsampled at stride 2 (reference `Zero`)."""

    def __init__(self, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.stride = stride

    def build(self, input_shape=None):
        self.built = True

    def call(self, x, training=None):
        return tf.zeros_like(x[:, ::self.stride, ::self.stride, :])

    def get_config(self):
        return {**super().get_config(), "stride": self.stride}


class Identity(Op):
    """`skip_connect` at stride 1."""

    def build(self, input_shape=None):
        self.built = True

    def call(self, x, training=None):
        return x


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

    def call(self, x, training=None):
        pads = [[0, 0], [1, 1], [1, 1], [0, 0]]
        window, strides = [1, 3, 3, 1], [1, self.stride, self.stride, 1]
        if self.stride == 1:
            # At stride 1 TensorFlow's "SAME" pads 1 on each side, ignores the padding in max
            # pooling and divides by the valid elements in average pooling: the reference's
            # function, without a padded copy of x.
            pool = tf.nn.max_pool2d if self.mode == "max" else tf.nn.avg_pool2d
            y = pool(x, 3, 1, "SAME")
        elif self.mode == "max":
            y = tf.nn.max_pool2d(tf.pad(x, pads, constant_values=float("-inf")), 3,
                                 self.stride, "VALID")
        else:
            mean = tf.nn.avg_pool2d(tf.pad(x, pads), window, strides, "VALID")
            # avg_pool2d divided by 9; divide by the valid (unpadded) elements instead.
            y = mean * tf.cast(_valid_count_scale(x.shape[1], x.shape[2], self.stride), x.dtype)
        if self.batch_norm:
            y = self._bn(y, self._bn_index, training)
        return y

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "channels": self.channels,
                "stride": self.stride, "batch_norm": self.batch_norm, "groups": self.groups}


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

    def call(self, x, training=None):
        y = _conv(tf.nn.relu(x), self.kernel, self.stride, self.padding)
        return self._bn(y, self._bn_index, training)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "affine": self.affine}


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

    def call(self, x, training=None):
        x = tf.nn.relu(x)
        # A 1x1 conv at stride 2 reads pixels (2i, 2j); the second path reads (2i+1, 2j+1).
        y1 = _conv(x[:, ::2, ::2, :], self.kernel_1)
        y2 = _conv(x[:, 1::2, 1::2, :], self.kernel_2)
        if self.groups == 1:
            y = tf.concat([y1, y2], axis=-1)
        else:  # per group: [path 1 of g, path 2 of g]
            half = self.out_channels // 2
            shape = [-1, y1.shape[1], y1.shape[2], self.groups, half]
            y = tf.concat([tf.reshape(y1, shape), tf.reshape(y2, shape)], axis=-1)
            y = tf.reshape(y, [-1, y1.shape[1], y1.shape[2], self.groups * self.out_channels])
        return self._bn(y, self._bn_index, training)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "affine": self.affine, "groups": self.groups}


class SepConv(Op):
    """(ReLU -> depthwise k x k -> pointwise 1x1 -> BN) twice; the stride on the first.

    `groups` = G computes G independent ops on G inputs side by side on the channel
    axis (depthwise convs are per channel anyway; the pointwise conv is grouped).
    """

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

    def call(self, x, training=None):
        pad, recompute = self.kernel_size // 2, self.recompute
        y = _relu_conv(x, self.depthwise_1, self.pointwise_1, self.stride, pad,
                       recompute=recompute)
        y = self._bn(y, self._bn_1, training)
        y = _relu_conv(y, self.depthwise_2, self.pointwise_2, 1, pad, recompute=recompute)
        return self._bn(y, self._bn_2, training)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "affine": self.affine,
                "groups": self.groups, "recompute": self.recompute}


class DilConv(Op):
    """ReLU -> depthwise k x k dilation 2 -> pointwise 1x1 -> BN (once)."""

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

    def call(self, x, training=None):
        pad = self.dilation * (self.kernel_size - 1) // 2
        y = _relu_conv(x, self.depthwise, self.pointwise, self.stride, pad, self.dilation,
                       self.recompute)
        return self._bn(y, self._bn_index, training)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels,
                "kernel_size": self.kernel_size, "stride": self.stride,
                "dilation": self.dilation, "affine": self.affine, "groups": self.groups,
                "recompute": self.recompute}


def _skip(channels, stride, affine, name, groups):
    if stride == 1:
        return Identity(name=name)
    return FactorizedReduce(channels, channels, affine=affine, groups=groups, name=name)


# name -> factory(channels, stride, affine, search, name, groups). `search=True` adds the
# BN(affine=False) the reference's search MixedOp puts after each pooling op, and makes the
# convs recompute their ReLU and depthwise outputs in the backward pass (memory: see
# `_relu_depthwise_pointwise`; the fixed networks keep them, for speed). `groups`
# = G builds G independent copies of the op that run side by side on the channel axis
# (the search cell batches the edges into a node this way: far fewer graph ops to trace).
OPS: dict[str, Callable[..., Op]] = {
    "none": lambda c, s, affine, search, name, g: Zero(s, name=name),
    "max_pool_3x3": lambda c, s, affine, search, name, g: Pool("max", c, s, search, g, name=name),
    "avg_pool_3x3": lambda c, s, affine, search, name, g: Pool("avg", c, s, search, g, name=name),
    "skip_connect": lambda c, s, affine, search, name, g: _skip(c, s, affine, name, g),
    "sep_conv_3x3": lambda c, s, affine, search, name, g: SepConv(c, 3, s, affine, g, search,
                                                                  name=name),
    "sep_conv_5x5": lambda c, s, affine, search, name, g: SepConv(c, 5, s, affine, g, search,
                                                                  name=name),
    "dil_conv_3x3": lambda c, s, affine, search, name, g: DilConv(c, 3, s, 2, affine, g, search,
                                                                  name=name),
    "dil_conv_5x5": lambda c, s, affine, search, name, g: DilConv(c, 5, s, 2, affine, g, search,
                                                                  name=name),
}
assert tuple(OPS) == PRIMITIVES


def make_op(op_name: str, channels: int, stride: int, affine: bool, search: bool = False,
            name: str | None = None, groups: int = 1) -> Op:
    """Builds primitive `op_name` (one of `OPS`) on `channels` channels, already built.

    With `groups` = G the op takes G inputs of `channels` channels concatenated on the
    channel axis and computes G independent copies of itself (one per input).
    """
    if op_name not in OPS:
        raise ValueError(f"Unknown op {op_name!r}; expected one of {sorted(OPS)}.")
    if stride not in (1, 2):
        raise ValueError(f"Op stride must be 1 or 2. Received: stride={stride}")
    op = OPS[op_name](channels, stride, affine, search, name, groups)
    op.build(None)
    return op


for _cls in (Op, Zero, Identity, Pool, ReLUConvBN, FactorizedReduce, SepConv, DilConv):
    keras.saving.register_keras_serializable(package="darts_tf")(_cls)
