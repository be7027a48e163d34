"""Fixed networks rebuilt from a genotype (reference `cnn/model.py`, section 8).

`NetworkCIFAR` (C=36, 20 cells) and `NetworkImageNet` (C=48, 14 cells) share
the cell layout and the ops with the supernet; only the stems, the auxiliary
heads and the final pooling differ. `call(x)` returns the logits;
`call(x, training=True, return_aux=True)` returns `(logits, aux_logits)` for
the training loss (`aux_logits` is None without an auxiliary head).

Drop path: `drop_path_rate` is the final rate; the current one is the
non-trainable variable `drop_path_prob` (the retrain loop ramps it linearly over
the epochs as the reference does), read inside the traced step so changing it
never retraces.

Memory: `recompute=True` makes the separable and dilated convs keep only their inputs for
the backward pass and recompute their ReLU and depthwise outputs there, as the search ops
do. The same values and gradients; NetworkCIFAR DARTS_V2 at batch 96 peaked at 5.2-5.3 GB
instead of 6.95 GB, for 10-13% more time per step (BENCHMARKS.md, 2026-12-03).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from darts_tf import cells
from darts_tf.genotype import Genotype, load_genotype
from darts_tf.heads import AuxiliaryHead, Classifier, ImageNetStem, Stem


class _FixedNetwork(keras.Model):
    """Shared by the CIFAR and ImageNet networks: cells, auxiliary head, classifier."""

    _imagenet = False

    def __init__(self, genotype, num_classes, init_channels, num_cells, auxiliary,
                 drop_path_rate, input_channels=3, recompute=False, **kwargs):
        super().__init__(**kwargs)
        # Children are created here (not traced in build): nest their variable paths.
        with keras.name_scope(self.name):
            genotype = load_genotype(genotype) if not isinstance(genotype, Genotype) else genotype
            for name, value, low in (("num_classes", num_classes, 1), ("init_channels", init_channels, 2),
                                     ("num_cells", num_cells, 3), ("input_channels", input_channels, 1)):
                if not isinstance(value, int) or isinstance(value, bool) or value < low:
                    raise ValueError(f"{type(self).__name__}: {name} must be an integer >= {low}. "
                                     f"Received: {name}={value!r}")
            if not isinstance(recompute, bool):
                raise ValueError(f"{type(self).__name__}: recompute must be True or False. "
                                 f"Received: recompute={recompute!r}")
            if not 0.0 <= float(drop_path_rate) < 1.0:
                raise ValueError(f"{type(self).__name__}: drop_path_rate must be in [0, 1). "
                                 f"Received: drop_path_rate={drop_path_rate!r}")
            self.genotype, self.num_classes, self.init_channels = genotype, num_classes, init_channels
            self.num_cells, self.auxiliary, self.input_channels = num_cells, bool(auxiliary), input_channels
            self.drop_path_rate = float(drop_path_rate)
            self.recompute = recompute
            multiplier = len(genotype.normal_concat)
            if self._imagenet:
                self.stem = ImageNetStem(input_channels, init_channels, name="stem")
                layout = cells.cell_layout(num_cells, init_channels, init_channels, multiplier,
                                           reduction_prev=True)
            else:
                stem_channels = 3 * init_channels
                self.stem = Stem(input_channels, stem_channels, name="stem")
                layout = cells.cell_layout(num_cells, init_channels, stem_channels, multiplier)
            self.stem.build(None)
            self.cells = []
            for i, spec in enumerate(layout):
                pairs, concat = ((genotype.reduce, genotype.reduce_concat) if spec.reduction
                                 else (genotype.normal, genotype.normal_concat))
                self.cells.append(cells.FixedCell(spec, [p[0] for p in pairs], [p[1] for p in pairs],
                                                  concat, recompute=recompute, name=f"cell_{i}"))
            self.aux_index = 2 * num_cells // 3
            if self.auxiliary:
                aux_channels = multiplier * layout[self.aux_index].channels
                self.auxiliary_head = AuxiliaryHead(
                    aux_channels, num_classes, pool_stride=2 if self._imagenet else 3,
                    last_bn=not self._imagenet, name="auxiliary_head")
                self.auxiliary_head.build(None)
            self.classifier = Classifier(multiplier * layout[-1].channels, num_classes,
                                         name="classifier")
            self.classifier.build(None)
            self.drop_path_prob = self.add_weight(
                name="drop_path_prob", shape=(), trainable=False,
                initializer=keras.initializers.Constant(self.drop_path_rate))
        # Not marked built: the first call records the input shape (model.export needs it);
        # build() itself has nothing left to create.

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs, training=None, return_aux=False):
        inputs = tf.cast(inputs, self.compute_dtype)  # float16/bfloat16 under mixed precision
        if self._imagenet:
            s0, s1 = self.stem(inputs, training=training)
        else:
            s0 = s1 = self.stem(inputs, training=training)
        drop_prob = tf.convert_to_tensor(self.drop_path_prob)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob, training=training)
            if i == self.aux_index and self.auxiliary and training and return_aux:
                aux_logits = self.auxiliary_head(s1, training=training)
        logits = self.classifier(s1)
        return (logits, aux_logits) if return_aux else logits

    def count_params(self, include_auxiliary=True) -> int:
        """Trainable parameters; `include_auxiliary=False` counts as the reference reports."""
        variables = self.trainable_variables
        if not include_auxiliary and self.auxiliary:
            aux = {id(v) for v in self.auxiliary_head.trainable_variables}
            variables = [v for v in variables if id(v) not in aux]
        return int(sum(v.numpy().size for v in variables))

    def get_config(self):
        return {"name": self.name, "genotype": self.genotype.to_dict(),
                "num_classes": self.num_classes, "init_channels": self.init_channels,
                "num_cells": self.num_cells, "auxiliary": self.auxiliary,
                "drop_path_rate": self.drop_path_rate, "input_channels": self.input_channels,
                "recompute": self.recompute}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["genotype"] = Genotype.from_dict(config["genotype"], source="model config")
        return cls(**config)


@keras.saving.register_keras_serializable(package="darts_tf")
class NetworkCIFAR(_FixedNetwork):
    """The CIFAR evaluation network (reference: C=36, 20 cells, auxiliary head after cell 13)."""

    def __init__(self, genotype, num_classes=10, init_channels=36, num_cells=20, auxiliary=True,
                 drop_path_rate=0.2, input_channels=3, recompute=False, **kwargs):
        super().__init__(genotype, num_classes, init_channels, num_cells, auxiliary,
                         drop_path_rate, input_channels, recompute, **kwargs)


@keras.saving.register_keras_serializable(package="darts_tf")
class NetworkImageNet(_FixedNetwork):
    """The ImageNet mobile network (reference: C=48, 14 cells, 224x224 input, no drop path)."""

    _imagenet = True

    def __init__(self, genotype, num_classes=1000, init_channels=48, num_cells=14,
                 auxiliary=True, drop_path_rate=0.0, input_channels=3, recompute=False,
                 **kwargs):
        super().__init__(genotype, num_classes, init_channels, num_cells, auxiliary,
                         drop_path_rate, input_channels, recompute, **kwargs)
