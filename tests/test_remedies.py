"""The remedies of issue 14: the robust loss, the held-out selection safeguard, one entry point."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from winnow.tasks import remedies


def test_generalized_cross_entropy_between_ce_and_mae_and_bounded():
    torch.manual_seed(0)
    logits, targets = torch.randn(64, 5) * 3, torch.randint(0, 5, (64,))
    # q -> 0 is cross-entropy: (1 - p^q)/q -> -log p
    assert remedies.generalized_cross_entropy(logits, targets, q=1e-4).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-3)
    # q = 1 is the mean absolute error of the label's probability
    p_y = torch.softmax(logits, 1)[torch.arange(64), targets]
    assert remedies.generalized_cross_entropy(logits, targets, q=1.0).item() == pytest.approx((1 - p_y).mean().item())
    # a confidently wrong label costs at most 1/q, where cross-entropy grows without bound
    wrong = torch.tensor([[50.0, 0, 0, 0, 0]])
    assert remedies.generalized_cross_entropy(wrong, torch.tensor([1]), q=0.7).item() <= 1 / 0.7
    assert F.cross_entropy(wrong, torch.tensor([1])).item() > 40
    with pytest.raises(ValueError, match="q must lie"):
        remedies.generalized_cross_entropy(logits, targets, q=0.0)
    with pytest.raises(ValueError, match="targets"):
        remedies.generalized_cross_entropy(logits, targets[:3])


def test_holdout_folds_partition_the_rows():
    folds = remedies.holdout_folds(10, seed=1, folds=3)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(10))
    for fit, h in folds:
        assert np.intersect1d(fit, h).size == 0 and fit.size + h.size == 10
    assert [h.tolist() for _, h in folds] == [h.tolist() for _, h in remedies.holdout_folds(10, seed=1, folds=3)]
    with pytest.raises(ValueError, match="at least 3 samples"):
        remedies.holdout_folds(2, seed=0, folds=3)


def test_choose_on_holdout_needs_a_clear_win_to_leave_no_change():
    rng = np.random.default_rng(0)
    base = rng.random(400) < 0.6
    clear = base | (rng.random(400) < 0.3)  # right wherever the baseline is, and on 30% more
    choice, acc = remedies.choose_on_holdout({"none": base, "prune": clear})
    assert choice == "prune" and acc["prune"] > acc["none"]
    # one more correct sample in 400 is within noise: stay with no change
    marginal = base.copy()
    marginal[np.flatnonzero(~base)[0]] = True
    assert remedies.choose_on_holdout({"none": base, "prune": marginal})[0] == "none"
    # a tie or a loss keeps the baseline
    assert remedies.choose_on_holdout({"none": base, "gce": base.copy()})[0] == "none"
    with pytest.raises(ValueError, match="baseline 'none'"):
        remedies.choose_on_holdout({"prune": base})
    with pytest.raises(ValueError, match="one length"):
        remedies.choose_on_holdout({"none": base, "prune": base[:10]})


# ---------------------------------------------------------------- train_with_remedy on a real 1-NN classifier


def _blobs(n=600, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])[y] + rng.normal(size=(n, 2))
    return x, y


def _one_nn(x):
    """(train_fn, predict_fn): a 1-nearest-neighbour classifier, which memorises every wrong label."""
    def train_fn(rows, labels, loss_fn):
        return x[rows], np.asarray(labels)

    def predict_fn(model, rows):
        xs, ys = model
        nearest = ys[((x[rows][:, None, :] - xs[None]) ** 2).sum(-1).argmin(1)]
        return np.eye(3)[nearest]

    return train_fn, predict_fn


def test_select_prunes_when_the_flags_are_the_wrong_labels():
    x, y = _blobs()
    rng = np.random.default_rng(1)
    flipped = rng.random(len(y)) < 0.3
    noisy = np.where(flipped, (y + 1) % 3, y)
    train_fn, predict_fn = _one_nn(x)
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3  # an out-of-sample model that knows the classes
    out = remedies.train_with_remedy("select", noisy, flipped, probs, 0, train_fn, predict_fn)
    assert out.applied in ("prune", "relabel")
    assert out.holdout_accuracy[out.applied] > out.holdout_accuracy["none"] + 0.1
    # the chosen plan no longer trains on a wrong label
    assert np.all(out.plan.labels == y[out.plan.rows])


def test_select_falls_back_to_no_change_when_the_flags_are_noise():
    x, y = _blobs()
    flags = np.random.default_rng(2).random(len(y)) < 0.3  # clean labels, random flags
    train_fn, predict_fn = _one_nn(x)
    out = remedies.train_with_remedy("select", y, flags, np.eye(3)[y], 0, train_fn, predict_fn)
    assert out.applied == "none"
    assert out.plan.rows.tolist() == list(range(len(y))) and out.plan.dropped == 0


def test_select_reuses_the_out_of_sample_pass_as_no_change():
    x, y = _blobs(n=90)
    calls = []
    train_fn, predict_fn = _one_nn(x)

    def counting(rows, labels, loss_fn):
        calls.append(len(rows))
        return train_fn(rows, labels, loss_fn)

    folds = remedies.holdout_folds(len(y), seed=0, folds=3)
    remedies.train_with_remedy("select", y, np.zeros(len(y), bool), np.eye(3)[y], 0, counting, predict_fn, folds=folds)
    # 3 candidates x 3 folds + the final model; `none` comes from probs, not a training
    assert len(calls) == len(remedies.SELECT_CANDIDATES) * 3 + 1
    with pytest.raises(ValueError, match="unknown remedy"):
        remedies.train_with_remedy("burn", y, np.zeros(len(y), bool), None, 0, train_fn, predict_fn)
    with pytest.raises(ValueError, match="needs the out-of-sample"):
        remedies.train_with_remedy("relabel", y, np.ones(len(y), bool), None, 0, train_fn, predict_fn)


# ---------------------------------------------------------------- the injection-corrected noise count


def test_inject_flips_moves_exactly_the_requested_rows_to_other_classes():
    from winnow.tasks import noise_rate

    labels = np.random.default_rng(0).integers(0, 4, 500)
    out = noise_rate.inject_flips(labels, 4, 0.1, seed=3)
    assert int((out != labels).sum()) == 50 and out.min() >= 0 and out.max() < 4
    assert np.array_equal(out, noise_rate.inject_flips(labels, 4, 0.1, seed=3))
    with pytest.raises(ValueError, match="rate"):
        noise_rate.inject_flips(labels, 4, 0.0, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        noise_rate.inject_flips(labels, 3, 0.1, seed=0)


def test_injection_corrects_an_estimator_that_counts_a_fixed_share():
    """A model that puts 0.7 on the true class: `expected` then counts 0.6 of the wrong labels,
    and its response to the injected flips reveals that share."""
    from winnow.tasks import noise_rate

    rng = np.random.default_rng(1)
    n, c = 4000, 4
    truth = rng.integers(0, c, n)
    given = noise_rate.inject_flips(truth, c, 0.25, seed=9)
    probs = np.full((n, c), 0.1)
    probs[np.arange(n), truth] = 0.7
    wrong = int((given != truth).sum())
    plain = noise_rate.expected_count(given, probs)
    assert plain == pytest.approx(0.6 * wrong, rel=0.02)
    # the retrained model sees the same inputs, so its probabilities are the same
    corrected = noise_rate.injected_slope_count(given, probs, probs, 0.1, seed=5)
    assert corrected == pytest.approx(wrong, rel=0.05)
    with pytest.raises(ValueError, match="base must be"):
        noise_rate.injected_slope_count(given, probs, probs, 0.1, base="guess")


def test_relabel_other_names_the_runner_up_class_of_flagged_rows_only():
    labels = np.array([0, 1, 2, 0])
    flags = np.array([True, True, False, False])
    probs = np.array([[0.6, 0.1, 0.3], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    plan = remedies.relabel_other(labels, flags, probs)
    # row 0: the model agrees with the (flagged) label, the runner-up is class 2; row 3 is not flagged
    assert plan.labels.tolist() == [2, 0, 2, 0] and plan.rows.tolist() == [0, 1, 2, 3]
    assert plan.changed == 2 and plan.dropped == 0
    with pytest.raises(ValueError, match="probs must have shape"):
        remedies.relabel_other(labels, flags, probs[:2])


def test_relabel_agreed_relabels_where_both_runner_ups_agree_and_drops_the_other_flags():
    labels = np.array([0, 1, 2, 0, 1])
    flags = np.array([True, True, True, False, False])
    probs = np.array([[0.6, 0.1, 0.3], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    # the second opinion's scale does not matter, only its order among the other classes
    second = np.array([[9.0, -1.0, 2.0], [5.0, 0.0, 6.0], [-2.0, -3.0, 7.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    plan = remedies.relabel_agreed(labels, flags, probs, second)
    # row 0: both put class 2 first after the given 0 -> relabelled; row 1: 0 vs 2 -> dropped;
    # row 2: both say 0 (the given 2 excluded) -> relabelled; rows 3-4 unflagged keep their labels
    assert plan.rows.tolist() == [0, 2, 3, 4] and plan.labels.tolist() == [2, 0, 0, 1]
    assert plan.changed == 2 and plan.dropped == 1
    with pytest.raises(ValueError, match="second must have the shape"):
        remedies.relabel_agreed(labels, flags, probs, second[:, :2])
    with pytest.raises(ValueError, match="second must be finite"):
        remedies.relabel_agreed(labels, flags, probs, np.where(second > 8, np.nan, second))
    with pytest.raises(ValueError, match="needs the out-of-sample probabilities and a second opinion"):
        remedies.train_with_remedy("relabel-agreed", labels, flags, probs, 0, None, None)


def test_relabel_agreed_on_real_digits_gives_flipped_labels_back_their_true_class():
    """Digits with 20% symmetric noise, flags = the truly flipped rows: the out-of-sample folds of
    a real MLP and the label-free probe, cross-fitted, agree on most of them, and where they agree
    they name the true class."""
    from helpers import noisy_digits_context
    from winnow.tasks.scorers.label_free import cross_fitted_probe

    ctx, y_noisy, y_true = noisy_digits_context(0, epochs=6, train=False)
    probs = np.asarray(ctx.out_of_sample_probs())
    second = cross_fitted_probe(ctx.x.numpy(), y_noisy, 10, seed=0)
    assert second.shape == (len(y_noisy), 10)
    flags = y_noisy != y_true
    plan = remedies.relabel_agreed(y_noisy, flags, probs, second)
    new = plan.labels[np.isin(plan.rows, np.flatnonzero(flags))]
    right = new == y_true[plan.rows[np.isin(plan.rows, np.flatnonzero(flags))]]
    assert plan.changed > 0.6 * flags.sum() and right.mean() > 0.9
    unflagged = ~flags[plan.rows]
    np.testing.assert_array_equal(plan.labels[unflagged], y_noisy[plan.rows][unflagged])


def test_relabel_soft_trains_flagged_rows_on_the_average_of_both_opinions():
    labels = np.array([0, 1, 2, 1])
    flags = np.array([False, True, False, True])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    second = np.array([[0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    plan = remedies.relabel_soft(labels, flags, probs, second)
    # unflagged rows: their given label, one-hot; flagged: (probs + second) / 2; nothing dropped
    np.testing.assert_allclose(plan.labels, [[1, 0, 0], [0.75, 0.175, 0.075], [0, 0, 1], [0.15, 0.15, 0.7]])
    assert plan.rows.tolist() == [0, 1, 2, 3] and plan.changed == 2 and plan.dropped == 0
    np.testing.assert_allclose(remedies.relabel_soft(labels, flags, probs).labels[flags], probs[flags])
    with pytest.raises(ValueError, match="second must be probabilities"):
        remedies.relabel_soft(labels, flags, probs, second * 2)
    with pytest.raises(ValueError, match="probs must be probabilities"):
        remedies.relabel_soft(labels, flags, probs + 0.1)
    with pytest.raises(ValueError, match="needs the out-of-sample probabilities"):
        remedies.train_with_remedy("relabel-soft", labels, flags, None, 0, None, None)
    # soft-all: the same flagged targets; an unflagged row is half its label, half the two opinions
    soft_all = remedies.relabel_soft(labels, flags, probs, second, soften_unflagged=True).labels
    np.testing.assert_allclose(soft_all[flags], plan.labels[flags])
    np.testing.assert_allclose(soft_all[[0, 2]], [[0.775, 0.1, 0.125], [0.05, 0.05, 0.9]])
    np.testing.assert_allclose(remedies.soft_targets(labels, flags, (probs + second) / 2, True), soft_all)
    # with nothing flagged it still softens every row (relabel-soft would change nothing)
    seen = {}
    remedies.train_with_remedy("soft-all", labels, np.zeros(4, bool), probs, 0,
                               lambda rows, y, loss: seen.setdefault("y", y), None)
    np.testing.assert_allclose(seen["y"], (np.eye(3)[labels] + probs) / 2)
    with pytest.raises(ValueError, match="suggestion must be probabilities"):
        remedies.soft_targets(labels, flags, probs * 2)


def test_soft_targets_train_like_hard_labels_when_one_hot_and_are_checked():
    from winnow.tasks.models.nets import build_model
    from winnow.tasks.models.training import TrainConfig, train_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    factory = lambda: build_model("mlp", (6,), 3)  # noqa: E731
    config = TrainConfig(epochs=3, seed=1)
    hard = train_model(factory, x, y, config, device=torch.device("cpu")).model
    soft = train_model(factory, x, np.eye(3)[y], config, device=torch.device("cpu")).model
    for a, b in zip(hard.parameters(), soft.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="soft targets"):
        train_model(factory, x, np.full((200, 3), 0.5), config, device=torch.device("cpu"))


def test_relabel_soft_on_real_digits_beats_training_on_the_given_labels():
    """Digits with 40% symmetric noise, flags = the truly flipped rows, soft targets from the
    out-of-sample folds of a real MLP and the cross-fitted label-free probe: the retrained model is
    better on the clean test split than the one trained on the given labels (+0.053 on this seed;
    +0.022 to +0.066 on seeds 0-2 when this was written)."""
    from winnow.tasks.data import noise
    from winnow.tasks.data.sources import load_digits
    from winnow.tasks.models.nets import build_model
    from winnow.tasks.models.training import TrainConfig, accuracy, predict_logits
    from winnow.tasks.scorers import TrainingContext
    from winnow.tasks.scorers.label_free import second_opinion

    ds = load_digits()
    train, test = ds.split == "train", ds.split == "test"
    x, y_true = ds.x[train], ds.label[train]
    y_noisy = noise.symmetric(y_true, 10, 0.4, seed=0)
    ctx = TrainingContext(x, y_noisy, 10, lambda: build_model("mlp", x.shape[1:], 10), [],
                          TrainConfig(epochs=6, seed=0), ds.sample_id[train], device=torch.device("cpu"))
    probs = np.asarray(ctx.out_of_sample_probs())
    second = second_opinion(x, y_noisy, 10, seed=0)
    flags = y_noisy != y_true

    def train_fn(rows, labels, loss_fn):
        return ctx.train(ctx.x[torch.as_tensor(rows)], torch.as_tensor(labels), keep_checkpoints=False,
                         loss_fn=loss_fn).model

    def predict_fn(model, rows):
        return torch.softmax(predict_logits(model, ctx.x[torch.as_tensor(rows)]), 1).double().numpy()

    acc = {}
    for name in ("none", "relabel-soft"):
        out = remedies.train_with_remedy(name, y_noisy, flags, probs, 0, train_fn, predict_fn, second=second)
        acc[name] = accuracy(out.model, ds.x[test], ds.label[test])
    assert out.plan.labels.shape == (len(y_noisy), 10) and out.plan.dropped == 0
    assert acc["relabel-soft"] > acc["none"] + 0.02, acc
    # (not asserted for soft-all: with flags = the truth every unflagged row is clean, and softening
    # it toward 6-epoch fold models of 40%-noisy labels cost 0.066 and 0.015 against relabel-soft on
    # seeds 1 and 2; the benchmark grid, where flags miss some wrong labels, is where it gains)


def test_choose_on_holdout_with_folds_needs_every_fold_to_agree():
    rng = np.random.default_rng(0)
    base = rng.random(600) < 0.5
    fold_of = np.repeat([0, 1, 2], 200)
    better = base.copy()
    better |= rng.random(600) < 0.4  # wins in every fold
    assert remedies.choose_on_holdout({"none": base, "prune": better}, fold_of=fold_of)[0] == "prune"
    worse_in_2 = better.copy()
    worse_in_2[400:] = base[400:] & (rng.random(200) < 0.8)  # ... but loses fold 2: training noise
    assert remedies.choose_on_holdout({"none": base, "prune": worse_in_2})[0] == "prune"  # pooled alone says yes
    assert remedies.choose_on_holdout({"none": base, "prune": worse_in_2}, fold_of=fold_of)[0] == "none"
    with pytest.raises(ValueError, match="fold_of must have shape"):
        remedies.choose_on_holdout({"none": base, "prune": better}, fold_of=fold_of[:10])
