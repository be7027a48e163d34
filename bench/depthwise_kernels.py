r"""Depthwise-conv kernels on the supernet's shapes: TensorFlow's input gradient against a
forward conv with the turned filter, and the dilated forward pass three ways.

    python bench/depthwise_kernels.py [--repeats=20]

Per shape (batch, height, width, channels: PC-DARTS' candidates at batch 256 on 8 and 20
channels at 32x32, 16 at 16x16 and 32 at 8x8, DARTS' at batch 64 on 32 and 80, the
retraining network's at batch 96) and
kernel size, the median milliseconds per call of one traced function:
  input_grad_tf       DepthwiseConv2dNativeBackpropInput (what TensorFlow's gradient runs)
  input_grad_turned   DepthwiseConv2dNative of the upstream gradient with the filter turned
                      by 180 degrees, padding k - 1 - p (`darts_tf.kernels`' gradient)
  forward             the forward conv, for scale
and the largest relative difference of the two input gradients; then the filter gradient:
  filter_grad_tf      DepthwiseConv2dNativeBackpropFilter on the shape as it is
  filter_grad_folded  `darts_tf.kernels`' (examples side by side on the channel axis when
                      the channels are thin, the per-channel sums added afterwards)
and their largest relative difference. For dilation 2 (the
dilated convs): the forward pass as oneDNN's dilated kernel, as TensorFlow's
`tf.nn.depthwise_conv2d` (space-to-batch phases), and as `darts_tf.kernels.depthwise_conv2d`.
One JSON line per shape, then the CPU model and the load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import darts_tf  # noqa: E402,F401  (before TensorFlow: it sets its oneDNN default)

import proc_clock  # noqa: E402  pylint: disable=wrong-import-position

SHAPES = [(256, 32, 32, 8), (256, 32, 32, 20), (64, 32, 32, 32), (64, 32, 32, 80),
          (96, 32, 32, 36), (96, 16, 16, 72), (256, 16, 16, 16), (256, 8, 8, 32)]


def input_gradients(shape, size, repeats):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    padding = size // 2
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(size, size, shape[-1], 1)).astype(np.float32))
    pads = {"padding": "EXPLICIT",
            "explicit_paddings": [0, 0, padding, padding, padding, padding, 0, 0]}
    turned = size - 1 - padding
    turned_pads = {"padding": "EXPLICIT",
                   "explicit_paddings": [0, 0, turned, turned, turned, turned, 0, 0]}
    upstream = tf.constant(rng.normal(size=shape).astype(np.float32))  # stride 1, "same"
    strides = [1, 1, 1, 1]
    ours = tf.function(lambda dy: tf.raw_ops.DepthwiseConv2dNative(
        input=dy, filter=tf.reverse(kernel, [0, 1]), strides=strides, **turned_pads))
    theirs = tf.function(lambda dy: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=tf.constant(shape), filter=kernel, out_backprop=dy, strides=strides, **pads))
    forward = tf.function(lambda x: tf.raw_ops.DepthwiseConv2dNative(
        input=x, filter=kernel, strides=strides, **pads))
    a, b = ours(upstream).numpy(), theirs(upstream).numpy()
    from darts_tf import kernels  # pylint: disable=import-outside-toplevel
    filter_tf = tf.function(lambda dy: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=tf.constant([size, size, shape[-1], 1]), out_backprop=dy,
        strides=strides, **pads))
    filter_ours = tf.function(lambda dy: kernels._depthwise_filter_grad(  # pylint: disable=protected-access
        x, dy, size, padding))
    fa, fb = filter_ours(upstream).numpy(), filter_tf(upstream).numpy()
    return {"shape": list(shape), "kernel": size,
            "input_grad_tf_ms": round(proc_clock.median_ms(lambda: theirs(upstream), repeats), 2),
            "input_grad_turned_ms": round(proc_clock.median_ms(lambda: ours(upstream), repeats), 2),
            "forward_ms": round(proc_clock.median_ms(lambda: forward(x), repeats), 2),
            "max_relative_difference": float(np.abs(a - b).max() / np.abs(b).max()),
            "filter_grad_tf_ms": round(proc_clock.median_ms(lambda: filter_tf(upstream), repeats), 2),
            "filter_grad_folded_ms": round(proc_clock.median_ms(lambda: filter_ours(upstream), repeats), 2),
            "filter_max_relative_difference": float(np.abs(fa - fb).max() / np.abs(fb).max())}


def dilated_forward(shape, size, repeats):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from darts_tf import kernels  # pylint: disable=import-outside-toplevel

    padding = size - 1  # dilation 2, "same"
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=shape).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(size, size, shape[-1], 1)).astype(np.float32))
    out = {"shape": list(shape), "kernel": size, "dilation": 2}
    native = tf.function(lambda x: tf.raw_ops.DepthwiseConv2dNative(
        input=x, filter=kernel, strides=[1, 1, 1, 1], padding="EXPLICIT",
        explicit_paddings=[0, 0, padding, padding, padding, padding, 0, 0],
        dilations=[1, 2, 2, 1]))
    phases = tf.function(lambda x: tf.nn.depthwise_conv2d(
        x, kernel, [1, 1, 1, 1], [[0, 0], [padding, padding], [padding, padding], [0, 0]],
        dilations=[2, 2]))
    ours = tf.function(lambda x: kernels.depthwise_conv2d(x, kernel, 1, padding, 2))
    for name, fn in (("onednn_dilated", native), ("tf_space_to_batch", phases),
                     ("darts_tf", ours)):
        try:
            out[f"{name}_ms"] = round(proc_clock.median_ms(lambda: fn(x), repeats), 2)
        except Exception as err:  # pylint: disable=broad-except  (a build without the kernel)
            out[f"{name}_ms"] = f"fails: {str(err).splitlines()[0][:120]}"
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import proc_clock  # pylint: disable=import-outside-toplevel

    load = os.getloadavg()[0]
    for shape in SHAPES:
        for size in (3, 5):
            print(json.dumps(input_gradients(shape, size, args.repeats)), flush=True)
    for shape in SHAPES[1::2]:
        for size in (3, 5):
            print(json.dumps(dilated_forward(shape, size, args.repeats)), flush=True)
    print(json.dumps({"machine": proc_clock.cpu_model(), "load_before": round(load, 2),
                      "load_after": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
