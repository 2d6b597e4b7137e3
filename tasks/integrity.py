"""Checking WINNOW_HOME's files: every lake part, artifact and Prefect result read back to its end
(the large ones a row group or 16 MiB at a time).

What "intact" means per file:

- Parquet (lake parts, score tables, staged batches, pools): the whole file reads, every data
  page's CRC32 matches where the writer stored one (winnow's writers do), and a part named by
  its content (``lake/samples/<batch_id>``, ``artifacts/staging/<batch_id>``,
  ``artifacts/pools/<pool_id>``) still hashes to its name;
- ``.pt`` (checkpoints, probabilities, models): ``torch.load`` succeeds (its zip records carry CRC32s);
- ``.json`` (artifact metadata): it parses; Prefect's persisted results (JSON records or base64
  pickles): they parse to their end.

Files that end in ``.tmp`` are what an interrupted write left; nothing reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .lake import CorruptFile, parquet_schema, read_parquet
from .settings import Paths

# Folders whose Parquet files are named by the content hash of the batch they hold.
CONTENT_NAMED = (("lake", "samples"), ("artifacts", "staging"), ("artifacts", "pools"))


@dataclass(frozen=True)
class Finding:
    path: Path
    kind: str  # "lake" | "artifact" | "prefect-result"
    problem: str | None  # None: intact


def _content_named(path: Path, home: Path) -> bool:
    rel = path.relative_to(home).parts
    return any(rel[: len(prefix)] == prefix and len(rel) == len(prefix) + 1 for prefix in CONTENT_NAMED)


def check_file(path: Path, home: Path) -> str | None:
    """Read ``path`` back whole; return what is wrong with it, or None when it is intact."""
    from .artifacts import read_json, read_torch

    try:
        if path.suffix == ".parquet":
            if _content_named(path, home):
                from .batches import from_table, value_blocks

                # the small columns whole, the values a row group at a time (a 10⁶-row part holds
                # 2 GB of them): every page's checksum is verified either way, and the same digest
                names = parquet_schema(path).names
                small = from_table(read_parquet(path, columns=[c for c in names if c != "pixels"]))
                actual = small.content_hash(value_blocks=value_blocks(path))
                if actual != path.stem:
                    return f"content hash {actual} does not match its name {path.stem}"
            else:
                read_parquet(path)
        elif path.suffix == ".pt":
            read_torch(path)
        elif path.suffix == ".json":
            read_json(path)
        elif path.parent.name == "results":
            return _check_prefect_result(path.read_bytes())
        else:  # at least readable to its end (reports, plots, .npy arrays), 16 MiB at a time
            with open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
    except CorruptFile as exc:
        return exc.reason
    except (OSError, ValueError, KeyError) as exc:
        return f"{exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0]}"
    return None


def _check_prefect_result(blob: bytes) -> str | None:
    """A persisted Prefect result is a JSON record (task results) or a base64 pickle (a flow's
    return value); walk the pickle's opcodes to its end without running it."""
    import base64
    import binascii
    import json
    import pickletools

    if blob.lstrip().startswith(b"{"):
        try:
            json.loads(blob)
        except ValueError as exc:
            return f"not valid JSON: {exc}"
        return None
    try:
        for _ in pickletools.genops(base64.b64decode(b"".join(blob.split()), validate=True)):
            pass
    except (binascii.Error, ValueError) as exc:
        return f"not a whole base64 pickle: {exc}"
    return None


def _files(folder: Path):
    if folder.is_dir():
        yield from sorted(p for p in folder.rglob("*") if p.is_file())


def scan(p: Paths) -> tuple[list[Finding], list[Path]]:
    """Check every lake part, artifact and Prefect result under ``p.home``.

    Returns
    -------
    findings : list of Finding, one per file checked
    leftovers : list of Path, temp files of interrupted writes (``*.tmp``), never read
    """
    findings, leftovers = [], []
    for kind, folder in (("lake", p.lake), ("artifact", p.artifacts), ("prefect-result", p.prefect_home / "results")):
        for f in _files(folder):
            if f.name.endswith(".tmp"):
                leftovers.append(f)
            elif f.name.startswith(".") or f.name.endswith(".lock"):
                continue  # locks and write probes
            else:
                findings.append(Finding(f, kind, check_file(f, p.home)))
    return findings, leftovers
