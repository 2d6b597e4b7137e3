"""What the on-arrival candidate model gains from the default remedy (issue 14, operating journey).

The on-arrival flow retrains a candidate on the accepted data after every batch and promotes it if
the gate passes. Until stop 25 that candidate learned the given labels (reviewers' decisions
applied); now it learns ``soft-all``'s targets (``on_arrival(remedy="soft-all")``, the default):
pending flagged rows their suggestion, every other row half its label, half its suggestion.
This script replays a stream through the real flow (temporary Prefect server, MLflow, GX, the
lake, in a child process per replay with its own WINNOW_HOME) three times per cell:

* ``none`` — the noisy labels, the candidate learns them as given (the flow before stop 25);
* ``soft-all`` — the same files, the candidate learns soft-all's targets;
* ``oracle`` — the files with the true training labels, the candidate learns them as given.

A cell = a benchmark setting's training rows (``real_noise.load_setting``: digits / Fashion-MNIST
with 20% injected noise) in two arrivals of half the rows each, each with half the clean test
rows (``split = test``; their labels are the truth, so the candidate's test accuracy is measured
on clean labels). Gate thresholds are loosened so that every batch is committed (the model gate
still runs); canaries as shipped. Nobody reviews: every flag stays pending.

    .venv/bin/python benchmarks/arrival_remedy.py run --out data/arrival_remedy \\
        --settings digits:instance-dependent fmnist:instance-dependent --seeds 0 1 2
    .venv/bin/python benchmarks/arrival_remedy.py report --out data/arrival_remedy
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_noise import load_setting  # noqa: E402
from soft_export import _ms, cells_to_run, paired, write_user_file  # noqa: E402

VARIANTS = ("none", "soft-all", "oracle")
#: every batch is committed; the model gate still runs (the figures are what this measures)
LOOSE_GATE = {"max_noise_rate": 1.0, "max_flagged_fraction": 1.0, "min_canary_recall": None,
              "accuracy_tolerance": 1.0}


def write_stream(setting: str, seed: int, limit: int, work: Path, arrivals: int = 2) -> dict[str, list[Path]]:
    """The cell's arrivals, once with the given (noisy) training labels and once with the true ones."""
    _, x, y_given, y_true, ids, tx, ty = load_setting(setting, seed, limit)
    rng = np.random.default_rng(seed)
    train_parts = np.array_split(rng.permutation(len(x)), arrivals)
    test_parts = np.array_split(rng.permutation(len(tx)), arrivals)
    files = {"given": [], "true": []}
    for i, (tr, te) in enumerate(zip(train_parts, test_parts)):
        xs = np.concatenate([x[tr], tx[te]])
        split = np.array(["train"] * len(tr) + ["test"] * len(te))
        part_ids = np.concatenate([np.asarray(ids)[tr].astype(str), np.array([f"test-{j}" for j in te])])
        for kind, labels in (("given", y_given), ("true", y_true)):
            path = work / kind / f"arrival-{i}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_user_file(path, part_ids, xs, np.concatenate([labels[tr], ty[te]]), split)
            files[kind].append(path)
    wrong = int((y_given != y_true).sum())
    return {"files": files, "n": len(x), "wrong": wrong}


def replay(home: Path, files: list[Path], remedy: str, seed: int) -> list[dict]:
    """Run the on-arrival flow on ``files`` in turn, in a child process with its own WINNOW_HOME."""
    env = {**os.environ, "WINNOW_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)  # a temporary Prefect server, as `winnow gate` starts
    args = [sys.executable, __file__, "replay", "--remedy", remedy, "--seed", str(seed), *map(str, files)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"replay exited {done.returncode}: {done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def cmd_replay(args) -> None:
    import time

    from winnow.tasks.settings import configure_environment

    configure_environment()
    from winnow.flows.on_arrival import on_arrival

    for path in args.files:
        t0 = time.perf_counter()
        result = on_arrival(path=path, stream="bench", seed=args.seed, gate=LOOSE_GATE, remedy=args.remedy)
        figures = {k: v for k, v in result.figures.items() if isinstance(v, (int, float, str))}
        print(json.dumps({"path": path, "status": result.status, "flagged": result.flagged,
                          "seconds": round(time.perf_counter() - t0, 1), **figures}), flush=True)


def cmd_run(args) -> None:
    for setting, seed, dest in cells_to_run(Path(args.out), args.settings, args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            stream = write_stream(setting, seed, args.limit, Path(tmp))
            runs = {v: replay(Path(tmp) / f"home-{v}", stream["files"]["true" if v == "oracle" else "given"],
                              "none" if v == "oracle" else v, seed) for v in VARIANTS}
        cell = {"setting": setting, "seed": seed, "n": stream["n"], "wrong": stream["wrong"], "arrivals": runs}
        dest.write_text(json.dumps(cell, indent=1))
        acc = {v: [r["candidate_accuracy"] for r in runs[v]] for v in VARIANTS}
        print(f"{setting} s{seed}: candidate accuracy after each arrival "
              + "; ".join(f"{v} " + " ".join(f"{a:.4f}" for a in acc[v]) for v in VARIANTS), flush=True)


def cmd_report(args) -> None:
    cells = defaultdict(list)
    for js in sorted(Path(args.out).glob("*__s*.json")):
        cell = json.loads(js.read_text())
        cells[cell["setting"]].append(cell)
    print("Candidate test accuracy (clean test rows) after the last arrival, mean ± std over seeds; "
          "share of the noisy → oracle gap; soft-all − none paired (± s.e., ahead on)\n")
    print("| setting | seeds | arrivals | none | soft-all | oracle | soft-all: share of the gap | soft-all − none |"
          " seconds per arrival (none / soft-all) |")
    print("|---|---|---|---|---|---|---|---|---|")
    every = []
    for setting, group in cells.items():
        last = {v: np.array([c["arrivals"][v][-1]["candidate_accuracy"] for c in group]) for v in VARIANTS}
        diff = last["soft-all"] - last["none"]
        every += list(diff)
        gap = (last["oracle"] - last["none"]).mean()
        secs = {v: np.mean([r["seconds"] for c in group for r in c["arrivals"][v]]) for v in ("none", "soft-all")}
        print(f"| {setting} | {len(group)} | {len(group[0]['arrivals']['none'])} | {_ms(last['none'])} | "
              f"{_ms(last['soft-all'])} | {_ms(last['oracle'])} | {diff.mean() / gap:+.0%} | {paired(diff)} | "
              f"{secs['none']:.0f} / {secs['soft-all']:.0f} |")
    if len(every) > 1:
        print(f"\nEvery cell: soft-all − none {paired(every)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="replay each cell's stream once per variant")
    run.add_argument("--out", required=True)
    run.add_argument("--settings", nargs="+", default=["digits:instance-dependent", "fmnist:instance-dependent"])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--limit", type=int, default=3000, help="training rows (Fashion-MNIST)")
    rep = sub.add_parser("report", help="the per-setting table")
    rep.add_argument("--out", required=True)
    one = sub.add_parser("replay", help="(internal) the on-arrival flow on each file, in this process")
    one.add_argument("--remedy", required=True)
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    {"run": cmd_run, "report": cmd_report, "replay": cmd_replay}[args.cmd](args)


if __name__ == "__main__":
    main()
