"""Can a rank-average ensemble beat every single scorer? Leave-one-data-set-out, on a finished
benchmark's stored scores (issue 3: "the benchmark must show whether it does").

For every cell of a finished ``winnow benchmark`` run (the score tables are in its
``WINNOW_HOME`` artifacts), rank-average every pair and triple of the candidate scorers
(:func:`winnow.tasks.scorers.ensemble.rank_average`, the ensemble scorer's own combiner) and
measure R@k (k = number of flips) against the injected truth. Then, for each held-out data set:

* pick the best *single* scorer and the best *ensemble* by mean R@k on the other data sets;
* report both picks' R@k on the held-out data set, with the best single scorer there in hindsight.

Only settings where the noisy-label model learned count (test accuracy >= 3/4 of the clean
model's, as in the report). No training happens: this reads stored scores, so it takes seconds.

Usage::

    WINNOW_HOME=data python benchmarks/ensemble_selection.py [--benchmark-key KEY]
"""
from __future__ import annotations

import argparse
import itertools
import re
import sys

import numpy as np
import pandas as pd

from winnow.tasks import artifacts, lake
from winnow.tasks.metrics import detection_metrics
from winnow.tasks.scorers.ensemble import rank_average

CANDIDATES = ("loss", "loss-mean", "aum", "margin", "forgetting", "confident", "influence", "representer",
              "tracin-last", "tracin", "turnover")


def cell_scores(train_key: str, names) -> dict[str, np.ndarray]:
    return {n: artifacts.load_frame("scores", artifacts.key_of("score", train_key, n))["score"].to_numpy()
            for n in names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark-key", help="restrict to one benchmark's rows (default: every row in the lake)")
    ap.add_argument("--max-members", type=int, default=3)
    args = ap.parse_args(argv)

    if args.benchmark_key and not re.fullmatch(r"[0-9a-f]{8,64}", args.benchmark_key):
        ap.error(f"--benchmark-key must be a hex key as in the report's folder name, got {args.benchmark_key!r}")
    where = f"WHERE benchmark_key = '{args.benchmark_key}'" if args.benchmark_key else ""
    cells = lake.sql(f"SELECT DISTINCT train_key, dataset, noise, rate, seed, acc_noisy, acc_clean "
                     f"FROM benchmark {where}")
    cells = cells[cells.acc_noisy >= 0.75 * cells.acc_clean]
    if cells.empty:
        print("no testable cells in the lake's benchmark table", file=sys.stderr)
        return 1
    combos = [(n,) for n in CANDIDATES] + [c for r in range(2, args.max_members + 1)
                                           for c in itertools.combinations(CANDIDATES, r)]
    rows = []
    for cell in cells.itertuples(index=False):
        meta = artifacts.load_json("train", cell.train_key)
        flipped = artifacts.load_frame("noise", meta["noise_key"])["is_flipped"].to_numpy(bool)
        k = int(flipped.sum())
        scores = cell_scores(cell.train_key, CANDIDATES)
        for combo in combos:
            s = scores[combo[0]] if len(combo) == 1 else rank_average([scores[n] for n in combo])
            rows.append({"dataset": cell.dataset, "noise": cell.noise, "rate": cell.rate, "seed": cell.seed,
                         "ranker": "+".join(combo), "members": len(combo),
                         "r_at_k": detection_metrics(s, flipped, k)["recall_at_k"]})
    table = pd.DataFrame(rows)
    # mean over seeds per setting, then over settings per data set
    per_ds = (table.groupby(["dataset", "noise", "rate", "ranker", "members"])["r_at_k"].mean()
              .groupby(["dataset", "ranker", "members"]).mean().reset_index())
    datasets = sorted(per_ds["dataset"].unique())
    print(f"{len(cells)} testable cells; {len(combos)} rankers (singles, pairs"
          f"{', triples' if args.max_members >= 3 else ''} of {len(CANDIDATES)} scorers); R@k, mean over settings\n")
    print("| held out | picked single (R@k there) | picked ensemble (R@k there) | best single there, in hindsight |")
    print("|---|---|---|---|")
    for held in datasets:
        train = per_ds[per_ds.dataset != held].groupby(["ranker", "members"])["r_at_k"].mean().reset_index()
        test = per_ds[per_ds.dataset == held].set_index("ranker")["r_at_k"]
        single = train[train.members == 1].sort_values("r_at_k", ascending=False).iloc[0]["ranker"]
        ens = train[train.members > 1].sort_values("r_at_k", ascending=False).iloc[0]["ranker"]
        hindsight = test[[n for n in CANDIDATES]].sort_values(ascending=False)
        print(f"| {held} | `{single}` {test[single]:.3f} | `{ens}` {test[ens]:.3f} | "
              f"`{hindsight.index[0]}` {hindsight.iloc[0]:.3f} |")
    overall = per_ds.groupby(["ranker", "members"])["r_at_k"].mean().reset_index().sort_values(
        "r_at_k", ascending=False)
    print("\nTop 10 over all data sets (mean of the per-data-set means; in-sample, for orientation):")
    for r in overall.head(10).itertuples(index=False):
        print(f"  {r.ranker:<40s} {r.r_at_k:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
