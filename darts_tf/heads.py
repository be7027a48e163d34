"""The macro pieces around the cells, shared by the supernet and the fixed networks.

Reference: quark0/darts `cnn/model_search.py` and `cnn/model.py` (reference
section 8). `Stem` is the CIFAR stem of both the search network and
`NetworkCIFAR`; `ImageNetStem` the two reducing stems of `NetworkImageNet`;
`Classifier` the global pooling and linear layer that ends every network;
`AuxiliaryHead` the auxiliary classifier the fixed networks train with. Their
BNs are affine (the reference's defaults), unlike the search cells'.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from darts_tf import kernels, ops


@keras.saving.register_keras_serializable(package="darts_tf")
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
        return self._bn(kernels.conv2d(x, self.kernel, 1, 1), self._bn_index, training)

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "out_channels": self.out_channels, "affine": self.affine}


@keras.saving.register_keras_serializable(package="darts_tf")
class ImageNetStem(ops.Op):
    """stem0: conv3x3/2 (C/2) BN ReLU conv3x3/2 (C) BN; stem1: ReLU conv3x3/2 (C) BN."""

    def __init__(self, in_channels, channels, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.channels = in_channels, channels

    def build(self, input_shape=None):
        c = self.channels
        self.kernel_0a = self._kernel("kernel_0a", (3, 3, self.in_channels, c // 2))
        self._bn_0a = self._batch_norm("bn_0a", c // 2, affine=True)
        self.kernel_0b = self._kernel("kernel_0b", (3, 3, c // 2, c))
        self._bn_0b = self._batch_norm("bn_0b", c, affine=True)
        self.kernel_1 = self._kernel("kernel_1", (3, 3, c, c))
        self._bn_1 = self._batch_norm("bn_1", c, affine=True)
        self.built = True

    def call(self, x, training=None):
        """Returns (s0, s1): the outputs of stem0 and stem1."""
        x = tf.nn.relu(self._bn(kernels.conv2d(x, self.kernel_0a, 2, 1), self._bn_0a, training))
        s0 = self._bn(kernels.conv2d(x, self.kernel_0b, 2, 1), self._bn_0b, training)
        s1 = self._bn(kernels.conv2d(tf.nn.relu(s0), self.kernel_1, 2, 1), self._bn_1, training)
        return s0, s1

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels, "channels": self.channels}


@keras.saving.register_keras_serializable(package="darts_tf")
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


@keras.saving.register_keras_serializable(package="darts_tf")
class AuxiliaryHead(ops.Op):
    """ReLU -> AvgPool 5 (stride 3 CIFAR / 2 ImageNet, no padding) -> conv1x1 128 -> BN ->
    ReLU -> conv2x2 768 -> BN (CIFAR only: the reference omits it for ImageNet) -> ReLU -> linear."""

    def __init__(self, in_channels, num_classes, pool_stride=3, last_bn=True, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.pool_stride, self.last_bn = pool_stride, last_bn

    def build(self, input_shape=None):
        self.kernel_1 = self._kernel("kernel_1", (1, 1, self.in_channels, 128))
        self._bn_1 = self._batch_norm("bn_1", 128, affine=True)
        self.kernel_2 = self._kernel("kernel_2", (2, 2, 128, 768))
        if self.last_bn:
            self._bn_2 = self._batch_norm("bn_2", 768, affine=True)
        with keras.name_scope(self.name):
            self.classifier = Classifier(768, self.num_classes, name="classifier")
            self.classifier.build(None)
        self.built = True

    def call(self, x, training=None):
        x = tf.nn.avg_pool2d(tf.nn.relu(x), 5, self.pool_stride, "VALID")
        x = tf.nn.relu(self._bn(kernels.conv2d(x, self.kernel_1), self._bn_1, training))
        x = kernels.conv2d(x, self.kernel_2)
        if self.last_bn:
            x = self._bn(x, self._bn_2, training)
        x = tf.nn.relu(x)
        return self.classifier(tf.reshape(x, [tf.shape(x)[0], 768]))

    def get_config(self):
        return {**super().get_config(), "in_channels": self.in_channels,
                "num_classes": self.num_classes, "pool_stride": self.pool_stride,
                "last_bn": self.last_bn}
