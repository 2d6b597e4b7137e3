"""The review queue: flagged samples waiting for a person, their decisions, and the accepted data
those decisions define.

The queue is the lake table ``review_queue`` (one part, ``queue.parquet``, rewritten atomically
under a file lock so two flows and a reviewer never lose each other's rows). Columns:

sample_id, batch_id, run_id, given_label, suggested_label, given_class, suggested_class, score
(the primary scorer's), scores and ranks (JSON: scorer -> value), status (pending | accepted |
relabelled | dropped), new_label (-1 unless relabelled), created_at, decided_at, decided_by (who
recorded the decision; empty while pending and in parts written before the column existed).

Accepted data = every committed batch of a stream, minus the samples a reviewer dropped, with
their relabels applied. Pending samples stay in (a flag is a question, not a verdict).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from . import batches, lake
from .data.dataset import Dataset
from .metrics import ranking

TABLE = "review_queue"
PART = "queue"
COLUMNS = ["sample_id", "batch_id", "run_id", "given_label", "suggested_label", "given_class", "suggested_class",
           "score", "scores", "ranks", "status", "new_label", "created_at", "decided_at", "decided_by"]
ACTIONS = {"accept": "accepted", "relabel": "relabelled", "drop": "dropped", "pending": "pending"}
# Columns added after the first queue parts were written, with the value an old part implies.
LATER_COLUMNS = {"decided_by": ""}


class DecisionConflict(ValueError):
    """The row changed since the reviewer saw it (another tab or person decided it); ``row`` is
    its current state, so the caller can show it instead of overwriting it."""

    def __init__(self, message: str, row: dict):
        super().__init__(message)
        self.row = row


# ---------------------------------------------------------------- pure


def empty_queue() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c in ("given_label", "suggested_label", "new_label")
                                      else "float64" if c == "score" else object) for c in COLUMNS})


def conform(queue: pd.DataFrame) -> pd.DataFrame:
    """``queue`` with every column of :data:`COLUMNS`: a part written before a column was added
    gets that column's implied value (:data:`LATER_COLUMNS`); any other missing column is an error."""
    missing = [c for c in COLUMNS if c not in queue.columns and c not in LATER_COLUMNS]
    if missing:
        raise ValueError(f"review_queue: missing column(s) {', '.join(missing)}")
    added = {c: v for c, v in LATER_COLUMNS.items() if c not in queue.columns}
    return queue.assign(**added) if added else queue


def merge_new(queue: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Append flagged rows whose sample is not queued yet (a decided sample is not asked again)."""
    rows = conform(rows)
    fresh = rows[~rows["sample_id"].isin(queue["sample_id"])]
    if fresh.empty:
        return queue
    return pd.concat([queue, fresh[COLUMNS]], ignore_index=True) if len(queue) else fresh[COLUMNS].reset_index(drop=True)


def apply_action(queue: pd.DataFrame, ids: list[str], action: str, label: int | None = None,
                 now: str = "", by: str = "", expect_decided_at: str | None = None) -> pd.DataFrame:
    """Record one decision for ``ids``; raises ``ValueError`` naming unknown ids or a bad action.

    ``by`` names who decided (kept in ``decided_by``). With ``expect_decided_at`` (the
    ``decided_at`` the reviewer saw; ``""`` for a pending row), a row that has changed since
    raises :class:`DecisionConflict` instead of being overwritten.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown review action {action!r}; choose one of {sorted(ACTIONS)}")
    if action == "relabel" and label is None:
        raise ValueError("relabel needs --to LABEL")
    missing = sorted(set(ids) - set(queue["sample_id"]))
    if missing:
        raise ValueError(f"not in the review queue: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    out = conform(queue).copy()
    hit = out["sample_id"].isin(ids)
    if expect_decided_at is not None:
        changed = out[hit & (out["decided_at"].fillna("").astype(str) != expect_decided_at)]
        if len(changed):
            row = changed.iloc[0].to_dict()
            who = f" by {row['decided_by']}" if row["decided_by"] else ""
            raise DecisionConflict(f"{row['sample_id']} changed since you saw it: {row['status']}{who} "
                                   f"at {row['decided_at'] or '-'}", row)
    out.loc[hit, "status"] = ACTIONS[action]
    out.loc[hit, "new_label"] = int(label) if action == "relabel" else -1
    out.loc[hit, "decided_at"] = now if action != "pending" else ""
    out.loc[hit, "decided_by"] = by if action != "pending" else ""
    return out


def progress(status: pd.Series | np.ndarray | list[str], z: float = 1.96) -> dict:
    """How far review has got, and the estimated precision of the flags so far.

    A flag was right when the reviewer relabelled or dropped the sample (its given label was
    wrong, or the sample is unusable) and wrong when they accepted the given label. Precision =
    right / reviewed, with a Wilson score interval (``z`` = 1.96: 95%).

    Parameters
    ----------
    status : shape (n,), the ``status`` column of the flagged rows

    Returns
    -------
    dict with flagged, reviewed, pending, accepted, relabelled, dropped, precision, precision_low,
    precision_high (the last three ``None`` before the first decision)
    """
    values = np.asarray(status, dtype=object)
    unknown = sorted(set(values.tolist()) - set(ACTIONS.values()))
    if unknown:
        raise ValueError(f"review_queue.status: unknown value(s) {unknown}")
    counts = {s: int((values == s).sum()) for s in ACTIONS.values()}
    reviewed = len(values) - counts["pending"]
    out = {"flagged": len(values), "reviewed": reviewed, **counts,
           "precision": None, "precision_low": None, "precision_high": None}
    if reviewed:
        right = counts["relabelled"] + counts["dropped"]
        p = right / reviewed
        denom = 1 + z * z / reviewed
        centre = (p + z * z / (2 * reviewed)) / denom
        half = z * np.sqrt(p * (1 - p) / reviewed + z * z / (4 * reviewed * reviewed)) / denom
        out.update(precision=p, precision_low=float(max(0.0, centre - half)), precision_high=float(min(1.0, centre + half)))
    return out


def flagged_by(queue: pd.DataFrame) -> list[list[str]]:
    """For each row, the scorers that would have flagged it too, at the same depth.

    A run flags the top of its primary scorer (the one whose value is the row's ``score``); its
    depth is the deepest primary rank among the run's queued rows. A scorer flags a row when it
    ranks it within that depth.

    Returns
    -------
    list (one per row, in order) of scorer names, sorted
    """
    if queue.empty:
        return []
    ranks = [json.loads(r) if r else {} for r in queue["ranks"]]
    scores = [json.loads(s) if s else {} for s in queue["scores"]]
    primary = [min(s, key=lambda n, s=s, v=v: abs(s[n] - v)) if s else None for s, v in zip(scores, queue["score"])]
    depth: dict[str, int] = {}
    for run, r, p in zip(queue["run_id"].astype(str), ranks, primary):
        if p is not None and p in r:
            depth[run] = max(depth.get(run, 0), int(r[p]))
    return [sorted(n for n, v in r.items() if int(v) <= depth.get(run, 0))
            for run, r in zip(queue["run_id"].astype(str), ranks)]


def apply_decisions(ds: Dataset, queue: pd.DataFrame) -> Dataset:
    """The accepted view of ``ds``: dropped samples removed, relabelled ones relabelled."""
    if queue.empty:
        return ds
    decided = queue.set_index("sample_id")
    status = decided["status"].reindex(ds.sample_id).fillna("").to_numpy()
    new_label = decided["new_label"].reindex(ds.sample_id).fillna(-1).to_numpy(np.int64)
    labels = np.where(status == "relabelled", new_label, ds.label)
    return ds.replace(label=labels).subset(status != "dropped")


def concat(parts: list[Dataset], name: str) -> Dataset:
    """One dataset from batches of the same stream (same shape and classes; the gate checks it)."""
    first = parts[0]
    class_names = max((p.class_names for p in parts), key=len)
    return Dataset(name, np.concatenate([p.sample_id for p in parts]), np.concatenate([p.values for p in parts]),
                   np.concatenate([p.label for p in parts]), np.concatenate([p.split for p in parts]),
                   list(class_names), first.value_range,
                   pred_probs=(np.concatenate([p.pred_probs for p in parts])
                               if all(p.pred_probs is not None for p in parts) else None))


def read_decision_csv(path: Path) -> list[tuple[str, str, int | None]]:
    """Rows ``(sample_id, action, new_label)`` from an edited export (``decision`` column:
    accept / relabel / drop / pending; blank rows are skipped)."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    for col in ("sample_id", "decision"):
        if col not in table.columns:
            raise ValueError(f"{path}: no '{col}' column (found {list(table.columns)})")
    out = []
    for i, row in table.iterrows():
        action = row["decision"].strip().lower()
        if not action:
            continue
        if action not in ACTIONS:
            raise ValueError(f"{path}: row {i + 2}: decision {action!r} is not one of {sorted(ACTIONS)}")
        label = row.get("new_label", "").strip()
        if action == "relabel" and not label.lstrip("-").isdigit():
            raise ValueError(f"{path}: row {i + 2}: relabel needs an integer new_label, got {label!r}")
        out.append((row["sample_id"], action, int(label) if action == "relabel" else None))
    return out


def rank_flags(scores: dict[str, np.ndarray], primary: str, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Top-``k`` of the primary scorer (boolean mask) and every scorer's rank (1 = most suspicious)."""
    n = len(scores[primary])
    ranks = {}
    for name, s in scores.items():
        order = ranking(s)
        r = np.empty(n, dtype=np.int64)
        r[order] = np.arange(1, n + 1)
        ranks[name] = r
    return ranks[primary] <= k, ranks


def suggestion_probs(oos: np.ndarray, second: np.ndarray | None = None) -> np.ndarray:
    """What a flagged row's suggested label is the argmax of: the out-of-sample probabilities,
    averaged with the label-free second opinion (``scorers.label_free.second_opinion``) when there
    is one. On the flagged rows of the benchmark cells the average named the true class more often
    than the folds alone (``benchmarks/remedies_eval.py suggestions``, docs/remedies.md).

    Parameters
    ----------
    oos, second : shape (n, C), rows summing to 1
    """
    oos = np.asarray(oos, dtype=np.float64)
    if second is None:
        return oos
    second = np.asarray(second, dtype=np.float64)
    if second.shape != oos.shape:
        raise ValueError(f"second must have the shape of oos {oos.shape}, got {second.shape}")
    return (oos + second) / 2


def flagged_rows(train: Dataset, chosen: np.ndarray, oos: np.ndarray, scores: dict, ranks: dict, primary: str,
                  batch_id: str, run_id: str = "") -> pd.DataFrame:
    """Queue rows for the flagged samples of ``train``, most suspicious first.

    Parameters
    ----------
    train : Dataset
        The scored samples (n rows).
    chosen : np.ndarray, shape (n,), bool
        Which of them to queue.
    oos : np.ndarray, shape (n, C)
        Class probabilities no model fitted on the row's own label: the suggested label is their
        argmax (the real audit averages the out-of-sample folds' with the label-free probe's, as
        :func:`suggestion_probs`, and keeps every row's in the lake table ``suggestions``).
    scores, ranks : dict of scorer -> np.ndarray, shape (n,)
        Every scorer's score and rank (1 = most suspicious); ``primary`` orders the rows.
    """
    suggested = oos.argmax(1)
    idx = np.flatnonzero(chosen)
    idx = idx[np.argsort(ranks[primary][idx], kind="stable")]
    names = train.class_names
    now = pd.Timestamp.now(tz="UTC").isoformat()
    return pd.DataFrame({
        "sample_id": train.sample_id[idx].astype(str), "batch_id": batch_id, "run_id": run_id,
        "given_label": train.label[idx].astype(np.int64), "suggested_label": suggested[idx].astype(np.int64),
        "given_class": [names[i] for i in train.label[idx]], "suggested_class": [names[i] for i in suggested[idx]],
        "score": scores[primary][idx].astype(float),
        "scores": [json.dumps({n: float(s[i]) for n, s in scores.items()}) for i in idx],
        "ranks": [json.dumps({n: int(r[i]) for n, r in ranks.items()}) for i in idx],
        "status": "pending", "new_label": np.full(len(idx), -1, dtype=np.int64), "created_at": now, "decided_at": "",
        "decided_by": "",
        "split": train.split[idx].astype(str),  # not stored in the queue (COLUMNS); for reports and flags
    })


# ---------------------------------------------------------------- the lake edge


def _queue_path() -> Path:
    return lake.part_path(TABLE, PART)


def _locked():
    """An exclusive lock over the queue's read-modify-write (flows and reviewers share it)."""
    return lake.exclusive_lock(_queue_path().parent / ".lock")


def read_queue() -> pd.DataFrame:
    """The whole queue (every column of :data:`COLUMNS`, also from parts written before some existed)."""
    p = _queue_path()
    try:
        # one open file: read_table(path) looks the path up more than once, and a writer's rename
        # in between mixed two files' bytes ("Deserializing page header failed") under load
        with open(p, "rb") as fh:
            return conform(pq.read_table(fh).to_pandas())
    except FileNotFoundError:
        return empty_queue()


def _write(queue: pd.DataFrame) -> None:
    lake.replace(TABLE, queue[COLUMNS].reset_index(drop=True), part=PART)


def enqueue(rows: pd.DataFrame) -> int:
    """Add flagged samples to the queue; returns how many were new."""
    with _locked():
        queue = read_queue()
        merged = merge_new(queue, rows)
        if len(merged) != len(queue):
            _write(merged)
        return len(merged) - len(queue)


def default_reviewer() -> str:
    """Who decides when nobody says: the operating-system user."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def decide(ids: list[str], action: str, label: int | None = None, by: str | None = None,
           expect_decided_at: str | None = None) -> pd.DataFrame:
    """Record a reviewer's decision at once (read-modify-write under the queue's lock, atomic
    rename); returns the updated rows.

    Parameters
    ----------
    ids : sample ids in the queue
    action : accept | relabel | drop | pending (``pending`` undoes a decision)
    label : the new label (class index) for ``relabel``
    by : who decided (default: the operating-system user)
    expect_decided_at : optional; the ``decided_at`` the caller last saw (``""`` = pending). A row
        that differs raises :class:`DecisionConflict` and nothing is written.
    """
    if not ids or not all(isinstance(i, str) and i for i in ids):
        raise ValueError(f"review decision: sample ids must be non-empty strings, got {ids!r}")
    by = default_reviewer() if by is None else str(by).strip()[:64]
    now = pd.Timestamp.now(tz="UTC").isoformat()
    with _locked():
        queue = apply_action(read_queue(), ids, action, label, now, by, expect_decided_at)
        _write(queue)
    return queue[queue["sample_id"].isin(ids)]


def import_csv(path: Path) -> int:
    """Apply every decision of an edited export; returns how many rows it set."""
    rows = read_decision_csv(path)
    now = pd.Timestamp.now(tz="UTC").isoformat()
    by = default_reviewer()
    with _locked():
        queue = read_queue()
        for sample_id, action, label in rows:
            queue = apply_action(queue, [sample_id], action, label, now, by)
        _write(queue)
    return len(rows)


def export_csv(path: Path, status: str | None = "pending") -> int:
    """Write the queue (or one status) as a CSV with an empty ``decision`` column to fill in."""
    queue = read_queue()
    if status:
        queue = queue[queue["status"] == status]
    out = queue[["sample_id", "batch_id", "given_label", "suggested_label", "score", "status"]].assign(
        decision="", new_label="")
    out.to_csv(path, index=False)
    return len(out)


def committed_batches(stream: str) -> list[str]:
    """Batch ids in ``lake/samples`` that belong to ``stream``, oldest first."""
    folder = lake.paths().lake / "samples"
    if not folder.exists():
        return []
    found = []
    for part in folder.glob("*.parquet"):
        meta = pq.read_schema(part).metadata or {}
        if json.loads(meta.get(b"winnow", b"{}")).get("name") == stream:
            found.append((part.stat().st_mtime_ns, part.stem))
    return [b for _, b in sorted(found)]


def accepted_data(stream: str, queue: pd.DataFrame | None = None) -> Dataset | None:
    """Every committed batch of ``stream`` with the reviewers' decisions applied (None if none)."""
    ids = committed_batches(stream)
    if not ids:
        return None
    queue = read_queue() if queue is None else queue
    return apply_decisions(concat([batches.load_committed(b) for b in ids], stream), queue)
