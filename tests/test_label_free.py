"""Label-free views (patch k-means features, the ridge probe, the vote) and the `knn-aum-lf` scorer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from winnow.tasks.scorers import label_free
from winnow.tasks.scorers.label_free import (PatchDictionary, label_free_views, patch_size, probe_doubt,
                                             ridge_probe)

from helpers import noisy_digits_context


def _striped_images(n: int, seed: int):
    """Two classes of 16×16 RGB images told apart only by the orientation of their stripes (the same
    colours and mean brightness): pixels alone are a poor space, local patches a good one."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    grid = np.arange(16)
    images = np.empty((n, 3, 16, 16), np.float32)
    for i, c in enumerate(labels):
        phase = rng.integers(0, 4)
        wave = (np.sin((grid + phase) * np.pi / 2) + 1) / 2
        stripes = np.tile(wave, (16, 1)) if c == 0 else np.tile(wave[:, None], (1, 16))
        images[i] = stripes[None] * rng.uniform(0.5, 1.0, (3, 1, 1)) + rng.normal(0, 0.05, (3, 16, 16))
    return np.clip(images, 0, 1), labels


def test_patch_dictionary_encodes_quadrant_sums_deterministically_and_checks_its_input():
    images, _ = _striped_images(60, 0)
    d = PatchDictionary(images, centroids=12, seed=3)
    assert d.size == patch_size(16) == 5 and d.width == 48
    f = d.encode(images)
    assert f.shape == (60, 48) and f.dtype == np.float32 and (f >= 0).all() and np.isfinite(f).all()
    np.testing.assert_array_equal(f, PatchDictionary(images, centroids=12, seed=3).encode(images))
    np.testing.assert_allclose(d.encode(images[:7], batch=3), f[:7], rtol=1e-5, atol=1e-5)  # batching does not matter
    sparse = PatchDictionary(images, centroids=12, seed=3, stride=2)
    assert sparse.positions == (6, 6) and sparse.encode(images).shape == (60, 48)
    with pytest.raises(ValueError, match="images must have shape"):
        d.encode(images[:, :1])
    with pytest.raises(ValueError, match="channels, height, width"):
        PatchDictionary(images[:, 0])
    with pytest.raises(ValueError, match="finite"):
        PatchDictionary(np.full((2, 1, 8, 8), np.nan))


@pytest.mark.parametrize("shape, stride", [((3, 16, 16), 1), ((1, 13, 11), 2)])
def test_patch_encoding_equals_its_definition_patch_by_patch(shape, stride):
    """The convolutional encoding against the paper's recipe spelled out: every patch cut out,
    contrast-normalised, whitened, its distance to each centroid, the triangle activation, summed
    per quadrant (odd sides: the first half of the rows/columns takes the middle one)."""
    images = np.random.default_rng(4).random((9,) + shape).astype(np.float32)
    d = PatchDictionary(images, centroids=7, seed=1, stride=stride)
    s, (ph, pw) = d.size, d.positions
    want = np.zeros((9, 4, 7))
    for i in range(9):
        for r in range(ph):
            for c in range(pw):
                p = images[i, :, r * stride:r * stride + s, c * stride:c * stride + s].reshape(-1).astype(np.float64)
                p = (p - p.mean()) / np.sqrt(p.var() + label_free.CONTRAST_FLOOR)
                z = (p - d.mean.numpy()) @ d.zca.numpy()
                dist = np.sqrt(((z - d.centres.numpy()) ** 2).sum(1))
                want[i, 2 * (r >= (ph + 1) // 2) + (c >= (pw + 1) // 2)] += np.maximum(0, dist.mean() - dist)
    np.testing.assert_allclose(d.encode(images), want.reshape(9, -1), rtol=1e-4, atol=1e-4)
    # the same images in channels-last memory (rows gathered from a tensor can come that way): same bits
    strided = torch.as_tensor(images).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).numpy()
    np.testing.assert_array_equal(d.encode(strided), d.encode(images))
    # pixels on another scale's offset (e.g. 0..255 shifted): only the contrast within a patch counts
    np.testing.assert_allclose(d.encode(images + 200.0), want.reshape(9, -1), rtol=1e-3, atol=1e-3)


def test_ridge_probe_is_the_penalised_least_squares_solution():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 6))
    x = (x - x.mean(0)) / x.std(0)
    y = rng.integers(0, 3, 80)
    w, b = ridge_probe(x, y, 3, alpha=0.5)
    onehot = np.eye(3)[y]
    want = np.linalg.solve(x.T @ x / 80 + 0.5 * np.eye(6), x.T @ (onehot - onehot.mean(0)) / 80)
    np.testing.assert_allclose(w, want, atol=1e-10)
    np.testing.assert_allclose(b, onehot.mean(0))
    doubt = probe_doubt(x, y, w, b)
    scores = x @ w + b
    i = 5
    assert doubt[i] == pytest.approx(np.delete(scores[i], y[i]).max() - scores[i, y[i]])


def test_label_free_views_find_flipped_images_that_pixels_hide():
    images, truth = _striped_images(400, 2)
    given = truth.copy()
    flipped = np.random.default_rng(3).choice(400, 40, replace=False)
    given[flipped] = 1 - given[flipped]
    wrong = given != truth
    views = label_free_views(images, given, 2, seed=0)
    assert roc_auc_score(wrong, views["probe"]) > 0.95
    assert roc_auc_score(wrong, views["knn"]) > 0.95
    # the same views on the raw pixels (what the fallback for non-images does) are far weaker
    raw = label_free_views(images.reshape(400, -1), given, 2, seed=0)
    assert roc_auc_score(wrong, raw["probe"]) < 0.8


def _three_blobs(n: int, seed: int):
    """n 10-d rows of three well-separated Gaussian classes, 10% of their labels moved to the next
    class: (x, truth, given, flipped rows)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4, size=(3, 10))
    truth = rng.integers(0, 3, n)
    x = (centres[truth] + rng.normal(size=(n, 10))).astype(np.float32)
    given = truth.copy()
    flipped = rng.choice(n, n // 10, replace=False)
    given[flipped] = (given[flipped] + 1) % 3
    return x, truth, given, flipped


def test_label_free_views_past_the_fit_sample_stream_rows_and_still_find_flips(monkeypatch):
    from winnow.tasks.models.rows import Rows

    x, truth, given, _ = _three_blobs(900, seed=4)
    exact = label_free_views(x, given, 3)
    monkeypatch.setattr(label_free, "PROBE_FIT_ROWS", 300)  # fitted on 300 rows, 900 streamed 128 at a time
    monkeypatch.setattr(label_free, "VOTE_DIMENSIONS", 4)
    streamed = label_free_views(Rows(torch.as_tensor(x)), given, 3, block=128)
    wrong = given != truth
    for name in ("probe", "knn"):
        assert streamed[name].shape == (900,)
        assert roc_auc_score(wrong, streamed[name]) > 0.97
        assert roc_auc_score(wrong, exact[name]) > 0.97
    np.testing.assert_array_equal(label_free_views(x, given, 3, block=128)["probe"], streamed["probe"])
    probe_only = label_free_views(x, given, 3, block=128, vote=False)
    assert set(probe_only) == {"probe"}
    np.testing.assert_array_equal(probe_only["probe"], streamed["probe"])


def test_cross_fitted_probe_scores_each_row_without_its_label_and_names_the_true_class(monkeypatch):
    from winnow.tasks.models.rows import Rows
    from winnow.tasks.scorers.label_free import cross_fitted_probe

    x, truth, given, flipped = _three_blobs(600, seed=5)
    scores = cross_fitted_probe(x, given, 3, seed=1)
    assert scores.shape == (600, 3) and np.isfinite(scores).all()
    assert (scores[flipped].argmax(1) == truth[flipped]).mean() > 0.95  # out of fold: not the given label
    # a row's own label never reaches the probe that scores it
    other = given.copy()
    other[7] = (other[7] + 1) % 3
    np.testing.assert_allclose(cross_fitted_probe(x, other, 3, seed=1)[7], scores[7], rtol=1e-10, atol=1e-12)
    # past the fit sample: the sample is cross-fitted, the rest streamed through the probe fitted on it
    monkeypatch.setattr(label_free, "PROBE_FIT_ROWS", 200)
    streamed = cross_fitted_probe(Rows(torch.as_tensor(x)), given, 3, seed=1, block=64)
    assert (streamed[flipped].argmax(1) == truth[flipped]).mean() > 0.95
    with pytest.raises(ValueError, match="folds must be at least 2"):
        cross_fitted_probe(x, given, 3, folds=1)


def test_probe_probabilities_fit_the_temperature_the_given_labels_support():
    from winnow.tasks.scorers.label_free import probe_probabilities

    rng = np.random.default_rng(8)
    labels = rng.integers(0, 4, 3000)
    scores = rng.normal(size=(3000, 4)) * 0.1
    scores[np.arange(3000), labels] += 0.15  # least-squares-sized margins
    p = probe_probabilities(scores, labels)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(p.argmax(1), scores.argmax(1))  # a temperature keeps each row's order
    # the fitted temperature beats a much colder and a much hotter one on the labels' likelihood
    def nll(beta):
        z = scores * beta
        z = z - z.max(1, keepdims=True)
        return -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(3000), labels].mean()
    fitted = -np.log(p[np.arange(3000), labels]).mean()
    assert fitted <= min(nll(1.0), nll(200.0)) and fitted == pytest.approx(min(nll(b) for b in np.geomspace(1, 200, 400)), abs=1e-3)
    with pytest.raises(ValueError, match="labels must lie in"):
        probe_probabilities(scores, labels + 4)


def test_rows_wider_than_the_probe_takes_are_projected_not_solved_whole():
    from winnow.tasks.scorers.label_free import MAX_WIDTH, fit_encoder

    x = np.random.default_rng(6).normal(size=(20, 3, 40, 5)).astype(np.float32)  # 600 wide: kept
    assert fit_encoder(x)(x).shape == (20, 600)
    wide = np.random.default_rng(6).normal(size=(20, MAX_WIDTH + 10)).astype(np.float32)
    encode = fit_encoder(wide, seed=1)
    assert encode(wide).shape == (20, MAX_WIDTH)
    np.testing.assert_array_equal(encode(wide[:3]), fit_encoder(wide, seed=1)(wide[:3]))


def test_large_images_are_encoded_at_32_pixels_a_side():
    from winnow.tasks.scorers.label_free import MAX_SIDE, fit_encoder

    big = np.random.default_rng(7).random((30, 3, 96, 64), dtype=np.float32)
    encode = fit_encoder(big, seed=2)
    small = torch.nn.functional.adaptive_avg_pool2d(torch.as_tensor(big), (MAX_SIDE, 21)).numpy()
    np.testing.assert_allclose(encode(big[:4]), fit_encoder(small, seed=2)(small[:4]), rtol=1e-5, atol=1e-4)
    # a strip that would be under 8 pixels at that scale is flattened instead
    assert fit_encoder(np.zeros((3, 1, 100, 15), np.float32))(np.zeros((2, 1, 100, 15), np.float32)).shape == (2, 1500)


def test_label_free_views_validate_inputs():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="rows but labels"):
        label_free_views(x, np.zeros(4, int), 2)
    with pytest.raises(ValueError, match="two classes"):
        label_free_views(x, np.zeros(5, int), 2)
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        label_free_views(x, np.array([0, 1, 2, 0, 1]), 2)
    with pytest.raises(ValueError, match="finite"):
        label_free_views(np.full((5, 2), np.inf), np.array([0, 1, 0, 1, 0]), 2)


def test_knn_aum_lf_is_knn_aum_rank_averaged_with_the_probe_and_is_the_default():
    from winnow.tasks.scorers import get_scorer
    from winnow.tasks.scorers.base import RECOMMENDED, default_scorers
    from winnow.tasks.scorers.ensemble import rank_average

    assert RECOMMENDED == "knn-aum-lf" and default_scorers("images", "none").startswith("knn-aum-lf,")
    ctx, y_noisy, y_true = noisy_digits_context(2, epochs=6)
    scores = get_scorer("knn-aum-lf")(ctx)
    free = label_free_views(ctx.x.numpy(), y_noisy, 10, seed=ctx.seed)
    np.testing.assert_allclose(scores, rank_average([get_scorer("knn-aum")(ctx), free["probe"]]))
    assert roc_auc_score(y_noisy != y_true, scores) > 0.95
