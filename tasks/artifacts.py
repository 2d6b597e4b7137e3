"""Content-addressed artifacts shared between stages (checkpoints, score tables, probabilities).

Stages pass small keys to each other; the heavy data lives here, named by a hash of everything
that produced it, and is written atomically like the lake.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch

from .lake import CorruptFile, write_failed, atomic_write_parquet, read_parquet
from .settings import paths


def key_of(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dicts are key-sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def path(kind: str, key: str, suffix: str) -> Path:
    return paths().artifacts / kind / f"{key}{suffix}"


def atomic_write_bytes(data: bytes, dest: Path) -> Path:
    """Write ``data`` to ``dest`` via a temp file + rename (an ``OSError`` names ``dest``)."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise write_failed(dest.parent, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(dest, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def save_frame(kind: str, key: str, df: pd.DataFrame) -> Path:
    return atomic_write_parquet(pa.Table.from_pandas(df, preserve_index=False), path(kind, key, ".parquet"))


def load_frame(kind: str, key: str) -> pd.DataFrame:
    p = path(kind, key, ".parquet")
    if not p.exists():
        raise FileNotFoundError(f"{p}: artifact missing (was data/artifacts cleared? rerun with --refresh)")
    return read_parquet(p).to_pandas()


def save_torch(kind: str, key: str, obj: Any) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(buf.getvalue(), path(kind, key, ".pt"))


def load_torch(kind: str, key: str) -> Any:
    p = path(kind, key, ".pt")
    if not p.exists():
        raise FileNotFoundError(f"{p}: artifact missing (was data/artifacts cleared? rerun with --refresh)")
    return read_torch(p)


def read_torch(p: Path) -> Any:
    """``torch.load`` a file, raising :class:`CorruptFile` naming it when it does not load intact
    (torch's zip container checks each record's CRC32, and a truncated file has no directory)."""
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFile(p, f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0]}") from None


def save_json(kind: str, key: str, obj: Any) -> Path:
    return atomic_write_bytes(json.dumps(obj, indent=1, sort_keys=True, default=str).encode(), path(kind, key, ".json"))


def load_json(kind: str, key: str) -> Any:
    p = path(kind, key, ".json")
    if not p.exists():
        raise FileNotFoundError(f"{p}: artifact missing (rerun with --refresh)")
    return read_json(p)


def read_json(p: Path) -> Any:
    """Parse a JSON artifact, raising :class:`CorruptFile` naming it when it does not parse."""
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptFile(p, f"not valid JSON: {exc}") from None
