"""Training-dynamics scorers: how the given label's logit fares against the others over training.

Pleiss et al. 2020 (area under the margin, AUM): a mislabelled sample's given label keeps losing
to the class its features argue for, so its margin stays low — often negative — for most of
training, while clean hard samples are slow but eventually win. Averaging over checkpoints is what
separates the two; the final margin alone is also offered as the cheap baseline. Toneva et al.
2019's forgetting events are the third, coarser view of the same trajectories.

All three read only ``ctx.checkpoint_logits()``, so together they cost one pass per checkpoint.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Scorer, TrainingContext, register


def _check_logits(logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """Checked logits (float32 stays float32: :func:`margins` widens a block at a time) and labels."""
    logits = np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits)
    if logits.dtype not in (np.float32, np.float64):
        logits = logits.astype(np.float64)
    labels = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if logits.ndim < 2 or logits.shape[-2] != labels.shape[0]:
        raise ValueError(f"logits must have shape (..., n, C) with n = {labels.shape[0]}, got {logits.shape}")
    c = logits.shape[-1]
    if c < 2:
        raise ValueError(f"a margin needs at least 2 classes, got C = {c}")
    if labels.size and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite")
    return logits, labels.astype(np.int64)


def margins(logits, labels) -> np.ndarray:
    """Assigned-label logit minus the largest other logit.

    Parameters
    ----------
    logits : array-like, shape (..., n, C)
        Pre-softmax outputs, e.g. (T, n, C) for T checkpoints.
    labels : array-like, shape (n,), int
        Given labels.

    Returns
    -------
    np.ndarray, shape (..., n), float64
        Positive where the given label wins, negative where another class does.
    """
    logits, labels = _check_logits(logits, labels)
    n = labels.shape[0]
    out = np.empty(logits.shape[:-1], dtype=np.float64)
    # a block of rows at a time, in float64: the working copies are a block's, not (T, n, C)'s
    for start in range(0, n, _MARGIN_ROWS):
        block = np.asarray(logits[..., start:start + _MARGIN_ROWS, :], dtype=np.float64)
        index = np.broadcast_to(labels[start:start + _MARGIN_ROWS, None], block.shape[:-1] + (1,))
        assigned = np.take_along_axis(block, index, axis=-1)[..., 0]
        others = block.copy()
        np.put_along_axis(others, index, -np.inf, axis=-1)
        out[..., start:start + _MARGIN_ROWS] = assigned - others.max(-1)
    return out


_MARGIN_ROWS = 65536


def area_under_margin(checkpoint_logits, labels) -> np.ndarray:
    """AUM: the margin averaged over checkpoints (Pleiss et al. 2020, eq. 2).

    Parameters
    ----------
    checkpoint_logits : array-like, shape (T, n, C)
    labels : array-like, shape (n,), int

    Returns
    -------
    np.ndarray, shape (n,), float64 — low (negative) for likely mislabels.
    """
    logits, labels = _check_logits(checkpoint_logits, labels)
    if logits.ndim != 3 or logits.shape[0] < 1:
        raise ValueError(f"checkpoint_logits must have shape (T, n, C) with T >= 1, got {logits.shape}")
    return margins(logits, labels).mean(0)


def forgetting_counts(checkpoint_logits, labels) -> tuple[np.ndarray, np.ndarray]:
    """Forgetting events (Toneva et al. 2019): correct at checkpoint t, wrong at t + 1.

    Parameters
    ----------
    checkpoint_logits : array-like, shape (T, n, C)
    labels : array-like, shape (n,), int

    Returns
    -------
    counts : np.ndarray, shape (n,), int64
        Number of correct -> wrong transitions between consecutive checkpoints.
    learned : np.ndarray, shape (n,), bool
        Whether the sample was ever classified as its given label.
    """
    logits, labels = _check_logits(checkpoint_logits, labels)
    if logits.ndim != 3 or logits.shape[0] < 1:
        raise ValueError(f"checkpoint_logits must have shape (T, n, C) with T >= 1, got {logits.shape}")
    # argmax == label breaks ties towards the lower index; the margin > 0 test is tie-free.
    correct = margins(logits, labels) > 0
    counts = (correct[:-1] & ~correct[1:]).sum(0).astype(np.int64)
    return counts, correct.any(0)


def forgetting_scores(checkpoint_logits, labels) -> np.ndarray:
    """Forgetting events as a suspicion score, higher = more suspicious.

    Never-learned samples rank above every learned one (Toneva et al. treat them as forgotten
    infinitely often); the count alone ties most samples at 0, so ties are broken by AUM, squashed
    into [0, 1) so it never outweighs one forgetting event.

    Returns
    -------
    np.ndarray, shape (n,), float64
    """
    logits, labels = _check_logits(checkpoint_logits, labels)
    counts, learned = forgetting_counts(logits, labels)
    t = logits.shape[0]
    # A sample can be forgotten at most floor(T/2) times; T puts never-learned samples above all.
    level = np.where(learned, counts, t).astype(np.float64)
    aum = area_under_margin(logits, labels)
    tiebreak = 0.5 * (1.0 - np.tanh(aum))  # in (0, 1): low AUM -> near 1
    return level + np.clip(tiebreak, 0.0, 0.999)


@register
class AreaUnderMargin(Scorer):
    name = "aum"
    reads_checkpoint_logits = True
    summary = "area under the margin (Pleiss et al. 2020), negated: mean over checkpoints of best-other minus given logit"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        return -area_under_margin(ctx.checkpoint_logits(), ctx.y)


@register
class FinalMargin(Scorer):
    name = "margin"
    reads_checkpoint_logits = True
    needs_model = False
    summary = "final-checkpoint margin, negated: best other logit minus given-label logit"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        return -margins(ctx.final_logits(), ctx.y)


@register
class Forgetting(Scorer):
    name = "forgetting"
    reads_checkpoint_logits = True
    summary = "forgetting events across checkpoints (Toneva et al. 2019); never-learned first, AUM breaks ties"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        return forgetting_scores(ctx.checkpoint_logits(), ctx.y)
