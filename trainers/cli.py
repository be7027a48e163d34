"""Command-line plumbing shared by the entry points: one absl flag per config field.

A script picks a preset (`--config`), then every field flag given on the command
line overrides that field. Optional fields (`X | None`) take "none". Values are
checked by the config's own validation, so errors name the field and the value.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from absl import flags

from trainers.config import ConfigError


def field_types(config_cls) -> dict[str, tuple[type, bool]]:
    """{field name: (base type, optional)} for every field of a config dataclass."""
    out = {}
    for name, hint in typing.get_type_hints(config_cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = (args[0], True) if args else (hint, False)
    return out


def parse_field(config_cls, name: str, text: str) -> Any:
    """Command-line text -> the type of field `name` ("none" gives None if optional)."""
    types = field_types(config_cls)
    if name not in types:
        raise ConfigError(f"Unknown config field {name!r} for {config_cls.__name__}.")
    base, optional = types[name]
    if optional and str(text).strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = str(text).strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return lowered in ("true", "1")
        return base(text)
    except ValueError:
        kind = {int: "an integer", float: "a number", bool: "true or false"}.get(base, "text")
        raise ConfigError(f"Invalid config value {name}={text!r}: expected "
                          f"{'none or ' if optional else ''}{kind}.") from None


def define_field_flags(config_cls, skip=()) -> None:
    """Defines a string flag per field (parsed by `parse_field`, so errors name the field)."""
    for name, (base, optional) in field_types(config_cls).items():
        if name in skip:
            continue
        flags.DEFINE_string(
            name, None, f"Overrides {config_cls.__name__}.{name} "
            f"({'none or ' if optional else ''}{base.__name__}).")


def config_from_flags(config_cls, preset, skip=()):
    """`preset` with every field flag present on the command line applied."""
    overrides = {name: parse_field(config_cls, name, flags.FLAGS[name].value)
                 for name in field_types(config_cls)
                 if name not in skip and flags.FLAGS[name].present}
    return dataclasses.replace(preset, **overrides)
