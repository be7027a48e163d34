r"""darts-pipeline: search -> retrain -> export -> evaluate, one command.

    darts-pipeline --config=digits --workdir=runs/digits

Runs the search preset `--config` into WORKDIR/search, retrains the genotype it
found with the retrain preset of the same name into WORKDIR/retrain (which also
writes model.keras and the SavedModel WORKDIR/retrain/saved_model), evaluates the
SavedModel on the test split with plain `tf.saved_model.load`, and writes
WORKDIR/summary.json. Each stage resumes from its checkpoints when the command
is run again. Stage-specific fields are set with --search_set / --retrain_set:

    darts-pipeline --config=digits --workdir=DIR --search_set=epochs=5,unrolled=true \
        --retrain_set=epochs=10
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import dataclasses
import json
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from configs import retrain as retrain_presets
from configs import search as search_presets
from trainers import cli
from trainers.config import ConfigError, SearchConfig
from trainers.retrain_config import RetrainConfig

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "digits", sorted(set(search_presets.PRESETS) & set(retrain_presets.PRESETS)),
                  "Preset for both stages.")
flags.DEFINE_string("workdir", None, "Output directory (each stage resumes from it).")
flags.DEFINE_list("search_set", [], "field=value overrides of the search config.")
flags.DEFINE_list("retrain_set", [], "field=value overrides of the retrain config.")
flags.DEFINE_string("data_dir", None, "tfds data directory for both stages (tfds data sets).")
flags.mark_flag_as_required("workdir")


def _overrides(config_cls, items):
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"Expected field=value, received {item!r}.")
        out[name.strip()] = cli.parse_field(config_cls, name.strip(), value)
    return out


def run(config_name: str, workdir: str, search_set=(), retrain_set=(), data_dir=None) -> dict:
    """The pipeline as a function; returns the summary written to WORKDIR/summary.json."""
    from trainers import evaluate, retrain, search  # pylint: disable=import-outside-toplevel

    workdir = Path(workdir)
    start = time.time()
    search_config = dataclasses.replace(search_presets.get(config_name),
                                        **_overrides(SearchConfig, search_set))
    retrain_config = retrain_presets.get(config_name)
    common = {"data_dir": data_dir} if data_dir else {}
    search_config = dataclasses.replace(search_config, **common)
    print(f"[1/3] search ({config_name}) -> {workdir / 'search'}", flush=True)
    found = search.run(search_config, str(workdir / "search"))
    retrain_config = dataclasses.replace(
        retrain_config, genotype=str(workdir / "search" / "genotype.json"), **common,
        **_overrides(RetrainConfig, retrain_set))
    print(f"[2/3] retrain -> {workdir / 'retrain'}", flush=True)
    trained = retrain.run(retrain_config, str(workdir / "retrain"))
    print("[3/3] evaluate the exported SavedModel", flush=True)
    evaluated = evaluate.evaluate_saved_model(
        str(workdir / "retrain" / "saved_model"), dataset=retrain_config.dataset,
        data_dir=retrain_config.data_dir)
    summary = {"config": config_name, "genotype": found.architecture,
               "search_final_metrics": found.history[-1] if found.history else None,
               "retrain_final_metrics": trained.final_metrics, "evaluation": evaluated,
               "wall_time_s": round(time.time() - start, 1)}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        summary = run(FLAGS.config, FLAGS.workdir, FLAGS.search_set, FLAGS.retrain_set,
                      FLAGS.data_dir)
    except (ConfigError, FloatingPointError) as err:
        print(f"darts-pipeline: {err}", file=sys.stderr)
        return 2
    ev = summary["evaluation"]
    print(json.dumps({"workdir": FLAGS.workdir, "top1": ev.get("top1"), "top5": ev.get("top5"),
                      "wall_time_s": summary["wall_time_s"]}))
    return 0


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
