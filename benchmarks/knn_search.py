"""Time of the k-NN label vote (``knn_votes``, the search behind ``knn-aum``) against the reference:
the same vote searched 1,024 queries at a time with ``torch.topk`` over every reference row (what
winnow did before, and the plain way to write it).

    python benchmarks/knn_search.py [--queries 65536] [--references 4000 8192 32768] [--repeats 3]

Features: 128-d (the MLP's penultimate width), drawn from a 10-class Gaussian mixture so that
neighbours are structured as in a trained model's feature space. Both modes run in this process,
one torch thread, alternately, ``--repeats`` times; the figure is the median per 1,024 queries and
the ratio winnow / reference. Both must give the same votes (checked). Not a test.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from winnow.tasks.scorers.neighbors import knn_votes  # noqa: E402


def reference_votes(query: torch.Tensor, reference: torch.Tensor, labels: np.ndarray, num_classes: int,
                    k: int) -> np.ndarray:
    """The vote as written before: blocks of 1,024 queries, ``topk`` over every reference row."""
    centre = reference.mean(0, keepdim=True)
    rn = torch.nn.functional.normalize(reference - centre, dim=1)
    lab = torch.as_tensor(labels)
    votes = torch.ones(len(query), num_classes, dtype=torch.float64)
    for start in range(0, len(query), 1024):
        sim = torch.nn.functional.normalize(query[start:start + 1024] - centre, dim=1) @ rn.T
        top, idx = sim.topk(k, dim=1)
        votes[start:start + 1024].scatter_add_(1, lab[idx], (1.0 + top.double()) / 2.0)
    return (votes / votes.sum(1, keepdim=True)).numpy()


def mixture(n: int, dim: int, classes: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    means = rng.normal(size=(classes, dim)) * 0.5
    y = rng.integers(0, classes, n)
    return torch.as_tensor((means[y] + rng.normal(size=(n, dim))).astype(np.float32)), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=65_536)
    parser.add_argument("--references", type=int, nargs="+", default=[4_000, 8_192, 32_768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"{args.queries} queries, 128-d, k = {args.k}, one torch thread; ms per 1,024 queries, median of "
          f"{args.repeats}")
    print("| reference rows | reference (topk, 1,024 at a time) | winnow | ratio | same votes |")
    print("|---|---|---|---|---|")
    for r in args.references:
        query, _ = mixture(args.queries, 128, 10, rng)
        reference, labels = mixture(r, 128, 10, rng)
        times = {"reference": [], "winnow": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            want = reference_votes(query, reference, labels, 10, args.k)
            times["reference"].append(time.perf_counter() - t)
            t = time.perf_counter()
            got = knn_votes(query, reference, labels, 10, k=args.k)
            times["winnow"].append(time.perf_counter() - t)
        same = np.allclose(got, want, rtol=0, atol=1e-9)
        ref_ms, ours_ms = (float(np.median(times[m])) * 1000 * 1024 / args.queries for m in ("reference", "winnow"))
        print(f"| {r:,} | {ref_ms:.1f} | {ours_ms:.1f} | {ours_ms / ref_ms:.2f}× | {'yes' if same else 'NO'} |",
              flush=True)


if __name__ == "__main__":
    main()
