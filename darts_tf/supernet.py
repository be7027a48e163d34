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

from darts_tf import cells, search_space
from darts_tf.genotype import PRIMITIVES, Genotype, derive_genotype, softmax
from darts_tf.heads import Classifier, Stem


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
        return search_space.weight_variables(self)

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
        return {"normal": softmax(np.asarray(self.alpha_normal.numpy())),
                "reduce": softmax(np.asarray(self.alpha_reduce.numpy()))}

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
