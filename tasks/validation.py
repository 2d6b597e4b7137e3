"""Great Expectations checks: the batch suite of the audit flow and a generic runner for gates.

GX runs in an ephemeral context (nothing written to disk); a failing suite becomes one readable
line per failed expectation.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from .data.blocks import model_inputs
from .data.classes import MIN_CLASS_SAMPLES
from .data.dataset import SPLITS, Dataset


class ValidationFailed(ValueError):
    """A batch (or a gate) failed its expectations; ``str()`` is one line per failure."""

    def __init__(self, what: str, failures: list[str]):
        self.what = what
        self.failures = failures
        super().__init__(f"{what} failed {len(failures)} check(s):\n" + "\n".join(f"  - {f}" for f in failures))


@dataclass
class CheckReport:
    suite: str
    success: bool
    failures: list[str]
    results: list[dict] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"**{self.suite}**: {'PASSED' if self.success else 'FAILED'}", "",
                 "| expectation | column | ok | observed |", "|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r['expectation']} | {r.get('column') or ''} | {'yes' if r['success'] else '**no**'} | {r['observed']} |")
        return "\n".join(lines)


def quiet_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _describe(res) -> dict:
    cfg = res.expectation_config
    kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k not in ("batch_id",)}
    info = res.result or {}
    if "observed_value" in info:
        observed = info["observed_value"]
    elif "unexpected_count" in info:
        sample = info.get("partial_unexpected_list") or []
        observed = f"{info['unexpected_count']} unexpected" + (f", e.g. {sample[:3]}" if sample else "")
    else:
        observed = ""
    return {"expectation": cfg.type, "column": kwargs.get("column"), "kwargs": kwargs,
            "success": bool(res.success), "observed": str(observed)}


def _failure_line(d: dict) -> str:
    args = {k: v for k, v in d["kwargs"].items() if k != "column" and v is not None}
    target = d["column"] or "table"
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    return f"{d['expectation']}({target}{', ' + shown if shown else ''}): {d['observed'] or 'failed'}"


def run_suite(df: pd.DataFrame, expectations: list, suite_name: str,
              more: list[tuple[pd.DataFrame, list]] = ()) -> CheckReport:
    """Validate ``df`` against GX expectation objects; returns a :class:`CheckReport`.

    ``more`` holds further ``(frame, expectations)`` pairs checked in the same GX context (one
    suite per frame; the report joins them).
    """
    quiet_gx()
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas(f"{suite_name}-source")
    described: list[dict] = []
    success = True
    for i, (frame, exps) in enumerate([(df, expectations), *more]):
        tag = f"{suite_name}-{i}"
        asset = source.add_dataframe_asset(name=f"{tag}-frame")
        batch_def = asset.add_batch_definition_whole_dataframe(f"{tag}-whole")
        suite = context.suites.add(gx.ExpectationSuite(name=tag))
        for e in exps:
            suite.add_expectation(e)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{tag}-validation", data=batch_def, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        described += [_describe(r) for r in result.results]
        success = success and bool(result.success)
    failures = [_failure_line(d) for d in described if not d["success"]]
    return CheckReport(suite_name, success, failures, described)


_CHUNK = 8192  # rows per pass of the pixel summaries: memory stays flat however large the batch

#: per-sample value summaries the batch suite checks: min, max (finite values) and non-finite count
Summaries = tuple[np.ndarray, np.ndarray, np.ndarray]


def _value_summaries(x: np.ndarray) -> Summaries:
    n = len(x)
    lo, hi = np.zeros(n), np.zeros(n)
    bad = np.zeros(n, dtype=np.int64)
    flat = x.reshape(n, -1)
    if flat.shape[1] == 0:
        return lo, hi, bad
    for start in range(0, n, _CHUNK):
        part = np.asarray(flat[start:start + _CHUNK], dtype=np.float32)
        finite = np.isfinite(part)
        lo[start:start + len(part)] = np.where(finite, part, np.inf).min(1)
        hi[start:start + len(part)] = np.where(finite, part, -np.inf).max(1)
        bad[start:start + len(part)] = (~finite).sum(1)
    return lo, hi, bad


def value_summaries(blocks: Iterable[np.ndarray], n: int) -> Summaries:
    """The per-sample summaries of a batch's values given a block of rows at a time (the stored
    values of each block, in order: shape (m_i, *sample_shape), sum of m_i = n), so a batch of any
    size is checked holding one block. Equal to the summaries of the whole ``Dataset.x``.

    Returns
    -------
    lo, hi : np.ndarray, shape (n,), float64 — each row's smallest / largest finite model input
    bad : np.ndarray, shape (n,), int64 — each row's count of non-finite values
    """
    lo, hi = np.zeros(n), np.zeros(n)
    bad = np.zeros(n, dtype=np.int64)
    at = 0
    for block in blocks:
        if at + len(block) > n:
            raise ValueError(f"value_summaries: the blocks hold more than the declared {n} rows")
        part = _value_summaries(model_inputs(block))
        for whole, piece in zip((lo, hi, bad), part):
            whole[at:at + len(block)] = piece
        at += len(block)
    if at != n:
        raise ValueError(f"value_summaries: the blocks hold {at} rows, declared {n}")
    return lo, hi, bad


def label_column(ds: Dataset) -> pd.Series:
    """Labels for the suite: the class index, or the raw text where it is not in the class set
    (so a refusal names the value the file holds, e.g. '57', '3.5', '%%')."""
    labels = pd.Series(ds.label.astype(np.int64), dtype=object)
    if ds.raw_label is not None:
        unmapped = ds.label < 0
        labels[unmapped] = ds.raw_label[unmapped]
    return labels


def batch_frame(ds: Dataset, summaries: Summaries | None = None) -> pd.DataFrame:
    """One row per sample with the summaries the batch suite checks (GX validates tables, so
    the pixel checks run on per-sample min / max / non-finite counts). ``summaries``: those of
    the values computed already (:func:`value_summaries`); then ``ds.values`` is not read."""
    lo, hi, bad = summaries if summaries is not None else _value_summaries(ds.x)
    probs = ds.pred_probs if ds.pred_probs is not None else np.zeros((len(ds), 0))
    if probs.shape[1]:
        plo, phi, pbad = _value_summaries(probs)
        lo, hi, bad = plo, phi, pbad + bad
    return pd.DataFrame({
        "sample_id": pd.Series(ds.sample_id, dtype=object),
        "label": label_column(ds),
        "split": pd.Series(ds.split, dtype=object),
        "n_values": np.full(len(ds), int(np.prod(ds.sample_shape)), dtype=np.int64),
        "pixel_min": lo,
        "pixel_max": hi,
        "n_nonfinite": bad,
    })


def batch_expectations(ds: Dataset, class_count: int | None = None) -> list:
    import great_expectations as gx

    E = gx.expectations
    lo, hi = (0.0, 1.0) if ds.pred_probs is not None else ds.value_range
    k = class_count or ds.num_classes
    cols = ["sample_id", "label", "split", "n_values", "pixel_min", "pixel_max", "n_nonfinite"]
    out = [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectTableColumnsToMatchSet(column_set=cols, exact_match=True),
        E.ExpectColumnValuesToNotBeNull(column="sample_id"),
        E.ExpectColumnValuesToBeUnique(column="sample_id"),
        E.ExpectColumnValuesToNotBeNull(column="label"),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(k))),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeInSet(column="n_nonfinite", value_set=[0]),
    ]
    if lo is not None or hi is not None:
        out += [E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=lo, max_value=hi),
                E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=lo, max_value=hi)]
    return out


def class_frame(ds: Dataset, class_count: int | None = None) -> pd.DataFrame:
    """One row per class of the set: its name and how many samples carry it."""
    k = class_count or ds.num_classes
    counts = np.bincount(ds.label[(ds.label >= 0) & (ds.label < k)], minlength=k)
    names = [ds.class_names[i] if i < ds.num_classes else str(i) for i in range(k)]
    return pd.DataFrame({"class_name": names, "count": counts.astype(np.int64)})


def class_expectations(min_samples: int) -> list:
    """The class set is usable: two classes or more, each with at least ``min_samples`` samples
    (a class that never appears is a gap in the labels or a wrongly declared set)."""
    import great_expectations as gx

    E = gx.expectations
    return [E.ExpectTableRowCountToBeBetween(min_value=2),
            E.ExpectColumnValuesToBeBetween(column="count", min_value=min_samples)]


def _explain_class_failures(report: CheckReport, classes: pd.DataFrame, min_samples: int, ds: Dataset) -> CheckReport:
    """GX decides; these lines say which classes and what to do, in place of GX's generic ones."""
    lines = []
    for line in report.failures:
        if line.startswith("expect_table_row_count_to_be_between(table, min_value=2"):
            lines.append(f"the class set has {len(classes)} class(es) {list(classes['class_name'])}: an audit needs "
                         f"at least 2")
        elif line.startswith("expect_column_values_to_be_between(count"):
            few = classes[classes["count"] < min_samples]
            shown = ", ".join(f"'{c}' ({n})" for c, n in zip(few["class_name"][:6], few["count"][:6]))
            more = f" and {len(few) - 6} more" if len(few) > 6 else ""
            problems = ds.meta.get("class_problems") or []
            hint = problems[0] if problems else (f"classes are {ds.meta.get('classes_source', 'declared')}; "
                                                 f"fix the labels or the declared set")
            lines.append(f"classes with fewer than {min_samples} samples: {shown}{more} — {hint}")
        else:
            lines.append(line)
    return CheckReport(report.suite, report.success, lines, report.results)


def validate_batch(ds: Dataset, class_count: int | None = None, min_class_samples: int = MIN_CLASS_SAMPLES,
                   summaries: Summaries | None = None) -> CheckReport:
    """Run the batch suite (schema, ids unique and non-null, labels in the class set, values
    finite and in range, non-empty, at least two classes each with ``min_class_samples``).
    Raises :class:`ValidationFailed` listing every failure, one line each. ``summaries``: the
    values' per-sample summaries, computed a block at a time (:func:`value_summaries`) so a large
    batch's values need not be in memory; default: from ``ds.x``."""
    classes = class_frame(ds, class_count)
    report = run_suite(batch_frame(ds, summaries), batch_expectations(ds, class_count), f"batch-{ds.name}",
                       more=[(classes, class_expectations(min_class_samples))])
    report = _explain_class_failures(report, classes, min_class_samples, ds)
    # A train split with no samples cannot be audited; GX has no cross-column rule for it.
    if report.success and not np.any(ds.split == "train"):
        report = CheckReport(report.suite, False, ["split has no 'train' rows: nothing to audit"], report.results)
    if not report.success:
        where = ds.meta.get("source")  # the file or folder the rows came from, when they came from one
        raise ValidationFailed(f"{where} (batch {ds.name!r})" if where else f"batch {ds.name!r}", report.failures)
    return report
