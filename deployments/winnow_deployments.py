"""winnow's Prefect deployments, declared in one place.

``audit``       the audit flow of the spine, its parameters exposed (run it from the UI or
                ``prefect deployment run audit/audit -p rate=0.3``).
``on-arrival``  the operate flow, started by the event ``winnow.batch.arrived`` that
                ``winnow watch`` emits for each new file in ``data/incoming/``; the event's
                resource id (the file's path) becomes the ``path`` parameter.

``winnow serve`` (or ``python deployments/winnow_deployments.py``) serves both against the
server in ``PREFECT_API_URL``; flow runs execute in that process's machine, one subprocess each.
Both run their tasks on Dask when ``WINNOW_WORKERS`` / ``WINNOW_DASK`` are set (``winnow serve
--workers N`` / ``--dask ADDRESS`` set them; the flows read them where they are defined).
"""
from __future__ import annotations

from pathlib import Path

from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger

from winnow.flows.audit import audit
from winnow.flows.operate import ARRIVAL_EVENT, on_arrival
from winnow.tasks.gates import GateConfig

GATE_TOML = Path(__file__).with_name("gate.toml")


def _settings(path: str | Path | None) -> tuple[dict, int]:
    """Gate thresholds and the canary count from the TOML (the file's [gate] table)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    p = Path(path) if path else GATE_TOML
    data = tomllib.loads(p.read_text())
    return GateConfig.from_mapping(data.get("gate", {})).as_dict(), int(data.get("canaries", 0))


def build(epochs: int | None = None, canaries: int | None = None, gate_config: str | None = None) -> list:
    """The two deployments (module entrypoints, so the installed package is what runs)."""
    gate, default_canaries = _settings(gate_config)
    arrival_params = {"gate": gate, "canaries_n": default_canaries if canaries is None else canaries}
    audit_params = {}
    if epochs is not None:
        arrival_params["epochs"] = audit_params["epochs"] = epochs
    return [
        audit.to_deployment(name="audit", parameters=audit_params, entrypoint_type=EntrypointType.MODULE_PATH,
                            description="inject noise, train, score, prune, retrain, measure", tags=["winnow"]),
        on_arrival.to_deployment(
            name="on-arrival", parameters=arrival_params, entrypoint_type=EntrypointType.MODULE_PATH,
            description="ingest, audit and gate one arriving batch", tags=["winnow"],
            triggers=[DeploymentEventTrigger(name="batch arrived", expect={ARRIVAL_EVENT},
                                             parameters={"path": "{{ event.resource.id }}"})]),
    ]


def serve(epochs: int | None = None, canaries: int | None = None, gate_config: str | None = None) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*build(epochs, canaries, gate_config))


if __name__ == "__main__":
    from winnow.tasks.settings import configure_environment

    configure_environment()
    serve()
