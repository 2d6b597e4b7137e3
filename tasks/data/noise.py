"""Label noise with known ground truth. Pure: arrays in, arrays out."""
from __future__ import annotations

import numpy as np

NOISE_KINDS = ("none", "symmetric", "class-pair", "instance-dependent")


def _check(labels: np.ndarray, num_classes: int, rate: float) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must lie in [0, 1), got {rate}")
    return labels.astype(np.int64)


def _pick(n: int, rate: float, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    """Exactly round(rate * n) distinct indices (so the realised rate is the asked rate)."""
    k = int(round(rate * n))
    if weights is None:
        return rng.choice(n, size=k, replace=False)
    p = weights / weights.sum()
    return rng.choice(n, size=k, replace=False, p=p)


def symmetric(labels, num_classes: int, rate: float, seed: int) -> np.ndarray:
    """Flip exactly ``round(rate*n)`` labels, each to a uniformly drawn *other* class.

    Returns
    -------
    np.ndarray, shape (n,), int64 : the noisy labels.
    """
    labels = _check(labels, num_classes, rate)
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    idx = _pick(len(labels), rate, rng)
    shift = rng.integers(1, num_classes, size=len(idx))  # 1..C-1 never maps a class to itself
    noisy[idx] = (labels[idx] + shift) % num_classes
    return noisy


def confusable_partners(x: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """For each class, the other class whose mean sample is nearest (a data-derived confusable pair).

    Returns
    -------
    np.ndarray, shape (num_classes,), int64 : ``partner[c] != c``.
    """
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    centroids = np.stack([
        flat[labels == c].mean(0) if np.any(labels == c) else np.full(flat.shape[1], np.inf)
        for c in range(num_classes)
    ])
    d = ((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    d = np.nan_to_num(d, nan=np.inf)
    return np.argmin(d, axis=1).astype(np.int64)


def class_pair(labels, num_classes: int, rate: float, seed: int, partners: np.ndarray) -> np.ndarray:
    """Flip exactly ``round(rate*n)`` labels, each to its class's fixed partner ``partners[c]``."""
    labels = _check(labels, num_classes, rate)
    partners = np.asarray(partners, dtype=np.int64)
    if partners.shape != (num_classes,) or np.any(partners == np.arange(num_classes)):
        raise ValueError("partners must have one entry per class, none mapping a class to itself")
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    idx = _pick(len(labels), rate, rng)
    noisy[idx] = partners[labels[idx]]
    return noisy


def instance_dependent(labels, num_classes: int, rate: float, seed: int, probs: np.ndarray) -> np.ndarray:
    """Flip exactly ``round(rate*n)`` labels; a sample is picked with probability growing with how
    confusable it is (1 - p(true class) under a clean model), and goes to its most likely wrong class.

    Parameters
    ----------
    probs : np.ndarray, shape (n, num_classes)
        Class probabilities from a model trained on the clean labels.
    """
    labels = _check(labels, num_classes, rate)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(labels), num_classes):
        raise ValueError(f"probs must have shape {(len(labels), num_classes)}, got {probs.shape}")
    rng = np.random.default_rng(seed)
    confusion = 1.0 - probs[np.arange(len(labels)), labels]
    idx = _pick(len(labels), rate, rng, weights=confusion + 1e-3)
    wrong = probs.copy()
    wrong[np.arange(len(labels)), labels] = -np.inf
    noisy = labels.copy()
    noisy[idx] = np.argmax(wrong[idx], axis=1)
    return noisy
