"""Data for every stage: where images come from (`sources`), the search, retraining and
evaluation pipelines (`pipelines`), and the split of in-memory arrays for tuner trials
(`arrays`).

Data sets: "digits" (scikit-learn's bundled 8x8 digits, offline, the default), any
TFDS image classification data set already prepared in `data_dir` (cifar10, cifar100,
imagenet2012, ...) and "folder", your own images: `data_dir` holds one sub-folder per
class (`folders`). Nothing is ever downloaded.
"""
from trainers.data.arrays import search_data_fn
from trainers.data.pipelines import (augment_image, eval_data, eval_data_from_arrays, normalize,
                                     random_cutout, search_data, train_data,
                                     train_data_from_arrays)
from trainers.data.sources import DataError, DataSpec, digits_arrays, get_spec, stream_seed

__all__ = ["DataError", "DataSpec", "augment_image", "digits_arrays", "eval_data",
           "eval_data_from_arrays", "get_spec", "normalize", "random_cutout", "search_data",
           "search_data_fn", "stream_seed", "train_data", "train_data_from_arrays"]
