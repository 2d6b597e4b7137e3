"""Detection AUROC / AP / P@k of scorers on digits or Fashion-MNIST with injected label noise.

For every (model, noise kind, seed): take the data set's train split, flip ``--rate`` of its labels
(``winnow.tasks.data.noise``, seeded), train the recipe `winnow run` uses (``stages.default_config``, one
checkpoint per epoch), build one TrainingContext and run every scorer spec on it; the context's
cache is shared, so each scorer's time excludes pieces an earlier one already computed.

Scorer specs are ``name`` or ``name:key=value:key=value``; inside a value ``+`` stands for a comma
(``ensemble:members=loss-mean+aum``).

Usage::

    .venv/bin/python benchmarks/detection_scorers.py                       # digits, the full grid
    .venv/bin/python benchmarks/detection_scorers.py --models mlp --seeds 0 --scorers loss aum
    .venv/bin/python benchmarks/detection_scorers.py --dataset fashion-mnist --limit 20000 --models mlp \
        --scorers loss loss-mean confident tracin tracin-last influence representer turnover aum margin ensemble random
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from winnow.tasks.data import noise
from winnow.tasks.data.sources import load_source
from winnow.tasks.stages import default_config
from winnow.tasks.metrics import detection_metrics
from winnow.tasks.models.nets import build_model
from winnow.tasks.models.training import accuracy, train_model
from winnow.tasks.scorers import TrainingContext, get_scorer

DEFAULT_SCORERS = [
    "loss", "loss-mean", "confident",
    "representer", "representer:variant=self",
    "turnover", "turnover:variant=heldout", "turnover:layers=all",
    "aum", "margin", "forgetting",
    "ensemble", "ensemble:rounds=2",
    "ensemble:members=representer+margin+confident",
    "ensemble:members=loss-mean+aum+confident",
    "ensemble:members=loss-mean+aum+confident:rounds=2",
]


def parse_spec(spec: str) -> tuple[str, dict]:
    name, *pairs = spec.split(":")
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"scorer spec {spec!r}: option {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        options[key] = value.replace("+", ",")
    return name, options


def noisy_labels(kind: str, x: np.ndarray, y: np.ndarray, rate: float, seed: int) -> np.ndarray:
    if kind == "symmetric":
        return noise.symmetric(y, 10, rate, seed)
    if kind == "class-pair":
        return noise.class_pair(y, 10, rate, seed, noise.confusable_partners(x, y, 10))
    raise ValueError(f"unknown noise kind {kind!r}; use symmetric or class-pair")


def run_one(model_kind: str, noise_kind: str, seed: int, rate: float, specs: list[str],
            dataset: str = "digits", limit: int | None = None) -> dict:
    ds = load_source(dataset, limit=limit)
    train = ds.split == "train"
    x, y, ids = ds.x[train], ds.label[train], ds.sample_id[train]
    y_noisy = noisy_labels(noise_kind, x, y, rate, seed)
    flipped = y_noisy != y
    factory = lambda: build_model(model_kind, x.shape[1:], 10)  # noqa: E731
    config = default_config(dataset, model_kind, seed=seed)  # the recipe `winnow run` uses
    t_train = time.perf_counter()
    result = train_model(factory, x, y_noisy, config, device=torch.device("cpu"))
    t_train = time.perf_counter() - t_train
    ctx = TrainingContext(x, y_noisy, 10, factory, result.checkpoints, config, ids, seed=seed,
                          device=torch.device("cpu"))
    row = {"model": model_kind, "noise": noise_kind, "seed": seed, "n": int(len(y)), "flips": int(flipped.sum()),
           "test_acc": accuracy(result.model, ds.x[~train], ds.label[~train]), "train_seconds": t_train,
           "auroc": {}, "ap": {}, "p_at_k": {}, "seconds": {}}
    for spec in specs:
        name, options = parse_spec(spec)
        start = time.perf_counter()
        scores = get_scorer(name, **options)(ctx)
        row["seconds"][spec] = time.perf_counter() - start
        m = detection_metrics(scores, flipped, k=int(flipped.sum()))
        row["auroc"][spec], row["ap"][spec], row["p_at_k"][spec] = m["auroc"], m["ap"], m["precision_at_k"]
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["digits", "fashion-mnist"], default="digits")
    ap.add_argument("--limit", type=int, help="cap the data set (Fashion-MNIST: the training split)")
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--noise", nargs="+", default=["symmetric", "class-pair"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--scorers", nargs="+", default=DEFAULT_SCORERS)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the box is shared)")
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for spec in args.scorers:
        get_scorer(parse_spec(spec)[0])  # fail on a typo before any training
    rows = []
    for model_kind in args.models:
        for noise_kind in args.noise:
            for seed in args.seeds:
                t0 = time.perf_counter()
                row = run_one(model_kind, noise_kind, seed, args.rate, args.scorers, args.dataset, args.limit)
                rows.append(row)
                print(f"# {model_kind} {noise_kind} seed={seed} test_acc={row['test_acc']:.3f} "
                      f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    groups = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["noise"])].append(row)
    width = max(len(s) for s in args.scorers)
    print(f"{args.dataset} train split (n={rows[0]['n']}), {args.rate:.0%} flips, seeds {args.seeds}: "
          "AUROC mean ± std, P@k mean ± std (k = number of flips), AP mean, scorer seconds")
    for (model_kind, noise_kind), rs in groups.items():
        acc = np.mean([r["test_acc"] for r in rs])
        tt = np.mean([r["train_seconds"] for r in rs])
        print(f"\n{model_kind} / {noise_kind}  (clean test acc of the noisy-trained model {acc:.3f}; "
              f"training {tt:.1f}s)")
        for spec in args.scorers:
            a = np.array([r["auroc"][spec] for r in rs])
            p = np.array([r["ap"][spec] for r in rs])
            pk = np.array([r["p_at_k"][spec] for r in rs])
            sec = np.mean([r["seconds"][spec] for r in rs])
            sd = (lambda v: v.std(ddof=1) if len(v) > 1 else 0.0)  # noqa: E731
            print(f"  {spec:<{width}}  {a.mean():.4f} ± {sd(a):.4f}   P@k {pk.mean():.3f} ± {sd(pk):.3f}   "
                  f"AP {p.mean():.3f}   {sec:6.1f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
