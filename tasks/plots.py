"""Pictures for reports and MLflow: matplotlib on the Agg backend, written to PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import precision_curve  # noqa: E402


def save_figure(fig, dest: Path, title: str = "", dpi: int = 100) -> Path:
    """Title, lay out, write ``fig`` to ``dest`` (PNG; parent folders made) and close it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=dpi)
    plt.close(fig)
    return dest


def detection_curves(scores: dict[str, np.ndarray], is_flipped: np.ndarray, dest: Path, title: str = "") -> Path:
    """Precision and recall of each scorer vs. the fraction of the training set inspected."""
    fig, (ax_p, ax_r) = plt.subplots(1, 2, figsize=(10, 4))
    rate = float(np.mean(is_flipped))
    for name, s in sorted(scores.items()):
        frac, prec, rec = precision_curve(s, is_flipped, points=100)
        ax_p.plot(frac, prec, label=name)
        ax_r.plot(frac, rec, label=name)
    ax_p.axhline(rate, color="grey", ls=":", lw=1, label="noise rate")
    ax_r.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    for ax, what in ((ax_p, "precision"), (ax_r, "fraction of mislabels found")):
        ax.set_xlabel("fraction of training set inspected")
        ax.set_ylabel(what)
        ax.set_xlim(0, min(1.0, max(0.5, 3 * rate)))
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=8)
    return save_figure(fig, dest, title, dpi=110)


def thumbnails(images: np.ndarray, captions: list[str], dest: Path, cols: int = 8) -> Path:
    """A grid of grey-scale thumbnails with captions (images: (n, 1, H, W) in [0, 1])."""
    n = len(images)
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < n:
            img = images[i]
            ax.imshow(img[0] if img.ndim == 3 and img.shape[0] == 1 else np.moveaxis(img, 0, -1) if img.ndim == 3 else img,
                      cmap="gray", vmin=0, vmax=1)
            ax.set_title(captions[i], fontsize=7)
    return save_figure(fig, dest)
