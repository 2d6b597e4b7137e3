"""The floor every scorer must beat."""
from __future__ import annotations

import numpy as np

from .base import Scorer, TrainingContext, register


@register
class RandomScorer(Scorer):
    name = "random"
    needs_model = False
    summary = "uniform random ranking (the floor)"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        return np.random.default_rng(ctx.seed + 7919).random(ctx.n)
