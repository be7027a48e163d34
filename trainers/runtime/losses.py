"""The one cross-entropy and accuracy count used by the search, the retraining and the
evaluation. Losses of float16/bfloat16 logits are computed in float32."""
from __future__ import annotations

import tensorflow as tf


def cross_entropy(labels, logits, label_smoothing: float = 0.0, num_classes: int | None = None):
    """Per-example softmax cross-entropy from logits.

    With smoothing eps the target is (1 - eps) * onehot + eps / K, the reference's
    CrossEntropyLabelSmooth; without, TensorFlow's fused sparse cross-entropy.
    """
    if logits.dtype in (tf.float16, tf.bfloat16):
        logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if not label_smoothing:
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    num_classes = num_classes or logits.shape[-1]
    target = (1.0 - label_smoothing) * tf.one_hot(labels, num_classes) + (
        label_smoothing / num_classes)
    return -tf.reduce_sum(target * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def global_mean(per_example, global_batch_size: int):
    """Sum over this replica's examples / the global batch size (replica shares sum to the
    batch mean): `tf.nn.compute_average_loss`'s value without its stateful Assert op, which
    would make every traced pass of the architect a StatefulPartitionedCall."""
    total = tf.reduce_sum(per_example)
    return total / tf.cast(global_batch_size, total.dtype)


def count_correct(labels, logits):
    """How many labels equal the argmax of their logits (float32)."""
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32))
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def count_in_top_k(labels, logits, k: int):
    """How many labels are among the top-k logits (ties at the boundary count; float32)."""
    hits = tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k)
    return tf.reduce_sum(tf.cast(hits, tf.float32))
