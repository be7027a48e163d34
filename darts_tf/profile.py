"""Counting a model's multiply-adds from its traced inference graph.

Rule (the same as the reference count in tests/data/reference_counts.json,
made with forward hooks on PyTorch's Conv2d and Linear): a convolution adds
output elements * kernel height * kernel width * input channels per group; a
depthwise convolution output elements * kernel height * kernel width; a matrix
multiply rows * inner * columns. Pooling, batch norm, activations, additions and
biases are not counted. Counts are per example (traced at batch 1). FactorizedReduce,
which runs as one 2x2 conv in which each output channel has one nonzero tap of four
(`darts_tf.kernels.factorized_reduce`), counts as the reference's two 1x1 convs.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from darts_tf import kernels


def count_multiply_adds(model, input_shape) -> dict[str, int]:
    """Multiply-adds of one inference pass of `model` on one (H, W, C) image.

    Returns:
      {"total": ..., "conv": ..., "depthwise": ..., "matmul": ...}
    """
    spec = tf.TensorSpec((1, *input_shape), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    counts = {"conv": 0, "depthwise": 0, "matmul": 0}
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kh, kw, cin, _ = op.inputs[1].shape
            if op.name.rsplit("/", 1)[-1].startswith(kernels.FACTORIZED_REDUCE_CONV):
                kh = kw = 1  # each output channel's filter has one nonzero tap of four
            counts["conv"] += _output_elements(op) * kh * kw * cin
        elif op.type == "DepthwiseConv2dNative":
            kh, kw, _, _ = op.inputs[1].shape
            counts["depthwise"] += _output_elements(op) * kh * kw
        elif op.type in ("MatMul", "BatchMatMulV2"):
            a = op.inputs[0].shape
            inner = a[-1] if not op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x") \
                else a[-2]
            counts["matmul"] += int(np.prod(op.outputs[0].shape)) * int(inner)
    counts["total"] = sum(counts.values())
    return counts


def _output_elements(op) -> int:
    """Output elements of a conv; a dilated conv TF runs as SpaceToBatch -> conv ->
    BatchToSpace computes on padded blocks, so count the cropped result instead."""
    consumers = op.outputs[0].consumers()
    if len(consumers) == 1 and consumers[0].type == "BatchToSpaceND":
        return int(np.prod(consumers[0].outputs[0].shape))
    return int(np.prod(op.outputs[0].shape))
