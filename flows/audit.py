"""The audit flow: the spine every other capability plugs into.

    ingest -> validate (GX) -> commit [-> embed (--backbone)] -> labels -> train -> out-of-sample
           -> score xN -> estimate k
           -> graded (injected noise): prune + retrain per scorer (+ oracle) -> measure -> publish
           -> real labels (--noise none): flag top k + suggest labels -> review queue -> publish
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from winnow.flows.scaleout import Stages
from winnow.flows.scaleout import Pending, checkpoint_logits, out_of_sample, runner_from_env
from winnow.tasks import artifacts, lake, noise_rate, stages
from winnow.tasks.metrics import detection_metrics
from winnow.tasks.plots import detection_curves
from winnow.tasks.remedies import DEFAULT_REMEDY, NEEDS_OOS, NEEDS_SECOND_OPINION, REMEDIES
from winnow.tasks.scorers import default_scorers, parse_scorer_list
from winnow.tasks.scorers.base import scorer_class
from winnow.tasks.settings import paths
from winnow.tasks.tracking import log_audit


@dataclass
class AuditResult:
    run_id: str  # deterministic key of (data, noise, seed, model, recipe): the lake's run_id
    mlflow_run_id: str
    flow_run_id: str
    params: dict
    rows: list[dict]  # one per scorer: detection metrics + accuracy after the remedy ("pruned_accuracy")
    accuracy: dict  # noisy / oracle test accuracy
    k: int
    k_source: str
    stages: list[dict] = field(default_factory=list)
    mode: str = "evaluate"  # "evaluate" (injected noise, graded) or "real" (the labels as given)
    flagged: pd.DataFrame | None = None  # real mode: the flagged samples, most suspicious first
    estimate: dict = field(default_factory=dict)  # real mode: estimated wrong labels, rate, accuracy

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


USER_DATA = ("images", "parquet")  # the user's own labels: audited as they are unless noise is asked for


#: scorers that read the out-of-sample stage (its probabilities, or its fold models' k-NN votes)
OOS_SCORERS = {"confident", "ensemble", "knn", "knn-consensus"}


@flow(name="audit", log_prints=True)
def audit(dataset: str = "digits", path: str | None = None, limit: int | None = None,
          noise: str | None = None, rate: float = 0.2, seed: int = 0, model: str = "mlp",
          scorers: str | None = None, prune_k: int | None = None,
          epochs: int | None = None, explain_top: int = 0, inputs: dict | None = None,
          backbone: str | None = None, remedy: str = DEFAULT_REMEDY) -> AuditResult:
    """Audit a data set: every stage cached.

    With injected noise (``noise`` other than ``none``; the default for the built-in data sets)
    the run grades the detectors: train, score, prune, retrain, measure against the known flips.
    With ``noise="none"`` (the default for ``images`` and ``parquet``) it audits the labels as
    they are: every row scored out of sample, the number of wrong labels estimated, the top ones
    flagged with a suggested label (the class the out-of-sample folds and the label-free probe,
    averaged, find likeliest) and queued for review.

    ``inputs`` holds :class:`~winnow.tasks.stages.InputOptions` (class set, shape, image size,
    label column); ``backbone`` a user's exported encoder whose embeddings the head is trained on.
    ``explain_top > 0`` then runs the explain flow on the top ``explain_top`` samples.
    ``remedy`` (graded runs): what is done with each scorer's top k before retraining
    (:mod:`winnow.tasks.remedies`: prune, relabel, relabel-agreed, weight, semi, ...).
    """
    log = get_run_logger()
    noise = noise or ("none" if dataset in USER_DATA else "symmetric")
    if not 0 <= rate < 1:
        raise ValueError(f"--rate must lie in [0, 1), got {rate}")
    if remedy not in REMEDIES:
        raise ValueError(f"--remedy {remedy!r} is not one of {', '.join(REMEDIES)}")
    opts = stages.InputOptions(**(inputs or {}))
    run = Stages()

    info = run("ingest", stages.ingest, dataset, path, limit, stages.source_fingerprint(dataset, path), opts.as_dict())
    batch_id = info["batch_id"]
    names = parse_scorer_list(scorers or default_scorers(info["kind"], noise))
    _check_run(info, model, names, noise, backbone)
    run("validate", stages.validate, batch_id, None, opts.min_class_samples)
    run("commit", stages.commit, batch_id)
    data_id = run("embed", stages.embed, batch_id, backbone, stages.file_fingerprint(backbone)) if backbone else batch_id
    model = stages.GIVEN_PROBS if info["kind"] == "probs" else model
    config = stages.default_config(dataset, model, epochs, seed, info["n"]).as_dict()
    noise_key = run("inject-noise", stages.inject_noise, data_id, noise, rate, seed)
    train_key = run("train", stages.train, data_id, noise_key, model, config)

    needs_oos = noise == "none" or prune_k is None or bool(OOS_SCORERS & set(names)) or remedy in NEEDS_OOS
    # submitted side by side on Dask (--workers/--dask): the folds, then the scorers and the k estimate
    oos_key = (train_key if model == stages.GIVEN_PROBS
               else out_of_sample(run, train_key) if needs_oos else None)
    # the checkpoint logits once, in shards (side by side on Dask), for the scorers that read only them
    readers = [n for n in names if scorer_class(n).reads_checkpoint_logits] if model != stages.GIVEN_PROBS else []
    logits_key = checkpoint_logits(run, train_key, info["n"]) if readers else None
    score_keys = {n: run.submit(f"score-{n}", stages.score, train_key, n, oos_key,
                                **({"logits_key": logits_key} if n in readers else {})) for n in names}
    if prune_k is None:
        k, k_source = run("estimate-k", stages.estimate_k, oos_key, train_key), noise_rate.SOURCE
    else:
        k, k_source = int(prune_k), "--prune-k"
    score_keys = {n: run.result(p) for n, p in score_keys.items()}
    oos_key = run.result(oos_key) if isinstance(oos_key, Pending) else oos_key
    params = {"dataset": dataset, "path": str(Path(path).resolve()) if path else None, "limit": limit,
              "noise": noise, "rate": rate if noise != "none" else 0.0, "seed": seed, "model": model,
              "scorers": ",".join(names), "prune_k": k, "k_source": k_source, "batch_id": batch_id,
              "data_kind": info["kind"], "form": info["form"], "classes": info["classes_source"],
              "backbone": backbone, **{f"input.{a}": b for a, b in opts.as_dict().items()},
              **{f"train.{a}": b for a, b in config.items()}}
    if noise == "none":
        from winnow.flows.real_audit import publish_real_audit

        # the suggested labels also ask the label-free probe (not possible on given probabilities)
        second_key = run("second-opinion", stages.second_opinion, train_key) if model != stages.GIVEN_PROBS else None
        result = publish_real_audit(train_key, oos_key, score_keys, names, k, k_source, params, run, log, second_key)
    else:
        result = _evaluate(train_key, noise_key, score_keys, names, k, k_source, {**params, "remedy": remedy}, run, log,
                           oos_key)
    if explain_top > 0:  # after publishing: explain resolves the run through the lake's `runs` table
        from winnow.flows.explain import explain

        run("explain", explain, result.mlflow_run_id, top=explain_top, scorer=names[0])
    return result


# a served deployment's runs (``winnow serve --workers N`` / ``--dask ADDRESS``) take the task
# runner from WINNOW_WORKERS / WINNOW_DASK; unchanged when neither is set (``winnow run`` passes its own)
audit = runner_from_env(audit)


def _check_run(info: dict, model: str, names: list[str], noise: str, backbone: str | None) -> None:
    """Refuse, in one line and before any training, a model or scorer this data cannot take."""
    from winnow.tasks.models.nets import check_fits
    from winnow.tasks.scorers import probability_scorers
    from winnow.tasks.scorers.base import scorer_class

    if info["kind"] == "probs":
        if noise != "none":
            raise ValueError("pred_probs input audits the labels as given: --noise must be none")
        if backbone:
            raise ValueError("--backbone embeds images; this file holds pred_probs, which need no model")
        wrong = [n for n in names if scorer_class(n).needs_model]
        if wrong:
            raise ValueError(f"scorer(s) {', '.join(wrong)} need a trained model; on pred_probs choose from "
                             f"{', '.join(probability_scorers())}")
        return
    if backbone:
        if info["kind"] != "images":
            raise ValueError(f"--backbone embeds images; this data is {info['kind']} of shape {tuple(info['shape'])}")
        if model != "mlp":
            raise ValueError("with --backbone the head trained on the embeddings is an MLP: use --model mlp")
        return
    check_fits(model, info["kind"], tuple(info["shape"]))


def _evaluate(train_key, noise_key, score_keys, names, k, k_source, params, run, log, oos_key=None) -> AuditResult:
    """Injected noise: act on each scorer's top k (``params["remedy"]``) + retrain, the clean-label
    oracle, and the detection figures."""
    dataset, noise, rate, seed, model = (params[a] for a in ("dataset", "noise", "rate", "seed", "model"))
    if model == stages.GIVEN_PROBS:
        raise ValueError("injected noise needs a model to retrain; pred_probs input audits the given labels")
    remedy = params.get("remedy", DEFAULT_REMEDY)
    second_key = run("second-opinion", stages.second_opinion, train_key) if remedy in NEEDS_SECOND_OPINION else None
    pruned = {n: run.submit(f"retrain-{n}", stages.retrain, train_key, n, score_keys[n], k, remedy=remedy,
                            oos_key=oos_key, second_key=second_key) for n in names}
    oracle = run.result(run.submit("retrain-oracle", stages.retrain, train_key, "oracle", None, 0, clean=True))
    pruned = {n: run.result(p) for n, p in pruned.items()}
    run.finalize()
    meta = artifacts.load_json("train", train_key)

    # measure
    truth = artifacts.load_frame("noise", noise_key)
    flipped = truth["is_flipped"].to_numpy(bool)
    score_tables = {n: artifacts.load_frame("scores", score_keys[n]) for n in names}
    rows = []
    for n in names:
        m = detection_metrics(score_tables[n]["score"].to_numpy(), flipped, k)
        m["seconds"] = artifacts.load_json("scores", score_keys[n])["seconds"]
        rows.append({"scorer": n, **m, "pruned_accuracy": pruned[n]["test_accuracy"],
                     "removed_flipped": pruned[n]["removed_flipped"]})
    accuracy = {"noisy": meta["test_accuracy"], "oracle": oracle["test_accuracy"]}
    params = {**params, "n_train": len(flipped), "n_flipped": int(flipped.sum())}
    log.info("k = %d (%s); noisy acc %.4f, oracle acc %.4f", k, k_source, accuracy["noisy"], accuracy["oracle"])

    # publish: the lake, MLflow, the Prefect UI
    t0 = time.perf_counter()
    flow_run_id = current_flow_run_id()
    run_dir = paths().reports / train_key
    plot = detection_curves({n: t["score"].to_numpy() for n, t in score_tables.items()}, flipped,
                            run_dir / "detection.png", f"{dataset} · {noise} {rate:.0%} · {model} · seed {seed}")
    summary_md = _markdown(rows, accuracy, k, k_source, params)
    (run_dir / "summary.md").write_text(summary_md)
    final_ctx = stages.load_context(train_key)[0]
    mlflow_run_id = log_audit(
        f"audit {dataset} {noise} {rate:g} s{seed} {model}", params, run.records,
        {r["scorer"]: {k_: v for k_, v in r.items() if k_ != "scorer"} for r in rows},
        {"accuracy_noisy": accuracy["noisy"], "accuracy_oracle": accuracy["oracle"], "k": k,
         **{f"{r['scorer']}.auroc": r["auroc"] for r in rows},
         **{f"{r['scorer']}.pruned_accuracy": r["pruned_accuracy"] for r in rows}},
        score_tables, [plot, run_dir / "summary.md"], model=final_ctx.model_at(-1), model_example=final_ctx.rows.take([0, 1]).numpy(),
        tags={"winnow.run_id": train_key, "prefect.flow_run_id": flow_run_id},
    )
    _publish_lake(train_key, noise_key, truth, score_tables, rows, accuracy, params, mlflow_run_id, flow_run_id)
    create_markdown_artifact(key="audit-summary", markdown=summary_md + f"\n\nMLflow run: `{mlflow_run_id}`",
                             description=f"winnow audit {train_key}")
    run.records.append({"name": "publish", "cached": False, "seconds": round(time.perf_counter() - t0, 3)})
    return AuditResult(train_key, mlflow_run_id, flow_run_id, params, rows, accuracy, k, k_source, run.records)


def current_flow_run_id() -> str:
    ctx = get_run_context()
    return str(ctx.flow_run.id) if ctx and getattr(ctx, "flow_run", None) else ""


def _markdown(rows, accuracy, k, k_source, params) -> str:
    remedy = params.get("remedy", DEFAULT_REMEDY)
    lines = [f"### winnow audit — {params['dataset']}, {params['noise']} noise {params['rate']:.0%}, "
             f"{params['model']}, seed {params['seed']}", "",
             f"{params['n_train']} training samples, {params['n_flipped']} flipped; each scorer's top k = {k} "
             f"({k_source}) flagged, remedy `{remedy}`.", "",
             f"| scorer | AUROC | AP | P@k | R@k | acc. after {remedy} |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scorer']} | {r['auroc']:.3f} | {r['ap']:.3f} | {r['precision_at_k']:.3f} | "
                     f"{r['recall_at_k']:.3f} | {r['pruned_accuracy']:.4f} |")
    lines += ["", f"Test accuracy: noisy {accuracy['noisy']:.4f}, oracle (clean labels) {accuracy['oracle']:.4f}."]
    return "\n".join(lines)


def _publish_lake(run_id, noise_key, truth, score_tables, rows, accuracy, params, mlflow_run_id, flow_run_id):
    noise_df = truth.assign(run_id=run_id, noise=params["noise"], rate=params["rate"], seed=params["seed"])
    lake.write("noise", noise_df[["sample_id", "run_id", "original_label", "noisy_label", "is_flipped",
                                  "noise", "rate", "seed"]], part=run_id)
    for name, t in score_tables.items():
        lake.write("scores", t.assign(run_id=run_id, scorer=name)[["run_id", "scorer", "sample_id", "score"]],
                   part=f"{run_id}-{name}")
    dims = {k: params[k] for k in ("dataset", "noise", "rate", "seed", "model")}
    # One part per (run, scorer), overwritten: a rerun refreshes its figures without duplicating
    # them, and scoring with another scorer list adds rows beside the earlier ones.
    for r in rows:
        lake.replace("metrics", pd.DataFrame([{"run_id": run_id, "scorer": r["scorer"], "name": m, "value": float(v),
                                               **dims} for m, v in r.items() if m != "scorer"]),
                     part=f"{run_id}-{r['scorer']}")
    lake.replace("metrics", pd.DataFrame([{"run_id": run_id, "scorer": "", "name": f"accuracy_{a}", "value": float(v),
                                           **dims} for a, v in accuracy.items()]), part=f"{run_id}-accuracy")
    lake.write("runs", pd.DataFrame([{
        "run_id": run_id, "mlflow_run_id": mlflow_run_id, "flow_run_id": flow_run_id, "flow": "audit",
        "created_at": pd.Timestamp.now(tz="UTC"), "scorers": params["scorers"], "k": params["prune_k"],
        "batch_id": params["batch_id"], "mode": "evaluate", "path": params.get("path"), **dims}]), part=mlflow_run_id)
