"""Time per stage of a real-data audit (``winnow run --noise none``) on a team's own data, three forms:

- ``folder``: a folder of 32x32 RGB JPEGs in the ImageFolder layout, audited with the CNN;
- ``features``: the same images as a Parquet ``features`` column (flattened pixels), with the MLP;
- ``probs``: ``pred_probs`` for N rows x 10 classes (no training at all).

The images are CIFAR-10 with CIFAR-10N human labels (``random_label1``) from
``../shared/data/cifar10n-dev.parquet`` (12,000 images; horizontal flips make up the rest of
``--images``). The folder's labels are the human ones, so the script also reports how many flagged
samples disagree with CIFAR's own label (precision of the flags against the clean labels, which
never reach the audit).

    python benchmarks/user_data.py --images 20000 --epochs 4 --probs-rows 100000

Prints one markdown table per form (stage, seconds, cached) and the wall time; run it with
nothing else on the machine for comparable figures.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10n-dev.parquet"


def make_folder(root: Path, n: int, source: Path) -> tuple[dict, dict]:
    """Write n JPEGs under root/<class>/; returns {relative path: clean label} and the class names."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(source)
    names = table.schema.metadata[b"class_names"].decode().split(",")
    blobs = table.column("image").to_pylist()
    given = table.column("random_label1").to_numpy()
    clean = table.column("clean_label").to_numpy()
    truth = {}
    for i in range(n):
        j = i % len(blobs)
        img = Image.open(io.BytesIO(blobs[j])).convert("RGB")
        if i >= len(blobs):
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        rel = f"{names[given[j]]}/{i:06d}.jpg"
        (root / names[given[j]]).mkdir(parents=True, exist_ok=True)
        img.save(root / rel, quality=90)
        truth[rel] = names[clean[j]]
    return truth, names


def folder_to_features(root: Path, dest: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from winnow.tasks.data.images import load_image_folder

    ds = load_image_folder(root)
    flat = ds.x.reshape(len(ds), -1)
    pq.write_table(pa.table({"id": ds.sample_id.astype(str), "label": np.asarray(ds.class_names)[ds.label],
                             "features": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])}),
                   dest)


def make_probs(dest: Path, n: int, k: int = 10, noise: float = 0.1, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    given = y.copy()
    flip = rng.random(n) < noise
    given[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    pq.write_table(pa.table({"id": np.char.add("r", np.arange(n).astype(str)), "label": given,
                             "pred_probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), k)}), dest)


def timed_run(**kwargs) -> tuple[object, float]:
    from winnow.flows.audit import audit

    t0 = time.perf_counter()
    result = audit(**kwargs)
    return result, time.perf_counter() - t0


def table(title: str, result, wall: float) -> str:
    lines = [f"#### {title}", "", "| stage | seconds | cached |", "|---|---|---|"]
    for s in result.stages:
        lines.append(f"| {s['name']} | {s['seconds']:.1f} | {'yes' if s['cached'] else ''} |")
    lines.append(f"| **flow (wall, incl. Prefect)** | **{wall:.1f}** | |")
    est = result.estimate
    lines += ["", f"estimated wrong labels {est['estimated_wrong_labels']:,} of {est['samples']:,} "
                  f"({est['estimated_noise_rate']:.1%}); out-of-sample agreement {est['oos_accuracy']:.3f}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--probs-rows", type=int, default=100000)
    ap.add_argument("--forms", default="probs,folder,features")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="winnow-userdata-"))
    os.environ["WINNOW_HOME"] = str(home)
    from winnow.tasks.settings import configure_environment

    configure_environment()
    forms = args.forms.split(",")
    out = [f"machine: {os.cpu_count()} cores, torch threads {args.threads}; WINNOW_HOME {home}"]
    if "probs" in forms:
        p = home / "probs.parquet"
        make_probs(p, args.probs_rows)
        result, wall = timed_run(dataset="parquet", path=str(p))
        out.append(table(f"pred_probs: {args.probs_rows:,} rows x 10 classes", result, wall))
    if {"folder", "features"} & set(forms):
        if not SHARED.exists():
            print(f"{SHARED} not found: skipping the image forms", file=sys.stderr)
            forms = [f for f in forms if f == "probs"]
        else:
            root = home / "images"
            t0 = time.perf_counter()
            truth, names = make_folder(root, args.images, SHARED)
            out.append(f"wrote {args.images:,} JPEGs in {time.perf_counter() - t0:.1f}s")
    if "folder" in forms:
        result, wall = timed_run(dataset="images", path=str(root), model="cnn", epochs=args.epochs)
        flagged = result.flagged
        wrong = np.array([truth[s] != g for s, g in zip(flagged["sample_id"], flagged["given_class"])])
        out.append(table(f"image folder: {args.images:,} 32x32 RGB JPEGs, CNN, {args.epochs} epochs", result, wall))
        out.append(f"flags that disagree with CIFAR's clean label: {wrong.mean():.3f} of {len(flagged):,}")
    if "features" in forms:
        feats = home / "features.parquet"
        folder_to_features(root, feats)
        result, wall = timed_run(dataset="parquet", path=str(feats), model="mlp", epochs=args.epochs)
        out.append(table(f"features: the same {args.images:,} images as 3,072-d features, MLP, {args.epochs} epochs",
                         result, wall))
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
