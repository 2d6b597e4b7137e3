"""Latent counterfactuals on a generator/classifier where the answer is known; VAE determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from winnow.tasks.data.sources import load_digits
from winnow.tasks.explainers.counterfactual import (
    class_directions, contrastive_scores, latent_counterfactual)
from winnow.tasks.explainers.vae import VAE, encode_mean, train_vae


class LinearGenerator(nn.Module):
    """Images of shape (1, 1, 2): decode(z) = z (the latent *is* the image), encode = identity."""

    latent_dim = 2

    def encode(self, x):
        z = x.flatten(1)
        return z, torch.zeros_like(z)

    def decode(self, z):
        return z.reshape(len(z), 1, 1, 2)


class Regions(nn.Module):
    """Logits A v + c on the 2 pixels: class 0 if v1 > 0, class 1 if v1 < 0, class 2 if v2 is
    large; class 3 has a constant logit of -100 and can never be reached."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 4)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
            self.lin.bias.copy_(torch.tensor([0.0, 0.0, -3.0, -100.0]))

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_search_reaches_reachable_targets_near_the_boundary():
    gen, clf = LinearGenerator(), Regions()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-2.0, 0.5]]).view(3, 1, 1, 2)
    target = torch.tensor([1, 2, 0])
    cf = latent_counterfactual(clf, gen, x, target, beta=0.05, lr=0.05, max_iter=500)
    assert cf.success.all() and (cf.predicted == target.numpy()).all()
    # The nearest point of class 1 from (1, 0) is just past v1 = 0 (distance 1); of class 2 from
    # (1, 0) is the corner (0, 3) of {v2 - 3 > |v1|} (distance sqrt 10); of class 0 from (-2, .5)
    # is past v1 = 0 (distance 2). Descent paths are not straight: allow 1.5 x the optimum.
    optimum = np.array([1.0, np.sqrt(10.0), 2.0])
    assert (cf.latent_distance >= optimum - 1e-6).all()
    assert (cf.latent_distance <= 1.5 * optimum).all(), cf.latent_distance
    # Decoder is the identity, so pixel distance equals latent distance.
    assert np.allclose(cf.pixel_distance, cf.latent_distance, atol=1e-6)
    assert np.allclose(cf.input_distance, cf.latent_distance, atol=1e-6)
    assert torch.allclose(cf.x_cf, gen.decode(cf.z + cf.delta))
    assert (cf.iterations > 0).all() and cf.validity == 1.0


def test_unreachable_target_fails_and_trivial_target_is_free():
    gen, clf = LinearGenerator(), Regions()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    cf = latent_counterfactual(clf, gen, x, torch.tensor([3, 0]), max_iter=40)
    assert cf.success.tolist() == [False, True]
    assert cf.iterations.tolist() == [40, 0]
    assert cf.latent_distance[1] == 0.0 and cf.latent_distance[0] > 0
    assert cf.validity == 0.5


def test_min_prob_demands_more_than_argmax():
    gen, clf = LinearGenerator(), Regions()
    x = torch.tensor([[1.0, 0.0]]).view(1, 1, 1, 2)
    loose = latent_counterfactual(clf, gen, x, 1, max_iter=500)
    sure = latent_counterfactual(clf, gen, x, 1, max_iter=500, min_prob=0.9)
    assert loose.success.all() and sure.success.all()
    assert sure.target_prob[0] >= 0.9 and sure.latent_distance[0] > loose.latent_distance[0]


def test_contrastive_scores_known_values():
    gen, clf = LinearGenerator(), Regions()
    # Class 0 sits at v1 = +1, class 1 at v1 = -1: the class-0 direction is (2, 0).
    x = torch.tensor([[1.0, 0.0]] * 5 + [[-1.0, 0.0]] * 5).view(10, 1, 1, 2)
    y = torch.tensor([0] * 5 + [1] * 5)
    d = class_directions(gen, x, y, 2)
    assert torch.allclose(d, torch.tensor([[2.0, 0.0], [-2.0, 0.0]]))
    full = contrastive_scores(clf, gen, x, y, 2, strength=1.0)
    assert full.sufficiency.tolist() == [1.0, 1.0] and full.necessity.tolist() == [1.0, 1.0]
    assert full.n_sufficiency.tolist() == [5, 5] and full.n_necessity.tolist() == [5, 5]
    weak = contrastive_scores(clf, gen, x, y, 2, strength=0.25)  # moves v1 by 0.5: never crosses 0
    assert weak.sufficiency.tolist() == [0.0, 0.0] and weak.necessity.tolist() == [0.0, 0.0]


def test_vae_is_deterministic_and_learns():
    torch.set_num_threads(1)
    ds = load_digits()
    x = torch.tensor(ds.x[:300])
    a = train_vae(x, latent_dim=4, hidden=64, epochs=4, seed=1)
    b = train_vae(x, latent_dim=4, hidden=64, epochs=4, seed=1)
    c = train_vae(x, latent_dim=4, hidden=64, epochs=4, seed=2)
    sa, sb, sc = a.vae.state_dict(), b.vae.state_dict(), c.vae.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert a.loss[-1] < a.loss[0]
    assert a.vae(x[:5]).shape == (5, 1, 8, 8)
    assert encode_mean(a.vae, x[:7]).shape == (7, 4)


def test_search_with_trained_vae_reaches_target():
    """End to end on real data: a classifier on decoded images and a trained VAE."""
    torch.set_num_threads(1)
    ds = load_digits()
    x, y = torch.tensor(ds.x[:600]), torch.tensor(ds.label[:600])
    vae = train_vae(x, latent_dim=6, hidden=128, epochs=30, batch_size=32, lr=3e-3, seed=0).vae
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()
    with torch.no_grad():  # precondition: decoded images are classifiable, so targets are reachable
        assert (clf(vae(x)).argmax(1) == y).float().mean() > 0.6
    target = (y[:40] + 1) % 10
    cf = latent_counterfactual(clf, vae, x[:40], target, max_iter=300)
    assert cf.validity >= 0.9
    assert np.median(cf.latent_distance[cf.success]) < 5.0


def test_validation_errors():
    gen, clf = LinearGenerator(), Regions()
    x = torch.zeros(2, 1, 1, 2)
    with pytest.raises(ValueError, match="encode"):
        latent_counterfactual(clf, object(), x, 0)
    with pytest.raises(ValueError, match="beta"):
        latent_counterfactual(clf, gen, x, 0, beta=-1.0)
    with pytest.raises(ValueError, match="min_prob"):
        latent_counterfactual(clf, gen, x, 0, min_prob=1.0)
    with pytest.raises(ValueError, match="out of range"):
        latent_counterfactual(clf, gen, x, 7)
    with pytest.raises(ValueError, match="empty"):
        latent_counterfactual(clf, gen, x[:0], 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_vae(torch.full((4, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="shape"):
        VAE((1, 8, 8), latent_dim=2).encode(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="strength"):
        contrastive_scores(clf, gen, x, torch.tensor([0, 1]), 2, strength=0.0)
    with pytest.raises(ValueError, match="class counts"):
        class_directions(gen, x, torch.tensor([0, 0]), 2)
