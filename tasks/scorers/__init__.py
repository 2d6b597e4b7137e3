"""Scorers: one registry, one signature (higher = more suspicious).

Importing this package registers every scorer module listed below.
"""
from .base import Scorer, TrainingContext, available, get_scorer, parse_scorer_list, register
from . import confident, loss, random  # noqa: F401  (registration)

__all__ = ["Scorer", "TrainingContext", "available", "get_scorer", "parse_scorer_list", "register"]
