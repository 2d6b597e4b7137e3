"""Readers that turn a data source into a :class:`Dataset`.

Every reader fails with a one-line ``ValueError`` naming the file, column or value at fault.
"""
from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np

from .dataset import Dataset, deterministic_split

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
ID_COLUMNS = ("sample_id", "id")
IMAGE_COLUMNS = ("image", "pixels", "png")


def load_digits(test_fraction: float = 0.25, limit: int | None = None) -> Dataset:
    """sklearn's 8x8 digits (1,797 images, shipped with scikit-learn), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    ids = np.array([f"digits-{i:05d}" for i in range(len(x))], dtype=object)
    ds = Dataset(
        "digits", ids, x, bunch.target.astype(np.int64), deterministic_split(ids, test_fraction),
        [str(c) for c in range(10)],
    )
    return _limit(ds, limit)


def _read_idx(path: Path, kind: str) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found (Fashion-MNIST IDX file)") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read IDX file ({exc})") from None
    magic = struct.unpack(">I", raw[:4])[0]
    if kind == "images":
        if magic != 2051:
            raise ValueError(f"{path}: not an IDX image file (magic {magic}, expected 2051)")
        n, h, w = struct.unpack(">III", raw[4:16])
        return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, h, w)
    if magic != 2049:
        raise ValueError(f"{path}: not an IDX label file (magic {magic}, expected 2049)")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


def _find(directory: Path, stem: str) -> Path:
    for suffix in (".gz", ""):
        candidate = directory / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    raise ValueError(f"{directory / stem}[.gz]: file not found (is the Fashion-MNIST path right?)")


def load_fashion_mnist(path: str | Path | None = None, limit: int | None = None) -> Dataset:
    """Fashion-MNIST from its IDX files.

    ``limit`` caps the training split (a stratified-by-position prefix is avoided: a seeded
    permutation picks the subset) and the test split to ``min(10000, max(1000, limit // 2))``.
    """
    directory = Path(path) if path else FASHION_MNIST_DIR
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"), "images")
        labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"), "labels")
        if len(images) != len(labels):
            raise ValueError(f"{directory}: {prefix} has {len(images)} images but {len(labels)} labels")
        keep = np.arange(len(images))
        if limit is not None:
            cap = limit if split == "train" else min(len(images), max(1000, limit // 2))
            if cap < len(images):
                keep = np.sort(np.random.default_rng(0).permutation(len(images))[:cap])
        ids = np.array([f"fmnist-{prefix}-{i:05d}" for i in keep], dtype=object)
        parts[split] = (ids, images[keep], labels[keep])
    ids = np.concatenate([parts["train"][0], parts["test"][0]])
    x = (np.concatenate([parts["train"][1], parts["test"][1]]).astype(np.float32) / 255.0)[:, None]
    y = np.concatenate([parts["train"][2], parts["test"][2]])
    split = np.array(["train"] * len(parts["train"][0]) + ["test"] * len(parts["test"][0]), dtype=object)
    return Dataset("fashion-mnist", ids, x, y, split, list(FASHION_MNIST_CLASSES))


def _decode_png(blob: bytes, row: int, path: Path) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
    except Exception as exc:  # PIL raises many types for corrupt bytes
        raise ValueError(f"{path}: row {row}: image bytes are not a readable PNG ({exc.__class__.__name__})") from None
    arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def load_parquet(path: str | Path, test_fraction: float = 0.2, limit: int | None = None,
                 name: str | None = None) -> Dataset:
    """A user's Parquet file: one row per sample.

    Columns: an id (``sample_id`` or ``id``), ``label`` (int, or strings mapped to sorted class
    names), optional ``split`` (train/test; otherwise a hash of the id decides), and the image in
    ``image``/``pixels`` as a fixed-shape (nested) array of uint8 0..255 or floats in [0, 1], or as
    encoded PNG bytes. Nothing is clipped: out-of-range values are left for validation to reject.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc.__class__.__name__})") from None
    cols = table.column_names
    id_col = next((c for c in ID_COLUMNS if c in cols), None)
    img_col = next((c for c in IMAGE_COLUMNS if c in cols), None)
    if id_col is None:
        raise ValueError(f"{path}: no id column (expected one of {list(ID_COLUMNS)}; found {cols})")
    if "label" not in cols:
        raise ValueError(f"{path}: no 'label' column (found {cols})")
    if img_col is None:
        raise ValueError(f"{path}: no image column (expected one of {list(IMAGE_COLUMNS)}; found {cols})")
    n = table.num_rows
    if n == 0:
        raise ValueError(f"{path}: no rows")

    ids = table.column(id_col).to_pylist()
    if any(i is None for i in ids):
        raise ValueError(f"{path}: column '{id_col}' has null ids (row {ids.index(None)})")
    ids = np.array([str(i) for i in ids], dtype=object)

    raw_labels = table.column("label").to_pylist()
    if any(v is None for v in raw_labels):
        raise ValueError(f"{path}: column 'label' has nulls (row {raw_labels.index(None)})")
    if all(isinstance(v, (int, np.integer)) for v in raw_labels):
        labels = np.asarray(raw_labels, dtype=np.int64)
        k = int(table.schema.metadata.get(b"num_classes", b"0")) if table.schema.metadata else 0
        num_classes = max(k, int(labels.max()) + 1) if labels.min() >= 0 else 0
        class_names = [str(c) for c in range(num_classes)]
    else:
        class_names = sorted({str(v) for v in raw_labels})
        lookup = {c: i for i, c in enumerate(class_names)}
        labels = np.array([lookup[str(v)] for v in raw_labels], dtype=np.int64)

    column = table.column(img_col)
    values = column.to_pylist()
    images = []
    for row, v in enumerate(values):
        if v is None:
            raise ValueError(f"{path}: column '{img_col}' row {row} (id {ids[row]}) is null")
        if isinstance(v, (bytes, bytearray)):
            images.append(_decode_png(bytes(v), row, path).astype(np.float32) / 255.0)
        else:
            arr = np.asarray(v, dtype=np.float32)
            images.append(arr)
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise ValueError(f"{path}: column '{img_col}' holds images of different shapes {sorted(shapes)[:3]}")
    x = np.stack(images)
    if x.ndim == 2:  # flat vectors: make them one-channel rows
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    is_png = isinstance(values[0], (bytes, bytearray))
    if not is_png and "int" in str(column.type):
        x = x / 255.0  # integer pixels are 0..255; floats must already be in [0, 1]
    if "split" in cols:
        split = np.array([str(s) for s in table.column("split").to_pylist()], dtype=object)
        bad = sorted(set(split) - {"train", "test"})
        if bad:
            raise ValueError(f"{path}: column 'split' has values {bad}; expected 'train' or 'test'")
    else:
        split = deterministic_split(ids, test_fraction)
    ds = Dataset(name or path.stem, ids, x, labels, split, class_names)
    return _limit(ds, limit)


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    keep = np.zeros(len(ds), dtype=bool)
    keep[np.sort(np.random.default_rng(0).permutation(len(ds))[:limit])] = True
    return ds.subset(keep)


def load_source(dataset: str, path: str | None = None, limit: int | None = None) -> Dataset:
    """Dispatch on the CLI's ``--dataset`` name."""
    if dataset == "digits":
        return load_digits(limit=limit)
    if dataset == "fashion-mnist":
        return load_fashion_mnist(path, limit=limit)
    if dataset == "parquet":
        if not path:
            raise ValueError("--dataset parquet needs --path FILE.parquet")
        return load_parquet(path, limit=limit)
    if dataset == "anomaly":
        from .synthetic import make_anomaly_series
        return make_anomaly_series(n=limit or 6000)
    raise ValueError(f"unknown dataset {dataset!r}; choose digits, fashion-mnist, parquet or anomaly")
