"""What the default noise-count estimator does to the on-arrival gate (issue 14, for the lead).

Replays the arrivals of ``tests/test_operate_e2e.py`` in-process (no Prefect): clean sklearn digits
arriving in batches of 300 (pool = everything accepted so far + the new batch), 6 canaries planted
among the batch's training rows, the MLP for 6 epochs, the top k of ``--detector`` (on-arrival ranks by the
first of its scorers: ``knn-aum-lf`` since stop 25, ``confident`` before). For each
estimator it prints k, the gate's figures (``flows/operate.figures_of``) and whether a review queue
would be non-empty, mean over seeds.

    .venv/bin/python benchmarks/arrival_k.py --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def main(argv=None) -> int:
    from sklearn.datasets import load_digits

    from winnow.tasks import canaries, noise_rate
    from winnow.tasks.models.nets import build_model
    from winnow.tasks.models.training import train_model
    from winnow.tasks.scorers import TrainingContext, get_scorer
    from winnow.tasks.scorers.neighbors import out_of_sample_views
    from winnow.tasks.stages import default_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--canaries", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--detector", default="knn-aum-lf", help="the scorer that ranks the flags (on-arrival: the first "
                                                            "of flows/on_arrival.DEFAULT_SCORERS)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = load_digits()
    x_all = (d.images * 255 / 16).round().astype(np.float32)[:, None] / 255.0
    rows = []
    for seed in args.seeds:
        for lo, hi in ((0, 300), (0, 600)):  # arrival a (alone), arrival b (pool a + b)
            idx = np.arange(lo, hi)
            train = idx[np.random.default_rng(seed).random(len(idx)) < 0.8]
            x, y = torch.as_tensor(x_all[train]), d.target[train].astype(np.int64)
            in_batch = train >= hi - 300
            labels, planted = canaries.plant(y, in_batch, args.canaries, 10, seed)
            cfg = default_config("parquet", "mlp", args.epochs, seed, len(train))
            factory = lambda: build_model("mlp", tuple(x.shape[1:]), 10)  # noqa: E731
            result = train_model(factory, x, labels, cfg, device=torch.device("cpu"))
            ctx = TrainingContext(x, torch.as_tensor(labels), 10, factory, result.checkpoints, cfg,
                                  np.array([str(i) for i in train]), seed=seed, device=torch.device("cpu"))
            probs, _ = out_of_sample_views(ctx)
            order = np.argsort(-get_scorer(args.detector)(ctx), kind="stable")
            for method in noise_rate.ESTIMATORS:
                k = noise_rate.estimate(labels, probs, method)
                flagged = np.zeros(len(labels), bool)
                flagged[order[:k]] = True
                real = in_batch & ~planted
                rows.append({"seed": seed, "pool": hi - lo, "estimator": method, "k": k,
                             "noise_rate": max(k - int(planted.sum()), 0) / len(labels),
                             "flagged_fraction": (flagged & real).sum() / max(real.sum(), 1),
                             "canary_recall": canaries.recall(flagged, planted),
                             # the proposal for the lead: canary recall in the top max(k, canaries planted)
                             "recall_at_max": canaries.recall(np.isin(np.arange(len(labels)),
                                                                      order[:max(k, int(planted.sum()))]), planted),
                             "queue_nonempty": bool((flagged & real).any())})
            print(f"# seed {seed} pool {hi - lo}: " + ", ".join(f"{r['estimator']} k={r['k']} recall={r['canary_recall']:.2f}"
                                                              for r in rows[-len(noise_rate.ESTIMATORS):]),
                  file=sys.stderr, flush=True)
    import pandas as pd

    df = pd.DataFrame(rows)
    summary = df.groupby(["estimator", "pool"]).agg(
        k=("k", "mean"), k_min=("k", "min"), noise_rate=("noise_rate", "mean"), noise_rate_max=("noise_rate", "max"),
        flagged_fraction_max=("flagged_fraction", "max"), canary_recall=("canary_recall", "mean"),
        canary_recall_min=("canary_recall", "min"), recall_at_max=("recall_at_max", "mean"),
        recall_at_max_min=("recall_at_max", "min"), queue_nonempty=("queue_nonempty", "mean"))
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
