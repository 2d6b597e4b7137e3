"""Publishing an arrival's outcome: the review report, the MLflow run, the lake rows, the Prefect
artifacts — and, through :func:`winnow.tasks.gates.release`, the champion when the gate passed.

Not cached: cheap and idempotent, so the lake and MLflow always reflect the latest verdict.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from winnow.flows import review_app
from winnow.tasks import artifacts, gates, lake, registry, report, review, stages
from winnow.tasks.settings import paths


def publish(path, stream, batch_id, verdict: gates.Verdict, figures: dict, flow_run_id: str, run, committed: bool,
            flagged=None, pool=None, names=(), planted=None, scores=None, train_key=None, cand_key=None) -> dict:
    """The report, the MLflow run, promotion if the gate passed, the lake, the Prefect artifacts.

    Returns
    -------
    dict
        ``run_id``, ``mlflow_run_id``, ``champion_version`` (None unless promoted),
        ``report_path`` and ``flagged`` (rows queued for review).
    """
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    t0 = time.perf_counter()
    run.finalize()  # the seconds of stages run on Dask
    run_id = artifacts.key_of("on-arrival", batch_id, train_key, cand_key, flow_run_id)
    flagged = flagged if flagged is not None else review.empty_queue()
    out_dir = paths().reports / "arrivals" / run_id
    page = render_report(run_id, stream, path, batch_id, verdict, figures, flagged, pool, names, planted, scores,
                          committed)
    report_path = report.write(out_dir / "review.html", page)

    model = example = None
    if cand_key is not None:
        ctx, data, _ = stages.load_context(cand_key)
        model, example = ctx.model_at(-1), ctx.rows.take([0, 1]).numpy()  # two rows, not the set
    params = {"path": path, "stream": stream, "batch_id": batch_id, "committed": committed,
              "flow_run_id": flow_run_id, "verdict": "passed" if verdict.passed else "failed"}
    if "candidate_remedy" in figures:
        params["candidate_remedy"] = figures["candidate_remedy"]
    mlflow_run_id, model_uri = registry.log_run(
        f"on-arrival {Path(path).name}", params,
        {k: v for k, v in figures.items() if not isinstance(v, str)} | {"gate_passed": float(verdict.passed)},
        [report_path], model=model, model_example=example,
        tags={"winnow.run_id": run_id, "winnow.batch_id": batch_id, "prefect.flow_run_id": flow_run_id,
              "winnow.gate": "passed" if verdict.passed else "failed"},
        texts={"gate.md": verdict.markdown()})
    version = gates.release(verdict, model_uri, mlflow_run_id,
                            {"test_accuracy": figures.get("candidate_accuracy"), "batch_id": batch_id,
                             "winnow.run_id": run_id})

    now = pd.Timestamp.now(tz="UTC")
    lake.replace("gates", verdict.frame(run_id), part=run_id)
    lake.replace("arrivals", pd.DataFrame([{
        "batch_id": batch_id, "path": str(path), "run_id": run_id, "flow_run_id": flow_run_id,
        "mlflow_run_id": mlflow_run_id, "verdict": "passed" if verdict.passed else "failed", "committed": committed,
        "flagged": len(flagged), "champion_version": version or "", "report": str(report_path),
        "summary": verdict.summary(), "stages": json.dumps(run.records), "created_at": now}]), part=batch_id)
    lake.replace("runs", pd.DataFrame([{
        "run_id": run_id, "mlflow_run_id": mlflow_run_id, "flow_run_id": flow_run_id, "flow": "on-arrival",
        "created_at": now, "scorers": ",".join(names), "k": int(figures.get("estimated_wrong_labels", 0)),
        "batch_id": batch_id, "dataset": stream, "train_key": train_key or ""}]), part=mlflow_run_id)
    for name, s in (scores or {}).items():
        lake.replace("scores", pd.DataFrame({"run_id": run_id, "scorer": name, "sample_id": pool.sample_id.astype(str),
                                             "score": s}), part=f"{run_id}-{name}")

    md = (verdict.markdown() + "\n\n" + "\n".join(f"- **{k}**: {v}" for k, v in figures.items())
          + f"\n\nMLflow run `{mlflow_run_id}`; review report `{report_path}`"
          + (f"; champion is now version {version}" if version else ""))
    create_markdown_artifact(key="gate-verdict", markdown=md, description=f"winnow gate {batch_id}")
    create_link_artifact(key="review-report", link=report_path.resolve().as_uri(),
                         link_text=f"review report {run_id}", description="flagged samples, plots, gate verdict")
    run.records.append({"name": "publish", "cached": False, "seconds": round(time.perf_counter() - t0, 3)})
    return {"run_id": run_id, "mlflow_run_id": mlflow_run_id, "champion_version": version,
            "report_path": report_path, "flagged": len(flagged)}


def render_report(run_id, stream, path, batch_id, verdict, figures, flagged, pool, names, planted, scores,
                   committed) -> str:
    images = np.zeros((0, 1, 1, 1), np.float32)
    plot = None
    table = flagged.copy()
    if pool is not None and len(flagged):
        where = pd.Series(np.arange(len(pool)), index=pool.sample_id.astype(str))
        images = pool.x[where.loc[flagged["sample_id"]].to_numpy()]
        for n in names:
            table[f"rank_{n}"] = [json.loads(r)[n] for r in flagged["ranks"]]
    if pool is not None and scores:
        flagged_mask = pd.Index(pool.sample_id.astype(str)).isin(flagged["sample_id"])
        plot = report.summary_plot(scores, flagged_mask | (planted if planted is not None else False),
                                   pool.label, pool.class_names, planted)
    # the flagged samples reach the review queue only with the batch: only then is there a page to link
    review_link = ((review_app.review_url(batch_id), f"winnow review serve --run {batch_id}")
                   if committed and len(flagged) else None)
    return report.render(run_id, f"stream {stream} · batch {batch_id} · {Path(path).name}", verdict.passed,
                         verdict.summary(), verdict.reports, table, images, figures, plot, list(names), review_link)


