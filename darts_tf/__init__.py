"""darts-tf: DARTS (Liu, Simonyan, Yang, ICLR 2019) for TensorFlow 2 / Keras 3.

Public names:
  Genotype, PRIMITIVES, load_genotype, genotypes.DARTS_V1, genotypes.DARTS_V2
  Supernet                       the search network (alphas apart from weights)
  NetworkCIFAR, NetworkImageNet  fixed networks rebuilt from a genotype
  LayerChoice, InputChoice       the general search-space API (NNI style)
"""
from darts_tf.genotype import PRIMITIVES, Genotype, GenotypeError, derive_genotype, load_genotype
from darts_tf.networks import NetworkCIFAR, NetworkImageNet
from darts_tf.supernet import Supernet

try:  # The choice API lands separately; keep the package importable meanwhile.
    from darts_tf.choice import InputChoice, LayerChoice, fixed_arch
except ImportError:  # pragma: no cover
    pass

try:  # TEMP until genotypes.py lands
    from darts_tf import genotypes  # noqa: E402,F401
except ImportError:
    pass

__version__ = "0.1.0"
