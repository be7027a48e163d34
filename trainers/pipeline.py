"""The main job as a library function: search -> retrain -> export -> evaluate.

    from trainers.pipeline import run_pipeline
    summary = run_pipeline("digits", "runs/digits", search_overrides={"epochs": 5})

Runs the search preset `config_name` into WORKDIR/search, retrains the genotype it
found with the retrain preset of the same name into WORKDIR/retrain (which also
writes model.keras and the SavedModel WORKDIR/retrain/saved_model), evaluates the
SavedModel on the test split with plain `tf.saved_model.load`, and writes
WORKDIR/summary.json. Each stage resumes from its checkpoints when run again.
`darts-pipeline` (trainers/cli.py) is its command line.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from configs import ConfigError, retrain as retrain_presets, search as search_presets

logger = logging.getLogger(__name__)

PRESETS = tuple(sorted(set(search_presets.PRESETS) & set(retrain_presets.PRESETS)))


def check_configs(config_name, search_overrides, retrain_overrides, data_dir=None):
    """Both stages' configs (ConfigError before anything runs), refusing overrides that the
    pipeline itself sets. The retraining's genotype is a placeholder until the search ran."""
    return _configs(config_name, dict(search_overrides), dict(retrain_overrides), data_dir,
                    "search/genotype.json")


def _configs(config_name, search_overrides, retrain_overrides, data_dir, genotype_path):
    if config_name not in PRESETS:
        raise ConfigError(f"Unknown pipeline preset {config_name!r}; choose one of "
                          f"{list(PRESETS)} (a preset of both stages).")
    if "genotype" in retrain_overrides:
        raise ConfigError(
            f"Invalid retrain override genotype={retrain_overrides['genotype']!r}: the pipeline "
            "retrains the genotype its search finds; to retrain another genotype, run "
            "darts-retrain --genotype=...")
    common = {}
    if data_dir is not None:
        for stage, overrides in (("search", search_overrides), ("retrain", retrain_overrides)):
            if "data_dir" in overrides and overrides["data_dir"] != data_dir:
                raise ConfigError(
                    f"data_dir is given twice: data_dir={data_dir!r} for both stages and "
                    f"data_dir={overrides['data_dir']!r} in the {stage} overrides; give it once.")
        common["data_dir"] = data_dir
    search_config = search_presets.get(config_name).replace(**{**search_overrides, **common})
    retrain_config = retrain_presets.get(config_name).replace(
        **{**retrain_overrides, **common, "genotype": str(genotype_path)})
    return search_config, retrain_config


def run_pipeline(config_name: str, workdir, *, search_overrides: dict | None = None,
                 retrain_overrides: dict | None = None, data_dir: str | None = None) -> dict:
    """Runs (or resumes) the whole job; returns the summary written to WORKDIR/summary.json.

    Args:
      config_name: a preset that both stages have (`PRESETS`: cifar10, digits).
      workdir: the job's directory (search/, retrain/ and summary.json inside).
      search_overrides, retrain_overrides: {field: value} changes of each stage's preset;
        `genotype` is not allowed (the retraining takes the search's).
      data_dir: TFDS data directory for both stages.

    Raises:
      ConfigError, DataError, DivergedError: as the stages raise them, before the stage
        that fails writes anything more.
    """
    from trainers import retrain, search  # pylint: disable=import-outside-toplevel
    from trainers.deploy import evaluate  # pylint: disable=import-outside-toplevel
    from trainers.runtime.run import write_json  # pylint: disable=import-outside-toplevel

    workdir, start = Path(workdir), time.time()
    search_config, retrain_config = _configs(
        config_name, dict(search_overrides or {}), dict(retrain_overrides or {}), data_dir,
        workdir / "search" / "genotype.json")
    logger.info("[1/3] search (%s) -> %s", config_name, workdir / "search")
    found = search.run(search_config, str(workdir / "search"))
    logger.info("[2/3] retrain -> %s", workdir / "retrain")
    trained = retrain.run(retrain_config, str(workdir / "retrain"))
    logger.info("[3/3] evaluate the exported SavedModel")
    evaluated = evaluate.evaluate_saved_model(
        str(workdir / "retrain" / "saved_model"), dataset=retrain_config.dataset,
        data_dir=retrain_config.data_dir)
    summary = {"config": config_name, "genotype": found.architecture,
               "search_final_metrics": found.history[-1] if found.history else None,
               "retrain_final_metrics": trained.final_metrics, "evaluation": evaluated,
               "wall_time_s": round(time.time() - start, 1)}
    write_json(workdir / "summary.json", summary)
    return summary
