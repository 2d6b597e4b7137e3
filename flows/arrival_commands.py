"""The commands that serve, run and read the on-arrival flow: `winnow serve`, `winnow gate`,
`winnow report`."""
from __future__ import annotations

import sys
from pathlib import Path

from winnow.flows.scaleout import export_runner_choice, worker_options
from winnow.tasks import arrivals, gates, lake
from winnow.tasks.settings import paths


def add_commands(sub) -> dict:
    serve = sub.add_parser("serve", help="serve the audit and on-arrival deployments (needs PREFECT_API_URL)",
                           description="Serve the deployments declared in deployments/ against a running "
                                       "`prefect server start` (export PREFECT_API_URL first).")
    serve.add_argument("--epochs", type=int, help="training epochs for on-arrival runs (default: the recipe's)")
    serve.add_argument("--canaries", type=int, help="canaries planted per arrival (default: the gate config's)")
    serve.add_argument("--gate-config", help="TOML with [gate] thresholds; the keys it sets replace the shipped "
                                             "defaults (winnow/tasks/gate.toml)")
    worker_options(serve)

    g = sub.add_parser("gate", help="run the release gate on a batch, or show a recorded verdict (exit 1: failed)",
                       description="With PATH: process it like an arrival and exit 0 if the gate passes, 1 if "
                                   "it fails. Without: exit with the latest (or --run) recorded verdict.")
    g.add_argument("path", nargs="?", help="a Parquet file or a folder with labels.csv")
    g.add_argument("--run", help="a recorded run (run id, MLflow run id, flow run id or batch id)")
    g.add_argument("--stream", default="incoming")
    g.add_argument("--epochs", type=int)
    g.add_argument("--canaries", type=int, help="canaries planted (default: the gate config's)")
    g.add_argument("--remedy", choices=gates.CANDIDATE_REMEDIES, default="soft-all",
                   help="how the candidate model learns from the accepted data: soft-all (default: winnow's "
                        "remedy, soft targets from the audit's opinions) or none (the labels, decisions applied)")
    g.add_argument("--gate-config", help="TOML with [gate] thresholds; the keys it sets replace the shipped "
                                         "defaults (winnow/tasks/gate.toml)")

    rep = sub.add_parser("report", help="write (or fetch from MLflow) and open a run's review report",
                         description="Print the path of a run's HTML review report; --open shows it in a browser.")
    rep.add_argument("run", nargs="?", help="run id, MLflow run id, flow run id or batch id (default: latest)")
    rep.add_argument("--open", action="store_true", help="open it in the default browser")
    return {"serve": cmd_serve, "gate": cmd_gate, "report": cmd_report}


def _deployments_module():
    import importlib.util

    src = Path(__file__).resolve().parent.parent / "deployments" / "winnow_deployments.py"
    if not src.exists():
        raise FileNotFoundError(f"{src}: deployments module missing")
    spec = importlib.util.spec_from_file_location("winnow_deployments", src)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd_serve(args) -> int:
    import os

    if not os.environ.get("PREFECT_API_URL"):
        print("winnow serve: error: set PREFECT_API_URL to a running `prefect server start` "
              "(e.g. http://127.0.0.1:4200/api)", file=sys.stderr)
        return 2
    export_runner_choice(args)  # before the deployments' flows are imported
    module = _deployments_module()
    module.serve(epochs=args.epochs, canaries=args.canaries, gate_config=args.gate_config)
    return 0


def _find_arrival(ref: str | None) -> dict:
    t = lake.paths().lake / "arrivals"
    if not t.exists() or not any(t.glob("*.parquet")):
        raise ValueError("no arrival has been processed yet")
    df = lake.sql("SELECT * FROM arrivals ORDER BY created_at DESC")
    if ref:
        hit = df[[any(str(r[c]).startswith(ref) for c in ("run_id", "mlflow_run_id", "flow_run_id", "batch_id"))
                  for _, r in df.iterrows()]]
        if hit.empty:
            raise ValueError(f"no processed arrival matches {ref!r}")
        df = hit
    return df.iloc[0].to_dict()


def cmd_gate(args) -> int:
    if args.path:
        if not arrivals.is_arrival(Path(args.path)):
            raise ValueError(f"{args.path}: not a batch (expected a .parquet file or a folder with "
                             f"{arrivals.LABEL_FILE})")
        gate = gates.GateConfig.load(args.gate_config).with_overrides(canaries=args.canaries)
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

        from winnow.flows.on_arrival import on_arrival

        # without PREFECT_API_URL Prefect starts a temporary server: give it time on a busy machine.
        # A GateFailed propagates: the CLI prints it last and exits 1 (winnow.flows.failures).
        with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}):
            result = on_arrival(path=str(Path(args.path).resolve()), stream=args.stream, epochs=args.epochs,
                                gate=gate.as_dict(), remedy=args.remedy)
        if result.status == "duplicate":
            row = _find_arrival(result.batch_id)
            print(f"batch {result.batch_id} was processed before: {row['summary']}")
            return 0 if row["verdict"] == "passed" else 1
        print(f"{result.verdict}; champion version {result.champion_version}; report {result.report_path}")
        return 0
    row = _find_arrival(args.run)
    print(f"{row['batch_id']} ({Path(row['path']).name}): {row['summary']}")
    return 0 if row["verdict"] == "passed" else 1


def cmd_report(args) -> int:
    row = _find_arrival(args.run)
    dest = Path(row["report"])
    if not dest.exists():  # another machine, or reports cleared: fetch the MLflow copy
        from winnow.tasks.tracking import mlflow_module

        dest = paths().reports / "arrivals" / row["run_id"]
        dest.mkdir(parents=True, exist_ok=True)
        dest = Path(mlflow_module().artifacts.download_artifacts(run_id=row["mlflow_run_id"], artifact_path="review.html",
                                                          dst_path=str(dest)))
    print(dest)
    if args.open:
        import webbrowser

        webbrowser.open(dest.resolve().as_uri())
    return 0
