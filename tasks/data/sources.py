"""Readers that turn a data source into a :class:`Dataset`.

Every reader fails with a one-line ``ValueError`` naming the file, column or value at fault.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from .classes import ClassSpec
from .dataset import Dataset, deterministic_split
from .images import load_image_folder
from .tables import load_parquet, parse_shape

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


def load_digits(test_fraction: float = 0.25, limit: int | None = None) -> Dataset:
    """sklearn's 8x8 digits (1,797 images, shipped with scikit-learn), scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]  # 0..16 grey levels: not uint8, kept as [0, 1]
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
    x = np.concatenate([parts["train"][1], parts["test"][1]])[:, None]  # uint8, as the files hold them
    y = np.concatenate([parts["train"][2], parts["test"][2]])
    split = np.array(["train"] * len(parts["train"][0]) + ["test"] * len(parts["test"][0]), dtype=object)
    return Dataset("fashion-mnist", ids, x, y, split, list(FASHION_MNIST_CLASSES))


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    keep = np.zeros(len(ds), dtype=bool)
    keep[np.sort(np.random.default_rng(0).permutation(len(ds))[:limit])] = True
    return ds.subset(keep)


DATASETS = ("digits", "fashion-mnist", "images", "parquet", "anomaly")


def load_source(dataset: str, path: str | None = None, limit: int | None = None, classes: ClassSpec | None = None,
                shape: str | tuple | None = None, image_size: tuple[int, int] | None = None,
                label_column: str = "label", spill_dir: Path | None = None) -> Dataset:
    """Dispatch on the CLI's ``--dataset`` name.

    ``spill_dir`` (parquet, images): a folder the large columns or the decoded pixels are written
    to and mapped from instead of being held in memory (:func:`~.tables.load_parquet`,
    :func:`~.images.load_image_folder`).

    ``classes`` (the declared class set), ``shape`` (``--shape C,H,W`` for flat arrays),
    ``image_size`` (``--image-size H,W``) and ``label_column`` apply to the user's data
    (``images``, ``parquet``).
    """
    classes = classes or ClassSpec()
    if dataset in ("digits", "fashion-mnist", "anomaly", "cifar10n-dev") and (classes.declared or shape or image_size
                                                            or label_column != "label"):
        raise ValueError(f"--classes/--num-classes/--shape/--image-size/--label-column apply to your own data "
                         f"(--dataset images or parquet), not to {dataset}")
    if dataset == "digits":
        return load_digits(limit=limit)
    if dataset == "cifar10n-dev":  # CIFAR-10 labels; the human ones arrive as noise (human:<label set>)
        from .cifar10n import load_cifar10n_dev
        return load_cifar10n_dev(path, limit=limit)
    if dataset == "fashion-mnist":
        return load_fashion_mnist(path, limit=limit)
    if dataset == "images":
        if not path:
            raise ValueError("--dataset images needs --path DIR (class folders, or a folder with labels.csv)")
        return _limit(load_image_folder(path, classes=classes, image_size=image_size, spill_dir=spill_dir), limit)
    if dataset == "parquet":
        if not path:
            raise ValueError("--dataset parquet needs --path FILE.parquet")
        shape = parse_shape(shape) if isinstance(shape, str) else shape
        return _limit(load_parquet(path, classes=classes, shape=shape, image_size=image_size,
                                   label_column=label_column, spill_dir=spill_dir), limit)
    if dataset == "anomaly":
        from .synthetic import make_anomaly_series
        return make_anomaly_series(n=limit or 6000)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
