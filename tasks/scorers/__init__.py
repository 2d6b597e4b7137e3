"""Scorers: one registry, one signature (higher = more suspicious).

Importing this package registers every scorer: each module in this folder registers its own
classes with ``@register`` when imported, so adding a scorer is adding a module.
"""
import importlib
import pkgutil

from .base import (Scorer, TrainingContext, available, default_scorers, get_scorer, parse_scorer_list,
                   probability_scorers, register)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Scorer", "TrainingContext", "available", "default_scorers", "get_scorer", "parse_scorer_list",
           "probability_scorers", "register"]
