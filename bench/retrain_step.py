r"""Retraining benchmark: images per second and exported-model latency.

    python bench/retrain_step.py [--steps=6] [--batch=96] [--recompute]

NetworkCIFAR(DARTS_V2, C=36, 20 cells, auxiliary head, drop path 0.2) trained by
trainers/retrain/trainer.py's step (SGD, auxiliary loss, drop path) on random 32x32x3
batches of 96 (the reference recipe); then the model is exported with
`model.export()` and the SavedModel's latency measured with plain
`tf.saved_model.load` at batch 1 and 96 (--no-export: the step only). One JSON line:
start-up (process start to the end of the first step), the median step, peak RSS
during training (train_peak_rss_gb) and in all (peak_rss_gb). --recompute: the network's
separable and dilated convs recompute their activations in the backward pass (less memory,
more time; `RetrainConfig.recompute`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Without the step cache unless the caller names one (DARTS_TF_STEP_CACHE=DIR: a warm start).
os.environ.setdefault("DARTS_TF_STEP_CACHE", "off")
# The repository's root, so that darts_tf, trainers and configs import without installing.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import darts_tf  # noqa: E402,F401  (before TensorFlow: it sets its oneDNN default)
from trainers.runtime.startup import import_tensorflow  # noqa: E402  pylint: disable=wrong-import-position


def build_trainer(batch: int, graph_optimization: str = "auto", recompute: bool = False):
    """The benchmark's retraining trainer (NetworkCIFAR DARTS_V2, the paper's recipe),
    with drop path at half its final rate, as mid-run (bench/compare_reference.py times
    the same one)."""
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

    import darts_tf  # pylint: disable=import-outside-toplevel
    from trainers import retrain  # pylint: disable=import-outside-toplevel
    from configs import RetrainConfig  # pylint: disable=import-outside-toplevel

    config = RetrainConfig(batch_size=batch, graph_optimization=graph_optimization,
                           recompute=recompute)
    trainer = retrain.RetrainTrainer(
        lambda: darts_tf.NetworkCIFAR(darts_tf.genotypes.DARTS_V2, recompute=recompute), config,
        tf.distribute.get_strategy(), input_shape=(32, 32, 3), num_classes=10)
    trainer.set_epoch(300)
    return trainer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--graph_optimization", default="auto", help="auto | fast | full")
    parser.add_argument("--recompute", action="store_true",
                        help="the convs recompute their activations in the backward pass")
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                        help="export and time the SavedModel (--no-export: the step only, "
                        "as bench/compare_reference.py compares it)")
    args = parser.parse_args()

    import numpy as np  # pylint: disable=import-outside-toplevel
    tf = import_tensorflow()  # as the CLI: without Keras' sklearn and pyplot extras

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import proc_clock  # pylint: disable=import-outside-toplevel

    trainer = build_trainer(args.batch, args.graph_optimization, args.recompute)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(args.steps):
        batch = (tf.constant(rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32)),
                 tf.constant(rng.integers(0, 10, size=args.batch).astype(np.int32)))
        start = time.time()
        float(trainer.train_step(batch)["loss"])
        times.append(time.time() - start)
        if len(times) == 1:
            startup = proc_clock.process_age_s()
    step = float(np.median(times[1:]))
    train_rss_gb = proc_clock.peak_rss_gb()
    latency = {}
    if args.export:
        with tempfile.TemporaryDirectory() as tmp:
            trainer.model.export(os.path.join(tmp, "saved"), verbose=False)
            served = tf.saved_model.load(os.path.join(tmp, "saved"))
            for batch in (1, args.batch):
                x = tf.constant(rng.normal(size=(batch, 32, 32, 3)).astype(np.float32))
                served.serve(x).numpy()
                runs = []
                for _ in range(5):
                    start = time.time()
                    served.serve(x).numpy()
                    runs.append(time.time() - start)
                latency[f"latency_ms_batch_{batch}"] = round(1000 * float(np.median(runs)), 1)
    print(json.dumps({"model": "NetworkCIFAR DARTS_V2 C=36 cells=20 aux drop_path",
                      "batch": args.batch, "recompute": args.recompute, "startup_s": round(startup, 2),
                      "first_step_s": round(times[0], 1), "step_s_median": round(step, 2),
                      "step_loads": trainer.step_loads,
                      "images_per_s": round(args.batch / step, 1), **latency,
                      "total_s": round(proc_clock.process_age_s(), 1),
                      "train_peak_rss_gb": round(train_rss_gb, 2),
                      "peak_rss_gb": round(proc_clock.peak_rss_gb(), 2)}))

if __name__ == "__main__":
    main()
