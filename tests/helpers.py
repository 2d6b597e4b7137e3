"""Small real data sets the tests build (nothing is downloaded)."""
from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_idx(directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


def digits_parquet(path: Path, n: int = 600, png: bool = False, mutate=None) -> Path:
    """Write sklearn digits as a user's Parquet file (uint8 arrays or PNG bytes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images[:n] * 255 / 16).round().astype(np.uint8)
    if png:
        blobs = []
        for im in imgs:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG")
            blobs.append(buf.getvalue())
        image_col = pa.array(blobs, type=pa.binary())
    else:
        image_col = pa.array([im.tolist() for im in imgs], type=pa.list_(pa.list_(pa.uint8())))
    cols = {"id": [f"u{i}" for i in range(n)], "label": d.target[:n].astype(np.int64).tolist(), "image": image_col}
    if mutate:
        cols = mutate(cols)
    pq.write_table(pa.table(cols), path)
    return path


def noisy_digits_context(data_seed: int, epochs: int = 8, train: bool = True, **options):
    """Digits' training split with 20% symmetric noise (``data_seed``), an MLP trained on the noisy labels
    for ``epochs`` (skipped with ``train=False``: no checkpoints) and its scorer context on the CPU.

    Returns ``(ctx, y_noisy, y_true)``; ``options`` go to :class:`TrainingContext` (seed, kfold, ...).
    """
    import torch

    from winnow.tasks.data import noise
    from winnow.tasks.data.sources import load_digits
    from winnow.tasks.models.nets import build_model
    from winnow.tasks.models.training import TrainConfig, train_model
    from winnow.tasks.scorers import TrainingContext

    ds = load_digits()
    in_train = ds.split == "train"
    x, y = ds.x[in_train], ds.label[in_train]
    y_noisy = noise.symmetric(y, 10, 0.2, seed=data_seed)
    factory = lambda: build_model("mlp", x.shape[1:], 10)  # noqa: E731
    config = TrainConfig(epochs=epochs, seed=data_seed)
    checkpoints = train_model(factory, x, y_noisy, config, device=torch.device("cpu")).checkpoints if train else []
    ctx = TrainingContext(x, y_noisy, 10, factory, checkpoints, config, ds.sample_id[in_train],
                          device=torch.device("cpu"), **options)
    return ctx, y_noisy, y
