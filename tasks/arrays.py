"""Sample arrays as memory-mapped ``.npy`` artifacts (the edge where :class:`Rows` touch disk).

A batch's samples are written once, as they came (uint8 pixels, float32 features), to
``artifacts/arrays/<key>.npy`` (temp file, then rename), and read back through ``mmap`` one
batch at a time: training, the out-of-sample folds and the cheap scorers then hold one batch as
float32, not the set. The mapped pages a reader touched are dropped from its resident set every
:data:`~winnow.tasks.models.rows.RELEASE_EVERY_BYTES` (``madvise(MADV_DONTNEED)``; the kernel's page
cache keeps them), so the process's memory does not grow with the file either.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .data.blocks import mmap_of
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
        # plain sequential writes: the bytes go to the page cache, not to this process's memory
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                      "fortran_order": False, "shape": tuple(shape)})
            at = 0
            for block in blocks:
                block = np.ascontiguousarray(block, dtype=np.dtype(dtype))
                if block.shape[1:] != tuple(shape[1:]):
                    raise ValueError(f"{dest.name}: block of shape {block.shape} does not fit rows of shape {shape[1:]}")
                if at + len(block) > shape[0]:
                    raise ValueError(f"{dest.name}: blocks hold more than the declared {shape[0]} rows")
                fh.write(block.data)
                at += len(block)
        if at != shape[0]:
            raise ValueError(f"{dest.name}: blocks hold {at} rows, declared {shape[0]}")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


@contextlib.contextmanager
def spill_folder():
    """A private folder beside the array artifacts for a reader to spill large columns into
    (:func:`winnow.tasks.data.tables.load_parquet`); removed, with whatever is left in it, on exit."""
    root = paths().artifacts / "arrays"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".spill-", suffix=".tmp", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def adopt(values: np.ndarray, key: str) -> Path | None:
    """Make the ``.npy`` file ``values`` maps (a spilled column of a batch) the array artifact
    ``arrays/<key>.npy``, so the batch's values are not written a second time from the lake.

    Only a whole ``.npy`` file holding exactly ``values`` (same shape, dtype, offset) is moved;
    anything else (values in memory, a subset, a reshaped view) is left alone. Returns the
    artifact's path, or None.
    """
    name = getattr(values, "filename", None)
    if not isinstance(values, np.memmap) or not name or not Path(name).name.endswith(".npy"):
        return None
    with open(name, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        offset = fh.tell()
    if fortran or tuple(shape) != values.shape or dtype != values.dtype or values.offset != offset:
        return None
    dest = array_path(key)
    if not dest.exists():
        os.replace(name, dest)  # same folder tree, same file system: a rename
    return dest


def open_mapped(key: str) -> np.ndarray:
    """The array ``arrays/<key>.npy``, read-only and memory-mapped (pages read on use)."""
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
            return np.zeros(shape, dtype=dtype)
    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


class RowFile:
    """The rows of an ``.npy`` file read with ``pread``, not through a memory map.

    Why: a mapped page counts in the reader's resident set, and the kernel maps a whole (large)
    folio around each touched row — measured here, 512 random 2 KiB rows of a 2 GB file mapped
    780 MiB in. Read into a fresh buffer instead, the rows cost their own bytes and the file
    stays in the page cache, outside the process. Indexable like the array it stands for.
    """

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype):
        self.path, self.offset, self.shape, self.dtype = str(path), int(offset), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self):  # a file descriptor does not travel; reopened on first read
        return {**self.__dict__, "_fd": None}

    def __getitem__(self, positions) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(pos) and (pos.min() < 0 or pos.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: rows out of range [0, {self.shape[0]})")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        out = np.empty((len(pos), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(pos), -1).view(np.uint8)
        if len(pos) and pos[-1] - pos[0] == len(pos) - 1 and np.all(np.diff(pos) == 1):  # one run: one read
            os.preadv(self._fd, [flat], self.offset + int(pos[0]) * self.row_bytes)
            return out
        for i, p in enumerate(pos.tolist()):
            os.preadv(self._fd, [flat[i]], self.offset + p * self.row_bytes)
        return out

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def rows_of(values: np.ndarray) -> Rows:
    """A batch's stored values as :class:`Rows` of model inputs: uint8 pixels divided by 255, as
    ``Dataset.x`` does. The values of an ``.npy`` artifact (:func:`open_mapped`) are read from
    the file with ``pread`` (:class:`RowFile`); another memory-mapped array drops its pages from
    memory as it is read."""
    divisor = 255.0 if values.dtype == np.uint8 else None
    if isinstance(values, np.memmap) and isinstance(values.base, mmap.mmap) and values.filename:
        return Rows(RowFile(values.filename, values.offset, values.shape, values.dtype), divisor=divisor)
    mm = mmap_of(values)
    release = (lambda: mm.madvise(mmap.MADV_DONTNEED)) if mm is not None else None
    return Rows(values, divisor=divisor, release=release)


def open_rows(key: str, divisor: float | None = None) -> Rows:
    """``arrays/<key>.npy`` as streaming :class:`Rows` (``divisor``: see :class:`Rows`)."""
    values = open_mapped(key)
    if isinstance(values, np.memmap):
        return Rows(RowFile(values.filename, values.offset, values.shape, values.dtype), divisor=divisor)
    return Rows(values, divisor=divisor)


# ---------------------------------------------------------------- batches with mapped values


def _batch_file(batch_id: str) -> Path:
    from . import batches, lake

    pool = batches.pool_path(batch_id)
    return pool if pool.exists() else lake.part_path("samples", batch_id)


def mapped_training_set(batch_id: str):
    """A committed batch (or pool) as a ``Dataset`` whose values are memory-mapped.

    The first call writes ``arrays/<batch_id>.npy`` from the Parquet file one row group at a
    time; every call reads the small columns (ids, labels, splits) with Arrow and maps the values.
    Nothing reads the values into memory until a stage asks for rows.
    """
    import json

    import pyarrow.parquet as pq

    from . import batches

    p = _batch_file(batch_id)
    if not p.exists():
        raise FileNotFoundError(f"{p}: batch {batch_id} is not in the lake")
    pf = pq.ParquetFile(p, pre_buffer=False)  # pre-buffered, the reader kept every row group read
    meta = json.loads(pf.schema_arrow.metadata[b"winnow"])
    columns = [c for c in pf.schema_arrow.names if c != "pixels"]
    # without the values column, from_table fills them with zeros the kernel never backs
    ds = batches.from_table(pq.read_table(p, columns=columns))
    if "pixels" not in pf.schema_arrow.names or ds.values.size == 0:
        return ds
    shape, dtype = tuple(meta["shape"]), np.dtype(meta.get("dtype", "<f4"))
    write_npy(batch_id, (len(ds), *shape), dtype,
              (batches.from_binary(rb.column(0), dtype.str, shape)
               for rb in pf.iter_batches(batch_size=CHUNK_ROWS, columns=["pixels"])))
    return ds.replace(values=open_mapped(batch_id))


CHUNK_ROWS = 65536


def mapped_subset(ds, mask: np.ndarray, key: str):
    """``ds.subset(mask)`` with the values written to ``arrays/<key>-<mask hash>.npy`` and mapped,
    a chunk at a time, instead of copied into memory. The whole set when ``mask`` is all True."""
    import hashlib

    mask = np.asarray(mask, dtype=bool)
    if len(mask) != len(ds):
        raise ValueError(f"mapped_subset: mask has {len(mask)} entries for {len(ds)} rows")
    if mask.all():
        return ds
    positions = np.flatnonzero(mask)
    if ds.values.size == 0 or mmap_of(ds.values) is None:
        return ds.subset(mask)
    sub_key = f"{key}-{hashlib.sha256(positions.tobytes()).hexdigest()[:12]}"
    mm = mmap_of(ds.values)

    def chunks():
        for i in range(0, len(positions), CHUNK_ROWS):
            yield ds.values[positions[i:i + CHUNK_ROWS]]
            mm.madvise(mmap.MADV_DONTNEED)  # the pages just copied leave this process's memory

    write_npy(sub_key, (len(positions), *ds.sample_shape), ds.values.dtype, chunks())
    light = ds.replace(values=np.zeros((len(ds), 0), dtype=ds.values.dtype))
    return light.subset(mask).replace(values=open_mapped(sub_key))
