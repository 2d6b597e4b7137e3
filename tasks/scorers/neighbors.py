"""Neighbour label voting in a feature space (deep k-NN, Bahri et al. 2020; SimiFeat, Zhu et al. 2022).

A mislabelled sample sits among samples of its true class: the labels of its nearest neighbours
in a good feature space vote against its given label. A clean *hard* sample (an ambiguous image)
also has mixed neighbours, but its given label still wins a share of the vote, while the loss of
one model only sees that the sample is hard. The vote therefore complements the loss.

Feature spaces offered (option ``space``):

* ``oos`` (default): out-of-sample. The K fold models of :meth:`TrainingContext.out_of_sample_probs`
  are retrained with the same folds and seeds (so their probabilities are the very ones the
  confident scorer and the peers use, cached once); each held-out sample is embedded by the fold
  model that never saw it and votes are taken among that fold's *training* samples. No sample ever
  votes for itself, and no model has memorised the label being judged.
* ``penultimate``: the final audited model's penultimate layer (Bahri et al.'s deep k-NN). Cheap
  (one forward pass), but the model has seen, and partly memorised, every given label.
* ``input``: the raw inputs (flattened; user embeddings arrive this way).

Up to :data:`EXACT_UP_TO` training samples the ``penultimate`` and ``input`` votes search every
row. Past it, every sample still gets its vote, but among a seeded, class-stratified sample of
reference rows sized so that the search costs no more than the exact one at :data:`EXACT_UP_TO`
rows, and never fewer than :data:`MIN_REFERENCE_ROWS` (:func:`reference_size`): the exact search
costs n² (10⁶ rows: 10¹² similarities, about two hours on one core), the sampled one at most
max(32,768², 8,192 n). See :func:`reference_rows` and ``docs/scale/README.md`` for what it costs
in detection.

The score is ``1 - q(y_i)``, where ``q`` is the similarity-weighted, Laplace-smoothed share of the
k neighbours carrying each label. ``knn-consensus`` averages that vote with the out-of-sample
probabilities and the audited run's area under the margin (rank average): three views that fail
on different samples.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from ..models.training import predict_logits
from .base import Scorer, TrainingContext, register
from .ensemble import rank_average

SPACES = ("oos", "penultimate", "input")
DEFAULT_K = 10
#: the context cache entry holding the out-of-sample votes for the default k (the audit flow's
#: out-of-sample stage persists them and puts them back here)
OOS_VOTES_CACHE = f"oos_knn_{DEFAULT_K}"
#: whole-set votes search every row up to this many samples (see :func:`reference_size`)
EXACT_UP_TO = 32_768
#: past that, the fewest reference rows a vote searches
MIN_REFERENCE_ROWS = 8_192
#: entries of one block of query × reference similarities (8 MB of float32): a block that stays in
#: cache is searched about twice as fast, per query, as one of 1,024 queries × 8,192 rows (32 MB)
SIMILARITY_BLOCK = 1 << 21
#: columns per chunk in :func:`top_k`
CHUNK = 64


def reference_size(n: int) -> int:
    """How many reference rows a whole-set vote over ``n`` samples searches: all up to
    :data:`EXACT_UP_TO`; past it, as many as keep the n × r similarities within the exact
    search's at :data:`EXACT_UP_TO` rows, but at least :data:`MIN_REFERENCE_ROWS`
    (10⁵ rows: 10,737; 10⁶: 8,192)."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if n <= EXACT_UP_TO:
        return n
    return max(MIN_REFERENCE_ROWS, EXACT_UP_TO * EXACT_UP_TO // n)


def _normalise(features: torch.Tensor) -> torch.Tensor:
    features = torch.as_tensor(features, dtype=torch.float32)
    if features.ndim != 2:
        features = features.reshape(len(features), -1)
    features = features - features.mean(0, keepdim=True)
    return torch.nn.functional.normalize(features, dim=1)


def reference_rows(labels: np.ndarray, num_classes: int, cap: int = EXACT_UP_TO, seed: int = 0,
                   k: int = DEFAULT_K) -> np.ndarray:
    """The training rows a whole-set k-NN vote searches: all of them up to ``cap``, else a
    seeded sample of ``cap`` rows stratified by given label.

    Each class keeps its share of ``cap``, and at least ``4 k`` rows (or all it has): a rare
    class sampled in proportion would lose its own neighbours, and its samples would be outvoted.

    Parameters
    ----------
    labels : shape (n,), int in [0, num_classes)
    cap : int, > k

    Returns
    -------
    np.ndarray, shape (r,), int64, sorted: positions into ``labels``; r = n when n <= cap.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape}, dtype {labels.dtype}")
    if cap <= k:
        raise ValueError(f"cap must exceed k = {k}, got {cap}")
    n = len(labels)
    if n <= cap:
        return np.arange(n, dtype=np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    rng = np.random.default_rng(seed + 7919)
    picked = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        quota = min(len(members), max(int(round(cap * len(members) / n)), 4 * k))
        picked.append(rng.choice(members, size=quota, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def top_k(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row and their columns, as ``sim.topk(k, dim=1)``.

    Exact, and faster on wide rows: the columns are cut into chunks of :data:`CHUNK`; the k best
    entries of a row lie in the k chunks with the largest maxima (any entry outside them is beaten
    by those k maxima), so only ``k · CHUNK`` candidates are ranked. On one core here, 1,024 rows
    of 8,192 columns took 12 ms where ``topk`` took 23 (``benchmarks/knn_search.py`` times the
    whole vote). Ties may resolve to other columns than ``topk``'s (both are arbitrary there).

    Parameters
    ----------
    sim : shape (m, r), float
    k : int, 1 <= k <= r

    Returns
    -------
    values : shape (m, k), descending
    columns : shape (m, k), int64
    """
    m, r = sim.shape
    if not 1 <= k <= r:
        raise ValueError(f"k must lie in [1, {r}], got {k}")
    if r < 4 * k * CHUNK:
        return sim.topk(k, dim=1)
    chunks = -(-r // CHUNK)
    if chunks * CHUNK != r:
        sim = torch.nn.functional.pad(sim, (0, chunks * CHUNK - r), value=-np.inf)
    blocks = sim.view(m, chunks, CHUNK)
    best = blocks.amax(2).topk(k, dim=1).indices  # (m, k) chunks
    candidates = torch.gather(blocks, 1, best.unsqueeze(2).expand(m, k, CHUNK)).reshape(m, k * CHUNK)
    values, at = candidates.topk(k, dim=1)
    return values, best.gather(1, at // CHUNK) * CHUNK + at % CHUNK


def knn_votes(query: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor, reference_labels: np.ndarray,
              num_classes: int, k: int = 10, exclude_self: bool = False, block: int | None = None,
              self_rows: np.ndarray | None = None) -> np.ndarray:
    """Similarity-weighted label votes of each query's ``k`` nearest reference samples (cosine).

    Parameters
    ----------
    query : shape (m, d) (or (m, ...), flattened)
    reference : shape (r, d)
        Same feature space as ``query``.
    reference_labels : shape (r,), int in [0, num_classes)
    k : int
        Neighbours per query, 1 <= k < r.
    exclude_self : bool
        ``query`` *is* ``reference`` (same rows): a sample never votes for itself.
    self_rows : shape (m,), int, optional
        Each query's own row in ``reference``, or -1 where it is not there (``reference`` a
        sample of the queries): that row never votes for it. ``exclude_self`` is ``arange(m)``.
    block : int, optional
        Queries searched at a time (default: as many as keep one block's similarities within
        :data:`SIMILARITY_BLOCK` entries, which stay in cache).

    Returns
    -------
    np.ndarray, shape (m, num_classes), float64
        Vote shares per class (rows sum to 1), Laplace-smoothed by one pseudo-vote per class.
    """
    q = torch.as_tensor(np.asarray(query), dtype=torch.float32).reshape(len(query), -1)
    r = torch.as_tensor(np.asarray(reference), dtype=torch.float32).reshape(len(reference), -1)
    labels = np.asarray(reference_labels, dtype=np.int64)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query and reference features differ in width: {q.shape[1]} vs {r.shape[1]}")
    if labels.shape != (len(r),):
        raise ValueError(f"reference_labels must have shape ({len(r)},), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"reference_labels must lie in [0, {num_classes})")
    if exclude_self:
        if len(q) != len(r):
            raise ValueError(f"exclude_self needs query is reference, got {len(q)} and {len(r)} rows")
        self_rows = np.arange(len(q))
    if self_rows is not None:
        self_rows = np.asarray(self_rows)
        if self_rows.shape != (len(q),) or not np.issubdtype(self_rows.dtype, np.integer):
            raise ValueError(f"self_rows must be an integer array of shape ({len(q)},), got {self_rows.shape}")
        if self_rows.size and (self_rows.min() < -1 or self_rows.max() >= len(r)):
            raise ValueError(f"self_rows must lie in [-1, {len(r)})")
    if not 1 <= k < len(r):
        raise ValueError(f"k must lie in [1, {len(r) - 1}], got {k}")
    if block is not None and block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if not (torch.isfinite(q).all() and torch.isfinite(r).all()):
        raise ValueError("features must be finite")
    # centre both on the reference mean, then unit length: cosine similarity as a dot product
    centre = r.mean(0, keepdim=True)
    rn = torch.nn.functional.normalize(r - centre, dim=1)
    lab = torch.as_tensor(labels)
    votes = torch.ones(len(q), num_classes, dtype=torch.float64)  # one pseudo-vote per class
    block = block or max(32, SIMILARITY_BLOCK // len(r))
    for start in range(0, len(q), block):
        # queries normalised a block at a time: no second (m, d) copy (10⁶ × 128: 512 MB each)
        sim = torch.nn.functional.normalize(q[start:start + block] - centre, dim=1) @ rn.T
        if self_rows is not None:
            own = torch.as_tensor(self_rows[start:start + block])
            hit = torch.nonzero(own >= 0).flatten()
            sim[hit, own[hit]] = -np.inf
        top, idx = top_k(sim, k)
        weight = (1.0 + top.double()) / 2.0  # cosine in [-1, 1] -> [0, 1]
        votes[start:start + block].scatter_add_(1, lab[idx], weight)
    return (votes / votes.sum(1, keepdim=True)).numpy()


def label_disagreement(votes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``1 - votes[i, y_i]``: shape (n,), higher = the neighbours disagree with the given label."""
    votes = np.asarray(votes, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if votes.ndim != 2 or votes.shape[0] != labels.shape[0]:
        raise ValueError(f"votes must have shape (n, C) with n = {labels.shape[0]}, got {votes.shape}")
    return 1.0 - votes[np.arange(len(labels)), labels]


def _features(model: torch.nn.Module, x) -> torch.Tensor:
    """Penultimate features of ``x`` (a tensor or streamed Rows), shape (n, d), float32, written
    into one preallocated array (not gathered and concatenated: that holds them twice)."""
    from .gradients import iter_head_features

    out = None
    for idx, feats, _ in iter_head_features(model, x, 128):
        if out is None:
            out = torch.empty((len(x), feats.shape[1]), dtype=torch.float32)
        out[idx] = feats.float().cpu()
    if out is None:
        raise ValueError("x is empty")
    return out


def out_of_sample_views(ctx: TrainingContext, k: int = DEFAULT_K,
                        on_fold: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample probabilities and k-NN votes from one K-fold pass (cached on the context).

    Folds, seeds and recipe are those of :meth:`TrainingContext.out_of_sample_probs`, so the
    probabilities equal it (training is deterministic by seed); when the context already holds
    them (the audit flow's cached ``out-of-sample`` stage) only the votes need the fold models.
    ``on_fold(done, total)`` is called after each fold.

    Returns
    -------
    probs : np.ndarray, shape (n, C)
    votes : np.ndarray, shape (n, C) — each sample's vote among its fold's training samples, in the
        feature space of the fold model that never saw it.
    """
    key = f"oos_knn_{k}"
    if key in ctx._cache:
        return ctx.out_of_sample_probs(), ctx._cache[key]
    from sklearn.model_selection import StratifiedKFold

    y = ctx.y.numpy()
    counts = np.bincount(y, minlength=ctx.num_classes)
    folds_n = int(min(ctx.kfold, max(2, counts[counts > 0].min())))
    probs = np.zeros((ctx.n, ctx.num_classes))
    votes = np.zeros((ctx.n, ctx.num_classes))
    folds = StratifiedKFold(folds_n, shuffle=True, random_state=ctx.seed).split(np.zeros(ctx.n), y)
    for fold, (fit, held) in enumerate(folds):
        cfg = replace(ctx.train_config, seed=ctx.train_config.seed + 1000 * (fold + 1))
        model = ctx.train(ctx.x[fit], ctx.y[fit], cfg, keep_checkpoints=False).model.eval()
        probs[held] = torch.softmax(predict_logits(model, ctx.x[held]), 1).double().numpy()
        with torch.no_grad():
            votes[held] = knn_votes(_features(model, ctx.x[held]), _features(model, ctx.x[fit]), y[fit],
                                    ctx.num_classes, k=min(k, len(fit) - 1))
        if on_fold:
            on_fold(fold + 1, folds_n)
    ctx._cache.setdefault("oos_probs", probs)
    ctx._cache[key] = votes
    return ctx._cache["oos_probs"], votes


def neighbour_votes(ctx: TrainingContext, space: str = "oos", k: int = 10, max_reference: int | None = None
                    ) -> np.ndarray:
    """Each training sample's k-NN label votes in ``space`` (one of :data:`SPACES`). Shape (n, C).

    ``max_reference``: most rows searched in the ``penultimate`` and ``input`` spaces (default
    :func:`reference_size`; see :func:`reference_rows`)."""
    if space not in SPACES:
        raise ValueError(f"unknown feature space {space!r}; choose one of {', '.join(SPACES)}")
    if space == "oos":
        return out_of_sample_views(ctx, k)[1]
    if space == "penultimate":
        with torch.no_grad():  # streamed: the inputs are never whole in memory
            feats = _features(ctx.model_at(-1), ctx.rows)
    else:
        feats = ctx.x.reshape(ctx.n, -1)
    y = ctx.y.numpy()
    cap = max(max_reference or reference_size(ctx.n), k + 1)
    ref = reference_rows(y, ctx.num_classes, cap=cap, seed=ctx.seed, k=k)
    own = np.full(ctx.n, -1, dtype=np.int64)
    own[ref] = np.arange(len(ref))
    return knn_votes(feats, feats[torch.as_tensor(ref)], y[ref], ctx.num_classes, k=min(k, len(ref) - 1),
                     self_rows=own)


def _int_option(options: dict, name: str, default: int) -> int:
    value = options.get(name, default)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"scorer option {name}={value!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"scorer option {name} must be >= 1, got {value}")
    return value


def _reference_option(options: dict, n: int) -> int | None:
    """Option ``reference``: most rows a whole-set vote searches (default: :func:`reference_size`);
    ``all`` = an exact search."""
    if "reference" not in options:
        return None
    if str(options["reference"]).strip().lower() == "all":
        return max(n, DEFAULT_K + 1)
    return _int_option(options, "reference", EXACT_UP_TO)


@register
class DeepKnn(Scorer):
    name = "knn"
    summary = ("k-NN label vote against the given label (deep k-NN / SimiFeat); space=oos (fold models, "
               "default) | penultimate | input, k=10")

    def score(self, ctx: TrainingContext) -> np.ndarray:
        space = str(self.options.get("space", "oos"))
        votes = neighbour_votes(ctx, space, _int_option(self.options, "k", DEFAULT_K),
                                _reference_option(self.options, ctx.n))
        return label_disagreement(votes, ctx.y.numpy())


def consensus_scores(oos_probs: np.ndarray, votes: np.ndarray, aum: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank average of three views of the same question, higher = more suspicious.

    Parameters
    ----------
    oos_probs : shape (n, C) — out-of-sample probabilities (1 - self-confidence is one view)
    votes : shape (n, C) — k-NN label votes (1 - own-label share)
    aum : shape (n,) — area under the margin of the audited run (low = suspicious)
    labels : shape (n,) — given labels

    Returns
    -------
    np.ndarray, shape (n,), in (0, 1]
    """
    labels = np.asarray(labels, dtype=np.int64)
    oos_probs = np.asarray(oos_probs, dtype=np.float64)
    if oos_probs.shape != np.shape(votes) or oos_probs.ndim != 2 or oos_probs.shape[0] != labels.shape[0]:
        raise ValueError(f"oos_probs {oos_probs.shape} and votes {np.shape(votes)} must both be (n, C), n = {len(labels)}")
    if np.shape(aum) != labels.shape:
        raise ValueError(f"aum must have shape {labels.shape}, got {np.shape(aum)}")
    rows = np.arange(len(labels))
    return rank_average([1.0 - oos_probs[rows, labels], label_disagreement(votes, labels), -np.asarray(aum)])


@register
class KnnConsensus(Scorer):
    name = "knn-consensus"
    summary = "rank average of out-of-sample self-confidence, out-of-sample k-NN vote and AUM (k=10)"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        from .dynamics import area_under_margin

        probs, votes = out_of_sample_views(ctx, _int_option(self.options, "k", DEFAULT_K))
        return consensus_scores(probs, votes, area_under_margin(ctx.checkpoint_logits(), ctx.y), ctx.y.numpy())


def _training_views(ctx: TrainingContext, k: int, max_reference: int | None = None) -> dict[str, np.ndarray]:
    """The cheap views of one training run, each higher = more suspicious, shape (n,)."""
    from .dynamics import area_under_margin
    from .loss import per_sample_loss

    logits = ctx.checkpoint_logits()
    votes = neighbour_votes(ctx, "penultimate", k, max_reference)
    return {"aum": -area_under_margin(logits, ctx.y), "loss": per_sample_loss(logits[-1], ctx.y),
            "knn-pen": label_disagreement(votes, ctx.y.numpy())}


@register
class KnnAum(Scorer):
    name = "knn-aum"
    summary = ("rank average of AUM and the k-NN label vote in the final model's penultimate layer "
               "(no K-fold: one forward pass and a neighbour search on top of training; k=10, "
               "reference=N rows searched, or all; default all up to 32,768 rows)")

    def score(self, ctx: TrainingContext) -> np.ndarray:
        views = _training_views(ctx, _int_option(self.options, "k", DEFAULT_K),
                                _reference_option(self.options, ctx.n))
        return rank_average([views["aum"], views["knn-pen"]])


@register
class KnnAumLoss(Scorer):
    name = "knn-aum-loss"
    summary = ("rank average of the final loss, AUM and the penultimate-layer k-NN label vote "
               "(no K-fold; k=10)")

    def score(self, ctx: TrainingContext) -> np.ndarray:
        views = _training_views(ctx, _int_option(self.options, "k", DEFAULT_K),
                                _reference_option(self.options, ctx.n))
        return rank_average([views["loss"], views["aum"], views["knn-pen"]])


@register
class KnnAumLabelFree(Scorer):
    name = "knn-aum-lf"
    summary = ("the recommended detector: rank average of `knn-aum` and a ridge probe's doubt in label-free "
               "features (patch k-means for images, the standardised inputs otherwise; "
               "tasks/scorers/label_free.py); k=10, reference= as knn-aum")

    def score(self, ctx: TrainingContext) -> np.ndarray:
        from .label_free import label_free_views

        free = label_free_views(ctx.rows, ctx.y.numpy(), ctx.num_classes, seed=ctx.seed, vote=False)
        # knn-aum's two views weigh as one: the leave-one-data-set-out pick (docs/detection.md)
        return rank_average([KnnAum(**self.options).score(ctx), free["probe"]])
