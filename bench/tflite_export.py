"""Size on disk and per-image latency of exported models: SavedModel and LiteRT float32 /
dynamic-range / int8, for the digits result and NetworkCIFAR / NetworkImageNet (DARTS_V2).

    python bench/tflite_export.py --digits_saved_model=runs/digits/retrain/saved_model
    python bench/tflite_export.py --workdir=/tmp/bench_tflite     # retrains digits first

Digits: the preset retraining of DARTS_V2 (`configs/retrain.py` digits, ~100 s) unless a
SavedModel is given; accuracy on the 360 test images for every format (int8 calibrated on
200 training images). NetworkCIFAR (C=36, 20 cells, 32x32x3) and NetworkImageNet (C=48,
14 cells, 224x224x3, 1000 classes) are untrained (sizes and latencies do not depend on
the weights; int8 calibrated on 16 random images). Latency: the median of --calls calls
on one image after a warm-up, in this process (LiteRT: its default threads). Prints one
JSON line per model and format, then a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import darts_tf  # noqa: E402,F401  (before TensorFlow: it sets its oneDNN default)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import proc_clock  # noqa: E402  pylint: disable=wrong-import-position


def _untrained(network: str, workdir: Path) -> Path:
    """An untrained NetworkCIFAR / NetworkImageNet of DARTS_V2 exported as darts-retrain does."""
    from darts_tf import NetworkCIFAR, NetworkImageNet, genotypes
    from trainers import data
    from trainers.deploy.export import export_model

    if network == "cifar":
        model = NetworkCIFAR(genotypes.DARTS_V2, num_classes=10, init_channels=36,
                             num_cells=20, auxiliary=False)
        spec = data.get_spec("cifar10")
    else:
        model = NetworkImageNet(genotypes.DARTS_V2, num_classes=1000, init_channels=48,
                                num_cells=14, auxiliary=False)
        spec = data.get_spec("imagenet2012")
    model(tf.zeros((1, *spec.image_shape)), training=False)
    workdir.mkdir(parents=True, exist_ok=True)
    export_model(model, spec, workdir)
    return workdir / "saved_model"


def _measure(name, saved_model, workdir, calls, evaluate_on=None, random_shape=None):
    from trainers.deploy import evaluate, tflite

    rows = []
    spec = tflite.model_spec(saved_model)
    loaded = tf.saved_model.load(str(saved_model))
    serve = evaluate.serving_fn(loaded)
    one = tf.zeros((1, *spec.image_shape))
    row = {"model": name, "format": "SavedModel float32",
           "size_bytes": evaluate.size_on_disk(saved_model),
           "latency_ms_per_image": proc_clock.median_ms(lambda: serve(one), calls)}
    if evaluate_on:
        row["top1"] = evaluate.evaluate_saved_model(str(saved_model), evaluate_on)["top1"]
    rows.append(row)
    rng = np.random.default_rng(0)
    random_images = (lambda: (rng.integers(0, 256, (1, *spec.image_shape), dtype=np.uint8)
                              for _ in range(16))) if random_shape else None
    for quantize in ("none", "dynamic", "int8"):
        output = workdir / f"{name}_{quantize}.tflite"
        start = time.perf_counter()
        tflite.export_tflite(saved_model, output, quantize, representative_data=random_images)
        seconds = time.perf_counter() - start
        model = tflite.LiteRTModel(output)
        image = np.zeros((1, *spec.image_shape), np.uint8)
        row = {"model": name, "format": f"LiteRT {quantize if quantize != 'none' else 'float32'}",
               "size_bytes": output.stat().st_size, "convert_s": round(seconds, 1),
               "latency_ms_per_image": proc_clock.median_ms(lambda: model(image), calls)}
        if evaluate_on:
            row["top1"] = evaluate.evaluate_tflite(str(output), evaluate_on)["top1"]
        rows.append(row)
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/bench_tflite")
    parser.add_argument("--digits_saved_model", default=None)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--skip", default="", help="comma-separated: digits,cifar,imagenet")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                      "machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "tensorflow": tf.__version__,
                      "uptime_before": subprocess.run(["uptime"], capture_output=True,
                                                      text=True).stdout.strip()}), flush=True)
    skip = set(filter(None, args.skip.split(",")))
    rows = []
    if "digits" not in skip:
        saved_model = args.digits_saved_model
        if saved_model is None:
            from configs import retrain as presets
            from trainers import retrain

            retrain.run(presets.digits(), str(workdir / "digits"))
            saved_model = workdir / "digits" / "saved_model"
        rows += _measure("digits", Path(saved_model), workdir, args.calls, evaluate_on="digits")
    for network in ("cifar", "imagenet"):
        if network not in skip:
            saved_model = _untrained(network, workdir / network)
            rows += _measure(f"Network{'CIFAR' if network == 'cifar' else 'ImageNet'}",
                             saved_model, workdir, args.calls, random_shape=True)
    print(json.dumps({"uptime_after": subprocess.run(["uptime"], capture_output=True,
                                                     text=True).stdout.strip()}), flush=True)
    print("\n| model | format | size | latency per image | top-1 |\n|---|---|---|---|---|")
    for row in rows:
        top1 = f"{100 * row['top1']:.1f}%" if "top1" in row else ""
        print(f"| {row['model']} | {row['format']} | {row['size_bytes'] / 1e6:.2f} MB | "
              f"{row['latency_ms_per_image']:.2f} ms | {top1} |")


if __name__ == "__main__":
    main()
