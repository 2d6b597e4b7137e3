"""MLflow at the edge: one parent run per flow run, a nested run per stage."""
from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import pandas as pd

from .settings import paths

EXPERIMENT = "winnow-audit"


def mlflow_module():
    os.environ.setdefault("MLFLOW_TRACKING_URI", paths().mlflow_uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    return mlflow


def use_experiment(name: str = EXPERIMENT):
    """Select (creating if needed) an experiment whose artifacts live under WINNOW_HOME.

    With a sqlite store MLflow would otherwise put artifacts in ``./mlruns`` of whatever the
    current directory is; pinning the location keeps a run's files beside its metadata.
    """
    mlflow = mlflow_module()
    with _store_setup_lock(os.environ["MLFLOW_TRACKING_URI"]):
        if mlflow.get_experiment_by_name(name) is None:
            root = (paths().home / "mlartifacts").resolve()
            root.mkdir(parents=True, exist_ok=True)
            try:
                mlflow.create_experiment(name, artifact_location=root.as_uri())
            except Exception:  # created concurrently by another process: fine, select it below
                if mlflow.get_experiment_by_name(name) is None:
                    raise
        mlflow.set_experiment(name)
    return mlflow


def _store_setup_lock(uri: str):
    """A sqlite store's first use creates and migrates its tables; two runs starting together on a
    fresh home raced there ("table _alembic_tmp_experiments already exists"). Serialise that step
    across processes with a lock file beside the database (other stores need none)."""
    from contextlib import nullcontext

    from .lake import exclusive_lock

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    return exclusive_lock(Path(uri[len("sqlite:///"):] + ".lock"))


def finite_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_audit(run_name: str, params: dict, stages: list[dict], scorer_metrics: dict[str, dict],
              run_metrics: dict, score_tables: dict[str, pd.DataFrame], files: list[Path],
              model=None, model_example=None, experiment: str = EXPERIMENT, tags: dict | None = None) -> str:
    """Record one audit: params, a nested run per stage (seconds, cached?) and per scorer
    (detection metrics + its score table), run-level metrics, files (plots, summary) and the model.

    Returns the parent run id.
    """
    mlflow = use_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags or {}) as parent:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        for stage in stages:
            with mlflow.start_run(run_name=stage["name"], nested=True):
                mlflow.log_params({"stage": stage["name"], "cached": stage["cached"]})
                mlflow.log_metrics(finite_metrics({"seconds": stage["seconds"], **stage.get("metrics", {})}))
        with tempfile.TemporaryDirectory() as tmp:
            for name, metrics in scorer_metrics.items():
                with mlflow.start_run(run_name=f"score-{name}", nested=True):
                    mlflow.log_params({"stage": "score", "scorer": name})
                    mlflow.log_metrics(finite_metrics(metrics))
                    if name in score_tables:
                        p = Path(tmp) / f"scores-{name}.csv"
                        score_tables[name].to_csv(p, index=False)
                        mlflow.log_artifact(str(p), artifact_path="scores")
        mlflow.log_metrics(finite_metrics(run_metrics))
        for f in files:
            mlflow.log_artifact(str(f))
        if model is not None:
            import mlflow.pytorch

            # pt2 (the default format) traces forward on an example, which also records the signature
            mlflow.pytorch.log_model(model.cpu().eval(), name="model", input_example=model_example,
                                     pip_requirements=["torch"])
        return parent.info.run_id


def get_run(run_id: str):
    return mlflow_module().get_run(run_id)
