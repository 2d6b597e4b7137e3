"""What the review page shows beside the queue's rows: thumbnails of the flagged samples (drawn
from the lake's committed batches, cached) and the explain flow's panels.

Pixels come through :func:`winnow.tasks.batches.load_committed`, so the page follows however the
lake stores them. Data that is not an image (signals, feature vectors) gets no thumbnail: the
page shows a "no image" card instead.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import batches, lake, report
from .data.dataset import IMAGE_KINDS
from .settings import paths

THUMBNAIL_PIXELS = 224  # the longer side of a thumbnail; the page shows it small, and large on focus


# ---------------------------------------------------------------- pure


def is_image(sample_shape: tuple[int, ...]) -> bool:
    """Whether samples of this shape draw as pictures: (C, H, W) with 1, 3 or 4 channels."""
    return len(sample_shape) == 3 and sample_shape[0] in (1, 3, 4) and min(sample_shape[1:]) >= 2


def to_unit(sample: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """One sample's values mapped from ``value_range`` to [0, 1] (uint8 0..255 or floats alike).

    Parameters
    ----------
    sample : shape (C, H, W)
    value_range : (low, high), high > low
    """
    if value_range[0] is None or value_range[1] is None:
        raise ValueError(f"value_range: images need both bounds, got {value_range}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range: high must exceed low, got {value_range}")
    return (np.asarray(sample, dtype=np.float32) - lo) / (hi - lo)


def thumbnail_png(sample: np.ndarray, value_range: tuple[float, float], size: int = THUMBNAIL_PIXELS) -> bytes | None:
    """PNG bytes of one sample (None when it is not an image).

    Parameters
    ----------
    sample : shape (C, H, W) for an image; any other shape gives None
    value_range : the range its values lie in
    size : pixels on the longer side (upscaled by an integer factor, no smoothing)
    """
    if size <= 0:
        raise ValueError(f"thumbnail size must be positive, got {size}")
    sample = np.asarray(sample)
    if not is_image(tuple(sample.shape)):
        return None
    image = to_unit(sample, value_range)
    if image.shape[0] == 4:  # drop alpha: the page's background is white anyway
        image = image[:3]
    return report.png_bytes(image, size)


# ---------------------------------------------------------------- the lake edge


@functools.lru_cache(maxsize=4)
def _batch(batch_id: str):
    """(row of each sample id, the Dataset) of a committed batch; batches are content-addressed,
    so a cached one never goes stale."""
    ds = batches.load_committed(batch_id)
    return {str(s): i for i, s in enumerate(ds.sample_id)}, ds


def batch_classes(batch_id: str) -> list[str]:
    """Class names of a committed batch ([] when the batch is not in the lake)."""
    try:
        return list(_batch(batch_id)[1].class_names)
    except FileNotFoundError:
        return []


def batch_has_images(batch_id: str) -> bool:
    """Whether a committed batch holds pictures (kind ``images``, (C, H, W) samples)."""
    try:
        ds = _batch(batch_id)[1]
    except FileNotFoundError:
        return False
    return ds.kind in IMAGE_KINDS and is_image(ds.sample_shape)


@functools.lru_cache(maxsize=8192)
def sample_thumbnail(batch_id: str, sample_id: str) -> bytes | None:
    """The PNG of one committed sample, or None (not an image, or not in the lake)."""
    if not batch_has_images(batch_id):
        return None
    where, ds = _batch(batch_id)
    if sample_id not in where:
        return None
    # the stored values (uint8 as they came, or floats in value_range): no float copy of the batch
    value_range = (0, 255) if ds.values.dtype == np.uint8 else ds.value_range
    return thumbnail_png(ds.values[where[sample_id]], value_range)


def explanation_images(sample_ids: list[str], runs: dict[str, str] | None = None) -> dict[str, Path]:
    """The explain flow's five-panel PNG of each sample that has one.

    Parameters
    ----------
    sample_ids : the samples wanted
    runs : optional sample id -> the run that flagged it; that run's explanation is preferred,
        else the newest one of the sample (the same ids can be explained under several runs)

    The ``explanations`` table names the PNG by path; only files under the reports folder that
    still exist are returned.
    """
    folder = paths().lake / "explanations"
    if not sample_ids or not folder.is_dir() or not any(folder.glob("*.parquet")):
        return {}
    frame = lake.sql("SELECT run_id, sample_id, image_path FROM explanations ORDER BY created_at")
    wanted = set(map(str, sample_ids))
    runs = runs or {}
    reports = paths().reports.resolve()
    found: dict[str, Path] = {}
    exact: set[str] = set()
    for run_id, sample_id, image_path in zip(frame["run_id"].astype(str), frame["sample_id"].astype(str),
                                             frame["image_path"].astype(str)):
        p = Path(image_path).resolve()
        if sample_id not in wanted or sample_id in exact or not (p.is_file() and p.is_relative_to(reports)):
            continue
        found[sample_id] = p  # later rows (newer runs) win, unless the flagging run's own was found
        if runs.get(sample_id) == run_id:
            exact.add(sample_id)
    return found
