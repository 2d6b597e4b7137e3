"""The explain flow: why does the model disagree with the labels of a run's top flagged samples?

    resolve run -> rank by a scorer -> top N
      -> IG (given, suggested; completeness to tolerance; layer IG at model.body)
      -> VAE on the batch -> latent counterfactuals (-> given, -> suggested) + contrastive suff./nec.
      -> [--edda] retrain with EDDA -> alignment + accuracy of both models
      -> PNGs + lake (explanations, explain_checks) + MLflow + Prefect artifact

Every computing stage is a cached task (:mod:`winnow.tasks.explain_stages`); publishing is not
cached (cheap, idempotent), so the lake and MLflow always reflect the latest explain run.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from winnow.flows.scaleout import Stages
from winnow.tasks import artifacts, lake, stages
from winnow.tasks import explain_stages as es
from winnow.tasks.explain_report import CHECKS, checks_markdown, explanation_pngs
from winnow.tasks.explainers.baselines import BASELINE_KINDS
from winnow.tasks.settings import paths, refresh_cache

NO_RUN = "no run '{}' in the lake (see `winnow sql \"SELECT * FROM runs\"`)"


@dataclass
class ExplainResult:
    run_id: str  # the lake run id that was explained (an audit's training key, an arrival's run id)
    mlflow_run_id: str  # the explain parent run
    flow_run_id: str
    scorer: str
    baseline: str
    table: pd.DataFrame  # the rows written to the lake table `explanations`
    checks: pd.DataFrame  # the rows written to `explain_checks`
    report_dir: Path
    stages: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- resolving the run


def _has_table(name: str) -> bool:
    folder = paths().lake / name
    return folder.is_dir() and any(folder.glob("*.parquet"))


def resolve_run(run: str) -> dict:
    """The ``runs`` row of a run to explain, with ``model_key``: the training that made its scores.

    Every run kind is accepted: an audit (``winnow run``, injected noise), a real-data audit
    (``--noise none``) and an arrival (``on-arrival`` / ``winnow gate``), by lake run id, MLflow
    run id, or for arrivals also the batch id or flow run id.

    Raises
    ------
    ValueError
        If no such run is in the lake, or it has no trained model to explain (a run on given
        probabilities, or an arrival stopped by the batch gate before training).
    """
    run = str(run).strip()
    rows = pd.DataFrame()
    if run and _has_table("runs"):
        con = lake.connect()
        try:
            rows = con.execute("SELECT * FROM runs WHERE run_id = ? OR mlflow_run_id = ? OR flow_run_id = ? "
                               "OR batch_id = ? ORDER BY created_at DESC NULLS LAST", [run] * 4).df()
        finally:
            con.close()
    if rows.empty:
        raise ValueError(NO_RUN.format(run))
    row = rows.iloc[0].to_dict()
    kind = "arrival" if row.get("flow") == "on-arrival" else "audit"
    model_key = row["run_id"]
    if kind == "arrival":
        model_key = row.get("train_key")
        model_key = str(model_key) if isinstance(model_key, str) else ""  # NULL in parts written before it
    if not model_key or not artifacts.path("train", model_key, ".json").exists():
        why = ("its batch was refused before anything was trained" if kind == "arrival" and not model_key
               else f"its trained model is not under {paths().home}")
        raise ValueError(f"run '{run}' ({row.get('flow', '?')} flow) has nothing to explain: {why}")
    if artifacts.load_json("train", model_key)["model"] == stages.GIVEN_PROBS:
        raise ValueError(f"run '{run}' was audited from given pred_probs: there is no model to explain; "
                         f"audit the images or features themselves to get explanations")
    return row | {"model_key": model_key, "kind": kind}


def _lake_has_scores(run_id: str, scorer: str) -> bool:
    if not _has_table("scores"):
        return False
    con = lake.connect()
    try:
        return bool(con.execute("SELECT count(*) FROM scores WHERE run_id = ? AND scorer = ?",
                                [run_id, scorer]).fetchone()[0])
    finally:
        con.close()


def default_scorer(row: dict) -> str:
    """The run's first scorer, or ``loss``."""
    names = [s.strip() for s in str(row.get("scorers") or "").split(",") if s.strip()]
    return names[0] if names else "loss"


# ---------------------------------------------------------------- the flow


@flow(name="explain", log_prints=True)
def explain(run_id: str, top: int = 16, scorer: str | None = None, baseline: str = "default",
            rtol: float = 1e-2, max_steps: int = 1024, edda: bool = False, vae_epochs: int = 30,
            vae_latent: int = 16, contrastive_n: int = 1000, eval_n: int = 1000, seed: int = 0) -> ExplainResult:
    """Explain a run's top flagged samples with IG, latent counterfactuals and (optionally) EDDA.

    Parameters
    ----------
    run_id : str
        Lake run id or MLflow run id of any run (for an arrival also its batch or flow run id).
    top : int
        How many of the most suspicious training samples to explain.
    scorer : str, optional
        Score table that ranks them; default the run's first scorer (computed if not in the lake).
    baseline : str
        IG baseline kind (see :mod:`winnow.tasks.explainers.baselines`); ``default`` contrasts
        with the mean image of the other label of the pair.
    rtol, max_steps : IG completeness tolerance and the most quadrature steps tried.
    edda : bool
        Also retrain with EDDA and compare model-explainer alignment (the slow check).
    vae_epochs, vae_latent : the counterfactual generator's training.
    contrastive_n, eval_n : test samples for the contrastive scores and the EDDA alignment.
    seed : int
    """
    log = get_run_logger()
    _check_args(top, baseline, rtol, max_steps, vae_epochs, vae_latent, contrastive_n, eval_n)
    info = resolve_run(run_id)
    key, scored_run = info["model_key"], info["run_id"]  # the training, and the run whose scores rank
    scorer = scorer or default_scorer(info)
    run = Stages()
    meta = artifacts.load_json("train", key)

    score_key = None
    if not _lake_has_scores(scored_run, scorer):
        from winnow.tasks.scorers import parse_scorer_list

        parse_scorer_list(scorer)  # a clear error for an unknown name
        oos = run("out-of-sample", stages.out_of_sample, key) if scorer in ("confident", "ensemble") else None
        score_key = run(f"score-{scorer}", stages.score, key, scorer, oos)
    # an arrival's pool holds our canaries: they are not what the reviewer was asked about
    skip = es.planted_canaries(key) if info["kind"] == "arrival" else set()
    ids = es.flagged_sample_ids(scored_run, scorer, top, score_key, skip=skip)
    log.info("explaining the top %d of %s run %s by %s", len(ids), info["kind"], scored_run, scorer)

    ig_key = run("explain-ig", es.explain_ig, key, ids, baseline, rtol, max_steps)
    # the counterfactual generator is a VAE over images; other inputs get IG alone
    images = len(meta.get("shape") or ()) == 3
    if images:
        vae_key = run("explain-vae", es.train_explainer_vae, meta["batch_id"], vae_latent, 256, vae_epochs, seed)
        cf_key = run("explain-counterfactuals", es.explain_counterfactuals, key, ids, vae_key)
        contrastive = run("explain-contrastive", es.contrastive_check, key, vae_key, contrastive_n, 1.0, seed)
    else:
        log.info("samples of shape %s are not images: IG only, no latent counterfactuals", tuple(meta["shape"]))
    edda_out = run("explain-edda", es.edda_check, key, eval_n, 0.1, 32, seed) if edda else None

    t0 = time.perf_counter()
    ig = artifacts.load_torch("explain-ig", ig_key)
    cf = artifacts.load_torch("explain-cf", cf_key) if images else None
    vae_meta = artifacts.load_json("vae", vae_key) if images else None
    contrastive = contrastive if images else None
    ctx = get_run_context()
    flow_run_id = str(ctx.flow_run.id) if ctx and getattr(ctx, "flow_run", None) else ""
    out_dir = paths().reports / scored_run / "explain"
    if out_dir.exists():  # a rerun with another --top must not leave the previous run's images behind
        shutil.rmtree(out_dir)
    pngs, grid = _pngs(out_dir, ig, cf)
    checks = checks_frame(scored_run, ig, cf, contrastive, edda_out, vae_meta)
    table = explanations_frame(scored_run, scorer, ig, cf, pngs, grid)
    summary_md = (f"### winnow explain — {info['kind']} run `{scored_run}`\n\nTop {len(ids)} by `{scorer}`, baseline `{baseline}`; "
                  f"images in `{out_dir}`.\n\n" + checks_markdown(checks))
    (out_dir / "summary.md").write_text(summary_md)
    mlflow_run_id = _log_mlflow(scored_run, info, scorer, baseline, top, run.records, checks, table, out_dir, flow_run_id,
                                {"rtol": rtol, "max_steps": max_steps, "edda": edda, "vae_epochs": vae_epochs,
                                 "vae_latent": vae_latent, "contrastive_n": contrastive_n, "eval_n": eval_n,
                                 "seed": seed})
    table["mlflow_run_id"] = mlflow_run_id
    checks["mlflow_run_id"] = mlflow_run_id
    # One part per run, overwritten: a rerun replaces its rows instead of adding duplicates.
    lake.replace("explanations", table, part=scored_run)
    lake.replace("explain_checks", checks, part=scored_run)
    page = _review_page(scored_run, out_dir / "review.html")
    if info["kind"] == "arrival":
        _add_to_arrival_report(info["batch_id"], mlflow_run_id)
    _mlflow_client().log_artifact(mlflow_run_id, str(page), artifact_path="explain")
    create_markdown_artifact(key="explain-summary", markdown=summary_md + f"\n\nMLflow run: `{mlflow_run_id}`",
                             description=f"winnow explain {scored_run}")
    run.records.append({"name": "publish", "cached": False, "seconds": round(time.perf_counter() - t0, 3)})
    log.info("explain %s: %s", scored_run, "; ".join(f"{r.method}.{r.name}={r.value:.4g}" for r in checks.itertuples()
                                              if r.name in HEADLINE))
    return ExplainResult(scored_run, mlflow_run_id, flow_run_id, scorer, baseline, table, checks, out_dir, run.records)


def _review_page(run_id: str, dest: Path) -> Path:
    """The review page of an audited run: its flagged samples' explanations and the three checks."""
    from winnow.tasks import report
    from winnow.tasks.explain_report import explain_section_html

    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>winnow explain · {run_id}</title>"
            f"<style>{report.CSS}</style></head><body><h1>winnow review report</h1>"
            f"<div class='meta'>run <code>{run_id}</code></div>{explain_section_html(run_id)}</body></html>")
    return report.write(dest, page)


def _add_to_arrival_report(batch_id: str, mlflow_run_id: str) -> None:
    """Put the explanations into the arrival's own review report (the page `winnow report` opens)."""
    from winnow.tasks import report
    from winnow.tasks.explain_report import explain_section_html

    con = lake.connect()
    try:
        arrival = con.execute("SELECT run_id, report FROM arrivals WHERE batch_id = ?", [batch_id]).df()
    finally:
        con.close()
    if arrival.empty or not Path(arrival["report"].iloc[0]).is_file():
        return  # the report lives on another machine: the explain run's own page has it all
    dest = Path(arrival["report"].iloc[0])
    report.write(dest, report.with_explanations(dest.read_text(), explain_section_html(arrival["run_id"].iloc[0])))
    _mlflow_client().log_artifact(mlflow_run_id, str(dest), artifact_path="arrival")


def _mlflow_client():
    from winnow.tasks.tracking import mlflow_module

    return mlflow_module().tracking.MlflowClient()


def _check_args(top, baseline, rtol, max_steps, vae_epochs, vae_latent, contrastive_n, eval_n) -> None:
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"--top must be a positive integer, got {top!r}")
    if baseline not in BASELINE_KINDS:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINE_KINDS)}")
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"--rtol must lie in (0, 1), got {rtol!r}")
    if not isinstance(max_steps, int) or max_steps < 4:
        raise ValueError(f"--max-steps must be an integer >= 4, got {max_steps!r}")
    for name, v in (("vae_epochs", vae_epochs), ("vae_latent", vae_latent), ("contrastive_n", contrastive_n),
                    ("eval_n", eval_n)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


# ---------------------------------------------------------------- outputs


HEADLINE = {"gap_max", "converged_fraction", "given_validity", "suggested_validity", "sufficiency_mean",
            "necessity_mean", "run_alignment", "edda_alignment", "run_test_accuracy", "edda_test_accuracy"}


def _pngs(out_dir: Path, ig: dict, cf: dict | None) -> tuple[list[Path], Path]:
    names = ig["class_names"]
    if cf is None:  # not images: the counterfactual panels stay blank and say why
        blank = np.zeros_like(ig["x"])
        cf = {"given_x_cf": blank, "suggested_x_cf": blank}
        mark = {t: np.zeros(len(blank), bool) for t in ("given", "suggested")}
        label = lambda t, i, c: "no CF (not images)"  # noqa: E731
    else:
        mark = {t: ~np.asarray(cf[f"{t}_success"], bool) for t in ("given", "suggested")}
        label = lambda t, i, c: f"CF → {c}{' ✗' if mark[t][i] else ''}"  # noqa: E731
    titles, rows = [], []
    for i, sid in enumerate(ig["sample_ids"]):
        g, s = names[int(ig["given"][i])], names[int(ig["suggested"][i])]
        titles.append([f"given {g}", f"IG → {g}", f"IG → {s}", label("given", i, g), label("suggested", i, s)])
        truth = " (flipped)" if bool(ig["is_flipped"][i]) else ""
        rows.append(f"#{i + 1} {sid}{truth}")
    return explanation_pngs(out_dir, ig["sample_ids"], ig["x"], ig["attr_given"], ig["attr_suggested"],
                            cf["given_x_cf"], cf["suggested_x_cf"], titles, rows)


def _joint_steps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Steps for both targets to meet the tolerance: the larger of the two, -1 if either never did."""
    return np.where((a > 0) & (b > 0), np.maximum(a, b), -1)


def explanations_frame(run_id: str, scorer: str, ig: dict, cf: dict | None, pngs: list[Path],
                       grid: Path) -> pd.DataFrame:
    """One row per flagged sample (the lake table ``explanations``); ``cf`` None (not images):
    the counterfactual columns are False / NaN / -1."""
    names = ig["class_names"]
    given, suggested = ig["given"].astype(int), ig["suggested"].astype(int)
    df = pd.DataFrame({
        "run_id": run_id, "rank": np.arange(1, len(given) + 1), "sample_id": ig["sample_ids"], "scorer": scorer,
        "given_label": given, "given_class": [names[i] for i in given],
        "suggested_label": suggested, "suggested_class": [names[i] for i in suggested],
        "p_given": ig["p_given"].astype(float), "p_suggested": ig["p_suggested"].astype(float),
        # the audit knows the injected truth: whether the flag was right, for the reviewer's calibration
        "original_label": np.asarray(ig["original"]).astype(int), "is_flipped": np.asarray(ig["is_flipped"], bool),
        "baseline": ig["baseline"],
        "ig_gap_given": ig["gap_given"], "ig_gap_suggested": ig["gap_suggested"],
        "ig_delta_given": ig["delta_given"], "ig_delta_suggested": ig["delta_suggested"],
        "ig_steps_given": ig["steps_given"], "ig_steps_suggested": ig["steps_suggested"],
        "ig_steps": _joint_steps(ig["steps_given"], ig["steps_suggested"]),
        "layer_ig_gap_given": ig["layer_gap_given"], "layer_ig_gap_suggested": ig["layer_gap_suggested"],
        "layer_ig_steps": _joint_steps(ig["layer_steps_given"], ig["layer_steps_suggested"]),
    })
    n = len(given)
    for t in ("given", "suggested"):
        df[f"cf_{t}_success"] = np.asarray(cf[f"{t}_success"], bool) if cf else np.zeros(n, bool)
        for m in ("latent_distance", "pixel_distance", "input_distance", "target_prob"):
            df[f"cf_{t}_{m}"] = np.asarray(cf[f"{t}_{m}"], float) if cf else np.full(n, np.nan)
        df[f"cf_{t}_iterations"] = np.asarray(cf[f"{t}_iterations"], int) if cf else np.full(n, -1)
    df["image_path"] = [str(p) for p in pngs]
    df["grid_path"] = str(grid)
    df["created_at"] = pd.Timestamp.now(tz="UTC")
    return df


def _nanstat(f, a) -> float:
    a = np.asarray(a, float)
    return float(f(a)) if np.isfinite(a).any() else float("nan")


def checks_frame(run_id: str, ig: dict, cf: dict | None, contrastive: dict | None, edda: dict | None,
                 vae_meta: dict | None) -> pd.DataFrame:
    """The three checks' summary figures (the lake table ``explain_checks``: check, name, value);
    without ``cf`` (not images) the counterfactual check is left out."""
    gaps = np.r_[ig["gap_given"], ig["gap_suggested"]]
    rel = gaps / np.maximum(np.abs(np.r_[ig["delta_given"], ig["delta_suggested"]]), 1e-12)
    steps = _joint_steps(ig["steps_given"], ig["steps_suggested"])
    layer_gaps = np.r_[ig["layer_gap_given"], ig["layer_gap_suggested"]]
    layer_steps = _joint_steps(ig["layer_steps_given"], ig["layer_steps_suggested"])
    figures = {"ig": {
        "samples": len(steps), "rtol": ig["rtol"], "max_steps": ig["max_steps"],
        "gap_median": _nanstat(np.nanmedian, gaps), "gap_max": _nanstat(np.nanmax, gaps),
        "relative_gap_max": _nanstat(np.nanmax, rel), "converged_fraction": float(np.mean(steps > 0)),
        "steps_median": float(np.median(steps[steps > 0])) if (steps > 0).any() else float("nan"),
        "steps_max": float(steps.max()) if (steps > 0).all() else float("nan"),
        "layer_gap_max": _nanstat(np.nanmax, layer_gaps), "layer_converged_fraction": float(np.mean(layer_steps > 0)),
        "flagged_truly_flipped": float(np.mean(ig["is_flipped"])),
    }}
    if cf is not None:
        figures["counterfactual"] = _counterfactual_figures(cf, contrastive, vae_meta)
    if edda is not None:
        e = {"eval_samples": edda["n_eval"], "k": edda["k"]}
        for who in ("run", "edda"):
            e.update({f"{who}_{m}": edda[who][m] for m in ("alignment", "drop_top", "drop_random", "drop_least",
                                                           "confidence", "test_accuracy")})
        figures["edda"] = e
    return pd.DataFrame([{"run_id": run_id, "method": check, "name": name, "value": float(v)}
                         for check, vals in figures.items() for name, v in vals.items()])


def _counterfactual_figures(cf: dict, contrastive: dict, vae_meta: dict) -> dict:
    c = {}
    for t in ("given", "suggested"):
        s = cf[f"{t}_summary"]
        c.update({f"{t}_validity": s["validity"], f"{t}_latent_distance_median": s["latent_distance_median"],
                  f"{t}_pixel_distance_median": s["pixel_distance_median"],
                  # reached without moving: the VAE's reconstruction is already called the target
                  f"{t}_at_reconstruction": float(np.mean(cf[f"{t}_success"] & (cf[f"{t}_iterations"] == 0)))})
    c.update({f"{k}": v for k, v in contrastive["summary"].items() if k != "strength"})
    c.update({"contrastive_samples": contrastive["n"], "vae_final_loss": vae_meta["loss"][-1],
              "vae_epochs": vae_meta["epochs"]})
    return c


def _log_mlflow(run_id: str, info: dict, scorer: str, baseline: str, top: int, records: list[dict],
                checks: pd.DataFrame, table: pd.DataFrame, out_dir: Path, flow_run_id: str, settings: dict) -> str:
    """Parent run 'explain <run_id>' (tagged, in the audit's experiment) with a nested run per stage
    and a nested ``explanations`` run holding the metrics, the PNGs and the table."""
    from winnow.tasks.tracking import finite_metrics, use_experiment

    mlflow = use_experiment()
    experiment_id = None
    audit_run = str(info.get("mlflow_run_id") or "")
    if audit_run:
        try:
            experiment_id = mlflow.get_run(audit_run).info.experiment_id
        except Exception:  # the audit's MLflow store may be elsewhere; the default experiment will do
            experiment_id = None
    metrics = finite_metrics({f"{r.method}.{r.name}": r.value for r in checks.itertuples(index=False)})
    tags = {"winnow.run_id": run_id, "winnow.audit_mlflow_run_id": audit_run, "prefect.flow_run_id": flow_run_id,
            "winnow.flow": "explain"}
    params = {"run_id": run_id, "scorer": scorer, "baseline": baseline, "top": top, **settings}
    with mlflow.start_run(run_name=f"explain {run_id}", experiment_id=experiment_id, tags=tags) as parent:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        for stage in records:
            with mlflow.start_run(run_name=stage["name"], nested=True, experiment_id=experiment_id):
                mlflow.log_params({"stage": stage["name"], "cached": stage["cached"]})
                mlflow.log_metrics(finite_metrics({"seconds": stage["seconds"]}))
        with mlflow.start_run(run_name="explanations", nested=True, experiment_id=experiment_id, tags=tags):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics(metrics)
            mlflow.log_artifacts(str(out_dir), artifact_path="explain")
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "explanations.csv"
                table.to_csv(p, index=False)
                mlflow.log_artifact(str(p))
        mlflow.log_artifact(str(out_dir / "grid.png"), artifact_path="explain")
        mlflow.log_artifact(str(out_dir / "summary.md"), artifact_path="explain")
        return parent.info.run_id


# ---------------------------------------------------------------- CLI


def add_commands(subparsers) -> dict:
    p = subparsers.add_parser(
        "explain", help="explain why the model disagrees with the labels of a run's top flagged samples",
        description="Run the explain flow on a run (an audit, a real-data audit or an arrival): Integrated Gradients for the given and the suggested "
                    "label (with its completeness check), VAE latent counterfactuals toward each (validity, "
                    "proximity, contrastive sufficiency/necessity) and, with --edda, model-explainer alignment "
                    "vs. an EDDA-retrained model. Writes PNGs under data/reports/<run_id>/explain/, the lake "
                    "tables `explanations` and `explain_checks`, an MLflow run and a Prefect artifact.")
    p.add_argument("run_id", metavar="RUN_ID", help="lake run id or MLflow run id of any run; for an arrival also "
                                                      "its batch id or flow run id")
    p.add_argument("--top", type=_positive_int, default=16, help="how many flagged samples to explain (default 16)")
    p.add_argument("--scorer", help="score table that ranks the samples (default: the run's first scorer)")
    p.add_argument("--baseline", choices=BASELINE_KINDS, default="default",
                   help="IG baseline (default: mean image of the other label of the pair)")
    p.add_argument("--rtol", type=float, default=1e-2, help="IG completeness tolerance, relative (default 0.01)")
    p.add_argument("--max-steps", type=_positive_int, default=1024, help="most IG quadrature steps tried (default 1024)")
    p.add_argument("--edda", action="store_true", help="also run the EDDA alignment check (retrains the model)")
    p.add_argument("--vae-epochs", type=_positive_int, default=30, help="counterfactual VAE epochs (default 30)")
    p.add_argument("--refresh", action="store_true", help="ignore cached results and recompute")
    return {"explain": cmd_explain}


def _positive_int(v: str) -> int:
    i = int(v)
    if i <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return i


def cmd_explain(args) -> int:
    # Fail on bad input before a temporary Prefect server is started for nothing.
    _check_args(args.top, args.baseline, args.rtol, args.max_steps, args.vae_epochs, 16, 1000, 1000)
    resolve_run(args.run_id)
    if args.scorer:
        from winnow.tasks.scorers import parse_scorer_list

        if len(parse_scorer_list(args.scorer)) != 1:
            raise ValueError(f"--scorer takes one scorer name, got {args.scorer!r}")
    with refresh_cache(args.refresh):
        result = explain(run_id=args.run_id, top=args.top, scorer=args.scorer, baseline=args.baseline, rtol=args.rtol,
                         max_steps=args.max_steps, edda=args.edda, vae_epochs=args.vae_epochs)
    from winnow.flows.cli import print_frame

    for check, (title, _) in CHECKS.items():
        rows = result.checks[result.checks["method"] == check][["name", "value"]]
        if len(rows):
            print_frame(rows, "table", title=title)
    cols = ["rank", "sample_id", "given_class", "suggested_class", "is_flipped", "ig_gap_given", "ig_gap_suggested",
            "ig_steps", "cf_given_success", "cf_suggested_success"]
    print_frame(result.table[cols], "table", title=f"top {len(result.table)} by {result.scorer}")
    cached = [s["name"] for s in result.stages if s["cached"]]
    print(f"stages served from cache: {', '.join(cached) if cached else 'none'}")
    print(f"images: {result.report_dir}")
    print(f"lake run_id: {result.run_id}")
    print(f"MLflow run id: {result.mlflow_run_id}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from winnow.flows.cli import main

    sys.exit(main(["explain", *sys.argv[1:]]))
