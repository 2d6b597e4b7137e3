"""Explicit baselines for path attributions (Integrated Gradients and friends).

Cui & Fan (2026) show that gradient x input, Integrated Gradients and Taylor expansions are one
family and that every member explains ``f(x) - f(baseline)``: the baseline is part of the
question, not a numerical detail. This module therefore makes the baseline an explicit, named
argument and offers the usual candidates plus a contrastive default.

The default: the mean image of the contrast class
-------------------------------------------------
winnow explains *flagged* samples: sample ``x`` carries given label ``y`` and the scorers suggest
label ``s``. The question a reviewer asks is "why does the model see ``s`` here and not ``y``"
(or the converse). We answer it with a contrastive baseline:

* to explain target class ``t``, the baseline is the per-pixel mean training image of the
  *contrast* class (the other label of the pair: ``s`` when ``t == y``, ``y`` when ``t == s``).

Why this and not the alternatives:

* black (zeros) -- on digits and Fashion-MNIST black is the background, so every background pixel
  gets exactly zero attribution (``x - b == 0``): IG with a black baseline cannot say "a stroke is
  *missing* here", which is precisely the evidence that separates, e.g., a 7 from a 1 or a shirt
  from a T-shirt. It answers "why class t rather than nothing".
* training mean -- answers "why class t rather than the average of all classes"; it mixes the
  given and suggested classes with eight irrelevant ones, so the contrast is diluted.
* blurred input -- keeps the coarse layout and removes edges/texture, so it answers "which fine
  detail supports t". Useful for texture classes; on 8x8 digits blurring removes most of the
  signal and the answer degenerates towards the black baseline's.
* uniform noise -- off the data manifold; the answer depends on the noise draw (we seed it) and
  is mostly "why class t rather than static". Kept as a reference point.
* contrast-class mean -- the baseline *is* "a typical image of the other label". Completeness then
  reads ``sum(attr) = f_t(x) - f_t(mean image of the other class)``: the attributions split the
  logit margin between this sample and a typical sample of the competing label over the pixels
  where they differ, including pixels where the sample lacks ink the other class has. That is the
  "why this label and not that one" question, and it stays meaningful at an intermediate layer
  (the baseline activation is the activation of the class-mean image). Its costs: it needs the
  training data (available in the pipeline) and a class mean is itself a blurry, off-manifold
  image; for classes with several modes (e.g. open and closed sandals) it is an average of modes.

When no contrast class is known (e.g. EDDA's alignment check, which asks about a single label),
callers should pass the baseline that matches their own question (EDDA uses its occlusion fill).

All functions are pure: tensors in, tensors out, same device/dtype as the input.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

BASELINE_KINDS = ("black", "mean", "blur", "uniform", "class_mean", "default")


def check_batch(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (n, *sample_shape), got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def black_baseline(x: torch.Tensor) -> torch.Tensor:
    """All-zero baseline.

    Parameters
    ----------
    x : torch.Tensor, shape (n, *sample_shape)

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape)
    """
    return torch.zeros_like(check_batch(x))


def mean_baseline(x: torch.Tensor, train_x: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean training image, repeated for every sample.

    Parameters
    ----------
    x : torch.Tensor, shape (n, *sample_shape)
    train_x : torch.Tensor, shape (m, *sample_shape), m >= 1

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape)
    """
    check_batch(x)
    check_batch(train_x, "train_x")
    if train_x.shape[1:] != x.shape[1:]:
        raise ValueError(f"train_x samples have shape {tuple(train_x.shape[1:])}, x samples {tuple(x.shape[1:])}")
    if len(train_x) == 0:
        raise ValueError("train_x is empty; the mean baseline needs training images")
    mean = train_x.to(x.dtype).mean(0, keepdim=True).to(x.device)
    return mean.expand_as(x).clone()


def class_means(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class mean training images.

    Parameters
    ----------
    train_x : torch.Tensor, shape (m, *sample_shape)
    train_y : torch.Tensor, shape (m,), int64 in [0, num_classes)
    num_classes : int

    Returns
    -------
    torch.Tensor, shape (num_classes, *sample_shape)

    Raises
    ------
    ValueError
        If a class has no training images (its mean is undefined).
    """
    check_batch(train_x, "train_x")
    train_y = torch.as_tensor(train_y)
    if train_y.ndim != 1 or len(train_y) != len(train_x):
        raise ValueError(f"train_y must have shape ({len(train_x)},), got {tuple(train_y.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if len(train_y) and (train_y.min() < 0 or train_y.max() >= num_classes):
        raise ValueError(f"train_y values must lie in [0, {num_classes}), got [{int(train_y.min())}, {int(train_y.max())}]")
    train_y = train_y.to(train_x.device).long()
    counts = torch.bincount(train_y, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no training images; their mean baseline is undefined")
    flat = train_x.reshape(len(train_x), -1)
    sums = torch.zeros(num_classes, flat.shape[1], dtype=flat.dtype, device=flat.device)
    sums.index_add_(0, train_y, flat)
    return (sums / counts[:, None].to(flat.dtype)).reshape(num_classes, *train_x.shape[1:])


def class_mean_baseline(x: torch.Tensor, contrast: torch.Tensor | int, train_x: torch.Tensor,
                        train_y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean training image of each sample's contrast class (winnow's default baseline).

    Parameters
    ----------
    x : torch.Tensor, shape (n, *sample_shape)
    contrast : int or torch.Tensor, shape (n,)
        The class to contrast with, per sample (for a flagged sample explained for its given label,
        the suggested label; and vice versa).
    train_x : torch.Tensor, shape (m, *sample_shape)
    train_y : torch.Tensor, shape (m,)
    num_classes : int

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape)
    """
    check_batch(x)
    if train_x.shape[1:] != x.shape[1:]:
        raise ValueError(f"train_x samples have shape {tuple(train_x.shape[1:])}, x samples {tuple(x.shape[1:])}")
    contrast = as_class_vector(contrast, len(x), num_classes, "contrast")
    means = class_means(train_x, train_y, num_classes).to(device=x.device, dtype=x.dtype)
    return means[contrast.to(x.device)].clone()


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised 1-D Gaussian kernel, radius ``ceil(3 sigma)``; shape (2r+1,)."""
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur_baseline(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian-blurred copy of each sample (separable, per channel, reflect padding).

    Parameters
    ----------
    x : torch.Tensor, shape (n, C, H, W) or (n, C, L)
    sigma : float
        Standard deviation in pixels. For 8x8 digits sigma ~1 already removes most strokes;
        for 28x28 images sigma 2-3 keeps the silhouette and removes texture.

    Returns
    -------
    torch.Tensor, same shape as ``x``
    """
    check_batch(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"blur needs (n, C, H, W) or (n, C, L) inputs, got {tuple(x.shape)}")
    k = gaussian_kernel1d(sigma, x.dtype).to(x.device)
    r = len(k) // 2
    c = x.shape[1]
    out = x
    # Reflect padding (no dark border that the model could read as an edge) needs pad < size,
    # so tiny inputs fall back to replicate padding.
    dims = (-1,) if x.ndim == 3 else (-1, -2)
    for dim in dims:
        size = x.shape[dim]
        mode = "reflect" if r < size else "replicate"
        if x.ndim == 3:
            w = k.view(1, 1, -1).repeat(c, 1, 1)
            out = F.conv1d(F.pad(out, (r, r), mode=mode), w, groups=c)
        elif dim == -1:
            w = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
            out = F.conv2d(F.pad(out, (r, r, 0, 0), mode=mode), w, groups=c)
        else:
            w = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
            out = F.conv2d(F.pad(out, (0, 0, r, r), mode=mode), w, groups=c)
    return out


def uniform_baseline(x: torch.Tensor, low: float = 0.0, high: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Uniform noise in ``[low, high)``, drawn from a private generator so it is reproducible.

    Parameters
    ----------
    x : torch.Tensor, shape (n, *sample_shape)
    low, high : float
        Noise range; default the [0, 1] pixel range of ingested images.
    seed : int

    Returns
    -------
    torch.Tensor, same shape as ``x``
    """
    check_batch(x)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"need finite low < high, got low={low}, high={high}")
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(x.shape, generator=gen, dtype=torch.float64)
    return (low + (high - low) * noise).to(device=x.device, dtype=x.dtype)


def as_class_vector(c: torch.Tensor | int, n: int, num_classes: int | None, name: str) -> torch.Tensor:
    if isinstance(c, bool):
        raise ValueError(f"{name} must be an int or an int tensor, got bool")
    if isinstance(c, int):
        c = torch.full((n,), c, dtype=torch.long)
    c = torch.as_tensor(c)
    if c.is_floating_point():
        raise ValueError(f"{name} must hold integer class indices, got dtype {c.dtype}")
    if c.ndim == 0:
        c = c.expand(n)
    if c.shape != (n,):
        raise ValueError(f"{name} must be an int or shape ({n},), got shape {tuple(c.shape)}")
    if n and c.min() < 0:
        raise ValueError(f"{name} has negative class indices")
    if num_classes is not None and n and c.max() >= num_classes:
        raise ValueError(f"{name} has class index {int(c.max())} >= num_classes {num_classes}")
    return c.long()


def make_baseline(kind: str, x: torch.Tensor, *, train_x: torch.Tensor | None = None,
                  train_y: torch.Tensor | None = None, num_classes: int | None = None,
                  contrast: torch.Tensor | int | None = None, sigma: float = 1.0,
                  low: float = 0.0, high: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Build a baseline by name.

    Parameters
    ----------
    kind : {"black", "mean", "blur", "uniform", "class_mean", "default"}
        ``"default"`` is ``"class_mean"`` (see the module docstring for why).
    x : torch.Tensor, shape (n, *sample_shape)
    train_x, train_y, num_classes : training images, labels and class count
        Needed by ``"mean"`` (``train_x`` only) and ``"class_mean"``/``"default"``.
    contrast : int or torch.Tensor, shape (n,)
        Contrast class per sample; needed by ``"class_mean"``/``"default"``.
    sigma : float
        Blur width for ``"blur"``.
    low, high, seed :
        Noise range and seed for ``"uniform"``.

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape)
    """
    if kind not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {BASELINE_KINDS}")
    if kind == "black":
        return black_baseline(x)
    if kind == "mean":
        if train_x is None:
            raise ValueError("baseline 'mean' needs train_x")
        return mean_baseline(x, train_x)
    if kind == "blur":
        return blur_baseline(x, sigma)
    if kind == "uniform":
        return uniform_baseline(x, low, high, seed)
    if train_x is None or train_y is None or num_classes is None or contrast is None:
        raise ValueError(f"baseline {kind!r} needs train_x, train_y, num_classes and contrast")
    return class_mean_baseline(x, contrast, train_x, train_y, num_classes)
