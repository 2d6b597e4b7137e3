"""Test setup: every test session gets its own WINNOW_HOME (lake, artifacts, MLflow store,
Prefect home) in a temp dir, set before Prefect or MLflow is imported."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="winnow-test-"))
os.environ["WINNOW_HOME"] = str(_HOME)
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_HOME / 'mlflow.db'}"
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.pop("PREFECT_API_URL", None)

from winnow.tasks.settings import configure_environment  # noqa: E402

configure_environment()


@pytest.fixture(scope="session")
def winnow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def prefect_server():
    """One real temporary Prefect server (subprocess + sqlite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A private lake/artifact dir for one test (Prefect and MLflow stay session-wide)."""
    monkeypatch.setenv("WINNOW_HOME", str(tmp_path))
    return tmp_path
