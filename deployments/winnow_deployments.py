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

from prefect.deployments.runner import EntrypointType
from prefect.events import DeploymentEventTrigger

from winnow.flows.audit import audit
from winnow.flows.on_arrival import ARRIVAL_EVENT, on_arrival
from winnow.tasks.gates import GateConfig


def build(epochs: int | None = None, canaries: int | None = None, gate_config: str | None = None) -> list:
    """The two deployments (module entrypoints, so the installed package is what runs).

    The gate settings are loaded once, here (shipped defaults, then ``gate_config``'s keys, then
    ``canaries``), and travel as the on-arrival deployment's ``gate`` parameter, where the UI shows
    them and a run can override them.
    """
    gate = GateConfig.load(gate_config).with_overrides(canaries=canaries)
    arrival_params = {"gate": gate.as_dict()}
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
