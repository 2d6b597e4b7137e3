"""Samples read a batch at a time, so training and scoring hold one batch as float32, not the set.

A :class:`Rows` wraps the stored array as it came — a float32 tensor in memory, a uint8 or
float32 numpy array, or a memory-mapped ``.npy`` file (:func:`winnow.tasks.arrays.open_rows`) —
and hands out float32 batches. Views (:meth:`Rows.subset`) are index maps, not copies, so the K
out-of-sample folds and the retrains read the same file.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

#: a memory-mapped source drops its pages from the process after about this many bytes were
#: mapped in: the page cache keeps them, but they stop counting in the process's resident set
RELEASE_EVERY_BYTES = 64 << 20
#: what reading one row maps in at least: the kernel maps up to 16 pages around a faulting one
#: ("fault-around"), so a row of 2 KiB read at random costs 64 KiB of resident memory
MAPPED_PER_ROW = 64 << 10


class Rows:
    """An (n, *sample_shape) array read a batch at a time as float32.

    Parameters
    ----------
    array : torch.Tensor, np.ndarray or a row file, shape (N, *sample_shape)
        Any real dtype. A tensor is used as is (converted to float32 once, as before); a numpy
        array (a ``np.memmap`` included) or a file read by rows (anything with ``shape``,
        ``dtype``, ``row_bytes`` and ``file[positions] -> np.ndarray``:
        :class:`winnow.tasks.arrays.RowFile`) is read per batch and converted per batch.
    index : np.ndarray, shape (n,), int64, optional
        Which rows of ``array`` this view holds, in order (default: all).
    divisor : float, optional
        Divides each batch after the float32 cast (255 for uint8 pixels: the same arithmetic as
        ``Dataset.x``, so a streamed batch equals the in-memory rows bit for bit).
    release : callable, optional
        Called after about :data:`RELEASE_EVERY_BYTES` were read (drops mapped pages).
    """

    def __init__(self, array, index: np.ndarray | None = None, divisor: float | None = None,
                 release: Callable[[], None] | None = None):
        if isinstance(array, Rows):
            raise ValueError("Rows(array): array is already a Rows; use .subset() for a view")
        if isinstance(array, torch.Tensor):
            array = array if array.dtype == torch.float32 and divisor is None else array.to(torch.float32)
            if divisor is not None:
                array = array / divisor
                divisor = None
        elif not isinstance(array, np.ndarray) and not hasattr(array, "row_bytes"):
            array = torch.as_tensor(np.asarray(array), dtype=torch.float32)
        elif array.dtype.kind not in "fiub":
            raise ValueError(f"Rows: array dtype {array.dtype} is not numeric")
        if array.ndim < 1:
            raise ValueError(f"Rows: array must have a sample axis, got shape {tuple(array.shape)}")
        if index is not None:
            index = np.asarray(index, dtype=np.int64)
            if index.ndim != 1 or (len(index) and (index.min() < 0 or index.max() >= len(array))):
                raise ValueError(f"Rows: index must be 1-D positions in [0, {len(array)})")
        self.array, self.index, self.divisor, self.release = array, index, divisor, release
        self._read = 0

    # ------------------------------------------------------------ shape

    def __len__(self) -> int:
        return len(self.array) if self.index is None else len(self.index)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    @property
    def in_memory(self) -> bool:
        """True when the rows are a float32 tensor already (nothing to stream)."""
        return isinstance(self.array, torch.Tensor)

    # ------------------------------------------------------------ reading

    def _positions(self, idx) -> np.ndarray | torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu()
            if self.in_memory:
                return idx if self.index is None else torch.from_numpy(self.index)[idx]
            idx = idx.numpy()
        idx = np.asarray(idx, dtype=np.int64)
        return idx if self.index is None else self.index[idx]

    def take(self, idx) -> torch.Tensor:
        """Rows ``idx`` (positions in this view, in the order given), float32, shape (len(idx), *sample_shape)."""
        pos = self._positions(idx)
        if self.in_memory:
            return self.array[pos if isinstance(pos, torch.Tensor) else torch.from_numpy(pos)]
        block = np.asarray(self.array[pos], dtype=np.float32)
        if self.divisor is not None:
            block /= np.float32(self.divisor)
        if self.release is not None:
            row_bytes = block.nbytes // max(1, len(block))
            self._read += len(block) * max(row_bytes, MAPPED_PER_ROW)
            if self._read >= RELEASE_EVERY_BYTES:
                self.release()
                self._read = 0
        return torch.from_numpy(block)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every row in order, ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        if self.in_memory and self.index is None:
            for start in range(0, n, batch_size):
                yield self.array[start:start + batch_size]
            return
        for start in range(0, n, batch_size):
            yield self.take(np.arange(start, min(n, start + batch_size)))

    def subset(self, positions) -> "Rows":
        """A view of rows ``positions`` (ints in this view, or a boolean mask of length n); no copy."""
        positions = np.asarray(positions)
        if positions.dtype == bool:
            if len(positions) != len(self):
                raise ValueError(f"Rows.subset: mask has {len(positions)} entries for {len(self)} rows")
            positions = np.flatnonzero(positions)
        positions = positions.astype(np.int64)
        index = positions if self.index is None else self.index[positions]
        view = Rows.__new__(Rows)
        view.array, view.index, view.divisor, view.release, view._read = self.array, index, self.divisor, self.release, 0
        if len(index) and (index.min() < 0 or index.max() >= len(self.array)):
            raise ValueError(f"Rows.subset: positions out of range [0, {len(self)})")
        return view

    def materialize(self) -> torch.Tensor:
        """The whole view as one float32 tensor (for the scorers that need every row at once)."""
        if self.in_memory and self.index is None:
            return self.array
        if len(self) == 0:
            return torch.empty((0, *self.sample_shape), dtype=torch.float32)
        return torch.cat(list(self.batches(65536)))


def as_rows(x) -> Rows:
    """``x`` as :class:`Rows` (a Rows is returned as is)."""
    return x if isinstance(x, Rows) else Rows(x)
