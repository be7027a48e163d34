r"""The collapse monitor's cost per search epoch, as a fraction of the epoch.

    python bench/monitor_cost.py                  # reference configuration, batch 64
    python bench/monitor_cost.py --batch=16 --steps=3 --chunk=16 --iterations=2
    python bench/monitor_cost.py --digits         # a whole digits-preset search, monitor on

Reference mode: the reference search network (C=16, 8 cells, 4 nodes, 32x32x3, 10
classes), random data, first order. It times `--steps` search steps (after one warm-up
step), then the monitor on a fixed batch of the same size: the first measurement (which
traces the Hessian-vector product) and a second one (`monitor_iterations` products,
what every later epoch pays). An epoch of the reference search is 25,000 / batch steps
(391 at batch 64), so

    fraction = monitor_s / (steps_per_epoch * step_s + monitor_s)

Digits mode runs `trainers.search.run(configs.search.digits(), tmpdir)` and sums the
`monitor_seconds` of each epoch_N.json against the run's wall time.

Prints one JSON line, with `uptime` before and after (the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import darts_tf  # noqa: E402,F401  (before TensorFlow: it sets its oneDNN default)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def reference(batch: int, steps: int, iterations: int, chunk: int) -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    import darts_tf  # pylint: disable=import-outside-toplevel
    from configs import SearchConfig  # pylint: disable=import-outside-toplevel
    from trainers import search  # pylint: disable=import-outside-toplevel
    from trainers.search.monitor import CollapseMonitor  # pylint: disable=import-outside-toplevel

    config = SearchConfig(batch_size=batch, monitor_iterations=iterations, monitor_chunk=chunk)
    trainer = search.SearchTrainer(lambda: darts_tf.Supernet(num_classes=10), config,
                                   input_shape=(32, 32, 3))
    rng = np.random.default_rng(0)

    def one():
        return (tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)),
                tf.constant(rng.integers(0, 10, size=batch).astype(np.int32)))

    times = []
    for _ in range(steps + 1):
        train, val = one(), one()
        start = time.time()
        float(trainer.step(train, val)["loss"])
        times.append(time.time() - start)
    step_s = float(np.median(times[1:]))
    rss_steps = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    monitor = CollapseMonitor(trainer, one())
    _, first_s = monitor.measure()
    values, monitor_s = monitor.measure()
    steps_per_epoch = -(-25000 // batch)
    epoch_s = steps_per_epoch * step_s
    return {"mode": "reference C=16 cells=8 nodes=4 32x32x3 first order", "batch": batch,
            "monitor_iterations": iterations, "monitor_chunk": chunk, "step_s_median": round(step_s, 3),
            "steps_timed": steps, "steps_per_epoch": steps_per_epoch,
            "monitor_first_s (trace + products)": round(first_s, 2),
            "monitor_s": round(monitor_s, 2), "per_product_s": round(monitor_s / iterations, 3),
            "fraction_of_epoch": round(monitor_s / (epoch_s + monitor_s), 4),
            "fraction_of_epoch_at_10_iterations": round(
                monitor_s * 10 / iterations / (epoch_s + monitor_s * 10 / iterations), 4),
            "fraction_first_epoch": round(first_s / (epoch_s + first_s), 4),
            "peak_rss_gb_after_steps": round(rss_steps, 2),
            "peak_rss_gb_after_monitor": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "values": values}


def digits() -> dict:
    from configs import search as search_configs  # pylint: disable=import-outside-toplevel
    from trainers import search  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryDirectory() as workdir:
        start = time.time()
        result = search.run(search_configs.digits(), workdir)
        wall = time.time() - start
        records = [json.load(open(os.path.join(workdir, f"epoch_{e}.json")))
                   for e in range(len(result.history))]
    seconds = [r["monitor_seconds"] for r in records]
    return {"mode": "digits preset (C=8, 5 cells, batch 64, 11 steps/epoch, 15 epochs)",
            "wall_s": round(wall, 1), "monitor_s_total": round(sum(seconds), 2),
            "monitor_s_first_epoch": round(seconds[0], 2),
            "monitor_s_later_median": round(sorted(seconds[1:])[len(seconds[1:]) // 2], 3),
            "fraction_of_run": round(sum(seconds) / wall, 4),
            "eigenvalues": [round(h["hessian_eigenvalue"], 4) for h in result.history],
            "skip_connect_normal": [h.get("skip_connect_normal") for h in result.history]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--digits", action="store_true")
    args = parser.parse_args()
    before = _uptime()
    result = digits() if args.digits else reference(args.batch, args.steps, args.iterations, args.chunk)
    print(json.dumps({**result, "uptime_before": before, "uptime_after": _uptime()}))


if __name__ == "__main__":
    main()
