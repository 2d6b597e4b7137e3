"""TracIn self-influence (Pruthi et al. 2020), full model and last layer.

``TracInSelf(z_i) = Σ_t η_t ‖∇_θ ℓ(θ_t, z_i)‖²`` over the saved checkpoints ``θ_t`` with their
learning rates ``η_t``. A sample whose given label disagrees with what the rest of the data teach
keeps a large loss gradient throughout training, so a large self-influence flags a likely
mislabel. The per-sample squared norms come from :mod:`.gradients` (one batched forward and
backward pass per checkpoint, no per-sample gradient materialised for Linear layers); the
scorers cache them per checkpoint on the context (:func:`.gradients.checkpoint_grad_sq_norms`).

``lr_t`` is ``Checkpoint.lr``, the optimiser's learning rate, as in the paper; with SGD momentum
``μ`` the effective step is ``lr/(1-μ)``, a constant factor that does not change the ranking.
"""
from __future__ import annotations

import numpy as np
from torch import nn

from .base import Scorer, TrainingContext, register
from .gradients import as_inputs, check_batch_size, checkpoint_grad_sq_norms, per_sample_grad_sq_norms


def tracin_self_influence(
    models: list[nn.Module],
    lrs: list[float],
    x,
    y,
    *,
    layers: str = "all",
    batch_size: int = 256,
) -> np.ndarray:
    """``Σ_t lr_t · ‖∇_θ ℓ(θ_t, z_i)‖²`` for every sample.

    Parameters
    ----------
    models : list of nn.Module, length T
        The model at each checkpoint (eval mode).
    lrs : list of float, length T
        Learning rate in force while training towards each checkpoint.
    x : array-like, shape (n, *sample_shape)
    y : array-like, shape (n,), int
    layers : {"all", "head"}
        All trainable layers, or ``model.head`` only.
    batch_size : int

    Returns
    -------
    np.ndarray, shape (n,), float64
    """
    if len(models) == 0:
        raise ValueError("TracIn needs at least one checkpoint")
    if len(models) != len(lrs):
        raise ValueError(f"got {len(models)} models but {len(lrs)} learning rates")
    if any(not np.isfinite(lr) or lr <= 0 for lr in lrs):
        raise ValueError(f"learning rates must be finite and positive, got {list(lrs)}")
    x, y = as_inputs(models[0], x, y)
    check_batch_size(batch_size)
    total = np.zeros(len(x))
    for model, lr in zip(models, lrs):
        total += float(lr) * per_sample_grad_sq_norms(model, x, y, layers=layers, batch_size=batch_size)
    return total


class _TracIn(Scorer):
    layers: str = "all"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        batch_size = int(self.options.get("batch_size", 256))
        lrs = np.array([c.lr for c in ctx.checkpoints], dtype=np.float64)
        if np.any(~np.isfinite(lrs) | (lrs <= 0)):
            raise ValueError(f"checkpoint learning rates must be finite and positive, got {lrs.tolist()}")
        norms = checkpoint_grad_sq_norms(ctx, self.layers, batch_size)   # (T, n), cached on ctx
        return lrs @ norms


@register
class TracIn(_TracIn):
    """TracIn self-influence over every trainable layer (the paper's definition).

    Options: ``batch_size`` (default 256).
    """

    name = "tracin"
    summary = "TracIn self-influence: Σ_t lr_t ‖∇ℓ‖² over checkpoints, all layers"
    layers = "all"


@register
class TracInLast(_TracIn):
    """TracIn self-influence restricted to ``model.head``, weights and bias.

    Captum's ``TracInCPFast`` computes the same over the head's weights only (no bias term); the
    benchmark checks the two agree when the bias is left out.
    """

    name = "tracin-last"
    summary = "TracIn self-influence over checkpoints, last layer only"
    layers = "head"
