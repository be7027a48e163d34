r"""darts-search: run (or resume) a DARTS search.

    darts-search --config=digits --workdir=runs/digits-search
    darts-search --config=cifar10 --workdir=DIR --data_dir=~/tensorflow_datasets \
        --unrolled=true --hessian=exact --strategy=mirrored

--config picks a preset (configs/search.py); every SearchConfig field has a flag
of the same name that overrides it (optional fields accept "none"). Running the
same command again resumes from the work directory's checkpoints. Writes
config.json, epoch_{N}.json, alphas.jsonl, genotype.json, tensorboard/ and
cells.png into the work directory.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import json
import sys

from absl import app, flags, logging

from configs import search as presets
from trainers import cli
from trainers.config import ConfigError, SearchConfig

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "digits", sorted(presets.PRESETS), "Preset to start from.")
flags.DEFINE_string("workdir", None, "Output directory (resumed if it holds a checkpoint).")
flags.mark_flag_as_required("workdir")
cli.define_field_flags(SearchConfig)


def _main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the progress lines
        logging.set_verbosity(logging.WARNING)
    from trainers import search  # pylint: disable=import-outside-toplevel  (TF import is slow)

    try:
        config = cli.config_from_flags(SearchConfig, presets.get(FLAGS.config))
        result = search.run(config, FLAGS.workdir)
    except (ConfigError, search.SearchDivergedError) as err:
        print(f"darts-search: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"workdir": FLAGS.workdir, "genotype": result.architecture}))
    return 0


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
