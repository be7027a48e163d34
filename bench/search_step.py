r"""Search-step benchmark: start-up, time per step and peak memory, one configuration per process.

    python bench/search_step.py                      # every configuration, one JSON line each
    python bench/search_step.py --quick              # batch 16 only
    python bench/search_step.py --one=first_order,16 # one configuration in this process
    python bench/search_step.py --tiny               # the tests' tiny supernet (start-up)
    python bench/search_step.py --plan=first_order,64,darts first_order,256,pc_darts --rounds=2
                                                     # given configurations, alternated
    python bench/search_step.py --interleave first_order,64,darts first_order,256,pc_darts \
        --steps=8                                    # two configurations in one process,
                                                     # step by step: their time ratio

Configuration: the reference search network (C=16, 8 cells, 4 nodes, 32x32x3
inputs, 10 classes), random data, the full search step of trainers/search/trainer.py
(architecture step on a validation batch, then weight step). Reported per
configuration:
  startup_s      process start (the kernel's, /proc) -> end of the first step (interpreter,
                 imports, build, trace, graph optimisation, first step); without the step
                 cache unless DARTS_TF_STEP_CACHE=DIR is set (then step_loads says whether
                 the step was loaded from DIR instead of traced)
  step_s_median  median wall time of the steps after the first (warm-up) one
  peak_rss_gb    peak resident memory of the process (ru_maxrss)
  allocator_peak_gb  the largest peak of TensorFlow's CPU allocator in a step after the
                 first: the step's tensors alone, without the graphs, the code and the
                 allocator's cached free memory that RSS also counts (None where the
                 build keeps no statistics)
  forward_macs   multiply-adds of one forward pass per example (darts_tf.count_multiply_adds
                 on the supernet's graph: convolutions and matmuls)
  step_gflop     floating-point work of one step, counted on the traced step's graph
                 (bench/graph_flops.py: the executed ops, TensorFlow's flops statistics)
  gflops         step_gflop / step_s_median
and once per run the rate of a 4096x4096 float32 matmul (the machine's sustained peak
in TensorFlow) to compare with.

--interleave A B: both trainers in one process, one warm-up step each, then A, B, A, B,
... `--steps` times each. Printed: each one's step times and median, and the median of
B / A over the pairs. On a shared machine the time per step drifts by 20-30% between
processes and over minutes; a pair of steps next to each other sees the same machine, so
the ratio is far steadier than one of medians taken in separate processes. Memory is
not reported (one process holds both): take it from --plan.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Start-up without the step cache (every process traces) unless the caller names one:
# DARTS_TF_STEP_CACHE=DIR times a warm start (trainers/runtime/step_cache.py).
os.environ.setdefault("DARTS_TF_STEP_CACHE", "off")
# The repository's root, so that darts_tf, trainers and configs import without installing.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import darts_tf  # noqa: E402,F401  (before TensorFlow: it sets its oneDNN default)
from trainers.runtime.startup import import_tensorflow  # noqa: E402  pylint: disable=wrong-import-position

ORDERS = {"first_order": {"unrolled": False},
          "second_order_fd": {"unrolled": True, "hessian": "finite_difference"},
          "second_order_exact": {"unrolled": True, "hessian": "exact"}}


# Search methods and guards (issue 12): SearchConfig fields on top of the order's.
METHODS = {"darts": {},
           # PC-DARTS as its CIFAR preset (configs/search.py): K=4, edge normalisation, the
           # first two cells recomputed in the backward pass; and without the recomputation.
           "pc_darts": {"method": "pc_darts", "partial_channels": 4, "edge_normalization": True,
                        "recompute_cells": 2},
           "pc_darts_rc0": {"method": "pc_darts", "partial_channels": 4,
                            "edge_normalization": True},
           "pc_darts_rc1": {"method": "pc_darts", "partial_channels": 4,
                            "edge_normalization": True, "recompute_cells": 1},
           "darts_minus": {"method": "darts_minus"},
           "sdarts": {"sdarts_epsilon": 0.3},
           # Not a method: DARTS with bfloat16 compute (issue 15: AVX512_BF16 / AMX CPUs).
           "bf16": {"mixed_precision": "mixed_bfloat16"}}


def _models(darts_tf, options=None):
    """name -> (model_fn, input shape, description); `options`: Supernet method options."""
    options = options or {}
    return {
        "reference": (lambda: darts_tf.Supernet(num_classes=10, **options), (32, 32, 3),
                      "C=16 cells=8 nodes=4 32x32x3"),
        # tests/test_search.py's tiny_supernet: what the test suite searches.
        "tiny": (lambda: darts_tf.Supernet(
            num_classes=10, init_channels=4, num_cells=3, num_nodes=1, input_channels=1,
            primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"), **options),
            (8, 8, 1),
            "tests' tiny supernet: C=4 cells=3 nodes=1 4 ops 8x8x1"),
    }


def build_trainer(order: str, batch: int, method: str = "darts", model: str = "reference"):
    """(trainer, input shape, description, model_fn): the benchmark's search trainer for one
    configuration (bench/compare_reference.py times the same one)."""
    import_tensorflow()  # before trainers.search imports it
    import darts_tf  # pylint: disable=import-outside-toplevel
    from trainers import search  # pylint: disable=import-outside-toplevel
    from configs import SearchConfig  # pylint: disable=import-outside-toplevel

    config = SearchConfig(batch_size=batch, **ORDERS[order], **METHODS[method])
    model_fn, shape, description = _models(darts_tf, config.supernet_options())[model]
    trainer = search.SearchTrainer(model_fn, config, input_shape=shape)
    return trainer, shape, description, model_fn


def run_one(order: str, batch: int, steps: int, model: str = "reference",
            method: str = "darts") -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

    import darts_tf  # pylint: disable=import-outside-toplevel

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import graph_flops  # pylint: disable=import-outside-toplevel
    import proc_clock  # pylint: disable=import-outside-toplevel

    trainer, shape, description, model_fn = build_trainer(order, batch, method, model)
    rng = np.random.default_rng(0)

    def batch_pair():
        return _batch_pair(rng, batch, shape)

    times, allocator_peaks = [], []
    for _ in range(steps):
        train, val = batch_pair()
        if times:
            _reset_allocator_peak(tf)
        start = time.time()
        metrics = trainer.step(train, val)
        float(metrics["loss"])  # wait for the step
        times.append(time.time() - start)
        if len(times) == 1:
            startup = proc_clock.process_age_s()
        else:
            allocator_peaks.append(_allocator_peak_gb(tf))
    peak_rss_gb = proc_clock.peak_rss_gb()
    # Counted after the timing and the memory (it retraces nothing: the graph is cached).
    train, val = batch_pair()
    step_fn = trainer._steps["full"]  # pylint: disable=protected-access  (the traced step)
    flops, _ = graph_flops.count_flops(step_fn.get_concrete_function(train, val))
    gflop = flops / 1e9
    macs = darts_tf.count_multiply_adds(model_fn(), shape)["total"]
    return {"config": description, "order": order, "batch": batch, "method": method,
            "startup_s": round(startup, 1), "first_step_s": round(times[0], 1),
            "step_s_median": round(float(np.median(times[1:])), 2) if len(times) > 1 else None,
            "steps_timed": len(times) - 1, "step_s": [round(t, 2) for t in times[1:]],
            "peak_rss_gb": round(peak_rss_gb, 2),
            "allocator_peak_gb": (max(allocator_peaks) if allocator_peaks
                                  and None not in allocator_peaks else None),
            "step_traces": trainer.step_traces, "step_loads": trainer.step_loads,
            "forward_macs": macs,
            "step_gflop": float(f"{gflop:.4g}"),
            "gflops": float(f"{gflop / float(np.median(times[1:])):.4g}") if len(times) > 1 else None}


def interleave(specs, steps: int) -> dict:
    """Two configurations' steps alternated in one process (see the module's docstring)."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    import proc_clock  # pylint: disable=import-outside-toplevel  (beside this script)

    rng = np.random.default_rng(0)
    runs = []
    for spec in specs:
        order, batch, *method = spec.split(",")
        trainer, shape, _, _ = build_trainer(order, int(batch), (method or ["darts"])[0])

        def batch_pair(batch=int(batch), shape=shape):
            return _batch_pair(rng, batch, shape)

        float(trainer.step(*batch_pair())["loss"])  # trace and warm up
        runs.append((trainer, batch_pair, []))
    for _ in range(steps):
        for trainer, batch_pair, times in runs:
            train, val = batch_pair()
            start, cpu = time.time(), time.process_time()
            float(trainer.step(train, val)["loss"])
            times.append((time.time() - start, time.process_time() - cpu))
    (_, _, a), (_, _, b) = runs
    ratios = [y[0] / x[0] for x, y in zip(a, b)]
    cpu_ratios = [y[1] / x[1] for x, y in zip(a, b)]
    return {"interleaved": list(specs), "step_s": [[round(t, 2) for t, _ in a],
                                                   [round(t, 2) for t, _ in b]],
            "step_s_median": [round(float(np.median([t for t, _ in run])), 2)
                              for run in (a, b)],
            "ratio_median": round(float(np.median(ratios)), 3),
            "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            # CPU seconds of the process per step (both cores): what the step costs without
            # the time it waited for a core.
            "cpu_s_median": [round(float(np.median([c for _, c in run])), 2) for run in (a, b)],
            "cpu_ratio_median": round(float(np.median(cpu_ratios)), 3),
            "machine": proc_clock.cpu_model(), "load": round(os.getloadavg()[0], 2)}


def _batch_pair(rng, batch: int, shape):
    """A (train, validation) pair of random batches: images of `shape`, labels of 10 classes."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

    def one():
        return (tf.constant(rng.normal(size=(batch, *shape)).astype(np.float32)),
                tf.constant(rng.integers(0, 10, size=batch).astype(np.int32)))
    return one(), one()


def _reset_allocator_peak(tf):
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except (ValueError, tf.errors.OpError):  # a build whose CPU allocator keeps no statistics
        pass


def _allocator_peak_gb(tf):
    """TensorFlow's CPU allocator's peak since the last reset (GB): the tensors' memory alone."""
    try:
        return round(tf.config.experimental.get_memory_info("CPU:0")["peak"] / 1e9, 3)
    except (ValueError, KeyError, tf.errors.OpError):
        return None


def matmul_gflops(n: int = 4096, repeats: int = 10) -> float:
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

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
    parser.add_argument("--one", help="order,batch[,model[,method]]: one configuration in this "
                        "process (model: reference or tiny; method: " + ", ".join(METHODS) + ")")
    parser.add_argument("--plan", nargs="+", help="order,batch[,method] configurations of the "
                        "reference network, each in its own process, alternated --rounds times")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --plan")
    parser.add_argument("--tiny", action="store_true",
                        help="the tests' tiny supernet at batch 8 (start-up of a test search)")
    parser.add_argument("--steps", type=int, default=4, help="steps per configuration")
    parser.add_argument("--output", help="append the JSON lines to this file")
    parser.add_argument("--interleave", nargs=2, metavar=("A", "B"),
                        help="order,batch[,method] x 2: alternated step by step in this process")
    args = parser.parse_args()
    if args.interleave:
        print(json.dumps(interleave(args.interleave, args.steps)), flush=True)
        return
    if args.one:
        order, batch, *rest = args.one.split(",")
        print(json.dumps(run_one(order, int(batch), args.steps, *rest)), flush=True)
        return
    line = json.dumps({"matmul_4096_gflops": round(matmul_gflops(), 1)})
    print(line, flush=True)
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    batches = (16,) if args.quick else (16, 64)
    runs = [(order, batch, "reference", "darts") for batch in batches for order in ORDERS]
    if args.tiny:
        runs = [(order, 8, "tiny", "darts") for order in ORDERS]
    if args.plan:
        runs = []
        for _ in range(args.rounds):
            for spec in args.plan:
                order, batch, *method = spec.split(",")
                runs.append((order, batch, "reference", *(method or ["darts"])))
    for order, batch, model, method in runs:
        load = os.getloadavg()[0]
        out = subprocess.run([sys.executable, __file__, f"--one={order},{batch},{model},{method}",
                              f"--steps={args.steps}"], capture_output=True, text=True,
                             check=False)
        if out.returncode == 0:
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result.update(load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
            out.stdout = json.dumps(result)
        line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else json.dumps(
            {"order": order, "batch": batch, "error": out.stderr[-500:]})
        print(line, flush=True)
        if args.output:
            with open(args.output, "a", encoding="utf-8") as f:
                f.write(line + "\n")

if __name__ == "__main__":
    main()
