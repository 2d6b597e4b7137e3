"""The one training loop: deterministic by seed, a checkpoint per epoch, CUDA when present."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .rows import Rows, as_rows


OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    #: "sgd" (with momentum) or "adam" (momentum unused)
    optimizer: str = "sgd"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Checkpoint:
    """Weights after one epoch, with the learning rate used during it (TracIn needs it)."""

    epoch: int
    lr: float
    state: dict[str, torch.Tensor]


@dataclass
class TrainResult:
    model: nn.Module
    checkpoints: list[Checkpoint]
    train_loss: list[float] = field(default_factory=list)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# forward(model, x_batch, index_batch) -> logits; lets turn-over dropout route by sample index.
ForwardFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _plain_forward(model: nn.Module, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return model(xb)


def train_model(
    model_factory: Callable[[], nn.Module],
    x: torch.Tensor | np.ndarray | Rows,
    y: torch.Tensor | np.ndarray,
    config: TrainConfig = TrainConfig(),
    *,
    device: torch.device | None = None,
    forward: ForwardFn = _plain_forward,
    on_epoch: Callable[[int, float], None] | None = None,
    keep_checkpoints: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train a fresh model with cross-entropy and SGD + momentum (or Adam, ``config.optimizer``).

    Parameters
    ----------
    model_factory : callable
        Returns an untrained model; called after seeding, so weights depend only on the seed.
    x : shape (n, *sample_shape), float32, or :class:`Rows`
        A :class:`Rows` (e.g. a memory-mapped file) is read one batch at a time, so memory grows
        with the batch size, not with n; the batches (and so the result) are the same either way.
    y : shape (n,), int64 — or shape (n, C), float: soft targets (each row a distribution over the
        classes; the cross-entropy is then taken against it, as ``torch.nn.functional.cross_entropy``
        does for class probabilities)
    forward : callable, optional
        ``forward(model, x_batch, idx_batch)``; ``idx_batch`` are row indices into ``x``.
    loss_fn : callable, optional
        ``loss_fn(logits (b, C), targets (b,)) -> scalar`` (targets (b, C) when ``y`` is soft);
        cross-entropy when None (a robust loss such as
        :func:`winnow.tasks.remedies.generalized_cross_entropy` is a remedy).

    Returns
    -------
    TrainResult
        The trained model (eval mode, on ``device``) and one CPU checkpoint per epoch.
    """
    x = as_rows(x)
    y = torch.as_tensor(y)
    y = y.to(torch.long) if y.ndim == 1 else y.to(torch.float32)
    if y.ndim not in (1, 2):
        raise ValueError(f"y must be labels (n,) or soft targets (n, C), got shape {tuple(y.shape)}")
    if y.ndim == 2 and (not torch.isfinite(y).all() or (y < 0).any()
                        or not torch.allclose(y.sum(1), torch.ones(len(y)), atol=1e-4)):
        raise ValueError("soft targets y (n, C) must be finite, non-negative, each row summing to 1")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot train on an empty training set")
    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0:
        raise ValueError(f"invalid training config {config}")
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    device = device or default_device()
    seed_everything(config.seed)
    model = model_factory().to(device)
    if config.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    yd = y.to(device)
    checkpoints: list[Checkpoint] = []
    losses: list[float] = []
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = (loss_fn or F.cross_entropy)(forward(model, x.take(idx).to(device), idx), yd[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        if keep_checkpoints:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            checkpoints.append(Checkpoint(epoch + 1, opt.param_groups[0]["lr"], state))
        if on_epoch:
            on_epoch(epoch + 1, losses[-1])
    model.eval()
    return TrainResult(model, checkpoints, losses)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor | np.ndarray | Rows, batch_size: int = 128,
                   device: torch.device | None = None) -> torch.Tensor:
    """Logits, shape (n, C), on the CPU; the model is put in eval mode. ``x`` as in :func:`train_model`.

    Small batches by default: a CNN forward on one CPU thread is ~2.7x faster at 64-256 samples
    than at 1,024+ (the activations then stay in cache); an MLP's is the same at any size.
    """
    device = device or next(model.parameters()).device
    model.eval()
    outs = [model(xb.to(device)).cpu() for xb in as_rows(x).batches(batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(model: nn.Module, x, y) -> float:
    y = torch.as_tensor(y)
    if len(y) == 0:
        return float("nan")
    return float((predict_logits(model, x).argmax(1) == y).float().mean())
