"""LiteRT (TFLite) export of a retrained model, and running a .tflite file.

    export_tflite("runs/digits/retrain/saved_model", "digits.tflite", quantize="int8")

The exported model takes raw images: uint8 (batch, H, W, C) in [0, 255], as a camera
or an image file gives them at the model's size. Scaling to [0, 1] and the training
normalisation ((x - mean) / std, the statistics stored with the run) are inside the
model; it returns the logits (float32). Next to FILE.tflite, FILE.json holds the class
names, the input shape and the normalisation (the sidecar `predict` and `evaluate` read).

Quantization (`quantize`): "none" (float32), "dynamic" (int8 weights, float
activations) or "int8" (full integer: weights and activations int8, calibrated on
`representative_examples` images of the training split; the uint8 input and the float
logits stay, one quantize and one dequantize op at the ends).

Files are run with the LiteRT interpreter of the `ai-edge-litert` package
(`ai_edge_litert.interpreter`): TensorFlow 2.21's `tf.lite.Interpreter` is deprecated in
its favour (it warns that it will be removed), and it is what runs the file on a device.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainers import data
from trainers.deploy.export import DATA_FILE

logger = logging.getLogger(__name__)

QUANTIZE = ("none", "dynamic", "int8")


def sidecar_path(model_path) -> Path:
    """FILE.tflite -> FILE.json: the class names and input description of the model."""
    return Path(model_path).with_suffix(".json")


def model_spec(saved_model, dataset: str | None = None,
               data_dir: str | None = None) -> data.DataSpec:
    """The spec of the data a SavedModel was trained on: its DATA_FILE, else `dataset`'s.

    Raises:
      DataError: neither is available.
    """
    stored = Path(saved_model) / DATA_FILE
    if stored.exists():
        return data.DataSpec.from_json(stored.read_text(), str(stored))
    if dataset is None:
        raise data.DataError(f"{saved_model} has no {DATA_FILE} (exported by an older "
                             "darts-tf): give the data set it was trained on (--dataset).")
    return data.get_spec(dataset, data_dir)


def data_image_size(spec: data.DataSpec, dataset: str) -> int | None:
    """The image_size argument that gives `dataset` images of the model's input size."""
    return spec.image_shape[0] if dataset == "folder" else None


def raw_image_model(serve, spec: data.DataSpec) -> tf.types.experimental.ConcreteFunction:
    """uint8 images -> logits: [0, 255] -> [0, 1] -> (x - mean) / std -> `serve`."""
    mean = tf.constant(spec.mean, tf.float32)
    std = tf.constant(spec.std, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, *spec.image_shape], tf.uint8,
                                                name="image")])
    def raw_images(image):
        x = tf.cast(image, tf.float32) / 255.0
        return {"logits": serve((x - mean) / std)}
    return raw_images.get_concrete_function()


def export_tflite(saved_model, output, quantize: str = "none", *, dataset: str | None = None,
                  data_dir: str | None = None, representative_examples: int = 200,
                  representative_data=None) -> dict:
    """Converts a SavedModel of `darts-retrain` into a LiteRT model that takes raw images.

    Args:
      saved_model: the SavedModel directory (`WORKDIR/saved_model`).
      output: the .tflite file to write; its sidecar is `sidecar_path(output)`.
      quantize: "none", "dynamic" or "int8" (see the module docstring).
      dataset, data_dir: int8's representative data (the training split; default: the
        data set stored with the model); `dataset` also stands in for a model exported
        without its data set's spec.
      representative_examples: training images that calibrate int8.
      representative_data: instead, a callable returning an iterable of uint8 image
        batches (benchmarks without the data set).

    Returns:
      {"output", "sidecar", "quantize", "size_bytes", "input_shape", "class_names"}.

    Raises:
      ValueError: an unknown `quantize`; DataError: no data description or data.
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}. Received: "
                         f"quantize={quantize!r}")
    from trainers.deploy.evaluate import serving_fn  # pylint: disable=import-outside-toplevel

    spec = model_spec(saved_model, dataset, data_dir)
    loaded = tf.saved_model.load(str(saved_model))
    function = raw_image_model(serving_fn(loaded), spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8" and representative_data is not None:
        converter.representative_dataset = lambda: ([x] for x in representative_data())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantize == "int8":
        name = dataset or spec.name
        images = data.eval_data(name, batch_size=1, split="train", data_dir=data_dir,
                                limit=representative_examples, raw=True,
                                image_size=data_image_size(spec, name))
        converter.representative_dataset = lambda: ([x] for x, _ in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    content = converter.convert()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(content)
    description = json.loads(spec.to_json())
    description.update(quantize=quantize, input={"dtype": "uint8", "shape": list(
        spec.image_shape), "range": [0, 255]}, output="logits", saved_model=str(saved_model))
    sidecar_path(output).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")
    logger.info("Wrote %s (%s, %d bytes) and %s", output, quantize, len(content),
                sidecar_path(output))
    return {"output": str(output), "sidecar": str(sidecar_path(output)), "quantize": quantize,
            "size_bytes": len(content), "input_shape": list(spec.image_shape),
            "class_names": description["class_names"]}


class LiteRTModel:
    """A .tflite file run by the LiteRT interpreter: `model(uint8 images) -> logits`.

    Args:
      path: the .tflite file; its sidecar (`sidecar_path`) gives `spec` when present.
      num_threads: interpreter threads (None: LiteRT's default).
    """

    def __init__(self, path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel

        self.path = Path(path)
        if not self.path.is_file():
            raise OSError(f"No LiteRT model at {self.path}.")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        except ValueError as err:
            raise OSError(f"{self.path} is not a LiteRT model: {err}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = None
        side = sidecar_path(self.path)
        self.spec = (data.DataSpec.from_json(side.read_text(), str(side))
                     if side.exists() else None)
        self.input_shape = tuple(int(d) for d in self.input["shape"][1:])

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != self.input["dtype"]:
            raise ValueError(f"{self.path} takes {np.dtype(self.input['dtype']).name} images; "
                             f"received {images.dtype}.")
        if images.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            self.interpreter.allocate_tensors()
            self.batch = images.shape[0]
        self.interpreter.set_tensor(self.input["index"], images)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"]).copy()
