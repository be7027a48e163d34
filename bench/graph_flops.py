"""Floating-point work of a traced step, counted on its graph.

The ops TensorFlow runs are those the function's outputs and stateful ops (variable
updates) depend on; the rest is pruned before execution (on the reference
first-order step this live set is 25,407 of 31,534 traced ops, the same as
grappler's model_pruner leaves). Each live op is counted with TensorFlow's
registered "flops" statistics (convolutions, their input and filter gradients,
matmuls, pooling and elementwise ops; a multiply-add is 2); the depthwise
convolution gradients, which have none registered, count 2 x k x k per output
element, as the forward depthwise op. Batch norm and ReLU (and their gradients)
have no statistics and are not counted: a few flops per element, well under 1% here.
"""
from __future__ import annotations

import collections

import numpy as np
import darts_tf  # noqa: F401  (before TensorFlow: it sets its oneDNN default)
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

_DEPTHWISE_GRADS = ("DepthwiseConv2dNativeBackpropInput", "DepthwiseConv2dNativeBackpropFilter")


_CALLS = ("PartitionedCall", "StatefulPartitionedCall")


def live_ops(graph, outputs):
    """The ops `outputs` and the graph's stateful ops depend on (what is executed)."""
    ops = graph.get_operations()
    stack = [t.op for t in outputs] + [
        op for op in ops
        if op._is_stateful and op.type not in ("ReadVariableOp", "VarHandleOp", "Placeholder")  # pylint: disable=protected-access
        and op.type not in _CALLS]
    seen = set()
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return [op for op in ops if op in seen]


def _live_call_outputs(graph, outputs, live):
    """{call op: indices of its outputs that a live op or `outputs` uses}."""
    used = collections.defaultdict(set)
    for t in list(outputs) + [t for op in live for t in op.inputs]:
        if t.op.type in _CALLS:
            used[t.op].add(t.value_index)
    return used


def _executed(graph, outputs):
    """(graph, op) for every executed op, inside nested function calls too.

    A nested tf.function is inlined where the step is instantiated, and what its
    caller does not use is pruned: only the ops behind its used outputs run.
    """
    live = live_ops(graph, outputs)
    calls = _live_call_outputs(graph, outputs, live)
    for op in live:
        if op.type not in _CALLS:
            yield graph, op
            continue
        body = graph._functions[op.get_attr("f").name].graph  # pylint: disable=protected-access
        yield from _executed(body, [body.outputs[i] for i in sorted(calls.get(op, ()))])


def _flops(graph, op):
    if op.type in _DEPTHWISE_GRADS:
        grad_shape = op.inputs[2].shape  # the output gradient: one value per output element
        if op.type.endswith("Filter"):
            kernel = tf.get_static_value(op.inputs[1])
        else:
            kernel = op.inputs[1].shape
        return 2 * int(np.prod(grad_shape)) * int(kernel[0]) * int(kernel[1])
    try:
        return tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
    except (ValueError, TypeError, KeyError):
        return None


def count_flops(concrete_function) -> tuple[int, dict]:
    """(total flops, {op type: flops}) of one call of a traced tf.function."""
    graph = concrete_function.graph
    by_type = collections.Counter()
    for op_graph, op in _executed(graph, graph.outputs):
        value = _flops(op_graph, op)
        if value:
            by_type[op.type] += value
    return sum(by_type.values()), dict(by_type)
