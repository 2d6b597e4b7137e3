"""EDDA: explanation-driven data augmentation (arXiv 2105.14162), and its alignment check.

Idea: if an explanation is faithful, removing what it calls salient should hurt the model's
confidence in the label, and removing what it calls irrelevant should not. EDDA turns this into
training data. For every training sample ``(x, y)`` and the current model's saliency map:

* ``x_top``: the top ``k_salient`` fraction of features by saliency occluded. Its target is a
  *label-smoothed* one-hot, ``q = (1 - eps) onehot(y) + eps / C`` (``eps = smoothing``, 0.5 by
  default). The paper's point is that such a sample should get *lower confidence* in ``y``, not a
  different label; a fully uniform target (``eps = 1``) would claim the occluded image carries no
  evidence at all, which is false for redundant images (a sneaker with its toe occluded is still a
  sneaker), and would push the model to output uniform scores on any partly occluded input.
  ``eps = 0.5`` asks for "still ``y``, less sure" (target probability ``0.5 + 0.5 / C``).
* ``x_low``: ``k_nonsalient`` of the least salient features (smallest ``|saliency|``) occluded,
  with the hard label ``y``: the prediction should not change.

Occluding means replacing a feature by a *fill* value. The default fill is the per-pixel training
mean image: replacing pixels by zeros on dark-background data would make least-salient occlusion a
no-op (background is already zero) and salient occlusion an out-of-distribution black hole; the
mean keeps occluded images closer to the data.

Saliency during training is **gradient x (input - fill)** of the label's logit: one backward pass,
and it is the first-order estimate of how much the logit drops when each feature is replaced by
the fill, i.e. exactly the occlusion that follows (one-point IG with the fill as baseline). For the
alignment *check* we use full Integrated Gradients with the same fill as baseline
(:func:`ig_saliency`), so the evaluation explainer is not the cheap training-time approximation.
(winnow's default class-mean baseline answers a contrastive question, "label y rather than s";
the alignment check asks about the label alone, so its baseline is the occlusion fill.)

The control ("non-explanation augmentation") is ``mode="random"``: the same two augmented copies
with the same targets, but occluded features drawn uniformly at random, so any gain of EDDA over it
is due to the explanation, not to occlusion or smoothing as such.

Training reuses :func:`winnow.tasks.models.train_model` through its ``forward`` hook: the hook
returns the clean logits (which ``train_model`` scores with cross-entropy) and injects the gradient
of the weighted augmentation loss into the same backward pass (see :class:`_AddLossGrad`), so
seeding, the optimiser, shuffling and checkpoints are exactly ``train_model``'s. ``train_loss``
in the result is the clean cross-entropy only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from winnow.tasks.models.training import TrainConfig, TrainResult, default_device, train_model

from .baselines import as_class_vector, check_batch
from .ig import eval_mode, gradient_x_input, integrated_gradients

OCCLUSION_KINDS = ("top", "least", "random")
EDDA_MODES = ("edda", "random", "none")


@dataclass(frozen=True)
class EDDAConfig:
    """EDDA settings.

    Attributes
    ----------
    k_salient : float in (0, 1)
        Fraction of features occluded in the "salient" copy.
    k_nonsalient : float in (0, 1)
        Fraction occluded in the "non-salient" copy.
    smoothing : float in [0, 1]
        Label smoothing ``eps`` of the salient copy's target.
    weight : float >= 0
        Weight of the augmentation loss (mean over both copies) relative to the clean loss.
    fill : "mean", "zero" or float
        Occlusion value: per-pixel training mean, zeros, or a constant.
    mode : {"edda", "random", "none"}
        ``"random"`` is the non-explanation control; ``"none"`` is plain ``train_model``.
    warmup_epochs : int >= 0
        Epochs of clean training before augmenting (an untrained model's saliency is noise).
    """

    k_salient: float = 0.1
    k_nonsalient: float = 0.3
    smoothing: float = 0.5
    weight: float = 1.0
    fill: str | float = "mean"
    mode: str = "edda"
    warmup_epochs: int = 1

    def __post_init__(self) -> None:
        for name in ("k_salient", "k_nonsalient"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise ValueError(f"EDDAConfig.{name} must be in (0, 1), got {v}")
        if not 0 <= self.smoothing <= 1:
            raise ValueError(f"EDDAConfig.smoothing must be in [0, 1], got {self.smoothing}")
        if not self.weight >= 0:
            raise ValueError(f"EDDAConfig.weight must be >= 0, got {self.weight}")
        if self.mode not in EDDA_MODES:
            raise ValueError(f"EDDAConfig.mode must be one of {EDDA_MODES}, got {self.mode!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"EDDAConfig.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if isinstance(self.fill, str) and self.fill not in ("mean", "zero"):
            raise ValueError(f"EDDAConfig.fill must be 'mean', 'zero' or a float, got {self.fill!r}")


def resolve_fill(fill: str | float | torch.Tensor, train_x: torch.Tensor) -> torch.Tensor:
    """The occlusion fill as a tensor of the sample shape.

    Parameters
    ----------
    fill : "mean", "zero", float, or torch.Tensor broadcastable to the sample shape
    train_x : torch.Tensor, shape (m, *sample_shape)

    Returns
    -------
    torch.Tensor, shape sample_shape
    """
    check_batch(train_x, "train_x")
    shape = train_x.shape[1:]
    if isinstance(fill, torch.Tensor):
        try:
            return torch.broadcast_to(fill.to(train_x.dtype), shape).clone()
        except RuntimeError:
            raise ValueError(f"fill of shape {tuple(fill.shape)} does not broadcast to {tuple(shape)}") from None
    if fill == "mean":
        if len(train_x) == 0:
            raise ValueError("fill 'mean' needs a non-empty train_x")
        return train_x.mean(0)
    if fill == "zero":
        return torch.zeros(shape, dtype=train_x.dtype, device=train_x.device)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool) and np.isfinite(fill):
        return torch.full(shape, float(fill), dtype=train_x.dtype, device=train_x.device)
    raise ValueError(f"fill must be 'mean', 'zero', a finite float or a tensor, got {fill!r}")


def occlusion_mask(saliency: torch.Tensor, k: float, which: str, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean mask of the features to occlude, per sample.

    Parameters
    ----------
    saliency : torch.Tensor, shape (n, *sample_shape)
        Signed saliency of each feature for the label (positive = supports it).
    k : float in (0, 1]
        Fraction of features to occlude; ``round(k * d)`` per sample, at least one.
    which : {"top", "least", "random"}
        ``"top"``: the largest *signed* saliency (removing them should lower the label's logit
        most); ``"least"``: the smallest ``|saliency|`` (removing them should change least);
        ``"random"``: uniformly at random.
    generator : torch.Generator, optional
        Breaks ties (many exactly-zero saliencies on blank background) and draws random masks;
        a fixed seed-0 generator when omitted.

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape), bool
    """
    check_batch(saliency, "saliency")
    if which not in OCCLUSION_KINDS:
        raise ValueError(f"which must be one of {OCCLUSION_KINDS}, got {which!r}")
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    n = len(saliency)
    flat = saliency.detach().reshape(n, -1)
    d = flat.shape[1]
    count = min(d, max(1, int(round(k * d))))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    noise = torch.rand(flat.shape, generator=gen, dtype=torch.float64).to(flat.device)
    if which == "random":
        order = torch.argsort(noise, dim=1)
    else:
        key = -flat if which == "top" else flat.abs()
        # Random pre-permutation + stable sort = ties broken at random, not by pixel position
        # (position ties would always occlude the top-left background first).
        perm = torch.argsort(noise, dim=1)
        sorted_pos = torch.sort(key.gather(1, perm).double(), dim=1, stable=True).indices
        order = perm.gather(1, sorted_pos)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask.reshape(saliency.shape)


def occlude(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
    """Replace masked features by the fill.

    Parameters
    ----------
    x : torch.Tensor, shape (n, *sample_shape)
    mask : torch.Tensor, bool, shape (n, *sample_shape)
    fill : float or torch.Tensor broadcastable to (n, *sample_shape)

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape)
    """
    check_batch(x)
    if mask.shape != x.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    fill_t = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    return torch.where(mask, fill_t.expand_as(x), x)


def smoothed_targets(y: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """``(1 - smoothing) onehot(y) + smoothing / num_classes``; shape (n, num_classes)."""
    if not 0 <= smoothing <= 1:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    y = as_class_vector(y, len(torch.as_tensor(y).reshape(-1)), num_classes, "y")
    return (1 - smoothing) * F.one_hot(y, num_classes).double() + smoothing / num_classes


def edda_augment(x: torch.Tensor, y: torch.Tensor, saliency: torch.Tensor, fill: torch.Tensor | float,
                 num_classes: int, *, k_salient: float = 0.1, k_nonsalient: float = 0.3,
                 smoothing: float = 0.5, random_masks: bool = False,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two EDDA copies of a batch and their soft targets.

    Parameters
    ----------
    x : torch.Tensor, shape (n, *sample_shape)
    y : torch.Tensor, shape (n,), int
    saliency : torch.Tensor, shape (n, *sample_shape)
    fill : float or torch.Tensor broadcastable to x
    num_classes : int
    k_salient, k_nonsalient, smoothing : see :class:`EDDAConfig`
    random_masks : bool
        The non-explanation control: same copies and targets, random occlusion.
    generator : torch.Generator, optional

    Returns
    -------
    x_aug : torch.Tensor, shape (2n, *sample_shape)
        Rows ``[:n]`` salient-occluded, rows ``[n:]`` non-salient-occluded.
    q : torch.Tensor, shape (2n, num_classes)
        Smoothed targets for the first half, one-hot for the second.
    """
    check_batch(x)
    if saliency.shape != x.shape:
        raise ValueError(f"saliency shape {tuple(saliency.shape)} differs from x shape {tuple(x.shape)}")
    y = as_class_vector(y, len(x), num_classes, "y").to(x.device)
    top = occlusion_mask(saliency, k_salient, "random" if random_masks else "top", generator=generator)
    low = occlusion_mask(saliency, k_nonsalient, "random" if random_masks else "least", generator=generator)
    x_aug = torch.cat([occlude(x, top, fill), occlude(x, low, fill)])
    q = torch.cat([smoothed_targets(y, num_classes, smoothing), smoothed_targets(y, num_classes, 0.0)])
    return x_aug, q.to(device=x.device, dtype=x.dtype)


class _AddLossGrad(torch.autograd.Function):
    """Identity on ``logits`` whose backward also sends gradient 1 into ``extra_loss``.

    ``train_model`` calls ``cross_entropy(forward(...), y).backward()``; passing the clean logits
    through this function makes that single backward pass compute
    ``grad(clean_ce + extra_loss)``, so the augmentation term is optimised without a second
    training loop.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, extra_loss: torch.Tensor) -> torch.Tensor:
        return logits.clone()

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        return grad_logits, grad_logits.new_ones(())


def _soft_cross_entropy(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return -(q * F.log_softmax(logits, dim=1)).sum(1).mean()


def train_with_edda(model_factory: Callable[[], nn.Module], x: torch.Tensor | np.ndarray,
                    y: torch.Tensor | np.ndarray, config: TrainConfig = TrainConfig(),
                    edda: EDDAConfig = EDDAConfig(), *, num_classes: int | None = None,
                    device: torch.device | None = None, on_epoch: Callable[[int, float], None] | None = None,
                    keep_checkpoints: bool = False) -> TrainResult:
    """Train with EDDA augmentation (or its random control) on top of ``train_model``.

    Each batch after ``edda.warmup_epochs`` gets gradient x (input - fill) saliency from the
    current model, two occluded copies (:func:`edda_augment`), and the loss
    ``CE(clean) + weight * softCE(augmented copies)``.

    Parameters
    ----------
    model_factory : callable
        Returns an untrained model (called after seeding).
    x : shape (n, *sample_shape), float32
    y : shape (n,), int64
    config : TrainConfig
    edda : EDDAConfig
    num_classes : int, optional
        Defaults to ``max(y) + 1``; pass it when some class may be absent.
    device, on_epoch, keep_checkpoints :
        As in ``train_model``.

    Returns
    -------
    TrainResult
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.long)
    if x.ndim < 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need non-empty x (n, ...) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not isinstance(edda, EDDAConfig):
        raise ValueError(f"edda must be an EDDAConfig, got {type(edda).__name__}")
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    y_checked = as_class_vector(y, len(y), num_classes, "y")
    if edda.mode == "none" or edda.weight == 0:
        return train_model(model_factory, x, y_checked, config, device=device, on_epoch=on_epoch,
                           keep_checkpoints=keep_checkpoints)
    device = device or default_device()
    fill = resolve_fill(edda.fill, x).to(device)
    yd = y_checked.to(device)
    gen = torch.Generator().manual_seed(config.seed + 7919)  # masks independent of the shuffling stream
    state = {"epoch": 0}

    def track(epoch: int, loss: float) -> None:
        state["epoch"] = epoch
        if on_epoch:
            on_epoch(epoch, loss)

    def forward(model: nn.Module, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        logits = model(xb)
        if state["epoch"] < edda.warmup_epochs:
            return logits
        yb = yd[idx]
        if edda.mode == "random":
            saliency = torch.zeros_like(xb)  # unused by random masks; keeps shapes valid
        else:
            saliency = gradient_x_input(model, xb, yb, baseline=fill.expand_as(xb))
        x_aug, q = edda_augment(xb.detach(), yb, saliency, fill, num_classes, k_salient=edda.k_salient,
                                k_nonsalient=edda.k_nonsalient, smoothing=edda.smoothing,
                                random_masks=edda.mode == "random", generator=gen)
        extra = edda.weight * _soft_cross_entropy(model(x_aug), q)
        return _AddLossGrad.apply(logits, extra)

    return train_model(model_factory, x, y_checked, config, device=device, forward=forward,
                       on_epoch=track, keep_checkpoints=keep_checkpoints)


def ig_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor | int, fill: torch.Tensor | float, *,
                steps: int = 32, method: str = "gausslegendre", internal_batch_size: int = 1024) -> torch.Tensor:
    """IG saliency for the label with the occlusion fill as baseline (the evaluation explainer).

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor, shape (n, *sample_shape)
    y : int or torch.Tensor, shape (n,)
    fill : float or torch.Tensor broadcastable to x
    steps, method, internal_batch_size : see :func:`winnow.tasks.explainers.ig.integrated_gradients`

    Returns
    -------
    torch.Tensor, shape (n, *sample_shape)
    """
    check_batch(x)
    baseline = torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand_as(x).clone()
    return integrated_gradients(model, x, baseline, y, steps=steps, method=method,
                                internal_batch_size=internal_batch_size).attributions


@dataclass
class Alignment:
    """Confidence drops under occlusion (model-explainer alignment).

    Attributes
    ----------
    confidence : np.ndarray, shape (n,)
        Softmax probability of the label on the clean input.
    drop_top, drop_random, drop_least : np.ndarray, shape (n,)
        ``confidence - p_label(occluded)`` for the top-k salient, random and least-salient
        occlusion of the same number of features (positive = confidence fell).
    k : float
    """

    confidence: np.ndarray
    drop_top: np.ndarray
    drop_random: np.ndarray
    drop_least: np.ndarray
    k: float

    @property
    def alignment(self) -> float:
        """Mean drop (top-k salient) minus mean drop (random): > 0 means the explanation points at
        what the model actually uses."""
        return float(self.drop_top.mean() - self.drop_random.mean())

    def summary(self) -> dict[str, float]:
        return {"k": self.k, "confidence": float(self.confidence.mean()),
                "drop_top": float(self.drop_top.mean()), "drop_random": float(self.drop_random.mean()),
                "drop_least": float(self.drop_least.mean()), "alignment": self.alignment,
                "top_minus_least": float(self.drop_top.mean() - self.drop_least.mean())}


@torch.no_grad()
def alignment_drops(model: nn.Module, x: torch.Tensor, y: torch.Tensor | int, saliency: torch.Tensor,
                    fill: torch.Tensor | float, k: float = 0.1, *, seed: int = 0,
                    batch_size: int = 1024) -> Alignment:
    """Model-explainer alignment: confidence drop for salient vs random vs least-salient occlusion.

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor, shape (n, *sample_shape)
    y : int or torch.Tensor, shape (n,)
        Label whose probability is measured (and whose saliency ``saliency`` is).
    saliency : torch.Tensor, shape (n, *sample_shape)
    fill : float or torch.Tensor broadcastable to x
    k : float in (0, 1]
        Fraction of features occluded in each condition.
    seed : int
        Seeds tie-breaking and the random condition.
    batch_size : int

    Returns
    -------
    Alignment
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_batch(x)
    if saliency.shape != x.shape:
        raise ValueError(f"saliency shape {tuple(saliency.shape)} differs from x shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("x is empty")
    y = as_class_vector(y, len(x), None, "y").to(x.device)
    gen = torch.Generator().manual_seed(int(seed))
    masks = {w: occlusion_mask(saliency, k, w, generator=gen) for w in OCCLUSION_KINDS}

    def prob(inp: torch.Tensor) -> torch.Tensor:
        outs = [F.softmax(model(inp[i:i + batch_size]), 1) for i in range(0, len(inp), batch_size)]
        p = torch.cat(outs)
        if int(y.max()) >= p.shape[1]:
            raise ValueError(f"label {int(y.max())} >= the model's {p.shape[1]} outputs")
        return p.gather(1, y[:, None]).squeeze(1).double().cpu().numpy()

    with eval_mode(model):
        conf = prob(x)
        drops = {w: conf - prob(occlude(x, m, fill)) for w, m in masks.items()}
    return Alignment(conf, drops["top"], drops["random"], drops["least"], float(k))


def with_mode(config: EDDAConfig, mode: str) -> EDDAConfig:
    """Copy of ``config`` with another mode (for running EDDA and its controls side by side)."""
    return replace(config, mode=mode)
