"""A team's own pretrained encoder as an embedding stage: loaded with torch alone (a
``torch.export`` ``.pt2`` program or TorchScript), never downloaded; any architecture.

The audit then trains its head (the MLP) on the embeddings, which is how a foundation model's
features are audited without fine-tuning it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def load_encoder(path: str | Path) -> torch.nn.Module:
    """Load an exported encoder: ``torch.export`` (``.pt2``) or TorchScript (``torch.jit.save``).

    Raises a one-line ``ValueError`` naming the file when it is neither.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: --backbone file not found")
    errors = []
    try:
        return torch.export.load(str(p)).module()
    except Exception as exc:  # not an exported program: try TorchScript next
        errors.append(f"torch.export: {exc.__class__.__name__}")
    try:
        return torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as exc:
        errors.append(f"TorchScript: {exc.__class__.__name__}")
    raise ValueError(f"{p}: not a torch.export .pt2 program nor a TorchScript file ({'; '.join(errors)})")


@torch.no_grad()
def embed(encoder: torch.nn.Module, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Run the encoder over ``x`` in batches.

    Parameters
    ----------
    encoder : torch.nn.Module
    x : np.ndarray, shape (n, *sample_shape), float32
        Model inputs (pixels in [0, 1]).

    Returns
    -------
    np.ndarray, shape (n, D), float32
        Each output flattened to one vector.
    """
    if len(x) == 0:
        raise ValueError("nothing to embed: x is empty")
    out = []
    for start in range(0, len(x), batch_size):
        batch = torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size]), dtype=torch.float32)
        try:
            z = encoder(batch)
        except Exception as exc:
            raise ValueError(f"the backbone failed on inputs of shape {tuple(batch.shape)}: "
                             f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}") from None
        if isinstance(z, (tuple, list)):
            z = z[0]
        out.append(z.reshape(len(batch), -1).float().cpu().numpy())
    feats = np.concatenate(out)
    if not np.all(np.isfinite(feats)):
        raise ValueError("the backbone produced non-finite embeddings")
    return feats
