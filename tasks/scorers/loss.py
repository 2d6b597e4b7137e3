"""Training-loss scorers: the baseline Mercier et al. found hardest to beat."""
from __future__ import annotations

import numpy as np
import torch


from .base import Scorer, TrainingContext, register


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Cross-entropy per sample. logits (..., n, C), y (n,) -> (..., n)."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    return (-logp.gather(-1, y.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)).numpy()


@register
class FinalLoss(Scorer):
    name = "loss"
    reads_checkpoint_logits = True
    needs_model = False
    summary = "cross-entropy of the given label under the final model"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        return per_sample_loss(ctx.final_logits(), ctx.y)


@register
class MeanLoss(Scorer):
    name = "loss-mean"
    reads_checkpoint_logits = True
    summary = "cross-entropy of the given label averaged over every checkpoint"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        return per_sample_loss(ctx.checkpoint_logits(), ctx.y).mean(0)


