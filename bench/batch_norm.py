r"""Training batch norm by channel count: oneDNN's NHWC kernel against the NCHW view.

    python bench/batch_norm.py [--repeats=10] [--shapes=256x16x16,256x32x32]

Per shape and channel count C (16 to 96 in steps of 8: 24, 40, 56, 72 and 88 are the
odd multiples of 8 that PC-DARTS' edges of 8 channels make side by side, 32 and 64 the
DARTS search's, 72 also retraining's at C=36), the median milliseconds per call of one
traced function:
  fwd_nhwc        tf.raw_ops.FusedBatchNorm in training on x (N, H, W, C)
  fwd_view        the same op on the view (N*H*W, C, 1, 1) in NCHW, a reshape without a
                  copy (`darts_tf.kernels._fused_batch_norm_forward` when C % 16 == 8)
  grad_nhwc       FusedBatchNormGrad on x in NHWC
  grad_view       FusedBatchNormGrad on the NCHW view
the nanoseconds per element of each, and the largest difference between the two forward
outputs. One JSON line per shape and C, then the CPU model and the load.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--shapes", default="256x16x16,256x32x32",
                        help="comma-separated NxHxW")
    parser.add_argument("--channels", default="16,24,32,40,48,56,64,72,80,88,96")
    args = parser.parse_args()

    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    rng = tf.random.Generator.from_seed(0)
    for shape in args.shapes.split(","):
        n, h, w = (int(s) for s in shape.split("x"))
        for channels in (int(c) for c in args.channels.split(",")):
            x = rng.normal([n, h, w, channels]) * 2 + 1
            dy = rng.normal([n, h, w, channels])
            scale = tf.ones([channels])
            offset = tf.zeros([channels])
            view = [-1, channels, 1, 1]
            kwargs = dict(scale=scale, offset=offset, mean=tf.zeros([channels]),
                          variance=tf.ones([channels]), epsilon=1e-5, is_training=True,
                          exponential_avg_factor=0.1)
            forward_nhwc = tf.function(lambda: tf.raw_ops.FusedBatchNorm(x=x, **kwargs))
            forward_view = tf.function(lambda: tf.raw_ops.FusedBatchNorm(
                x=tf.reshape(x, view), data_format="NCHW", **kwargs))
            outputs = forward_nhwc()

            def grad(fmt, reshape, outputs=outputs):
                return tf.raw_ops.FusedBatchNormGrad(
                    y_backprop=reshape(dy), x=reshape(x), scale=scale,
                    reserve_space_1=outputs[3], reserve_space_2=outputs[4], epsilon=1e-5,
                    is_training=True, data_format=fmt)[0]

            timings = {
                "fwd_nhwc": proc_clock.median_ms(lambda: forward_nhwc()[0], args.repeats),
                "fwd_view": proc_clock.median_ms(lambda: forward_view()[0], args.repeats),
                "grad_nhwc": proc_clock.median_ms(tf.function(lambda: grad("NHWC", lambda t: t)),
                                        args.repeats),
                "grad_view": proc_clock.median_ms(tf.function(
                    lambda: grad("NCHW", lambda t: tf.reshape(t, view))), args.repeats),
            }
            difference = float(tf.reduce_max(tf.abs(
                tf.reshape(forward_view()[0], x.shape) - outputs[0])))
            elements = n * h * w * channels
            print(json.dumps(
                {"shape": [n, h, w, channels],
                 **{k + "_ms": round(v, 2) for k, v in timings.items()},
                 **{k + "_ns_per_element": round(v * 1e6 / elements, 2)
                    for k, v in timings.items()},
                 "fwd_max_difference": float(f"{difference:.1e}")}))
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "?")
    print(json.dumps({"cpu": model, "cores": len(os.sched_getaffinity(0)),
                      "load_after": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
