"""Turn-over dropout: mask hashing properties, routing through sub-networks, detection on digits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import noisy_digits_context
from sklearn.metrics import roc_auc_score

from winnow.tasks.models.nets import build_model
from winnow.tasks.scorers import get_scorer
from winnow.tasks.scorers.turnover import TurnOverRouter, mask_sites, turnover_losses, turnover_mask, turnover_masks

IDS = np.array([f"digits-{i:05d}" for i in range(2000)], dtype=object)


def test_masks_are_deterministic_and_distinct():
    a = turnover_masks(IDS, 128, layer=3)
    b = turnover_masks(IDS, 128, layer=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[17], turnover_mask(IDS[17], 128, 3))
    assert len({row.tobytes() for row in a}) == len(IDS)
    # a different layer salt gives unrelated masks (agreement ≈ 0.5, not 1)
    agree = (turnover_masks(IDS, 128, layer=4) == a).mean()
    assert abs(agree - 0.5) < 0.01, agree


def test_keep_rate_is_one_half():
    m = turnover_masks(IDS, 128, layer=1)
    # 256,000 fair bits: std of the mean is 0.001, so 0.005 is a 5-sigma bound
    assert abs(m.mean() - 0.5) < 0.005, m.mean()
    # every unit is kept by about half the samples (std 0.011 per unit over 2,000 ids)
    assert np.all(np.abs(m.mean(0) - 0.5) < 0.06)
    # and every sample keeps about half the units (Binomial(128, 0.5): 5 sigma = 28)
    assert np.all(np.abs(m.sum(1) - 64) < 29)


def test_large_and_odd_ids_do_not_degenerate():
    ids = [str(10 ** k) for k in range(1, 40)] + [f"{2 ** 63 - 1}", "", "é-ünïcode", "x" * 10_000]
    m = turnover_masks(np.array(ids, dtype=object), 64, layer=0)
    assert np.all(m.any(1)) and np.all(~m.all(1))
    assert abs(m.mean() - 0.5) < 0.1
    wide = turnover_mask("digits-00001", 1500, 2)  # several 512-bit blocks
    assert wide.shape == (1500,) and abs(wide.mean() - 0.5) < 0.06
    assert np.abs(np.corrcoef(wide[:512].astype(float), wide[512:1024].astype(float))[0, 1]) < 0.2


def test_mask_validation():
    with pytest.raises(ValueError, match="width"):
        turnover_mask("a", 1)
    with pytest.raises(ValueError, match="str"):
        turnover_mask(5, 8)
    with pytest.raises(ValueError, match="layer"):
        turnover_mask("a", 8, -1)
    with pytest.raises(ValueError, match="unique"):
        turnover_masks(np.array(["a", "a"], dtype=object), 8)
    with pytest.raises(ValueError, match="layers"):
        mask_sites(build_model("mlp", (1, 8, 8), 10), "some")
    with pytest.raises(ValueError, match="body -> head"):
        mask_sites(torch.nn.Linear(3, 3))


def test_mask_sites_for_the_audited_architectures():
    mlp = build_model("mlp", (1, 8, 8), 10)
    assert mask_sites(mlp, "all") == [(2, 256), (4, 128)]
    assert mask_sites(mlp, "features") == [(4, 128)]
    cnn = build_model("cnn", (1, 8, 8), 10)
    assert mask_sites(cnn, "all") == [(1, 32), (4, 64), (8, 128)]
    assert mask_sites(cnn, "features") == [(8, 128)]


def test_mask_and_complement_partition_the_features():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10).eval()
    router = TurnOverRouter(model, IDS[:50], "features")
    x = torch.rand(50, 1, 8, 8)
    idx = torch.arange(50)
    with torch.no_grad():
        own, comp, full = router(model, x, idx), router(model, x, idx, complement=True), model(x)
    # head(2 m∘f) + head(2 (1−m)∘f) = 2 head(f): the two masks cover every unit exactly once
    torch.testing.assert_close(own + comp, 2 * full, rtol=1e-5, atol=1e-5)
    assert (own - comp).abs().max() > 1e-2
    masks = router.masks[0]
    assert torch.all((masks == 0) | (masks == 1)) and torch.all(masks.sum(1) > 0) and torch.all(masks.sum(1) < 128)


def test_cnn_all_layers_routes_per_channel():
    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10).eval()
    router = TurnOverRouter(model, IDS[:8], "all")
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        own, comp = router(model, x, torch.arange(8)), router(model, x, torch.arange(8), complement=True)
    assert own.shape == comp.shape == (8, 10)
    assert not torch.allclose(own, comp)
    # a sample's output depends on its own mask only: routing it alone gives the same logits
    with torch.no_grad():
        alone = router(model, x[3:4], torch.tensor([3]))
    torch.testing.assert_close(alone, own[3:4], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def noisy_digits_ctx():
    # the turn-over scorer trains its own model; the audited checkpoints are not needed here
    ctx, y_noisy, y = noisy_digits_context(data_seed=2, epochs=10, train=False)
    return ctx, y_noisy != y


@pytest.mark.slow
def test_self_influence_detects_flips(noisy_digits_ctx):
    ctx, flipped = noisy_digits_ctx
    scores = get_scorer("turnover")(ctx)
    own, comp = turnover_losses(ctx, "features", 30)  # cached: the same training as the scorer's
    np.testing.assert_allclose(scores, comp - own)
    # the sub-networks disagree: the complement has not learned the sample's own label as well
    assert comp.mean() > own.mean()
    # sign: flips have the larger self-influence (memorised by their own sub-network only)
    assert scores[flipped].mean() > scores[~flipped].mean()
    auc = roc_auc_score(flipped, scores)
    assert auc > 0.9, auc  # measured ≈ 0.97-0.99 over seeds; random is 0.5
    assert roc_auc_score(flipped, get_scorer("turnover", variant="heldout")(ctx)) > 0.9


def test_scorer_option_validation(noisy_digits_ctx):
    ctx, _ = noisy_digits_ctx
    for bad in ({"layers": "head"}, {"variant": "negative"}, {"epochs": "many"}):
        with pytest.raises(ValueError):
            get_scorer("turnover", **bad)(ctx)
