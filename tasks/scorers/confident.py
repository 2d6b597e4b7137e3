"""Confident learning (Northcutt et al. 2021), implemented here on numpy.

Why our own and not cleanlab's: the algorithm is ~40 lines once out-of-sample probabilities
exist, the audit path then needs no extra dependency, and the benchmark runs cleanlab's
``find_label_issues`` beside it as a peer (a test checks both flag the same samples).
"""
from __future__ import annotations

import numpy as np

from .base import Scorer, TrainingContext, register


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must have shape (n, C) with n = {labels.shape[0]}, got {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]})")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("probs must be finite and non-negative")
    return labels, probs


def per_class_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """t_j = mean self-confidence p(j | x) over samples labelled j. Shape (C,)."""
    labels, probs = _check(labels, probs)
    c = probs.shape[1]
    t = np.array([probs[labels == j, j].mean() if np.any(labels == j) else np.inf for j in range(c)])
    return t


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The confident joint C[i][j]: samples labelled i confidently belonging to j.

    A sample counts toward the class j maximising p(j|x) among classes whose probability
    reaches their threshold t_j; samples above no threshold are not counted.

    Returns
    -------
    joint : np.ndarray, shape (C, C), int64
    assigned : np.ndarray, shape (n,), int64 — the confident class, or -1.
    """
    labels, probs = _check(labels, probs)
    t = per_class_thresholds(labels, probs)
    above = probs >= t[None, :]
    masked = np.where(above, probs, -np.inf)
    assigned = np.where(above.any(1), masked.argmax(1), -1)
    c = probs.shape[1]
    joint = np.zeros((c, c), dtype=np.int64)
    ok = assigned >= 0
    np.add.at(joint, (labels[ok], assigned[ok]), 1)
    return joint, assigned


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Prune by noise rate: for each off-diagonal cell (i, j) of the calibrated confident joint,
    flag the n_ij samples labelled i with the largest margin p(j|x) - p(i|x).

    Returns
    -------
    np.ndarray, shape (n,), bool — True where the given label is likely wrong.
    """
    labels, probs = _check(labels, probs)
    n, c = probs.shape
    joint, _ = confident_joint(labels, probs)
    # Calibrate rows so they sum to the observed class counts (as in the paper, eq. 2).
    counts = np.bincount(labels, minlength=c).astype(np.float64)
    row = joint.sum(1, keepdims=True).astype(np.float64)
    calibrated = np.divide(joint * counts[:, None], row, out=np.zeros((c, c)), where=row > 0)
    issues = np.zeros(n, dtype=bool)
    for i in range(c):
        members = np.flatnonzero(labels == i)
        for j in range(c):
            if i == j:
                continue
            k = int(round(calibrated[i, j]))
            if k <= 0 or members.size == 0:
                continue
            margin = probs[members, j] - probs[members, i]
            issues[members[np.argsort(-margin, kind="stable")[:k]]] = True
    return issues


def estimate_noise_count(labels: np.ndarray, probs: np.ndarray) -> int:
    """How many labels confident learning believes are wrong (used as the default prune k)."""
    return int(find_label_issues(labels, probs).sum())


@register
class ConfidentLearning(Scorer):
    name = "confident"
    needs_model = False
    summary = "confident learning on K-fold out-of-sample probabilities (issues first, then by self-confidence)"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        probs = ctx.out_of_sample_probs()
        labels = ctx.y.numpy()
        issues = find_label_issues(labels, probs)
        self_confidence = probs[np.arange(len(labels)), labels]
        return issues.astype(np.float64) + (1.0 - self_confidence)
