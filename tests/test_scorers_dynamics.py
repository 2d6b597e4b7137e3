"""AUM, final margin and forgetting: exact values on hand-built logits, detection on noisy digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import noisy_digits_context
from sklearn.metrics import roc_auc_score

from winnow.tasks.scorers import get_scorer
from winnow.tasks.scorers.dynamics import area_under_margin, forgetting_counts, forgetting_scores, margins

# T = 3 checkpoints, n = 3 samples, C = 3 classes; labels [0, 1, 2].
LOGITS = np.array([
    [[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 1.0]],
    [[3.0, 0.0, 0.5], [0.0, 2.0, 1.0], [2.0, 0.0, 1.0]],
    [[1.0, 2.0, 0.0], [0.0, 4.0, 1.0], [0.0, 0.0, 5.0]],
])
LABELS = np.array([0, 1, 2])
# margins: sample 0: 1, 2.5, -1; sample 1: -2, 1, 3; sample 2: 0, -1, 5
MARGINS = np.array([[1.0, -2.0, 0.0], [2.5, 1.0, -1.0], [-1.0, 3.0, 5.0]])


def test_margins_known_values():
    np.testing.assert_allclose(margins(LOGITS, LABELS), MARGINS)
    np.testing.assert_allclose(margins(torch.tensor(LOGITS[0]), torch.tensor(LABELS)), MARGINS[0])


def test_area_under_margin_is_mean_margin():
    np.testing.assert_allclose(area_under_margin(LOGITS, LABELS), [2.5 / 3, 2.0 / 3, 4.0 / 3])


def test_forgetting_counts_known_values():
    counts, learned = forgetting_counts(LOGITS, LABELS)
    # sample 0: correct, correct, wrong -> 1; sample 1: wrong, correct, correct -> 0;
    # sample 2: tie (margin 0 is not correct), wrong, correct -> 0
    np.testing.assert_array_equal(counts, [1, 0, 0])
    np.testing.assert_array_equal(learned, [True, True, True])
    never = np.array([[[0.0, 1.0]], [[0.0, 2.0]]])
    counts, learned = forgetting_counts(never, np.array([0]))
    assert counts.tolist() == [0] and learned.tolist() == [False]


def test_forgetting_scores_order_never_learned_first():
    logits = np.concatenate([LOGITS, np.array([[[0.0, 5.0, 0.0]]] * 3)], axis=1)  # a 4th sample, never learned
    s = forgetting_scores(logits, np.array([0, 1, 2, 0]))
    assert s.argmax() == 3
    assert s[0] > s[1] and s[0] > s[2]  # one forgetting event beats none
    assert s[1] > s[2]  # tie at 0 events, broken by lower AUM (2/3 < 4/3)


@pytest.mark.parametrize("bad, msg", [
    (lambda: margins(LOGITS, LABELS[:2]), "shape"),
    (lambda: margins(LOGITS, np.array([0, 1, 3])), "labels must lie"),
    (lambda: margins(LOGITS[..., :1], np.array([0, 0, 0])), "at least 2 classes"),
    (lambda: margins(np.full((3, 3), np.nan), LABELS), "finite"),
    (lambda: area_under_margin(LOGITS[0], LABELS), r"\(T, n, C\)"),
    (lambda: margins(LOGITS, LABELS.astype(float)), "integers"),
])
def test_validation(bad, msg):
    with pytest.raises(ValueError, match=msg):
        bad()


@pytest.fixture(scope="module")
def noisy_digits_ctx():
    ctx, y_noisy, y = noisy_digits_context(data_seed=0)
    return ctx, y_noisy != y


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aum", "margin", "forgetting"])
def test_detects_flips_on_noisy_digits(noisy_digits_ctx, name):
    ctx, flipped = noisy_digits_ctx
    scores = get_scorer(name)(ctx)
    auc = roc_auc_score(flipped, scores)
    # measured ≈ 0.99 (aum, margin) and ≈ 0.97-0.99 (forgetting); random is 0.5
    assert auc > 0.9, f"{name} AUROC {auc:.3f}"


@pytest.mark.slow
def test_aum_matches_checkpoint_logits(noisy_digits_ctx):
    ctx, _ = noisy_digits_ctx
    logits = ctx.checkpoint_logits().numpy()
    y = ctx.y.numpy()
    rows = np.arange(len(y))
    other = logits.copy()
    other[:, rows, y] = -np.inf
    expected = -(logits[:, rows, y] - other.max(-1)).mean(0)
    np.testing.assert_allclose(get_scorer("aum")(ctx), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(get_scorer("margin")(ctx), -(logits[-1, rows, y] - other[-1].max(-1)), rtol=1e-6, atol=1e-6)
