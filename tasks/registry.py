"""The MLflow model registry at the edge: the champion, and promoting a candidate to it.

The registered model ``winnow-classifier`` holds one version per model that passed the gate; the
alias ``champion`` names the one in service. Only :func:`promote` moves it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .tracking import mlflow_module, use_experiment

MODEL_NAME = "winnow-classifier"
ALIAS = "champion"
EXPERIMENT = "winnow-operate"


def _client():
    mlflow = mlflow_module()
    return mlflow.MlflowClient()


def champion(name: str = MODEL_NAME) -> dict | None:
    """The version the alias names (version, run id, recorded test accuracy), or None."""
    from mlflow.exceptions import MlflowException

    try:
        mv = _client().get_model_version_by_alias(name, ALIAS)
    except MlflowException:  # no such model or no such alias yet
        return None
    acc = mv.tags.get("test_accuracy")
    return {"version": str(mv.version), "run_id": mv.run_id, "source": mv.source,
            "test_accuracy": float(acc) if acc is not None else None, "tags": dict(mv.tags)}


def champion_accuracy(x: np.ndarray, y: np.ndarray, name: str = MODEL_NAME) -> tuple[float | None, str]:
    """Test accuracy of the champion on *this* test split, so candidate and champion are compared
    on the same samples; falls back to its recorded figure if it cannot run on them (another
    sample shape). Returns (accuracy or None, how it was obtained)."""
    current = champion(name)
    if current is None:
        return None, "no champion yet"
    import torch

    try:
        model = mlflow_module().pytorch.load_model(f"models:/{name}@{ALIAS}")
        with torch.no_grad():
            pred = model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
        return float((pred == np.asarray(y)).mean()), f"champion v{current['version']} on this test split"
    except Exception as exc:  # an exported program rejects other input shapes: use the record
        return current["test_accuracy"], f"champion v{current['version']} recorded ({exc.__class__.__name__})"


def log_run(run_name: str, params: dict, metrics: dict, files: list[Path], model=None, model_example=None,
            tags: dict | None = None, texts: dict[str, str] | None = None) -> tuple[str, str | None]:
    """One MLflow run for an arrival: params, metrics, files, the candidate model.

    Returns (run id, model URI or None).
    """
    import math

    mlflow = use_experiment(EXPERIMENT)  # artifacts under WINNOW_HOME, beside the store
    model_uri = None
    with mlflow.start_run(run_name=run_name, tags=tags or {}) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
        for f in files:
            mlflow.log_artifact(str(f))
        with tempfile.TemporaryDirectory() as tmp:
            for fname, text in (texts or {}).items():
                (Path(tmp) / fname).write_text(text)
                mlflow.log_artifact(str(Path(tmp) / fname))
        if model is not None:
            import mlflow.pytorch

            info = mlflow.pytorch.log_model(model.cpu().eval(), name="model", input_example=model_example,
                                            pip_requirements=["torch"])
            model_uri = info.model_uri
        return run.info.run_id, model_uri


def promote(model_uri: str, tags: dict, name: str = MODEL_NAME) -> str:
    """Register ``model_uri`` as a new version and move the ``champion`` alias to it."""
    mlflow = mlflow_module()
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    _client().set_registered_model_alias(name, ALIAS, mv.version)
    return str(mv.version)


def set_run_tags(run_id: str, tags: dict) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))
