"""Retraining presets: `get(name)` returns a RetrainConfig; override fields with `.replace()`.

    darts-retrain --genotype=DARTS_V2 --config=digits --workdir=/tmp/retrain_digits

Each preset's docstring gives the recipe's source and what it reaches.
"""
from __future__ import annotations

from trainers.retrain_config import RetrainConfig


def cifar10() -> RetrainConfig:
    """The reference CIFAR-10 recipe (quark0/darts `cnn/train.py --auxiliary --cutout`).

    600 epochs, batch 96, SGD lr 0.025 momentum 0.9, coupled weight decay 3e-4,
    cosine to 0 stepped per epoch, auxiliary weight 0.4, drop path 0.2 ramped
    linearly, cutout 16, grad clip 5, C=36, 20 cells. The paper reports
    2.76 +- 0.09% test error for DARTS (second order), 3.3M parameters; about
    1.5 GPU-days on a 1080Ti. Not run here (no CIFAR-10 offline, no GPU).
    """
    return RetrainConfig()


def imagenet() -> RetrainConfig:
    """The reference ImageNet mobile recipe (quark0/darts `cnn/train_imagenet.py`).

    250 epochs, batch 128, SGD lr 0.1 momentum 0.9, coupled weight decay 3e-5,
    lr x 0.97 every epoch, label smoothing 0.1, auxiliary weight 0.4, no drop
    path, grad clip 5, C=48, 14 cells, NetworkImageNet on 224 x 224 crops. The
    paper reports 26.7% top-1 / 8.7% top-5 error, 4.7M parameters. Needs
    imagenet2012 prepared in data_dir. Not run here.
    """
    return RetrainConfig(
        dataset="imagenet2012", network="imagenet", init_channels=48, num_cells=14,
        auxiliary=True, auxiliary_weight=0.4, drop_path_rate=0.0, epochs=250, batch_size=128,
        lr=0.1, momentum=0.9, weight_decay=3e-5, lr_schedule="step", lr_decay_rate=0.97,
        lr_decay_epochs=1, grad_clip=5.0, label_smoothing=0.1, cutout=None)


def digits() -> RetrainConfig:
    """A small recipe on the embedded digits data set (8x8x1, 1437 train / 360 test).

    The reference recipe scaled down: C=16, 6 cells, no auxiliary head (its 5x5
    pooling needs a >= 5x5 map at cell 2*cells//3; digits gives 2x2), drop path
    0.1, 40 epochs of batch 64, cosine from 0.05, digits' default augmentation
    (random crop, padding 1; no flip, no cutout). 135,962 parameters.

    Measured (DARTS_V2, `darts-retrain --genotype=DARTS_V2 --config=digits
    --seed=S --workdir=DIR`, 2 CPU cores shared with other jobs, load ~3):
    test top-1 98.9% / 99.4% / 99.7% for seeds 0 / 1 / 2 (360 held-out
    images; >= 97% from epoch 4-6 on), 82-106 s wall each, start-up and
    export included.
    """
    return RetrainConfig(
        dataset="digits", init_channels=16, num_cells=6, auxiliary=False, drop_path_rate=0.1,
        epochs=40, batch_size=64, lr=0.05, cutout=None, checkpoint_every=100, log_every=10)


PRESETS = {"cifar10": cifar10, "imagenet": imagenet, "digits": digits}


def get(name: str) -> RetrainConfig:
    """The preset called `name` (cifar10, imagenet, digits)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown retrain preset {name!r}; choices: {sorted(PRESETS)}.")
    return PRESETS[name]()
