"""Where the images come from: data set specs, scikit-learn's digits, tfds data sets
prepared on disk (never downloaded) and image folders (`folders.py`), each as
(raw image, label) examples.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
# Shuffle buffers hold encoded images: 50k CIFAR PNGs ~ 120 MB (a full shuffle);
# 10k ImageNet JPEGs ~ 1.1 GB, on top of per-epoch file shuffling.
_SHUFFLE_BUFFER = 50_000
_SHUFFLE_BUFFER_IMAGENET = 10_000


class DataError(ValueError):
    """A data set is unknown, not prepared in data_dir, or unusable."""


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What a trainer needs to know about a data set to build and train a model.

    Attributes:
      name: data set name ("digits", a TFDS name).
      num_classes: number of labels.
      image_shape: (H, W, C) of the model input.
      mean, std: per-channel normalisation, on [0,1]-scaled pixels.
      num_train, num_test: split sizes (test = ImageNet's validation split).
      crop_padding, flip, cutout: the default retrain augmentation (0 disables).
      class_names: the name of each label (exported with the model).
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int
    num_test: int
    crop_padding: int
    flip: bool
    cutout: int
    class_names: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The spec as JSON: stored with a run (data.json) and with its exported models."""
        fields = dataclasses.asdict(self)
        fields["class_names"] = list(self.class_names or (str(i) for i in range(self.num_classes)))
        return json.dumps(fields, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> "DataSpec":
        try:
            fields = json.loads(text)
            fields = {f.name: fields[f.name] for f in dataclasses.fields(cls)}
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{source}: not a data set description ({err}).") from None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


_KNOWN_SPECS = {spec.name: spec for spec in (
    # mean/std of the 1437 training images /16 (np.mean/np.std over all pixels).
    DataSpec("digits", 10, (8, 8, 1), (0.30538339422407795,), (0.3761191680900195,),
             1437, 360, crop_padding=1, flip=False, cutout=0,
             class_names=tuple(str(i) for i in range(10))),
    # quark0/darts cnn/utils.py _data_transforms_cifar10; cutout 16 as `--cutout`.
    DataSpec("cifar10", 10, (32, 32, 3), (0.49139968, 0.48215827, 0.44653124),
             (0.24703233, 0.24348505, 0.26158768), 50_000, 10_000,
             crop_padding=4, flip=True, cutout=16),
    DataSpec("cifar100", 100, (32, 32, 3), (0.50707516, 0.48654887, 0.44091784),
             (0.26733429, 0.25643846, 0.27615047), 50_000, 10_000,
             crop_padding=4, flip=True, cutout=16),
    # Train uses RandomResizedCrop + flip + ColorJitter (cnn/train_imagenet.py).
    DataSpec("imagenet2012", 1000, (224, 224, 3), (0.485, 0.456, 0.406),
             (0.229, 0.224, 0.225), 1_281_167, 50_000,
             crop_padding=0, flip=True, cutout=0),
)}


def _tfds():
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    return tfds


def _data_dir_text(data_dir: str | None) -> str:
    return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
        "~/tensorflow_datasets")


@functools.lru_cache(maxsize=None)
def digits_arrays():
    """((x_train, y_train), (x_test, y_test)): the fixed stratified 1437/360 split."""
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # values 0..16
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=360, stratify=labels, random_state=0)
    for array in (x_train, x_test, y_train, y_test):
        array.flags.writeable = False  # shared by every caller through the cache
    return (x_train, y_train), (x_test, y_test)


def _builder(name: str, data_dir: str | None):
    tfds = _tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as err:
        raise DataError(
            f"Unknown data set {name!r}: not 'digits', not a TFDS builder and not prepared "
            f"in {_data_dir_text(data_dir)}. Choices: 'digits' (built in, offline), "
            f"{', '.join(repr(n) for n in _KNOWN_SPECS if n != 'digits')}, or any TFDS image "
            "classification data set (tfds.list_builders()) prepared in data_dir.") from err


def _feature_keys(info, name: str) -> tuple[str, str]:
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        keys = ("image", "label")  # e.g. data sets stored with store_as_tfds_dataset
    if any(k not in info.features for k in keys):
        raise DataError(f"Data set {name!r} has no {keys} features; it has "
                        f"{list(info.features)}. Only image classification data sets are supported.")
    return keys


def get_spec(name: str, data_dir: str | None = None, image_size: int | None = None) -> DataSpec:
    """Returns the spec of data set `name`; known data sets need no data on disk.

    Args:
      name: "digits", "cifar10", "cifar100", "imagenet2012", "folder" (an image folder,
        `folders.py`) or any TFDS image classification data set prepared in `data_dir`.
      data_dir: TFDS data directory (default ~/tensorflow_datasets); the image folder.
      image_size: "folder" only: the side its images are resized to (None: their own).

    Raises:
      DataError: unknown name, not prepared, not an image classification set, or an
        unusable image folder (the message names the path).
    """
    if name == "folder":
        from trainers.data import folders  # pylint: disable=import-outside-toplevel

        found = folders.scan(data_dir, image_size)
        return DataSpec("folder", len(found.class_names), found.image_shape, found.mean,
                        found.std, len(found.splits["train"][0]), len(found.splits["test"][0]),
                        crop_padding=max(1, found.image_shape[0] // 8), flip=True, cutout=0,
                        class_names=found.class_names)
    if image_size is not None:
        raise DataError(f"image_size={image_size} applies to dataset='folder' only; "
                        f"{name!r} has images of a fixed size (set image_size=None).")
    if name in _KNOWN_SPECS:
        return _KNOWN_SPECS[name]
    info = _builder(name, data_dir).info
    image_key, label_key = _feature_keys(info, name)
    shape = tuple(info.features[image_key].shape)
    if len(shape) != 3 or None in shape:
        raise DataError(f"Data set {name!r} has images of shape {shape}; only fixed-size "
                        "(H, W, C) images are supported (and imagenet2012, which is resized).")
    if "train" not in info.splits:
        raise _absent_error(name, data_dir)
    test = _resolve_split("test", info.splits)
    num_test = info.splits[test].num_examples if test in info.splits else 0
    channels = shape[-1]
    names = tuple(getattr(info.features[label_key], "names", None) or ())
    return DataSpec(name, int(info.features[label_key].num_classes), shape,
                    (0.5,) * channels, (0.5,) * channels, info.splits["train"].num_examples,
                    num_test, crop_padding=0, flip=True, cutout=0, class_names=names)


def _absent_error(name: str, data_dir: str | None, manual: bool = False) -> DataError:
    where = _data_dir_text(data_dir)
    how = (f"run `tfds build {name} --data_dir={where}` on a machine with network access and "
           f"copy that directory here (nothing is downloaded from this code)")
    if manual or name == "imagenet2012":
        how += f"; {name} needs its manual download in {where}/downloads/manual first"
    return DataError(f"Data set {name!r} is not prepared in {where}. To prepare it offline, {how}.")


def _resolve_split(split: str, splits) -> str:
    # ImageNet has no labelled test split: evaluate on validation, as the reference does.
    if split == "test" and splits and "test" not in splits and "validation" in splits:
        return "validation"
    return split


def stream_seed(stream: str, seed: int, epoch: int) -> int:
    """A seed for one data stream of one epoch: a hash of (stream, seed, epoch)."""
    digest = hashlib.sha256(f"{stream}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)


IN_MEMORY = ("digits", "folder")  # examples listed in memory: sliced and permuted by index


def source(name, split, start, stop, data_dir, shuffle_seed=None, image_size=None):
    """(dataset of (raw image, int32 label), decode: raw -> float32 [0,1] image).

    Keeps examples [start, stop) of `split`; with shuffle_seed, in a seeded order.
    A folder's raw image is its file path (decoded, resized to `image_size`, in `decode`).
    """
    if name in IN_MEMORY:
        if split not in ("train", "test"):
            raise DataError(f"{name} has splits 'train' and 'test'; received split={split!r}.")
        if name == "digits":
            images, labels = digits_arrays()[0 if split == "train" else 1]
            decode = lambda image: image  # noqa: E731  (already [0, 1] floats)
        else:
            from trainers.data import folders  # pylint: disable=import-outside-toplevel

            found = folders.scan(data_dir, image_size)
            images, labels = (np.asarray(a) for a in found.splits[split])
            labels = labels.astype(np.int32)
            size = None if image_size is None else (image_size, image_size)

            def decode(path):
                image = folders.decode_file(path, found.image_shape[-1], size)
                image.set_shape(found.image_shape)  # the same for all (folders.scan checks)
                return tf.image.convert_image_dtype(image, tf.float32)
        images, labels = images[start:stop], labels[start:stop]
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(labels))
            images, labels = images[order], labels[order]
        return tf.data.Dataset.from_tensor_slices((images, labels)), decode

    tfds = _tfds()
    builder = _builder(name, data_dir)
    image_key, label_key = _feature_keys(builder.info, name)
    split = _resolve_split(split, builder.info.splits)
    if start is not None or stop is not None:
        split = f"{split}[{'' if start is None else start}:{'' if stop is None else stop}]"
    # Ordered data sets (disable_shuffling) refuse file shuffling; the buffer still shuffles.
    shuffle_files = shuffle_seed is not None and not builder.info.disable_shuffling
    try:  # Images stay encoded until after the shuffle buffer: decoded ImageNet would not fit.
        ds = tfds.load(
            name, data_dir=data_dir, download=False,  # offline: never fetch
            split=split, decoders={image_key: tfds.decode.SkipDecoding()},
            shuffle_files=shuffle_files,
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed,
                                        shuffle_reshuffle_each_iteration=False))
    except AssertionError as err:  # tfds: "Dataset x: could not find data in DIR"
        raise _absent_error(name, data_dir, bool(getattr(
            builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))) from err
    ds = ds.map(lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)))
    if shuffle_seed is not None:
        cap = _SHUFFLE_BUFFER_IMAGENET if name == "imagenet2012" else _SHUFFLE_BUFFER
        size = int(ds.cardinality())
        ds = ds.shuffle(min(size, cap) if size > 0 else cap, seed=shuffle_seed,
                        reshuffle_each_iteration=False)
    feature = builder.info.features[image_key]
    return ds, lambda raw: tf.image.convert_image_dtype(feature.decode_example(raw), tf.float32)
