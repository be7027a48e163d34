"""Test setup shared by all test modules."""
import os

# Quiet TensorFlow's C++ start-up logging; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402  (after the logging setting)

# Two logical CPUs, so that MirroredStrategy tests have two replicas on this machine. This must
# happen before TensorFlow initialises its devices, i.e. before any test creates a tensor.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
