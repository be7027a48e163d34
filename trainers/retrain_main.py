r"""darts-retrain: train a genotype from scratch, export it, report test accuracy.

    darts-retrain --genotype=DARTS_V2 --config=digits --workdir=runs/digits-retrain
    darts-retrain --genotype=runs/search/genotype.json --config=cifar10 --workdir=DIR \
        --data_dir=~/tensorflow_datasets --strategy=mirrored

--config picks a preset (configs/retrain.py); every RetrainConfig field has a
flag of the same name that overrides it (optional fields accept "none"), and
--genotype takes anything `darts_tf.load_genotype` reads (a name, our JSON, an
NNI epoch JSON, the reference's Genotype(...) text). Running the same command
again resumes from the work directory's checkpoints. Writes config.json,
genotype.json, metrics.jsonl, tensorboard/, checkpoints/, model.keras,
saved_model/ and final_metrics.json; prints final_metrics as one JSON line.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import json
import sys

from absl import app, flags, logging

from configs import retrain as presets
from trainers import cli
from trainers.config import ConfigError
from trainers.retrain_config import RetrainConfig

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "cifar10", sorted(presets.PRESETS), "Preset to start from.")
flags.DEFINE_string("workdir", None, "Output directory (resumed if it holds a checkpoint).")
flags.mark_flag_as_required("workdir")
cli.define_field_flags(RetrainConfig)


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the progress lines
        logging.set_verbosity(logging.WARNING)
    try:  # refused before TensorFlow is imported
        config = cli.config_from_flags(RetrainConfig, presets.get(FLAGS.config))
    except ConfigError as err:
        print(f"darts-retrain: {err}", file=sys.stderr)
        return 2
    from trainers import retrain  # pylint: disable=import-outside-toplevel  (TF import is slow)

    try:
        result = retrain.run(config, FLAGS.workdir)
    except (ConfigError, retrain.RetrainDivergedError) as err:
        print(f"darts-retrain: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.final_metrics, sort_keys=True))
    return 0


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
