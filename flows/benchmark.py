"""The benchmark flow: the seed paper's protocol, peers side by side, one report.

    for each data set: ingest -> validate -> commit                      (stages.*, cached)
      for each noise × rate × seed: inject noise -> train -> out-of-sample -> score ×N (stages.*)
                                    + peers (cleanlab, Captum) + oracle ranking    (protocols.*)
                                    -> prune at x ∈ {rate, CL estimate} -> retrain  (stages.retrain)
                                    -> relabel the top x by oracle -> retrain       (protocols.relabel)
    -> lake `benchmark` (one row per cell × ranker × seed) -> report (Markdown + PNG)
    -> MLflow run + Prefect markdown artifact, wall time in both

Every computing step is one of the audit flow's cached tasks (or a cached task of
``tasks/protocols.py``), so an interrupted benchmark resumes where it stopped and a cell computed
once — by a benchmark or by ``winnow run`` — is served from cache.
"""
from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from winnow.flows.scaleout import Stages, out_of_sample, run_flow, runner_from_args, worker_options
from winnow.tasks import artifacts, lake, protocols, stages
from winnow.tasks import benchmark_report as report
from winnow.tasks.metrics import detection_metrics, found_vs_inspected
from winnow.tasks.scorers import available, parse_scorer_list
from winnow.tasks.settings import paths, refresh_cache
from winnow.tasks.tracking import log_audit
from winnow.tasks.data.cifar10n import DATASET as CIFAR10N, HUMAN_NOISES, default_path as cifar10n_path

EXPERIMENT = "winnow-benchmark"
DATASETS = ("digits", "fashion-mnist", "anomaly", CIFAR10N)
NOISES = ("symmetric", "class-pair", "instance-dependent", *HUMAN_NOISES)
#: the model each data set is audited with (the report says so)
DATASET_MODEL = {"digits": "mlp", "fashion-mnist": "mlp", "anomaly": "cnn1d", CIFAR10N: "cnn"}
#: x positions of the found-vs-inspected curves (the report's plots)
CURVE_FRACTIONS = tuple(np.round(np.linspace(0.01, 0.6, 60), 4))
PROTOCOL_AT = ("rate", "cl")


@dataclass(frozen=True)
class Grid:
    """What a benchmark runs. ``scorers=()`` means every registered scorer at run time."""

    datasets: tuple[str, ...] = DATASETS[:3]  # cifar10n-dev on request (it needs the shared file)
    noises: tuple[str, ...] = NOISES[:3]  # the human label sets are CIFAR-10N's own noise kinds
    rates: tuple[float, ...] = (0.1, 0.2, 0.4)
    seeds: tuple[int, ...] = (0, 1, 2)
    scorers: tuple[str, ...] = ()
    peers: tuple[str, ...] = protocols.PEERS
    limits: dict = field(default_factory=lambda: {"fashion-mnist": 3000, "anomaly": 4000})
    epochs: dict = field(default_factory=dict)
    prune_at: tuple[str, ...] = ("rate", "cl")
    relabel_at: tuple[str, ...] = ("rate",)
    #: rankers that also go through the retraining protocols (prune, relabel); () = every ranker.
    #: Detection is measured for every ranker; retraining is what costs, so big grids bound it here.
    #: The baselines (random, oracle-rank) always go through.
    protocol_scorers: tuple[str, ...] = ()

    def check(self) -> "Grid":
        """Validate and normalise (resolve the scorer list, add the random baseline)."""
        for name, values, allowed in (("dataset", self.datasets, DATASETS), ("noise", self.noises, NOISES),
                                      ("peer", self.peers, protocols.PEERS),
                                      ("prune-at", self.prune_at, PROTOCOL_AT),
                                      ("relabel-at", self.relabel_at, PROTOCOL_AT)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"unknown {name} {bad}; choose from {', '.join(allowed)}")
        if not self.datasets or not self.noises or not self.rates or not self.seeds:
            raise ValueError("the grid needs at least one data set, noise kind, rate and seed")
        for r in self.rates:
            if not 0 < r < 1:
                raise ValueError(f"rates must lie in (0, 1), got {r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        if not self.prune_at:
            raise ValueError("prune-at needs at least one of rate, cl")
        names = parse_scorer_list(list(self.scorers)) if self.scorers else available()
        # random removal / inspection is a baseline the protocols always report
        names = list(names) + (["random"] if "random" not in names else [])
        unknown = set(self.protocol_scorers) - set(names) - set(self.peers)
        if unknown:
            raise ValueError(f"protocol scorers {sorted(unknown)} are not among the grid's scorers or peers")
        return replace(self, scorers=tuple(names))

    def retrains(self, ranker: str) -> bool:
        """Whether ``ranker`` goes through the retraining protocols."""
        return not self.protocol_scorers or ranker in self.protocol_scorers or ranker in report.BASELINES

    def as_dict(self) -> dict:
        return asdict(self)


#: `winnow benchmark --quick`: digits + a Fashion-MNIST subset, 2 noise kinds, 1 rate, 3 seeds,
#: every scorer, pruning at the noise rate, relabelling the top rate-fraction.
QUICK = Grid(datasets=("digits", "fashion-mnist"), noises=("symmetric", "instance-dependent"), rates=(0.2,),
             seeds=(0, 1, 2), limits={"fashion-mnist": 1500}, epochs={"digits": 10, "fashion-mnist": 6},
             prune_at=("rate",), relabel_at=("rate",),
             protocol_scorers=("loss", "confident", "influence", "tracin-last", "cleanlab-issues", "captum-tracincp"))
#: the default grid, bounded for a 2-core CPU: Fashion-MNIST and the anomaly set subsampled, and
#: the retraining protocols (3 retrains per ranker and cell) run for the seed paper's contest
#: (loss vs. influence), confident learning and the baselines; detection covers every ranker.
DEFAULT = Grid(limits={"fashion-mnist": 2000, "anomaly": 3000},
               protocol_scorers=("loss", "influence", "confident"))


def _noises_for(dataset: str, g: Grid) -> list[tuple[str, tuple[float, ...]]]:
    """(noise kind, rates) pairs a data set runs: the human label sets are CIFAR-10N's alone and
    have one rate each (the file's); CIFAR-10N runs them all when the grid names none."""
    if dataset != CIFAR10N:
        return [(n, g.rates) for n in g.noises if n not in HUMAN_NOISES]
    human = [n for n in g.noises if n in HUMAN_NOISES] or list(HUMAN_NOISES)
    return [(n, (0.0,)) for n in human]


@dataclass
class BenchmarkResult:
    key: str
    rows: pd.DataFrame  # one per (dataset, noise, rate, ranker, seed)
    aggregate: pd.DataFrame  # mean ± std over seeds
    report_path: Path
    plots: list[Path]
    mlflow_run_id: str
    wall_seconds: float
    stages: list[dict]
    notes: list[str]
    headline: str


def _submit_cell(run: Stages, batch_id, dataset: str, model: str, noise: str, rate: float, seed: int,
                 grid: Grid, peers: list[str]) -> dict:
    """One (data set, noise, rate, seed), first half: noise, training, out-of-sample, every
    ranking, the k estimate and the clean-label retrain. Submitted, not awaited (on Dask they
    run beside the other cells'); returns the pending stages."""
    config = stages.default_config(dataset, model, grid.epochs.get(dataset), seed).as_dict()
    noise_key = run.submit("inject-noise", stages.inject_noise, batch_id, noise, rate, seed)
    train_key = run.submit("train", stages.train, batch_id, noise_key, model, config)
    oos_key = out_of_sample(run, train_key)  # K folds side by side on Dask
    keys = {n: run.submit(f"score-{n}", stages.score, train_key, n, oos_key) for n in grid.scorers}
    keys |= {p: run.submit(f"peer-{p}", protocols.peer_score, train_key, p, oos_key) for p in peers}
    keys["oracle-rank"] = run.submit("oracle-rank", protocols.truth_score, train_key)
    return {"dataset": dataset, "model": model, "noise": noise, "rate": rate, "seed": seed,
            "noise_key": noise_key, "train_key": train_key, "keys": keys,
            "k_cl": run.submit("estimate-k", stages.estimate_k, oos_key, train_key, "confident"),
            "clean": run.submit("retrain-oracle", stages.retrain, train_key, "oracle", None, 0, clean=True)}


def _submit_protocols(run: Stages, cell: dict, grid: Grid) -> None:
    """Second half: the retraining protocols of every ranking (they need k, hence the first
    half's results). Submitted into ``cell``."""
    train_key = run.result(cell["train_key"])
    truth = artifacts.load_frame("noise", run.result(cell["noise_key"]))
    n = len(truth)
    if cell["noise"] in HUMAN_NOISES:  # real noise: the rate is what the people got wrong
        cell["rate"] = round(float(truth["is_flipped"].mean()), 4)
    cell["ks"] = ks = {"rate": protocols.fraction_to_k(cell["rate"], n), "cl": int(run.result(cell["k_cl"]))}
    cell["prune"], cell["relabel"] = {}, {}
    for name, key in cell["keys"].items():
        if not grid.retrains(name):
            continue
        for at in grid.prune_at:
            cell["prune"][name, at] = run.submit(f"retrain-{name}", stages.retrain, train_key, name, key, ks[at])
        # relabelling every true flip is the clean-label oracle itself
        if name != "oracle-rank":
            for at in grid.relabel_at:
                cell["relabel"][name, at] = run.submit(f"relabel-{name}", protocols.relabel, train_key, name,
                                                       key, ks[at])


def _cell_rows(run: Stages, cell: dict) -> tuple[list[dict], list[dict]]:
    """Wait for a cell's stages; returns its benchmark rows (one per ranker) and the
    found-vs-inspected curve points."""
    dataset, noise, rate, seed = cell["dataset"], cell["noise"], cell["rate"], cell["seed"]
    train_key, ks = run.result(cell["train_key"]), cell["ks"]
    truth = artifacts.load_frame("noise", run.result(cell["noise_key"]))
    flipped = truth["is_flipped"].to_numpy(bool)
    n = len(flipped)
    meta = artifacts.load_json("train", train_key)
    clean = run.result(cell["clean"])

    rows, curves = [], []
    for name, pending in cell["keys"].items():
        key = run.result(pending)
        scores = artifacts.load_frame("scores", key)["score"].to_numpy()
        kind = "peer" if name in protocols.PEERS else "baseline" if name in report.BASELINES else "scorer"
        row = {"dataset": dataset, "model": cell["model"], "noise": noise, "rate": rate, "seed": seed,
               "scorer": name, "kind": kind, "n_train": n, "n_flipped": int(flipped.sum()), "k_rate": ks["rate"],
               "k_cl": ks["cl"], "frac_cl": ks["cl"] / n, "train_key": train_key,
               **detection_metrics(scores, flipped, ks["rate"]),
               "score_seconds": float(artifacts.load_json("scores", key)["seconds"]),
               "acc_noisy": float(meta["test_accuracy"]), "acc_clean": float(clean["test_accuracy"])}
        for at in PROTOCOL_AT:  # fixed columns: a protocol not run leaves NaN
            row[f"acc_prune_{at}"] = row[f"removed_flipped_{at}"] = np.nan
            row[f"acc_relabel_{at}"] = row[f"fixed_relabel_{at}"] = np.nan
        for (ranker, at), pr in cell["prune"].items():
            if ranker == name:
                pr = run.result(pr)
                row[f"acc_prune_{at}"], row[f"removed_flipped_{at}"] = pr["test_accuracy"], pr["removed_flipped"]
        for (ranker, at), rl in cell["relabel"].items():
            if ranker == name:
                rl = run.result(rl)
                row[f"acc_relabel_{at}"] = rl["test_accuracy"]
                row[f"fixed_relabel_{at}"] = rl["fixed"] / max(1, int(flipped.sum()))
        rows.append(row)
        for f, v in found_vs_inspected(scores, flipped, CURVE_FRACTIONS).items():
            curves.append({"dataset": dataset, "noise": noise, "rate": rate, "scorer": name, "seed": seed,
                           "fraction": f, "found": v})
    return rows, curves


def _publish_cell(rows: list[dict], benchmark_key: str) -> None:
    """One lake part per (cell, ranker), overwritten: a rerun refreshes its figures and grids that
    share a cell never duplicate its rows."""
    for r in rows:
        lake.replace("benchmark", pd.DataFrame([{**r, "benchmark_key": benchmark_key}]),
                     part=f"{r['train_key']}-{r['scorer']}")


def _stage_summary(records: list[dict]) -> list[dict]:
    """Thousands of task calls -> one record per stage name (for MLflow's nested runs)."""
    by: dict[str, dict] = {}
    for r in records:
        s = by.setdefault(r["name"], {"name": r["name"], "seconds": 0.0, "calls": 0, "cached_calls": 0})
        s["seconds"] += r["seconds"]
        s["calls"] += 1
        s["cached_calls"] += int(r["cached"])
    return [{"name": s["name"], "cached": s["cached_calls"] == s["calls"], "seconds": round(s["seconds"], 3),
             "metrics": {"calls": s["calls"], "cached_calls": s["cached_calls"]}} for s in by.values()]


@flow(name="benchmark", log_prints=True)
def benchmark(grid: dict | None = None, title: str = "custom grid", command: str = "",
              out: str | None = None, bounds: list[str] | None = None) -> BenchmarkResult:
    """Run a grid of data sets × noise kinds × rates × rankers × seeds through the audit's
    cached tasks and the protocols; write the lake table, the report, MLflow and a Prefect artifact.

    Parameters
    ----------
    grid : dict, optional
        Fields of :class:`Grid` (default: :data:`DEFAULT`).
    title, command : str
        Shown in the report (the command reproduces it).
    out : str, optional
        Report folder (default ``<WINNOW_HOME>/reports/benchmark-<key>``).
    bounds : list[str], optional
        How the grid was bounded to fit its time budget (shown in the report).
    """
    import torch

    t_start = time.perf_counter()
    log = get_run_logger()
    # One intra-op thread by default: on a small shared CPU, torch's thread pool spin-waits against
    # other processes and a 2-thread digits training took 68 s where 1 thread took 2.5 s (measured
    # on this machine under load). WINNOW_TORCH_THREADS overrides; the setting is restored after.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("WINNOW_TORCH_THREADS", "1")))
    try:
        return _benchmark(grid, title, command, out, bounds, t_start, log)
    finally:
        torch.set_num_threads(threads_before)


def _benchmark(grid, title, command, out, bounds, t_start, log) -> BenchmarkResult:
    g = Grid(**{k: tuple(v) if isinstance(v, list) else v for k, v in (grid or {}).items()}).check()
    notes: list[str] = []
    peers = []
    for p in g.peers:
        ok, why = protocols.peer_available(p)
        if ok:
            peers.append(p)
        else:
            notes.append(why)
            log.warning(why)
    key = artifacts.key_of("benchmark", g.as_dict())
    run = Stages()
    rows, curves = [], []
    datasets = list(g.datasets)
    if CIFAR10N in datasets and cifar10n_path() is None:
        datasets.remove(CIFAR10N)
        notes.append(f"{CIFAR10N} skipped: the CIFAR-10N file is not here (shared/data/cifar10n-dev.parquet, "
                     "or set $WINNOW_CIFAR10N)")
        log.warning(notes[-1])
    models = {d: DATASET_MODEL[d] for d in datasets}
    # Every cell is submitted before any is awaited: on Dask the cells run side by side; in
    # sequence (no Dask) each task runs as it is submitted, the same tasks in the same order.
    cells = []
    for dataset in datasets:
        limit = g.limits.get(dataset)
        batch_id = run("ingest", stages.ingest, dataset, None, limit, stages.source_fingerprint(dataset, None))["batch_id"]
        validated = run.submit("validate", stages.validate, batch_id)
        committed = run.submit("commit", stages.commit, batch_id, wait_for=[validated])
        for noise, rates in _noises_for(dataset, g):
            for rate in rates:
                for seed in g.seeds:
                    cells.append(_submit_cell(run, committed, dataset, models[dataset], noise, float(rate),
                                              int(seed), g, peers))
    for cell in cells:
        _submit_protocols(run, cell, g)
    for cell in cells:
        r, c = _cell_rows(run, cell)
        # into the lake as soon as a cell is done: an interrupted grid leaves its finished
        # cells queryable (and resumes from the task cache)
        _publish_cell(r, key)
        rows += r
        curves += c
        log.info("cell %s %s %.0f%% seed %d done", cell["dataset"], cell["noise"], cell["rate"] * 100, cell["seed"])
    run.finalize()
    table = pd.DataFrame(rows)
    agg = report.aggregate(table)

    # publish: report, MLflow, Prefect
    t_pub = time.perf_counter()
    out_dir = Path(out) if out else paths().reports / f"benchmark-{key}"
    out_dir.mkdir(parents=True, exist_ok=True)
    curves_df = pd.DataFrame(curves)
    plot_files, plot_rel = [], {}
    for ds in datasets:
        title_ds = f"{ds} ({models[ds]}) · mean ± std over {len(g.seeds)} seeds"
        f1 = report.found_curves(curves_df[curves_df.dataset == ds], out_dir / f"found-vs-inspected-{ds}.png", title_ds)
        f2 = report.accuracy_vs_pruned(table[table.dataset == ds], out_dir / f"accuracy-vs-pruned-{ds}.png", title_ds)
        plot_files += [f1, f2]
        plot_rel[ds] = [f1.name, f2.name]
    table.to_csv(out_dir / "benchmark-rows.csv", index=False)
    agg.to_csv(out_dir / "benchmark-aggregate.csv", index=False)
    wall = time.perf_counter() - t_start
    cached_fraction = float(np.mean([r["cached"] for r in run.records])) if run.records else 0.0
    meta = {"title": title, "command": command or "winnow benchmark", "wall_seconds": wall, "grid": g.as_dict(),
            "models": models, "bounds": list(bounds or []), "notes": notes, "cached_fraction": cached_fraction,
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), torch threads "
                       f"{__import__('torch').get_num_threads()}"}
    md = report.render(agg, meta, plot_rel)
    report_path = out_dir / "report.md"
    report_path.write_text(md)
    headline = report.headline_table(agg)

    ctx = get_run_context()
    flow_run_id = str(ctx.flow_run.id) if ctx and getattr(ctx, "flow_run", None) else ""
    per_ranker = {name: {k.removesuffix("_mean"): float(v) for k, v in grp.filter(like="_mean").mean().items()}
                  for name, grp in agg.groupby("scorer")}
    params = {"title": title, "command": command, "benchmark_key": key, "rows": len(table),
              **{f"grid.{k}": v for k, v in g.as_dict().items()}}
    mlflow_run_id = log_audit(
        f"benchmark {title}", params, _stage_summary(run.records), per_ranker,
        {"wall_seconds": wall, "cached_fraction": cached_fraction, "rows": len(table),
         **{f"{n}.auroc": m.get("auroc", np.nan) for n, m in per_ranker.items()}},
        {}, [report_path, out_dir / "benchmark-aggregate.csv", *plot_files], experiment=EXPERIMENT,
        tags={"winnow.benchmark_key": key, "prefect.flow_run_id": flow_run_id})
    create_markdown_artifact(key="benchmark-report",
                             markdown=md.split("## Plots")[0] + f"\n\nFull report with plots: `{report_path}`  \n"
                                                                 f"MLflow run: `{mlflow_run_id}`",
                             description=f"winnow benchmark {key}")
    run.records.append({"name": "publish", "cached": False, "seconds": round(time.perf_counter() - t_pub, 3)})
    wall = time.perf_counter() - t_start
    log.info("benchmark %s: %d rows, report %s, wall %.1f s", key, len(table), report_path, wall)
    return BenchmarkResult(key, table, agg, report_path, plot_files, mlflow_run_id, wall, run.records, notes, headline)


# ---------------------------------------------------------------- CLI


def _csv(v: str) -> list[str]:
    return [s.strip() for s in v.split(",") if s.strip()]


def _rates(v: str) -> list[float]:
    out = [float(s) for s in _csv(v)]
    for r in out:
        if not 0 < r < 1:
            import argparse

            raise argparse.ArgumentTypeError(f"rates must lie in (0, 1), got {r}")
    return out


def _mapping(v: str) -> dict:
    """``fashion-mnist=3000,anomaly=4000`` -> {"fashion-mnist": 3000, "anomaly": 4000}."""
    out = {}
    for item in _csv(v):
        name, sep, num = item.partition("=")
        if not sep or not num.strip().isdigit() or int(num) <= 0:
            import argparse

            raise argparse.ArgumentTypeError(f"expected DATASET=N with N > 0, got {item!r}")
        out[name.strip()] = int(num)
    return out


def add_commands(subparsers) -> dict:
    p = subparsers.add_parser(
        "benchmark", help="benchmark every scorer (+ cleanlab, Captum) over data sets × noise × rates × seeds",
        description="Run the benchmark flow: the seed paper's detection, relabel and prune protocols over a grid, "
                    "every stage cached (an interrupted run resumes); writes the lake table `benchmark`, a "
                    "Markdown report with PNG plots (MLflow + Prefect artifact) and prints the headline table.")
    p.add_argument("--quick", action="store_true",
                   help="digits + Fashion-MNIST subset (1,500), symmetric + instance-dependent noise at 20%%, "
                        "3 seeds, every scorer (prune/relabel for six of them + baselines)")
    p.add_argument("--datasets", type=_csv, help=f"comma-separated, from {', '.join(DATASETS)}")
    p.add_argument("--noise", type=_csv, help=f"comma-separated noise kinds, from {', '.join(NOISES)}")
    p.add_argument("--rates", type=_rates, help="comma-separated noise rates, e.g. 0.1,0.2,0.4")
    p.add_argument("--seeds", type=int, help="number of seeds (0..N-1; at least 3 for the report's ± std)")
    p.add_argument("--scorers", type=_csv, help="comma-separated scorer names (default: every registered scorer)")
    p.add_argument("--peers", type=lambda v: [] if v.strip() in ("", "none") else _csv(v),
                   help=f"comma-separated peers from {', '.join(protocols.PEERS)}, or 'none' (default: all)")
    p.add_argument("--limit", type=_mapping, help="per-data-set sample caps, e.g. fashion-mnist=3000,anomaly=4000")
    p.add_argument("--epochs", type=_mapping, help="per-data-set epoch overrides, e.g. digits=10")
    p.add_argument("--prune-at", type=_csv, help="prune at x = rate and/or cl (confident learning's estimate)")
    p.add_argument("--protocol-scorers", type=_csv,
                   help="rankers that also go through prune/relabel retraining (default: all; baselines always)")
    p.add_argument("--out", help="report folder (default: data/reports/benchmark-<key>/)")
    p.add_argument("--refresh", action="store_true", help="ignore cached results and recompute")
    worker_options(p)
    return {"benchmark": cmd_benchmark}


def grid_from_args(args) -> tuple[Grid, str]:
    base = QUICK if args.quick else DEFAULT
    changes = {}
    for attr, field_ in (("datasets", "datasets"), ("noise", "noises"), ("rates", "rates"),
                         ("scorers", "scorers"), ("peers", "peers"), ("prune_at", "prune_at"),
                         ("protocol_scorers", "protocol_scorers")):
        v = getattr(args, attr)
        if v is not None:
            changes[field_] = tuple(v)
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be positive, got {args.seeds}")
        changes["seeds"] = tuple(range(args.seeds))
    if args.limit is not None:
        changes["limits"] = {**base.limits, **args.limit}
    if args.epochs is not None:
        changes["epochs"] = {**base.epochs, **args.epochs}
    title = ("quick grid" if args.quick else "default grid") + (" (modified)" if changes else "")
    return replace(base, **changes).check(), title


def bounds_of(grid: Grid) -> list[str]:
    """The grid's bounds in words, for the report."""
    out = []
    for ds in grid.datasets:
        lim = grid.limits.get(ds)
        ep = grid.epochs.get(ds) or stages.default_config(ds, DATASET_MODEL[ds]).epochs
        size = {"digits": "all 1,797 samples", "fashion-mnist": f"{lim or 60000:,} train + "
                f"{min(10000, max(1000, (lim or 20000) // 2)):,} test (seeded subset)",
                "anomaly": f"{lim or 6000:,} generated series (80% train)",
                CIFAR10N: f"{lim or 10000:,} CIFAR-10N train (seeded subset) + 2,000 clean test"}[ds]
        out.append(f"{ds}: {size}, model `{DATASET_MODEL[ds]}`, {ep} epochs")
    if grid.protocol_scorers:
        out.append(f"prune/relabel retraining only for {', '.join(grid.protocol_scorers)} and the baselines "
                   "(detection is measured for every ranker)")
    if "cl" not in grid.prune_at:
        out.append("pruning only at x = noise rate (not at the confident-learning estimate)")
    return out


def cmd_benchmark(args) -> int:
    grid, title = grid_from_args(args)  # fail on bad input before a Prefect server starts
    runner = runner_from_args(args)  # and on a cluster that is not there
    command = "winnow " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] \
        else "winnow benchmark" + (" --quick" if args.quick else "")
    t0 = time.perf_counter()
    with refresh_cache(args.refresh):
        result = run_flow(benchmark, runner, grid=grid.as_dict(), title=title, command=command, out=args.out,
                          bounds=bounds_of(grid))
    print(result.headline)
    for n in result.notes:
        print(f"note: {n}")
    print(f"report: {result.report_path}")
    print(f"MLflow run id: {result.mlflow_run_id}")
    cached = sum(s["cached"] for s in result.stages)
    print(f"{len(result.rows)} rows in lake table `benchmark`; {cached}/{len(result.stages)} task calls from cache")
    print(f"wall time: {result.wall_seconds:.1f} s in the flow, {time.perf_counter() - t0:.1f} s with Prefect start-up")
    return 0
