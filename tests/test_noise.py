import numpy as np
import pytest

from winnow.tasks.data import noise


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symmetric_flips_exactly_the_rate_and_never_to_the_same_class(rate, seed):
    y = np.random.default_rng(99).integers(0, 10, size=1000)
    noisy = noise.symmetric(y, 10, rate, seed)
    flipped = noisy != y
    assert flipped.sum() == round(rate * len(y))
    assert noisy.min() >= 0 and noisy.max() < 10
    # the targets of flips cover the other classes roughly uniformly
    if rate >= 0.2:
        offsets = (noisy[flipped] - y[flipped]) % 10
        assert set(offsets) == set(range(1, 10))


def test_symmetric_is_deterministic_by_seed():
    y = np.arange(500) % 7
    assert np.array_equal(noise.symmetric(y, 7, 0.3, 5), noise.symmetric(y, 7, 0.3, 5))
    assert not np.array_equal(noise.symmetric(y, 7, 0.3, 5), noise.symmetric(y, 7, 0.3, 6))


def test_class_pair_sends_each_flip_to_its_partner():
    y = np.arange(1000) % 4
    partners = np.array([1, 0, 3, 2])
    noisy = noise.class_pair(y, 4, 0.25, 0, partners)
    flipped = noisy != y
    assert flipped.sum() == 250
    assert np.array_equal(noisy[flipped], partners[y[flipped]])


def test_confusable_partners_pick_the_nearest_class_mean():
    x = np.array([[0.0], [0.1], [5.0], [5.2], [0.3], [0.35]])
    y = np.array([0, 0, 1, 1, 2, 2])
    assert noise.confusable_partners(x, y, 3).tolist() == [2, 2, 0]


def test_instance_dependent_prefers_confusable_samples():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=3000)
    probs = np.full((3000, 3), 0.05)
    probs[np.arange(3000), y] = 0.9
    hard = np.arange(3000) < 300  # these look like class (y+1)%3
    probs[hard] = 0.05
    probs[hard, (y[hard] + 1) % 3] = 0.9
    noisy = noise.instance_dependent(y, 3, 0.1, 0, probs)
    flipped = noisy != y
    assert flipped.sum() == 300
    assert flipped[hard].mean() > 5 * flipped[~hard].mean()
    assert np.array_equal(noisy[flipped & hard], (y[flipped & hard] + 1) % 3)


@pytest.mark.parametrize("bad", [dict(rate=1.0), dict(rate=-0.1), dict(num_classes=1)])
def test_noise_rejects_bad_arguments(bad):
    args = dict(labels=np.array([0, 1, 2]), num_classes=3, rate=0.1, seed=0) | bad
    with pytest.raises(ValueError):
        noise.symmetric(**args)


def test_labels_outside_the_class_set_are_rejected():
    with pytest.raises(ValueError, match="labels must lie"):
        noise.symmetric(np.array([0, 5]), 3, 0.1, 0)
