"""The public Python API: ``import winnow``; ``winnow.find_label_issues`` on arrays (no services)."""
import numpy as np
import pytest

import winnow


def _mixture(n=600, d=8, k=3, flips=30, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = (rng.normal(size=(k, d)) * 4)[y] + rng.normal(size=(n, d))
    given = y.copy()
    given[:flips] = (y[:flips] + 1) % k
    return x.astype(np.float32), y, given


def test_pred_probs_rank_the_flipped_labels_first():
    _, y, given = _mixture()
    probs = np.full((len(y), 3), 0.05)
    probs[np.arange(len(y)), y] = 0.9
    table = winnow.find_label_issues(given, pred_probs=probs)
    assert list(table.columns[:5]) == ["index", "label", "suggested_label", "score", "is_label_issue"]
    assert set(table["index"][:30]) == set(range(30))
    # k is `winnow run`'s count (noise_rate.RECOMMENDED), here within 20% of the 30 flips
    from winnow.tasks.noise_rate import estimate_noise_count

    k = table["is_label_issue"].sum()
    assert k == estimate_noise_count(given, probs) and 24 <= k <= 36
    assert (table.set_index("index").loc[range(30), "suggested_label"] == y[:30]).all()
    assert {"score_loss", "score_margin", "score_confident"} <= set(table.columns)
    # on given probabilities the soft target is those probabilities (no second opinion to ask)
    soft = np.stack(table.sort_values("index")["suggestion_probs"].to_numpy())
    assert soft.shape == (len(y), 3) and np.allclose(soft, probs, atol=1e-6)


def test_features_train_a_model_and_find_most_flips():
    x, _, given = _mixture()
    table = winnow.find_label_issues(given, features=x, epochs=8)
    top = set(table["index"][:30])
    assert len(top & set(range(30))) >= 24  # 30 flips among 600
    # the soft target of a flagged row (relabel-soft): a distribution whose argmax is the suggestion,
    # averaged from the folds and the label-free probe; on the flipped rows it leans to the true class
    soft = np.stack(table["suggestion_probs"].to_numpy())
    assert np.allclose(soft.sum(1), 1, atol=1e-5) and (soft.argmax(1) == table["suggested_label"]).all()
    flipped = table.set_index("index").loc[range(30)]
    _, y, _ = _mixture()
    assert np.mean([p[t] > 0.5 for p, t in zip(flipped["suggestion_probs"], y[:30])]) >= 0.8
    # the default remedy's target (soft-all): the suggestion for a label issue, else half label, half it
    target = np.stack(table["soft_label"].to_numpy())
    issue = table["is_label_issue"].to_numpy()
    np.testing.assert_allclose(target[issue], soft[issue], atol=1e-6)
    np.testing.assert_allclose(target[~issue], (np.eye(3)[table["label"][~issue]] + soft[~issue]) / 2, atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of"),
    ({"pred_probs": np.full((4, 2), 0.5), "features": np.zeros((4, 3))}, "exactly one of"),
    ({"pred_probs": np.full((3, 2), 0.5)}, "labels has 4 rows"),
    ({"features": np.zeros((4, 2, 2))}, r"features must have shape \(n, D\)"),
    ({"pred_probs": np.full((4, 2), 0.5), "scorers": "tracin"}, "need a model"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        winnow.find_label_issues(np.array([0, 1, 0, 1]), **kwargs)


def test_scorer_options_are_reachable_as_name_colon_key_value():
    from winnow.tasks.scorers import get_scorer, parse_scorer_list
    from winnow.tasks.scorers.base import split_spec

    assert split_spec("influence:variant=ekfac:damping=0.01") == ("influence", {"variant": "ekfac", "damping": "0.01"})
    assert parse_scorer_list("loss,ensemble:members=aum+margin:rounds=2") == ["loss", "ensemble:members=aum+margin:rounds=2"]
    assert get_scorer("influence:variant=ekfac").options == {"variant": "ekfac"}
    with pytest.raises(ValueError, match="not key=value"):
        split_spec("influence:ekfac")
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        parse_scorer_list("nope:a=1")


def test_ensemble_options_from_the_cli_form_change_its_scores():
    _, y, given = _mixture(n=300)
    probs = np.random.default_rng(0).dirichlet(np.ones(3) * 0.5, len(y))  # members disagree on these
    from winnow.tasks.scorers import TrainingContext, get_scorer

    ctx = TrainingContext.from_probabilities(probs, given, np.arange(len(y)).astype(str))
    a = get_scorer("ensemble:members=loss+margin")(ctx)
    b = get_scorer("ensemble:members=loss+confident")(ctx)
    assert a.shape == (300,) and not np.allclose(a, b)
