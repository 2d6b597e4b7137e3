"""The release gate: what decides whether a batch enters the lake and a model is served.

One module owns the decision:

* **thresholds** — :class:`GateConfig`, loaded once by :meth:`GateConfig.load` from the shipped
  defaults (``gate.toml`` beside this module), then the user's TOML, then explicit overrides; the
  served deployment, ``winnow gate`` and the flow's ``gate=`` parameter all go through it;
* **checks** — three Great Expectations suites, all run through
  :func:`winnow.tasks.validation.run_suite`:

  (a) ``batch``  — the arriving batch: the audit flow's batch suite, plus compatibility with the
      accepted data (same sample shape, labels in the accepted classes, no sample id reused);
  (b) ``scores`` — what the detectors say: estimated noise rate, flagged fraction of the batch
      and canary recall (:func:`figures_of` computes them);
  (c) ``model``  — the retrained model: test accuracy not below the champion's minus a tolerance;

* **verdict** — :class:`Verdict`, and :class:`GateFailed` when it says no;
* **promotion** — :func:`release` moves the registry's ``champion`` alias, only on a pass.

GX validates tables, so (b) and (c) validate one-row frames of the figures; the expectation
results then read like every other GX result (observed value vs. bound).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import canaries
from .data.classes import MIN_CLASS_SAMPLES
from .data.dataset import Dataset
from .validation import CheckReport, check_batch, quiet_gx, run_suite

#: the shipped thresholds: the one place their default values are written
GATE_TOML = Path(__file__).with_name("gate.toml")
#: how the on-arrival candidate model learns from the accepted data: ``soft-all`` (winnow's default
#: remedy, :mod:`winnow.tasks.remedies`) or ``none`` (the labels, reviewers' decisions applied)
CANDIDATE_REMEDIES = ("soft-all", "none")


class GateFailed(RuntimeError):
    """The release gate said no; ``str()`` is the one-line verdict."""


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the release gate and the canaries planted to measure it.

    No defaults here: they live in ``gate.toml`` (:data:`GATE_TOML`); build one with :meth:`load`.
    """

    max_noise_rate: float  # estimated share of wrong labels over the scored pool
    max_flagged_fraction: float  # flagged share of the arriving batch's training rows
    min_canary_recall: float | None  # None: canaries are measured but not required
    accuracy_tolerance: float  # the candidate may lose this much test accuracy vs. the champion
    min_accuracy: float  # absolute floor for the candidate
    canaries: int  # known flips planted in a copy of each arriving batch (0: none)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict | None = None) -> "GateConfig":
        """The shipped defaults, then the keys of ``path`` (a TOML), then ``overrides``.

        Parameters
        ----------
        path : str or Path, optional
            A TOML with a ``[gate]`` table (and optionally a top-level ``canaries``); its keys
            replace the defaults, keys it leaves out keep them.
        overrides : dict, optional
            Final say, e.g. the flow's ``gate=`` parameter. ``{"min_canary_recall": None}`` stops
            requiring canaries.

        Raises
        ------
        ValueError
            The file is missing or not TOML, a key is unknown, or a value is out of range.
        """
        values = _read_toml(GATE_TOML)
        if path is not None:
            values.update(_read_toml(Path(path)))
        values.update(dict(overrides or {}))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            where = f"{path}: " if path is not None else ""
            raise ValueError(f"{where}unknown gate setting(s) {unknown}; known: {sorted(known)}")
        values.setdefault("min_canary_recall", None)
        return cls(**values)._checked()

    def _checked(self) -> "GateConfig":
        for name in ("max_noise_rate", "max_flagged_fraction", "accuracy_tolerance", "min_accuracy"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
                raise ValueError(f"gate setting {name} must be a number in [0, 1], got {v!r}")
        r = self.min_canary_recall
        if r is not None and (not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 <= r <= 1):
            raise ValueError(f"gate setting min_canary_recall must be in [0, 1] or absent, got {r!r}")
        if not isinstance(self.canaries, int) or isinstance(self.canaries, bool) or self.canaries < 0:
            raise ValueError(f"gate setting canaries must be a non-negative integer, got {self.canaries!r}")
        return self

    def with_overrides(self, **values) -> "GateConfig":
        """A copy with some settings replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})._checked()

    def as_dict(self) -> dict:
        return asdict(self)


def _read_toml(path: Path) -> dict:
    """The ``[gate]`` table plus a top-level ``canaries`` of a gate TOML, flattened."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: gate config not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    values = dict(data.get("gate", {}))
    if "canaries" in data:
        values["canaries"] = data["canaries"]
    # TOML has no null: "min_canary_recall = false" stops requiring canaries
    if values.get("min_canary_recall") is False:
        values["min_canary_recall"] = None
    return values


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
    quiet_gx()
    import great_expectations as gx

    return gx.expectations


# ---------------------------------------------------------------- (a) the batch


def batch_gate(ds: Dataset, accepted: Dataset | None) -> CheckReport:
    """The batch suite (:func:`~winnow.tasks.validation.check_batch`) plus compatibility with
    everything accepted so far: same sample shape, labels in the accepted classes, no sample id
    reused. A first batch declares the class set, so it must hold every class twice; a later one
    adds to the accepted data and may hold any of them."""
    E = _gx()
    extra = []
    if accepted is not None:
        extra = [E.ExpectColumnValuesToBeInSet(column="n_values", value_set=[int(np.prod(accepted.sample_shape))]),
                 E.ExpectColumnValuesToNotBeInSet(column="sample_id", value_set=[str(s) for s in accepted.sample_id])]
    report = check_batch(ds, accepted.num_classes if accepted is not None else None,
                         MIN_CLASS_SAMPLES if accepted is None else 0, extra=extra, suite="batch")
    if accepted is not None and report.success and ds.sample_shape != accepted.sample_shape:
        report = CheckReport("batch", False, [f"sample shape {ds.sample_shape} != accepted {accepted.sample_shape}"],
                             report.results)
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


# ---------------------------------------------------------------- the figures (b) reads


def figures_of(flagged: np.ndarray, in_batch: np.ndarray, planted: np.ndarray, k: int) -> dict:
    """The detector's headline figures for the scores gate.

    Canaries count against neither the noise rate nor the flagged fraction: they are ours.

    Parameters
    ----------
    flagged, in_batch, planted : np.ndarray, shape (n,), bool
        Over the scored pool's training rows: flagged by the detector, from the arriving batch,
        a planted canary.
    k : int
        The estimated number of wrong labels in the pool (canaries included).
    """
    flagged, in_batch, planted = (np.asarray(a, bool) for a in (flagged, in_batch, planted))
    if not len(flagged) == len(in_batch) == len(planted):
        raise ValueError(f"flagged, in_batch and planted differ in length: "
                         f"{len(flagged)}, {len(in_batch)}, {len(planted)}")
    n = len(flagged)
    real = in_batch & ~planted
    wrong = max(int(k) - int(planted.sum()), 0)
    return {
        "pool_train_samples": n,
        "batch_train_samples": int(real.sum()),
        "estimated_wrong_labels": wrong,
        "estimated_noise_rate": wrong / max(n, 1),
        "flagged_in_batch": int((flagged & real).sum()),
        "flagged_fraction": float((flagged & real).sum() / max(real.sum(), 1)),
        "canaries": int(planted.sum()),
        "canary_recall": canaries.recall(flagged, planted),
    }


# ---------------------------------------------------------------- promotion


def release(verdict: Verdict, model_uri: str | None, mlflow_run_id: str, tags: dict) -> str | None:
    """Register the candidate and move ``champion`` to it — only if the verdict passed.

    Returns
    -------
    str or None
        The new champion's registry version; None when nothing was promoted.
    """
    if not verdict.passed or not model_uri:
        return None
    from . import registry

    version = registry.promote(model_uri, dict(tags) | {"mlflow_run_id": mlflow_run_id})
    registry.set_run_tags(mlflow_run_id, {"winnow.champion_version": version})
    return version
