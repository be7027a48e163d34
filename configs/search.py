"""SearchConfig and the search presets (small functions returning a frozen config).

    darts-search --config=digits --workdir=runs/digits-search
    darts-search --config=cifar10 --workdir=runs/cifar10-search --unrolled=true
"""
from __future__ import annotations

import dataclasses

from configs.base import (ConfigIO, check, check_each, check_execution, check_image_size, cosine,
                          in_unit_interval, is_number, non_negative, optional_positive_int,
                          positive_int, preset)


@dataclasses.dataclass(frozen=True)
class SearchConfig(ConfigIO):
    """A DARTS search. Defaults are the reference's CIFAR-10 search (reference section 1)."""

    RESUMABLE_CHANGES = frozenset({"log_every", "checkpoint_every"})

    dataset: str = "cifar10"
    data_dir: str | None = None
    image_size: int | None = None          # dataset='folder': images resized to this side
    data_limit: int | None = None          # use only the first N training examples
    epochs: int = 50
    batch_size: int = 64                   # global batch, for weights and alphas alike
    steps_per_epoch: int | None = None     # None: one pass over the weight half
    init_channels: int = 16
    num_cells: int = 8
    num_nodes: int = 4
    stem_multiplier: int = 3
    # Weights: SGD with coupled (PyTorch-style) weight decay, cosine to w_lr_min.
    w_lr: float = 0.025
    w_lr_min: float = 0.001
    w_momentum: float = 0.9
    w_weight_decay: float = 3e-4
    w_grad_clip: float = 5.0
    # Alphas: Adam with coupled weight decay.
    alpha_lr: float = 3e-4
    alpha_beta1: float = 0.5
    alpha_beta2: float = 0.999
    alpha_weight_decay: float = 1e-3
    # Bilevel update.
    unrolled: bool = False                 # second order (eq. 6-8) when True
    hessian: str = "finite_difference"     # or "exact" (autodiff Hessian-vector product)
    # Reproducibility and execution.
    seed: int = 2
    deterministic: bool = False            # tf.config.experimental.enable_op_determinism
    strategy: str = "default"              # default | mirrored | multi_worker
    jit_compile: bool = False              # XLA: 3-4x slower depthwise convs on CPU
    graph_optimization: str = "auto"       # auto | fast | full (trainers.runtime.distribute)
    mixed_precision: str | None = None     # None | mixed_float16 | mixed_bfloat16
    checkpoint_every: int = 20             # steps between checkpoints (and at each epoch end)
    log_every: int = 10                    # steps between plain log lines when not a TTY

    def __post_init__(self):
        check_each(self, ("epochs", "batch_size", "init_channels", "num_cells", "num_nodes",
                          "stem_multiplier", "checkpoint_every", "log_every"), positive_int,
                   "a positive integer")
        check_each(self, ("data_limit", "steps_per_epoch"), optional_positive_int,
                   "None or a positive integer")
        check_image_size(self)
        check_each(self, ("w_lr", "alpha_lr"), lambda v: is_number(v) and v > 0,
                   "a finite number > 0")
        check_each(self, ("w_lr_min", "w_weight_decay", "alpha_weight_decay", "w_grad_clip"),
                   non_negative, "a finite number >= 0")
        check(self.w_lr_min <= self.w_lr, "w_lr_min", self.w_lr_min, f"<= w_lr ({self.w_lr})")
        check_each(self, ("w_momentum", "alpha_beta1", "alpha_beta2"), in_unit_interval,
                   "in [0, 1)")
        check(self.hessian in ("finite_difference", "exact"), "hessian", self.hessian,
              "'finite_difference' or 'exact'")
        check_execution(self)
        check(self.mixed_precision in (None, "mixed_float16", "mixed_bfloat16"),
              "mixed_precision", self.mixed_precision,
              "None, 'mixed_float16' or 'mixed_bfloat16'")
        check(not (self.jit_compile and self.deterministic), "jit_compile", self.jit_compile,
              "False when deterministic=True (XLA's max-pool gradient has no deterministic "
              "implementation)")

    def learning_rate(self, epoch: int) -> float:
        """The weights' learning rate of `epoch` (from 0): cosine from w_lr to w_lr_min."""
        return cosine(self.w_lr, self.w_lr_min, epoch, self.epochs)


def cifar10() -> SearchConfig:
    """The reference search (quark0/darts `cnn/train_search.py`, reference section 1).

    50 epochs, batch 64, C=16, 8 cells, 4 nodes; weights SGD 0.025 (cosine to
    0.001), momentum 0.9, wd 3e-4, clip 5; alphas Adam 3e-4, betas (0.5, 0.999),
    wd 1e-3; the CIFAR-10 training set split in halves; seed 2. First order by
    default, `--unrolled=true` for second order. The paper: 1 GPU-day (second
    order) on a 1080Ti. Needs cifar10 prepared in data_dir (tfds).
    """
    return SearchConfig()


def digits() -> SearchConfig:
    """The embedded default: a full search on scikit-learn's digits (8x8x1, offline).

    The reference recipe scaled to the data: C=8, 5 cells (reductions at cells 1
    and 3), 4 nodes, 15 epochs of batch 64 on the 718/719 halves of the 1437
    training images (11 steps per epoch). A few minutes on 2 CPU cores.
    """
    return SearchConfig(dataset="digits", init_channels=8, num_cells=5, num_nodes=4,
                        epochs=15, batch_size=64, w_lr=0.05, checkpoint_every=50, log_every=5)


def folder() -> SearchConfig:
    """Your own images: `--data_dir=DIR` holds one sub-folder of images per class
    (trainers/data/folders.py), resized to 32x32. The digits recipe at batch 32: C=8,
    5 cells, 4 nodes, 15 epochs on the two halves of the training split.
    """
    return digits().replace(dataset="folder", image_size=32, batch_size=32)


PRESETS = {"cifar10": cifar10, "digits": digits, "folder": folder}
DEFAULT_PRESET = "digits"  # every CLI starts from the embedded data set


def get(name: str) -> SearchConfig:
    """The preset `name`; a ConfigError naming the choices for an unknown one."""
    return preset(PRESETS, "search", name)
