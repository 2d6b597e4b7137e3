"""How winnow scales with N: a class-structured synthetic feature set audited end to end.

    python benchmarks/scale.py --n 100000 1000000 --workers 0 2 --out docs/scale

For each N: a Gaussian mixture of 512-d "embeddings" (10 classes whose means lie in a shared
32-d subspace, so classes overlap) with instance-dependent label noise (10% of labels flipped,
the more confusable samples more often, each to its likeliest wrong class) is written to Parquet
(``id``, ``label``, ``features`` as fixed_size_list<float32>[512]; row groups of 65,536, written
a chunk at a time). Then, per ``--workers`` value (0 = sequential), a fresh WINNOW_HOME (nothing
cached) and::

    winnow run --dataset parquet --path F --noise none --model mlp --scorers loss,aum,confident
               --epochs E [--workers W]

The script samples the resident memory and CPU time of the whole process tree (the CLI,
Prefect's temporary server, Dask workers) every 0.25 s, with the load average; reads what the flow
recorded per stage (MLflow nested runs: seconds, start and end, and run in sequence the flow
process's CPU seconds and peak RSS) and attributes the tree's peak RSS and CPU to each stage's
time windows; scores each scorer's AUROC against the flips it planted; and writes ``scale.json``
and ``scale.md`` to ``--out``. 10^7 rows are extrapolated from the slope between
the two largest N (stated as such). One torch thread per process (``OMP_NUM_THREADS=1``).

Not a test: a run at N = 10^6 takes minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 65536
CLASSES = 10
SUBSPACE = 32


# ---------------------------------------------------------------- the data set (pure)


def mixture_means(dim: int, seed: int) -> tuple[np.ndarray, float]:
    """Class means (C, dim) in a random SUBSPACE-d subspace, and the within-class std."""
    rng = np.random.default_rng([seed, 0])
    basis = np.linalg.qr(rng.normal(size=(dim, SUBSPACE)))[0]  # (dim, SUBSPACE), orthonormal
    # scale 0.6: the Bayes classifier is right on ~93% of clean samples (confusable pairs exist)
    centres = rng.normal(size=(CLASSES, SUBSPACE)) * 0.6
    return (centres @ basis.T).astype(np.float32), 1.0


def chunk(i: int, n: int, dim: int, seed: int, means: np.ndarray, sigma: float):
    """Rows [i·CHUNK, min(n, (i+1)·CHUNK)): features (m, dim) float32, clean labels (m,),
    and the posterior p(class | x) under the mixture (m, C) — deterministic in (seed, i)."""
    rng = np.random.default_rng([seed, 1, i])
    m = min(n, (i + 1) * CHUNK) - i * CHUNK
    y = rng.integers(0, CLASSES, m)
    x = means[y] + rng.normal(scale=sigma, size=(m, dim)).astype(np.float32)
    # squared distances to every mean; the isotropic part common to all classes cancels
    logits = (x @ means.T - 0.5 * (means ** 2).sum(1)) / sigma ** 2
    logits -= logits.max(1, keepdims=True)
    post = np.exp(logits)
    post /= post.sum(1, keepdims=True)
    return x, y, post


def flip_plan(n: int, dim: int, seed: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Which rows flip (exactly round(rate·n)) and to what: instance-dependent.

    Row i is drawn with weight 1 - p(y_i | x_i) + 0.01 (Gumbel top-k: without replacement,
    proportional to the weight), and flips to its likeliest wrong class.

    Returns
    -------
    flipped : np.ndarray, shape (n,), bool
    new_label : np.ndarray, shape (n,), int64 — the likeliest wrong class of every row
    """
    means, sigma = mixture_means(dim, seed)
    keys, alt = np.empty(n), np.empty(n, dtype=np.int64)
    gumbel = np.random.default_rng([seed, 2]).gumbel(size=n)
    for i in range(-(-n // CHUNK)):
        _, y, post = chunk(i, n, dim, seed, means, sigma)
        sl = slice(i * CHUNK, i * CHUNK + len(y))
        keys[sl] = np.log(1.0 - post[np.arange(len(y)), y] + 0.01) + gumbel[sl]
        wrong = post.copy()
        wrong[np.arange(len(y)), y] = -1.0
        alt[sl] = wrong.argmax(1)
    k = int(round(rate * n))
    flipped = np.zeros(n, dtype=bool)
    flipped[np.argsort(-keys, kind="stable")[:k]] = True
    return flipped, alt


def write_dataset(path: Path, n: int, dim: int = 512, seed: int = 0, rate: float = 0.1) -> np.ndarray:
    """Write the noisy-labelled set to ``path`` (a chunk at a time); returns the flipped mask."""
    flipped, alt = flip_plan(n, dim, seed, rate)
    means, sigma = mixture_means(dim, seed)
    schema = pa.schema([("id", pa.string()), ("label", pa.int64()),
                        ("features", pa.list_(pa.float32(), dim))])
    tmp = path.with_name(f".{path.name}.tmp")
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for i in range(-(-n // CHUNK)):
            x, y, _ = chunk(i, n, dim, seed, means, sigma)
            sl = slice(i * CHUNK, i * CHUNK + len(y))
            label = np.where(flipped[sl], alt[sl], y)
            features = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
            ids = pa.array([f"s{j}" for j in range(sl.start, sl.stop)])
            writer.write_table(pa.table([ids, pa.array(label), features], schema=schema), row_group_size=CHUNK)
    tmp.replace(path)
    np.save(path.with_suffix(".flipped.npy"), flipped)
    return flipped


# ---------------------------------------------------------------- measuring a run


def _name(proc) -> str:
    """A short name for a process of the tree (what it runs)."""
    try:
        cmd = proc.cmdline()
    except Exception:  # gone, or not ours to read
        return "?"
    text = " ".join(cmd[1:4])
    for key in ("uvicorn", "prefect", "distributed", "dask", "winnow.flows.cli"):
        if key in " ".join(cmd):
            return key if key != "winnow.flows.cli" else "winnow (flow)"
    return text[:40]


class TreeMemory:
    """Resident memory and CPU seconds of a process and all its descendants, sampled every
    ``every`` s: the peaks, and the series (for per-stage figures: :func:`stage_figures`)."""

    def __init__(self, pid: int, every: float = 0.25):
        import psutil

        self.root, self.every = psutil.Process(pid), every
        self.peak_sum = self.peak_max = 0
        self.peak_procs, self.peak_at, self.peak_who = 0, 0.0, []
        self.series: list[tuple[float, int, float]] = []  # (epoch s, tree RSS bytes, tree CPU s)
        self.load: list[float] = []  # 1-min load average, once a second or so
        self._cpu_gone: dict[int, float] = {}  # last CPU seen of each process (kept when it exits)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        tick = 0
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = []
            for p in procs:
                try:
                    with p.oneshot():
                        rss.append(p.memory_info().rss)
                        t = p.cpu_times()
                        self._cpu_gone[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            if rss:
                if sum(rss) > self.peak_sum:
                    self.peak_sum, self.peak_procs, self.peak_at = sum(rss), len(rss), time.time()
                    self.peak_who = [(_name(p), r >> 20) for p, r in zip(procs, rss)]
                self.peak_max = max(self.peak_max, max(rss))
                self.series.append((time.time(), sum(rss), sum(self._cpu_gone.values())))
            if tick % 4 == 0:
                self.load.append(os.getloadavg()[0])
            tick += 1
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def stage_records(home: Path, mlflow_run_id: str) -> list[dict]:
    """The flow's stage records (its nested MLflow runs): name, seconds and what the flow measured
    (``started_at``, ``ended_at``, and in sequence ``cpu_seconds``, ``peak_rss_gib`` of the flow process)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string=f"tags.mlflow.parentRunId = '{mlflow_run_id}'")
    out = []
    for _, r in runs.iterrows():
        stage = r.get("params.stage")
        if isinstance(stage, str) and not np.isnan(r.get("metrics.seconds", np.nan)):
            out.append({"name": stage, **{m: float(r[f"metrics.{m}"]) for m in
                                          ("seconds", "started_at", "ended_at", "cpu_seconds", "peak_rss_gib")
                                          if f"metrics.{m}" in r and not np.isnan(r[f"metrics.{m}"])}})
    return out


def stage_figures(records: list[dict], series: list[tuple[float, int, float]]) -> dict[str, dict]:
    """Per stage name: seconds (summed over its calls), the flow process's CPU seconds and peak RSS
    (sequential runs), and from the sampled series the process tree's peak RSS and CPU seconds
    within the stage's time windows (on Dask, stages that overlap share those)."""
    t = np.array([s[0] for s in series]) if series else np.zeros(0)
    rss = np.array([s[1] for s in series]) if series else np.zeros(0)
    cpu = np.array([s[2] for s in series]) if series else np.zeros(0)
    out: dict[str, dict] = {}
    for r in records:
        f = out.setdefault(r["name"], {"seconds": 0.0})
        f["seconds"] = round(f["seconds"] + r["seconds"], 1)
        if "cpu_seconds" in r:
            f["cpu_s"] = round(f.get("cpu_s", 0.0) + r["cpu_seconds"], 1)
        if "peak_rss_gib" in r:
            f["peak_rss_flow_gib"] = round(max(f.get("peak_rss_flow_gib", 0.0), r["peak_rss_gib"]), 3)
        if "started_at" in r and len(t):
            inside = (t >= r["started_at"]) & (t <= r["ended_at"])
            if inside.any():
                f["peak_rss_tree_gib"] = round(max(f.get("peak_rss_tree_gib", 0.0), rss[inside].max() / 2**30), 3)
                lo, hi = np.searchsorted(t, [r["started_at"], r["ended_at"]])
                f["cpu_tree_s"] = round(f.get("cpu_tree_s", 0.0) + cpu[min(hi, len(t) - 1)] - cpu[max(lo - 1, 0)], 1)
    return out


def scorer_auroc(home: Path, flipped: np.ndarray) -> dict[str, float]:
    """AUROC of each scorer's ranking against the planted flips (from the lake's scores table)."""
    import duckdb
    from sklearn.metrics import roc_auc_score

    files = str(home / "lake" / "scores" / "*.parquet")
    df = duckdb.sql(f"SELECT scorer, sample_id, score FROM read_parquet('{files}')").df()
    out = {}
    for name, g in df.groupby("scorer"):
        idx = g["sample_id"].str.slice(1).astype(np.int64).to_numpy()
        out[name] = round(float(roc_auc_score(flipped[idx], g["score"].to_numpy())), 4)
    return out


def audit(path: Path, flipped: np.ndarray, workers: int, epochs: int, scorers: str, keep: bool) -> dict:
    home = Path(tempfile.mkdtemp(prefix="winnow-scale-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(WINNOW_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1",
               WINNOW_TORCH_THREADS="1", TQDM_DISABLE="1")
    cmd = [sys.executable, "-m", "winnow.flows.cli", "run", "--dataset", "parquet", "--path", str(path),
           "--noise", "none", "--model", "mlp", "--scorers", scorers, "--epochs", str(epochs)]
    if workers:
        cmd += ["--workers", str(workers)]
    print("$", " ".join(cmd[2:]), f"  (WINNOW_HOME={home})", flush=True)
    load0 = os.getloadavg()[0]
    t0, t_wall0 = time.perf_counter(), time.time()
    with open(home / "run.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, text=True, cwd=home)
        with TreeMemory(proc.pid) as mem:
            out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"winnow run failed (exit {proc.returncode}); log: {home / 'run.log'}\n{out}")
    m = re.search(r"MLflow run id: (\w+)", out)
    figures = stage_figures(stage_records(home, m.group(1)), mem.series) if m else {}
    result = {"n": len(flipped), "workers": workers, "epochs": epochs, "wall_s": round(wall, 1),
              "cpu_tree_s": round(mem.series[-1][2], 1) if mem.series else None,
              "peak_rss_tree_gib": round(mem.peak_sum / 2**30, 3), "processes_at_peak": mem.peak_procs,
              "peak_rss_one_process_gib": round(mem.peak_max / 2**30, 3),
              "peak_at_s": round(mem.peak_at - t_wall0, 1), "peak_processes_mib": mem.peak_who,
              # every 8th sample (about 2 s): seconds since start, tree RSS GiB, tree CPU s
              "series": [(round(t - t_wall0, 1), round(b / 2**30, 3), round(c, 1)) for t, b, c in mem.series[::8]],
              "load_avg_1min": {"start": round(load0, 1), "mean": round(float(np.mean(mem.load)), 1) if mem.load else None,
                                "max": round(max(mem.load), 1) if mem.load else None},
              "stages_s": {k: v["seconds"] for k, v in figures.items()}, "stages": figures,
              "auroc": scorer_auroc(home, flipped), "home": str(home), "command": " ".join(cmd[3:])}
    print(json.dumps(result), flush=True)
    if not keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return result


# ---------------------------------------------------------------- report


STAGE_ORDER = ("ingest", "validate", "commit", "inject-noise", "train", "out-of-sample-fold", "out-of-sample",
               "checkpoint-logits", "checkpoint-logits-merge", "score-loss", "score-aum", "score-confident",
               "estimate-k", "publish")


def _f(v, fmt="{:.0f}") -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else fmt.format(v)


def markdown(results: list[dict], machine: str) -> str:
    """A summary table (one row per run) and, per run, its stages: wall and CPU seconds, peak RSS."""
    lines = ["| N × 512 | Dask workers | wall s | CPU s (tree) | peak RSS (tree) GiB | largest process GiB | "
             "load avg (1 min: start / mean / max) | AUROC loss / aum / confident |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        la = r.get("load_avg_1min") or {}
        au = r.get("auroc", {})
        lines.append(f"| {r['n']:,} | {r['workers'] or '—'} | {r['wall_s']:.0f} | {_f(r.get('cpu_tree_s'))} | "
                     f"{r['peak_rss_tree_gib']:.2f} | {r['peak_rss_one_process_gib']:.2f} | "
                     f"{_f(la.get('start'), '{:.1f}')} / {_f(la.get('mean'), '{:.1f}')} / {_f(la.get('max'), '{:.1f}')} | "
                     + " / ".join(_f(au.get(k), "{:.3f}") for k in ("loss", "aum", "confident")) + " |")
    # 10^7 on paper: linear in N from the two largest measured N, per worker setting
    for w in sorted({r["workers"] for r in results}):
        by_n = {r["n"]: r for r in results if r["workers"] == w}  # the last run of each N
        rs = [by_n[n] for n in sorted(by_n)]
        if len(rs) >= 2:
            a, b = rs[-2], rs[-1]
            f = lambda key: b[key] + (b[key] - a[key]) * (10_000_000 - b["n"]) / (b["n"] - a["n"])  # noqa: E731
            lines.append(f"| 10,000,000 (extrapolated, linear) | {w or '—'} | {f('wall_s'):.0f} | | "
                         f"{f('peak_rss_tree_gib'):.2f} | {f('peak_rss_one_process_gib'):.2f} | | |")
    for r in results:
        stages = r.get("stages") or {k: {"seconds": v} for k, v in r["stages_s"].items()}
        names = [s for s in STAGE_ORDER if s in stages] + sorted(set(stages) - set(STAGE_ORDER))
        lines += ["", f"N = {r['n']:,}, {'Dask, ' + str(r['workers']) + ' workers' if r['workers'] else 'sequential'}: "
                      f"`winnow {r.get('command', '')}`" + (" --workers " + str(r["workers"]) if r["workers"] and
                                                            "--workers" not in r.get("command", "") else ""), "",
                  "| stage | wall s | CPU s (flow process) | CPU s (tree, in the stage's windows) | "
                  "peak RSS (tree) GiB | peak RSS (flow process) GiB |", "|---|---|---|---|---|---|"]
        for name in names:
            st = stages[name]
            lines.append(f"| {name} | {st['seconds']:.1f} | {_f(st.get('cpu_s'), '{:.1f}')} | "
                         f"{_f(st.get('cpu_tree_s'), '{:.1f}')} | {_f(st.get('peak_rss_tree_gib'), '{:.2f}')} | "
                         f"{_f(st.get('peak_rss_flow_gib'), '{:.2f}')} |")
        staged = sum(st["seconds"] for n_, st in stages.items() if not r["workers"])
        if not r["workers"]:
            lines.append(f"| outside the stages (start-up, Prefect server, publish) | {r['wall_s'] - staged:.1f} | | "
                         f"{_f((r.get('cpu_tree_s') or 0) - sum(st.get('cpu_tree_s', 0) for st in stages.values()), '{:.1f}')}"
                         f" | | |")
    lines += ["", f"Machine: {machine}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="0 = sequential")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--scorers", default="loss,aum,confident")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "winnow-scale-data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "scale")
    ap.add_argument("--keep", action="store_true", help="keep each run's WINNOW_HOME")
    args = ap.parse_args(argv)
    if any(n < 1000 for n in args.n) or args.dim < 2 or args.epochs < 1 or any(w < 0 for w in args.workers):
        raise SystemExit("--n >= 1000, --dim >= 2, --epochs >= 1, --workers >= 0")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.n:
        path = args.data_dir / f"mixture-n{n}-d{args.dim}.parquet"
        if not path.exists() or not path.with_suffix(".flipped.npy").exists():
            t0 = time.perf_counter()
            write_dataset(path, n, args.dim)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
        flipped = np.load(path.with_suffix(".flipped.npy"))
        for w in args.workers:
            results.append(audit(path, flipped, w, args.epochs, args.scorers, args.keep))
            (args.out / "scale.json").write_text(json.dumps(results, indent=1))
    load = os.getloadavg()
    machine = (f"{os.cpu_count()} cores, one torch thread per process; load average at the end "
               f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    md = markdown(results, machine)
    (args.out / "scale.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
