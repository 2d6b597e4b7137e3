"""The pure pieces of benchmarks/remedies_eval.py: the Dawid–Skene count of the second-opinion
estimators."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import load_benchmark


@pytest.fixture(scope="module")
def remedies_eval():
    return load_benchmark("remedies_eval")


def _noisy(truth, rate, rng, classes=10):
    y = truth.copy()
    moved = rng.random(len(y)) < rate
    y[moved] = (y[moved] + rng.integers(1, classes, moved.sum())) % classes
    return y


def test_dawid_skene_counts_the_wrong_labels_of_independent_annotators(remedies_eval):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, 4000)
    votes = np.stack([_noisy(truth, 0.2, rng), _noisy(truth, 0.3, rng), _noisy(truth, 0.4, rng)], 1)
    wrong = int((votes[:, 0] != truth).sum())
    assert remedies_eval.dawid_skene_count(votes, 10) == pytest.approx(wrong, rel=0.05)
    # annotators that copy the label's mistakes (what a model trained on it does) hide them
    copied = np.stack([votes[:, 0], votes[:, 0], votes[:, 2]], 1)
    assert remedies_eval.dawid_skene_count(copied, 10) < 0.5 * wrong
