"""darts-tf: DARTS (Liu, Simonyan, Yang, ICLR 2019) for TensorFlow 2 / Keras 3.

Public names:
  Genotype, PRIMITIVES, load_genotype, genotypes.DARTS_V1, genotypes.DARTS_V2
  random_genotype                the random-search baseline: a cell drawn uniformly
  Supernet                       the search network (alphas apart from weights)
  NetworkCIFAR, NetworkImageNet  fixed networks rebuilt from a genotype
  LayerChoice, InputChoice       the general search-space API (NNI style)

Names are imported on first access (PEP 562), so `import darts_tf` is cheap and
the genotype names work without TensorFlow or Keras; the models import them.
A `.keras` file of a darts_tf model loads once its class has been imported
(e.g. after `from darts_tf import NetworkCIFAR`): Keras finds it by registered name.
"""
import importlib

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
