"""The benchmark's protocols and peers as cached Prefect tasks, beside the pure math they call.

Protocols (Mercier et al. 2020; Koh & Liang 2017), applied to any ranking:

* **prune**: remove the top ``k`` and retrain (that is :func:`stages.retrain`, reused as is);
* **relabel**: inspect the top ``k``, an oracle corrects the true mislabels among them, retrain
  on every sample (:func:`relabel`).

Peers (optional, ``pip install winnow[bench]``), on the very same data, out-of-sample
probabilities and checkpoints the registered scorers use:

* ``cleanlab-issues``: cleanlab's ``find_label_issues`` (flagged first), ties broken by its
  self-confidence label-quality score;
* ``cleanlab-quality``: ``1 - get_label_quality_scores`` (self-confidence);
* ``captum-tracincp``: Captum's ``TracInCPFast`` self-influence (last layer, every checkpoint).

Baseline ranking ``oracle-rank`` (:func:`truth_score`): the injected truth, flipped first — the
best any detector could do under a protocol. Every peer and baseline ranking is saved as a
score table in the same format as a scorer's, so the protocols treat them all alike.
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task

from . import artifacts, stages
from .metrics import ranking
from .models.training import accuracy

PEERS = ("cleanlab-issues", "cleanlab-quality", "captum-tracincp")
_PEER_PACKAGE = {"cleanlab-issues": "cleanlab", "cleanlab-quality": "cleanlab", "captum-tracincp": "captum"}


# ---------------------------------------------------------------- pure math


def top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` highest scores (ties broken by index, like every ranking here).

    Parameters
    ----------
    scores : np.ndarray, shape (n,)
    k : int
        0 <= k <= n.

    Returns
    -------
    np.ndarray, shape (n,), bool
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if not 0 <= k <= len(scores):
        raise ValueError(f"k must lie in [0, {len(scores)}], got {k}")
    mask = np.zeros(len(scores), dtype=bool)
    mask[ranking(scores)[:k]] = True
    return mask


def relabel_by_oracle(noisy: np.ndarray, true: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Inspect the top ``k`` and put back the true label wherever the given one is wrong.

    Parameters
    ----------
    noisy, true : np.ndarray, shape (n,), int
        Given and original labels.
    scores : np.ndarray, shape (n,)
        Higher = inspect first.
    k : int
        How many samples the oracle inspects.

    Returns
    -------
    labels : np.ndarray, shape (n,), int64 — the labels after correction
    fixed : int — how many wrong labels were corrected
    """
    noisy, true = np.asarray(noisy, dtype=np.int64), np.asarray(true, dtype=np.int64)
    if noisy.shape != true.shape or noisy.shape != np.shape(scores):
        raise ValueError(f"noisy, true and scores must have one shape, got {noisy.shape}, {true.shape}, {np.shape(scores)}")
    fix = top_k_mask(scores, k) & (noisy != true)
    labels = noisy.copy()
    labels[fix] = true[fix]
    return labels, int(fix.sum())


def fraction_to_k(fraction: float, n: int) -> int:
    """``round(fraction · n)``, checked: the protocols speak in fractions, the tasks in counts."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    return int(round(fraction * n))


def cleanlab_scores(labels: np.ndarray, probs: np.ndarray, method: str) -> np.ndarray:
    """cleanlab's ranking as a score, higher = more suspicious.

    ``method='issues'``: ``find_label_issues`` flags first (+1), then ``1 - label quality``;
    ``method='quality'``: ``1 - get_label_quality_scores`` (self-confidence).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (n, C) with n = {len(labels)}, got {probs.shape}")
    suspicion = 1.0 - get_label_quality_scores(labels, probs, method="self_confidence")
    if method == "quality":
        return suspicion
    if method == "issues":
        # n_jobs=1: its default forks a pool per call (slow here, and the forks inherit Prefect's
        # SIGTERM handler, which prints a traceback per worker when the pool closes)
        return find_label_issues(labels, probs, n_jobs=1).astype(np.float64) + suspicion
    raise ValueError(f"unknown cleanlab method {method!r}; choose 'issues' or 'quality'")


def captum_tracincp_fast(ctx, batch_size: int = 512) -> np.ndarray:
    """Captum's TracInCPFast self-influence over every checkpoint of a training context."""
    from captum.influence import TracInCPFast
    from torch.utils.data import TensorDataset

    model = ctx.model_factory()

    def load(m, checkpoint):  # captum calls this per checkpoint and weights by the returned lr
        m.load_state_dict(checkpoint.state)
        return checkpoint.lr

    tracin = TracInCPFast(model, model.head, TensorDataset(ctx.x, ctx.y), list(ctx.checkpoints),
                          checkpoints_load_func=load, loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
                          batch_size=batch_size)
    return tracin.self_influence(outer_loop_by_checkpoints=True).detach().double().numpy()


def peer_available(peer: str) -> tuple[bool, str]:
    """Whether a peer's library imports here; otherwise the one-line reason for the report."""
    if peer not in _PEER_PACKAGE:
        raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    pkg = _PEER_PACKAGE[peer]
    if importlib.util.find_spec(pkg) is None:
        return False, f"{peer} skipped: `{pkg}` is not installed (pip install 'winnow[bench]')"
    return True, ""


# ---------------------------------------------------------------- cached tasks


def _save_scores(key: str, sample_ids: np.ndarray, values: np.ndarray, name: str, seconds: float) -> str:
    artifacts.save_frame("scores", key, pd.DataFrame({"sample_id": sample_ids.astype(str), "score": values}))
    artifacts.save_json("scores", key, {"scorer": name, "seconds": seconds})
    return key


@task(name="peer-score", cache_policy=stages.cached("models", "protocols"), persist_result=True,
      task_run_name="peer-{peer}")
def peer_score(train_key: str, peer: str, oos_key: str) -> str:
    """Score a training run with a peer library; returns a score-table key (like stages.score)."""
    ctx, data, _ = stages.load_context(train_key)
    t0 = time.perf_counter()
    if peer.startswith("cleanlab-"):
        probs = artifacts.load_torch("oos", oos_key).numpy()
        values = cleanlab_scores(ctx.y.numpy(), probs, peer.removeprefix("cleanlab-"))
    elif peer == "captum-tracincp":
        values = captum_tracincp_fast(ctx)
    else:
        raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")
    seconds = time.perf_counter() - t0
    get_run_logger().info("peer %s: %d samples in %.1fs", peer, len(values), seconds)
    return _save_scores(artifacts.key_of("peer", train_key, peer), data.train.sample_id, values, peer, seconds)


@task(name="oracle-rank", cache_policy=stages.cached("protocols"), persist_result=True)
def truth_score(train_key: str) -> str:
    """The injected truth as a ranking (flipped = 1): the perfect detector, as a baseline."""
    _, data, _ = stages.load_context(train_key)
    return _save_scores(artifacts.key_of("oracle-rank", train_key), data.train.sample_id,
                        data.flipped.astype(np.float64), "oracle-rank", 0.0)


@task(name="relabel", cache_policy=stages.cached("models", "protocols"), persist_result=True,
      task_run_name="relabel-{label}-{k}")
def relabel(train_key: str, label: str, score_key: str, k: int) -> dict:
    """Inspect the top ``k`` of a score table, let the oracle fix the wrong labels, retrain
    the audited recipe on every sample, and measure test accuracy."""
    ctx, data, _ = stages.load_context(train_key)
    scores = artifacts.load_frame("scores", score_key)["score"].to_numpy()
    labels, fixed = relabel_by_oracle(data.noisy, data.train.label, scores, k)
    result = ctx.train(ctx.x, torch.as_tensor(labels), keep_checkpoints=False)
    acc = accuracy(result.model, data.test.x, data.test.label)
    get_run_logger().info("relabel %s: inspected %d, fixed %d of %d, test accuracy %.4f", label, k, fixed,
                          int(data.flipped.sum()), acc)
    return {"label": label, "test_accuracy": acc, "inspected": k, "fixed": fixed}
