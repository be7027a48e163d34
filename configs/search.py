"""Search presets: small functions returning a frozen SearchConfig.

    darts-search --config=digits --workdir=runs/digits-search
    darts-search --config=cifar10 --workdir=runs/cifar10-search --unrolled=true
"""
from __future__ import annotations

from trainers.config import SearchConfig


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


PRESETS = {"cifar10": cifar10, "digits": digits}


def get(name: str) -> SearchConfig:
    """The preset `name`; a clear error for an unknown one."""
    if name not in PRESETS:
        raise ValueError(f"Unknown search preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]()
