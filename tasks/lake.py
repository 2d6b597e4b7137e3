"""The Parquet lake and its DuckDB views (the edge where tables touch disk).

Every table is a folder ``<lake>/<table>/`` of Parquet parts. A part is written to a temp file
in the same folder and renamed into place, so a reader never sees a partial file and a crash
leaves at most a ``.tmp`` file that no view reads. Parts are named by the content hash of what
they hold, so writing the same rows twice adds nothing.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .settings import paths

TABLES = ("samples", "noise", "scores", "metrics", "runs", "flags", "suggestions", "benchmark", "review_queue",
          "explanations")


def table_hash(table: pa.Table) -> str:
    """Content hash of an Arrow table (schema + values)."""
    h = hashlib.sha256(str(table.schema).encode())
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]


class CorruptFile(ValueError):
    """A lake part or artifact cannot be read back intact (truncated, a checksum mismatch, a name
    that is not its content's hash); ``str()`` names the file and what to do."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: corrupted ({reason}); never used as is: delete it, or rerun with "
                         f"--refresh to recompute it (`winnow doctor` lists every broken file)")


def write_failed(dest: Path, exc: OSError) -> OSError:
    """The same OS error, naming the destination (pyarrow's messages often do not)."""
    code = exc.errno or errno.EIO
    reason = exc.strerror or (str(exc).splitlines() or [os.strerror(code)])[0]
    return OSError(code, reason, str(dest))


def atomic_write_parquet(table: pa.Table, dest: Path) -> Path:
    """Write ``table`` to ``dest`` via a temp file + rename; nothing partial is ever visible.

    Every data page carries a CRC32 (``write_page_checksum``), checked by :func:`read_parquet`,
    so a bit flipped on disk is detected instead of read as data. A full disk or a read-only
    folder raises ``OSError`` naming ``dest`` and leaves no temp file behind.
    """
    return _atomic(dest, lambda tmp: pq.write_table(table, tmp, compression="zstd", write_page_checksum=True))


def _atomic(dest: Path, write) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``dest``, then rename it to ``dest``; an error
    removes the temp file (an ``OSError`` is raised again naming ``dest``)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise write_failed(dest.parent, exc) from exc
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(dest, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def atomic_write_parquet_parts(parts: Iterable[pa.Table], dest: Path) -> Path:
    """:func:`atomic_write_parquet` for a table given as consecutive parts (same schema, the
    first part's), each written as it comes: a large table is never in memory whole."""

    def write(tmp):
        writer = None
        try:
            for part in parts:
                if writer is None:
                    writer = pq.ParquetWriter(tmp, part.schema, compression="zstd", write_page_checksum=True)
                writer.write_table(part)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{dest}: no table to write (no parts)")

    return _atomic(dest, write)


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read a lake part or Parquet artifact whole, verifying page checksums where it has them.

    Raises :class:`CorruptFile` naming ``path`` when it cannot be read back intact, and
    ``FileNotFoundError`` when it is not there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "file not found", str(path))
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _corrupt(path, exc) from None


def _corrupt(path: Path, exc: Exception) -> CorruptFile:
    return CorruptFile(path, f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def parquet_schema(path: Path) -> pa.Schema:
    """The Arrow schema (with its metadata) of a Parquet file, from its footer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "file not found", str(path))
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise _corrupt(path, exc) from None


def iter_parquet(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """A lake part or Parquet artifact a row group at a time, page checksums verified as in
    :func:`read_parquet` (memory: one row group, not the file)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "file not found", str(path))
    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True, pre_buffer=False)
        for i in range(pf.num_row_groups):
            yield from pf.read_row_group(i, columns=columns).to_batches()
    except (OSError, pa.ArrowException) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise _corrupt(path, exc) from None


def verified_copy(src: Path, dest: Path) -> Path:
    """Copy ``src`` to ``dest`` byte for byte (temp file + rename) after reading it back a row
    group at a time with its page checksums verified (:class:`CorruptFile` when one fails)."""
    for _ in iter_parquet(src):
        pass
    return _atomic(dest, lambda tmp: shutil.copyfile(src, tmp))


def is_readable(path: Path) -> bool:
    """Cheap check for write-once paths: does the file's Parquet footer read?"""
    try:
        pq.ParquetFile(path).metadata
        return True
    except (OSError, pa.ArrowException):
        return False


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
    if dest.exists() and is_readable(dest):  # a truncated part is rewritten, not kept
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
    return read_parquet(p, columns=columns).to_pandas()


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
