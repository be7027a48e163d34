"""Frozen run configurations, validated at start.

Configs are data: the command-line scripts turn flags into one of these (one
flag per field), presets in `configs/` return them, and every run writes the
resolved config into its work directory so that it can be rebuilt.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


GRAPH_OPTIMIZATION = ("auto", "fast", "full")  # trainers.distribute.graph_optimization


class ConfigError(ValueError):
    """A config value is out of range; the message names the field and the value."""


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"Invalid config value {field}={value!r}: expected {expected}.")


def _check_graph_optimization(value) -> None:
    _check(value in GRAPH_OPTIMIZATION, "graph_optimization", value,
           "one of " + ", ".join(repr(m) for m in GRAPH_OPTIMIZATION))


class ConfigIO:
    """`replace`, JSON out and in, with errors naming the source and the fields: shared by
    every frozen config dataclass (SearchConfig, RetrainConfig)."""

    def replace(self, **changes):
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"Unknown config field(s) {unknown} for {type(self).__name__}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "<string>"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source}: not valid JSON ({err}).") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, received {type(data).__name__}.")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{source}: unknown config field(s) {unknown}.")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class SearchConfig(ConfigIO):
    """A DARTS search. Defaults are the reference's CIFAR-10 search (reference section 1)."""

    dataset: str = "cifar10"
    data_dir: str | None = None
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
    graph_optimization: str = "auto"       # auto | fast | full (trainers.distribute)
    mixed_precision: str | None = None     # None | mixed_float16 | mixed_bfloat16
    checkpoint_every: int = 20             # steps between checkpoints (and at each epoch end)
    log_every: int = 10                    # steps between plain log lines when not a TTY

    def __post_init__(self):
        positive = ("epochs", "batch_size", "init_channels", "num_cells", "num_nodes",
                    "stem_multiplier", "checkpoint_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                   name, value, "a positive integer")
        for name in ("data_limit", "steps_per_epoch"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and value > 0), name, value,
                   "None or a positive integer")
        for name in ("w_lr", "alpha_lr"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                   name, value, "a finite number > 0")
        for name in ("w_lr_min", "w_weight_decay", "alpha_weight_decay", "w_grad_clip"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                   name, value, "a finite number >= 0")
        _check(self.w_lr_min <= self.w_lr, "w_lr_min", self.w_lr_min, f"<= w_lr ({self.w_lr})")
        for name in ("w_momentum", "alpha_beta1", "alpha_beta2"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and 0 <= value < 1, name, value, "in [0, 1)")
        _check(self.num_cells >= 3, "num_cells", self.num_cells,
               ">= 3 (reduction cells sit at 1/3 and 2/3 of the depth)")
        _check(self.init_channels % 2 == 0, "init_channels", self.init_channels,
               "an even number (FactorizedReduce splits channels in halves)")
        _check(self.hessian in ("finite_difference", "exact"), "hessian", self.hessian,
               "'finite_difference' or 'exact'")
        _check(self.strategy in ("default", "mirrored", "multi_worker"), "strategy",
               self.strategy, "'default', 'mirrored' or 'multi_worker'")
        _check_graph_optimization(self.graph_optimization)
        _check(self.mixed_precision in (None, "mixed_float16", "mixed_bfloat16"),
               "mixed_precision", self.mixed_precision,
               "None, 'mixed_float16' or 'mixed_bfloat16'")
        _check(not (self.jit_compile and self.deterministic), "jit_compile", self.jit_compile,
               "False when deterministic=True (XLA's max-pool gradient has no deterministic "
               "implementation)")
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed,
               "an integer >= 0")
        _check(isinstance(self.dataset, str) and bool(self.dataset), "dataset", self.dataset,
               "a data set name")
