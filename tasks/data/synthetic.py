"""A synthetic multivariate time-series set modelled on Mercier et al. 2020's anomaly data.

Each sample is a series of ``length`` steps × ``channels`` channels: smooth random sinusoids plus
Gaussian noise. Class 1 ("anomaly") has one point anomaly (a single-step spike) injected into one
channel at one step; class 0 has none. Pure: seeded numpy in, a :class:`Dataset` out.

The spike size is what makes the task hard or easy. The paper's clean test accuracy was ≈ 0.98;
a generator that is too easy (≈ 0.99+) lets every sensible ranking find nearly every flip and
hides the differences between scorers (see /work/shared/PAPERS.md). Spike heights are drawn
from a range whose low end sits inside the noise, so a small share of anomalies is genuinely
ambiguous; ``hard=True`` lowers the range further.
"""
from __future__ import annotations

import numpy as np

from .dataset import Dataset, deterministic_split

CLASS_NAMES = ["normal", "anomaly"]
# Spike height in units of the noise standard deviation, drawn uniformly from this range.
# Tuned so a clean cnn1d (the 'anomaly' recipe in stages.default_config) lands near 0.98 test
# accuracy on the default 6,000 samples; see tests/test_synthetic.py and the README benchmark.
SPIKE_RANGE = (6.0, 14.0)
HARD_SPIKE_RANGE = (4.0, 10.0)
# Declared value range of the series (validation checks every value lies within it).
VALUE_BOUND = 8.0


def anomaly_series(n: int, seed: int = 0, length: int = 50, channels: int = 3,
                   spike_range: tuple[float, float] = SPIKE_RANGE, noise_std: float = 0.25,
                   anomaly_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate raw series, labels and anomaly positions.

    Parameters
    ----------
    n : int
        Number of series (> 0).
    seed : int
        Seed of the numpy generator; the same arguments give the same arrays.
    length, channels : int
        Series shape (steps, channels); the paper's is 50 × 3.
    spike_range : (float, float)
        Spike height range in units of ``noise_std`` (0 < low <= high).
    noise_std : float
        Standard deviation of the additive Gaussian noise (> 0).
    anomaly_fraction : float
        Share of class-1 series, in (0, 1).

    Returns
    -------
    x : np.ndarray, shape (n, channels, length), float32, in [-VALUE_BOUND, VALUE_BOUND]
    y : np.ndarray, shape (n,), int64 — 1 where a point anomaly was injected
    where : np.ndarray, shape (n, 2), int64 — (channel, step) of the anomaly, -1 for class 0
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if length < 4 or channels < 1:
        raise ValueError(f"need length >= 4 and channels >= 1, got length={length}, channels={channels}")
    lo, hi = spike_range
    if not 0 < lo <= hi:
        raise ValueError(f"spike_range must satisfy 0 < low <= high, got {spike_range}")
    if noise_std <= 0:
        raise ValueError(f"noise_std must be positive, got {noise_std}")
    if not 0 < anomaly_fraction < 1:
        raise ValueError(f"anomaly_fraction must lie in (0, 1), got {anomaly_fraction}")
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)[None, None, :]
    # Two sinusoids per channel with random period (8..50 steps), phase and amplitude: smooth
    # structure the network must learn to ignore, so a spike is judged against its context.
    x = np.zeros((n, channels, length))
    for _ in range(2):
        period = rng.uniform(8, 50, size=(n, channels, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n, channels, 1))
        amp = rng.uniform(0.2, 1.0, size=(n, channels, 1))
        x += amp * np.sin(2 * np.pi * t / period + phase)
    x += rng.normal(0, noise_std, size=x.shape)
    y = (rng.random(n) < anomaly_fraction).astype(np.int64)
    where = np.full((n, 2), -1, dtype=np.int64)
    idx = np.flatnonzero(y)
    ch = rng.integers(0, channels, size=len(idx))
    step = rng.integers(2, length - 2, size=len(idx))  # away from the edges, where padding blurs it
    height = rng.uniform(lo, hi, size=len(idx)) * noise_std * rng.choice([-1.0, 1.0], size=len(idx))
    x[idx, ch, step] += height
    where[idx, 0], where[idx, 1] = ch, step
    # Kept on its natural, zero-centred scale (the net learns far faster than on a squeezed
    # [0, 1] copy); the clip only guards the declared value range and never binds in practice
    # (|signal| <= 2, noise and spike are a few noise_std). Per-sample min-max scaling is avoided:
    # it would make every spike touch an end of the range and give the label away.
    x = np.clip(x, -VALUE_BOUND, VALUE_BOUND)
    return x.astype(np.float32), y, where


def make_anomaly_series(n: int = 6000, seed: int = 0, hard: bool = False, length: int = 50, channels: int = 3,
                        test_fraction: float = 0.2) -> Dataset:
    """The synthetic anomaly data set as a :class:`Dataset` (``--dataset anomaly``).

    Parameters
    ----------
    n : int
        Total samples (train + test); the paper used 35,000 train, the default keeps CPU runs short.
    seed : int
        Generator seed (the data set is fixed by it; label noise has its own seed).
    hard : bool
        Smaller spikes (:data:`HARD_SPIKE_RANGE`): lower clean accuracy, a harder detection task.
    test_fraction : float
        Share held out as the (never noised) test split, by a hash of the sample id.

    Returns
    -------
    Dataset
        ``x`` of shape (n, channels, length) in ``value_range`` = (-VALUE_BOUND, VALUE_BOUND);
        labels 0 = normal, 1 = anomaly.
    """
    x, y, where = anomaly_series(n, seed, length, channels, HARD_SPIKE_RANGE if hard else SPIKE_RANGE)
    name = "anomaly-hard" if hard else "anomaly"
    ids = np.array([f"{name}-s{seed}-{i:06d}" for i in range(n)], dtype=object)
    return Dataset(name, ids, x, y, deterministic_split(ids, test_fraction), list(CLASS_NAMES),
                   value_range=(-VALUE_BOUND, VALUE_BOUND), meta={"seed": seed, "hard": hard})
