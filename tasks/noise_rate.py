"""How many training labels are wrong? Estimators on out-of-sample probabilities (pure numpy).

The count sets k: how much the audit prunes or relabels and what the noise-rate gate compares.
Confident learning's count (:func:`winnow.tasks.scorers.confident.estimate_noise_count`) is exact
when the model is accurate and falls apart when it is not: its per-class thresholds are the mean
self-confidence, so a weak model (CIFAR-10 at ~50% accuracy) counts its own mistakes as label
errors (+131% on CIFAR-10N in issue 14), and instance-dependent flips, which land on samples the
model finds confusable, fall under the thresholds (-47% on Fashion-MNIST).

The estimators here all read the same (n, C) out-of-sample probabilities:

* :func:`anchor_count` — the noise transition matrix from anchor points (Patrini et al. 2017):
  among samples the model is surest belong to class j, the share of each given label estimates
  T[j, ·]; wrong labels = Σ_j n_j (1 − T[j, j]).
* :func:`mixture_count` — a two-component Gaussian mixture on the out-of-sample log-odds of the
  given label (Arazo et al. 2019, DivideMix): the weight of the low component.
* :func:`expected_count` — Σ_i (1 − p(y_i | x_i)) shrunk by the model's own expected error on the
  samples it agrees with; the plain sum counts every model error as a label error.
* :func:`injected_slope_count` — any of the above corrected by its response to flips injected
  into the given labels (needs one more out-of-sample pass; measured, not the default).
* :func:`estimate_noise_count` — the recommended one, :data:`RECOMMENDED` (chosen on the
  benchmark grid, see docs/remedies.md).
"""
from __future__ import annotations

import numpy as np

ESTIMATORS = ("confident", "anchor", "mixture", "expected")


def _check(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape}, dtype {labels.dtype}")
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must have shape (n, C) with n = {labels.shape[0]}, got {probs.shape}")
    if labels.size == 0:
        raise ValueError("labels are empty")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("probs must be finite and non-negative")
    return labels.astype(np.int64), probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)


def anchor_count(labels, probs, quantile: float = 0.97) -> int:
    """Wrong labels from the anchor-point transition matrix.

    Parameters
    ----------
    labels : shape (n,), int
    probs : shape (n, C), out-of-sample p(ỹ | x)
    quantile : float in (0, 1)
        Anchors of class j are the samples whose p(ỹ = j | x) reaches this quantile (the top 3%
        by default, Xia et al. 2019's robust variant of the single argmax).

    Returns
    -------
    int, in [0, n]
    """
    labels, probs = _check(labels, probs)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
    c = probs.shape[1]
    counts = np.bincount(labels, minlength=c).astype(np.float64)
    wrong = 0.0
    for j in range(c):
        anchors = probs[:, j] >= np.quantile(probs[:, j], quantile)
        # the given labels of samples surely of class j: their label mix is row j of T
        t_jj = np.mean(labels[anchors] == j) if anchors.any() else 1.0
        wrong += counts[j] * (1.0 - t_jj)
    return int(round(min(wrong, len(labels))))


def mixture_count(labels, probs, seed: int = 0) -> int:
    """Wrong labels as the weight of the low component of a 2-Gaussian mixture on the log-odds of
    the given label's out-of-sample probability. Returns an int in [0, n]."""
    from sklearn.mixture import GaussianMixture

    labels, probs = _check(labels, probs)
    p = np.clip(probs[np.arange(len(labels)), labels], 1e-6, 1 - 1e-6)
    logodds = np.log(p / (1 - p))[:, None]
    if len(labels) < 4 or np.ptp(logodds) == 0:
        return 0
    gmm = GaussianMixture(2, random_state=seed).fit(logodds)
    low = int(np.argmin(gmm.means_[:, 0]))
    return int(round(gmm.weights_[low] * len(labels)))


def expected_count(labels, probs) -> int:
    """Σ (1 − p(y_i|x_i)) minus the model's own error where it agrees with the label.

    Where the argmax equals the given label, 1 − p(y|x) is mostly the model's uncertainty, not a
    label error; that mass is subtracted from the disagreeing samples' total at the same rate.
    Returns an int in [0, n].
    """
    labels, probs = _check(labels, probs)
    p_given = probs[np.arange(len(labels)), labels]
    agree = probs.argmax(1) == labels
    if agree.all():
        return 0
    own_error = float(np.mean(1.0 - p_given[agree])) if agree.any() else 0.0
    disagree_mass = float(np.sum(1.0 - p_given[~agree]))
    return int(round(np.clip(disagree_mass - own_error * (~agree).sum(), 0, len(labels))))


def inject_flips(labels, num_classes: int, rate: float, seed: int) -> np.ndarray:
    """A copy of ``labels`` with ``round(rate · n)`` seeded random rows moved to a uniformly random
    *other* class. Shape (n,), int64."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D integer array, got shape {labels.shape}, dtype {labels.dtype}")
    if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}) with num_classes >= 2")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"rate must lie in (0, 1), got {rate}")
    rng = np.random.default_rng(seed + 104729)
    out = labels.astype(np.int64).copy()
    rows = rng.choice(len(out), size=max(1, int(round(rate * len(out)))), replace=False)
    out[rows] = (out[rows] + rng.integers(1, num_classes, size=len(rows))) % num_classes
    return out


def injected_slope_count(labels, probs, probs_injected, injected_rate: float, seed: int = 0,
                         base: str = "expected") -> int:
    """"Noise you inject is noise you can count": correct an estimator by its response to known flips.

    ``probs_injected`` are out-of-sample probabilities of the same recipe retrained on
    :func:`inject_flips` (``labels``, C, ``injected_rate``, ``seed``). If the estimator counts a fixed
    share ``b`` of the wrong labels (k̂ = b · N), the extra flips move it by b · ΔN, and
    N = k̂ / b. ΔN depends on N (a flip that lands on a wrong label leaves it wrong, or makes it
    right with probability 1/(C − 1)), so N and b are solved together by fixed-point iteration.
    Uses no clean label. Returns an int in [0, n].

    Parameters
    ----------
    labels, probs : shape (n,), (n, C) — the given labels and their out-of-sample probabilities
    probs_injected : shape (n, C) — the same after the injection
    injected_rate : float in (0, 1) — the ``rate`` passed to :func:`inject_flips`
    seed : int — the ``seed`` passed to :func:`inject_flips`
    base : str — the estimator corrected (one of :data:`ESTIMATORS`)
    """
    labels, probs = _check(labels, probs)
    if base not in ESTIMATORS:
        raise ValueError(f"base must be one of {', '.join(ESTIMATORS)}, got {base!r}")
    if not 0.0 < injected_rate < 1.0:
        raise ValueError(f"injected_rate must lie in (0, 1), got {injected_rate}")
    n, c = probs.shape
    injected = inject_flips(labels, c, injected_rate, seed)
    _check(injected, probs_injected)
    k1, k2 = estimate(labels, probs, base), estimate(injected, probs_injected, base)
    m = int(np.sum(injected != labels))
    wrong = float(k1)
    for _ in range(50):
        share = min(max(wrong / n, 0.0), 1.0)
        added = m * (1.0 - share * c / (c - 1))  # wrong labels the injection added, net
        if added <= 0 or k2 <= k1:
            return int(round(min(max(k1, 0), n)))  # no measurable response: keep the base count
        slope = (k2 - k1) / added
        new = k1 / slope
        if abs(new - wrong) < 0.5:
            wrong = new
            break
        wrong = new
    return int(round(min(max(wrong, 0.0), n)))


def estimate(labels, probs, method: str) -> int:
    """Dispatch on ``method`` (one of :data:`ESTIMATORS`)."""
    if method == "confident":
        from .scorers.confident import estimate_noise_count as confident_count

        return confident_count(labels, probs)
    if method == "anchor":
        return anchor_count(labels, probs)
    if method == "mixture":
        return mixture_count(labels, probs)
    if method == "expected":
        return expected_count(labels, probs)
    raise ValueError(f"unknown noise-count estimator {method!r}; choose one of {', '.join(ESTIMATORS)}")


#: the estimator winnow uses by default: `expected` has the smallest worst-case error on the
#: benchmark grid and is within ±20% on 5 of 12 settings where confident learning is on 1 (the
#: per-setting table: docs/remedies.md). The on-arrival gate's `max_noise_rate` was set on confident
#: learning's counts; what the switch means for its thresholds is in docs/remedies.md.
RECOMMENDED = "expected"
#: how a run names its k source (the audit's ``k_source``), and what it means (the real-data report)
NAMES = {"confident": "confident learning", "anchor": "anchor points", "mixture": "log-odds mixture",
         "expected": "expected error"}
DESCRIPTIONS = {
    "confident learning": "confident learning (Northcutt et al. 2021): the off-diagonal mass of the confident "
                          "joint of the out-of-sample probabilities",
    "anchor points": "anchor points (Patrini et al. 2017): per class, the share of other labels among the 3% "
                     "of samples the out-of-sample model is surest belong to it, times the class count",
    "log-odds mixture": "the low component's weight in a 2-Gaussian mixture on the out-of-sample log-odds of the "
                        "given label",
    "expected error": "the out-of-sample probability mass against the given label, less the model's own "
                      "uncertainty where it agrees with the label",
}
SOURCE = NAMES[RECOMMENDED]


def estimate_noise_count(labels, probs) -> int:
    """The recommended estimate of how many labels are wrong (:data:`RECOMMENDED`)."""
    return estimate(labels, probs, RECOMMENDED)
