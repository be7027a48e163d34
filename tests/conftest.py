"""Test setup shared by all test modules."""
import os

# Quiet TensorFlow's C++ start-up logging; must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# No step cache unless a test asks for one (tests count traces; nothing written to ~/.cache).
os.environ["DARTS_TF_STEP_CACHE"] = "off"

import pytest  # noqa: E402
import darts_tf  # noqa: E402,F401  (before TensorFlow: its oneDNN setting, darts_tf/__init__.py)
import tensorflow as tf  # noqa: E402  (after the logging setting)

# Two logical CPUs, so that MirroredStrategy tests have two replicas on this machine. This must
# happen before TensorFlow initialises its devices, i.e. before any test creates a tensor.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@pytest.fixture(name="mirrored", scope="session")
def fixture_mirrored():
    """Two replicas on the two logical CPUs. One per process: a second MirroredStrategy reuses
    the first one's collective keys (tests in several modules failed on a shape mismatch in a
    collective when each module made its own)."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
