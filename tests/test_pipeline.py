"""The README's main job: search -> retrain -> export -> evaluate, on digits, tiny."""
import json

from trainers.pipeline import run_pipeline

TINY = {"epochs": 1, "steps_per_epoch": 3, "init_channels": 4, "num_cells": 3, "batch_size": 16}


def test_pipeline_search_retrain_export_evaluate(tmp_path):
    summary = run_pipeline("digits", tmp_path, search_overrides={**TINY, "num_nodes": 1},
                           retrain_overrides=TINY)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    # The genotype the search wrote is the one the retraining trained.
    searched = json.loads((tmp_path / "search" / "genotype.json").read_text())
    retrained = json.loads((tmp_path / "retrain" / "genotype.json").read_text())
    assert summary["genotype"] == searched
    assert {k: retrained[k] for k in ("normal", "reduce")} == {k: searched[k] for k in ("normal", "reduce")}
    # The exported SavedModel was evaluated on the whole held-out split.
    evaluation = summary["evaluation"]
    assert evaluation["examples"] == 360 and 0.0 <= evaluation["top1"] <= evaluation["top5"] <= 1.0
    assert evaluation["params"] == summary["retrain_final_metrics"]["params"]
