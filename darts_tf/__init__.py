"""darts-tf: DARTS (Liu, Simonyan, Yang, ICLR 2019) for TensorFlow 2 / Keras 3.

Public names:
  Genotype, PRIMITIVES, load_genotype, genotypes.DARTS_V1, genotypes.DARTS_V2
  random_genotype                the random-search baseline: a cell drawn uniformly
  Supernet                       the search network (alphas apart from weights)
  NetworkCIFAR, NetworkImageNet  fixed networks rebuilt from a genotype
  LayerChoice, InputChoice       the general search-space API (NNI style)

Names are imported on first access (PEP 562), so `import darts_tf` is cheap and
the genotype names work without TensorFlow or Keras; the models import them.
Importing darts_tf before TensorFlow turns TensorFlow's oneDNN CPU kernels on for x86
CPUs where TensorFlow leaves them off (`TF_ENABLE_ONEDNN_OPTS=1` unless already set;
see `_prefer_onednn`).
A `.keras` file of a darts_tf model loads once its class has been imported
(e.g. after `from darts_tf import NetworkCIFAR`): Keras finds it by registered name.
"""
import importlib
import os
import platform
import sys


def _on_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _prefer_onednn() -> None:
    """Turns on TensorFlow's oneDNN CPU kernels on x86 CPUs, unless the user chose.

    TensorFlow turns them on by default only on x86 CPUs with AVX-512 VNNI or BF16, AVX-VNNI
    or AMX;
    elsewhere (AVX2 CPUs: most AMD EPYCs before Zen 4, older Intel Xeons) it runs its Eigen
    kernels, with which the search step took 2.3x and the retraining step 1.9x as long
    (BENCHMARKS.md, "oneDNN on a CPU without AVX-512"). TensorFlow reads the setting once,
    when it is imported, so it is set here, before darts_tf imports TensorFlow; after
    TensorFlow has been imported it is too late, and `kernels.onednn_enabled` warns when
    the kernels are off. `TF_ENABLE_ONEDNN_OPTS=0` (or 1) in the environment wins.
    """
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ or "tensorflow" in sys.modules or not _on_x86():
        return
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"


_prefer_onednn()

# name -> the module that defines it; a name that is its own module is a submodule.
_LAZY = {
    "PRIMITIVES": "darts_tf.genotype",
    "Genotype": "darts_tf.genotype",
    "GenotypeError": "darts_tf.genotype",
    "derive_genotype": "darts_tf.genotype",
    "load_genotype": "darts_tf.genotype",
    "random_genotype": "darts_tf.genotype",
    "genotypes": "darts_tf.genotypes",
    "search_space": "darts_tf.search_space",
    "InputChoice": "darts_tf.choice",
    "LayerChoice": "darts_tf.choice",
    "collect_choices": "darts_tf.choice",
    "export_decisions": "darts_tf.choice",
    "fixed_arch": "darts_tf.choice",
    "NetworkCIFAR": "darts_tf.networks",
    "NetworkImageNet": "darts_tf.networks",
    "count_multiply_adds": "darts_tf.profile",
    "Supernet": "darts_tf.supernet",
}

__all__ = list(_LAZY)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
