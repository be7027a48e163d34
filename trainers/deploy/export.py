"""The exporter: a trained network as `model.keras` and a SavedModel that plain
`tf.saved_model.load` serves without darts_tf."""
from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf


DATA_FILE = "assets.extra/data.json"  # in the SavedModel: the spec of the data it was trained on


def export_model(model, spec, workdir) -> keras.Model:
    """Saves `workdir/model.keras` and `workdir/saved_model/` from a copy built outside any
    strategy; returns the copy.

    The copy is called once on a batch first: our networks record their input
    shape on the first call, which `Model.export` needs for its signature. The data
    set's spec (`trainers.data.DataSpec`: input shape, normalisation, class names) goes
    into the SavedModel as DATA_FILE (`assets.extra/` is TensorFlow Serving's folder for
    files beside the graph), so that evaluation and the LiteRT export use the training
    normalisation and name the classes.
    """
    workdir, input_shape = Path(workdir), spec.image_shape
    clone = type(model).from_config(model.get_config())
    clone(tf.zeros((1, *input_shape)), training=False)
    clone.set_weights(model.get_weights())
    clone.save(workdir / "model.keras")
    clone.export(str(workdir / "saved_model"), verbose=False)
    (workdir / "saved_model" / DATA_FILE).parent.mkdir(exist_ok=True)
    (workdir / "saved_model" / DATA_FILE).write_text(spec.to_json())
    return clone
