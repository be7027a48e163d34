"""Weights copied from the PyTorch reference give the reference's outputs.

The fixtures in tests/data were written by tools/reference_fixtures.py from
quark0/darts run on PyTorch (see tests/data/README.md): each holds a tiny
network's state_dict (torch layout, NCHW), an input and the reference's outputs
in eval mode (random running statistics) and train mode (batch statistics).
Here every torch tensor is mapped onto our variables, all of them on both sides
must be used, and the outputs must agree.
"""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from darts_tf import genotypes, ops
from darts_tf.heads import AuxiliaryHead, Classifier, ImageNetStem, Stem
from darts_tf.networks import NetworkCIFAR, NetworkImageNet
from darts_tf.supernet import Supernet

DATA = pathlib.Path(__file__).parent / "data"


class _Mapper:
    """Assigns torch tensors to our variables, recording what was used on both sides."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.used = set()
        self.assigned = set()

    def take(self, key):
        key = key.lstrip(".")  # per-op fixtures use keys relative to the op
        self.used.add(key)
        return self.arrays[key]

    def set(self, variable, value):
        assert tuple(variable.shape) == value.shape, (variable.path, variable.shape, value.shape)
        variable.assign(value)
        self.assigned.add(id(variable))

    def conv(self, variable, key, depthwise=False):
        w = self.take(key)
        self.set(variable, w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0))

    def bn(self, layer, index, prefix):
        v = layer._bns[index]  # pylint: disable=protected-access
        self.set(v["moving_mean"], self.take(prefix + ".running_mean"))
        self.set(v["moving_variance"], self.take(prefix + ".running_var"))
        if "gamma" in v:
            self.set(v["gamma"], self.take(prefix + ".weight"))
            self.set(v["beta"], self.take(prefix + ".bias"))

    def op(self, layer, prefix):
        if isinstance(layer, (ops.Identity, ops.Zero)):
            return
        if isinstance(layer, ops.Pool):
            if layer.batch_norm:  # search: Sequential(pool, BN)
                self.bn(layer, layer._bn_index, prefix + ".1")  # pylint: disable=protected-access
        elif isinstance(layer, ops.ReLUConvBN):
            self.conv(layer.kernel, prefix + ".op.1.weight")
            self.bn(layer, layer._bn_index, prefix + ".op.2")  # pylint: disable=protected-access
        elif isinstance(layer, ops.FactorizedReduce):
            self.conv(layer.kernel_1, prefix + ".conv_1.weight")
            self.conv(layer.kernel_2, prefix + ".conv_2.weight")
            self.bn(layer, layer._bn_index, prefix + ".bn")  # pylint: disable=protected-access
        elif isinstance(layer, ops.SepConv):
            self.conv(layer.depthwise_1, prefix + ".op.1.weight", depthwise=True)
            self.conv(layer.pointwise_1, prefix + ".op.2.weight")
            self.bn(layer, layer._bn_1, prefix + ".op.3")  # pylint: disable=protected-access
            self.conv(layer.depthwise_2, prefix + ".op.5.weight", depthwise=True)
            self.conv(layer.pointwise_2, prefix + ".op.6.weight")
            self.bn(layer, layer._bn_2, prefix + ".op.7")  # pylint: disable=protected-access
        elif isinstance(layer, ops.DilConv):
            self.conv(layer.depthwise, prefix + ".op.1.weight", depthwise=True)
            self.conv(layer.pointwise, prefix + ".op.2.weight")
            self.bn(layer, layer._bn_index, prefix + ".op.3")  # pylint: disable=protected-access
        elif isinstance(layer, Stem):
            self.conv(layer.kernel, prefix + ".0.weight")
            self.bn(layer, layer._bn_index, prefix + ".1")  # pylint: disable=protected-access
        elif isinstance(layer, Classifier):
            self.set(layer.kernel, self.take(prefix + ".weight").T)
            self.set(layer.bias, self.take(prefix + ".bias"))
        elif isinstance(layer, AuxiliaryHead):
            self.conv(layer.kernel_1, prefix + ".features.2.weight")
            self.bn(layer, layer._bn_1, prefix + ".features.3")  # pylint: disable=protected-access
            self.conv(layer.kernel_2, prefix + ".features.5.weight")
            if layer.last_bn:
                self.bn(layer, layer._bn_2, prefix + ".features.6")  # pylint: disable=protected-access
            self.op(layer.classifier, prefix + ".classifier")
        else:
            raise TypeError(type(layer))

    def check_complete(self, model):
        torch_keys = {k for k in self.arrays["state_dict_keys"]
                      if not str(k).endswith("num_batches_tracked")}
        assert torch_keys - self.used == set(), "torch tensors not mapped"
        arch = {id(v) for v in getattr(model, "arch_variables", [])}  # alphas (and betas)
        ours = [v for v in model.variables
                if "seed" not in v.path and "drop_path_prob" not in v.path
                and id(v) not in arch]
        missed = [v.path for v in ours if id(v) not in self.assigned]
        assert not missed, f"variables not set from the reference: {missed[:5]}"


def _load(name):
    arrays = np.load(DATA / name, allow_pickle=False)
    return {k: arrays[k] for k in arrays.files}


def _nhwc(x):
    return tf.constant(x.transpose(0, 2, 3, 1))


def _close(ours, theirs):
    """Logits, or NCHW feature maps compared in our NHWC layout."""
    theirs = theirs.transpose(0, 2, 3, 1) if theirs.ndim == 4 else theirs
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=2e-4, atol=2e-4)


class _GroupSlices:
    """Stages per-edge torch tensors into slices of a grouped op's variables.

    A search-cell op built with groups=G holds the G edges of a node side by side on
    the channel axis: edge g owns channels [g * C, (g + 1) * C) of depthwise kernels,
    pointwise output channels and BN vectors (for FactorizedReduce, each path's
    [g * C/2, (g + 1) * C/2) and BN channels [g * C, (g + 1) * C)).
    """

    def __init__(self, mapper):
        self.mapper = mapper
        self.staged = {}  # id(variable) -> (variable, numpy buffer)

    def put(self, variable, group, width, value, axis=-1):
        _, buf = self.staged.setdefault(id(variable), (variable, np.zeros(variable.shape, np.float32)))
        index = [slice(None)] * buf.ndim
        index[axis] = slice(group * width, (group + 1) * width)
        buf[tuple(index)] = value

    def bn(self, layer, index, prefix, group, width):
        v = layer._bns[index]  # pylint: disable=protected-access
        self.put(v["moving_mean"], group, width, self.mapper.take(prefix + ".running_mean"))
        self.put(v["moving_variance"], group, width, self.mapper.take(prefix + ".running_var"))

    def op(self, layer, prefix, group, c):
        take = self.mapper.take
        if isinstance(layer, ops.Identity):
            return
        if isinstance(layer, ops.Pool):
            self.bn(layer, layer._bn_index, prefix + ".1", group, c)  # pylint: disable=protected-access
        elif isinstance(layer, ops.FactorizedReduce):
            self.put(layer.kernel_1, group, c // 2, take(prefix + ".conv_1.weight").transpose(2, 3, 1, 0))
            self.put(layer.kernel_2, group, c // 2, take(prefix + ".conv_2.weight").transpose(2, 3, 1, 0))
            self.bn(layer, layer._bn_index, prefix + ".bn", group, c)  # pylint: disable=protected-access
        elif isinstance(layer, (ops.SepConv, ops.DilConv)):
            parts = ((layer.depthwise_1, layer.pointwise_1, layer._bn_1, ".op.1", ".op.2", ".op.3"),  # pylint: disable=protected-access
                     (layer.depthwise_2, layer.pointwise_2, layer._bn_2, ".op.5", ".op.6", ".op.7")) \
                if isinstance(layer, ops.SepConv) else \
                ((layer.depthwise, layer.pointwise, layer._bn_index, ".op.1", ".op.2", ".op.3"),)  # pylint: disable=protected-access
            for dw, pw, bn, k_dw, k_pw, k_bn in parts:
                self.put(dw, group, c, take(prefix + k_dw + ".weight").transpose(2, 3, 0, 1), axis=2)
                self.put(pw, group, c, take(prefix + k_pw + ".weight").transpose(2, 3, 1, 0))
                self.bn(layer, bn, prefix + k_bn, group, c)
        else:
            raise TypeError(type(layer))

    def assign(self):
        for variable, buf in self.staged.values():
            self.mapper.set(variable, buf)


def map_search_network(model, arrays):
    """Assigns a reference search network's state_dict (quark0's, or PC-DARTS', whose mixed
    ops hold the same keys on C/K channels) to `model`; every tensor used on both sides."""
    mapper = _Mapper(arrays)
    grouped = _GroupSlices(mapper)
    mapper.op(model.stem, "stem")
    for i, cell in enumerate(model.cells):
        mapper.op(cell.preprocess0, f"cells.{i}.preprocess0")
        mapper.op(cell.preprocess1, f"cells.{i}.preprocess1")
        mixed = iter(cell.mixed_ops)
        for node in cell.groups:
            for first_edge, _, count in node:
                mixed_op = next(mixed)
                for g in range(count):
                    for k, op in zip(mixed_op._indices, mixed_op.candidates):  # pylint: disable=protected-access
                        grouped.op(op, f"cells.{i}._ops.{first_edge + g}._ops.{k}", g,
                                   mixed_op.channels)
    grouped.assign()
    mapper.op(model.classifier, "classifier")
    mapper.check_complete(model)


def test_search_network_matches_reference():
    arrays = _load("search_tiny.npz")
    model = Supernet(num_classes=10, init_channels=4, num_cells=3)
    map_search_network(model, arrays)
    model.alpha_normal.assign(arrays["alphas_normal"])
    model.alpha_reduce.assign(arrays["alphas_reduce"])
    x = _nhwc(arrays["input"])
    _close(model(x, training=False), arrays["logits_eval"])
    _close(model(x, training=True), arrays["logits_train"])


def _map_fixed(model, arrays):
    mapper = _Mapper(arrays)
    if isinstance(model.stem, ImageNetStem):
        stem = model.stem
        mapper.conv(stem.kernel_0a, "stem0.0.weight")
        mapper.bn(stem, stem._bn_0a, "stem0.1")  # pylint: disable=protected-access
        mapper.conv(stem.kernel_0b, "stem0.3.weight")
        mapper.bn(stem, stem._bn_0b, "stem0.4")  # pylint: disable=protected-access
        mapper.conv(stem.kernel_1, "stem1.1.weight")
        mapper.bn(stem, stem._bn_1, "stem1.2")  # pylint: disable=protected-access
    else:
        mapper.op(model.stem, "stem")
    for i, cell in enumerate(model.cells):
        mapper.op(cell.preprocess0, f"cells.{i}.preprocess0")
        mapper.op(cell.preprocess1, f"cells.{i}.preprocess1")
        for k, op in enumerate(cell.ops):
            mapper.op(op, f"cells.{i}._ops.{k}")
    if model.auxiliary:
        mapper.op(model.auxiliary_head, "auxiliary_head")
    mapper.op(model.classifier, "classifier")
    mapper.check_complete(model)


@pytest.mark.parametrize("fixture,genotype", [("cifar_tiny.npz", genotypes.DARTS_V2),
                                              ("cifar_tiny_v1.npz", genotypes.DARTS_V1)])
def test_cifar_network_matches_reference(fixture, genotype):
    arrays = _load(fixture)
    model = NetworkCIFAR(genotype, num_classes=10, init_channels=4, num_cells=3,
                         auxiliary=True, drop_path_rate=0.0)
    _map_fixed(model, arrays)
    x = _nhwc(arrays["input"])
    _close(model(x, training=False), arrays["logits_eval"])
    logits, aux = model(x, training=True, return_aux=True)
    _close(logits, arrays["logits_train"])
    _close(aux, arrays["aux_logits_train"])


def test_imagenet_network_matches_reference():
    arrays = _load("imagenet_tiny.npz")
    model = NetworkImageNet(genotypes.DARTS_V2, num_classes=10, init_channels=8, num_cells=3,
                            auxiliary=True)
    _map_fixed(model, arrays)
    x = _nhwc(arrays["input"])
    _close(model(x, training=False), arrays["logits_eval"])
    logits, aux = model(x, training=True, return_aux=True)
    _close(logits, arrays["logits_train"])
    _close(aux, arrays["aux_logits_train"])


_OP_CASES = [(name, stride) for name in genotypes.PRIMITIVES for stride in (1, 2)]


def test_preprocessing_ops_match_reference():
    arrays = _load("ops_tiny.npz")
    x = _nhwc(arrays["input_8x8"])
    for op, prefix in ((ops.ReLUConvBN(4, 8, 1, 1, 0, affine=True), "op/relu_conv_bn_4_8_k1_s1_p0/s1/"),
                       (ops.FactorizedReduce(4, 8, affine=True), "op/factorized_reduce_4_8/s2/")):
        op.build(None)
        sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        mapper = _Mapper(sub)
        mapper.op(op, "")
        assert mapper.assigned == {id(v) for v in op.variables}
        _close(op(x, training=False), sub["out"])
        _close(op(x, training=True), sub["out_train"])


@pytest.mark.parametrize("name,stride", _OP_CASES)
def test_each_op_matches_reference(name, stride):
    arrays = _load("ops_tiny.npz")
    prefix = f"op/{name}/s{stride}/"
    sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    if "out" not in sub:
        pytest.skip(f"no fixture for {name} at stride {stride}")
    op = ops.make_op(name, 4, stride, affine=True)
    mapper = _Mapper(sub)
    mapper.op(op, "")
    torch_keys = {str(k) for k in sub["state_dict_keys"] if not str(k).endswith("tracked")}
    assert mapper.used == torch_keys
    assert mapper.assigned == {id(v) for v in op.variables}
    x = _nhwc(arrays["input_8x8"])
    _close(op(x, training=False), sub["out"])
    if "out_odd" in sub:  # a 7x7 input: padding on odd sizes
        _close(op(_nhwc(arrays["input_7x7"]), training=False), sub["out_odd"])
    # Last, as in the reference run: a training pass updates the BN running statistics.
    _close(op(x, training=True), sub["out_train"])
