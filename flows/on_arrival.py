"""The on-arrival flow: a batch arrives, it is audited, the gate decides.

    data/incoming/<batch>  --(winnow watch: one Prefect event per new file)-->  on-arrival flow run

    read -> claim (once per content hash) -> gate (a) batch (GX, vs. accepted data)
         -> plant canaries in a copy -> train / out-of-sample / score the pool (cached stages)
         -> flag -> gate (b) scores (noise rate, flagged fraction, canary recall)
         -> commit the batch + queue its flagged samples for review
         -> retrain on the accepted data -> gate (c) model (vs. the champion)
         -> publish: report (HTML) + MLflow run + lake -> pass: `champion` moves | fail: run ends Failed

The data gates (a, b) decide what enters the lake; the model gate (c) decides what is served.
Thresholds, checks, verdict and promotion are :mod:`winnow.tasks.gates`; publishing is
:mod:`winnow.flows.arrival_publish`; the watcher :mod:`winnow.flows.watch`; the commands that
serve, run and read this flow :mod:`winnow.flows.arrival_commands`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from winnow.flows.arrival_publish import publish
from winnow.flows.scaleout import Stages, out_of_sample, runner_from_env
from winnow.flows.watch import ARRIVAL_EVENT  # the event the watcher emits and the deployment awaits
from winnow.tasks import arrivals, artifacts, batches, canaries, export, gates, lake, registry, review, stages
from winnow.tasks.data.dataset import Dataset
from winnow.tasks.gates import GateFailed
from winnow.tasks.scorers import default_scorers, parse_scorer_list
from winnow.tasks.settings import paths
from winnow.tasks.validation import CheckReport

# the audit's default, the recommended detector first (it ranks the flags and fills the queue):
# ranked by it, the replayed arrivals' canary recall at k rose from 0.73 / 0.47 (confident) to
# 0.97 / 1.00 (benchmarks/arrival_k.py, docs/remedies.md)
DEFAULT_SCORERS = default_scorers("samples", "none")

__all__ = ["ARRIVAL_EVENT", "ArrivalResult", "GateFailed", "on_arrival"]


@dataclass
class ArrivalResult:
    status: str  # "passed", "failed" or "duplicate"
    batch_id: str
    path: str
    run_id: str = ""
    mlflow_run_id: str = ""
    flow_run_id: str = ""
    verdict: str = ""
    figures: dict = field(default_factory=dict)
    champion_version: str | None = None
    report_path: str = ""
    flagged: int = 0
    stages: list = field(default_factory=list)


# ---------------------------------------------------------------- tasks


@task(name="receive", cache_policy=NO_CACHE, persist_result=False)
def receive(path: str, stream: str) -> tuple[str, Dataset | None]:
    """Read the arrival, express it in the accepted classes and stage it; returns its batch id."""
    accepted = review.accepted_data(stream)
    ds = arrivals.load_arrival(path, stream, accepted.class_names if accepted is not None else None)
    return batches.stage(ds), accepted


@task(name="gate-batch", cache_policy=NO_CACHE, persist_result=False)
def gate_batch(batch_id: str, accepted: Dataset | None) -> CheckReport:
    return gates.batch_gate(batches.load_staged(batch_id), accepted)


@task(name="assemble-pool", cache_policy=NO_CACHE, persist_result=False)
def assemble_pool(parts: list[Dataset], stream: str, planted_labels: np.ndarray | None = None,
                  planted: np.ndarray | None = None) -> tuple[str, str]:
    """Stage a training pool and its label table (given labels, or canary labels where planted).

    Both are content-addressed, so an unchanged pool maps to the same keys and the training
    stages that follow are served from cache.
    """
    pool = review.concat(parts, stream)
    pool_id = batches.stage_pool(pool)
    train = pool.split == "train"
    given = pool.label[train]
    noisy = given if planted_labels is None else planted_labels[train]
    flipped = np.zeros(len(given), bool) if planted is None else planted[train]
    key = artifacts.key_of("labels", pool_id, noisy.tolist())
    artifacts.save_frame("noise", key, pd.DataFrame({"sample_id": pool.sample_id[train].astype(str),
                                                     "original_label": given, "noisy_label": noisy,
                                                     "is_flipped": flipped}))
    return pool_id, key


@task(name="soft-targets", cache_policy=NO_CACHE, persist_result=False)
def candidate_targets(accepted: Dataset, queue: pd.DataFrame, pool_ids: np.ndarray, suggestion: np.ndarray) -> str:
    """``soft-all``'s targets for the accepted data's training rows, as ``winnow export --relabel
    soft`` writes them: a row a reviewer accepted or relabelled trains on its label, a pending
    flagged row on its suggestion, every other row on half its label, half its suggestion.

    ``queue``: the review queue ``accepted`` was built from (one read, so the two agree).
    ``pool_ids`` / ``suggestion`` (shape (m,) / (m, C)): the scored pool's training rows and their
    suggestion distributions (out-of-sample folds averaged with the label-free probe). Every
    accepted training row was in that pool; a canary's planted label never reaches its own
    out-of-sample prediction (the fold that predicts a row did not train on it)."""
    train = accepted.split == "train"
    ids = accepted.sample_id[train].astype(str)
    at = pd.Index(np.asarray(pool_ids).astype(str)).get_indexer(ids)
    if (at < 0).any():
        raise ValueError(f"accepted sample {ids[at < 0][0]!r} was not in the scored pool")
    queue = queue[queue["sample_id"].astype(str).isin(ids)]
    pending = queue[queue["status"] == "pending"]
    plan = export.plan_cleaning(ids, accepted.label[train], accepted.class_names, queue,
                                pending[["sample_id", "suggested_label"]], drop="none", relabel="soft",
                                suggestion=np.asarray(suggestion)[at])
    targets = np.eye(accepted.num_classes, dtype=np.float32)[plan.label]  # reviewed rows: their label
    soft = np.array([t is not None for t in plan.soft])
    if soft.any():
        targets[soft] = np.stack(plan.soft[soft])
    return stages.save_targets(ids, targets)


@task(name="champion-accuracy", cache_policy=NO_CACHE, persist_result=False)
def champion_accuracy(train_key: str) -> tuple[float | None, str]:
    _, data, _ = stages.load_context(train_key)
    return registry.champion_accuracy(data.test.x, data.test.label)


# ---------------------------------------------------------------- the flow


def _one_at_a_time():
    """Arrivals are judged against everything accepted so far, so two must not interleave:
    an exclusive lock (across served run processes) orders them. Waiting here is not polling."""
    return lake.exclusive_lock(paths().artifacts / "operate.lock")


def _flow_run_id() -> str:
    from prefect.context import get_run_context

    try:
        ctx = get_run_context()
    except Exception:
        return ""
    return str(ctx.flow_run.id) if getattr(ctx, "flow_run", None) else ""


@flow(name="on-arrival", log_prints=True)
def on_arrival(path: str, stream: str = "incoming", model: str = "mlp", scorers: str = DEFAULT_SCORERS,
               epochs: int | None = None, seed: int = 0, canaries_n: int | None = None,
               gate: dict | None = None, remedy: str = "soft-all") -> ArrivalResult:
    """Ingest, audit and gate one arriving batch (a Parquet file or a folder with labels.csv).

    Parameters
    ----------
    path : str
        The arrival (the event's resource id when triggered).
    stream : str
        Name shared by the batches audited together (the lake's ``dataset``).
    canaries_n : int, optional
        Known flips planted in a copy of the batch to measure the detectors' recall (0: none);
        default the gate config's ``canaries``.
    gate : dict, optional
        Overrides of the shipped gate settings (:meth:`~winnow.tasks.gates.GateConfig.load`).
    remedy : {"soft-all", "none"}
        How the candidate model learns from the accepted data (:data:`~winnow.tasks.gates.CANDIDATE_REMEDIES`).
    """
    if remedy not in gates.CANDIDATE_REMEDIES:
        raise ValueError(f"remedy must be one of {', '.join(gates.CANDIDATE_REMEDIES)}, got {remedy!r}")
    log = get_run_logger()
    names = parse_scorer_list(scorers)
    gate_cfg = gates.GateConfig.load(overrides=gate).with_overrides(canaries=canaries_n)
    config = stages.default_config("parquet", model, epochs, seed).as_dict()
    flow_run_id = _flow_run_id()
    run = Stages()

    with _one_at_a_time():
        batch_id, accepted = run("receive", receive, path, stream)
        if arrivals.claim(batch_id, path, flow_run_id) is None:
            first = arrivals.claimed_by(batch_id)
            log.info("batch %s already processed (first from %s, flow run %s): nothing to do",
                     batch_id, first.get("source"), first.get("flow_run_id"))
            return ArrivalResult("duplicate", batch_id, path, flow_run_id=flow_run_id,
                                 verdict=f"duplicate of flow run {first.get('flow_run_id', '?')}")
        try:
            return _judge(path, stream, batch_id, accepted, names, model, config, seed, gate_cfg, flow_run_id,
                          run, log, remedy)
        except GateFailed:
            raise  # a verdict: the batch stays processed
        except BaseException:
            arrivals.release(batch_id)  # crashed before a verdict: a redelivery retries it
            raise


# `winnow serve --workers N | --dask ADDRESS`: the served runs' tasks go to Dask (flows/scaleout.py)
on_arrival = runner_from_env(on_arrival)


def _judge(path, stream, batch_id, accepted, names, model, config, seed, gate_cfg, flow_run_id, run,
           log, remedy) -> ArrivalResult:
    batch = batches.load_staged(batch_id)
    verdict = gates.Verdict([run("gate-batch", gate_batch, batch_id, accepted)])
    if not verdict.passed:
        log.error(verdict.summary())
        return _published(path, stream, batch_id, verdict, {}, flow_run_id, run, committed=False)

    # score the accepted data together with a canaried copy of the batch
    parts = [accepted, batch] if accepted is not None else [batch]
    pool = review.concat(parts, stream)
    in_batch = np.concatenate([np.zeros(len(accepted) if accepted is not None else 0, bool), np.ones(len(batch), bool)])
    planted_labels, planted = canaries.plant(pool.label, in_batch & (pool.split == "train"), gate_cfg.canaries,
                                             pool.num_classes, seed)
    score_pool, score_labels = run("assemble-pool", assemble_pool, parts, stream, planted_labels, planted)
    train_key = run("train", stages.train, score_pool, score_labels, model, config)
    # on a Dask task runner (WINNOW_WORKERS / WINNOW_DASK): folds, then scorers, side by side
    oos_key = out_of_sample(run, train_key)
    score_keys = {n: run.submit(f"score-{n}", stages.score, train_key, n, oos_key) for n in names}
    # the suggested labels also ask the label-free probe, as the audit's do (review.suggestion_probs)
    second_key = run.submit("second-opinion", stages.second_opinion, train_key)
    # confident learning's count, not the audit's default estimator: the gate's canary recall is
    # measured at k, and with `expected` a clean arrival counted 2-5 wrong labels for 6 canaries
    # (docs/remedies.md, benchmarks/arrival_k.py)
    k = run("estimate-k", stages.estimate_k, oos_key, train_key, "confident")
    score_keys, oos_key = {n: run.result(p) for n, p in score_keys.items()}, run.result(oos_key)
    second = artifacts.load_torch("second-opinion", run.result(second_key)).numpy()

    train_rows = pool.split == "train"
    score_tables = {n: artifacts.load_frame("scores", key) for n, key in score_keys.items()}
    scores = {n: t["score"].to_numpy() for n, t in score_tables.items()}
    flagged, ranks = review.rank_flags(scores, names[0], k)
    figures = gates.figures_of(flagged, in_batch[train_rows], planted[train_rows], k)
    verdict.reports.append(run("gate-scores", _task("gate-scores", gates.scores_gate), figures["estimated_noise_rate"],
                               figures["flagged_fraction"], figures["canary_recall"], gate_cfg))
    log.info("k = %d; %d of the batch flagged; canary recall %s", k, figures["flagged_in_batch"],
             figures["canary_recall"])

    suggestion = review.suggestion_probs(artifacts.load_torch("oos", oos_key).numpy(), second)
    queue_rows = review.flagged_rows(pool.subset(train_rows), in_batch[train_rows] & ~planted[train_rows] & flagged,
                                     suggestion, scores, ranks, names[0], batch_id)
    if not verdict.passed:
        log.error(verdict.summary())
        return _published(path, stream, batch_id, verdict, figures, flow_run_id, run, committed=False,
                        flagged=queue_rows, pool=pool.subset(train_rows), names=names, planted=planted[train_rows],
                        scores=scores, train_key=train_key)

    run("commit", stages.commit, batch_id)
    queue_rows = queue_rows.assign(run_id=flow_run_id)
    review.enqueue(queue_rows)

    # retrain on the accepted data (decisions applied, no canaries) with the default remedy's soft
    # targets (or the labels alone: remedy="none") and compare with the champion
    queue = review.read_queue()
    accepted_now = review.accepted_data(stream, queue)
    cand_pool, cand_labels = run("assemble-accepted", assemble_pool, [accepted_now], stream)
    targets_key = (run("soft-targets", candidate_targets, accepted_now, queue, pool.sample_id[train_rows],
                       suggestion) if remedy == "soft-all" else None)
    cand_key = run("retrain-accepted", stages.train, cand_pool, cand_labels, model, config, targets_key)
    candidate = artifacts.load_json("train", cand_key)["test_accuracy"]
    champ, how = run("champion-accuracy", champion_accuracy, cand_key)
    figures.update(candidate_accuracy=candidate, champion_accuracy=champ if champ is not None else float("nan"),
                   champion_basis=how, candidate_remedy=remedy)
    verdict.reports.append(run("gate-model", _task("gate-model", gates.model_gate), candidate, champ, gate_cfg))
    (log.info if verdict.passed else log.error)(verdict.summary())
    return _published(path, stream, batch_id, verdict, figures, flow_run_id, run, committed=True, flagged=queue_rows,
                    pool=pool.subset(train_rows), names=names, planted=planted[train_rows], scores=scores,
                    train_key=train_key, cand_key=cand_key)


def _task(name, fn):
    return task(fn, name=name, cache_policy=NO_CACHE, persist_result=False)


def _published(path, stream, batch_id, verdict, figures, flow_run_id, run, committed, **outputs) -> ArrivalResult:
    """Publish the outcome; a failed verdict then ends the run Failed (:class:`GateFailed`)."""
    out = publish(path, stream, batch_id, verdict, figures, flow_run_id, run, committed, **outputs)
    result = ArrivalResult("passed" if verdict.passed else "failed", batch_id, str(path), out["run_id"],
                           out["mlflow_run_id"], flow_run_id, verdict.summary(), figures, out["champion_version"],
                           str(out["report_path"]), out["flagged"], run.records)
    if not verdict.passed:
        raise GateFailed(verdict.summary())
    return result
