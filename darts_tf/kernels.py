"""The TensorFlow kernels of the DARTS ops: pure functions on tensors, no variables.

The op layers (`darts_tf.ops`) and the pieces around the cells (`darts_tf.heads`)
own the variables and call these functions to compute. Each kernel computes the
reference's function (quark0/darts `cnn/operations.py`, ../shared/DARTS_REFERENCE.md
section 3) with as few graph ops as it can: a supernet calls them hundreds of
times, and the time to trace and optimise a step grows with the number of graph ops.

Layout is NHWC. Padding is PyTorch's explicit symmetric padding (`padding` pixels
on each side), not Keras' "same", which pads asymmetrically at stride 2 and so
computes a different function (reference section 8). Average pooling divides by
the number of valid (unpadded) elements (`count_include_pad=False`), max pooling
pads with -inf (as a copy of the border: the same function, and quantizable).
Kernels compute in the dtype of `x`: under mixed precision the float32 filters are
cast, not the activations.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
import weakref

import numpy as np
import tensorflow as tf
# For `custom_gradient`: the gradient tape's recording and TensorFlow's gradient registry.
from tensorflow.python.eager import record as _record  # pylint: disable=no-name-in-module
from tensorflow.python.framework import ops as _tf_ops  # pylint: disable=no-name-in-module

import darts_tf

logger = logging.getLogger(__name__)

_GRAPH_CONSTANTS = weakref.WeakKeyDictionary()
_LOCAL = threading.local()
_GRADIENT_NAMES = itertools.count()


def custom_gradient(f):
    """`tf.custom_gradient` for functions of tensors, lighter to trace in a tf.function.

    In graph mode `tf.custom_gradient` hands the gradient tape an op whose outputs are
    the results and a pass-through copy of every input; the tape then builds a zero
    tensor (a Fill and two constants) for each input's copy, which nothing reads, on
    every call: 4,242 dead ops, 12% of the first-order search step's graph, traced and
    then pruned. This records the results alone. The graph op is the same IdentityN,
    with the gradient registered under its own name, so symbolic gradients (`tf.gradients`,
    a tf.function differentiated from outside) take the same path as in
    `tf.custom_gradient`; eagerly, `tf.custom_gradient` itself runs.

    `f(*tensors)` returns (result, grad_fn) as for `tf.custom_gradient`, and must read no
    variables (pass their values in).
    """
    eager = tf.custom_gradient(f)

    @functools.wraps(f)
    def decorated(*args):
        if tf.executing_eagerly():
            return eager(*args)
        args = [tf.convert_to_tensor(a) for a in args]
        with _record.VariableWatcher() as watcher:
            result, grad_fn = f(*args)
        if watcher.watched_variables():
            raise ValueError(f"custom_gradient: {f.__name__} reads variables "
                             f"{[v.name for v in watcher.watched_variables()]}; pass their "
                             "values as arguments.")
        flat = tf.nest.flatten(result)

        def backward(*result_grads):
            grads = grad_fn(*result_grads[:len(flat)])
            return list(grads) if isinstance(grads, (list, tuple)) else [grads]

        name = f"DartsTfCustomGradient{next(_GRADIENT_NAMES)}"

        @_tf_ops.RegisterGradient(name)
        def _symbolic(unused_op, *result_grads):  # pylint: disable=unused-variable
            return [None] * len(flat) + backward(*result_grads)

        with tf.compat.v1.get_default_graph().gradient_override_map({"IdentityN": name}):
            outputs = tf.identity_n(flat + args)[:len(flat)]
        _record.record_operation(f.__name__, outputs, args, backward)
        return tf.nest.pack_sequence_as(result, outputs)

    return decorated


def graph_constant(value: float, channels: int) -> tf.Tensor:
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
def onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU ops with oneDNN (off with TF_ENABLE_ONEDNN_OPTS=0).

    Warns (once) when they are off on an x86 CPU without the user having asked for it:
    TensorFlow was imported before darts_tf, on a CPU where its default is off (see
    darts_tf/__init__.py, `_prefer_onednn`).
    """
    try:
        from tensorflow.python.util import _pywrap_util_port  # pylint: disable=import-outside-toplevel
        enabled = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # an other build: assume the default (oneDNN on)
        return True
    if not enabled and "TF_ENABLE_ONEDNN_OPTS" not in os.environ and darts_tf._on_x86():  # pylint: disable=protected-access
        logger.warning(
            "TensorFlow's oneDNN CPU kernels are off: TensorFlow was imported before darts_tf "
            "on a CPU where its default leaves them off (no AVX-512 VNNI/BF16, AVX-VNNI or "
            "AMX). Search and retraining steps take about twice as long without them. Set "
            "TF_ENABLE_ONEDNN_OPTS=1 before importing TensorFlow, or import darts_tf first "
            "(TF_ENABLE_ONEDNN_OPTS=0 keeps them off without this warning).")
    return enabled


def grouped_conv_as_matmul(groups: int, dtype) -> bool:
    """Whether a grouped 1x1 conv is computed as a batched matmul per group (the same function).

    TensorFlow's CPU kernels have no float16 gradient for grouped convolutions, none for
    float64 (which oneDNN does not run), none for bfloat16 where oneDNN cannot run it (CPUs
    without AVX-512: "filter_size does not have enough elements", seen on an AVX2 AMD
    EPYC), and none at all without oneDNN (TF_ENABLE_ONEDNN_OPTS=0).
    """
    return groups > 1 and (dtype != tf.float32 or not onednn_enabled())


# The largest number of pixels (H x W) at which an ungrouped 1x1 conv is a matmul. oneDNN's
# filter gradient of a 1x1 conv on 8x8 maps takes 1.2-2.2x a matmul's time on the
# retraining and search networks' shapes, its forward and input gradient about as long;
# at 16x16 and above its kernels tie or win (bench/pointwise_conv.py, BENCHMARKS.md).
POINTWISE_MATMUL_MAX_PIXELS = 64


def pointwise_as_matmul(x_shape, kernel_shape, stride: int = 1, padding: int = 0) -> bool:
    """Whether `conv2d` of an input of `x_shape` (NHWC) with a filter of `kernel_shape` is
    computed as one matmul of the (N*H*W, C) input with the (C, C') filter (the same
    function, and its gradients are matmuls too): an ungrouped 1x1 conv at stride 1 without
    padding on small maps (`POINTWISE_MATMUL_MAX_PIXELS`)."""
    height, width = x_shape[1], x_shape[2]
    return (tuple(kernel_shape[:2]) == (1, 1) and stride == 1 and not padding
            and kernel_shape[2] == x_shape[-1] and height is not None and width is not None
            and height * width <= POINTWISE_MATMUL_MAX_PIXELS)


def conv2d(x, kernel, stride: int = 1, padding: int = 0, dilation: int = 1) -> tf.Tensor:
    """A full or grouped convolution with PyTorch padding semantics.

    Args:
      x: NHWC input.
      kernel: (kh, kw, in_channels // groups, out_channels) filter; the number of groups
        is x's channels / kernel.shape[2].
      stride: spatial stride.
      padding: zero pixels added on each side of both spatial axes.
      dilation: spatial dilation.

    Returns:
      The NHWC output, in x's dtype.
    """
    kernel = tf.cast(kernel, x.dtype)
    groups = x.shape[-1] // kernel.shape[2]
    if kernel.shape[:2] == (1, 1) and stride == 1 and grouped_conv_as_matmul(groups, x.dtype):
        c_in, c_out = kernel.shape[2], kernel.shape[3] // groups
        xg = tf.reshape(x, [-1, x.shape[1], x.shape[2], groups, c_in])
        kg = tf.transpose(tf.reshape(kernel, [c_in, groups, c_out]), [1, 0, 2])
        y = tf.einsum("nhwgc,gcd->nhwgd", xg, kg)
        return tf.reshape(y, [-1, x.shape[1], x.shape[2], groups * c_out])
    if pointwise_as_matmul(x.shape, kernel.shape, stride, padding):
        y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), tf.reshape(kernel, kernel.shape[2:]))
        return tf.reshape(y, [-1, x.shape[1], x.shape[2], kernel.shape[3]])
    pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    return tf.nn.conv2d(x, kernel, strides=stride, padding=pads if padding else "VALID",
                        dilations=dilation)


FACTORIZED_REDUCE_CONV = "factorized_reduce_conv"


def factorized_reduce(x, kernel_1, kernel_2) -> tf.Tensor:
    """FactorizedReduce before its batch norm: concat[conv1x1/2(relu(x)) by kernel_1 on pixels
    (2i, 2j), conv1x1/2 by kernel_2 on pixels (2i+1, 2j+1)], per group of the 1x1 convs
    (group g's output: [path 1 of g, path 2 of g]).

    On even sizes it is one 2x2 convolution at stride 2 whose filter holds kernel_1 at tap
    (0, 0), kernel_2 at tap (1, 1) and zeros elsewhere: no strided slices, whose gradients
    each write a zero tensor of x's size and scatter into it, and one input gradient in
    place of two summed. Forward and backward take 2.1-3.5x less time
    (bench/factorized_reduce.py), though the conv multiplies zeros. The backward pass keeps
    the ReLU of all of x rather than of the quarter the paths read; PC-DARTS' allocator
    peak at batch 256 stayed within the run-to-run spread (2.21-2.29 GB against
    2.30-2.36 GB, BENCHMARKS.md).
    """
    c_in, out = kernel_1.shape[2], kernel_1.shape[3]
    groups = x.shape[-1] // c_in
    half = out // groups
    if x.shape[1] % 2 or x.shape[2] % 2 or grouped_conv_as_matmul(groups, x.dtype):
        # Odd sizes (the two paths differ in size, as in the reference, which fails there)
        # and grouped convs without a gradient kernel: the two strided paths.
        y1 = conv2d(tf.nn.relu(x[:, ::2, ::2, :]), kernel_1)
        y2 = conv2d(tf.nn.relu(x[:, 1::2, 1::2, :]), kernel_2)
        if groups == 1:
            return tf.concat([y1, y2], axis=-1)
        shape = [-1, y1.shape[1], y1.shape[2], groups, half]
        y = tf.concat([tf.reshape(y1, shape), tf.reshape(y2, shape)], axis=-1)
        return tf.reshape(y, [-1, y1.shape[1], y1.shape[2], 2 * out])
    path_1 = tf.reshape(tf.cast(kernel_1, x.dtype), [c_in, groups, 1, half])
    path_2 = tf.reshape(tf.cast(kernel_2, x.dtype), [c_in, groups, 1, half])
    zeros = tf.zeros_like(path_1)
    tap_00 = tf.reshape(tf.concat([path_1, zeros], axis=2), [c_in, 2 * out])
    tap_11 = tf.reshape(tf.concat([zeros, path_2], axis=2), [c_in, 2 * out])
    no_tap = tf.zeros_like(tap_00)
    kernel = tf.reshape(tf.stack([tap_00, no_tap, no_tap, tap_11]), [2, 2, c_in, 2 * out])
    # The name tells `darts_tf.count_multiply_adds` that one tap in four is not zero.
    return tf.nn.conv2d(tf.nn.relu(x), kernel, strides=2, padding="VALID",
                        name=FACTORIZED_REDUCE_CONV)


def depthwise_conv2d(x, kernel, stride: int = 1, padding: int = 0,
                     dilation: int = 1) -> tf.Tensor:
    """A depthwise convolution with PyTorch padding semantics, built from few graph ops.

    TensorFlow refuses stride 2 together with dilation 2. With an even padding p,
    out[i] = sum_k w[k] x[2i + 2k - p] = sum_k w[k] x_sub[i + k - p/2] where
    x_sub = x[::2]: the same function as a stride-1, dilation-1 conv over every
    other pixel with the padding halved.

    A stride-1 conv with dilation d is an undilated conv on each of the d x d phases of
    the padded input (`space_to_batch_nd` with the padding, VALID conv, `batch_to_space`);
    `tf.nn.depthwise_conv2d` does the same with several times the graph ops.

    Args:
      x: NHWC input.
      kernel: (kh, kw, channels, 1) filter.
      stride: spatial stride; above 1 together with a dilation above 1 only as
        stride == dilation == 2 with an even padding (the DARTS dilated convs).
      padding: zero pixels added on each side of both spatial axes.
      dilation: spatial dilation.

    Returns:
      The NHWC output, in x's dtype.
    """
    if stride > 1 and dilation > 1:
        if not (stride == dilation == 2 and padding % 2 == 0):
            raise ValueError(
                "depthwise_conv2d: a stride above 1 with a dilation above 1 is supported only "
                "as stride == dilation == 2 with an even padding. "
                f"Received: stride={stride}, dilation={dilation}, padding={padding}")
        # Every other pixel as a 1x1 average pool at stride 2: the same values, and its
        # gradient places the upstream values in one op, where a strided slice's writes a
        # zero tensor of x's size and scatters into it.
        x = tf.nn.avg_pool2d(x, 1, 2, "VALID")
        stride, dilation, padding = 1, 1, padding // 2
    kernel = tf.cast(kernel, x.dtype)
    if dilation == 1:
        # Explicit padding inside the conv op: no padded copy of x is kept for the backward.
        if stride == 1:
            return _depthwise_stride_1(x, kernel, padding)
        return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel,
                                                strides=[1, stride, stride, 1],
                                                **_depthwise_padding(padding))
    spatial = x.shape[1:3]
    if stride == 1 and all(n is not None and (n + 2 * padding) % dilation == 0 for n in spatial):
        # float32 only: oneDNN takes float16 / bfloat16 depthwise convs only on CPUs with
        # AVX-512 (BF16, FP16); elsewhere TensorFlow's own kernel runs them, and refuses
        # dilations (seen on an AVX2 AMD EPYC with oneDNN on).
        if (x.dtype == tf.float32 and native_dilated_depthwise()
                and all(n % dilation == 0 for n in spatial)):
            return _depthwise_stride_1(x, kernel, padding, dilation)
        block, pads = [dilation, dilation], [[padding, padding], [padding, padding]]
        phases = tf.space_to_batch_nd(x, block, pads)
        return tf.batch_to_space(_depthwise_stride_1(phases, kernel, 0), block, [[0, 0], [0, 0]])
    # Odd sizes (e.g. 7x7 in ImageNet networks): TensorFlow's general dilated path.
    pads = [[0, 0], [padding, padding], [padding, padding], [0, 0]] if padding else "VALID"
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding=pads,
                                  dilations=[dilation, dilation])


def _depthwise_padding(padding: int) -> dict:
    """DepthwiseConv2dNative's padding arguments for `padding` zeros on each spatial side."""
    if not padding:
        return {"padding": "VALID"}
    return {"padding": "EXPLICIT",
            "explicit_paddings": [0, 0, padding, padding, padding, padding, 0, 0]}


@functools.lru_cache(maxsize=None)
def native_dilated_depthwise() -> bool:
    """Whether DepthwiseConv2dNative computes dilated convs itself: oneDNN's CPU kernel does
    (TensorFlow's own refuses dilations), so only with oneDNN and no GPU in sight."""
    return onednn_enabled() and not tf.config.list_physical_devices("GPU")


def _depthwise_stride_1(x, kernel, padding: int, dilation: int = 1) -> tf.Tensor:
    """A stride-1 depthwise conv whose input gradient is a depthwise conv too.

    At stride 1 the gradient with respect to x is the upstream gradient convolved with the
    filter turned by 180 degrees, padded by dilation * (k - 1) - padding: a forward
    depthwise conv, which TensorFlow's CPU kernels compute 2-7x faster than its
    input-gradient kernel (DepthwiseConv2dNativeBackpropInput) on the supernet's shapes
    (BENCHMARKS.md). The filter gradient is TensorFlow's; with a dilation (oneDNN's
    forward kernel only, `native_dilated_depthwise`) it is taken on the d x d phases of
    the padded input, where the dilated conv is an undilated one. The same values up to
    float rounding (another order of the same sums).
    """
    size = kernel.shape[0]
    reach = dilation * (size - 1)
    dilations = [1, dilation, dilation, 1]
    if kernel.shape[1] != size or padding > reach:
        return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, strides=[1, 1, 1, 1],
                                                dilations=dilations,
                                                **_depthwise_padding(padding))

    @custom_gradient
    def depthwise(x, kernel):
        def grad(upstream):
            # Itself differentiable by this gradient (the exact Hessian-vector product):
            # TensorFlow's filter gradient of a dilated conv has no CPU kernel.
            x_grad = _depthwise_stride_1(upstream, tf.reverse(kernel, [0, 1]), reach - padding,
                                         dilation)
            if dilation == 1:
                kernel_grad = _depthwise_filter_grad(x, upstream, size, padding)
            else:
                block = [dilation, dilation]
                kernel_grad = _depthwise_filter_grad(
                    tf.space_to_batch_nd(x, block, [[padding, padding]] * 2),
                    tf.space_to_batch_nd(upstream, block, [[0, 0]] * 2), size, 0)
            return x_grad, kernel_grad

        return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, strides=[1, 1, 1, 1],
                                                dilations=dilations,
                                                **_depthwise_padding(padding)), grad

    return depthwise(x, kernel)


def _depthwise_filter_grad(x, upstream, size: int, padding: int) -> tf.Tensor:
    """The filter gradient of a stride-1 depthwise conv (size x size, `padding`) of x.

    TensorFlow's CPU kernel takes about as long per pixel on 8 channels as on 32: on
    PC-DARTS' thin inputs (4 to 24 channels at batch 256) it is 2-3x slower per element
    than on DARTS' at batch 64. The gradient sums over the batch, so f examples can be laid
    side by side on the channel axis (f x channels channels, batch / f examples) and the
    f per-channel sums added afterwards: the same sums in another order, 1.3-2.9x faster
    with the two transpositions (bench/depthwise_kernels.py).
    """
    batch, channels = x.shape[0], x.shape[-1]
    fold = 1
    while (channels < 32 and fold < 8 and fold * 2 * channels <= 128 and batch is not None
           and batch % (fold * 2) == 0):
        fold *= 2
    if fold > 1:
        def side_by_side(t):
            t = tf.reshape(t, [batch // fold, fold, *t.shape[1:]])
            t = tf.transpose(t, [0, 2, 3, 1, 4])
            return tf.reshape(t, [batch // fold, *t.shape[1:3], fold * channels])
        x, upstream = side_by_side(x), side_by_side(upstream)
    grad = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=tf.constant([size, size, fold * channels, 1], tf.int32),
        out_backprop=upstream, strides=[1, 1, 1, 1], **_depthwise_padding(padding))
    if fold > 1:
        grad = tf.reduce_sum(tf.reshape(grad, [size, size, fold, channels, 1]), axis=2)
    return grad


def pointwise_input_grad(upstream, kernel, channels: int) -> tf.Tensor:
    """The gradient of `conv2d(x, kernel)` (1x1, stride 1) with respect to x.

    The ops TensorFlow's conv gradient uses (or, where `conv2d` computes per-group
    matmuls, their transposed product), with x's shape taken from `upstream` (a 1x1
    stride-1 conv keeps the batch and spatial sizes) instead of from x, so that no
    value of x is needed.

    Args:
      upstream: the gradient of the conv's output.
      kernel: the (1, 1, in_channels // groups, out_channels) filter.
      channels: x's number of channels.
    """
    kernel = tf.cast(kernel, upstream.dtype)
    groups = channels // kernel.shape[2]
    if grouped_conv_as_matmul(groups, upstream.dtype):
        c_in, c_out = kernel.shape[2], kernel.shape[3] // groups
        g = tf.reshape(upstream, [-1, upstream.shape[1], upstream.shape[2], groups, c_out])
        kg = tf.transpose(tf.reshape(kernel, [c_in, groups, c_out]), [1, 0, 2])
        x_grad = tf.einsum("nhwgd,gcd->nhwgc", g, kg)
        return tf.reshape(x_grad, [-1, upstream.shape[1], upstream.shape[2], channels])
    if pointwise_as_matmul(upstream.shape[:3] + [channels], kernel.shape):
        x_grad = tf.matmul(tf.reshape(upstream, [-1, upstream.shape[-1]]),
                           tf.reshape(kernel, kernel.shape[2:]),
                           transpose_b=True)
        return tf.reshape(x_grad, [-1, upstream.shape[1], upstream.shape[2], channels])
    if upstream.shape[:3].is_fully_defined():  # the usual case: a constant, no shape ops
        sizes = tf.constant(upstream.shape[:3].as_list() + [channels], tf.int32)
    else:
        sizes = tf.concat([tf.shape(upstream)[:3], [channels]], axis=0)
    return tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes, filter=kernel, out_backprop=upstream,
                                          strides=[1, 1, 1, 1], padding="VALID")


@contextlib.contextmanager
def keeping_activations():
    """Within this context `relu_depthwise_pointwise` keeps its activations even when asked
    to recompute them: where a whole cell is recomputed in the backward pass
    (`cells.SearchCell(recompute=True)`), its gradient is taken right after, and
    recomputing the blocks inside it once more would only cost time. Per thread (a
    strategy traces its replicas in threads of their own)."""
    previous = getattr(_LOCAL, "keeping_activations", False)
    _LOCAL.keeping_activations = True
    try:
        yield
    finally:
        _LOCAL.keeping_activations = previous


def relu_depthwise_pointwise(x, depthwise, pointwise, stride: int = 1, padding: int = 0,
                             dilation: int = 1, recompute: bool = False,
                             relu: bool = True) -> tf.Tensor:
    """ReLU -> depthwise conv -> pointwise 1x1 conv: the body of SepConv and DilConv.

    With `recompute=True` only `x` is kept for the backward pass. Backprop would
    otherwise keep the ReLU output (the depthwise filter gradient's input), the dilated
    conv's padded phases and the depthwise output (the pointwise filter gradient's
    input) of every such block alive until its gradient runs; in a supernet that is
    most of a weight pass's activation memory, as four of the seven ops of every edge
    start with such a block. The gradient recomputes them from `x` when it runs, for
    some more time (BENCHMARKS.md, "memory"). The search ops recompute; the fixed
    networks do not, for speed. Values and gradients are the same either way.

    Args:
      x: NHWC input.
      depthwise: (k, k, channels, 1) depthwise filter.
      pointwise: (1, 1, channels // groups, out_channels) pointwise filter.
      stride, padding, dilation: of the depthwise conv (see `depthwise_conv2d`).
      recompute: whether to recompute the intermediate values in the backward pass.
      relu: False when x is a ReLU's output already (a search mixed op takes its input's
        ReLU once for the four candidates that start with one: `cells.MixedOp`).
    """
    activation = tf.nn.relu if relu else (lambda t: t)
    if recompute and not getattr(_LOCAL, "keeping_activations", False):
        return _recomputing_relu_depthwise_pointwise(x, depthwise, pointwise, stride, padding,
                                                     dilation, activation)
    return conv2d(depthwise_conv2d(activation(x), depthwise, stride, padding, dilation),
                  pointwise)


def _recomputing_relu_depthwise_pointwise(x, depthwise, pointwise, stride, padding, dilation,
                                          activation):
    """`relu_depthwise_pointwise(..., recompute=True)`: a custom gradient that keeps `x`."""
    depthwise = tf.convert_to_tensor(depthwise)
    pointwise = tf.convert_to_tensor(pointwise)

    @custom_gradient
    def block(x, depthwise, pointwise):
        d = depthwise_conv2d(activation(x), depthwise, stride, padding, dilation)

        def grad(upstream):
            # Recompute when the backward pass gets here: without the dependency on the
            # upstream gradient the executor would run the recomputation as soon as x is
            # ready, in the forward pass, and keep its outputs alive until they are used.
            with tf.control_dependencies([upstream]):
                x_again = tf.identity(x)
            # The pointwise input gradient needs no input values: an architecture pass
            # (no filter gradients) recomputes no depthwise conv.
            d_grad = pointwise_input_grad(upstream, pointwise, d.shape[-1])
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch([x_again, depthwise])
                d_again = depthwise_conv2d(activation(x_again), depthwise, stride, padding,
                                           dilation)
            x_grad, depthwise_grad = tape.gradient(d_again, [x_again, depthwise],
                                                   output_gradients=d_grad)
            # The recomputed pointwise output is unused and pruned; only its filter gradient
            # is taken.
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(pointwise)
                y_again = conv2d(d_again, pointwise)
            return x_grad, depthwise_grad, tape.gradient(y_again, pointwise,
                                                         output_gradients=upstream)

        return conv2d(d, pointwise), grad

    return block(x, depthwise, pointwise)


def _channels_view_is_faster(x) -> bool:
    """Whether `_fused_batch_norm_forward` takes x's NCHW view (oneDNN, float32, C % 16 == 8)."""
    channels = x.shape[-1]
    return (x.dtype == tf.float32 and channels is not None and channels > 16
            and channels % 16 == 8 and onednn_enabled())


def _fused_batch_norm_forward(x, scale, offset, mean, variance, epsilon: float, momentum: float):
    """The five outputs of `tf.raw_ops.FusedBatchNorm` in training on NHWC x, forward only.

    oneDNN's training-mode kernel on NHWC float32 takes 2.5-3x the time per element when
    the channels are an odd multiple of 8 above 16 (24, 40, 56, ...: PC-DARTS' edges of
    8 channels side by side, 3 or 5 of them; `bench/batch_norm.py`). The same tensor viewed
    as NCHW with 1x1 images, (N*H*W, C, 1, 1), a reshape without a copy, runs at the usual
    rate and gives the same values (bit for bit on this CPU). Its gradient in that view is
    the slow one (3.5x), so callers take the gradient on NHWC x (`batch_norm_training`).
    """
    kwargs = dict(scale=scale, offset=offset, mean=mean, variance=variance, epsilon=epsilon,
                  is_training=True, exponential_avg_factor=momentum)
    if not _channels_view_is_faster(x):
        return tf.raw_ops.FusedBatchNorm(x=x, **kwargs)
    outputs = tf.raw_ops.FusedBatchNorm(x=tf.reshape(x, [-1, x.shape[-1], 1, 1]),
                                        data_format="NCHW", **kwargs)
    return (tf.reshape(outputs[0], tf.shape(x)),) + tuple(outputs[1:])


def batch_norm_training(x, scale, offset, moving_mean, moving_variance, epsilon: float,
                        momentum: float):
    """(y, new moving mean, new moving variance) of `tf.raw_ops.FusedBatchNorm` in training,
    with its own gradient (FusedBatchNormGrad on NHWC x, whose derivatives TensorFlow
    registers), the forward on the faster layout (`_fused_batch_norm_forward`).
    """
    if not _channels_view_is_faster(x):
        return tuple(_fused_batch_norm_forward(x, scale, offset, moving_mean, moving_variance,
                                               epsilon, momentum)[:3])

    @custom_gradient
    def normalize(x, scale, offset):
        outputs = _fused_batch_norm_forward(x, scale, offset, moving_mean, moving_variance,
                                            epsilon, momentum)

        def grad(dy, *unused):
            return tuple(tf.raw_ops.FusedBatchNormGrad(
                y_backprop=dy, x=x, scale=scale, reserve_space_1=outputs[3],
                reserve_space_2=outputs[4], epsilon=epsilon, is_training=True)[:3])

        return tuple(outputs[:3]), grad

    return normalize(x, scale, offset)


def batch_norm_keeping_output(x, moving_mean, moving_variance, epsilon: float, momentum: float):
    """Training-mode batch norm without scale and offset whose gradient reads y, not x.

    Returns (y, new moving mean, new moving variance) as `tf.raw_ops.FusedBatchNorm` with
    `exponential_avg_factor=momentum` does. Its usual gradient keeps the input x until the
    backward pass; without scale and offset the output y is x normalised, so the gradient
    can be taken from y and the batch's 1/std instead. In a supernet the batch norms that
    use it (the cells' preprocessing, a separable conv's first one) feed blocks that keep
    y anyway, so their input, a conv output, need not be kept as well (BENCHMARKS.md,
    "memory"). The candidates' last batch norms take the mixed op's weights as their
    scale instead (`ops.Op._bn`). The same gradient op computes it: FusedBatchNormGrad on y with mean 0,
    variance 1 - epsilon (so that y is its own normalised value) and 1/std as the scale.

    Args:
      x: float32 NHWC input.
      moving_mean, moving_variance: the running estimates (float32 tensors, x's channels).
    """
    channels = x.shape[-1]
    zeros = graph_constant(0.0, channels)
    stats = []

    @custom_gradient
    def normalize(x):
        y, new_mean, new_variance, batch_mean, batch_variance = _fused_batch_norm_forward(
            x, graph_constant(1.0, channels), zeros, moving_mean, moving_variance, epsilon,
            momentum)
        del batch_mean
        stats.extend([new_mean, new_variance])
        inv_std = _inv_std(x, y, tf.math.rsqrt(batch_variance + epsilon))

        def grad(dy):
            return _normalized_input_grad(dy, y, inv_std, epsilon)

        return y, grad

    y = normalize(x)
    return y, stats[0], stats[1]


def _normalized_input_grad(dy, y, inv_std, epsilon):
    """dx = inv_std * (dy - mean(dy) - y * mean(dy * y)), means per channel: the batch norm's
    input gradient from its output y. One FusedBatchNormGrad computes it (on y, with mean 0
    and variance 1 - epsilon, scaled by inv_std). Its own derivatives (which the exact
    Hessian-vector product takes) are written out: the op's registered second derivative
    would renormalise y by y's own batch statistics, which differ from 0 and 1 by O(epsilon).
    """
    channels = y.shape[-1]

    def fused(dy):
        return tf.raw_ops.FusedBatchNormGrad(
            y_backprop=dy, x=y, scale=inv_std, reserve_space_1=graph_constant(0.0, channels),
            reserve_space_2=graph_constant(1.0 - epsilon, channels), epsilon=epsilon,
            is_training=True)[0]

    @custom_gradient
    def value(dy, y, inv_std):
        dx = fused(dy)

        def grad(upstream):
            # d/d dy: the same linear map applied to the upstream gradient (it is symmetric).
            # d/dy_k = -inv_std * (upstream_k * mean(dy * y) + dy_k * mean(upstream * y)).
            # d/d inv_std = sum(upstream * dx) / inv_std.
            axes = [0, 1, 2]
            dy_y = tf.reduce_mean(dy * y, axes)
            up_y = tf.reduce_mean(upstream * y, axes)
            return (fused(upstream), -inv_std * (upstream * dy_y + dy * up_y),
                    tf.reduce_sum(upstream * dx, axes) / inv_std)

        return dx, grad

    return value(dy, y, inv_std)


def _inv_std(x, y, inv_std):
    """`inv_std` (the batch's 1/std per channel), with its derivative in x taken from y.

    FusedBatchNorm passes no gradient from its statistics outputs, but the gradient
    above depends on x through 1/std too, and the exact Hessian-vector product
    differentiates that gradient. d(1/std_c)/dx_i = -(1/std_c)^2 y_i / n for x_i in
    channel c, n values per channel: y again, not x.
    """
    @custom_gradient
    def value(x):
        del x

        def grad(upstream):
            count = tf.cast(tf.size(y) // tf.shape(y)[-1], y.dtype)
            return -tf.square(inv_std) / count * upstream * y

        return tf.identity(inv_std), grad

    return value(x)


_POOL_3X3 = ([1, 3, 3, 1], [1, 1, 1, 1])


@custom_gradient
def _max_pool_3x3_same(x):
    """3x3 max pooling, stride 1, "SAME"; its gradient, and that gradient's own gradient
    (the exact Hessian-vector products go through it), are TensorFlow's, with one change.

    TensorFlow's CPU kernel for the second derivative (MaxPoolGradGrad) may reuse the
    buffer of its incoming gradient for its output when nothing else holds that buffer,
    and it clears the output before it reads the input: the result is then wrong. Whether
    the buffer is free depends on the order in which the executor ran the ops, so the
    exact mode returned one of several values on identical inputs (issue 12; reproduced
    in a 10-op graph). Its input must have as many elements as its output to be reused:
    here it gets the gradient padded by one pixel (and x padded with -inf, which never
    wins a window), so the kernel always writes to a buffer of its own.
    """
    y = tf.nn.max_pool2d(x, 3, 1, "SAME")

    def grad(dy):
        return _max_pool_3x3_same_grad(x, y, dy)

    return y, grad


@custom_gradient
def _max_pool_3x3_same_grad(x, y, dy):
    """d(max pool)/dx^T dy; linear in dy, piecewise constant in x and y."""
    ksize, strides = _POOL_3X3
    dx = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, ksize=ksize,
                                strides=strides, padding="SAME")

    def grad(ddx):
        pads = [[0, 0], [1, 1], [1, 1], [0, 0]]
        ddy = tf.raw_ops.MaxPoolGradGrad(
            orig_input=tf.pad(x, pads, constant_values=float("-inf")), orig_output=y,
            grad=tf.pad(ddx, pads), ksize=ksize, strides=strides, padding="VALID")
        return tf.zeros_like(x), tf.zeros_like(y), ddy

    return dx, grad


@functools.lru_cache(maxsize=None)
def _valid_count_scale(height, width, stride):
    """9 / (number of unpadded elements) under each 3x3 window, padding 1."""
    def counts(n):
        starts = np.arange(0, n, stride) - 1
        return np.minimum(starts + 3, n) - np.maximum(starts, 0)
    return (9.0 / np.outer(counts(height), counts(width)))[None, :, :, None].astype(np.float32)


def pool_3x3(x, mode: str, stride: int = 1) -> tf.Tensor:
    """3x3 max or average pooling with padding 1, as PyTorch computes it.

    Max pooling ignores the padding; average pooling divides by the number of valid
    (unpadded) elements under each window (`count_include_pad=False`).

    Args:
      x: NHWC input.
      mode: "max" or "avg".
      stride: spatial stride.
    """
    if mode not in ("max", "avg"):
        raise ValueError(f"pool_3x3: mode must be 'max' or 'avg'. Received: mode={mode!r}")
    if stride == 1:
        # At stride 1 TensorFlow's "SAME" pads 1 on each side, ignores the padding in max
        # pooling and divides by the valid elements in average pooling: the reference's
        # function, without a padded copy of x.
        return _max_pool_3x3_same(x) if mode == "max" else tf.nn.avg_pool2d(x, 3, 1, "SAME")
    if mode == "max":
        # The reference's window at output i covers rows s*i - 1 .. s*i + 1, as the stride-1
        # "SAME" window centred on row s*i does: the stride-1 pool at every s-th pixel (a 1x1
        # average pool at stride s takes them). The same values and gradient as the former
        # symmetric pad and stride-s VALID pool (bit for bit eagerly; in a graph the
        # kernels may add overlapping windows' gradients in another order, 1 ulp apart, as
        # they do for the former pool too), whose MirrorPadGrad made forward plus backward
        # 1.5-2.8x slower (BENCHMARKS.md); no padded copy of x, no -inf constant (LiteRT's
        # int8 kernels abort on one), and the exact second derivative goes through
        # `_max_pool_3x3_same`'s.
        return tf.nn.avg_pool2d(_max_pool_3x3_same(x), 1, stride, "VALID")
    pads = [[0, 0], [1, 1], [1, 1], [0, 0]]
    mean = tf.nn.avg_pool2d(tf.pad(x, pads), [1, 3, 3, 1], [1, stride, stride, 1], "VALID")
    # avg_pool2d divided by 9; divide by the valid (unpadded) elements instead.
    return mean * tf.cast(_valid_count_scale(x.shape[1], x.shape[2], stride), x.dtype)
