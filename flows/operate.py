"""Operating winnow: a batch arrives, the flow triggers, a person reviews, the gate decides.

    data/incoming/<batch>  --(winnow watch: one Prefect event per new file)-->  on-arrival flow run

    read -> claim (once per content hash) -> gate (a) batch (GX, vs. accepted data)
         -> plant canaries in a copy -> train / out-of-sample / score the pool (cached stages)
         -> flag -> gate (b) scores (noise rate, flagged fraction, canary recall)
         -> commit the batch + queue its flagged samples for review
         -> retrain on the accepted data -> gate (c) model (vs. the champion)
         -> report (HTML) + MLflow run -> pass: register + move `champion` | fail: run ends Failed

The data gates (a, b) decide what enters the lake; the model gate (c) decides what is served.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from winnow.flows.scaleout import Stages, export_runner_choice, out_of_sample, runner_from_env, worker_options
from winnow.flows import review_app
from winnow.tasks import arrivals, artifacts, batches, canaries, gates, lake, registry, report, review, stages
from winnow.tasks.data.dataset import Dataset
from winnow.tasks.scorers import parse_scorer_list
from winnow.tasks.settings import paths
from winnow.tasks.validation import CheckReport

ARRIVAL_EVENT = "winnow.batch.arrived"
DEFAULT_SCORERS = "confident,loss"  # the first one ranks the flags


class GateFailed(RuntimeError):
    """The release gate said no; ``str()`` is the one-line verdict."""


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


# ---------------------------------------------------------------- tasks (edges; pure helpers below)


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


@task(name="champion-accuracy", cache_policy=NO_CACHE, persist_result=False)
def champion_accuracy(train_key: str) -> tuple[float | None, str]:
    _, data, _ = stages.load_context(train_key)
    return registry.champion_accuracy(data.test.x, data.test.label)


# ---------------------------------------------------------------- pure helpers


def figures_of(flagged: np.ndarray, in_batch: np.ndarray, planted: np.ndarray, k: int) -> dict:
    """The detector's headline figures for the scores gate.

    Canaries count against neither the noise rate nor the flagged fraction: they are ours.
    """
    n = len(flagged)
    real = in_batch & ~planted
    return {
        "pool_train_samples": n,
        "batch_train_samples": int(real.sum()),
        "estimated_wrong_labels": max(int(k) - int(planted.sum()), 0),
        "estimated_noise_rate": max(int(k) - int(planted.sum()), 0) / max(n, 1),
        "flagged_in_batch": int((flagged & real).sum()),
        "flagged_fraction": float((flagged & real).sum() / max(real.sum(), 1)),
        "canaries": int(planted.sum()),
        "canary_recall": canaries.recall(flagged, planted),
    }


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
               epochs: int | None = None, seed: int = 0, canaries_n: int = 10,
               gate: dict | None = None) -> ArrivalResult:
    """Ingest, audit and gate one arriving batch (a Parquet file or a folder with labels.csv).

    Parameters
    ----------
    path : str
        The arrival (the event's resource id when triggered).
    stream : str
        Name shared by the batches audited together (the lake's ``dataset``).
    canaries_n : int
        Known flips planted in a copy of the batch to measure the detectors' recall (0: none).
    gate : dict, optional
        :class:`~winnow.tasks.gates.GateConfig` overrides (thresholds).
    """
    log = get_run_logger()
    names = parse_scorer_list(scorers)
    gate_cfg = gates.GateConfig.from_mapping(gate)
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
            return _judge(path, stream, batch_id, accepted, names, model, config, seed, canaries_n, gate_cfg,
                          flow_run_id, run, log)
        except GateFailed:
            raise  # a verdict: the batch stays processed
        except BaseException:
            arrivals.release(batch_id)  # crashed before a verdict: a redelivery retries it
            raise


# `winnow serve --workers N | --dask ADDRESS`: the served runs' tasks go to Dask (flows/scaleout.py)
on_arrival = runner_from_env(on_arrival)


def _judge(path, stream, batch_id, accepted, names, model, config, seed, canaries_n, gate_cfg, flow_run_id,
           run, log) -> ArrivalResult:
    batch = batches.load_staged(batch_id)
    verdict = gates.Verdict([run("gate-batch", gate_batch, batch_id, accepted)])
    if not verdict.passed:
        log.error(verdict.summary())
        return _publish(path, stream, batch_id, verdict, {}, flow_run_id, run, committed=False)

    # score the accepted data together with a canaried copy of the batch
    parts = [accepted, batch] if accepted is not None else [batch]
    pool = review.concat(parts, stream)
    in_batch = np.concatenate([np.zeros(len(accepted) if accepted is not None else 0, bool), np.ones(len(batch), bool)])
    planted_labels, planted = canaries.plant(pool.label, in_batch & (pool.split == "train"), canaries_n,
                                             pool.num_classes, seed)
    score_pool, score_labels = run("assemble-pool", assemble_pool, parts, stream, planted_labels, planted)
    train_key = run("train", stages.train, score_pool, score_labels, model, config)
    # on a Dask task runner (WINNOW_WORKERS / WINNOW_DASK): folds, then scorers, side by side
    oos_key = out_of_sample(run, train_key)
    score_keys = {n: run.submit(f"score-{n}", stages.score, train_key, n, oos_key) for n in names}
    k = run("estimate-k", stages.estimate_k, oos_key, train_key)
    score_keys, oos_key = {n: run.result(p) for n, p in score_keys.items()}, run.result(oos_key)

    train_rows = pool.split == "train"
    score_tables = {n: artifacts.load_frame("scores", key) for n, key in score_keys.items()}
    scores = {n: t["score"].to_numpy() for n, t in score_tables.items()}
    flagged, ranks = review.rank_flags(scores, names[0], k)
    figures = figures_of(flagged, in_batch[train_rows], planted[train_rows], k)
    verdict.reports.append(run("gate-scores", _task("gate-scores", gates.scores_gate), figures["estimated_noise_rate"],
                               figures["flagged_fraction"], figures["canary_recall"], gate_cfg))
    log.info("k = %d; %d of the batch flagged; canary recall %s", k, figures["flagged_in_batch"],
             figures["canary_recall"])

    queue_rows = review.flagged_rows(pool.subset(train_rows), in_batch[train_rows] & ~planted[train_rows] & flagged,
                             artifacts.load_torch("oos", oos_key).numpy(), scores, ranks, names[0], batch_id)
    if not verdict.passed:
        log.error(verdict.summary())
        return _publish(path, stream, batch_id, verdict, figures, flow_run_id, run, committed=False,
                        flagged=queue_rows, pool=pool.subset(train_rows), names=names, planted=planted[train_rows],
                        scores=scores, train_key=train_key)

    run("commit", stages.commit, batch_id)
    queue_rows = queue_rows.assign(run_id=flow_run_id)
    review.enqueue(queue_rows)

    # retrain on the accepted data (decisions applied, no canaries) and compare with the champion
    accepted_now = review.accepted_data(stream)
    cand_pool, cand_labels = run("assemble-accepted", assemble_pool, [accepted_now], stream)
    cand_key = run("retrain-accepted", stages.train, cand_pool, cand_labels, model, config)
    candidate = artifacts.load_json("train", cand_key)["test_accuracy"]
    champ, how = run("champion-accuracy", champion_accuracy, cand_key)
    figures.update(candidate_accuracy=candidate, champion_accuracy=champ if champ is not None else float("nan"),
                   champion_basis=how)
    verdict.reports.append(run("gate-model", _task("gate-model", gates.model_gate), candidate, champ, gate_cfg))
    (log.info if verdict.passed else log.error)(verdict.summary())
    return _publish(path, stream, batch_id, verdict, figures, flow_run_id, run, committed=True, flagged=queue_rows,
                    pool=pool.subset(train_rows), names=names, planted=planted[train_rows], scores=scores,
                    train_key=train_key, cand_key=cand_key)


def _task(name, fn):
    return task(fn, name=name, cache_policy=NO_CACHE, persist_result=False)


def _publish(path, stream, batch_id, verdict, figures, flow_run_id, run, committed, flagged=None, pool=None,
             names=(), planted=None, scores=None, train_key=None, cand_key=None) -> ArrivalResult:
    """The report, the MLflow run (+ registration if passed), the lake, the Prefect artifacts."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    t0 = time.perf_counter()
    run.finalize()  # the seconds of stages run on Dask
    run_id = artifacts.key_of("on-arrival", batch_id, train_key, cand_key, flow_run_id)
    flagged = flagged if flagged is not None else review.empty_queue()
    out_dir = paths().reports / "arrivals" / run_id
    page = _render_report(run_id, stream, path, batch_id, verdict, figures, flagged, pool, names, planted, scores,
                          committed)
    report_path = report.write(out_dir / "review.html", page)

    model = example = None
    if cand_key is not None:
        ctx, data, _ = stages.load_context(cand_key)
        model, example = ctx.model_at(-1), ctx.rows.take([0, 1]).numpy()  # two rows, not the set
    params = {"path": path, "stream": stream, "batch_id": batch_id, "committed": committed,
              "flow_run_id": flow_run_id, "verdict": "passed" if verdict.passed else "failed"}
    mlflow_run_id, model_uri = registry.log_run(
        f"on-arrival {Path(path).name}", params,
        {k: v for k, v in figures.items() if not isinstance(v, str)} | {"gate_passed": float(verdict.passed)},
        [report_path], model=model, model_example=example,
        tags={"winnow.run_id": run_id, "winnow.batch_id": batch_id, "prefect.flow_run_id": flow_run_id,
              "winnow.gate": "passed" if verdict.passed else "failed"},
        texts={"gate.md": verdict.markdown()})
    version = None
    if verdict.passed and model_uri:
        version = registry.promote(model_uri, {"test_accuracy": figures["candidate_accuracy"], "batch_id": batch_id,
                                               "winnow.run_id": run_id, "mlflow_run_id": mlflow_run_id})
        registry.set_run_tags(mlflow_run_id, {"winnow.champion_version": version})

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
        "batch_id": batch_id, "dataset": stream}]), part=mlflow_run_id)
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
    result = ArrivalResult("passed" if verdict.passed else "failed", batch_id, str(path), run_id, mlflow_run_id,
                           flow_run_id, verdict.summary(), figures, version, str(report_path), len(flagged), run.records)
    if not verdict.passed:
        raise GateFailed(verdict.summary())
    return result


def _render_report(run_id, stream, path, batch_id, verdict, figures, flagged, pool, names, planted, scores,
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


# ---------------------------------------------------------------- the watcher (a separate process)


def _signature(p: Path) -> tuple:
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return tuple((str(f.relative_to(p)) if p.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def scan(directory: Path, previous: dict[str, tuple]) -> tuple[dict[str, tuple], list[Path]]:
    """One look at the folder: returns the signatures now, and the arrivals whose signature is
    the same as one look ago (a file still being copied changes between looks)."""
    now, stable = {}, []
    for p in sorted(directory.iterdir()) if directory.exists() else []:
        if not arrivals.is_arrival(p):
            continue
        try:
            sig = _signature(p)
        except FileNotFoundError:  # moved away between the listing and the stat
            continue
        now[str(p.resolve())] = sig
        if previous.get(str(p.resolve())) == sig:
            stable.append(p.resolve())
    return now, stable


def emit_arrival(path: Path) -> None:
    """One Prefect event per arrival; the on-arrival deployment's trigger turns it into a run."""
    from prefect.events import emit_event

    emit_event(event=ARRIVAL_EVENT, resource={"prefect.resource.id": str(path), "prefect.resource.name": path.name})


def watch(directory: Path, interval: float = 1.0, once: bool = False) -> None:
    """Emit an event for every new (or changed) arrival in ``directory``; runs until interrupted.

    What was announced is remembered in ``<artifacts>/watch-seen.json`` (path -> signature), so a
    restarted watcher does not announce the same file again; a file copied in twice under a new
    signature is announced again, and the flow recognises its content.
    """
    from prefect.events.worker import EventsWorker

    directory.mkdir(parents=True, exist_ok=True)
    ledger = paths().artifacts / "watch-seen.json"
    seen = json.loads(ledger.read_text()) if ledger.exists() else {}
    previous: dict[str, tuple] = {}
    print(f"watching {directory} (every {interval:g}s); events: {ARRIVAL_EVENT}", flush=True)
    while True:
        current, stable = scan(directory, previous)
        fresh = [p for p in stable if seen.get(str(p)) != [list(s) for s in current[str(p)]]]
        for p in fresh:
            emit_arrival(p)
            seen[str(p)] = [list(s) for s in current[str(p)]]
            print(f"arrived: {p}", flush=True)
        if fresh:
            EventsWorker.drain_all(at_exit=False)  # deliver now, not at exit
            artifacts._atomic_bytes(json.dumps(seen).encode(), ledger)
        previous = current
        if once and not fresh and stable == [Path(p) for p in current]:
            return
        time.sleep(interval)


# ---------------------------------------------------------------- CLI


def add_commands(sub) -> dict:
    serve = sub.add_parser("serve", help="serve the audit and on-arrival deployments (needs PREFECT_API_URL)",
                           description="Serve the deployments declared in deployments/ against a running "
                                       "`prefect server start` (export PREFECT_API_URL first).")
    serve.add_argument("--epochs", type=int, help="training epochs for on-arrival runs (default: the recipe's)")
    serve.add_argument("--canaries", type=int, help="canaries planted per arrival (default from gate.toml)")
    serve.add_argument("--gate-config", help="TOML with [gate] thresholds (default deployments/gate.toml)")
    worker_options(serve)

    w = sub.add_parser("watch", help="emit a Prefect event for each batch landing in data/incoming/",
                       description="Watch the incoming folder; emit `winnow.batch.arrived` once per new file.")
    w.add_argument("--dir", help="folder to watch (default: $WINNOW_HOME/incoming)")
    w.add_argument("--interval", type=float, default=1.0, help="seconds between looks (default 1)")
    w.add_argument("--once", action="store_true", help="announce what is there now, then exit")

    r = sub.add_parser("review", help="the review queue: list, accept, relabel, drop, export/import a CSV",
                       description="Record a reviewer's decisions on flagged samples; the next training uses them.")
    rs = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = rs.add_parser("list", help="show the queue")
    ls.add_argument("--status", default="pending", help="pending, accepted, relabelled, dropped or all")
    ls.add_argument("--format", choices=["table", "csv", "json"], default="table")
    for action, helptext in (("accept", "the given label is right"), ("drop", "remove the samples from training"),
                             ("pending", "undo a decision")):
        a = rs.add_parser(action, help=helptext)
        a.add_argument("ids", nargs="+", metavar="ID")
        a.add_argument("--by", help="who decided (default: your user name)")
    rl = rs.add_parser("relabel", help="the label is wrong: set a new one")
    rl.add_argument("ids", nargs="+", metavar="ID")
    rl.add_argument("--to", type=int, required=True, help="the new label (class index)")
    rl.add_argument("--by", help="who decided (default: your user name)")
    ex = rs.add_parser("export", help="write the queue to a CSV with a decision column to fill in")
    ex.add_argument("file")
    ex.add_argument("--status", default="pending", help="which rows (default pending; 'all' for every row)")
    im = rs.add_parser("import", help="apply the decisions of an edited export")
    im.add_argument("file")
    review_app.add_serve_command(rs)

    g = sub.add_parser("gate", help="run the release gate on a batch, or show a recorded verdict (exit 1: failed)",
                       description="With PATH: process it like an arrival and exit 0 if the gate passes, 1 if "
                                   "it fails. Without: exit with the latest (or --run) recorded verdict.")
    g.add_argument("path", nargs="?", help="a Parquet file or a folder with labels.csv")
    g.add_argument("--run", help="a recorded run (run id, MLflow run id, flow run id or batch id)")
    g.add_argument("--stream", default="incoming")
    g.add_argument("--epochs", type=int)
    g.add_argument("--canaries", type=int, default=10)
    g.add_argument("--gate-config", help="TOML with [gate] thresholds")

    rep = sub.add_parser("report", help="write (or fetch from MLflow) and open a run's review report",
                         description="Print the path of a run's HTML review report; --open shows it in a browser.")
    rep.add_argument("run", nargs="?", help="run id, MLflow run id, flow run id or batch id (default: latest)")
    rep.add_argument("--open", action="store_true", help="open it in the default browser")
    return {"serve": cmd_serve, "watch": cmd_watch, "review": cmd_review, "gate": cmd_gate, "report": cmd_report}


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


def cmd_watch(args) -> int:
    import os

    if not os.environ.get("PREFECT_API_URL"):
        print("winnow watch: error: set PREFECT_API_URL to the server the deployments are served on", file=sys.stderr)
        return 2
    try:
        watch(Path(args.dir) if args.dir else paths().incoming, args.interval, args.once)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_review(args) -> int:
    from winnow.flows.cli import print_frame

    if args.action == "serve":
        return review_app.cmd_serve(args)
    if args.action == "list":
        q = review.read_queue()
        if args.status != "all":
            q = q[q["status"] == args.status]
        print_frame(q[["sample_id", "batch_id", "given_label", "suggested_label", "score", "status", "new_label",
                       "decided_by"]], args.format, title=f"review queue ({args.status})")
        return 0
    if args.action == "export":
        n = review.export_csv(Path(args.file), None if args.status == "all" else args.status)
        print(f"wrote {n} rows to {args.file}; fill in 'decision' (accept/relabel/drop) and 'new_label', then "
              f"`winnow review import {args.file}`")
        return 0
    if args.action == "import":
        print(f"recorded {review.import_csv(Path(args.file))} decisions")
        return 0
    rows = review.decide(args.ids, args.action, getattr(args, "to", None), args.by)
    print(f"{args.action}: {len(rows)} sample(s) -> {review.ACTIONS[args.action]}")
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
        gate_values = gates.GateConfig.from_toml(args.gate_config).as_dict() if args.gate_config else None
        from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

        # without PREFECT_API_URL Prefect starts a temporary server: give it time on a busy machine.
        # A GateFailed propagates: the CLI prints it last and exits 1 (winnow.flows.failures).
        with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120}):
            result = on_arrival(path=str(Path(args.path).resolve()), stream=args.stream, epochs=args.epochs,
                                canaries_n=args.canaries, gate=gate_values)
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
        from winnow.tasks.tracking import _mlflow

        dest = paths().reports / "arrivals" / row["run_id"]
        dest.mkdir(parents=True, exist_ok=True)
        dest = Path(_mlflow().artifacts.download_artifacts(run_id=row["mlflow_run_id"], artifact_path="review.html",
                                                          dst_path=str(dest)))
    print(dest)
    if args.open:
        import webbrowser

        webbrowser.open(dest.resolve().as_uri())
    return 0
