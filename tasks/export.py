"""``winnow export``: the audited data set with the review decisions applied, in the input's own
form, plus a provenance column; checked by the batch suite before a byte is written.

Forms: a Parquet input comes back as the same file's columns and metadata (rows dropped, the label
column rewritten); an image folder as Parquet with ``id, file, label, split`` and ``image`` (the
file's bytes as they came in); built-in data sets as Parquet with uint8 ``image`` arrays.

``--relabel soft`` carries winnow's default remedy (``soft-all``, docs/remedies.md) to the user's
own training: a ``winnow_soft_label`` column (list<float32>, one probability per class) holds
each row's training target — for an undecided flagged row the distribution its suggested label is
the argmax of (the out-of-sample folds averaged with the label-free probe, which the audit keeps
per row in the lake table ``suggestions``; its argmax goes to the label column), for every other
row the average of its one-hot label and that distribution (``remedies.soft_targets``); a row a
reviewer decided on has a null there and trains on its label.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import batches, lake
from .data.dataset import Dataset
from .validation import validate_batch

DROP = ("reviewed", "flagged", "none")
RELABEL = ("reviewed", "flagged", "soft", "none")
PROVENANCE = "winnow_provenance"
SOFT_LABEL = "winnow_soft_label"
#: schema metadata key naming the classes of the soft label's entries, in order
SOFT_CLASSES = b"winnow_soft_label_classes"


@dataclass
class Cleaning:
    """What the export does to each audited row (all arrays of shape (n,))."""

    keep: np.ndarray  # bool
    label: np.ndarray  # int64, the label written
    provenance: np.ndarray  # object: "kept", "relabelled from <class>" or "soft target, given <class>"
    soft: np.ndarray | None = None  # object: a float32 (C,) training target per row, None: its label

    def counts(self) -> dict:
        relabelled = np.array([p.startswith("relabelled") for p in self.provenance]) & self.keep
        soft = (np.array([s is not None for s in self.soft]) & self.keep if self.soft is not None
                else np.zeros(len(self.keep), bool))
        return {"rows": int(len(self.keep)), "kept": int(self.keep.sum()), "dropped": int((~self.keep).sum()),
                "relabelled": int(relabelled.sum()), "soft": int(soft.sum())}


def plan_cleaning(sample_ids: np.ndarray, labels: np.ndarray, class_names: list[str], queue: pd.DataFrame,
                  flags: pd.DataFrame, drop: str = "reviewed", relabel: str = "reviewed",
                  suggestion: np.ndarray | None = None) -> Cleaning:
    """Decide, per row, whether it is kept and with which label.

    Parameters
    ----------
    sample_ids, labels : np.ndarray, shape (n,)
        The audited rows and their given labels.
    queue : DataFrame
        The review queue (``sample_id``, ``status``, ``new_label``): a reviewer's decision wins.
    flags : DataFrame
        This run's flagged samples (``sample_id``, ``suggested_label``).
    drop : {"reviewed", "flagged", "none"}
        ``reviewed``: drop what a reviewer dropped; ``flagged``: also every flagged sample no
        reviewer accepted or relabelled; ``none``: drop nothing.
    relabel : {"reviewed", "flagged", "soft", "none"}
        ``reviewed``: apply reviewers' relabels; ``flagged``: also relabel every undecided flagged
        sample to its suggested label (instead of dropping it); ``soft``: as ``flagged``, and every
        row no reviewer decided on gets a soft target (:attr:`Cleaning.soft`: ``soft-all``'s, from
        ``suggestion``); ``none``: keep given labels. A reviewer's decision is always hard.
    suggestion : np.ndarray, shape (n, C), optional
        Each row's suggestion distribution (rows summing to 1); needed for ``relabel="soft"``.
    """
    if drop not in DROP:
        raise ValueError(f"--drop must be one of {', '.join(DROP)}, got {drop!r}")
    if relabel not in RELABEL:
        raise ValueError(f"--relabel must be one of {', '.join(RELABEL)}, got {relabel!r}")
    if len(sample_ids) != len(labels):
        raise ValueError(f"sample_ids has {len(sample_ids)} rows, labels {len(labels)}")
    ids = pd.Index(np.asarray(sample_ids, dtype=str))
    decided = queue.drop_duplicates("sample_id", keep="last").set_index("sample_id") if len(queue) else None
    status = (decided["status"].reindex(ids).fillna("").to_numpy(object) if decided is not None
              else np.full(len(ids), "", dtype=object))
    new_label = (decided["new_label"].reindex(ids).fillna(-1).to_numpy(np.int64) if decided is not None
                 else np.full(len(ids), -1, dtype=np.int64))
    flagged = ids.isin(flags["sample_id"].astype(str)) if len(flags) else np.zeros(len(ids), bool)
    suggested = (flags.drop_duplicates("sample_id").set_index("sample_id")["suggested_label"]
                 .reindex(ids).fillna(-1).to_numpy(np.int64) if len(flags) else np.full(len(ids), -1, np.int64))
    undecided = flagged & ~np.isin(status, ["accepted", "relabelled", "dropped"])

    keep = np.ones(len(ids), dtype=bool)
    out = np.asarray(labels, dtype=np.int64).copy()
    if drop != "none":
        keep &= status != "dropped"
    if relabel != "none":
        hit = (status == "relabelled") & (new_label >= 0)
        out[hit] = new_label[hit]
    soft = None
    if relabel in ("flagged", "soft"):
        hit = undecided & (suggested >= 0)
        out[hit] = suggested[hit]
        if relabel == "soft":
            soft = _soft_targets(out, hit, suggestion, len(class_names), ~np.isin(status, ["accepted", "relabelled"]))
    elif drop == "flagged":
        keep &= ~undecided
    name = lambda i: class_names[i] if 0 <= i < len(class_names) else str(i)  # noqa: E731
    provenance = np.array(["kept" if a == b else f"relabelled from {name(int(a))}" for a, b in zip(labels, out)],
                          dtype=object)
    if soft is not None:  # the flagged rows that train on the suggestion alone
        rows = np.flatnonzero(hit)
        provenance[rows] = [f"soft target, given {name(int(labels[i]))}" for i in rows]
    return Cleaning(keep, out, provenance, soft)


def _soft_targets(labels: np.ndarray, flagged: np.ndarray, suggestion: np.ndarray | None, num_classes: int,
                  undecided: np.ndarray) -> np.ndarray:
    """``soft-all``'s target for every row no reviewer decided on (``undecided``), None for the rest."""
    from .remedies import soft_targets  # the one definition of the default remedy's targets

    if suggestion is None:
        raise ValueError("--relabel soft: this run stored no suggestion distributions (audited before winnow kept "
                         "them); run the audit again, or use --relabel flagged")
    suggestion = np.asarray(suggestion)
    if suggestion.shape != (len(labels), num_classes):
        raise ValueError(f"suggestion must have shape ({len(labels)}, {num_classes}), got {suggestion.shape}")
    targets = soft_targets(labels, flagged, suggestion, soften_unflagged=True).astype(np.float32)
    soft = np.full(len(labels), None, dtype=object)
    rows = np.flatnonzero(undecided)
    soft[rows] = list(targets[rows])
    return soft


# ---------------------------------------------------------------- the lake edge


def find_run(ref: str) -> dict:
    """A recorded audit by lake run id or MLflow run id (a unique prefix is enough)."""
    folder = lake.paths().lake / "runs"
    if not folder.exists() or not any(folder.glob("*.parquet")):
        raise ValueError("no audit has been run yet (the lake has no runs)")
    runs = lake.sql("SELECT * FROM runs ORDER BY created_at DESC")
    hit = runs[runs["run_id"].astype(str).str.startswith(ref) | runs["mlflow_run_id"].astype(str).str.startswith(ref)]
    if hit.empty:
        raise ValueError(f"no audit run matches {ref!r} (see `winnow sql \"SELECT run_id, dataset, created_at FROM runs\"`)")
    if hit["run_id"].nunique() > 1:
        raise ValueError(f"{ref!r} matches several runs: {', '.join(hit['run_id'].unique()[:5])}; give more characters")
    return hit.iloc[0].to_dict()


def _flags(run_id: str) -> pd.DataFrame:
    p = lake.part_path("flags", run_id)
    return lake.read_part("flags", run_id) if p.exists() else pd.DataFrame(columns=["sample_id", "suggested_label"])


def _suggestions(run_id: str, sample_ids: np.ndarray) -> np.ndarray | None:
    """The run's stored suggestion distributions in ``sample_ids`` order, shape (n, C); None if the
    run stored none."""
    p = lake.part_path("suggestions", run_id)
    if not p.exists():
        return None
    table = lake.read_parquet(p, columns=["sample_id", "probs"])
    column = table.column("probs").combine_chunks()
    probs = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    rows = pd.Index(table.column("sample_id").to_numpy(zero_copy_only=False)).get_indexer(sample_ids.astype(str))
    if (rows < 0).any():
        raise ValueError(f"{p}: has no suggestion for sample {sample_ids[np.flatnonzero(rows < 0)[0]]}")
    return probs[rows]


def export(ref: str, out: str | Path, drop: str = "reviewed", relabel: str = "reviewed",
           dry_run: bool = False) -> dict:
    """Write the cleaned data set of run ``ref`` to ``out`` (Parquet); returns the counts.

    The cleaned rows pass the same GX batch suite as an ingest before anything is written; the
    file appears atomically (temp file, then rename).
    """
    from .review import read_queue

    if not dry_run and (out is None or Path(out).suffix != ".parquet"):
        raise ValueError(f"{out}: --out must be a .parquet file")
    run = find_run(ref)
    src = _parquet_source(run.get("path"))
    # a Parquet input is rewritten from its own file: the batch's values are only summarised, a
    # row group at a time, for the suite (10⁶ × 512 held whole took 11 GiB)
    ds = batches.load_committed(run["batch_id"], values=src is None)
    suggestion = _suggestions(run["run_id"], ds.sample_id) if relabel == "soft" else None
    plan = plan_cleaning(ds.sample_id, ds.label, ds.class_names, read_queue(), _flags(run["run_id"]), drop, relabel,
                         suggestion)
    counts = {"run_id": run["run_id"], **plan.counts()}
    cleaned, summaries = _cleaned_for_suite(ds, plan, run["batch_id"], streamed=src is not None)
    validate_batch(cleaned, summaries=summaries)
    if dry_run:
        return counts
    dest = Path(out).resolve()
    if src is not None:
        lake.atomic_write_parquet_parts(_parquet_parts(src, ds, plan), dest)
    else:
        lake.atomic_write_parquet(_in_input_form(ds, plan, run.get("path")), dest)
    return {**counts, "out": str(out)}


def _parquet_source(path) -> Path | None:
    src = Path(path) if isinstance(path, str) and path else None
    return src if src is not None and src.is_file() and src.suffix == ".parquet" else None


def _cleaned_for_suite(ds: Dataset, plan: Cleaning, batch_id: str, streamed: bool) -> tuple:
    """(kept rows, their value summaries) for the batch suite. Streamed: ``ds`` holds no values, so
    the summaries are read a row group at a time and the kept rows get a zero-stride stand-in of
    the values' shape (never read: the suite reads the summaries)."""
    from numpy.lib.stride_tricks import as_strided

    from .validation import value_summaries

    relabelled = ds.replace(label=plan.label)
    if not streamed:
        return relabelled.subset(plan.keep), None
    part = lake.part_path("samples", batch_id)
    summaries = (tuple(a[plan.keep] for a in value_summaries(batches.value_blocks(part), len(ds)))
                 if batches.has_values(part) else None)
    shape = ds.values.shape[1:]
    kept = relabelled.replace(values=np.zeros((len(ds), 0), ds.values.dtype)).subset(plan.keep)
    stand_in = as_strided(np.zeros(1, ds.values.dtype), (int(plan.keep.sum()), *shape), (0,) * (1 + len(shape)))
    return kept.replace(values=stand_in), summaries


#: rows per part of a streamed Parquet export
EXPORT_BATCH_ROWS = 65_536


def _parquet_parts(src: Path, ds: Dataset, plan: Cleaning):
    """The cleaned rows of the user's Parquet file, in its own columns and metadata, a record batch
    at a time (file order; the batch's rows are the file's rows, in order). Rows of the batch that
    are not in file order come as one table in the batch's order."""
    import pyarrow.parquet as pq

    f = pq.ParquetFile(src)
    schema = f.schema_arrow
    id_col = ds.meta.get("id_column") or ("sample_id" if "sample_id" in schema.names else "id")
    label_col = ds.meta.get("label_column") or "label"
    file_ids = pd.Index(pq.read_table(src, columns=[id_col]).column(id_col).cast(pa.string())
                        .to_numpy(zero_copy_only=False))
    rows = file_ids.get_indexer(ds.sample_id.astype(str))
    if (rows < 0).any():
        raise ValueError(f"{src}: changed since the audit: id {ds.sample_id[np.flatnonzero(rows < 0)[0]]} is gone")
    keep = np.flatnonzero(plan.keep)
    order = rows[keep]

    def cleaned(table: pa.Table, mine: np.ndarray) -> pa.Table:
        """``table``: the file's rows of dataset rows ``mine``, in that order."""
        table = table.set_column(table.column_names.index(label_col), label_col,
                                 _label_values(ds, plan.label[mine], schema.field(label_col).type))
        return _with_winnow_columns(table, ds, plan, mine, schema.metadata)

    if np.any(np.diff(order) <= 0):
        yield cleaned(f.read().take(pa.array(order)), keep)
        return
    start = 0
    for batch in f.iter_batches(batch_size=EXPORT_BATCH_ROWS):
        lo, hi = np.searchsorted(order, [start, start + batch.num_rows])
        yield cleaned(pa.Table.from_batches([batch]).take(pa.array(order[lo:hi] - start)), keep[lo:hi])
        start += batch.num_rows


def _with_winnow_columns(table: pa.Table, ds: Dataset, plan: Cleaning, rows: np.ndarray, meta) -> pa.Table:
    """``table`` (one row per dataset row in ``rows``) with winnow's provenance and, for
    ``--relabel soft``, soft-label columns at the end (replacing any the input carried), and
    ``meta`` as its schema metadata, plus the soft label's class names."""
    table = table.drop_columns([c for c in (PROVENANCE, SOFT_LABEL) if c in table.column_names])
    table = table.append_column(PROVENANCE, pa.array(plan.provenance[rows].astype(str), type=pa.string()))
    meta = dict(meta or {})
    if plan.soft is not None:
        table = table.append_column(SOFT_LABEL, pa.array([None if v is None else v.tolist() for v in plan.soft[rows]],
                                                         type=pa.list_(pa.float32())))
        meta[SOFT_CLASSES] = json.dumps(ds.class_names).encode()
    return table.replace_schema_metadata(meta)


def _label_values(ds: Dataset, labels: np.ndarray, as_type: pa.DataType | None):
    names = np.asarray(ds.class_names, dtype=object)
    numeric_names = all(n == str(i) for i, n in enumerate(ds.class_names))
    if as_type is not None and (pa.types.is_integer(as_type) or pa.types.is_floating(as_type)):
        return pa.array(labels, type=pa.int64()).cast(as_type)
    if as_type is None and numeric_names:
        return pa.array(labels, type=pa.int64())
    return pa.array(names[labels].astype(str), type=pa.string())


def _in_input_form(ds: Dataset, plan: Cleaning, source_path: str | None) -> pa.Table:
    """An image folder's or a built-in data set's cleaned rows as one table (a Parquet input:
    :func:`_parquet_parts`)."""
    keep = plan.keep
    form = ds.meta.get("form", "")
    src = Path(source_path) if isinstance(source_path, str) and source_path else None
    cols = {"id": pa.array(ds.sample_id[keep].astype(str), type=pa.string())}
    if form in ("class folders", "labels.csv") and src is not None and src.is_dir():
        chosen = np.asarray(ds.meta.get("per_row", {}).get("files") or ds.sample_id, dtype=object)[keep]
        cols["file"] = pa.array(chosen.astype(str), type=pa.string())
        cols["image"] = pa.array([(src / f).read_bytes() for f in chosen], type=pa.binary())
    elif ds.values.size:
        flat = ds.values[keep]
        cols["image"] = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat).reshape(-1)),
                                                          int(np.prod(ds.sample_shape)))
    cols["label"] = _label_values(ds, plan.label[keep], None)
    cols["split"] = pa.array(ds.split[keep].astype(str), type=pa.string())
    meta = {"class_names": json.dumps(ds.class_names), "shape": ",".join(map(str, ds.sample_shape)),
            "winnow": json.dumps({"class_names": ds.class_names, "exported_from": ds.name})}
    return _with_winnow_columns(pa.table(cols), ds, plan, np.flatnonzero(keep), meta)
