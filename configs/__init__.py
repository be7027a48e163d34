"""Run configurations: the frozen config classes, their error type and the presets.

    from configs import SearchConfig, RetrainConfig, search, retrain
    config = search.get("digits").replace(epochs=5)

Configs are code (small functions returning frozen dataclasses) and import nothing from
`trainers/`; the trainers and the command line read them.
"""
from configs.base import ConfigError
from configs.retrain import RetrainConfig
from configs.search import SearchConfig

__all__ = ["ConfigError", "RetrainConfig", "SearchConfig"]
