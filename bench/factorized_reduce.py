r"""FactorizedReduce, forward and backward: two strided 1x1 paths against one 2x2 conv.

    python bench/factorized_reduce.py [--repeats=10]

Per shape (batch, size, input channels, output channels, groups: the preprocess of the
cell after a reduction in PC-DARTS' search at batch 256 and DARTS' at batch 64, the
stride-2 skip edges of their reduction cells, two edges batched, and the retraining
network's at batch 96), the median milliseconds per call of one traced function that
returns the output and the gradients of x and of both kernels for a fixed upstream
gradient:
  strided     ReLU and a 1x1 conv on pixels (2i, 2j) and on (2i+1, 2j+1), concatenated
              (the reference's computation, and darts-tf's before)
  conv_2x2    `darts_tf.kernels.factorized_reduce`: one 2x2 conv at stride 2 with the
              two kernels on the filter's diagonal taps
and the largest difference of the two, relative to the largest value. One JSON line per
shape, then the CPU model and the load.
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

# (batch, size, in channels, out channels per group, groups)
SHAPES = [(256, 32, 64, 32, 1), (64, 32, 64, 32, 1), (256, 16, 128, 64, 1),
          (256, 32, 4, 4, 2), (64, 32, 16, 16, 2), (96, 32, 144, 72, 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from darts_tf import kernels  # pylint: disable=import-outside-toplevel

    def strided(x, kernel_1, kernel_2, groups, half):
        y1 = tf.nn.conv2d(tf.nn.relu(x[:, ::2, ::2, :]), kernel_1, 1, "VALID")
        y2 = tf.nn.conv2d(tf.nn.relu(x[:, 1::2, 1::2, :]), kernel_2, 1, "VALID")
        shape = [-1, y1.shape[1], y1.shape[2], groups, half]
        y = tf.concat([tf.reshape(y1, shape), tf.reshape(y2, shape)], axis=-1)
        return tf.reshape(y, [-1, y1.shape[1], y1.shape[2], 2 * groups * half])

    rng = tf.random.Generator.from_seed(0)
    for batch, size, c_in, out, groups in SHAPES:
        half = out // 2
        x = rng.normal([batch, size, size, groups * c_in])
        kernel_1 = rng.normal([1, 1, c_in, groups * half])
        kernel_2 = rng.normal([1, 1, c_in, groups * half])
        upstream = rng.normal([batch, size // 2, size // 2, groups * out])
        results = {}
        for name, compute in (
                ("strided", lambda x, k1, k2: strided(x, k1, k2, groups, half)),
                ("conv_2x2", kernels.factorized_reduce)):
            @tf.function
            def step(compute=compute):
                with tf.GradientTape() as tape:
                    tape.watch([x, kernel_1, kernel_2])
                    y = compute(x, kernel_1, kernel_2)
                return [y, *tape.gradient(y, [x, kernel_1, kernel_2], output_gradients=upstream)]
            results[name] = (round(proc_clock.median_ms(step, args.repeats), 2), step())
        worst = max(float(tf.reduce_max(tf.abs(a - b)) / tf.reduce_max(tf.abs(b)))
                    for a, b in zip(results["conv_2x2"][1], results["strided"][1]))
        print(json.dumps({"shape": [batch, size, size, groups * c_in], "out": groups * out,
                          "groups": groups, "strided_ms": results["strided"][0],
                          "conv_2x2_ms": results["conv_2x2"][0],
                          "speed_up": round(results["strided"][0] / results["conv_2x2"][0], 2),
                          "max_relative_difference": float(f"{worst:.1e}")}))
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "?")
    print(json.dumps({"cpu": model, "cores": len(os.sched_getaffinity(0)),
                      "load_after": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
