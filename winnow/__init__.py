"""winnow: find the training samples whose labels are most likely wrong.

The public Python API (the CLI is a thin layer over the same pieces):

- :func:`find_label_issues` — arrays in, a ranked table out (no services), as cleanlab's
  ``find_label_issues(labels, pred_probs)`` is called;
- :func:`audit` — the tracked, cached audit flow (Prefect, the Parquet lake, MLflow, GX), as
  ``winnow run`` runs it.
"""
from __future__ import annotations

__all__ = ["audit", "find_label_issues"]


def find_label_issues(labels, pred_probs=None, features=None, images=None, **options):
    """See :func:`winnow.tasks.api.find_label_issues` (shapes, options, the returned table)."""
    from winnow.tasks.api import find_label_issues as _find

    return _find(labels, pred_probs=pred_probs, features=features, images=images, **options)


def audit(dataset: str = "parquet", path: str | None = None, **options):
    """Run the audit flow (``winnow run``); returns its :class:`~winnow.flows.audit.AuditResult`.

    ``options`` are the flow's parameters: ``noise``, ``rate``, ``seed``, ``model``, ``scorers``,
    ``prune_k``, ``epochs``, ``limit``, ``backbone`` and ``inputs`` (class set, shape, image size,
    label column: :class:`~winnow.tasks.stages.InputOptions`). Configure ``WINNOW_HOME`` first if
    the default ``./data`` is not where the lake should live.
    """
    from winnow.tasks.settings import configure_environment

    configure_environment()
    from winnow.flows.audit import audit as _audit

    return _audit(dataset=dataset, path=path, **options)

