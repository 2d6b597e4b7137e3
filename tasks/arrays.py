"""Sample arrays as memory-mapped ``.npy`` artifacts (the edge where :class:`Rows` touch disk).

A batch's samples are written once, as they came (uint8 pixels, float32 features), to
``artifacts/arrays/<key>.npy`` (temp file, then rename), and read back through ``mmap`` one
batch at a time: training, the out-of-sample folds and the cheap scorers then hold one batch as
float32, not the set. The mapped pages a reader touched are dropped from its resident set every
:data:`~winnow.tasks.models.rows.RELEASE_EVERY_BYTES` (``madvise(MADV_DONTNEED)``; the kernel's page
cache keeps them), so the process's memory does not grow with the file either.
"""
from __future__ import annotations

import mmap
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .models.rows import Rows
from .settings import paths


def array_path(key: str) -> Path:
    return paths().artifacts / "arrays" / f"{key}.npy"


def write_npy(key: str, shape: tuple[int, ...], dtype, blocks: Iterable[np.ndarray]) -> Path:
    """Write ``blocks`` (consecutive row blocks, together ``shape``) to ``arrays/<key>.npy`` once.

    Parameters
    ----------
    key : str
        Content key of what the array holds (an existing file is kept: same key, same rows).
    shape : tuple, (n, *sample_shape)
    dtype : numpy dtype of the stored array
    blocks : iterable of np.ndarray, each (m_i, *sample_shape), sum of m_i = n
    """
    dest = array_path(key)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
        at = 0
        for block in blocks:
            block = np.asarray(block)
            if block.shape[1:] != tuple(shape[1:]):
                raise ValueError(f"{dest.name}: block of shape {block.shape} does not fit rows of shape {shape[1:]}")
            if at + len(block) > shape[0]:
                raise ValueError(f"{dest.name}: blocks hold more than the declared {shape[0]} rows")
            out[at:at + len(block)] = block
            at += len(block)
        if at != shape[0]:
            raise ValueError(f"{dest.name}: blocks hold {at} rows, declared {shape[0]}")
        out.flush()
        del out
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def open_rows(key: str, scale: float | None = None) -> Rows:
    """The array ``arrays/<key>.npy`` as streaming :class:`Rows` (read-only memory map).

    ``scale`` multiplies each float32 batch (e.g. 1/255 for uint8 pixels).
    """
    p = array_path(key)
    if not p.exists():
        raise FileNotFoundError(f"{p}: array artifact missing (rerun with --refresh)")
    with open(p, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
        if fortran:
            raise ValueError(f"{p}: Fortran-ordered arrays are not supported")
        if int(np.prod(shape)) == 0:
            return Rows(np.zeros(shape, dtype=dtype), scale=scale)
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    array = np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset)

    def release() -> None:
        mm.madvise(mmap.MADV_DONTNEED)

    return Rows(array, scale=scale, release=release)
