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

from .data.classes import ClassSpec
from .data.dataset import Dataset
from .data.images import LABEL_FILE, load_image_folder
from .data.tables import load_parquet
from .settings import paths


def is_arrival(path: Path) -> bool:
    """Whether ``path`` looks like a complete batch (temp files and half-copied folders are not)."""
    if path.name.startswith(".") or path.name.endswith((".tmp", ".part")):
        return False
    if path.is_dir():
        return (path / LABEL_FILE).is_file()
    return path.suffix == ".parquet" and path.is_file()


def load_arrival(path: str | Path, name: str, class_names: list[str] | None = None) -> Dataset:
    """Read an arriving batch with the same readers as ``winnow run`` (:mod:`.data.tables`,
    :mod:`.data.images`), its labels expressed in the accepted class set.

    Parameters
    ----------
    path : str or Path
        A ``.parquet`` file or a folder with ``labels.csv`` (or class folders).
    name : str
        The stream name every arriving batch shares (the ``dataset`` column of the lake), so the
        batch id (content hash) does not depend on the file name: the same data arriving under
        two names is one batch.
    class_names : list of str, optional
        The accepted data's classes (the first accepted batch declared them). Labels are mapped
        onto them by name or index; a value outside them keeps its raw text and label -1, which
        the batch gate then refuses, naming it.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    classes = ClassSpec(tuple(class_names)) if class_names else ClassSpec()
    if p.is_dir():
        return load_image_folder(p, name, classes)
    if p.suffix == ".parquet":
        return load_parquet(p, name=name, classes=classes)
    raise ValueError(f"{p}: not a batch (expected a .parquet file or a folder with {LABEL_FILE})")


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
