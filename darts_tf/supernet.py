"""The DARTS search network (reference `Network`, quark0 `cnn/model_search.py`).

Stem (conv 3x3 -> stem_multiplier * C, BN), `num_cells` search cells with
reductions at 1/3 and 2/3 of the depth, global average pooling and a linear
classifier. One alpha matrix (num_edges x num_primitives) is shared by all
normal cells and one by all reduction cells; the mixed ops see softmax(alpha),
recomputed at every forward pass. The alphas live apart from the weights:
`arch_variables` and `weight_variables` are disjoint and together cover
`trainable_variables`.

As in the reference, every BN of the cells has no affine parameters; the stem's
BN and the classifier's bias are the reference's defaults (affine, with bias).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from darts_tf import cells, ops
from darts_tf.genotype import PRIMITIVES, Genotype, derive_genotype


class Stem(ops.Op):
    """Conv 3x3 (padding 1, no bias) -> BN."""

    def __init__(self, in_channels, out_channels, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels, self.affine = in_channels, out_channels, affine

    def build(self, input_shape=None):
        self.kernel = self._kernel("kernel", (3, 3, self.in_channels, self.out_channels))
        self._bn_index = self._batch_norm("bn", self.out_channels, self.affine)
        self.built = True

    def call(self, x, training=None):
        return self._bn(ops._conv(x, self.kernel, 1, 1), self._bn_index, training)  # pylint: disable=protected-access

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "affine": self.affine}


class Classifier(ops.Op):
    """Global average pooling -> linear (with bias); logits in float32."""

    def __init__(self, in_channels, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.num_classes = in_channels, num_classes

    def build(self, input_shape=None):
        self.kernel = self._kernel("kernel", (self.in_channels, self.num_classes))
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")
        self.built = True

    def call(self, x, training=None):
        x = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2]) if x.shape.rank == 4 else x
        x = tf.cast(x, tf.float32)
        return tf.matmul(x, tf.cast(self.kernel, tf.float32)) + tf.cast(self.bias, tf.float32)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "num_classes": self.num_classes}


for _cls in (Stem, Classifier):
    keras.saving.register_keras_serializable(package="darts_tf")(_cls)


@keras.saving.register_keras_serializable(package="darts_tf")
class Supernet(keras.Model):
    """The DARTS search network.

    Args:
      num_classes: classifier outputs.
      init_channels: C of the first cells (16 in the reference search).
      num_cells: number of cells (8); reductions at num_cells // 3 and 2 * num_cells // 3.
      num_nodes: intermediate nodes per cell (4).
      stem_multiplier: the stem outputs stem_multiplier * C channels (3).
      input_channels: channels of the input images (3 for CIFAR, 1 for digits).
      primitives: candidate op names, a subset of `PRIMITIVES` in any order.
    """

    def __init__(self, num_classes=10, init_channels=16, num_cells=8, num_nodes=4,
                 stem_multiplier=3, input_channels=3, primitives=PRIMITIVES, **kwargs):
        super().__init__(**kwargs)
        # Children are created here (not traced in build): nest their variable paths.
        with keras.name_scope(self.name):
            unknown = [p for p in primitives if p not in PRIMITIVES]
            if unknown or not primitives:
                raise ValueError(f"Unknown primitives {unknown}; expected names from {PRIMITIVES}. "
                                 f"Received: primitives={list(primitives)}")
            for name, value, low in (("num_classes", num_classes, 1), ("init_channels", init_channels, 2),
                                     ("num_cells", num_cells, 3), ("num_nodes", num_nodes, 1),
                                     ("stem_multiplier", stem_multiplier, 1),
                                     ("input_channels", input_channels, 1)):
                if not isinstance(value, int) or value < low:
                    raise ValueError(f"Supernet: {name} must be an integer >= {low}. "
                                     f"Received: {name}={value!r}")
            if init_channels % 2:
                raise ValueError("Supernet: init_channels must be even (FactorizedReduce halves it). "
                                 f"Received: init_channels={init_channels}")
            self.num_classes, self.init_channels, self.num_cells = num_classes, init_channels, num_cells
            self.num_nodes, self.stem_multiplier = num_nodes, stem_multiplier
            self.input_channels, self.primitives = input_channels, tuple(primitives)

            stem_channels = stem_multiplier * init_channels
            self.stem = Stem(input_channels, stem_channels, name="stem")
            self.stem.build(None)
            self.layout = cells.cell_layout(num_cells, init_channels, stem_channels, num_nodes)
            self.cells = [cells.SearchCell(spec, num_nodes, self.primitives, name=f"cell_{i}")
                          for i, spec in enumerate(self.layout)]
            self.classifier = Classifier(num_nodes * self.layout[-1].channels, num_classes,
                                         name="classifier")
            self.classifier.build(None)
        shape = (cells.num_edges(num_nodes), len(self.primitives))
        # 1e-3 * N(0, 1) as the reference; one initializer each (a shared unseeded
        # Keras initializer gives both matrices the same values).
        # Under mixed precision the alphas and their softmax stay float32 (autocast off).
        self.alpha_normal = self.add_weight(
            name="alpha_normal", shape=shape, autocast=False,
            initializer=keras.initializers.RandomNormal(stddev=1e-3))
        self.alpha_reduce = self.add_weight(
            name="alpha_reduce", shape=shape, autocast=False,
            initializer=keras.initializers.RandomNormal(stddev=1e-3))
        # Not marked built: the first call records the input shape (model.export needs it);
        # build() itself has nothing left to create.

    @property
    def arch_variables(self):
        """The alphas: [alpha_normal, alpha_reduce]."""
        return [self.alpha_normal, self.alpha_reduce]

    @property
    def weight_variables(self):
        """Every trainable variable but the alphas."""
        arch = {id(v) for v in self.arch_variables}
        return [v for v in self.trainable_variables if id(v) not in arch]

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None):
        weights_normal = tf.nn.softmax(tf.convert_to_tensor(self.alpha_normal), axis=-1)
        weights_reduce = tf.nn.softmax(tf.convert_to_tensor(self.alpha_reduce), axis=-1)
        # Compute dtype (float16/bfloat16 under mixed precision); stateless_call skips
        # Keras' input casting, so cast here.
        inputs = tf.cast(inputs, self.compute_dtype)
        s0 = s1 = self.stem(inputs, training=training)
        for cell in self.cells:
            weights = weights_reduce if cell.spec.reduction else weights_normal
            s0, s1 = s1, cell(s0, s1, weights, training=training)
        return self.classifier(s1)

    def arch_weights(self) -> dict[str, np.ndarray]:
        """softmax(alpha) per cell type, as numpy arrays."""
        return {"normal": _softmax(self.alpha_normal.numpy()),
                "reduce": _softmax(self.alpha_reduce.numpy())}

    def genotype(self) -> Genotype:
        """The cell the alphas encode, by the reference's derivation rule."""
        return derive_genotype(np.asarray(self.alpha_normal.numpy()),
                               np.asarray(self.alpha_reduce.numpy()),
                               primitives=self.primitives, num_nodes=self.num_nodes)

    def get_config(self):
        return {"name": self.name, "num_classes": self.num_classes,
                "init_channels": self.init_channels, "num_cells": self.num_cells,
                "num_nodes": self.num_nodes, "stem_multiplier": self.stem_multiplier,
                "input_channels": self.input_channels, "primitives": list(self.primitives)}


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
