"""The Parquet lake and its DuckDB views (the edge where tables touch disk).

Every table is a folder ``<lake>/<table>/`` of Parquet parts. A part is written to a temp file
in the same folder and renamed into place, so a reader never sees a partial file and a crash
leaves at most a ``.tmp`` file that no view reads. Parts are named by the content hash of what
they hold, so writing the same rows twice adds nothing.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .settings import paths

TABLES = ("samples", "noise", "scores", "metrics", "runs", "flags", "benchmark", "review_queue", "explanations")


def table_hash(table: pa.Table) -> str:
    """Content hash of an Arrow table (schema + values)."""
    h = hashlib.sha256(str(table.schema).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]


def atomic_write_parquet(table: pa.Table, dest: Path) -> Path:
    """Write ``table`` to ``dest`` via a temp file + rename; nothing partial is ever visible."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


@contextmanager
def exclusive_lock(lock_file: Path):
    """Hold an exclusive ``flock`` on ``lock_file`` (created if missing) for the block: orders
    read-modify-write sections across processes. Blocks while another holder has it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write(table_name: str, data: pd.DataFrame | pa.Table, part: str | None = None, lake: Path | None = None) -> Path:
    """Add a part to a lake table; a part that already exists is left alone.

    Parameters
    ----------
    table_name : str
        Folder under the lake (one of :data:`TABLES` or a new name).
    data : DataFrame or Arrow table
    part : str, optional
        Part name (without ``.parquet``); defaults to the content hash.
    """
    if not table_name or "/" in table_name or table_name.startswith("."):
        raise ValueError(f"invalid lake table name {table_name!r}")
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    dest = (lake or paths().lake) / table_name / f"{part or table_hash(table)}.parquet"
    if dest.exists():
        return dest
    return atomic_write_parquet(table, dest)


def replace(table_name: str, data: pd.DataFrame | pa.Table, part: str, lake: Path | None = None) -> Path:
    """Overwrite one named part atomically (for mutable tables such as the review queue)."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    return atomic_write_parquet(table, (lake or paths().lake) / table_name / f"{part}.parquet")


def part_path(table_name: str, part: str, lake: Path | None = None) -> Path:
    return (lake or paths().lake) / table_name / f"{part}.parquet"


def read_part(table_name: str, part: str, columns: list[str] | None = None, lake: Path | None = None) -> pd.DataFrame:
    p = part_path(table_name, part, lake)
    if not p.exists():
        raise FileNotFoundError(f"{p}: lake part missing (was the lake cleared? rerun with --refresh)")
    return pq.read_table(p, columns=columns).to_pandas()


def connect(lake: Path | None = None):
    """An in-memory DuckDB connection with one view per lake table that has parts."""
    import duckdb

    lake = lake or paths().lake
    con = duckdb.connect()
    if lake.exists():
        for folder in sorted(p for p in lake.iterdir() if p.is_dir()):
            if any(folder.glob("*.parquet")):
                glob = str(folder / "*.parquet").replace("'", "''")
                con.execute(
                    f'CREATE VIEW "{folder.name}" AS SELECT * FROM read_parquet(\'{glob}\', union_by_name=true)'
                )
    return con


def sql(query: str, lake: Path | None = None) -> pd.DataFrame:
    """Run a DuckDB query over the lake's views and return a DataFrame."""
    con = connect(lake)
    try:
        return con.execute(query).df()
    finally:
        con.close()
