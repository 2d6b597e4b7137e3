"""A small VAE over ingested images: the generator for latent counterfactuals.

Alipour et al. (2022) search counterfactuals in a pretrained StyleGAN2's latent space; winnow's
data are small single-channel images (8x8 digits, 28x28 Fashion-MNIST), for which a fully
connected VAE trains in seconds to a minute on a CPU and gives a smooth latent space in which a
shift ``delta`` moves the decoded image along the data rather than adding pixel noise.

Architecture: flatten -> [Linear, ReLU] x 2 -> (mu, log-variance) of a diagonal Gaussian;
decoder z -> [Linear, ReLU] x 2 -> Linear -> sigmoid -> sample shape. Loss: Bernoulli
reconstruction (binary cross-entropy summed over pixels, valid because pixels lie in [0, 1]) plus
``beta`` x KL(q(z|x) || N(0, I)), averaged over the batch. Adam.

Deterministic by seed: weights come from ``torch.manual_seed(seed)``, and the batch order and the
reparameterisation noise from private generators seeded from ``seed``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .baselines import check_batch


class VAE(nn.Module):
    """Fully connected VAE.

    Parameters
    ----------
    input_shape : tuple of int
        Sample shape, e.g. (1, 8, 8) or (1, 28, 28).
    latent_dim : int
    hidden : int
        Width of both hidden layers of encoder and decoder.
    """

    def __init__(self, input_shape: tuple[int, ...], latent_dim: int = 8, hidden: int = 256):
        super().__init__()
        if not input_shape or any(int(s) < 1 for s in input_shape):
            raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape}")
        if latent_dim < 1 or hidden < 1:
            raise ValueError(f"latent_dim and hidden must be >= 1, got {latent_dim}, {hidden}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim = int(latent_dim)
        d = math.prod(self.input_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, d))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each shape (n, latent_dim), for x of shape (n, *input_shape)."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"VAE expects samples of shape {self.input_shape}, got {tuple(x.shape[1:])}")
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid decoder output, shape (n, *input_shape)."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (n, {self.latent_dim}), got {tuple(z.shape)}")
        return self.decoder(z).reshape(len(z), *self.input_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded images in [0, 1], shape (n, *input_shape)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction ``decode(mu(x))``."""
        return self.decode(self.encode(x)[0])


@dataclass
class VAETrainResult:
    """A trained VAE (eval mode) and its mean loss per epoch."""

    vae: VAE
    loss: list[float] = field(default_factory=list)


def vae_loss(vae: VAE, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Negative ELBO per sample (reconstruction BCE summed over pixels + beta KL), batch mean."""
    mu, logvar = vae.encode(x)
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    z = mu + torch.exp(0.5 * logvar) * eps
    rec = F.binary_cross_entropy_with_logits(vae.decode_logits(z), x, reduction="none").reshape(len(x), -1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return (rec + beta * kl).mean()


def train_vae(x: torch.Tensor | np.ndarray, *, latent_dim: int = 8, hidden: int = 256, epochs: int = 20,
              batch_size: int = 128, lr: float = 1e-3, beta: float = 1.0, seed: int = 0,
              device: torch.device | None = None) -> VAETrainResult:
    """Train a VAE on images in [0, 1].

    Parameters
    ----------
    x : shape (n, *sample_shape), values in [0, 1]
    latent_dim, hidden : see :class:`VAE`
    epochs, batch_size, lr : Adam training settings
    beta : float >= 0
        KL weight (1 = the standard ELBO).
    seed : int
    device : torch.device, optional
        Defaults to the CPU (the VAE is small; results stay bit-reproducible).

    Returns
    -------
    VAETrainResult
    """
    x = torch.as_tensor(x, dtype=torch.float32)
    check_batch(x)
    if len(x) == 0:
        raise ValueError("cannot train a VAE on an empty set")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"VAE inputs must lie in [0, 1] (Bernoulli likelihood), got [{float(x.min())}, {float(x.max())}]")
    if epochs < 1 or batch_size < 1 or not lr > 0 or not beta >= 0:
        raise ValueError(f"invalid VAE training settings epochs={epochs}, batch_size={batch_size}, lr={lr}, beta={beta}")
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    vae = VAE(tuple(x.shape[1:]), latent_dim, hidden).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    xd = x.to(device)
    losses = []
    for _ in range(epochs):
        vae.train()
        order = torch.randperm(len(x), generator=order_gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size].to(device)
            loss = vae_loss(vae, xd[idx], beta, noise_gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    vae.eval()
    return VAETrainResult(vae, losses)


@torch.no_grad()
def encode_mean(vae: VAE, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Posterior means ``mu(x)``, shape (n, latent_dim), on x's device."""
    check_batch(x)
    dev = next(vae.parameters()).device
    vae.eval()
    outs = [vae.encode(x[i:i + batch_size].to(dev))[0].to(x.device) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, vae.latent_dim)
