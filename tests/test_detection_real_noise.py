"""Neighbour voting, noise-count estimators, remedies and the CIFAR-10N loader (issue 14)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.tasks import noise_rate, remedies
from winnow.tasks.data.cifar10n import load_cifar10n
from winnow.tasks.scorers.neighbors import consensus_scores, knn_votes, label_disagreement, out_of_sample_views

from helpers import noisy_digits_context


# ---------------------------------------------------------------- k-NN votes


def _brute_force_votes(q, r, labels, c, k, exclude_self):
    """The definition, one query at a time: centre on the reference mean, cosine, top k, weights (1+cos)/2."""
    centre = r.mean(0)
    qn = (q - centre) / np.linalg.norm(q - centre, axis=1, keepdims=True)
    rn = (r - centre) / np.linalg.norm(r - centre, axis=1, keepdims=True)
    out = np.ones((len(q), c))
    for i in range(len(q)):
        sim = rn @ qn[i]
        if exclude_self:
            sim[i] = -np.inf
        top = np.argsort(-sim, kind="stable")[:k]
        for j in top:
            out[i, labels[j]] += (1 + sim[j]) / 2
    return out / out.sum(1, keepdims=True)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_votes_match_brute_force(exclude_self):
    rng = np.random.default_rng(0)
    r = rng.normal(size=(60, 5))
    labels = rng.integers(0, 3, size=60)
    q = r if exclude_self else rng.normal(size=(17, 5))
    got = knn_votes(q, r, labels, 3, k=7, exclude_self=exclude_self, block=8)  # several blocks
    np.testing.assert_allclose(got, _brute_force_votes(q, r, labels, 3, 7, exclude_self), atol=1e-5)


@pytest.mark.parametrize("width,k", [(2560, 10), (8191, 10), (5000, 1), (9000, 37)])
def test_top_k_over_chunks_equals_topk(width, k):
    import torch

    from winnow.tasks.scorers.neighbors import CHUNK, top_k

    assert width >= 4 * k * CHUNK or k == 37  # the chunked path, and (k = 37) the fallback
    sim = torch.randn(50, width, generator=torch.Generator().manual_seed(width))
    sim[:, ::97] = -float("inf")  # a sample's own row, excluded
    sim[3, :] = sim[3, :].sort().values  # its best entries all in the last, ragged chunk
    want = sim.topk(k, dim=1)
    values, columns = top_k(sim, k)
    assert torch.equal(values, want.values) and torch.equal(columns, want.indices)
    with pytest.raises(ValueError, match="k must lie"):
        top_k(sim, width + 1)


def test_knn_votes_match_brute_force_on_a_wide_reference():
    rng = np.random.default_rng(5)
    r = rng.normal(size=(3000, 6))  # wide enough for the chunked top k (k = 10: from 2,560 rows)
    labels = rng.integers(0, 4, size=3000)
    q = rng.normal(size=(40, 6))
    np.testing.assert_allclose(knn_votes(q, r, labels, 4, k=10), _brute_force_votes(q, r, labels, 4, 10, False),
                               atol=1e-5)


def test_knn_votes_find_planted_flips_in_clusters():
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=10, size=(4, 8))
    true = np.repeat(np.arange(4), 50)
    x = centres[true] + rng.normal(size=(200, 8))
    given = true.copy()
    flipped = rng.choice(200, 20, replace=False)
    given[flipped] = (given[flipped] + 1) % 4
    score = label_disagreement(knn_votes(x, x, given, 4, k=10, exclude_self=True), given)
    assert set(np.argsort(-score)[:20]) == set(flipped)


def test_knn_votes_validate_inputs():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="k must lie"):
        knn_votes(x, x, np.zeros(5, int), 2, k=5)
    with pytest.raises(ValueError, match="reference_labels must lie"):
        knn_votes(x, x, np.full(5, 3), 2, k=2)
    with pytest.raises(ValueError, match="width"):
        knn_votes(np.zeros((2, 3)), x, np.zeros(5, int), 2, k=2)


def test_knn_votes_skip_each_querys_own_row_in_a_sampled_reference():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 4))
    labels = rng.integers(0, 3, size=40)
    ref = np.array([1, 5, 6, 9, 13, 20, 21, 30, 33, 39])
    own = np.full(40, -1)
    own[ref] = np.arange(len(ref))
    got = knn_votes(x, x[ref], labels[ref], 3, k=4, self_rows=own, block=7)
    for i in range(40):  # the definition, one query at a time, its own row left out of the reference
        keep = ref[ref != i]
        # the centre is the mean of the whole sample, own row included
        centre = x[ref].mean(0)
        qn = (x[i] - centre) / np.linalg.norm(x[i] - centre)
        rn = (x[keep] - centre) / np.linalg.norm(x[keep] - centre, axis=1, keepdims=True)
        sim = rn @ qn
        top = np.argsort(-sim, kind="stable")[:4]
        want = np.ones(3)
        for j in top:
            want[labels[keep][j]] += (1 + sim[j]) / 2
        np.testing.assert_allclose(got[i], want / want.sum(), atol=1e-5)
    np.testing.assert_allclose(knn_votes(x, x, labels, 3, k=4, self_rows=np.arange(40)),
                               knn_votes(x, x, labels, 3, k=4, exclude_self=True))
    with pytest.raises(ValueError, match="self_rows must lie"):
        knn_votes(x, x[ref], labels[ref], 3, k=4, self_rows=np.full(40, 10))


def test_reference_rows_keep_every_class_and_are_seeded():
    from winnow.tasks.scorers.neighbors import reference_rows

    labels = np.r_[np.zeros(9000, int), np.ones(990, int), np.full(10, 2)]
    assert np.array_equal(reference_rows(labels, 3, cap=10_000), np.arange(10_000))  # under the cap: all
    ref = reference_rows(labels, 3, cap=1000, seed=4, k=10)
    assert np.array_equal(ref, reference_rows(labels, 3, cap=1000, seed=4, k=10))
    assert not np.array_equal(ref, reference_rows(labels, 3, cap=1000, seed=5, k=10))
    assert np.all(np.diff(ref) > 0)
    counts = np.bincount(labels[ref], minlength=3)
    assert counts[0] == 900 and counts[1] == 99 and counts[2] == 10  # the rare class whole
    with pytest.raises(ValueError, match="cap must exceed k"):
        reference_rows(labels, 3, cap=10, k=10)


def test_reference_size_keeps_the_search_within_the_exact_cost_at_32768_rows():
    from winnow.tasks.scorers.neighbors import EXACT_UP_TO, MIN_REFERENCE_ROWS, reference_size

    assert [reference_size(n) for n in (0, 1_500, EXACT_UP_TO)] == [0, 1_500, EXACT_UP_TO]
    assert reference_size(100_000) == EXACT_UP_TO ** 2 // 100_000 == 10_737
    assert reference_size(10**6) == reference_size(10**7) == MIN_REFERENCE_ROWS
    for n in (40_000, 100_000, 130_000):
        assert n * reference_size(n) <= EXACT_UP_TO ** 2
    with pytest.raises(ValueError, match="non-negative"):
        reference_size(-1)


def test_knn_aum_on_a_sampled_reference_still_finds_the_flips(monkeypatch):
    """Past the cap the penultimate vote searches a sample of the rows: on a real training run with
    the cap at a quarter of the rows, the vote still ranks planted flips far above clean samples."""
    from sklearn.metrics import roc_auc_score

    from winnow.tasks.scorers import neighbors

    ctx, y_noisy, y_true = noisy_digits_context(1, epochs=6)
    full = label_disagreement(neighbors.neighbour_votes(ctx, "penultimate"), y_noisy)
    monkeypatch.setattr(neighbors, "EXACT_UP_TO", ctx.n // 4)
    monkeypatch.setattr(neighbors, "MIN_REFERENCE_ROWS", ctx.n // 4)
    sampled = label_disagreement(neighbors.neighbour_votes(ctx, "penultimate"), y_noisy)
    flipped = y_noisy != y_true
    assert not np.allclose(full, sampled)  # the sample was used
    assert roc_auc_score(flipped, sampled) > 0.9
    assert abs(roc_auc_score(flipped, sampled) - roc_auc_score(flipped, full)) < 0.05
    # the scorer option: reference=all searches every row again
    from winnow.tasks.scorers import get_scorer
    from winnow.tasks.scorers.dynamics import area_under_margin
    from winnow.tasks.scorers.ensemble import rank_average

    exact = rank_average([-area_under_margin(ctx.checkpoint_logits(), ctx.y), full])
    np.testing.assert_allclose(get_scorer("knn-aum:reference=all")(ctx), exact)
    with pytest.raises(ValueError, match="reference must be >= 1"):
        get_scorer("knn-aum:reference=0")(ctx)


def test_out_of_sample_views_reproduce_the_contexts_probabilities():
    """The fold models are the context's own: same folds, seeds and recipe give the same probabilities."""
    ctx, y_noisy, y_true = noisy_digits_context(0, epochs=3, kfold=3)
    probs, votes = out_of_sample_views(ctx)
    ctx2, _, _ = noisy_digits_context(0, epochs=3, kfold=3, train=False)
    np.testing.assert_allclose(probs, ctx2.out_of_sample_probs(), atol=1e-6)
    assert votes.shape == probs.shape and np.allclose(votes.sum(1), 1)
    flipped = y_noisy != y_true
    score = label_disagreement(votes, y_noisy)
    assert score[flipped].mean() > score[~flipped].mean() + 0.3


def test_knn_aum_ranks_planted_flips_above_clean_samples():
    """knn-aum (inside the recommended detector) on a real training run: AUM and the penultimate-layer vote, rank-averaged."""
    from winnow.tasks.scorers import get_scorer
    from winnow.tasks.scorers.dynamics import area_under_margin
    from winnow.tasks.scorers.ensemble import rank_average
    from winnow.tasks.scorers.neighbors import neighbour_votes

    ctx, y_noisy, y_true = noisy_digits_context(1, epochs=6)
    scores = get_scorer("knn-aum")(ctx)
    parts = [-area_under_margin(ctx.checkpoint_logits(), ctx.y),
             label_disagreement(neighbour_votes(ctx, "penultimate"), y_noisy)]
    np.testing.assert_allclose(scores, rank_average(parts))
    flipped = y_noisy != y_true
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(flipped, scores) > 0.95


def test_consensus_is_the_rank_average_of_its_views():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    votes = np.array([[0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.5, 0.5]])
    aum = np.array([2.0, 1.0, -1.0, -0.5])
    s = consensus_scores(probs, votes, aum, labels)
    assert np.argmax(s) == 2 and np.argmin(s) == 0
    with pytest.raises(ValueError, match="aum"):
        consensus_scores(probs, votes, aum[:3], labels)


# ---------------------------------------------------------------- noise-count estimators


def _synthetic_probs(n=4000, c=5, rate=0.2, accuracy=0.9, seed=0):
    """Out-of-sample probabilities of a model with the given accuracy on the true labels (surer
    where it is right, as a trained model is), and labels with ``rate`` symmetric flips."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    pred = np.where(rng.random(n) < accuracy, true, rng.integers(0, c, n))
    peak = np.where(pred == true, 0.9, 0.5)
    probs = np.repeat(((1 - peak) / (c - 1))[:, None], c, axis=1)
    probs[np.arange(n), pred] = peak
    probs = 0.7 * probs + 0.3 * rng.dirichlet(np.ones(c), n)
    given = true.copy()
    flip = rng.choice(n, int(rate * n), replace=False)
    given[flip] = (given[flip] + rng.integers(1, c, flip.size)) % c
    return given, probs, flip.size


@pytest.mark.parametrize("method", ["anchor", "confident"])
def test_estimators_hold_on_an_accurate_model(method):
    labels, probs, wrong = _synthetic_probs()
    est = noise_rate.estimate(labels, probs, method)
    assert abs(est - wrong) / wrong < 0.2


def test_expected_count_subtracts_the_models_own_uncertainty():
    # 100 agreeing samples at p(given) = 0.8 (own uncertainty 0.2), 20 disagreeing at p(given) = 0.1:
    # 20 * 0.9 of mass against the given label, less 20 * 0.2 the model would doubt anyway = 14
    labels = np.zeros(120, dtype=int)
    probs = np.tile([0.8, 0.2], (120, 1))
    probs[100:] = [0.1, 0.9]
    assert noise_rate.expected_count(labels, probs) == 14
    assert noise_rate.estimate_noise_count(labels, probs) == noise_rate.estimate(labels, probs, noise_rate.RECOMMENDED)


def test_anchor_count_is_exact_on_a_known_transition():
    # the anchors of class j are its clear cases; a fixed 25% of each class's labels are moved
    c, per = 4, 400
    true = np.repeat(np.arange(c), per)
    probs = np.eye(c)[true] * 0.9 + 0.1 / c
    labels = true.copy()
    for j in range(c):
        rows = np.flatnonzero(true == j)[:100]
        labels[rows] = (j + 1) % c
    assert noise_rate.anchor_count(labels, probs, quantile=0.9) == 400


def test_estimators_validate_inputs():
    with pytest.raises(ValueError, match="probs must have shape"):
        noise_rate.anchor_count(np.zeros(3, int), np.ones((4, 2)))
    with pytest.raises(ValueError, match="unknown noise-count estimator"):
        noise_rate.estimate(np.zeros(3, int), np.ones((3, 2)), "guess")
    with pytest.raises(ValueError, match="labels must lie"):
        noise_rate.mixture_count(np.array([0, 5]), np.ones((2, 2)))


# ---------------------------------------------------------------- remedies


def test_remedy_plans():
    labels = np.array([0, 1, 2, 0, 1])
    flags = np.array([False, True, True, False, True])
    probs = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.4, 0.3, 0.3], [1, 0, 0], [0, 1, 0]], dtype=float)
    p = remedies.prune(labels, flags)
    assert p.rows.tolist() == [0, 3] and p.dropped == 3
    r = remedies.relabel(labels, flags, probs)
    # row 1 -> 0 (sure), row 2 dropped (unsure), row 4 dropped (consensus = given label)
    assert r.rows.tolist() == [0, 1, 3] and r.labels.tolist() == [0, 0, 0] and r.changed == 1 and r.dropped == 2
    s = remedies.pseudo_label_plan(labels, flags, probs, min_confidence=0.7)
    assert s.rows.tolist() == [0, 1, 3, 4] and s.labels.tolist() == [0, 0, 0, 1] and s.changed == 1
    w = remedies.weight(labels, flags, seed=0, suspect_weight=0.0)
    assert set(w.rows.tolist()) <= {0, 3} and len(w.rows) == 5


def test_weight_remedy_draws_suspects_less_often():
    labels = np.zeros(2000, dtype=int)
    flags = np.arange(2000) < 1000
    w = remedies.weight(labels, flags, seed=3, suspect_weight=0.25)
    drawn_suspects = np.isin(w.rows, np.flatnonzero(flags)).sum()
    assert 0.15 < drawn_suspects / len(w.rows) < 0.25  # expected 0.25 / 1.25 = 0.2


def test_remedies_validate_and_gap():
    with pytest.raises(ValueError, match="flags must be a boolean"):
        remedies.prune(np.zeros(3, int), np.zeros(3, int))
    with pytest.raises(ValueError, match="min_confidence"):
        remedies.relabel(np.zeros(2, int), np.zeros(2, bool), np.ones((2, 2)), min_confidence=2)
    assert remedies.gap_recovered(0.8, 0.9, 1.0) == pytest.approx(0.5)
    assert remedies.gap_recovered(0.8, 0.7, 1.0) == pytest.approx(-0.5)
    assert np.isnan(remedies.gap_recovered(0.8, 0.9, 0.8))


# ---------------------------------------------------------------- CIFAR-10N loader


def _tiny_cifar10n(path, n_train=6, n_test=2):
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(n_train + n_test):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    clean = rng.integers(0, 10, n_train + n_test)
    human = (clean + (np.arange(n_train + n_test) % 3 == 0)) % 10
    table = pa.table({
        "sample_id": [f"n{i}" for i in range(n_train + n_test)], "label": human, "image": pa.array(blobs, pa.binary()),
        "split": ["train"] * n_train + ["test"] * n_test, "random_label1": human, "aggre_label": clean,
        "random_label2": human, "random_label3": human, "worse_label": human, "clean_label": clean,
    }).replace_schema_metadata({"class_names": ",".join(f"c{i}" for i in range(10))})
    pq.write_table(table, path)
    return clean, human


def test_cifar10n_loader_keeps_the_truth_out_of_the_labels(tmp_path):
    clean, human = _tiny_cifar10n(tmp_path / "c.parquet")
    ds = load_cifar10n(tmp_path / "c.parquet", label_set="random_label1")
    assert ds.x.shape == (8, 3, 32, 32) and ds.x.dtype == np.float32 and 0 <= ds.x.min() and ds.x.max() <= 1
    train = ds.split == "train"
    assert ds.label[train].tolist() == human[:6].tolist()  # the human labels, not the truth
    assert ds.label[~train].tolist() == clean[6:].tolist()  # the test split is clean
    assert ds.meta["clean_label"].tolist() == clean.tolist()
    small = load_cifar10n(tmp_path / "c.parquet", limit=3)
    assert (small.split == "train").sum() == 3 and (small.split == "test").sum() == 2
    with pytest.raises(ValueError, match="not a CIFAR-10N human label set"):
        load_cifar10n(tmp_path / "c.parquet", label_set="clean_label")
    with pytest.raises(ValueError, match="file not found"):
        load_cifar10n(tmp_path / "missing.parquet")


def test_cifar10n_as_a_benchmark_data_set_with_human_noise(tmp_path):
    """cifar10n-dev ingests CIFAR's labels; the human labels come back as the noise kind, so the
    benchmark's truth is exactly 'the person disagreed with CIFAR-10'."""
    from winnow.flows.benchmark import DEFAULT, _noises_for
    from winnow.tasks.data.cifar10n import HUMAN_NOISES, human_labels
    from winnow.tasks.data.sources import load_source

    clean, human = _tiny_cifar10n(tmp_path / "c.parquet")
    ds = load_source("cifar10n-dev", str(tmp_path / "c.parquet"))
    assert ds.label.tolist() == clean.tolist()
    train = ds.split == "train"
    noisy = human_labels(ds.sample_id[train], "human:random_label1", tmp_path / "c.parquet")
    assert noisy.tolist() == human[:6].tolist()
    assert (noisy != ds.label[train]).sum() == (human[:6] != clean[:6]).sum() > 0
    with pytest.raises(ValueError, match="unknown human noise"):
        human_labels(ds.sample_id, "human:clean_label", tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="not in the file"):
        human_labels(["nope"], "human:aggre_label", tmp_path / "c.parquet")
    # the human kinds run on CIFAR-10N only, once each; the injected kinds everywhere else
    assert _noises_for("cifar10n-dev", DEFAULT) == [(n, (0.0,)) for n in HUMAN_NOISES]
    assert [n for n, _ in _noises_for("digits", DEFAULT)] == ["symmetric", "class-pair", "instance-dependent"]
