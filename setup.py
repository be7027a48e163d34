"""darts-tf: DARTS (Liu et al., ICLR 2019) for TensorFlow 2 / Keras 3."""
from setuptools import find_packages, setup

setup(
    name="darts-tf",
    version="0.1.0",
    description="Differentiable Architecture Search (DARTS) for TensorFlow 2 and Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["darts_tf", "darts_tf.*", "trainers", "trainers.*", "configs", "configs.*"]),
    install_requires=[
        "tensorflow>=2.21",
        "keras>=3",
        "tensorflow-datasets",
        "keras-tuner",
        "absl-py",
        # keras-tuner imports tensorboard in every trial.
        "tensorboard",
        # tfds needs it to prepare data sets on Python 3.11.
        "importlib_resources",
        # Its bundled load_digits is the embedded default data set.
        "scikit-learn",
        # Cell drawings (PNG) written by the search.
        "matplotlib",
        # The LiteRT interpreter that runs exported .tflite files (tf.lite.Interpreter is
        # deprecated in its favour since TF 2.19).
        "ai-edge-litert",
        # ml_dtypes 0.7.0 takes 1.3 s to import (0.6.0: 0.01 s; measured on an AMD EPYC,
        # 2026-12-04, BENCHMARKS.md), and TensorFlow imports it in every process.
        "ml_dtypes>=0.5.1,<0.7",
    ],
    extras_require={"test": ["pytest", "pytest-xdist"]},
    entry_points={
        "console_scripts": [
            # console scripts exit with the returned status
            "darts-search=trainers.cli:search_main",
            "darts-retrain=trainers.cli:retrain_main",
            "darts-evaluate=trainers.cli:evaluate_main",
            "darts-pipeline=trainers.cli:pipeline_main",
            "darts-export=trainers.cli:export_main",
            "darts-predict=trainers.cli:predict_main",
        ],
    },
)
