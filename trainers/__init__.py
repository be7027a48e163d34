"""The stages that turn data into a served model, and the command line.

    search/    the architect, the search step and loop, the KerasTuner oracle and tuner
    retrain/   training a genotype from scratch with the paper's recipe
    deploy/    the exporter (model.keras, SavedModel) and the evaluation of an export
    data/      where images come from, and each stage's pipeline
    runtime/   what every stage shares: the run skeleton, strategies, optimizers, losses
    pipeline.py   search -> retrain -> export -> evaluate as one function
    cli.py        every command-line program

See docs/ARCHITECTURE.md for the path from flags to a SavedModel.
"""
# Before any stage imports TensorFlow: darts_tf turns TensorFlow's oneDNN CPU kernels on where
# TensorFlow's own default leaves them off (darts_tf/__init__.py, `_prefer_onednn`). Serving
# an export needs no darts_tf (deploy/evaluate.py), so its absence is not an error here.
try:
    import darts_tf  # noqa: F401  pylint: disable=unused-import
except ImportError:
    pass
