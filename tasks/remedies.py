"""What to do with the flagged samples once a detector has ranked them (pure functions).

Every remedy maps (given labels, flags, out-of-sample probabilities) to a *training plan*: which
rows to train on, with which labels, how often. Pruning throws the flagged samples away; issue 14
measured that this can lose accuracy (a flagged sample is often a hard, informative one, and its
input is still useful). The alternatives keep the inputs:

* ``prune`` — drop the flagged rows (the seed paper's protocol).
* ``relabel`` — give each flagged row the out-of-sample consensus label (the argmax of the fold
  models that never saw it) where that consensus is confident, drop it otherwise.
* ``relabel-other`` — give each flagged row the most probable class other than its given label
  (the flag says the given one is wrong); nothing is dropped.
* ``relabel-agreed`` — give each flagged row the class that two independent second opinions both
  put first among the classes other than its given one: the out-of-sample fold models (which
  never saw the row) and the label-free probe cross-fitted on features that never saw a label
  (``scorers.label_free.cross_fitted_probe``); drop the flagged rows they disagree on (how often
  the agreed class is the true one, per setting: docs/remedies.md).
* ``relabel-soft`` — give each flagged row, instead of one label, the distribution of the two
  opinions' average (the out-of-sample folds' probabilities averaged with the label-free probe's:
  the suggested label's distribution, ``review.suggestion_probs``) as a soft target; nothing is
  dropped, no threshold is chosen. Where the opinions are sure it is a hard relabel; where they are
  not (weak models, human noise) the row still teaches the classes it may belong to instead of
  one label that is as likely wrong as the given one.
* ``soft-all`` — ``relabel-soft`` for the flagged rows, and every *unflagged* row trains on the
  average of its one-hot given label and the same two-opinion distribution (half its label, a
  quarter each opinion; the weight was set before any measurement). The unflagged rows' labels are
  wrong too, at a lower rate the flags did not reach, and the fold models and the probe, averaged,
  are an ensemble the retrained model learns from (distillation); nothing is dropped.
* ``weight`` — keep every row, draw flagged rows less often: a seeded resample of n rows with
  probability ∝ weight (the training loop has no per-sample loss weights; resampling is the
  unbiased equivalent in expectation).
* ``semi`` — keep the flagged inputs, drop their labels, and let a model trained on the unflagged
  rows pseudo-label them (one round of self-training, the confident ones only: the "keep the
  inputs, drop the label" idea of DivideMix without its MixMatch machinery). The caller trains the
  intermediate model; :func:`pseudo_label_plan` turns its probabilities into the plan.
* ``gce`` — keep every row and label, retrain with the generalized cross-entropy (Zhang &
  Sabuncu 2018), a loss bounded per sample, so wrong labels pull less (ignores the flags).
* ``select`` — the safeguard: split the rows into :data:`SELECT_FOLDS` folds; for each
  fold train ``none`` (no change) and each of :data:`SELECT_CANDIDATES` on the other folds and
  predict the held-out one; keep the candidate with the best accuracy on the held-out *given*
  labels, and fall back to ``none`` unless it beats ``none`` by more than one standard error of
  the paired per-sample difference. Under class-conditional noise,
  accuracy on noisy labels is an increasing function of accuracy on clean ones, so the held-out
  slice ranks models as a clean one would (only less sharply); this keeps a remedy from lowering
  accuracy on data where the flags are mostly wrong, without a clean label anywhere.

:func:`train_with_remedy` runs any of them given a training callable, so the audit's retrain stage
and the benchmark share one implementation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

REMEDIES = ("select", "prune", "relabel", "relabel-other", "relabel-agreed", "relabel-soft", "soft-all", "weight", "semi",
            "gce")
#: the remedies that read the out-of-sample probabilities (the audit computes them when asked for one)
NEEDS_OOS = ("select", "relabel", "relabel-other", "relabel-agreed", "relabel-soft", "soft-all")
#: the remedies that also read a label-free second opinion (``second`` of :func:`train_with_remedy`)
NEEDS_SECOND_OPINION = ("relabel-agreed", "relabel-soft", "soft-all")
#: what ``winnow run`` does with the flags unless ``--remedy`` says otherwise. ``soft-all`` since
#: stop 24: against ``relabel-soft`` on the same flags +0.008 ± 0.002 test accuracy over the 81
#: paired cells of the remedy grid (ahead on 52) and +0.009 ± 0.002 over 34 held-out cells (ahead
#: on 24; none below the unchanged model there, 12 of 81 on the grid); the flags matter: ignoring
#: them (every row half label, half opinions) was 0.006 ± 0.001 behind it on the grid
#: (docs/remedies.md). ``relabel-soft`` (stop 23) had beaten ``prune`` by +0.008 ± 0.002 /
#: +0.016 ± 0.005. Before it ``prune``: ``select`` recovered less of the gap than ``prune`` on 4 of
#: 6 synthetic settings, did not keep every seed at or above the unchanged model, and costs 10
#: trainings per scorer
DEFAULT_REMEDY = "soft-all"
#: the remedies ``select`` compares with ``none`` (fixed before any measurement of it; each costs
#: one training on the 80% slice)
SELECT_CANDIDATES = ("prune", "relabel", "gce")
#: ``select`` ranks candidates by cross-validation over this many folds of the given labels (every
#: row is held out once: a single 20% slice was too noisy to rank remedies on 1,341 digits)
SELECT_FOLDS = 3
#: a candidate replaces ``none`` only if it wins on the held-out slice by more than this many
#: standard errors of the paired per-sample difference (one-sided, ~84%; set a priori)
SELECT_MIN_Z = 1.0


@dataclass(frozen=True)
class TrainingPlan:
    """Rows and labels to retrain on.

    Attributes
    ----------
    rows : np.ndarray, shape (m,), int64 — indices into the training set (may repeat)
    labels : np.ndarray, shape (m,), int64 — the label to train row ``rows[i]`` with; or shape
        (m, C), float64, a soft target per row (``relabel-soft``)
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


def relabel_other(labels, flags, probs) -> TrainingPlan:
    """Flagged rows take the most probable class *other than* their given label; none is dropped.

    A flag says "this label is wrong"; given that, the best guess of the true class is the
    out-of-sample posterior renormalised over the other classes, i.e. its argmax with the given
    label excluded. Where the model itself believes the wrong label (instance-dependent and human
    noise flip to the class a sample most resembles), plain ``relabel`` keeps or drops the row and
    this one names the runner-up class, which is where the true class mostly is.

    Parameters
    ----------
    labels : shape (n,), int
    flags : shape (n,), bool
    probs : shape (n, C) — out-of-sample probabilities
    """
    labels, flags, probs = _check(labels, flags, probs)
    if probs.shape[1] < 2:
        raise ValueError("relabel-other needs at least 2 classes")
    new = np.where(flags, _best_other(probs, labels), labels)
    return TrainingPlan(np.arange(len(labels)), new, int(flags.sum()), 0)


def _best_other(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's highest-scoring class other than its given label: shape (n,)."""
    others = np.array(scores, dtype=np.float64)
    others[np.arange(len(labels)), labels] = -np.inf
    return others.argmax(1)


def relabel_agreed(labels, flags, probs, second) -> TrainingPlan:
    """Flagged rows take the class that both opinions rank first among the classes other than the
    given one; the flagged rows they disagree on are dropped; unflagged rows keep their label.

    A flag says "this label is wrong"; each opinion's runner-up is its guess of the true class.
    One model's guess fails where that model learned the mistake (instance-dependent and human
    noise flip to the class a sample resembles); two opinions that learned from different things
    (a trained model's out-of-sample folds, a linear probe on label-free features) rarely agree on
    the same wrong class, so agreement is the evidence to relabel on, and disagreement falls back
    to pruning.

    Parameters
    ----------
    labels : shape (n,), int
    flags : shape (n,), bool
    probs : shape (n, C) — out-of-sample probabilities
    second : shape (n, C) — the second opinion's class scores (higher = more likely; any scale)
    """
    labels, flags, probs = _check(labels, flags, probs)
    second = np.asarray(second, dtype=np.float64)
    if second.shape != probs.shape:
        raise ValueError(f"second must have the shape of probs {probs.shape}, got {second.shape}")
    if not np.all(np.isfinite(second)):
        raise ValueError("second must be finite")
    if probs.shape[1] < 2:
        raise ValueError("relabel-agreed needs at least 2 classes")
    guess = _best_other(probs, labels)
    change = flags & (guess == _best_other(second, labels))
    keep = ~flags | change
    new = np.where(change, guess, labels)
    kept = np.flatnonzero(keep)
    return TrainingPlan(kept, new[kept], int(change.sum()), int((~keep).sum()))


def soft_targets(labels, flags, suggestion, soften_unflagged: bool = False) -> np.ndarray:
    """The soft targets of ``relabel-soft`` (``soften_unflagged=False``) and ``soft-all`` (True).

    Parameters
    ----------
    labels : shape (n,), int
    flags : shape (n,), bool
    suggestion : shape (n, C), rows summing to 1
        The distribution a flagged row's suggested label is the argmax of
        (``review.suggestion_probs``: the out-of-sample folds averaged with the label-free probe).

    Returns
    -------
    np.ndarray, shape (n, C), float64, rows summing to 1: flagged rows = ``suggestion``; the others
    one-hot at their label, or (``soften_unflagged``) the average of that and ``suggestion``
    """
    labels, flags, suggestion = _check(labels, flags, suggestion)
    if suggestion is None or (suggestion < 0).any() or not np.allclose(suggestion.sum(1), 1, atol=1e-3):
        raise ValueError(f"suggestion must be probabilities of shape ({len(labels)}, C) (non-negative, rows summing "
                         f"to 1)")
    targets = np.eye(suggestion.shape[1])[labels]
    if soften_unflagged:
        targets = (targets + suggestion) / 2
    targets[flags] = suggestion[flags]
    return targets / targets.sum(1, keepdims=True)  # exact sums after averaging


def relabel_soft(labels, flags, probs, second=None, soften_unflagged: bool = False) -> TrainingPlan:
    """Every row is kept; unflagged rows train on their given label (one-hot), flagged rows on the
    average of the out-of-sample probabilities and the second opinion's (``probs`` alone when
    there is none): the distribution whose argmax is the suggested label (``review.suggestion_probs``).
    With ``soften_unflagged`` (``soft-all``) the unflagged rows train on the average of their
    one-hot label and that distribution (:func:`soft_targets`).

    Parameters
    ----------
    labels : shape (n,), int
    flags : shape (n,), bool
    probs : shape (n, C) — out-of-sample probabilities (rows summing to 1)
    second : shape (n, C), optional — the label-free probe's probabilities
        (``scorers.label_free.second_opinion``, rows summing to 1)

    Returns
    -------
    TrainingPlan whose ``labels`` are soft targets, shape (n, C), float64, rows summing to 1;
    ``changed`` = flagged rows
    """
    from .review import suggestion_probs  # the one definition of the suggestion's distribution

    labels, flags, probs = _check(labels, flags, probs)
    second = None if second is None else np.asarray(second, dtype=np.float64)
    for name, p in (("probs", probs), ("second", second)):
        if p is not None and (p.shape != probs.shape or not np.all(np.isfinite(p)) or (p < 0).any()
                              or not np.allclose(p.sum(1), 1, atol=1e-4)):
            raise ValueError(f"{name} must be probabilities of shape {probs.shape} (non-negative, rows summing to 1)")
    targets = soft_targets(labels, flags, suggestion_probs(probs, second), soften_unflagged)
    return TrainingPlan(np.arange(len(labels)), targets, int(flags.sum()), 0)


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


# ---------------------------------------------------------------- robust loss, selection, one entry point


def generalized_cross_entropy(logits, targets, q: float = 0.7):
    """Generalized cross-entropy (Zhang & Sabuncu 2018), mean over the batch: (1 − p_y^q) / q.

    q → 0 is cross-entropy, q = 1 the mean absolute error; the loss of a sample is at most 1/q, so
    a confidently wrong label cannot dominate the gradient as it does under cross-entropy.

    Parameters
    ----------
    logits : torch.Tensor, shape (b, C)
    targets : torch.Tensor, shape (b,), int64
    q : float in (0, 1]
    """
    import torch

    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must lie in (0, 1], got {q}")
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (b, C) and targets (b,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    p_y = torch.softmax(logits, 1).gather(1, targets[:, None]).squeeze(1).clamp_min(1e-7)
    return ((1.0 - p_y ** q) / q).mean()


def holdout_folds(n: int, seed: int, folds: int = SELECT_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded random (fit, held-out) splits of ``range(n)``: every row is held out exactly once.

    Returns a list of ``folds`` pairs of sorted int64 arrays."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if n < folds:
        raise ValueError(f"need at least {folds} samples for {folds} folds, got n = {n}")
    parts = np.array_split(np.random.default_rng(seed + 7919).permutation(n), folds)
    return [(np.sort(np.concatenate(parts[:i] + parts[i + 1:])), np.sort(parts[i])) for i in range(folds)]


def choose_on_holdout(correct: dict[str, np.ndarray], baseline: str = "none",
                      min_z: float = SELECT_MIN_Z, fold_of=None) -> tuple[str, dict[str, float]]:
    """Pick the candidate with the best held-out accuracy, or ``baseline`` unless the winner beats
    it by more than ``min_z`` standard errors of the paired per-sample difference (McNemar) and,
    when ``fold_of`` is given, in every fold on its own.

    McNemar's test treats the two models as fixed; each fold's models are one draw of a noisy
    training, and on CIFAR-10N (a 0.35-accuracy CNN) a pooled +2.9-point win on the given labels
    came with a 3.4-point loss on the clean test set. Asking every fold (a separate training) to
    agree puts that training noise into the test.

    Parameters
    ----------
    correct : {name: shape (m,) bool} — whether each candidate's prediction equals the held-out
        given label; must contain ``baseline``
    min_z : float — McNemar threshold
    fold_of : shape (m,), int, optional — the fold each held-out sample belongs to
    Returns
    -------
    (chosen name, {name: held-out accuracy})
    """
    if baseline not in correct:
        raise ValueError(f"correct has no entry for the baseline {baseline!r}: {sorted(correct)}")
    sizes = {np.asarray(v).shape for v in correct.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1 or next(iter(sizes))[0] == 0:
        raise ValueError(f"every candidate needs a non-empty 1-D correctness vector of one length, got shapes {sizes}")
    acc = {name: float(np.mean(v)) for name, v in correct.items()}
    best = max(correct, key=lambda name: (acc[name], name == baseline))
    if best == baseline:
        return baseline, acc
    # McNemar's statistic on the discordant pairs: samples only the winner gets right (b) and only
    # the baseline gets right (c); (b - c) / sqrt(b + c) is the paired difference in standard errors
    b = int(np.sum(np.asarray(correct[best]) & ~np.asarray(correct[baseline])))
    c = int(np.sum(~np.asarray(correct[best]) & np.asarray(correct[baseline])))
    if not (b > c and (b - c) > min_z * np.sqrt(b + c)):
        return baseline, acc
    if fold_of is not None:
        fold_of = np.asarray(fold_of)
        if fold_of.shape != np.asarray(correct[best]).shape:
            raise ValueError(f"fold_of must have shape {np.asarray(correct[best]).shape}, got {fold_of.shape}")
        for f in np.unique(fold_of):
            in_f = fold_of == f
            if np.mean(np.asarray(correct[best])[in_f]) <= np.mean(np.asarray(correct[baseline])[in_f]):
                return baseline, acc
    return best, acc


#: train_fn(rows, labels, loss_fn) -> a trained model (opaque here); loss_fn None = cross-entropy
TrainFn = Callable[[np.ndarray, np.ndarray, Callable | None], object]
#: predict_fn(model, rows) -> probabilities on those training rows, shape (len(rows), C)
PredictFn = Callable[[object, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RemedyOutcome:
    """What :func:`train_with_remedy` trained.

    Attributes
    ----------
    model : object — what ``train_fn`` returned for the final training
    plan : TrainingPlan — rows (indices into the full training set) and labels it trained on
    applied : str — the remedy actually applied (``select``: the chosen candidate, maybe ``none``)
    holdout_accuracy : dict — ``select`` only: each candidate's accuracy on the held-out given labels
    holdout_correct : dict — ``select`` only: {candidate: shape (n,) bool}, right on the held-out given label
    fold_of : np.ndarray or None — ``select`` only: shape (n,), the fold each row was held out in
    """

    model: object
    plan: TrainingPlan
    applied: str
    holdout_accuracy: dict = field(default_factory=dict)
    holdout_correct: dict = field(default_factory=dict)
    fold_of: np.ndarray | None = None


def train_with_remedy(remedy: str, labels, flags, probs, seed: int, train_fn: TrainFn,
                      predict_fn: PredictFn, rows=None, folds=None, train_final: bool = True,
                      second=None) -> RemedyOutcome:
    """Apply ``remedy`` (one of :data:`REMEDIES`, or ``none``) to the flagged samples and train.

    Parameters
    ----------
    remedy : str
    labels : shape (n,), int — given labels of the whole training set
    flags : shape (n,), bool — the detector's top k
    probs : shape (n, C) or None — out-of-sample probabilities (``relabel`` needs them)
    seed : int — for ``weight``'s resample and ``select``'s folds
    train_fn : :data:`TrainFn` — trains the audited recipe on (rows, labels, loss) of the full set
    predict_fn : :data:`PredictFn` — the trained model's probabilities on rows of the full set
    rows : shape (m,), int, optional — restrict everything to these rows (``select`` trains its
        candidates on the fit folds this way)
    folds : list of (fit, held) index arrays into the training set, optional — ``select``'s folds;
        when they are the folds ``probs`` came from (the audit's out-of-sample pass), ``probs`` is
        the ``none`` candidate's cross-validated prediction and ``none`` is not retrained
    train_final : bool — ``select`` only: False stops after the choice (``model`` None), for a
        caller that has already trained every candidate on all rows (the benchmark)
    second : shape (n, C), optional — the second opinion of ``relabel-agreed`` (class scores of the
        whole training set, e.g. ``scorers.label_free.cross_fitted_probe``) and ``relabel-soft``
        (probabilities: ``scorers.label_free.second_opinion``)
    """
    if remedy not in REMEDIES + ("none",):
        raise ValueError(f"unknown remedy {remedy!r}; choose one of {', '.join(REMEDIES + ('none',))}")
    labels, flags, probs = _check(labels, flags, probs)
    subset = np.arange(len(labels)) if rows is None else np.asarray(rows, dtype=np.int64)
    y, f = labels[subset], flags[subset]
    p = probs[subset] if probs is not None else None
    loss_fn = None
    if remedy == "select":
        if rows is not None and folds is not None:
            raise ValueError("select takes folds of the whole training set, not with rows")
        correct = {name: np.zeros(len(subset), dtype=bool) for name in ("none",) + SELECT_CANDIDATES}
        reuse = folds is not None and p is not None
        if reuse:
            correct["none"] = p.argmax(1) == y
        fold_of = np.full(len(subset), -1, dtype=np.int64)
        for i, (fit, held) in enumerate(folds if folds is not None else holdout_folds(len(subset), seed)):
            fit, held = np.asarray(fit, dtype=np.int64), np.asarray(held, dtype=np.int64)
            fold_of[held] = i
            for name in correct:
                if name == "none" and reuse:
                    continue
                out = train_with_remedy(name, labels, flags, probs, seed, train_fn, predict_fn, rows=subset[fit])
                correct[name][held] = np.asarray(predict_fn(out.model, subset[held])).argmax(1) == y[held]
        if (fold_of < 0).any():
            raise ValueError("select's folds must hold every row out once")
        choice, acc = choose_on_holdout(correct, fold_of=fold_of)
        if not train_final:
            return RemedyOutcome(None, TrainingPlan(subset, y, 0, 0), choice, acc, correct, fold_of)
        final = train_with_remedy(choice, labels, flags, probs, seed, train_fn, predict_fn, rows=subset)
        return RemedyOutcome(final.model, final.plan, choice, acc, correct, fold_of)
    if remedy == "none" or remedy == "gce" or (not f.any() and remedy != "soft-all"):
        local = TrainingPlan(np.arange(len(y)), y, 0, 0)
        loss_fn = generalized_cross_entropy if remedy == "gce" else None
    elif remedy == "prune":
        local = prune(y, f)
    elif remedy == "relabel":
        if p is None:
            raise ValueError("remedy 'relabel' needs the out-of-sample probabilities")
        local = relabel(y, f, p)
    elif remedy == "relabel-other":
        if p is None:
            raise ValueError("remedy 'relabel-other' needs the out-of-sample probabilities")
        local = relabel_other(y, f, p)
    elif remedy == "relabel-agreed":
        if p is None or second is None:
            raise ValueError("remedy 'relabel-agreed' needs the out-of-sample probabilities and a second opinion")
        local = relabel_agreed(y, f, p, np.asarray(second)[subset])
    elif remedy in ("relabel-soft", "soft-all"):
        if p is None:
            raise ValueError(f"remedy {remedy!r} needs the out-of-sample probabilities")
        local = relabel_soft(y, f, p, None if second is None else np.asarray(second)[subset],
                             soften_unflagged=remedy == "soft-all")
    elif remedy == "weight":
        local = weight(y, f, seed)
    else:  # semi: a model on the unflagged rows pseudo-labels the flagged ones
        keep = np.flatnonzero(~f)
        first = train_fn(subset[keep], y[keep], None)
        local = pseudo_label_plan(y, f, predict_fn(first, subset))
    plan = TrainingPlan(subset[local.rows], local.labels, local.changed, local.dropped)
    return RemedyOutcome(train_fn(plan.rows, plan.labels, loss_fn), plan, remedy)
