"""Importing TensorFlow for a darts-tf program without the Keras extras it does not use.

Keras 3 imports scikit-learn (for `keras.wrappers`) and `matplotlib.pyplot` (for
`keras.visualization`) while TensorFlow is imported, whenever they are installed; both are
darts-tf dependencies (the digits data set, the cell drawings), so every darts-tf program paid
for them: 1.7 s of a 5.3 s `import tensorflow` on an AVX2 AMD EPYC (BENCHMARKS.md, "Start-up:
Keras' scikit-learn and pyplot imports"). Keras guards both imports with `except ImportError`,
so `import_tensorflow` imports TensorFlow while the two packages read as not installed, then
makes them importable again: the digits loader and the cell drawings import what they need
when they need it.

What this leaves out, in that process only: `keras.wrappers`' scikit-learn estimators and
`keras.visualization`'s pyplot galleries (they report scikit-learn or matplotlib as not
installed). The command-line programs and the benchmarks use neither. A library user who
imports TensorFlow themselves gets Keras as it is; nothing here runs on `import darts_tf`.
"""
from __future__ import annotations

import sys

# Packages that Keras imports eagerly when present and darts-tf programs import lazily.
KERAS_EXTRAS = ("sklearn", "matplotlib")


def import_tensorflow():
    """Imports TensorFlow and Keras without `KERAS_EXTRAS`; returns the `tensorflow` module.

    A no-op (beyond returning the module) once TensorFlow has been imported. The extras are
    importable again when this returns, whether the import succeeded or raised.
    """
    if "tensorflow" in sys.modules:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        return tf
    hidden = [name for name in KERAS_EXTRAS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # `import name` raises ImportError while this holds
    try:
        # Keras named too: TensorFlow imports it today, but only Keras imports the extras.
        import keras  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return tf
