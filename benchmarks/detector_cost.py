"""What the recommended detector adds to one training run: seconds of `knn-aum-lf` (and of `knn-aum`,
its predecessor) on top of the training it audits, in one process, same load.

    python benchmarks/detector_cost.py [--settings c10n-cnn:random_label1 fmnist:instance-dependent ...]
                                       [--seeds 0 1 2] [--model cnn]

Per setting and seed (the data and recipes of ``benchmarks/real_noise.py``): train the audited
recipe once (timed), then score with each detector on a fresh context (so each pays for its own
checkpoint logits and features; timed), and report the ratio detector ÷ training. One torch
thread. Not a test.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_noise import _ms, load_setting, recipe  # noqa: E402

from winnow.tasks.models.nets import build_model  # noqa: E402
from winnow.tasks.models.training import train_model  # noqa: E402
from winnow.tasks.scorers import TrainingContext, get_scorer  # noqa: E402

DETECTORS = ("knn-aum-lf", "knn-aum")
LIMITS = {"fmnist:instance-dependent": 6000, "fmnist:symmetric": 3000, "fmnist:class-pair": 3000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["c10n-cnn:random_label1", "fmnist:instance-dependent",
                                                          "fmnist:symmetric", "digits:instance-dependent"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--limit", type=int, default=4000, help="CIFAR-10N audited images")
    parser.add_argument("--model", choices=["cnn"],
                        help="train this model on every image setting instead of the grid's recipe (Fashion-MNIST "
                             "and digits train an MLP there; `winnow run --model cnn` is the CLI's model for images)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    rows = {}
    for setting in args.settings:
        for seed in args.seeds:
            kind, x, y, _, ids, _, _ = load_setting(setting, seed, LIMITS.get(setting, args.limit))
            x = torch.as_tensor(x)
            if args.model and x.ndim == 4:
                kind = args.model
            cfg = recipe(setting, kind, seed)
            factory = lambda: build_model(kind, tuple(x.shape[1:]), 10)  # noqa: E731
            t0 = time.perf_counter()
            result = train_model(factory, x, y, cfg, device=cpu)
            seconds = {"train": time.perf_counter() - t0}
            for name in DETECTORS:
                ctx = TrainingContext(x, torch.as_tensor(y), 10, factory, result.checkpoints, cfg, ids, seed=seed,
                                      device=cpu)
                t0 = time.perf_counter()
                get_scorer(name)(ctx)
                seconds[name] = time.perf_counter() - t0
            rows.setdefault(f"{setting} ({kind})", []).append({**seconds, "n": len(y)})
            print(f"# {setting} ({kind}) seed {seed}: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
                  + f"; load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    print("| setting | n | training s | " + " | ".join(f"`{d}` s (÷ training)" for d in DETECTORS) + " |")
    print("|---|---|---|" + "---|" * len(DETECTORS))
    for setting, runs in rows.items():
        n = runs[0]["n"]
        cells = [f"{_ms([r[d] for r in runs], '.1f')} ({_ms([r[d] / r['train'] for r in runs], '.2f')}×)" for d in DETECTORS]
        print(f"| {setting} | {n} | {_ms([r['train'] for r in runs], '.1f')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
