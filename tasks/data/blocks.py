"""A large array read a block of rows at a time, so a pass over it (hashing, writing, checking)
holds one block, not the set.

A memory-mapped array (``np.memmap``, an ``.npy`` artifact) counts every page it touched in the
reader's resident set until the pages are dropped: :func:`row_blocks` drops them
(``madvise(MADV_DONTNEED)``; the kernel's page cache keeps them) after each block.
"""
from __future__ import annotations

import mmap
from typing import Iterator

import numpy as np

#: bytes of one block: large enough that per-block overheads vanish, small beside the set
BLOCK_BYTES = 32 << 20


def mmap_of(array: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` an array's memory comes from (through views), or None."""
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return None


def block_rows(values: np.ndarray, block_bytes: int | None = None) -> int:
    """Rows per block of ``values`` (at least 1)."""
    row_bytes = int(np.prod(values.shape[1:], dtype=np.int64)) * values.dtype.itemsize
    return max(1, (block_bytes or BLOCK_BYTES) // max(1, row_bytes))


def row_blocks(values: np.ndarray, rows: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive blocks of ``values`` (views, in order; together every row).

    Parameters
    ----------
    values : np.ndarray, shape (n, ...)
    rows : int, optional
        Rows per block (default: :func:`block_rows`).

    Yields
    ------
    np.ndarray, shape (m, ...), m <= rows
        A view: use it before asking for the next block (a mapped one's pages are dropped then).
    """
    rows = rows or block_rows(values)
    if rows < 1:
        raise ValueError(f"row_blocks: rows must be positive, got {rows}")
    mm = mmap_of(values)
    for start in range(0, len(values), rows):
        yield values[start:start + rows]
        if mm is not None:
            mm.madvise(mmap.MADV_DONTNEED)


def model_inputs(values: np.ndarray) -> np.ndarray:
    """What a model is given for stored values: uint8 pixels scaled to [0, 1] as float32, other
    values as float32 (no copy when they are float32 already). Shape unchanged."""
    if values.dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255.0)
    return np.asarray(values, dtype=np.float32)
