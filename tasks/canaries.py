"""Canaries: known label flips planted in a copy of an arriving batch.

A detector that flags nothing calls every batch clean. Planting a few flips whose positions we
know, in the very batch being judged, and measuring how many of them the detector flags turns
"clean" into a claim that can be checked: the gate can demand a minimum canary recall. The lake
and the review queue never see the canaries; only the scoring copy carries them.
"""
from __future__ import annotations

import numpy as np


def plant(labels: np.ndarray, candidates: np.ndarray, n: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip ``n`` labels among ``candidates`` to a uniformly drawn other class.

    Parameters
    ----------
    labels : shape (m,), int
        Given labels.
    candidates : shape (m,), bool
        Where canaries may go (the arriving batch's training rows).
    n : int
        How many to plant (capped at the number of candidates).
    num_classes : int
    seed : int

    Returns
    -------
    (np.ndarray, np.ndarray)
        The labels with canaries, and the boolean mask of planted rows.
    """
    if n < 0:
        raise ValueError(f"canaries must be >= 0, got {n}")
    if num_classes < 2 and n:
        raise ValueError("canaries need at least two classes")
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(candidates)
    chosen = rng.choice(pool, size=min(n, len(pool)), replace=False) if n else np.array([], dtype=int)
    out = np.asarray(labels, dtype=np.int64).copy()
    # an offset in 1..k-1 always lands on another class, uniformly
    out[chosen] = (out[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    planted = np.zeros(len(out), dtype=bool)
    planted[chosen] = True
    return out, planted


def recall(flagged: np.ndarray, planted: np.ndarray) -> float:
    """Fraction of planted canaries that were flagged (NaN when none were planted)."""
    planted = np.asarray(planted, bool)
    if not planted.any():
        return float("nan")
    return float(np.asarray(flagged, bool)[planted].mean())
