"""Rank-average ensemble: exact ranks on known inputs, iterative mode, and digits detection."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import noisy_digits_context
from sklearn.metrics import roc_auc_score

from winnow.tasks.scorers import get_scorer
from winnow.tasks.scorers.ensemble import DEFAULT_MEMBERS, iterative_scores, parse_members, rank_average


def test_rank_average_known_values():
    np.testing.assert_allclose(rank_average([[1, 2, 3], [3, 2, 1]]), [2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(rank_average([[10, 20, 30], [0.1, 0.3, 0.2]]), [1 / 3, 5 / 6, 5 / 6])
    # ties share their average rank; the scale of a member does not matter
    np.testing.assert_allclose(rank_average([[5, 5, 1, 9]]), [2.5 / 4, 2.5 / 4, 1 / 4, 1.0])
    np.testing.assert_allclose(rank_average([np.array([1e9, -3.0, 2.0])]), rank_average([[3, 1, 2]]))
    assert rank_average([np.array([])]).shape == (0,)


@pytest.mark.parametrize("arrays, msg", [
    ([], "at least one"),
    ([[1, 2], [1, 2, 3]], "equal length"),
    ([[1, np.nan]], "non-finite"),
    ([[[1, 2]]], "1-D"),
])
def test_rank_average_validation(arrays, msg):
    with pytest.raises(ValueError, match=msg):
        rank_average(arrays)


def test_parse_members():
    assert parse_members("loss-mean, aum") == ["loss-mean", "aum"]
    with pytest.raises(ValueError, match="itself"):
        parse_members("loss,ensemble")
    with pytest.raises(ValueError, match="unknown scorer"):
        parse_members("loss,nonsense")
    with pytest.raises(ValueError, match="twice"):
        parse_members("aum,aum")


@pytest.fixture(scope="module")
def noisy_digits_ctx():
    ctx, y_noisy, y = noisy_digits_context(data_seed=3, seed=3, kfold=2)  # 2 folds: confident's cost stays one training
    return ctx, y_noisy != y


@pytest.mark.slow
def test_ensemble_at_least_as_good_as_worst_member(noisy_digits_ctx):
    ctx, flipped = noisy_digits_ctx
    members = list(DEFAULT_MEMBERS)
    member_auc = {m: roc_auc_score(flipped, get_scorer(m)(ctx)) for m in members}
    scores = get_scorer("ensemble")(ctx)  # default members, served from the shared cache
    auc = roc_auc_score(flipped, scores)
    assert auc >= min(member_auc.values()), (auc, member_auc)
    assert auc > 0.95, auc
    np.testing.assert_allclose(scores, rank_average([get_scorer(m)(ctx) for m in members]))
    # a member with out-of-sample probabilities (2-fold here) combines the same way
    trio = get_scorer("ensemble", members="loss-mean,aum,confident")(ctx)
    trio_members = [roc_auc_score(flipped, get_scorer(m)(ctx)) for m in ("loss-mean", "aum", "confident")]
    assert roc_auc_score(flipped, trio) >= min(trio_members)


@pytest.mark.slow
def test_iterative_mode(noisy_digits_ctx):
    ctx, flipped = noisy_digits_ctx
    members = ["loss-mean", "aum"]
    first = rank_average([get_scorer(m)(ctx) for m in members])
    scores = get_scorer("ensemble", members="loss-mean,aum", rounds=2, drop=0.1)(ctx)
    k = int(round(0.1 * ctx.n))
    top_first = set(np.argsort(-first, kind="stable")[:k])
    # round-1 flags form the top tier; everyone else was rescored by a retrained model
    assert set(np.flatnonzero(scores > 2.0)) == top_first
    assert np.all(scores[scores <= 2.0] <= 1.0)
    rest = scores <= 2.0
    assert not np.allclose(scores[rest], first[rest])  # the second round changed the order
    auc = roc_auc_score(flipped, scores)
    assert auc >= min(roc_auc_score(flipped, get_scorer(m)(ctx)) for m in members) - 0.005, auc
    assert auc > 0.95


def test_iterative_validation(noisy_digits_ctx):
    ctx, _ = noisy_digits_ctx
    with pytest.raises(ValueError, match="rounds"):
        iterative_scores(ctx, ["aum"], 0, 0.1)
    with pytest.raises(ValueError, match="drop"):
        iterative_scores(ctx, ["aum"], 2, 1.5)
    with pytest.raises(ValueError, match="malformed"):
        get_scorer("ensemble", rounds="two")(ctx)
