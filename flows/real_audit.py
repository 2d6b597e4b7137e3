"""Publishing an audit of real labels (``winnow run --noise none``, the default for a user's data).

No truth is known, so nothing is graded: the run says how many labels look wrong (and by which
estimator), which ones (the top ``k`` of the first scorer), what they should probably be (the
out-of-sample prediction), and queues them for review exactly as arrivals do. Every row was
audited, the test split included; accuracy is the out-of-sample agreement with the given labels.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
from prefect.artifacts import create_markdown_artifact

from winnow.flows.audit import AuditResult, current_flow_run_id
from winnow.tasks import artifacts, lake, noise_rate, review, stages
from winnow.tasks.settings import paths
from winnow.tasks.tracking import log_audit

ESTIMATORS = {**noise_rate.DESCRIPTIONS, "--prune-k": "given with --prune-k"}


def publish_real_audit(train_key: str, oos_key: str, score_keys: dict[str, str], names: list[str], k: int,
                       k_source: str, params: dict, run, log, second_key: str | None = None) -> AuditResult:
    """Flag, suggest, queue for review; write the lake, MLflow and the Prefect summary.

    The suggested label is the argmax of :func:`winnow.tasks.review.suggestion_probs`: the
    out-of-sample probabilities averaged with the label-free probe's (``second_key``,
    ``stages.second_opinion``) when there is one."""
    t0 = time.perf_counter()
    run.finalize()  # the seconds of stages run on Dask
    ctx, data, meta = stages.load_context(train_key)
    audited = data.train  # every row of the batch
    probs = artifacts.load_torch("oos", oos_key).numpy()
    score_tables = {n: artifacts.load_frame("scores", key) for n, key in score_keys.items()}
    scores = {n: t["score"].to_numpy() for n, t in score_tables.items()}
    flagged, ranks = review.rank_flags(scores, names[0], k)
    second = artifacts.load_torch("second-opinion", second_key).numpy() if second_key is not None else None
    suggestion = review.suggestion_probs(probs, second)
    rows = review.flagged_rows(audited, flagged, suggestion, scores, ranks, names[0], params["batch_id"],
                               run_id=train_key)

    n = len(audited)
    agree = probs.argmax(1) == data.noisy
    test = audited.split == "test"
    estimate = {
        "samples": n, "estimated_wrong_labels": int(k), "estimated_noise_rate": k / max(n, 1),
        "estimator": ESTIMATORS.get(k_source, k_source),
        "folds": "given pred_probs" if meta["model"] == stages.GIVEN_PROBS else f"{ctx.kfold}-fold",
        "oos_accuracy": float(agree.mean()),
        "test_rows": int(test.sum()), "test_oos_accuracy": float(agree[test].mean()) if test.any() else float("nan"),
        "flagged_in_test": int((flagged & test).sum()),
    }
    log.info("estimated wrong labels: %d of %d (%.1f%%) by %s; out-of-sample accuracy %.4f", k, n,
             100 * estimate["estimated_noise_rate"], k_source, estimate["oos_accuracy"])

    flow_run_id = current_flow_run_id()
    run_dir = paths().reports / train_key
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_md = markdown(estimate, rows, params, train_key)
    (run_dir / "summary.md").write_text(summary_md)
    model = example = None
    if meta["model"] != stages.GIVEN_PROBS:
        model, example = ctx.model_at(-1), ctx.rows.take([0, 1]).numpy()  # two rows, not the set
    mlflow_run_id = log_audit(
        f"audit {params['dataset']} (real labels) {params['model']}", params, run.records, {},
        {k_: v for k_, v in estimate.items() if isinstance(v, (int, float))}, score_tables,
        [run_dir / "summary.md"], model=model, model_example=example,
        tags={"winnow.run_id": train_key, "prefect.flow_run_id": flow_run_id, "winnow.mode": "real"})

    for name, t in score_tables.items():
        lake.write("scores", t.assign(run_id=train_key, scorer=name)[["run_id", "scorer", "sample_id", "score"]],
                   part=f"{train_key}-{name}")
    lake.replace("flags", rows.assign(rank=np.arange(1, len(rows) + 1), scorer=names[0])[
        ["run_id", "sample_id", "batch_id", "rank", "scorer", "score", "given_label", "suggested_label",
         "given_class", "suggested_class", "split"]], part=train_key)
    # every row's suggestion distribution: the soft targets of `winnow export --relabel soft`
    lake.replace("suggestions", suggestion_table(train_key, audited.sample_id, suggestion), part=train_key)
    dims = {"dataset": params["dataset"], "noise": "none", "rate": 0.0, "seed": params["seed"],
            "model": params["model"]}
    lake.replace("metrics", pd.DataFrame([{"run_id": train_key, "scorer": "", "name": m, "value": float(v), **dims}
                                          for m, v in estimate.items() if isinstance(v, (int, float))]),
                 part=f"{train_key}-estimate")
    lake.write("runs", pd.DataFrame([{
        "run_id": train_key, "mlflow_run_id": mlflow_run_id, "flow_run_id": flow_run_id, "flow": "audit",
        "created_at": pd.Timestamp.now(tz="UTC"), "scorers": params["scorers"], "k": int(k),
        "batch_id": params["batch_id"], "mode": "real", "path": params.get("path"), **dims}]), part=mlflow_run_id)
    queued = review.enqueue(rows)
    create_markdown_artifact(key="audit-summary", markdown=summary_md + f"\n\nMLflow run: `{mlflow_run_id}`",
                             description=f"winnow audit {train_key} (real labels)")
    run.records.append({"name": "publish", "cached": False, "seconds": round(time.perf_counter() - t0, 3)})
    log.info("%d flagged samples queued for review (%d new)", len(rows), queued)
    return AuditResult(train_key, mlflow_run_id, flow_run_id, params, [],
                       {"oos": estimate["oos_accuracy"], "test_oos": estimate["test_oos_accuracy"]}, int(k), k_source,
                       run.records, mode="real", flagged=rows, estimate=estimate)


def suggestion_table(run_id: str, sample_ids: np.ndarray, suggestion: np.ndarray):
    """``suggestions(run_id, sample_id, probs)``: one row per audited sample, ``probs`` a
    fixed-size list<float32> of the class probabilities (built column-wise: 10⁶ rows in a second)."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(suggestion, dtype=np.float32).reshape(-1))
    return pa.table({"run_id": pa.array([run_id] * len(sample_ids), pa.string()),
                     "sample_id": pa.array(np.asarray(sample_ids).astype(str)),
                     "probs": pa.FixedSizeListArray.from_arrays(flat, suggestion.shape[1])})


def markdown(estimate: dict, rows: pd.DataFrame, params: dict, run_id: str, top: int = 20) -> str:
    lines = [f"### winnow audit — {params['dataset']} ({params['form']}), labels as given", "",
             f"**{estimate['estimated_wrong_labels']:,} of {estimate['samples']:,} labels look wrong "
             f"({estimate['estimated_noise_rate']:.1%})**, estimated by {estimate['estimator']} "
             f"({estimate['folds']}). Out-of-sample agreement with the given labels: "
             f"{estimate['oos_accuracy']:.4f}.", "",
             f"Top {min(top, len(rows))} of {len(rows)} flagged (ranked by `{params['scorers'].split(',')[0]}`):", "",
             "| rank | sample | split | given | suggested | score |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows.head(top).itertuples(index=False), 1):
        lines.append(f"| {i} | `{r.sample_id}` | {r.split} | {r.given_class} | {r.suggested_class} | {r.score:.3f} |")
    lines += ["", f"Review in the browser: `winnow review serve --run {run_id}` (http://127.0.0.1:8765/), or "
                  f"`winnow review list` · `winnow review relabel ID --to N` · `winnow review drop ID`; "
                  f"then `winnow export {run_id} --out cleaned.parquet` (add `--relabel soft` for every row's "
                  f"training target as the default remedy, soft-all, sets it)."]
    return "\n".join(lines)
