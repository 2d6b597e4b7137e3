"""Where winnow keeps its state: one data directory, overridable by environment.

``WINNOW_HOME`` (default ``./data``) holds the lake, the artifacts, the MLflow store and
Prefect's home. Everything is resolved at call time so tests can point it at a temp dir.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

LOGGING_CONFIG = Path(__file__).resolve().parent.parent / "flows" / "prefect_logging.yml"

@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def lake(self) -> Path:
        return self.home / "lake"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def incoming(self) -> Path:
        return self.home / "incoming"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"


def paths() -> Paths:
    return Paths(Path(os.environ.get("WINNOW_HOME", "data")).resolve())


def configure_environment() -> Paths:
    """Set Prefect/MLflow environment defaults before either is imported.

    Prefect reads its settings at import, so the CLI and the tests call this first.
    """
    p = paths()
    p.home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(p.prefect_home))
    # winnow's logging config: Prefect's own, with tracebacks of expected failures kept off the
    # terminal (see winnow.flows.failures); a user's own PREFECT_LOGGING_SETTINGS_PATH wins.
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(LOGGING_CONFIG))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(p.prefect_home / "results"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # The temporary server's default 20 s start limit is missed on a loaded 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("MLFLOW_TRACKING_URI", p.mlflow_uri)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # GX prints progress bars on stderr for every validation; they are noise in a pipeline log.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TQDM_DISABLE", os.environ.get("TQDM_DISABLE", "0"))
    # Arrow's default pool (mimalloc) keeps what a large read freed: measured here, a 190 MB
    # Parquet file read whole left the process at 800 MB after the table was dropped (126 MB with
    # the system allocator, which hands large blocks back). Set before pyarrow's first allocation;
    # worker processes inherit it through the environment.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if "pyarrow" in sys.modules and os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "system":
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    return p


def refresh_cache(enabled: bool = True):
    """Context in which Prefect tasks recompute instead of reading their cache (``--refresh``).

    Prefect reads its settings when it is imported, so setting ``PREFECT_TASKS_REFRESH_CACHE``
    in the environment afterwards does nothing (that is how ``--refresh`` used to be done, and it
    was silently ignored); ``temporary_settings`` changes the live settings instead.
    """
    from contextlib import nullcontext

    if not enabled:
        return nullcontext()
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    return temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True})
