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
