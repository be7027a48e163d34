r"""The 1x1 convolution and its two gradients: TensorFlow's conv kernels against a matmul.

    python bench/pointwise_conv.py [--repeats=10] [--shapes=96x32x32x36x36,96x8x8x144x144]

A 1x1 convolution of an NxHxWxC input to C' channels is a matmul of the (N*H*W, C) input
with the (C, C') filter; its filter gradient is input^T @ upstream, its input gradient
upstream @ filter^T. Per shape NxHxWxCxC' (the retraining network's preprocessing and
separable-conv pointwise convs at batch 96, cells at 32x32, 16x16 and 8x8, and smaller maps;
the search's at batch 16), the median milliseconds per call of one traced function each:
  forward   tf.nn.conv2d (oneDNN's convolution when oneDNN is on)  against tf.matmul
  filter    Conv2DBackpropFilter                                   against tf.matmul
  input     Conv2DBackpropInput                                    against tf.matmul
and the largest absolute difference between the two (float32 sums in another order). One
JSON line per shape, then the CPU model, whether oneDNN is on, and the load. These timings
set `darts_tf.kernels.POINTWISE_MATMUL_MAX_PIXELS` (ungrouped 1x1 convs on maps up to 8x8 are
matmuls in darts-tf: BENCHMARKS.md).
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

SHAPES = ("96x32x32x36x36,96x32x32x108x36,96x16x16x72x72,96x16x16x216x72,"
          "96x8x8x144x144,96x8x8x432x144,96x8x8x576x144,96x4x4x144x144,96x2x2x128x128,"
          "16x32x32x64x16,16x16x16x64x32,16x8x8x64x64")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--shapes", default=SHAPES, help="NxHxWxCxC', comma-separated")
    args = parser.parse_args()

    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from darts_tf import kernels  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    for text in args.shapes.split(","):
        n, h, w, c, c_out = (int(v) for v in text.split("x"))
        x = tf.constant(rng.normal(size=(n, h, w, c)).astype(np.float32))
        dy = tf.constant(rng.normal(size=(n, h, w, c_out)).astype(np.float32))
        f = tf.constant(rng.normal(size=(1, 1, c, c_out)).astype(np.float32))
        ones = [1, 1, 1, 1]
        pairs = {
            "forward": (lambda: tf.nn.conv2d(x, f, 1, "VALID"),
                        lambda: tf.reshape(tf.matmul(tf.reshape(x, [-1, c]),
                                                     tf.reshape(f, [c, c_out])),
                                           [n, h, w, c_out])),
            "filter": (lambda: tf.raw_ops.Conv2DBackpropFilter(
                           input=x, filter_sizes=[1, 1, c, c_out], out_backprop=dy,
                           strides=ones, padding="VALID"),
                       lambda: tf.reshape(tf.matmul(tf.reshape(x, [-1, c]),
                                                    tf.reshape(dy, [-1, c_out]),
                                                    transpose_a=True), [1, 1, c, c_out])),
            "input": (lambda: tf.raw_ops.Conv2DBackpropInput(
                          input_sizes=[n, h, w, c], filter=f, out_backprop=dy,
                          strides=ones, padding="VALID"),
                      lambda: tf.reshape(tf.matmul(tf.reshape(dy, [-1, c_out]),
                                                   tf.reshape(f, [c, c_out]),
                                                   transpose_b=True), [n, h, w, c])),
        }
        row = {"shape": [n, h, w, c, c_out]}
        for name, (conv, matmul) in pairs.items():
            conv, matmul = tf.function(conv), tf.function(matmul)
            row[f"{name}_conv_ms"] = round(proc_clock.median_ms(conv, args.repeats), 2)
            row[f"{name}_matmul_ms"] = round(proc_clock.median_ms(matmul, args.repeats), 2)
            row[f"{name}_max_abs_diff"] = float(np.max(np.abs(conv().numpy() - matmul().numpy())))
        print(json.dumps(row), flush=True)
    print(json.dumps({"cpu": proc_clock.cpu_model(), "onednn": kernels.onednn_enabled(),
                      "load_after": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
