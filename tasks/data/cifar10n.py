"""CIFAR-10N: CIFAR-10 images with real human label noise (Wei et al., ICLR 2022).

The shared development file (``cifar10n-dev.parquet``: 10,000 training images with every CIFAR-10N
label set as a column, plus 2,000 clean test images) is read with one label set as the given
labels. The original CIFAR-10 label travels in ``Dataset.meta["clean_label"]`` for the
*measurement* only: no stage that scores samples reads ``meta``, and the audit path never sees it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .dataset import Dataset

LABEL_SETS = ("random_label1", "aggre_label", "worse_label", "random_label2", "random_label3")
FILE_NAME = "cifar10n-dev.parquet"
#: environment variable that points at the file (or at the folder holding it)
PATH_VARIABLE = "WINNOW_CIFAR10N"


def default_path(start: str | Path | None = None) -> Path | None:
    """Where the shared file is: ``$WINNOW_CIFAR10N``, else ``shared/data/`` beside any parent
    folder of ``start`` (default: this module's checkout, then the working directory), else None."""
    env = os.environ.get(PATH_VARIABLE)
    if env:
        p = Path(env)
        return p / FILE_NAME if p.is_dir() else p
    roots = [Path(start)] if start else [Path(__file__).resolve(), Path.cwd().resolve()]
    for root in roots:
        for parent in [root, *root.parents]:
            candidate = parent / "shared" / "data" / FILE_NAME
            if candidate.is_file():
                return candidate
    return None


def _decode(blob: bytes, row: int, path: Path) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
    except Exception as exc:  # PIL raises many types for corrupt bytes
        raise ValueError(f"{path}: row {row}: column 'image' is not a readable PNG ({exc.__class__.__name__})") from None
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return np.moveaxis(arr, -1, 0)


def load_cifar10n(path: str | Path | None = None, label_set: str = "random_label1", limit: int | None = None,
                  seed: int = 0) -> Dataset:
    """The CIFAR-10N file with ``label_set`` as the given labels.

    Parameters
    ----------
    path : the Parquet file (default: :func:`default_path`)
    label_set : one of :data:`LABEL_SETS` (``clean_label`` is refused: it is the truth)
    limit : cap on the training split (a seeded subset); the test split is kept whole
    seed : seed of that subset

    Returns
    -------
    Dataset
        x (n, 3, 32, 32) float32 in [0, 1]; ``label`` = the human labels on the training split
        and the clean labels on the test split; ``meta["clean_label"]`` (n,) int64 and
        ``meta["label_set"]``.
    """
    import pyarrow.parquet as pq

    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set {label_set!r} is not a CIFAR-10N human label set; choose one of {', '.join(LABEL_SETS)}")
    resolved = Path(path) if path else default_path()
    if resolved is None or not resolved.is_file():
        raise ValueError(f"{resolved or FILE_NAME}: CIFAR-10N file not found (set ${PATH_VARIABLE} or --path)")
    try:
        table = pq.read_table(resolved)
    except Exception as exc:
        raise ValueError(f"{resolved}: not a readable Parquet file ({exc.__class__.__name__})") from None
    for col in ("sample_id", "image", "split", "clean_label", label_set):
        if col not in table.column_names:
            raise ValueError(f"{resolved}: no column {col!r} (found {table.column_names})")
    meta = table.schema.metadata or {}
    class_names = meta.get(b"class_names", b"").decode().split(",")
    if len(class_names) != 10:
        raise ValueError(f"{resolved}: metadata 'class_names' must name 10 classes, got {class_names}")
    split = np.array(table.column("split").to_pylist(), dtype=object)
    bad = sorted(set(split) - {"train", "test"})
    if bad:
        raise ValueError(f"{resolved}: column 'split' has values {bad}; expected 'train' or 'test'")
    keep = np.ones(len(split), dtype=bool)
    train_rows = np.flatnonzero(split == "train")
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        if limit < len(train_rows):
            keep[train_rows] = False
            keep[np.random.default_rng(seed).choice(train_rows, size=limit, replace=False)] = True
    rows = np.flatnonzero(keep)
    table = table.take(rows)
    split = split[rows]
    clean = np.asarray(table.column("clean_label").to_numpy(), dtype=np.int64)
    given = table.column(label_set).to_numpy(zero_copy_only=False)
    # test rows carry the clean label (the test split is never noised)
    labels = np.where(split == "train", np.nan_to_num(given.astype(np.float64), nan=-1), clean).astype(np.int64)
    for name, values in (("clean_label", clean), (label_set, labels)):
        if values.min() < 0 or values.max() > 9:
            raise ValueError(f"{resolved}: column {name!r} has labels outside [0, 9] (range {values.min()}..{values.max()})")
    images = table.column("image").to_pylist()
    x = np.stack([_decode(blob, int(r), resolved) for r, blob in zip(rows, images)]).astype(np.float32) / 255.0
    ids = np.array(table.column("sample_id").to_pylist(), dtype=object)
    return Dataset(f"cifar10n-{label_set}", ids, x, labels, split, class_names,
                   meta={"clean_label": clean, "label_set": label_set, "path": str(resolved)})


#: the benchmark's names for the human label sets as noise kinds (``--noise human:aggre_label``)
HUMAN_NOISES = tuple(f"human:{s}" for s in LABEL_SETS[:3])
DATASET = "cifar10n-dev"


def load_cifar10n_dev(path: str | Path | None = None, limit: int | None = None) -> Dataset:
    """The file as a benchmark data set: ``label`` = CIFAR-10's own (clean) label on every row.

    The human labels come back as *noise* (:func:`human_labels`, the ``human:<label set>`` noise
    kinds), so the benchmark grades detectors against the truth exactly as it does injected noise.
    """
    ds = load_cifar10n(path, "random_label1", limit)
    clean = ds.meta["clean_label"]
    return Dataset(DATASET, ds.sample_id, ds.x, clean.copy(), ds.split, ds.class_names,
                   meta={"path": ds.meta["path"]})


def human_labels(sample_ids, kind: str, path: str | Path | None = None) -> np.ndarray:
    """The human labels of ``kind`` (``human:<label set>``) for these sample ids.

    Returns
    -------
    np.ndarray, shape (len(sample_ids),), int64
    """
    import pyarrow.parquet as pq

    label_set = kind.removeprefix("human:")
    if not kind.startswith("human:") or label_set not in LABEL_SETS:
        raise ValueError(f"unknown human noise {kind!r}; choose one of {', '.join(f'human:{s}' for s in LABEL_SETS)}")
    resolved = Path(path) if path else default_path()
    if resolved is None or not resolved.is_file():
        raise ValueError(f"{resolved or FILE_NAME}: CIFAR-10N file not found (set ${PATH_VARIABLE})")
    table = pq.read_table(resolved, columns=["sample_id", label_set])
    lookup = dict(zip(table.column("sample_id").to_pylist(), table.column(label_set).to_pylist()))
    missing = [s for s in sample_ids if str(s) not in lookup]
    if missing:
        raise ValueError(f"{resolved}: sample id {missing[0]!r} is not in the file ({len(missing)} missing)")
    return np.array([lookup[str(s)] for s in sample_ids], dtype=np.int64)
