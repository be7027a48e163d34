r"""The 3x3 max pool at stride 2 (padding 1), forward and backward: three formulations.

    python bench/max_pool.py [--repeats=10] [--shapes=96x32x32x72,16x32x32x64]

Per shape (the retraining network's reduction cells at batch 96: 72 channels at 32x32, 144
at 16x16; the search's at batch 16 and 64, two edges side by side), the median
milliseconds per call of one traced function that returns the output and the input
gradient for a fixed upstream gradient:
  minus_inf   padding 1 with -inf, then the VALID stride-2 pool (the reference's definition;
              LiteRT's int8 kernels abort on the -inf constant)
  symmetric   padding 1 by repeating the border (MirrorPad), then the VALID stride-2 pool
              (darts-tf before 6bf9f29; its gradient is a MirrorPadGrad)
  every_other `darts_tf.kernels.pool_3x3(x, "max", 2)`: the stride-1 "SAME" pool, then every
              other pixel (a 1x1 average pool at stride 2)
and whether the outputs and gradients equal the minus_inf ones bit for bit. The input is
ReLU'd, so that zeros tie inside the windows. One JSON line per shape, then the CPU model
and the load.
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

SHAPES = "96x32x32x72,96x16x16x144,16x32x32x64,16x16x16x128,64x32x32x64"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--shapes", default=SHAPES, help="NxHxWxC, comma-separated")
    args = parser.parse_args()

    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from darts_tf import kernels  # pylint: disable=import-outside-toplevel

    pads = [[0, 0], [1, 1], [1, 1], [0, 0]]
    formulations = {
        "minus_inf": lambda x: tf.nn.max_pool2d(
            tf.pad(x, pads, constant_values=float("-inf")), 3, 2, "VALID"),
        "symmetric": lambda x: tf.nn.max_pool2d(tf.pad(x, pads, mode="SYMMETRIC"), 3, 2,
                                                "VALID"),
        "every_other": lambda x: kernels.pool_3x3(x, "max", 2),
    }
    rng = np.random.default_rng(0)
    for text in args.shapes.split(","):
        n, h, w, c = (int(v) for v in text.split("x"))
        x = tf.constant(np.maximum(rng.normal(size=(n, h, w, c)), 0).astype(np.float32))
        upstream = tf.constant(rng.normal(size=(n, (h + 1) // 2, (w + 1) // 2, c)).astype(
            np.float32))
        results = {}
        for name, pool in formulations.items():
            @tf.function
            def step(pool=pool):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = pool(x)
                return [y, tape.gradient(y, x, output_gradients=upstream)]
            results[name] = (round(proc_clock.median_ms(step, args.repeats), 2), [t.numpy() for t in step()])
        reference = results["minus_inf"][1]
        print(json.dumps({
            "shape": [n, h, w, c],
            **{f"{name}_ms": ms for name, (ms, _) in results.items()},
            **{f"{name}_bit_identical": all(np.array_equal(a, b) for a, b in zip(out, reference))
               for name, (_, out) in results.items() if name != "minus_inf"}}), flush=True)
    print(json.dumps({"cpu": proc_clock.cpu_model(), "load_after": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
