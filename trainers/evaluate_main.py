r"""darts-evaluate: accuracy, parameters and latency of an exported SavedModel.

    darts-evaluate --saved_model=/tmp/retrain_digits/saved_model --dataset=digits

Prints one JSON line (and writes it to --output if given). Loads the model with
plain `tf.saved_model.load`: darts_tf is not needed.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import json
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "SavedModel directory (darts-retrain's saved_model/).")
flags.DEFINE_string("dataset", "digits", "Data set (trainers/data.py names).")
flags.DEFINE_string("split", "test", "Split to evaluate ('test' is ImageNet's validation).")
flags.DEFINE_integer("batch_size", 256, "Batch size, also the batch timed for latency.",
                     lower_bound=1)
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_integer("limit", None, "Evaluate only the first N examples.", lower_bound=1)
flags.DEFINE_integer("timed_batches", 5, "Calls timed for the median latency.", lower_bound=1)
flags.DEFINE_string("output", None, "Also write the JSON result to this file.")
flags.mark_flag_as_required("saved_model")


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from trainers import data, evaluate  # pylint: disable=import-outside-toplevel (TensorFlow)

    try:
        result = evaluate.evaluate_saved_model(
            FLAGS.saved_model, FLAGS.dataset, FLAGS.split, FLAGS.batch_size, FLAGS.data_dir,
            limit=FLAGS.limit, timed_batches=FLAGS.timed_batches)
    except (data.DataError, OSError, ValueError) as err:
        print(f"darts-evaluate: {err}", file=sys.stderr)
        return 2
    line = json.dumps(result, sort_keys=True)
    print(line)
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
