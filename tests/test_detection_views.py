"""The pure pieces of benchmarks/detection_views.py (issue 14's detector study): probe-flip
injection, the trust-weighted neighbour vote, the within-class rank."""
from __future__ import annotations

import numpy as np
import pytest

from winnow.tasks.scorers.neighbors import knn_votes

from helpers import load_benchmark


@pytest.fixture(scope="module")
def views():
    return load_benchmark("detection_views")


def _logits(n=400, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, n, c)).astype(np.float32) * 2, rng.integers(0, c, n)


def test_agreed_flips_only_where_the_run_agrees_and_go_to_the_runner_up(views):
    logits, labels = _logits()
    probs = np.exp(logits.astype(np.float64))
    probs = (probs / probs.sum(-1, keepdims=True)).mean(0)
    probe = views.inject_agreed_flips(logits, labels, 0.1, seed=3)
    changed = np.flatnonzero(probe != labels)
    agreed = probs.argmax(1) == labels
    assert len(changed) == min(40, agreed.sum())
    assert agreed[changed].all()
    runner_up = np.argsort(-probs, axis=1)[:, 1]  # the argmax is the given label on these rows
    np.testing.assert_array_equal(probe[changed], runner_up[changed])


def test_version_one_probe_flips_can_land_on_the_runs_own_prediction(views):
    """Why version 2 exists: drawn where the run doubts the label, the runner-up is often its argmax."""
    logits, labels = _logits(seed=1)
    probs = np.exp(logits.astype(np.float64))
    probs = (probs / probs.sum(-1, keepdims=True)).mean(0)
    probe = views.inject_probe_flips(logits, labels, 0.1, seed=3)
    changed = probe != labels
    assert (probe[changed] == probs.argmax(1)[changed]).mean() > 0.5


def test_trust_weighted_vote_with_full_trust_is_the_plain_vote(views):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    labels = rng.integers(0, 10, 300)
    plain = knn_votes(x, x, labels, 10, k=7, exclude_self=True)
    np.testing.assert_allclose(views.weighted_votes(x, labels, 7), plain, atol=1e-5)
    # a neighbour with no trust casts no vote
    trust = np.ones(300)
    trust[labels == 3] = 0.0
    weighted = views.weighted_votes(x, labels, 7, trust)
    np.testing.assert_allclose(weighted[:, 3], weighted.min(1))  # only its pseudo-vote is left
    assert (plain[:, 3] > plain.min(1) + 1e-9).any()


def test_rank_within_class(views):
    scores = np.array([5.0, 1.0, 3.0, 0.5, 9.0])
    labels = np.array([0, 0, 1, 1, 0])
    np.testing.assert_allclose(views.rank_within_class(scores, labels), [2 / 3, 1 / 3, 1.0, 0.5, 1.0])
