"""Batches on disk: a :class:`Dataset` <-> an Arrow table, staged before validation and
committed to the lake's ``samples`` table after it.

A batch is named by its content hash, so the same content ingested twice maps to the same part.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from . import lake
from .data.dataset import Dataset
from .settings import paths


def _fixed_binary(values: np.ndarray) -> pa.Array:
    """Rows of a C-contiguous array as one fixed-size binary array (zero-copy, no Python loop)."""
    flat = np.ascontiguousarray(values.reshape(len(values), -1))
    width = flat.shape[1] * flat.itemsize
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(flat), [None, pa.py_buffer(flat)])


def from_binary(column, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_fixed_binary`; also reads older parts whose column is variable binary."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    width = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if pa.types.is_fixed_size_binary(arr.type):
        data = np.frombuffer(arr.buffers()[1], dtype=np.uint8, count=n * width, offset=arr.offset * width)
    else:  # variable binary (parts written before the fixed-size column)
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return data.view(dtype).reshape((n, *shape))


def _columns(ds: Dataset, batch_id: str) -> dict[str, pa.Array]:
    """Every column but the values (``pixels``, ``pred_probs``), in the part's column order."""
    n = len(ds)
    cols = {
        "sample_id": pa.array(ds.sample_id.astype(str), type=pa.string()),
        "batch_id": pa.repeat(pa.scalar(batch_id, pa.string()), n),
        "dataset": pa.repeat(pa.scalar(ds.name, pa.string()), n),
        "split": pa.array(ds.split.astype(str), type=pa.string()),
        "label": pa.array(ds.label, type=pa.int64()),
        "class_name": pa.array(_class_names(ds), type=pa.string()),
    }
    if ds.raw_label is not None:
        cols["label_raw"] = pa.array(ds.raw_label.astype(str), type=pa.string())
    return cols


def _metadata(ds: Dataset) -> dict[str, str]:
    meta = {"shape": list(ds.sample_shape), "dtype": np.dtype(ds.values.dtype).newbyteorder("<").str,
            "class_names": ds.class_names, "value_range": list(ds.value_range), "name": ds.name, "kind": ds.kind,
            "source": {k: v for k, v in ds.meta.items() if isinstance(v, (str, int, float, list, dict))}}
    return {"winnow": json.dumps(meta, default=str)}


def _with_values(cols: dict, values: np.ndarray, pred_probs: np.ndarray | None, metadata: dict) -> pa.Table:
    cols = dict(cols)
    if values.size:
        cols["pixels"] = _fixed_binary(values)
    if pred_probs is not None:
        cols["pred_probs"] = _fixed_binary(np.asarray(pred_probs, dtype="<f8"))
    return pa.table(cols).replace_schema_metadata(metadata)


def to_table(ds: Dataset, batch_id: str) -> pa.Table:
    return _with_values(_columns(ds, batch_id), ds.values, ds.pred_probs, _metadata(ds))


def write_table(ds: Dataset, batch_id: str, dest: Path) -> Path:
    """Write ``to_table(ds, batch_id)`` to ``dest`` (atomically) a block of rows at a time, one
    row group per block: a memory-mapped ``ds.values`` is never in memory whole."""
    from .data.blocks import row_blocks

    cols, metadata = _columns(ds, batch_id), _metadata(ds)
    if not len(ds) or ds.values.size == 0:  # nothing large: one table, as before
        return lake.atomic_write_parquet(to_table(ds, batch_id), dest)

    def parts():
        at = 0
        for block in row_blocks(ds.values):
            m = len(block)
            probs = None if ds.pred_probs is None else ds.pred_probs[at:at + m]
            yield _with_values({c: a.slice(at, m) for c, a in cols.items()}, block, probs, metadata)
            at += m

    return lake.atomic_write_parquet_parts(parts(), dest)


def _class_names(ds: Dataset) -> np.ndarray:
    """Each row's class name, or its raw label where that is not in the class set (one Python
    step per unknown row, not per row)."""
    known = (ds.label >= 0) & (ds.label < ds.num_classes)
    out = np.empty(len(ds), dtype=object)
    out[known] = np.asarray(list(ds.class_names) + [""], dtype=object)[ds.label[known]]
    raw = ds.raw_label if ds.raw_label is not None else ds.label.astype(str)
    out[~known] = [str(r) for r in np.asarray(raw, dtype=object)[~known]]
    return out


def from_table(table: pa.Table) -> Dataset:
    meta = json.loads(table.schema.metadata[b"winnow"])
    shape = tuple(meta["shape"])
    n = table.num_rows
    dtype = meta.get("dtype", "<f4")  # parts before stored dtypes held float32
    if "pixels" in table.column_names:
        values = from_binary(table.column("pixels"), dtype, shape)
    else:
        values = np.zeros((n, *shape), dtype=dtype)
    probs = (from_binary(table.column("pred_probs"), "<f8", (len(meta["class_names"]),))
             if "pred_probs" in table.column_names else None)
    raw = (np.asarray(table.column("label_raw").to_numpy(zero_copy_only=False), dtype=object)
           if "label_raw" in table.column_names else None)
    value_range = tuple(meta["value_range"])
    return Dataset(
        meta["name"],
        np.asarray(table.column("sample_id").to_numpy(zero_copy_only=False), dtype=object),
        values,
        np.asarray(table.column("label").to_numpy(), dtype=np.int64),
        np.asarray(table.column("split").to_numpy(zero_copy_only=False), dtype=object),
        list(meta["class_names"]),
        value_range,
        meta=dict(meta.get("source") or {}),
        pred_probs=probs,
        kind=meta.get("kind", ""),
        raw_label=raw,
    )


def staging_path(batch_id: str) -> Path:
    return paths().artifacts / "staging" / f"{batch_id}.parquet"


def _write_once(ds: Dataset, path_of) -> str:
    """Write ``ds`` to ``path_of(content hash)`` unless it is there; return the hash."""
    key = ds.content_hash()
    dest = path_of(key)
    if not (dest.exists() and lake.is_readable(dest)):  # a truncated copy is rewritten
        write_table(ds, key, dest)
    return key


def stage(ds: Dataset) -> str:
    """Write the batch to staging (not the lake) and return its batch id (content hash)."""
    return _write_once(ds, staging_path)


def load_staged(batch_id: str, values: bool = True) -> Dataset:
    """The staged batch; ``values=False`` leaves the values unread (zeros the kernel never backs,
    see :func:`from_table`): read them a row group at a time with :func:`value_blocks`."""
    p = staging_path(batch_id)
    if not p.exists():
        raise FileNotFoundError(f"{p}: staged batch missing (rerun with --refresh)")
    return _read_batch(p, values)


def _read_batch(p: Path, values: bool) -> Dataset:
    """A batch part as a Dataset; without its ``pixels`` column unless ``values``."""
    if values:
        return from_table(lake.read_parquet(p))
    names = lake.parquet_schema(p).names
    return from_table(lake.read_parquet(p, columns=[c for c in names if c != "pixels"]))


def has_values(path: Path) -> bool:
    """Whether a batch part has a values column (``pixels``; pred_probs-only batches have none)."""
    return "pixels" in lake.parquet_schema(path).names


def value_blocks(path: Path) -> Iterator[np.ndarray]:
    """The values of a batch part a row group at a time (page checksums verified), each as
    stored, shape (m, *sample_shape); nothing when the part has no values column."""
    schema = lake.parquet_schema(path)
    if "pixels" not in schema.names:
        return
    meta = json.loads(schema.metadata[b"winnow"])
    dtype, shape = meta.get("dtype", "<f4"), tuple(meta["shape"])
    for batch in lake.iter_parquet(path, columns=["pixels"]):
        yield from_binary(batch.column(0), dtype, shape)


def commit(batch_id: str) -> Path:
    """Move a validated batch into ``lake/samples`` (atomic; a second commit adds nothing)."""
    dest = lake.part_path("samples", batch_id)
    if dest.exists() and lake.is_readable(dest):
        return dest
    # Through a private temp file (two runs may commit the same batch at once); the staged
    # copy's page checksums are verified on the way (a row group at a time), its bytes copied.
    return lake.verified_copy(staging_path(batch_id), dest)


def pool_path(pool_id: str) -> Path:
    return paths().artifacts / "pools" / f"{pool_id}.parquet"


def stage_pool(ds: Dataset) -> str:
    """Write a training pool (a union of committed batches, assembled by the operate flow) to the
    artifacts and return its id (content hash). Pools never enter the lake's ``samples`` table."""
    return _write_once(ds, pool_path)


def load_training_set(batch_id: str) -> Dataset:
    """A committed batch, or a pool staged by :func:`stage_pool` (what the training stages read)."""
    p = pool_path(batch_id)
    return from_table(lake.read_parquet(p)) if p.exists() else load_committed(batch_id)


def load_committed(batch_id: str, values: bool = True) -> Dataset:
    """A committed batch; ``values=False`` leaves the values unread, as :func:`load_staged` does."""
    p = lake.part_path("samples", batch_id)
    if not p.exists():
        raise FileNotFoundError(f"{p}: batch {batch_id} is not in the lake")
    return _read_batch(p, values)
