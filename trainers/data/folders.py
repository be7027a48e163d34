"""Image folders as a data set (`dataset="folder"`, `data_dir=DIR`).

Layout: one sub-folder per class, holding JPEG, PNG, BMP or GIF files (searched
recursively, as `keras.utils.image_dataset_from_directory` does; a GIF gives its first
frame):

    DIR/cat/001.jpg, DIR/dog/x.png, ...                  split here: see below
    DIR/train/cat/..., DIR/train/dog/..., DIR/test/...    these two folders are the splits

Class names are the sorted sub-folder names; labels are their indices. Without
`train/` and `test/` folders, TEST_FRACTION of each class (at least one image of a
class of two or more) is the test split: the images whose hash of (SPLIT_SEED, class,
file name) is smallest. The split is stratified, the same on every machine and for every
run seed, and stable: adding or removing an image moves no other image between splits
unless it changes its class's test count.

Images are decoded with `tf.io.decode_image` (no hand-written decoding). Every image is
decoded once when the data set is first used in a process (`scan`): an unreadable or
corrupt file is skipped, with a warning that gives the count and the first paths (the
skipped files are listed in the run's data.json); grayscale images (1 channel, or 2 with
alpha) give a 1-channel data set and colour images (3, or 4 with alpha) a 3-channel one;
a mix of both is refused. Images are resized to `image_size` x `image_size` (bilinear,
antialiased, rounded back to uint8: the stored form of an example); `image_size=None`
keeps the images' own size, which must then be the same for all. The normalisation
statistics are the per-channel mean and standard deviation of the training split's
[0, 1]-scaled pixels.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os

import numpy as np
import tensorflow as tf

from trainers.data.sources import DataError

logger = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed: the test split must not move with the run's seed
_SHOWN = 5      # paths named in a message


@dataclasses.dataclass(frozen=True)
class Folder:
    """What `scan` found: the valid files of each split, their shape and statistics."""
    root: str
    class_names: tuple[str, ...]
    splits: dict            # split -> (paths, labels): test by (label, path), train shuffled
    skipped: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _class_dirs(directory: str) -> list[str]:
    return sorted(d for d in os.listdir(directory)
                  if not d.startswith(".") and os.path.isdir(os.path.join(directory, d)))


def _images(directory: str) -> list[str]:
    found = []
    for base, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(base, f) for f in sorted(files)
                  if f.lower().endswith(EXTENSIONS) and not f.startswith(".")]
    return found


def _listing(directory: str, classes: list[str]) -> list[tuple[str, int]]:
    return [(path, label) for label, name in enumerate(classes)
            for path in _images(os.path.join(directory, name))]


def _split_key(root: str, path: str) -> bytes:
    return hashlib.sha256(f"{SPLIT_SEED}:{os.path.relpath(path, root)}".encode()).digest()


def _split(root: str, examples: list[tuple[str, int]]) -> tuple[list, list]:
    """(train, test): per class, the TEST_FRACTION of images with the smallest hash key."""
    train, test = [], []
    for label in sorted({label for _, label in examples}):
        paths = sorted((p for p, lab in examples if lab == label),
                       key=lambda p: _split_key(root, p))
        n_test = max(1, round(len(paths) * TEST_FRACTION)) if len(paths) > 1 else 0
        test += [(p, label) for p in paths[:n_test]]
        train += [(p, label) for p in paths[n_test:]]
    return sorted(train, key=lambda e: (e[1], e[0])), sorted(test, key=lambda e: (e[1], e[0]))


def to_model_image(image: tf.Tensor, channels: int, size: tuple[int, int] | None) -> tf.Tensor:
    """A decoded uint8 image (H, W, any channels) -> the stored uint8 form of an example:
    alpha dropped, grey or colour as `channels`, resized to `size` (None: kept)."""
    have = image.shape[-1]
    if have in (2, 4):
        image = image[..., :have - 1]
    if channels == 1 and image.shape[-1] == 3:
        image = tf.image.rgb_to_grayscale(image)
    if size is not None:
        image = tf.image.resize(image, size, antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image


def decode_file(path, channels: int, size: tuple[int, int] | None) -> tf.Tensor:
    """An image file -> uint8 (H, W, channels) at `size`: graph-safe (used in tf.data)."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return to_model_image(image, channels, size)


def _decoded(path: str):
    try:
        return tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError,
            tf.errors.PermissionDeniedError):
        return None


def _shown(paths) -> str:
    paths = list(paths)
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(paths[:_SHOWN]) + more


def _layout(root: str | None) -> tuple[list[str], str, dict]:
    """(class names, the classes' folder, {"train": [(path, label)], "test": the same or
    None: to be split}) before decoding; DataError for a bad layout."""
    if not root:
        raise DataError("dataset='folder' needs data_dir: a directory with one sub-folder "
                        "of images per class.")
    if not os.path.isdir(root):
        raise DataError(f"Image folder {root} does not exist (data_dir={root!r}).")
    where, test = root, None
    if "train" in _class_dirs(root):
        where = os.path.join(root, "train")
    classes = _class_dirs(where)
    if not classes:
        raise DataError(f"Image folder {where} has no class sub-folders: put each class's "
                        f"images ({', '.join(EXTENSIONS)}) in a sub-folder named after it.")
    train = _listing(where, classes)
    if where != root and os.path.isdir(os.path.join(root, "test")):
        extra = sorted(set(_class_dirs(os.path.join(root, "test"))) - set(classes))
        if extra:
            raise DataError(f"{os.path.join(root, 'test')} has classes {extra} that {where} "
                            "does not have.")
        test = _listing(os.path.join(root, "test"), classes)
    if not train:
        raise DataError(f"Image folder {where} holds no images ({', '.join(EXTENSIONS)}) "
                        f"in its class sub-folders {classes}.")
    if len(classes) < 2:
        raise DataError(f"Image folder {where} has a single class ({classes[0]!r}); a "
                        "classifier needs at least two class sub-folders.")
    return classes, where, {"train": train, "test": test}


def _statistics(image, size) -> tuple[int, np.ndarray, np.ndarray]:
    """(pixels, per-channel sum, sum of squares) of an image as the model sees it."""
    channels = 1 if image.shape[-1] in (1, 2) else 3
    pixels = to_model_image(image, channels, size).numpy().reshape(-1, channels)
    pixels = pixels.astype(np.float64) / 255.0
    return len(pixels), pixels.sum(0), (pixels ** 2).sum(0)


@functools.lru_cache(maxsize=8)
def scan(root: str | None, image_size: int | None) -> Folder:
    """Lists and decodes every image of the folder once (cached per process), splits the
    readable ones and computes the training split's statistics.

    Raises:
      DataError: a missing or empty directory, a single class, a class without training
        images, mixed grey and colour images, or different image sizes with
        image_size=None; each names the path(s).
    """
    classes, where, listed = _layout(root)
    size = None if image_size is None else (image_size, image_size)
    kept, skipped, shapes, sums = {}, [], {}, {}
    for split, examples in listed.items():
        kept[split] = []
        for path, label in examples or ():
            image = _decoded(path)
            if image is None or len(image.shape) != 3 or 0 in image.shape:
                skipped.append(path)
                continue
            shapes[path] = tuple(int(d) for d in image.shape)
            kept[split].append((path, label))
            if split == "train":
                sums[path] = _statistics(image, size)
    if skipped:
        logger.warning("Skipped %d unreadable or corrupt image file(s) in %s: %s",
                       len(skipped), root, _shown(skipped))
    if not kept["train"]:
        raise DataError(f"Image folder {root}: none of its {len(skipped)} image files "
                        f"could be decoded ({_shown(skipped)}).")
    if listed["test"] is None:
        kept["train"], kept["test"] = _split(root, kept["train"])
    empty = [c for label, c in enumerate(classes)
             if not any(lab == label for _, lab in kept["train"])]
    if empty:
        raise DataError(f"Image folder {where}: the class sub-folders {empty} hold no "
                        f"readable training images ({', '.join(EXTENSIONS)}).")
    grey = [p for p, s in shapes.items() if s[-1] in (1, 2)]
    colour = [p for p, s in shapes.items() if s[-1] in (3, 4)]
    if grey and colour:
        raise DataError(f"Image folder {root} mixes grayscale images ({_shown(grey)}) and "
                        f"colour images ({_shown(colour)}); convert them to one kind.")
    sizes = {s[:2]: p for p, s in shapes.items()}
    if image_size is None and len(sizes) > 1:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise DataError(f"Image folder {root} has images of different sizes ({pa}: {a}, "
                        f"{pb}: {b}); set image_size to resize them all.")
    train_sums = [sums[p] for p, _ in kept["train"]]
    count = sum(n for n, _, _ in train_sums)
    mean = sum(t for _, t, _ in train_sums) / count
    std = np.sqrt(np.maximum(sum(q for _, _, q in train_sums) / count - mean ** 2, 0.0))
    # The stored training order is a fixed shuffle (classes mixed): the search's two halves
    # are its first and second half.
    kept["train"].sort(key=lambda example: _split_key(root, example[0]))
    height, width = size or next(iter(sizes))
    splits = {split: (tuple(p for p, _ in rows), tuple(lab for _, lab in rows))
              for split, rows in kept.items()}
    return Folder(root, tuple(classes), splits, tuple(skipped), (height, width, 1 if grey else 3),
                  tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std))
