"""RetrainConfig: one frozen, validated config for training a genotype from scratch.

Defaults are the reference's CIFAR-10 recipe (quark0/darts `cnn/train.py` run as
`python train.py --auxiliary --cutout`; reference section 2). Presets live in
`configs/retrain.py`; the command line (`trainers/retrain_main.py`) has one flag
per field (`trainers/cli.py`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from trainers.config import ConfigIO
from trainers.config import _check, _check_graph_optimization  # pylint: disable=unused-import  (one message format)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class RetrainConfig(ConfigIO):
    """Retraining of a fixed genotype. Defaults: the reference CIFAR-10 recipe (600 epochs)."""

    genotype: str = "DARTS_V2"            # anything darts_tf.load_genotype accepts
    dataset: str = "cifar10"
    data_dir: str | None = None
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
    # Augmentation (trainers/data.py): None keeps the data set's default.
    augment: bool = True
    cutout: int | None = 16
    # Execution.
    seed: int = 0
    deterministic: bool = False           # tf.config.experimental.enable_op_determinism
    strategy: str = "default"             # default | mirrored | multi_worker
    graph_optimization: str = "auto"      # auto | fast | full (trainers.distribute)
    eval_batch_size: int = 256
    checkpoint_every: int = 200           # steps between checkpoints (and at each epoch end)
    log_every: int = 50                   # steps between log lines / TensorBoard points

    def __post_init__(self):
        for name in ("init_channels", "num_cells", "epochs", "batch_size", "lr_decay_epochs",
                     "eval_batch_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            _check(_is_int(value) and value > 0, name, value, "a positive integer")
        for name in ("data_limit", "steps_per_epoch"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value > 0), name, value,
                   "None or a positive integer")
        _check(self.cutout is None or (_is_int(self.cutout) and self.cutout >= 0), "cutout",
               self.cutout, "None or an integer >= 0")
        _check(_is_number(self.lr) and self.lr > 0, "lr", self.lr, "a finite number > 0")
        for name in ("lr_min", "weight_decay", "grad_clip", "auxiliary_weight"):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, name, value, "a finite number >= 0")
        _check(self.lr_min <= self.lr, "lr_min", self.lr_min, f"<= lr ({self.lr})")
        for name in ("momentum", "drop_path_rate", "label_smoothing"):
            value = getattr(self, name)
            _check(_is_number(value) and 0 <= value < 1, name, value, "in [0, 1)")
        _check(_is_number(self.lr_decay_rate) and 0 < self.lr_decay_rate <= 1, "lr_decay_rate",
               self.lr_decay_rate, "in (0, 1]")
        _check(self.num_cells >= 3, "num_cells", self.num_cells,
               ">= 3 (reduction cells sit at 1/3 and 2/3 of the depth)")
        _check(self.init_channels % 2 == 0, "init_channels", self.init_channels,
               "an even number (FactorizedReduce splits channels in halves)")
        _check(self.network in ("cifar", "imagenet"), "network", self.network,
               "'cifar' or 'imagenet'")
        _check(self.lr_schedule in ("cosine", "step"), "lr_schedule", self.lr_schedule,
               "'cosine' or 'step'")
        _check(self.strategy in ("default", "mirrored", "multi_worker"), "strategy",
               self.strategy, "'default', 'mirrored' or 'multi_worker'")
        _check_graph_optimization(self.graph_optimization)
        for name in ("auxiliary", "augment", "deterministic"):
            value = getattr(self, name)
            _check(isinstance(value, bool), name, value, "True or False")
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        for name in ("dataset", "genotype"):
            value = getattr(self, name)
            _check(isinstance(value, str) and bool(value.strip()), name, value,
                   "a non-empty string")

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of `epoch` (counted from 0), stepped once per epoch.

        cosine: CosineAnnealingLR(T_max=epochs, eta_min=lr_min), as `cnn/train.py`.
        step: StepLR(step_size=lr_decay_epochs, gamma=lr_decay_rate), as `train_imagenet.py`.
        """
        if self.lr_schedule == "step":
            return self.lr * self.lr_decay_rate ** (epoch // self.lr_decay_epochs)
        return self.lr_min + (self.lr - self.lr_min) * (
            1 + math.cos(math.pi * epoch / self.epochs)) / 2

    def drop_path_prob(self, epoch: int) -> float:
        """`drop_path_rate * epoch / epochs` (`cnn/train.py` L100): 0 in the first epoch."""
        return self.drop_path_rate * epoch / self.epochs

