"""What every run config shares: the error type, value checks, JSON in and out, and the
execution choices (strategies, graph optimisation) that search and retraining both take.

Configs are data: the command line turns flags into one (one flag per field), the presets
beside this module return them, and every run writes its resolved config into its work
directory, so that a run can be rebuilt and a resumed run checked against it. Nothing here
imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

STRATEGIES = ("default", "mirrored", "multi_worker")  # trainers.runtime.distribute
GRAPH_OPTIMIZATION = ("auto", "fast", "full")          # trainers.runtime.distribute


class ConfigError(ValueError):
    """A config value is out of range; the message names the field and the value."""


def check(ok: bool, field: str, value: Any, expected: str) -> None:
    """Raises ConfigError naming `field`, the value received and what was expected."""
    if not ok:
        raise ConfigError(f"Invalid config value {field}={value!r}: expected {expected}.")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def check_each(config, names, ok, expected: str) -> None:
    """`check` of every field in `names` with the predicate `ok`."""
    for name in names:
        value = getattr(config, name)
        check(ok(value), name, value, expected)


def positive_int(value) -> bool:
    return is_int(value) and value > 0


def optional_positive_int(value) -> bool:
    return value is None or positive_int(value)


def non_negative(value) -> bool:
    return is_number(value) and value >= 0


def in_unit_interval(value) -> bool:
    """In [0, 1)."""
    return is_number(value) and 0 <= value < 1


def check_execution(config) -> None:
    """The fields every run config has: network shape, strategy, graph optimisation, seed."""
    check(config.num_cells >= 3, "num_cells", config.num_cells,
          ">= 3 (reduction cells sit at 1/3 and 2/3 of the depth)")
    check(config.init_channels % 2 == 0, "init_channels", config.init_channels,
          "an even number (FactorizedReduce splits channels in halves)")
    check(config.strategy in STRATEGIES, "strategy", config.strategy,
          "one of " + ", ".join(repr(s) for s in STRATEGIES))
    check(config.graph_optimization in GRAPH_OPTIMIZATION, "graph_optimization",
          config.graph_optimization, "one of " + ", ".join(repr(m) for m in GRAPH_OPTIMIZATION))
    check(isinstance(config.step_cache, str) and bool(config.step_cache.strip()), "step_cache",
          config.step_cache, "'auto', 'off' or a directory")
    check(isinstance(config.deterministic, bool), "deterministic", config.deterministic,
          "True or False")
    check(is_int(config.seed) and config.seed >= 0, "seed", config.seed, "an integer >= 0")
    check(isinstance(config.dataset, str) and bool(config.dataset.strip()), "dataset",
          config.dataset, "a data set name")


def check_image_size(config) -> None:
    """image_size: None (the images' own size) or a side of at least 8 pixels."""
    check(config.image_size is None or (is_int(config.image_size) and config.image_size >= 8),
          "image_size", config.image_size, "None or an integer >= 8 (pixels)")


def cosine(lr: float, lr_min: float, epoch: int, epochs: int) -> float:
    """CosineAnnealingLR(T_max=epochs, eta_min=lr_min) at `epoch`, stepped once per epoch."""
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


class ConfigIO:
    """`replace`, JSON out and in, with errors naming the source and the fields: shared by
    every frozen config dataclass (SearchConfig, RetrainConfig).

    `RESUMABLE_CHANGES` names the fields that may differ between a run and its resumption
    (they do not change the result).
    """

    RESUMABLE_CHANGES: frozenset = frozenset()

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

    @classmethod
    def coerce(cls, config):
        """`config` itself, or a dict validated into one; ConfigError for anything else."""
        if isinstance(config, dict):
            return cls(**config)
        if not isinstance(config, cls):
            raise ConfigError(f"Expected a {cls.__name__}, received {type(config).__name__}.")
        return config

    def changed_fields(self, other) -> list[str]:
        """Fields that differ from `other`, except the RESUMABLE_CHANGES."""
        return [f.name for f in dataclasses.fields(self) if f.name not in self.RESUMABLE_CHANGES
                and getattr(self, f.name) != getattr(other, f.name)]


def preset(presets: dict, kind: str, name: str):
    """The preset `name` of `presets` (name -> function); ConfigError naming the choices."""
    if name not in presets:
        raise ConfigError(f"Unknown {kind} preset {name!r}; choose one of {sorted(presets)}.")
    return presets[name]()
