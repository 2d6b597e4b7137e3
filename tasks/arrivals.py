"""Arriving batches: what lands in ``data/incoming/``, read into a :class:`Dataset`, and the claim
that makes a batch be processed once however often it arrives.

An arrival is either a Parquet file (the format of ``--dataset parquet``) or a folder of images
with a ``labels.csv`` (columns ``file`` and ``label``; optional ``id`` and ``split``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .data.dataset import Dataset, deterministic_split
from .data.sources import load_parquet
from .settings import paths

LABEL_FILE = "labels.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


def is_arrival(path: Path) -> bool:
    """Whether ``path`` looks like a complete batch (temp files and half-copied folders are not)."""
    if path.name.startswith(".") or path.name.endswith((".tmp", ".part")):
        return False
    if path.is_dir():
        return (path / LABEL_FILE).is_file()
    return path.suffix == ".parquet" and path.is_file()


def load_folder(path: Path, name: str, test_fraction: float = 0.2) -> Dataset:
    """A folder of images plus ``labels.csv`` (``file``, ``label``[, ``id``][, ``split``])."""
    import pandas as pd
    from PIL import Image

    csv = path / LABEL_FILE
    if not csv.is_file():
        raise ValueError(f"{path}: no {LABEL_FILE} (a folder batch needs one: columns file,label)")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    for col in ("file", "label"):
        if col not in table.columns:
            raise ValueError(f"{csv}: no '{col}' column (found {list(table.columns)})")
    if table.empty:
        raise ValueError(f"{csv}: no rows")
    images = []
    for row, f in enumerate(table["file"]):
        img_path = path / f
        if not img_path.is_file():
            raise ValueError(f"{csv}: row {row}: image {f!r} not found in {path}")
        try:
            with Image.open(img_path) as img:
                images.append(np.asarray(img.convert("L"), dtype=np.float32)[None] / 255.0)
        except OSError as exc:
            raise ValueError(f"{img_path}: not a readable image ({exc.__class__.__name__})") from None
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images have different shapes {sorted(shapes)[:3]}")
    ids = np.array(table["id"] if "id" in table.columns else [Path(f).stem for f in table["file"]], dtype=object)
    raw = list(table["label"])
    if all(v.strip().lstrip("-").isdigit() for v in raw):
        labels = np.array([int(v) for v in raw], dtype=np.int64)
        class_names = [str(c) for c in range(max(int(labels.max()) + 1, 0))]
    else:
        class_names = sorted(set(raw))
        labels = np.array([class_names.index(v) for v in raw], dtype=np.int64)
    split = (np.array(table["split"], dtype=object) if "split" in table.columns
             else deterministic_split(ids, test_fraction))
    return Dataset(name, ids, np.stack(images), labels, split, class_names)


def load_arrival(path: str | Path, name: str, class_names: list[str] | None = None) -> Dataset:
    """Read an arriving batch and express its labels in the accepted class set.

    Parameters
    ----------
    path : str or Path
        A ``.parquet`` file or a folder with ``labels.csv``.
    name : str
        The stream name every arriving batch shares (the ``dataset`` column of the lake), so the
        batch id (content hash) does not depend on the file name: the same data arriving under
        two names is one batch.
    class_names : list of str, optional
        The accepted data's classes. Labels are mapped onto them by name; a class the accepted
        data does not know gets an index past the end, which the batch gate then rejects.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    if p.is_dir():
        ds = load_folder(p, name)
    elif p.suffix == ".parquet":
        ds = load_parquet(p, name=name)
    else:
        raise ValueError(f"{p}: not a batch (expected a .parquet file or a folder with {LABEL_FILE})")
    if class_names is None:
        return ds
    known = {c: i for i, c in enumerate(class_names)}
    extra = [c for c in ds.class_names if c not in known]
    names = list(class_names) + extra
    index = {c: i for i, c in enumerate(names)}
    labels = np.array([index[ds.class_names[i]] for i in ds.label], dtype=np.int64)
    return Dataset(ds.name, ds.sample_id, ds.x, labels, ds.split, names, ds.value_range)


# ---------------------------------------------------------------- processed once


def claim_path(batch_id: str) -> Path:
    return paths().artifacts / "claims" / f"{batch_id}.json"


def claim(batch_id: str, source: str, flow_run_id: str) -> dict | None:
    """Claim a batch for processing; returns ``None`` if it was claimed before (by any process).

    ``O_CREAT | O_EXCL`` makes the claim atomic, so two deliveries of one batch racing each other
    still process it once.
    """
    dest = claim_path(batch_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    record = {"batch_id": batch_id, "source": str(source), "flow_run_id": flow_run_id, "claimed_at": time.time()}
    try:
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    return record


def claimed_by(batch_id: str) -> dict:
    try:
        return json.loads(claim_path(batch_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def release(batch_id: str) -> None:
    """Give a claim back (the run crashed before a verdict, so a redelivery should retry)."""
    claim_path(batch_id).unlink(missing_ok=True)
