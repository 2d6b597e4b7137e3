"""Latent counterfactuals and contrastive sufficiency / necessity (Alipour et al. 2022, in spirit).

Counterfactual search
---------------------
For a sample ``x`` with posterior mean ``z = mu(x)`` and a target class ``t``, we look for a small
latent shift ``delta`` with ``argmax classifier(decode(z + delta)) == t`` by gradient descent
(Adam) on

    CE(classifier(decode(z + delta)), t) + beta * ||delta||_2

per sample (the paper's objective with cross-entropy for the multi-class classifier and the same
``beta = 0.05`` default), starting from ``delta = 0`` and stopping *per sample* as soon as the
target is reached (optionally with probability >= ``min_prob``): the first success along the
descent is the closest point on that path, and continuing would only push deeper into the class.
The counterfactual is compared with the *reconstruction* ``decode(z)`` (``pixel_distance``), so
that the VAE's reconstruction error is not counted as part of the change, and with ``x`` itself
(``input_distance``).

Any generator with ``encode(x) -> (mu, logvar)`` and ``decode(z) -> images`` works
(:class:`winnow.tasks.explainers.vae.VAE` is the one we train).

Contrastive sufficiency and necessity
-------------------------------------
The paper turns counterfactuals into global, per-attribute causal scores. Our "attributes" are
the classes themselves, and the intervention must be defined by the generator, not by the
classifier (otherwise "sufficiency" would be the search's success rate by construction). Per class
``c`` we use the global latent class direction

    d_c = mean_{i: y_i = c} mu(x_i) - mean_{i: y_i != c} mu(x_i),

and interventions of strength ``lam``: *toward* ``c`` is ``z + lam d_c``, *away from* ``c`` is
``z - lam d_c``. With ``pred(v) = argmax classifier(decode(v))`` and ``r_i = pred(z_i)`` the
prediction on the reconstruction:

* sufficiency(c) = P[ pred(z + lam d_c) = c | y != c and r != c ]
  -- over samples that are not ``c`` (by label and by the model's reading of the reconstruction),
  the fraction that the intervention toward ``c`` makes the classifier call ``c``;
* necessity(c) = P[ pred(z - lam d_c) != c | y = c and r = c ]
  -- over samples of class ``c`` that the classifier recognises, the fraction that stop being
  called ``c`` when the class's latent features are removed.

High sufficiency and necessity mean the classifier's decision for ``c`` follows the generator's
notion of "c-ness"; a class with low necessity is recognised from something the class direction
does not capture. Scores are NaN where the conditioning set is empty.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .baselines import as_class_vector, check_batch


def _check_generator(vae) -> None:
    if not (callable(getattr(vae, "encode", None)) and callable(getattr(vae, "decode", None))):
        raise ValueError("vae must provide encode(x) -> (mu, logvar) and decode(z)")


@dataclass
class Counterfactuals:
    """Result of :func:`latent_counterfactual`; every array has first dimension n.

    Attributes
    ----------
    x_cf : torch.Tensor, shape (n, *sample_shape)
        ``decode(z + delta)``.
    reconstruction : torch.Tensor, shape (n, *sample_shape)
        ``decode(z)``.
    z : torch.Tensor, shape (n, latent_dim)
    delta : torch.Tensor, shape (n, latent_dim)
    target : np.ndarray, shape (n,)
    predicted : np.ndarray, shape (n,)
        Classifier's class for ``x_cf``.
    target_prob : np.ndarray, shape (n,)
    success : np.ndarray, shape (n,), bool
        Target reached (and ``target_prob >= min_prob`` if set).
    iterations : np.ndarray, shape (n,), int
        Optimisation steps taken (0 if the reconstruction already had the target class).
    latent_distance : np.ndarray, shape (n,)
        ``||delta||_2``.
    pixel_distance : np.ndarray, shape (n,)
        ``||x_cf - decode(z)||_2``.
    input_distance : np.ndarray, shape (n,)
        ``||x_cf - x||_2``.
    """

    x_cf: torch.Tensor
    reconstruction: torch.Tensor
    z: torch.Tensor
    delta: torch.Tensor
    target: np.ndarray
    predicted: np.ndarray
    target_prob: np.ndarray
    success: np.ndarray
    iterations: np.ndarray
    latent_distance: np.ndarray
    pixel_distance: np.ndarray
    input_distance: np.ndarray

    @property
    def validity(self) -> float:
        """Fraction of samples whose counterfactual reached the target."""
        return float(self.success.mean()) if len(self.success) else float("nan")

    def summary(self) -> dict[str, float]:
        ok = self.success
        med = (lambda a: float(np.median(a[ok])) if ok.any() else float("nan"))
        return {"n": int(len(ok)), "validity": self.validity,
                "latent_distance_median": med(self.latent_distance),
                "pixel_distance_median": med(self.pixel_distance),
                "input_distance_median": med(self.input_distance),
                "iterations_median": med(self.iterations.astype(float))}


def _flat_norm(t: torch.Tensor) -> np.ndarray:
    return t.reshape(len(t), -1).norm(dim=1).detach().cpu().double().numpy()


def latent_counterfactual(classifier: nn.Module, vae, x: torch.Tensor, target: torch.Tensor | int, *,
                          beta: float = 0.05, lr: float = 0.05, max_iter: int = 300,
                          min_prob: float | None = None) -> Counterfactuals:
    """Smallest latent shift that makes the classifier output ``target`` (per sample, batched).

    Parameters
    ----------
    classifier : nn.Module
        Maps images (n, *sample_shape) to logits (n, num_classes).
    vae : generator with ``encode`` and ``decode``
    x : torch.Tensor, shape (n, *sample_shape)
    target : int or torch.Tensor, shape (n,)
    beta : float >= 0
        Weight of ``||delta||_2`` (proximity) against the classification loss.
    lr : float > 0
        Adam step size in latent units.
    max_iter : int >= 1
    min_prob : float in (0, 1), optional
        Also require ``p(target) >= min_prob`` before stopping (a margin beyond the argmax).

    Returns
    -------
    Counterfactuals
    """
    if not isinstance(classifier, nn.Module):
        raise ValueError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
    _check_generator(vae)
    check_batch(x)
    if len(x) == 0:
        raise ValueError("x is empty")
    if not beta >= 0 or not lr > 0 or not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"need beta >= 0, lr > 0, integer max_iter >= 1; got {beta}, {lr}, {max_iter!r}")
    if min_prob is not None and not 0 < min_prob < 1:
        raise ValueError(f"min_prob must be in (0, 1), got {min_prob}")
    target = as_class_vector(target, len(x), None, "target").to(x.device)
    modes = [(m, m.training) for m in (classifier, vae) if isinstance(m, nn.Module)]
    for m, _ in modes:
        m.eval()
    try:
        with torch.no_grad():
            z = vae.encode(x)[0].detach()
            recon = vae.decode(z)
            logits = classifier(recon)
            if logits.ndim != 2 or int(target.max()) >= logits.shape[1]:
                raise ValueError(f"target class {int(target.max())} out of range for logits {tuple(logits.shape)}")

        def reached(lg: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            ok = lg.argmax(1) == tgt
            if min_prob is not None:
                ok &= F.softmax(lg, 1).gather(1, tgt[:, None]).squeeze(1) >= min_prob
            return ok

        done = reached(logits, target)
        iterations = torch.zeros(len(x), dtype=torch.long, device=x.device)
        delta = torch.zeros_like(z, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        for it in range(max_iter + 1):
            active = torch.nonzero(~done).flatten()
            if len(active) == 0:
                break
            # Only unfinished samples are decoded and classified: finished ones cost nothing.
            lg = classifier(vae.decode(z[active] + delta[active]))
            now = reached(lg.detach(), target[active])
            done[active[now]] = True
            if it == max_iter or bool(now.all()):
                break
            keep = ~now
            ce = F.cross_entropy(lg[keep], target[active[keep]], reduction="none")
            # sqrt(|d|^2 + tiny): ||.||_2 has no gradient at the starting point delta = 0.
            norm = torch.sqrt(delta[active[keep]].pow(2).sum(1) + 1e-12)
            loss = (ce + beta * norm).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            frozen = delta.detach()[done].clone()
            opt.step()
            with torch.no_grad():
                # Adam's momentum would keep moving finished samples; pin them to their solution.
                delta[done] = frozen
                iterations[active[keep]] = it + 1
        with torch.no_grad():
            d = delta.detach().clone()
            x_cf = vae.decode(z + d)
            lg = classifier(x_cf)
            success = reached(lg, target)
            prob = F.softmax(lg, 1).gather(1, target[:, None]).squeeze(1)
    finally:
        for m, was in modes:
            m.train(was)
    return Counterfactuals(
        x_cf=x_cf, reconstruction=recon, z=z, delta=d, target=target.cpu().numpy(),
        predicted=lg.argmax(1).cpu().numpy(), target_prob=prob.double().cpu().numpy(),
        success=success.cpu().numpy(), iterations=iterations.cpu().numpy(),
        latent_distance=_flat_norm(d), pixel_distance=_flat_norm(x_cf - recon),
        input_distance=_flat_norm(x_cf - x))


@dataclass
class ContrastiveScores:
    """Per-class contrastive sufficiency and necessity (see the module docstring).

    Attributes
    ----------
    sufficiency, necessity : np.ndarray, shape (num_classes,)
        NaN where the conditioning set is empty.
    n_sufficiency, n_necessity : np.ndarray, shape (num_classes,), int
        Sizes of the conditioning sets.
    strength : float
    """

    sufficiency: np.ndarray
    necessity: np.ndarray
    n_sufficiency: np.ndarray
    n_necessity: np.ndarray
    strength: float

    def summary(self) -> dict[str, float]:
        return {"strength": self.strength,
                "sufficiency_mean": float(np.nanmean(self.sufficiency)),
                "necessity_mean": float(np.nanmean(self.necessity)),
                "sufficiency_min": float(np.nanmin(self.sufficiency)),
                "necessity_min": float(np.nanmin(self.necessity))}


@torch.no_grad()
def class_directions(vae, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Latent class directions ``d_c = mean mu(x | y = c) - mean mu(x | y != c)``.

    Parameters
    ----------
    vae : generator with ``encode``
    x : torch.Tensor, shape (n, *sample_shape)
    y : torch.Tensor, shape (n,)
    num_classes : int

    Returns
    -------
    torch.Tensor, shape (num_classes, latent_dim)
    """
    _check_generator(vae)
    check_batch(x)
    y = as_class_vector(y, len(x), num_classes, "y").to(x.device)
    counts = torch.bincount(y, minlength=num_classes)
    if (counts == 0).any() or (counts == len(y)).any():
        raise ValueError(f"every class needs samples of it and of other classes; class counts {counts.tolist()}")
    if isinstance(vae, nn.Module):
        vae.eval()
    z = vae.encode(x)[0]
    onehot = F.one_hot(y, num_classes).to(z.dtype)
    mean_in = onehot.T @ z / counts[:, None].to(z.dtype)
    mean_out = (z.sum(0, keepdim=True) - onehot.T @ z) / (len(y) - counts)[:, None].to(z.dtype)
    return mean_in - mean_out


@torch.no_grad()
def contrastive_scores(classifier: nn.Module, vae, x: torch.Tensor, y: torch.Tensor, num_classes: int, *,
                       strength: float = 1.0, directions: torch.Tensor | None = None,
                       batch_size: int = 1024) -> ContrastiveScores:
    """Per-class contrastive sufficiency and necessity of latent class interventions.

    Parameters
    ----------
    classifier : nn.Module
    vae : generator with ``encode`` and ``decode``
    x : torch.Tensor, shape (n, *sample_shape)
    y : torch.Tensor, shape (n,)
        Labels (used for the conditioning sets and, if ``directions`` is None, the directions).
    num_classes : int
    strength : float > 0
        ``lam`` in the module docstring (1 = the full difference of class means).
    directions : torch.Tensor, shape (num_classes, latent_dim), optional
        Precomputed :func:`class_directions` (e.g. from the training split).
    batch_size : int

    Returns
    -------
    ContrastiveScores
    """
    if not isinstance(classifier, nn.Module):
        raise ValueError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
    _check_generator(vae)
    check_batch(x)
    if not strength > 0:
        raise ValueError(f"strength must be > 0, got {strength}")
    y = as_class_vector(y, len(x), num_classes, "y").to(x.device)
    if directions is None:
        directions = class_directions(vae, x, y, num_classes)
    if directions.ndim != 2 or directions.shape[0] != num_classes:
        raise ValueError(f"directions must have shape ({num_classes}, latent_dim), got {tuple(directions.shape)}")
    was = classifier.training
    classifier.eval()
    if isinstance(vae, nn.Module):
        vae.eval()

    def pred(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([classifier(vae.decode(z[i:i + batch_size])).argmax(1) for i in range(0, len(z), batch_size)])

    try:
        z = torch.cat([vae.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])
        if z.shape[1] != directions.shape[1]:
            raise ValueError(f"directions have latent size {directions.shape[1]}, the generator {z.shape[1]}")
        r = pred(z)
        suff = np.full(num_classes, np.nan)
        nec = np.full(num_classes, np.nan)
        n_s = np.zeros(num_classes, dtype=np.int64)
        n_n = np.zeros(num_classes, dtype=np.int64)
        for c in range(num_classes):
            d = directions[c].to(z.dtype)
            out = (y != c) & (r != c)
            inn = (y == c) & (r == c)
            n_s[c], n_n[c] = int(out.sum()), int(inn.sum())
            if n_s[c]:
                suff[c] = float((pred(z[out] + strength * d) == c).double().mean())
            if n_n[c]:
                nec[c] = float((pred(z[inn] - strength * d) != c).double().mean())
    finally:
        classifier.train(was)
    return ContrastiveScores(suff, nec, n_s, n_n, float(strength))
