"""What to do with the flagged samples once a detector has ranked them (pure functions).

Every remedy maps (given labels, flags, out-of-sample probabilities) to a *training plan*: which
rows to train on, with which labels, how often. Pruning throws the flagged samples away; issue 14
measured that this can lose accuracy (a flagged sample is often a hard, informative one, and its
input is still useful). The alternatives keep the inputs:

* ``prune`` — drop the flagged rows (the seed paper's protocol).
* ``relabel`` — give each flagged row the out-of-sample consensus label (the argmax of the fold
  models that never saw it) where that consensus is confident, drop it otherwise.
* ``weight`` — keep every row, draw flagged rows less often: a seeded resample of n rows with
  probability ∝ weight (the training loop has no per-sample loss weights; resampling is the
  unbiased equivalent in expectation).
* ``semi`` — keep the flagged inputs, drop their labels, and let a model trained on the unflagged
  rows pseudo-label them (one round of self-training, the confident ones only: the "keep the
  inputs, drop the label" idea of DivideMix without its MixMatch machinery). The caller trains the
  intermediate model; :func:`pseudo_label_plan` turns its probabilities into the plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REMEDIES = ("prune", "relabel", "weight", "semi")


@dataclass(frozen=True)
class TrainingPlan:
    """Rows and labels to retrain on.

    Attributes
    ----------
    rows : np.ndarray, shape (m,), int64 — indices into the training set (may repeat)
    labels : np.ndarray, shape (m,), int64 — the label to train row ``rows[i]`` with
    changed : int — how many flagged samples got a new label
    dropped : int — how many training samples are absent from ``rows``
    """

    rows: np.ndarray
    labels: np.ndarray
    changed: int
    dropped: int


def _check(labels, flags, probs=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    labels = np.asarray(labels)
    flags = np.asarray(flags)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape}, dtype {labels.dtype}")
    if flags.shape != labels.shape or flags.dtype != bool:
        raise ValueError(f"flags must be a boolean array of shape {labels.shape}, got {flags.dtype} {flags.shape}")
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
            raise ValueError(f"probs must have shape (n, C) with n = {labels.shape[0]}, got {probs.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise ValueError(f"labels must lie in [0, {probs.shape[1]})")
        if not np.all(np.isfinite(probs)):
            raise ValueError("probs must be finite")
    return labels.astype(np.int64), flags, probs


def prune(labels, flags) -> TrainingPlan:
    """Train on the unflagged rows only.

    Parameters
    ----------
    labels : shape (n,), int — given labels
    flags : shape (n,), bool — True = suspected wrong
    """
    labels, flags, _ = _check(labels, flags)
    rows = np.flatnonzero(~flags)
    return TrainingPlan(rows, labels[rows], 0, int(flags.sum()))


def relabel(labels, flags, probs, min_confidence: float = 0.5) -> TrainingPlan:
    """Flagged rows take the out-of-sample argmax where its probability is ≥ ``min_confidence``
    and it differs from the given label; other flagged rows are dropped.

    Parameters
    ----------
    labels : shape (n,), int
    flags : shape (n,), bool
    probs : shape (n, C) — out-of-sample probabilities
    min_confidence : float in [0, 1]
    """
    labels, flags, probs = _check(labels, flags, probs)
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence}")
    consensus = probs.argmax(1)
    sure = probs.max(1) >= min_confidence
    change = flags & sure & (consensus != labels)
    keep = ~flags | change
    new = np.where(change, consensus, labels)
    rows = np.flatnonzero(keep)
    return TrainingPlan(rows, new[rows], int(change.sum()), int((~keep).sum()))


def weight(labels, flags, seed: int, suspect_weight: float = 0.25) -> TrainingPlan:
    """Keep every row; flagged rows are drawn ``suspect_weight`` times as often as the others
    (a seeded resample of n rows with replacement, probability ∝ weight).

    Parameters
    ----------
    labels : shape (n,), int
    flags : shape (n,), bool
    seed : int
    suspect_weight : float in [0, 1]
    """
    labels, flags, _ = _check(labels, flags)
    if not 0.0 <= suspect_weight <= 1.0:
        raise ValueError(f"suspect_weight must lie in [0, 1], got {suspect_weight}")
    w = np.where(flags, suspect_weight, 1.0)
    if w.sum() == 0:
        raise ValueError("every sample is flagged and suspect_weight is 0: nothing to train on")
    rows = np.sort(np.random.default_rng(seed).choice(len(labels), size=len(labels), p=w / w.sum()))
    return TrainingPlan(rows, labels[rows], 0, int(len(labels) - np.unique(rows).size))


def pseudo_label_plan(labels, flags, probs, min_confidence: float = 0.7) -> TrainingPlan:
    """The ``semi`` remedy's second step: flagged rows lose their label and take the pseudo-label
    of a model trained on the unflagged rows (``probs``) when it is at least ``min_confidence``
    sure; unflagged rows keep theirs.

    Parameters
    ----------
    labels : shape (n,), int
    flags : shape (n,), bool
    probs : shape (n, C) — the intermediate model's probabilities (only flagged rows are read)
    min_confidence : float in [0, 1]
    """
    labels, flags, probs = _check(labels, flags, probs)
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must lie in [0, 1], got {min_confidence}")
    sure = flags & (probs.max(1) >= min_confidence)
    new = np.where(sure, probs.argmax(1), labels)
    keep = ~flags | sure
    rows = np.flatnonzero(keep)
    return TrainingPlan(rows, new[rows], int((sure & (new != labels)).sum()), int((~keep).sum()))


def gap_recovered(noisy_acc: float, remedy_acc: float, oracle_acc: float) -> float:
    """Fraction of the noisy → oracle accuracy gap a remedy recovers (1 = all of it, < 0 = worse
    than not acting). ``nan`` when the gap is under 0.001 (nothing to recover)."""
    for name, v in (("noisy_acc", noisy_acc), ("remedy_acc", remedy_acc), ("oracle_acc", oracle_acc)):
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    gap = oracle_acc - noisy_acc
    return float("nan") if gap < 1e-3 else float((remedy_acc - noisy_acc) / gap)
