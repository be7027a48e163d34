"""The exporter: a trained network as `model.keras` and a SavedModel that plain
`tf.saved_model.load` serves without darts_tf."""
from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf


def export_model(model, input_shape, workdir) -> keras.Model:
    """Saves `workdir/model.keras` and `workdir/saved_model/` from a copy built outside any
    strategy; returns the copy.

    The copy is called once on a batch first: our networks record their input
    shape on the first call, which `Model.export` needs for its signature.
    """
    workdir = Path(workdir)
    clone = type(model).from_config(model.get_config())
    clone(tf.zeros((1, *input_shape)), training=False)
    clone.set_weights(model.get_weights())
    clone.save(workdir / "model.keras")
    clone.export(str(workdir / "saved_model"), verbose=False)
    return clone
