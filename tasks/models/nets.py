"""Architectures. Each is ``body`` (features) then ``head`` (one linear layer), so last-layer
methods (representer points, last-layer TracIn/influence) can reach the features directly."""
from __future__ import annotations

import math

import torch
from torch import nn

MODEL_KINDS = ("mlp", "cnn", "cnn1d")


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (256, 128)) -> Classifier:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return Classifier(nn.Sequential(*layers), width, num_classes)


def cnn(input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] = (32, 64), hidden: int = 128) -> Classifier:
    c, h, w = input_shape
    body = nn.Sequential(
        nn.Conv2d(c, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels[1] * (h // 4) * (w // 4), hidden), nn.ReLU(),
    )
    # channels_last weights: oneDNN runs the convolutions and max-pools in NHWC when the weight or
    # the input is channels_last, and NHWC is the fast layout on a CPU thread (forward 0.32 s vs
    # 0.89 s, a training step 1.1-1.4x, for 2,048 Fashion-MNIST-sized samples). A one-channel
    # input is ambiguous (arrays from the IDX loader carry NHWC strides, a torch.randn batch does
    # not), so fixing the weights makes the speed independent of how the caller built x.
    return Classifier(body, hidden, num_classes).to(memory_format=torch.channels_last)


def cnn1d(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> Classifier:
    """A small version of Mercier et al.'s 1D CNN (conv 32-32-64-64, 2 pools, dense)."""
    c, *rest = input_shape
    length = math.prod(rest)
    body = nn.Sequential(
        nn.Flatten(2) if len(rest) > 1 else nn.Identity(),
        nn.Conv1d(c, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv1d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(64 * (length // 4), hidden), nn.ReLU(),
    )
    return Classifier(body, hidden, num_classes)


def build_model(kind: str, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """Build an untrained model by name; seed torch before calling for reproducible weights."""
    if kind == "mlp":
        return mlp(tuple(input_shape), num_classes)
    if kind == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"model 'cnn' needs (C, H, W) inputs, got sample shape {tuple(input_shape)}")
        return cnn(tuple(input_shape), num_classes)
    if kind == "cnn1d":
        return cnn1d(tuple(input_shape), num_classes)
    raise ValueError(f"unknown model {kind!r}; choose one of {MODEL_KINDS}")


def check_fits(kind: str, data_kind: str, sample_shape: tuple[int, ...]) -> None:
    """Refuse, in one line, a model that cannot take this data (before anything is trained).

    ``mlp`` takes any fixed shape; ``cnn`` needs images (C, H, W) at least 4x4 (two 2x2 pools);
    ``cnn1d`` needs signals (C, L) or images, L >= 4.
    """
    shape = tuple(sample_shape)
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model {kind!r}; choose one of {MODEL_KINDS}")
    if data_kind == "probs":
        return  # nothing is trained on given probabilities
    if kind == "cnn" and (len(shape) != 3 or min(shape[1:]) < 4):
        raise ValueError(f"--model cnn needs images of shape (C, H, W) with H, W >= 4; this data is {data_kind} of "
                         f"shape {shape}: use --model mlp" + (", or --shape C,H,W if the vectors are flattened images"
                                                             if len(shape) == 1 else ""))
    if kind == "cnn1d" and (len(shape) < 2 or math.prod(shape[1:]) < 4):
        raise ValueError(f"--model cnn1d needs signals of shape (C, L); this data is {data_kind} of shape {shape}: "
                         f"use --model mlp")
