"""Great Expectations checks: the batch suite of the audit flow and a generic runner for gates.

GX runs in an ephemeral context (nothing written to disk); a failing suite becomes one readable
line per failed expectation.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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


def _quiet_gx() -> None:
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


def run_suite(df: pd.DataFrame, expectations: list, suite_name: str) -> CheckReport:
    """Validate ``df`` against GX expectation objects; returns a :class:`CheckReport`."""
    _quiet_gx()
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_pandas(f"{suite_name}-source")
    asset = source.add_dataframe_asset(name=f"{suite_name}-frame")
    batch_def = asset.add_batch_definition_whole_dataframe(f"{suite_name}-whole")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for e in expectations:
        suite.add_expectation(e)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}-validation", data=batch_def, suite=suite)
    )
    result = definition.run(batch_parameters={"dataframe": df}, result_format="SUMMARY")
    described = [_describe(r) for r in result.results]
    failures = [_failure_line(d) for d in described if not d["success"]]
    return CheckReport(suite_name, bool(result.success), failures, described)


def batch_frame(ds: Dataset) -> pd.DataFrame:
    """One row per sample with the summaries the batch suite checks (GX validates tables, so
    the pixel checks run on per-sample min / max / non-finite counts)."""
    flat = ds.x.reshape(len(ds), -1).astype(np.float64)
    finite = np.isfinite(flat)
    return pd.DataFrame({
        "sample_id": pd.Series(ds.sample_id, dtype=object),
        "label": ds.label.astype(np.int64),
        "split": pd.Series(ds.split, dtype=object),
        "n_values": np.full(len(ds), flat.shape[1], dtype=np.int64),
        "pixel_min": np.where(finite, flat, np.inf).min(1) if flat.shape[1] else np.zeros(len(ds)),
        "pixel_max": np.where(finite, flat, -np.inf).max(1) if flat.shape[1] else np.zeros(len(ds)),
        "n_nonfinite": (~finite).sum(1).astype(np.int64),
    })


def batch_expectations(ds: Dataset, class_count: int | None = None) -> list:
    import great_expectations as gx

    E = gx.expectations
    lo, hi = ds.value_range
    k = class_count or ds.num_classes
    cols = ["sample_id", "label", "split", "n_values", "pixel_min", "pixel_max", "n_nonfinite"]
    return [
        E.ExpectTableRowCountToBeBetween(min_value=1),
        E.ExpectTableColumnsToMatchSet(column_set=cols, exact_match=True),
        E.ExpectColumnValuesToNotBeNull(column="sample_id"),
        E.ExpectColumnValuesToBeUnique(column="sample_id"),
        E.ExpectColumnValuesToNotBeNull(column="label"),
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(k))),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeInSet(column="n_nonfinite", value_set=[0]),
        E.ExpectColumnValuesToBeBetween(column="pixel_min", min_value=lo, max_value=hi),
        E.ExpectColumnValuesToBeBetween(column="pixel_max", min_value=lo, max_value=hi),
    ]


def validate_batch(ds: Dataset, class_count: int | None = None) -> CheckReport:
    """Run the batch suite (schema, ids unique and non-null, labels in the class set, values
    finite and in range, non-empty). Raises :class:`ValidationFailed` listing every failure."""
    frame = batch_frame(ds)
    report = run_suite(frame, batch_expectations(ds, class_count), f"batch-{ds.name}")
    # A train split with no samples cannot be audited; GX has no cross-column rule for it.
    if report.success and not np.any(ds.split == "train"):
        report = CheckReport(report.suite, False, ["split has no 'train' rows: nothing to audit"], report.results)
    if not report.success:
        raise ValidationFailed(f"batch {ds.name!r}", report.failures)
    return report
