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

`method` picks the search method's mixed op (`darts_tf.methods`): "darts", "pc_darts"
(partial channels; with edge normalisation its betas join the alphas in
`arch_variables`) or "darts_minus" (an auxiliary skip scaled by the non-trainable
`skip_beta`, which the trainer sets at each epoch start).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from darts_tf import cells, methods, search_space
from darts_tf.genotype import PRIMITIVES, Genotype, derive_genotype, edge_weights, softmax
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
      method: "darts", "pc_darts" or "darts_minus" (`darts_tf.methods.METHODS`).
      partial_channels: PC-DARTS' K, the mixed op sees 1/K of the channels (default 4;
        only 1 for the other methods).
      edge_normalization: PC-DARTS' per-node softmax over edge betas (default True; only
        False for the other methods).
      max_skip_connect: at most this many skip-connects in the derived normal cell,
        P-DARTS' guard (None: no limit).
      recompute_cells: the first this many cells keep only their inputs for the backward
        pass and run again there (less memory, more time; the same results within float
        rounding). 0 keeps every activation.
    """

    def __init__(self, num_classes=10, init_channels=16, num_cells=8, num_nodes=4,
                 stem_multiplier=3, input_channels=3, primitives=PRIMITIVES, method="darts",
                 partial_channels=None, edge_normalization=None, max_skip_connect=None,
                 recompute_cells=0, **kwargs):
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
            if not isinstance(recompute_cells, int) or isinstance(recompute_cells, bool) or \
                    not 0 <= recompute_cells <= num_cells:
                raise ValueError("Supernet: recompute_cells must be an integer in [0, num_cells]. "
                                 f"Received: recompute_cells={recompute_cells!r}, "
                                 f"num_cells={num_cells}")
            partial_channels, edge_normalization = _method_options(
                method, partial_channels, edge_normalization, init_channels, max_skip_connect)
            self.num_classes, self.init_channels, self.num_cells = num_classes, init_channels, num_cells
            self.num_nodes, self.stem_multiplier = num_nodes, stem_multiplier
            self.input_channels, self.primitives = input_channels, tuple(primitives)
            self.method, self.partial_channels = method, partial_channels
            self.edge_normalization, self.max_skip_connect = edge_normalization, max_skip_connect
            mixed_op = methods.mixed_op_factory(method, partial_channels)

            stem_channels = stem_multiplier * init_channels
            self.stem = Stem(input_channels, stem_channels, name="stem")
            self.stem.build(None)
            self.layout = cells.cell_layout(num_cells, init_channels, stem_channels, num_nodes)
            self.recompute_cells = recompute_cells
            self.cells = [cells.SearchCell(spec, num_nodes, self.primitives, mixed_op,
                                           recompute=i < recompute_cells, name=f"cell_{i}")
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
        self.beta_normal = self.beta_reduce = self.skip_beta = None
        if edge_normalization:  # 1e-3 * N(0, 1) as the authors' betas
            self.beta_normal, self.beta_reduce = (self.add_weight(
                name=name, shape=shape[:1], autocast=False,
                initializer=keras.initializers.RandomNormal(stddev=1e-3))
                for name in ("beta_normal", "beta_reduce"))
        if method == "darts_minus":  # set by the trainer each epoch (methods.skip_beta)
            self.skip_beta = self.add_weight(
                name="skip_beta", shape=(), initializer="ones", trainable=False, autocast=False,
                aggregation="mean")
        # Not marked built: the first call records the input shape (model.export needs it);
        # build() itself has nothing left to create.

    @property
    def arch_variables(self):
        """The alphas [alpha_normal, alpha_reduce], then PC-DARTS' [beta_normal, beta_reduce]."""
        betas = [self.beta_normal, self.beta_reduce] if self.edge_normalization else []
        return [self.alpha_normal, self.alpha_reduce, *betas]

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
        extra = {False: {}, True: {}}  # per cell type: reduction or not
        if self.edge_normalization:
            for reduction, beta in ((False, self.beta_normal), (True, self.beta_reduce)):
                extra[reduction]["edge_weights"] = methods.edge_weights(
                    tf.convert_to_tensor(beta), self.num_nodes)
        if self.skip_beta is not None:
            for reduction in extra:
                extra[reduction]["skip_beta"] = tf.convert_to_tensor(self.skip_beta)
        s0 = s1 = self.stem(inputs, training=training)
        for cell in self.cells:
            weights = weights_reduce if cell.spec.reduction else weights_normal
            s0, s1 = s1, cell(s0, s1, weights, training=training, **extra[cell.spec.reduction])
        return self.classifier(s1)

    def arch_weights(self) -> dict[str, np.ndarray]:
        """softmax(alpha) per cell type (and PC-DARTS' edge weights), as numpy arrays."""
        out = {"normal": softmax(np.asarray(self.alpha_normal.numpy())),
               "reduce": softmax(np.asarray(self.alpha_reduce.numpy()))}
        if self.edge_normalization:
            out["normal_edges"] = edge_weights(self.beta_normal.numpy(), self.num_nodes)
            out["reduce_edges"] = edge_weights(self.beta_reduce.numpy(), self.num_nodes)
        return out

    def genotype(self) -> Genotype:
        """The cell the alphas (and betas) encode, by the method's derivation rule."""
        betas = {}
        if self.edge_normalization:
            betas = {"beta_normal": np.asarray(self.beta_normal.numpy()),
                     "beta_reduce": np.asarray(self.beta_reduce.numpy())}
        return derive_genotype(np.asarray(self.alpha_normal.numpy()),
                               np.asarray(self.alpha_reduce.numpy()),
                               primitives=self.primitives, num_nodes=self.num_nodes,
                               max_skip_connect=self.max_skip_connect, **betas)

    def get_config(self):
        return {"name": self.name, "num_classes": self.num_classes,
                "init_channels": self.init_channels, "num_cells": self.num_cells,
                "num_nodes": self.num_nodes, "stem_multiplier": self.stem_multiplier,
                "input_channels": self.input_channels, "primitives": list(self.primitives),
                "method": self.method, "partial_channels": self.partial_channels,
                "edge_normalization": self.edge_normalization,
                "max_skip_connect": self.max_skip_connect,
                "recompute_cells": self.recompute_cells}


def _method_options(method, partial_channels, edge_normalization, init_channels,
                    max_skip_connect):
    """(partial_channels, edge_normalization) resolved for `method`; ValueError for nonsense."""
    if method not in methods.METHODS:
        raise ValueError(f"Supernet: unknown method; expected one of {methods.METHODS}. "
                         f"Received: method={method!r}")
    if max_skip_connect is not None and (
            not isinstance(max_skip_connect, int) or isinstance(max_skip_connect, bool)
            or max_skip_connect < 0):
        raise ValueError("Supernet: max_skip_connect must be None or an integer >= 0. "
                         f"Received: max_skip_connect={max_skip_connect!r}")
    if method != "pc_darts":
        if partial_channels not in (None, 1) or edge_normalization not in (None, False):
            raise ValueError(
                "Supernet: partial_channels and edge_normalization are PC-DARTS options "
                f"(method='pc_darts'). Received: method={method!r}, "
                f"partial_channels={partial_channels!r}, edge_normalization={edge_normalization!r}")
        return 1, False
    partial_channels = 4 if partial_channels is None else partial_channels
    edge_normalization = True if edge_normalization is None else edge_normalization
    if not isinstance(partial_channels, int) or isinstance(partial_channels, bool) or \
            partial_channels < 1 or init_channels % partial_channels:
        raise ValueError("Supernet: partial_channels must be an integer >= 1 that divides "
                         f"init_channels. Received: partial_channels={partial_channels!r}, "
                         f"init_channels={init_channels!r}")
    if not isinstance(edge_normalization, bool):
        raise ValueError("Supernet: edge_normalization must be True or False. "
                         f"Received: edge_normalization={edge_normalization!r}")
    return partial_channels, edge_normalization
