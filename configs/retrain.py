"""RetrainConfig and the retraining presets: `get(name)` returns a RetrainConfig; override
fields with `.replace()`.

    darts-retrain --genotype=DARTS_V2 --config=digits --workdir=/tmp/retrain_digits

Defaults are the reference's CIFAR-10 recipe (quark0/darts `cnn/train.py` run as
`python train.py --auxiliary --cutout`; reference section 2). Each preset's docstring
gives the recipe's source and what it reaches.
"""
from __future__ import annotations

import dataclasses

from configs.base import (ConfigIO, check, check_each, check_execution, check_image_size, cosine,
                          in_unit_interval, is_int, is_number, non_negative, optional_positive_int,
                          positive_int, preset)


@dataclasses.dataclass(frozen=True)
class RetrainConfig(ConfigIO):
    """Retraining of a fixed genotype. Defaults: the reference CIFAR-10 recipe (600 epochs)."""

    genotype: str = "DARTS_V2"            # anything darts_tf.load_genotype accepts
    dataset: str = "cifar10"
    data_dir: str | None = None
    image_size: int | None = None         # dataset='folder': images resized to this side
    data_limit: int | None = None         # use only the first N training examples
    network: str = "cifar"                # cifar (NetworkCIFAR) | imagenet (NetworkImageNet)
    init_channels: int = 36
    num_cells: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_rate: float = 0.2           # ramped linearly: rate * epoch / epochs
    epochs: int = 600
    batch_size: int = 96                  # global batch
    steps_per_epoch: int | None = None    # None: one pass over the training set
    # SGD with momentum and coupled (PyTorch) weight decay: g += weight_decay * w.
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    lr_schedule: str = "cosine"           # cosine (to lr_min) | step (lr * gamma^(epoch // n))
    lr_min: float = 0.0
    lr_decay_rate: float = 0.97           # step schedule: gamma
    lr_decay_epochs: int = 1              # step schedule: decay every n epochs
    grad_clip: float = 5.0                # global norm; 0 disables
    label_smoothing: float = 0.0
    # Augmentation (trainers/data): None keeps the data set's default.
    augment: bool = True
    cutout: int | None = 16
    # Execution.
    seed: int = 0
    deterministic: bool = False           # tf.config.experimental.enable_op_determinism
    strategy: str = "default"             # default | mirrored | multi_worker
    graph_optimization: str = "auto"      # auto | fast | full (trainers.runtime.distribute)
    recompute: bool = False               # memory: the sep/dil convs recompute in backward
    step_cache: str = "auto"              # auto | off | a directory (trainers.runtime.step_cache)
    eval_batch_size: int = 256
    checkpoint_every: int = 200           # steps between checkpoints (and at each epoch end)
    log_every: int = 50                   # steps between log lines / TensorBoard points

    RESUMABLE_CHANGES = frozenset({"log_every", "checkpoint_every", "eval_batch_size",
                                   "genotype", "data_dir", "step_cache", "recompute"})

    def __post_init__(self):
        check_each(self, ("init_channels", "num_cells", "epochs", "batch_size", "lr_decay_epochs",
                          "eval_batch_size", "checkpoint_every", "log_every"), positive_int,
                   "a positive integer")
        check_each(self, ("data_limit", "steps_per_epoch"), optional_positive_int,
                   "None or a positive integer")
        check_image_size(self)
        check(self.cutout is None or (is_int(self.cutout) and self.cutout >= 0), "cutout",
              self.cutout, "None or an integer >= 0")
        check(is_number(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        check_each(self, ("lr_min", "weight_decay", "grad_clip", "auxiliary_weight"), non_negative,
                   "a finite number >= 0")
        check(self.lr_min <= self.lr, "lr_min", self.lr_min, f"<= lr ({self.lr})")
        check_each(self, ("momentum", "drop_path_rate", "label_smoothing"), in_unit_interval,
                   "in [0, 1)")
        check(is_number(self.lr_decay_rate) and 0 < self.lr_decay_rate <= 1, "lr_decay_rate",
              self.lr_decay_rate, "in (0, 1]")
        check(self.network in ("cifar", "imagenet"), "network", self.network,
              "'cifar' or 'imagenet'")
        check(self.lr_schedule in ("cosine", "step"), "lr_schedule", self.lr_schedule,
              "'cosine' or 'step'")
        check_each(self, ("auxiliary", "augment", "recompute"), lambda v: isinstance(v, bool),
                   "True or False")
        check_execution(self)
        check(isinstance(self.genotype, str) and bool(self.genotype.strip()), "genotype",
              self.genotype, "a non-empty string")

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of `epoch` (counted from 0), stepped once per epoch.

        cosine: CosineAnnealingLR(T_max=epochs, eta_min=lr_min), as `cnn/train.py`.
        step: StepLR(step_size=lr_decay_epochs, gamma=lr_decay_rate), as `train_imagenet.py`.
        """
        if self.lr_schedule == "step":
            return self.lr * self.lr_decay_rate ** (epoch // self.lr_decay_epochs)
        return cosine(self.lr, self.lr_min, epoch, self.epochs)

    def drop_path_prob(self, epoch: int) -> float:
        """`drop_path_rate * epoch / epochs` (`cnn/train.py` L100): 0 in the first epoch."""
        return self.drop_path_rate * epoch / self.epochs


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


def folder() -> RetrainConfig:
    """Your own images (`--data_dir=DIR`, one sub-folder per class), resized to 32x32.

    The reference recipe scaled down as `digits` is (C=16, 6 cells, 40 epochs, cosine
    from 0.05) at batch 32, with the auxiliary head (32x32 pools to 2x2) and the
    folder's default augmentation: random crop (padding 1/8 of the side) and flip.
    """
    return digits().replace(dataset="folder", image_size=32, batch_size=32, auxiliary=True)


PRESETS = {"cifar10": cifar10, "imagenet": imagenet, "digits": digits, "folder": folder}
DEFAULT_PRESET = "digits"  # every CLI starts from the embedded data set


def get(name: str) -> RetrainConfig:
    """The preset `name` (cifar10, imagenet, digits); a ConfigError for an unknown one."""
    return preset(PRESETS, "retrain", name)
