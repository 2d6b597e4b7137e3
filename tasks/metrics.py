"""Detection metrics against the injected ground truth. Pure: arrays in, floats out."""
from __future__ import annotations

import numpy as np

INSPECT_FRACTIONS = (0.05, 0.10, 0.20, 0.30)


def _check(scores, is_flipped) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(is_flipped, dtype=bool)
    if scores.shape != truth.shape or scores.ndim != 1:
        raise ValueError(f"scores and is_flipped must be 1-D of equal length, got {scores.shape} and {truth.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores, truth


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices from most to least suspicious; ties keep index order (stable)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def precision_recall_at_k(scores, is_flipped, k: int) -> tuple[float, float]:
    scores, truth = _check(scores, is_flipped)
    if k <= 0:
        return float("nan"), float("nan")
    hits = truth[ranking(scores)[:k]].sum()
    total = truth.sum()
    return float(hits / min(k, len(scores))), float(hits / total) if total else float("nan")


def found_vs_inspected(scores, is_flipped, fractions=INSPECT_FRACTIONS) -> dict[float, float]:
    """Fraction of all mislabels found when the top ``f`` of the training set is inspected."""
    scores, truth = _check(scores, is_flipped)
    order = ranking(scores)
    total = truth.sum()
    cum = np.cumsum(truth[order])
    out = {}
    for f in fractions:
        k = int(round(f * len(scores)))
        out[f] = float(cum[k - 1] / total) if total and k > 0 else float("nan")
    return out


def detection_metrics(scores, is_flipped, k: int) -> dict[str, float]:
    """AUROC, average precision, precision@k, recall@k and found@{5,10,20,30}%.

    NaN where a metric is undefined (no flips, or nothing but flips).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, truth = _check(scores, is_flipped)
    both = 0 < truth.sum() < len(truth)
    p, r = precision_recall_at_k(scores, truth, k)
    out = {
        "auroc": float(roc_auc_score(truth, scores)) if both else float("nan"),
        "ap": float(average_precision_score(truth, scores)) if both else float("nan"),
        "precision_at_k": p,
        "recall_at_k": r,
        "k": float(k),
    }
    for f, v in found_vs_inspected(scores, truth).items():
        out[f"found_at_{int(round(f * 100))}pct"] = v
    return out


def precision_curve(scores, is_flipped, points: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fraction inspected, precision, recall) along the ranking, for plots."""
    scores, truth = _check(scores, is_flipped)
    order = ranking(scores)
    cum = np.cumsum(truth[order])
    ks = np.unique(np.linspace(1, len(scores), points).round().astype(int))
    total = max(truth.sum(), 1)
    return ks / len(scores), cum[ks - 1] / ks, cum[ks - 1] / total
