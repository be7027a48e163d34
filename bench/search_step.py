r"""Search-step benchmark: start-up, time per step and peak memory, one configuration per process.

    python bench/search_step.py                      # every configuration, one JSON line each
    python bench/search_step.py --quick              # batch 16 only
    python bench/search_step.py --one=first_order,16 # one configuration in this process

Configuration: the reference search network (C=16, 8 cells, 4 nodes, 32x32x3
inputs, 10 classes), random data, the full search step of trainers/search.py
(architecture step on a validation batch, then weight step). Reported per
configuration:
  startup_s      process start -> end of the first step (imports, build, trace, first step)
  step_s_median  median wall time of the steps after the first (warm-up) one
  peak_rss_gb    peak resident memory of the process (ru_maxrss)
  forward_macs   multiply-adds of one forward pass per example (darts_tf.count_multiply_adds
                 on the supernet's graph: convolutions and matmuls)
  step_gflop     floating-point work of one step, estimated as passes x 3 (forward +
                 backward) x 2 x forward_macs x batch, with 2 forward/backward passes for
                 first order and 5 for second order (virtual step, L_val at w', L_train at
                 w+ and w-, weight step)
  gflops         step_gflop / step_s_median
and once per run the rate of a 4096x4096 float32 matmul (the machine's sustained peak
in TensorFlow) to compare with.
"""
from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ORDERS = {"first_order": {"unrolled": False},
          "second_order_fd": {"unrolled": True, "hessian": "finite_difference"},
          "second_order_exact": {"unrolled": True, "hessian": "exact"}}


def run_one(order: str, batch: int, steps: int) -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import darts_tf  # pylint: disable=import-outside-toplevel
    from trainers import search  # pylint: disable=import-outside-toplevel
    from trainers.config import SearchConfig  # pylint: disable=import-outside-toplevel

    config = SearchConfig(batch_size=batch, **ORDERS[order])
    trainer = search.SearchTrainer(lambda: darts_tf.Supernet(num_classes=10), config,
                                   input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)

    def batch_pair():
        def one():
            return (tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)),
                    tf.constant(rng.integers(0, 10, size=batch).astype(np.int32)))
        return one(), one()

    macs = darts_tf.count_multiply_adds(darts_tf.Supernet(num_classes=10), (32, 32, 3))["total"]
    passes = 5 if config.unrolled else 2
    gflop = passes * 3 * 2 * macs * batch / 1e9
    times = []
    for _ in range(steps):
        train, val = batch_pair()
        start = time.time()
        metrics = trainer.step(train, val)
        float(metrics["loss"])  # wait for the step
        times.append(time.time() - start)
        if len(times) == 1:
            startup = time.time() - T0
    return {"config": "C=16 cells=8 nodes=4 32x32x3", "order": order, "batch": batch,
            "startup_s": round(startup, 1), "first_step_s": round(times[0], 1),
            "step_s_median": round(float(np.median(times[1:])), 2) if len(times) > 1 else None,
            "steps_timed": len(times) - 1,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "step_traces": trainer.step_traces, "forward_macs": macs,
            "step_gflop": round(gflop, 1),
            "gflops": round(gflop / float(np.median(times[1:])), 1) if len(times) > 1 else None}


def matmul_gflops(n: int = 4096, repeats: int = 10) -> float:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    a = tf.random.normal((n, n))
    f = tf.function(lambda x: tf.matmul(x, x))
    f(a).numpy()
    start = time.time()
    for _ in range(repeats):
        out = f(a)
    out.numpy()
    return 2 * n ** 3 * repeats / (time.time() - start) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 16 only")
    parser.add_argument("--one", help="order,batch: run one configuration in this process")
    parser.add_argument("--steps", type=int, default=4, help="steps per configuration")
    parser.add_argument("--output", help="append the JSON lines to this file")
    args = parser.parse_args()
    if args.one:
        order, batch = args.one.split(",")
        print(json.dumps(run_one(order, int(batch), args.steps)), flush=True)
        return
    line = json.dumps({"matmul_4096_gflops": round(matmul_gflops(), 1)})
    print(line, flush=True)
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    batches = (16,) if args.quick else (16, 64)
    for batch in batches:
        for order in ORDERS:
            out = subprocess.run([sys.executable, __file__, f"--one={order},{batch}",
                                  f"--steps={args.steps}"], capture_output=True, text=True,
                                 check=False)
            line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else json.dumps(
                {"order": order, "batch": batch, "error": out.stderr[-500:]})
            print(line, flush=True)
            if args.output:
                with open(args.output, "a", encoding="utf-8") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    main()
