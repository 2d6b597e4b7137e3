"""The release gate: three Great Expectations suites, all run through
:func:`winnow.tasks.validation.run_suite`.

(a) ``batch``  — the arriving batch: the audit flow's batch suite, plus compatibility with the
    accepted data (same sample shape, labels in the accepted classes, no sample id reused).
(b) ``scores`` — what the detectors say: estimated noise rate, flagged fraction of the batch and
    canary recall, against thresholds from :class:`GateConfig`.
(c) ``model``  — the retrained model: test accuracy not below the champion's minus a tolerance.

GX validates tables, so (b) and (c) validate one-row frames of the figures; the expectation
results then read like every other GX result (observed value vs. bound).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .data.dataset import Dataset
from .validation import CheckReport, batch_expectations, batch_frame, run_suite


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the release gate (``deployments/gate.toml`` holds the served defaults)."""

    max_noise_rate: float = 0.3  # confident learning's estimate over the scored pool
    max_flagged_fraction: float = 0.3  # flagged share of the arriving batch's training rows
    min_canary_recall: float | None = 0.5  # None: canaries are measured but not required
    accuracy_tolerance: float = 0.02  # the candidate may lose this much test accuracy vs. the champion
    min_accuracy: float = 0.0  # absolute floor for the candidate

    @classmethod
    def from_mapping(cls, values: dict | None) -> "GateConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown gate setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> "GateConfig":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ValueError(f"{p}: gate config not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{p}: not valid TOML ({exc})") from None
        return cls.from_mapping(data.get("gate", data))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Verdict:
    """The three suites' reports and whether all passed."""

    reports: list[CheckReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.reports) and all(r.success for r in self.reports)

    @property
    def failures(self) -> list[str]:
        return [f"{r.suite}: {f}" for r in self.reports for f in r.failures]

    def summary(self) -> str:
        if self.passed:
            return f"gate PASSED ({', '.join(r.suite for r in self.reports)})"
        return "gate FAILED: " + "; ".join(self.failures)

    def markdown(self) -> str:
        head = f"## Release gate: {'PASSED' if self.passed else 'FAILED'}"
        return "\n\n".join([head] + [r.markdown() for r in self.reports])

    def frame(self, run_id: str) -> pd.DataFrame:
        """One row per expectation, for the lake's ``gates`` table."""
        return pd.DataFrame([{"run_id": run_id, "suite": r.suite, "expectation": d["expectation"],
                              "column": d.get("column") or "", "success": bool(d["success"]),
                              "observed": str(d["observed"])} for r in self.reports for d in r.results])


def _gx():
    from .validation import _quiet_gx

    _quiet_gx()
    import great_expectations as gx

    return gx.expectations


# ---------------------------------------------------------------- (a) the batch


def batch_gate(ds: Dataset, accepted: Dataset | None) -> CheckReport:
    """The batch suite plus compatibility with everything accepted so far."""
    E = _gx()
    frame = batch_frame(ds)
    class_count = accepted.num_classes if accepted is not None else ds.num_classes
    expectations = batch_expectations(ds, class_count)
    if accepted is not None:
        expectations += [
            E.ExpectColumnValuesToBeInSet(column="n_values", value_set=[int(np.prod(accepted.sample_shape))]),
            E.ExpectColumnValuesToNotBeInSet(column="sample_id", value_set=[str(s) for s in accepted.sample_id]),
        ]
    report = run_suite(frame, expectations, "batch")
    if accepted is not None and report.success and ds.sample_shape != accepted.sample_shape:
        report = CheckReport("batch", False, [f"sample shape {ds.sample_shape} != accepted {accepted.sample_shape}"],
                             report.results)
    if report.success and not np.any(ds.split == "train"):
        report = CheckReport("batch", False, ["split has no 'train' rows: nothing to audit"], report.results)
    return report


# ---------------------------------------------------------------- (b) the scores


def scores_gate(noise_rate: float, flagged_fraction: float, canary_recall: float, config: GateConfig) -> CheckReport:
    """Detector figures under the configured thresholds (canary recall only if required)."""
    E = _gx()
    row = {"estimated_noise_rate": noise_rate, "flagged_fraction": flagged_fraction}
    expectations = [
        E.ExpectColumnValuesToBeBetween(column="estimated_noise_rate", min_value=0.0, max_value=config.max_noise_rate),
        E.ExpectColumnValuesToBeBetween(column="flagged_fraction", min_value=0.0, max_value=config.max_flagged_fraction),
    ]
    if config.min_canary_recall is not None:
        # no canaries planted -> NaN -> null: "clean" cannot be trusted, so the gate fails
        row["canary_recall"] = None if math.isnan(canary_recall) else canary_recall
        expectations += [E.ExpectColumnValuesToNotBeNull(column="canary_recall"),
                         E.ExpectColumnValuesToBeBetween(column="canary_recall", min_value=config.min_canary_recall,
                                                         max_value=1.0)]
    frame = pd.DataFrame([row]).astype({k: "float64" for k in row})
    return run_suite(frame, expectations, "scores")


# ---------------------------------------------------------------- (c) the model


def model_gate(candidate_accuracy: float, champion_accuracy: float | None, config: GateConfig) -> CheckReport:
    """The retrained model against the champion (no champion yet: only the absolute floor)."""
    E = _gx()
    drop = 0.0 if champion_accuracy is None else champion_accuracy - candidate_accuracy
    frame = pd.DataFrame([{"candidate_accuracy": float(candidate_accuracy),
                           "champion_accuracy": float("nan") if champion_accuracy is None else float(champion_accuracy),
                           "accuracy_drop": float(drop)}])
    return run_suite(frame, [
        E.ExpectColumnValuesToBeBetween(column="candidate_accuracy", min_value=config.min_accuracy, max_value=1.0),
        E.ExpectColumnValuesToBeBetween(column="accuracy_drop", max_value=config.accuracy_tolerance),
    ], "model")
