"""SearchConfig and the search presets (small functions returning a frozen config).

    darts-search --config=digits --workdir=runs/digits-search
    darts-search --config=cifar10 --workdir=runs/cifar10-search --unrolled=true
    darts-search --config=digits_pc_darts --workdir=runs/digits-pc-darts
"""
from __future__ import annotations

import dataclasses

from configs.base import (ConfigIO, check, check_each, check_execution, check_image_size, cosine,
                          in_unit_interval, is_int, is_number, non_negative, optional_positive_int,
                          positive_int, preset)

METHODS = ("darts", "pc_darts", "darts_minus")  # darts_tf.methods.METHODS (configs import no TF)


def optional_non_negative_int(value) -> bool:
    return value is None or (is_int(value) and value >= 0)


@dataclasses.dataclass(frozen=True)
class SearchConfig(ConfigIO):
    """A DARTS search. Defaults are the reference's CIFAR-10 search (reference section 1)."""

    RESUMABLE_CHANGES = frozenset({"log_every", "checkpoint_every", "step_cache"})

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
    # Search method (darts_tf.methods): darts | pc_darts | darts_minus.
    method: str = "darts"
    partial_channels: int | None = None    # PC-DARTS' K (None: 4); other methods: None or 1
    edge_normalization: bool | None = None  # PC-DARTS' edge betas (None: True)
    max_skip_connect: int | None = None    # P-DARTS' guard at derivation (None: no limit)
    recompute_cells: int = 0               # memory: the first N cells recomputed in backward
    # Guards against collapse (README "Collapse: watching and guarding a search").
    arch_start_epoch: int = 0              # weights-only warm-up: architecture steps from here
    sdarts_epsilon: float = 0.0            # SDARTS-RS: U(-e, e) on the alphas in weight steps
    early_stop: bool = False               # DARTS+: stop on either trigger below
    early_stop_skip_connect: int | None = 2   # ... the normal cell holds >= N skip-connects
    early_stop_patience: int | None = 10   # ... the genotype unchanged for N epochs
    monitor: bool = True                   # skip counts and the Hessian's dominant eigenvalue
    monitor_iterations: int = 10           # power iterations (Hessian-vector products) per epoch
    monitor_chunk: int | None = 8          # examples per Hessian pass (memory); None: all at once
    # Reproducibility and execution.
    seed: int = 2
    deterministic: bool = False            # tf.config.experimental.enable_op_determinism
    strategy: str = "default"              # default | mirrored | multi_worker
    jit_compile: bool = False              # XLA: 3-4x slower depthwise convs on CPU
    graph_optimization: str = "auto"       # auto | fast | full (trainers.runtime.distribute)
    mixed_precision: str | None = None     # None | mixed_float16 | mixed_bfloat16
    step_cache: str = "auto"               # auto | off | a directory (trainers.runtime.step_cache)
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
        self._check_guards()
        check(self.mixed_precision in (None, "mixed_float16", "mixed_bfloat16"),
              "mixed_precision", self.mixed_precision,
              "None, 'mixed_float16' or 'mixed_bfloat16'")
        check(not (self.jit_compile and self.deterministic), "jit_compile", self.jit_compile,
              "False when deterministic=True (XLA's max-pool gradient has no deterministic "
              "implementation)")
        self._check_method()

    def _check_method(self):
        """The search method's fields: values and combinations (darts_tf.methods)."""
        check(self.method in METHODS, "method", self.method,
              "one of " + ", ".join(repr(m) for m in METHODS))
        check(optional_non_negative_int(self.max_skip_connect), "max_skip_connect",
              self.max_skip_connect, "None or an integer >= 0")
        check(is_int(self.recompute_cells) and 0 <= self.recompute_cells <= self.num_cells,
              "recompute_cells", self.recompute_cells,
              f"an integer in [0, num_cells] (num_cells={self.num_cells})")
        if self.method != "pc_darts":
            check(self.partial_channels in (None, 1), "partial_channels", self.partial_channels,
                  f"None or 1 with method={self.method!r} (partial channels are PC-DARTS': "
                  "method='pc_darts')")
            check(self.edge_normalization in (None, False), "edge_normalization",
                  self.edge_normalization, f"None or False with method={self.method!r} (edge "
                  "normalisation is PC-DARTS': method='pc_darts')")
            return
        check(optional_positive_int(self.partial_channels), "partial_channels",
              self.partial_channels, "None (4) or a positive integer")
        k = self.partial_channels or 4
        check(self.init_channels % k == 0, "partial_channels", self.partial_channels,
              f"a divisor of init_channels={self.init_channels} (the mixed op sees "
              f"init_channels / {k} channels)")
        check(self.edge_normalization in (None, True, False), "edge_normalization",
              self.edge_normalization, "None (True), True or False")

    def supernet_options(self) -> dict:
        """The `darts_tf.Supernet` arguments of the method and the derivation."""
        return {"method": self.method, "partial_channels": self.partial_channels,
                "edge_normalization": self.edge_normalization,
                "max_skip_connect": self.max_skip_connect,
                "recompute_cells": self.recompute_cells}

    def _check_guards(self):
        """The collapse guards and the monitor (their combinations with the model are
        checked by trainers/search: the skip-connect trigger needs a genotype)."""
        check(is_int(self.arch_start_epoch) and 0 <= self.arch_start_epoch < self.epochs,
              "arch_start_epoch", self.arch_start_epoch,
              f"an integer in [0, epochs) (epochs={self.epochs}): the architecture must be "
              "trained for at least one epoch")
        check(non_negative(self.sdarts_epsilon), "sdarts_epsilon", self.sdarts_epsilon,
              "a finite number >= 0 (0 turns the noise off)")
        check_each(self, ("early_stop", "monitor"), lambda v: isinstance(v, bool),
                   "True or False")
        check_each(self, ("early_stop_skip_connect", "early_stop_patience"),
                   optional_positive_int, "None or a positive integer")
        check(not self.early_stop or self.early_stop_skip_connect is not None
              or self.early_stop_patience is not None, "early_stop", self.early_stop,
              "False when both early_stop_skip_connect and early_stop_patience are None "
              "(no trigger)")
        check(not (self.early_stop and self.early_stop_skip_connect is not None
                   and self.max_skip_connect is not None
                   and self.max_skip_connect < self.early_stop_skip_connect),
              "early_stop_skip_connect", self.early_stop_skip_connect,
              f"<= max_skip_connect ({self.max_skip_connect}), or None: the derived normal cell "
              "never holds more skip-connects than max_skip_connect, so the trigger could "
              "never fire")
        check(positive_int(self.monitor_iterations), "monitor_iterations",
              self.monitor_iterations, "a positive integer")
        check(self.monitor_chunk is None or (positive_int(self.monitor_chunk) and self.batch_size
              % min(self.monitor_chunk, self.batch_size) == 0), "monitor_chunk",
              self.monitor_chunk, f"None or a positive integer that divides batch_size "
              f"({self.batch_size}) (or is larger)")

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

    The collapse monitor takes the whole fixed batch of 64 in one pass (the network is
    small) and 5 power iterations from the last epoch's eigenvector: an epoch is only 11
    steps, and the cifar10 defaults (chunks of 8, 10 iterations: 80 Hessian passes an
    epoch) cost ~28 s against ~10 s of training per epoch here (BENCHMARKS.md).
    """
    return SearchConfig(dataset="digits", init_channels=8, num_cells=5, num_nodes=4,
                        epochs=15, batch_size=64, w_lr=0.05, checkpoint_every=50, log_every=5,
                        monitor_chunk=None, monitor_iterations=5)


def pc_darts() -> SearchConfig:
    """PC-DARTS' CIFAR-10 search (yuhuixu1993/PC-DARTS `train_search.py`; Xu et al., ICLR 2020).

    K=4 partial channels with edge normalisation; batch 256; weights SGD 0.1 with cosine
    to 0 (issue 12's recipe; the authors' code anneals to `--learning_rate_min 0.001`),
    momentum 0.9, wd 3e-4, clip 5; alphas and betas Adam 6e-4, betas (0.5, 0.999), wd
    1e-3, updated only from epoch 15 of 50; first order. The paper: 2.57 +- 0.07 % test error after
    retraining, 0.1 GPU-days of search. Needs cifar10 prepared in data_dir (tfds).
    The first two cells are recomputed in the backward pass (`recompute_cells=2`), so that
    batch 256 needs less memory than DARTS at batch 64 (the method's point), for a longer
    step (BENCHMARKS.md); `--recompute_cells=0` where memory is plentiful.
    """
    return SearchConfig(method="pc_darts", partial_channels=4, edge_normalization=True,
                        batch_size=256, w_lr=0.1, w_lr_min=0.0, alpha_lr=6e-4,
                        alpha_weight_decay=1e-3, epochs=50, arch_start_epoch=15,
                        recompute_cells=2)


def darts_minus() -> SearchConfig:
    """DARTS-' CIFAR-10 search (Meituan-AutoML/DARTS- `scripts/run_darts_minus.sh`; Chu et
    al., ICLR 2021): DARTS' recipe (its `args.py` defaults are the reference's: batch 64,
    SGD 0.025 cosine to 0.001, Adam 3e-4 wd 1e-3, 50 epochs, first order, seed 2) with the
    auxiliary skip, beta decaying linearly from 1 (`--skip_beta 1 --decay linear`). The
    paper: 2.59 +- 0.08 % test error, 0.4 GPU-days. Needs cifar10 prepared in data_dir.
    """
    return SearchConfig(method="darts_minus")


def digits_pc_darts() -> SearchConfig:
    """`digits` (the embedded data) searched with PC-DARTS: K=4 (2 of C=8 channels per op),
    edge normalisation, PC-DARTS' alpha lr, alphas updated from epoch 5 of 15 (15/50 of the
    search, as the authors' recipe)."""
    return digits().replace(method="pc_darts", partial_channels=4, edge_normalization=True,
                            alpha_lr=6e-4, arch_start_epoch=5)


def digits_darts_minus() -> SearchConfig:
    """`digits` (the embedded data) searched with DARTS-: the auxiliary skip's beta decays
    linearly from 1 over the 15 epochs."""
    return digits().replace(method="darts_minus")


def folder() -> SearchConfig:
    """Your own images: `--data_dir=DIR` holds one sub-folder of images per class
    (trainers/data/folders.py), resized to 32x32. The digits recipe at batch 32: C=8,
    5 cells, 4 nodes, 15 epochs on the two halves of the training split.
    """
    return digits().replace(dataset="folder", image_size=32, batch_size=32)


PRESETS = {"cifar10": cifar10, "digits": digits, "folder": folder, "pc_darts": pc_darts,
           "darts_minus": darts_minus, "digits_pc_darts": digits_pc_darts,
           "digits_darts_minus": digits_darts_minus}
DEFAULT_PRESET = "digits"  # every CLI starts from the embedded data set


def get(name: str) -> SearchConfig:
    """The preset `name`; a ConfigError naming the choices for an unknown one."""
    return preset(PRESETS, "search", name)
