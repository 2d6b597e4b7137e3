"""Batches on disk: a :class:`Dataset` <-> an Arrow table, staged before validation and
committed to the lake's ``samples`` table after it.

A batch is named by its content hash, so the same content ingested twice maps to the same part.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import lake
from .data.dataset import Dataset
from .settings import paths


def to_table(ds: Dataset, batch_id: str) -> pa.Table:
    flat = np.ascontiguousarray(ds.x.reshape(len(ds), -1), dtype="<f4")
    pixels = pa.array([row.tobytes() for row in flat], type=pa.binary())
    table = pa.table({
        "sample_id": pa.array(ds.sample_id.astype(str), type=pa.string()),
        "batch_id": pa.array([batch_id] * len(ds), type=pa.string()),
        "dataset": pa.array([ds.name] * len(ds), type=pa.string()),
        "split": pa.array(ds.split.astype(str), type=pa.string()),
        "label": pa.array(ds.label, type=pa.int64()),
        "class_name": pa.array([ds.class_names[i] if 0 <= i < ds.num_classes else str(i) for i in ds.label],
                               type=pa.string()),
        "pixels": pixels,
    })
    meta = {"shape": list(ds.sample_shape), "class_names": ds.class_names,
            "value_range": list(ds.value_range), "name": ds.name}
    return table.replace_schema_metadata({"winnow": json.dumps(meta)})


def from_table(table: pa.Table) -> Dataset:
    meta = json.loads(table.schema.metadata[b"winnow"])
    shape = tuple(meta["shape"])
    blobs = table.column("pixels").to_pylist()
    x = np.frombuffer(b"".join(blobs), dtype="<f4").reshape((len(blobs), *shape)).astype(np.float32)
    return Dataset(
        meta["name"],
        np.array(table.column("sample_id").to_pylist(), dtype=object),
        x,
        np.asarray(table.column("label").to_numpy(), dtype=np.int64),
        np.array(table.column("split").to_pylist(), dtype=object),
        list(meta["class_names"]),
        tuple(meta["value_range"]),
    )


def staging_path(batch_id: str) -> Path:
    return paths().artifacts / "staging" / f"{batch_id}.parquet"


def _write_once(ds: Dataset, path_of) -> str:
    """Write ``ds`` to ``path_of(content hash)`` unless it is there; return the hash."""
    key = ds.content_hash()
    dest = path_of(key)
    if not (dest.exists() and lake.is_readable(dest)):  # a truncated copy is rewritten
        lake.atomic_write_parquet(to_table(ds, key), dest)
    return key


def stage(ds: Dataset) -> str:
    """Write the batch to staging (not the lake) and return its batch id (content hash)."""
    return _write_once(ds, staging_path)


def load_staged(batch_id: str) -> Dataset:
    p = staging_path(batch_id)
    if not p.exists():
        raise FileNotFoundError(f"{p}: staged batch missing (rerun with --refresh)")
    return from_table(lake.read_parquet(p))


def commit(batch_id: str) -> Path:
    """Move a validated batch into ``lake/samples`` (atomic; a second commit adds nothing)."""
    dest = lake.part_path("samples", batch_id)
    if dest.exists() and lake.is_readable(dest):
        return dest
    # Through a private temp file (two runs may commit the same batch at once) whose write
    # verifies the staged copy's checksums on the way in.
    return lake.atomic_write_parquet(lake.read_parquet(staging_path(batch_id)), dest)


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


def load_committed(batch_id: str) -> Dataset:
    p = lake.part_path("samples", batch_id)
    if not p.exists():
        raise FileNotFoundError(f"{p}: batch {batch_id} is not in the lake")
    return from_table(lake.read_parquet(p))
