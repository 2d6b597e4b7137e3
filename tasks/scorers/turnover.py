"""Turn-over dropout (Kobayashi et al. 2020): self-influence from one specially trained model.

Every training sample z gets its own fixed dropout mask m(z) over hidden units (keep rate 0.5),
derived from its sample id, and is only ever trained through the sub-network f^{m(z)}, with the
activations scaled by 1/0.5 = 2 as in ordinary dropout. The complementary sub-network f^{1−m(z)}
never received a gradient through z's kept units, so it plays "the model trained without z".

Self-influence(z) = CE(f^{1−m(z)}(x), y) − CE(f^{m(z)}(x), y).

Sign. Positive means learning z lowered z's own loss beyond what the rest of the data explains.
A clean sample is fit by the complementary sub-network too (its class-mates taught it), so its
self-influence is small; a mislabelled one contradicts its neighbours and is fit only by
memorisation in its own sub-network, so its self-influence is large. The score is therefore the
self-influence as is (higher = more suspicious); tests/test_scorers_turnover.py checks that this
direction detects flips on noisy digits far above random. Option ``variant="heldout"`` scores
by the complementary loss alone (a cheap out-of-sample loss); see the benchmark for both.

Where the masks go. The audited architecture (``ctx.model_factory``) is used unchanged; the
forward hook walks ``model.body`` (an ``nn.Sequential``) and multiplies by the sample's mask either
only the body's output, the features (``layers="features"``, default), or the output of every ReLU
that follows a Linear (per unit) or a Conv layer (per channel) (``layers="all"``). Masking every
hidden layer makes the two sub-networks disjoint but for the head's bias, but each is then a
half-width network whose complement is poor even on clean samples: on digits with 20% flips
(benchmarks/digits_scorers.py, 3 seeds) AUROC was 0.88 / 0.79 (MLP / CNN, symmetric) and
0.75 / 0.69 (class-pair), against 0.98 / 0.99 and 0.91 / 0.93 with the features alone masked,
whose complement shares the body but still has its own rows of the last hidden layer and
columns of the head.

How long. The turn-over model is trained with the audited recipe but for ``epochs`` (default
3 × the recipe's) epochs: self-influence is a memorisation signal, and under the default 10-epoch
recipe the own sub-network has not yet memorised the flips (AUROC ≈ 0.78 on digits, MLP);
at 30 epochs it is ≈ 0.97-0.99, at 40 ≈ 0.99 (the authors' MNIST demo trains 40).

Mask hash. Bits of BLAKE2b(sample id), salted per layer (and per 512-bit block), so a mask depends
only on the id string and the layer — stable across batches, orderings and subsets, and unrelated
between layers. Each bit is an independent fair coin, so no id, however large, degenerates to an
all-ones mask; the negligible all-kept / all-dropped cases (2^-width) are re-drawn with a bumped
salt so that both sub-networks always have a unit.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .base import Scorer, TrainingContext, register

KEEP = 0.5  # the complement must have the same keep rate, so the scale 1/KEEP serves both
_BLOCK_BITS = 512
_PERSON = b"winnow-turnover"


def turnover_mask(sample_id: str, width: int, layer: int = 0) -> np.ndarray:
    """The fixed dropout mask of one sample for one layer.

    Parameters
    ----------
    sample_id : str
        The sample's stable id.
    width : int
        Units (or channels) in the layer, >= 2.
    layer : int
        Layer salt, >= 0: different layers get unrelated masks.

    Returns
    -------
    np.ndarray, shape (width,), bool — True = unit kept (trained by this sample).
    """
    if not isinstance(sample_id, str):
        raise ValueError(f"sample_id must be a str, got {type(sample_id).__name__}")
    if not isinstance(width, (int, np.integer)) or width < 2:
        raise ValueError(f"width must be an integer >= 2 (a mask and its complement each need a unit), got {width}")
    if not isinstance(layer, (int, np.integer)) or layer < 0:
        raise ValueError(f"layer must be a non-negative integer, got {layer}")
    data = sample_id.encode("utf-8")
    blocks = -(-int(width) // _BLOCK_BITS)
    for retry in range(64):
        raw = b"".join(
            hashlib.blake2b(data, digest_size=64, person=_PERSON,
                            salt=struct.pack("<IIQ", int(layer), retry, block)).digest()
            for block in range(blocks)
        )
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[:width].astype(bool)
        if 0 < bits.sum() < width:
            return bits
    # Unreachable in practice: 64 degenerate draws in a row has probability (2^(1-width))^64.
    raise ValueError(f"could not draw a non-degenerate mask of width {width}")


def turnover_masks(sample_ids, width: int, layer: int = 0) -> np.ndarray:
    """Masks for many samples, shape (n, width), bool; row i is ``turnover_mask(sample_ids[i], ...)``."""
    ids = np.asarray(sample_ids, dtype=object).reshape(-1)
    if len(ids) and not all(isinstance(s, str) for s in ids):
        raise ValueError("sample_ids must all be str")
    if len(set(ids)) != len(ids):
        raise ValueError("sample_ids must be unique: duplicates would share a mask")
    if not isinstance(width, (int, np.integer)) or width < 2:
        raise ValueError(f"width must be an integer >= 2, got {width}")
    out = np.zeros((len(ids), int(width)), dtype=bool)
    for i, s in enumerate(ids):
        out[i] = turnover_mask(s, int(width), layer)
    return out


def mask_sites(model: nn.Module, layers: str = "features") -> list[tuple[int, int]]:
    """Where masks go in ``model.body``: (child index after which to mask, width) pairs.

    A site is a ReLU directly after a Linear (width = its units) or a Conv (width = its channels).
    ``layers="features"`` keeps only the last site, and only if it is the body's output.

    Returns
    -------
    list of (int, int); index ``-1`` means "the output of ``model.features``" (a body that is not
    an ``nn.Sequential``, or one whose sites are missing; width found by the caller).
    """
    if layers not in ("all", "features"):
        raise ValueError(f"layers must be 'all' or 'features', got {layers!r}")
    if not (hasattr(model, "body") and hasattr(model, "head")):
        raise ValueError("turn-over dropout needs a model built as body -> head (see tasks/models/nets.py)")
    body = model.body
    if not isinstance(body, nn.Sequential):
        return [(-1, 0)]
    children = list(body)
    sites = []
    for i in range(1, len(children)):
        prev, cur = children[i - 1], children[i]
        if isinstance(cur, nn.ReLU):
            if isinstance(prev, nn.Linear):
                sites.append((i, prev.out_features))
            elif isinstance(prev, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                sites.append((i, prev.out_channels))
    if layers == "features":
        sites = [s for s in sites if s[0] == len(children) - 1]
    return sites or [(-1, 0)]


class TurnOverRouter:
    """Routes each sample through its own sub-network of an unmodified body -> head model.

    Parameters
    ----------
    model : nn.Module
        A model of the audited architecture (used only to find the mask sites and widths).
    sample_ids : array-like, shape (n,), str
        Ids of the training rows; row index ``i`` in a batch's ``idx`` uses ``sample_ids[i]``.
    layers : ``"features"`` or ``"all"`` (see :func:`mask_sites`).
    device : torch.device
    """

    def __init__(self, model: nn.Module, sample_ids, layers: str = "features", device: torch.device | str = "cpu",
                 probe: torch.Tensor | None = None):
        self.sites = mask_sites(model, layers)
        sample_ids = np.array([str(s) for s in np.asarray(sample_ids, dtype=object).reshape(-1)], dtype=object)
        if self.sites[0][0] == -1:
            if probe is None:
                raise ValueError("this body is not an nn.Sequential of Linear/Conv + ReLU; pass probe inputs")
            with torch.no_grad():
                width = model.features(probe[:1].to(next(model.parameters()).device)).reshape(1, -1).shape[1]
            self.sites = [(-1, width)]
        self.positions = {pos: k for k, (pos, _) in enumerate(self.sites)}
        # The body index salts the hash: a layer keeps its masks whichever `layers` option is used.
        self.masks = [
            torch.as_tensor(turnover_masks(sample_ids, w, layer=pos + 1), dtype=torch.float32, device=device)
            for pos, w in self.sites
        ]

    def __call__(self, model: nn.Module, xb: torch.Tensor, idx: torch.Tensor, complement: bool = False) -> torch.Tensor:
        """Logits of ``xb`` through each row's own (or complementary) sub-network, shape (b, C)."""
        idx = idx.to(self.masks[0].device)
        ms = [m[idx] for m in self.masks]
        if complement:
            ms = [1.0 - m for m in ms]
        scale = 1.0 / KEEP

        def apply(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return h * (m * scale).reshape(m.shape[0], m.shape[1], *([1] * (h.dim() - 2)))

        if self.sites[0][0] == -1:
            h = model.features(xb)
            return model.head(apply(h.reshape(len(h), -1), ms[0]))
        h = xb
        for i, child in enumerate(model.body):
            h = child(h)
            k = self.positions.get(i)
            if k is not None:
                h = apply(h, ms[k])
        return model.head(h)

    @torch.no_grad()
    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample CE under the own mask and under the complement.

        Returns
        -------
        own, complement : np.ndarray, shape (n,), float64 each
        """
        if len(x) != len(y) or len(x) != len(self.masks[0]):
            raise ValueError(f"x ({len(x)}), y ({len(y)}) and the masks ({len(self.masks[0])}) must match")
        model.eval()
        device = self.masks[0].device
        own, comp = [], []
        for s in range(0, len(x), batch_size):
            idx = torch.arange(s, min(s + batch_size, len(x)), device=device)
            xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
            own.append(F.cross_entropy(self(model, xb, idx).double(), yb, reduction="none").cpu())
            comp.append(F.cross_entropy(self(model, xb, idx, complement=True).double(), yb, reduction="none").cpu())
        return torch.cat(own).numpy(), torch.cat(comp).numpy()


def turnover_losses(ctx: TrainingContext, layers: str = "features", epochs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train the audited recipe with turn-over dropout and return (own-mask CE, complement CE).

    Parameters
    ----------
    ctx : TrainingContext
    layers : ``"features"`` or ``"all"`` (see :func:`mask_sites`).
    epochs : int, optional
        Training epochs; default 3 × ``ctx.train_config.epochs`` (see the module docstring).

    Cached on the context per (layers, epochs) so the scorer's variants and ensembles train once.

    Returns
    -------
    own, complement : np.ndarray, shape (n,), float64 each
    """
    epochs = 3 * ctx.train_config.epochs if epochs is None else epochs
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    key = ("turnover", layers, int(epochs))
    if key not in ctx._cache:
        router = TurnOverRouter(ctx.model_factory(), ctx.sample_ids, layers, ctx.device, probe=ctx.x)
        config = replace(ctx.train_config, epochs=int(epochs))
        result = ctx.train(config=config, forward=router, keep_checkpoints=False)
        ctx._cache[key] = router.losses(result.model, ctx.x, ctx.y)
    return ctx._cache[key]


@register
class TurnOver(Scorer):
    """Options: ``layers`` (``features`` default | ``all``), ``epochs`` (default 3 × the recipe's)
    and ``variant`` (``influence`` = complement CE − own CE, default; ``heldout`` = complement CE
    alone)."""

    name = "turnover"
    summary = "turn-over dropout self-influence (Kobayashi et al. 2020): CE(complement mask) - CE(own mask)"

    def score(self, ctx: TrainingContext) -> np.ndarray:
        layers = str(self.options.get("layers", "features"))
        variant = str(self.options.get("variant", "influence"))
        if layers not in ("all", "features"):
            raise ValueError(f"turnover option layers must be 'all' or 'features', got {layers!r}")
        if variant not in ("influence", "heldout"):
            raise ValueError(f"turnover option variant must be 'influence' or 'heldout', got {variant!r}")
        epochs = self.options.get("epochs")
        try:
            epochs = None if epochs is None else int(epochs)
        except (TypeError, ValueError):
            raise ValueError(f"turnover option epochs must be an integer, got {epochs!r}") from None
        own, comp = turnover_losses(ctx, layers, epochs)
        return comp - own if variant == "influence" else comp
