"""darts-tf: DARTS (Liu, Simonyan, Yang, ICLR 2019) for TensorFlow 2 / Keras 3.

Public names:
  Genotype, PRIMITIVES, load_genotype, genotypes.DARTS_V1, genotypes.DARTS_V2
  Supernet                       the search network (alphas apart from weights)
  NetworkCIFAR, NetworkImageNet  fixed networks rebuilt from a genotype
  LayerChoice, InputChoice       the general search-space API (NNI style)
"""
# genotype first: the modules after it import from it.
from darts_tf.genotype import PRIMITIVES, Genotype, GenotypeError, derive_genotype, load_genotype
from darts_tf import genotypes, search_space
from darts_tf.choice import InputChoice, LayerChoice, collect_choices, export_decisions, fixed_arch
from darts_tf.networks import NetworkCIFAR, NetworkImageNet
from darts_tf.profile import count_multiply_adds
from darts_tf.supernet import Supernet

__all__ = ["PRIMITIVES", "Genotype", "GenotypeError", "derive_genotype", "load_genotype",
           "genotypes", "search_space", "InputChoice", "LayerChoice", "collect_choices",
           "export_decisions", "fixed_arch", "NetworkCIFAR", "NetworkImageNet",
           "count_multiply_adds", "Supernet"]
__version__ = "0.1.0"
