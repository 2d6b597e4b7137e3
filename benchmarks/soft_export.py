"""What ``winnow export --relabel soft`` is worth to a team that trains on its own data (issue 14).

The default remedy (``soft-all``; before it ``relabel-soft``) is measured inside graded runs
(``remedies_eval.py``). A real team gets no retraining from an audit of its own labels: it gets
the exported file. This script walks that path as a user would, with the truth kept outside
winnow:

1. a benchmark cell's training rows (``real_noise.load_setting``: digits / Fashion-MNIST with
   injected noise, CIFAR-10N with human labels) are written as the user's Parquet file (``id``,
   ``label`` = the noisy label, ``image`` = the pixels; nothing else);
2. ``winnow run --dataset parquet --path FILE`` audits it (real-label mode: every row, out of
   sample, default scorers and estimator), in a subprocess with its own WINNOW_HOME;
3. ``winnow export RUN --relabel soft`` writes the file back with ``label``,
   ``winnow_provenance`` and ``winnow_soft_label``;
4. the setting's training recipe (``real_noise.recipe``) is trained on five versions of the
   exported rows — the given labels, the flagged rows dropped (what ``--drop flagged`` writes),
   the flagged rows relabelled to the suggestion (``--relabel flagged``), the soft labels of the
   flagged rows only (``relabel-soft``; the others one-hot), every row's soft label (``soft-all``,
   the column as written) — and on the true labels (the oracle), each scored on the cell's clean
   test images, which never reach winnow.

    .venv/bin/python benchmarks/soft_export.py run --out data/soft_export \\
        --settings digits:symmetric digits:instance-dependent fmnist:instance-dependent --seeds 0 1 2
    .venv/bin/python benchmarks/soft_export.py report --out data/soft_export

One JSON per cell under ``--out``; ``report`` prints the per-setting table (mean ± std over seeds,
fraction of the noisy→oracle gap) and the paired differences between the versions.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_noise import load_setting, recipe  # noqa: E402

#: the CLI, run by the interpreter running this script (the repo's .venv as the usage shows)
WINNOW = [sys.executable, "-m", "winnow.flows.cli"]
VARIANTS = ("given", "drop", "relabel", "soft", "soft-all", "oracle")


def write_user_file(path: Path, ids, x: np.ndarray, labels: np.ndarray, split=None) -> None:
    """The user's file: id, label and the flat pixels in [0, 1] with their shape in the metadata
    (and a ``split`` column of train/test when given)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
    cols = {"id": pa.array(np.asarray(ids).astype(str)), "label": pa.array(labels.astype(np.int64)),
            "image": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])}
    if split is not None:
        cols["split"] = pa.array(np.asarray(split).astype(str))
    meta = {"shape": ",".join(map(str, x.shape[1:])), "num_classes": "10"}
    pq.write_table(pa.table(cols).replace_schema_metadata(meta), path)


def cells_to_run(out: Path, settings, seeds):
    """(setting, seed, the cell's JSON path) for every cell not written before (a rerun resumes)."""
    out.mkdir(parents=True, exist_ok=True)
    for setting in settings:
        for seed in seeds:
            dest = out / f"{setting.replace(':', '__')}__s{seed}.json"
            if dest.exists():
                print(f"{dest.name}: done before, skipped", flush=True)
                continue
            yield setting, seed, dest


def winnow(home: Path, *args: str) -> str:
    """Run the CLI as a user does; returns stdout, raises with its stderr's tail when it fails."""
    env = {**os.environ, "WINNOW_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)  # the CLI starts its own temporary Prefect server
    done = subprocess.run([*WINNOW, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"winnow {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def audit_and_export(home: Path, src: Path, dest: Path, model: str, seed: int, epochs: int) -> str:
    winnow(home, "run", "--dataset", "parquet", "--path", str(src), "--model", model, "--seed", str(seed),
           "--epochs", str(epochs))
    query = "SELECT run_id FROM runs WHERE mode = 'real' ORDER BY created_at DESC LIMIT 1"
    run_id = winnow(home, "sql", query, "--format", "csv").split()[-1]
    return winnow(home, "export", run_id, "--out", str(dest), "--relabel", "soft")


def read_export(dest: Path, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label written, every row's soft target (n, C), which rows were flagged), in ``ids`` order.
    A flagged row is one whose provenance says it trains on its suggestion alone."""
    import pyarrow.parquet as pq

    t = pq.read_table(dest).to_pandas().set_index("id").loc[np.asarray(ids).astype(str)]
    label = t["label"].to_numpy(np.int64).copy()
    targets = np.eye(10, dtype=np.float32)[label]
    soft = t["winnow_soft_label"].to_numpy(object)
    has = np.array([s is not None for s in soft])
    if has.any():
        targets[has] = np.stack(soft[has]).astype(np.float32)
    flagged = t["winnow_provenance"].str.startswith("soft target").to_numpy()
    return label, targets, flagged


def run_cell(setting: str, seed: int, limit: int, work: Path) -> dict:
    import torch

    from winnow.tasks.models.nets import build_model
    from winnow.tasks.models.training import accuracy, train_model

    kind, x, y_given, y_true, ids, tx, ty = load_setting(setting, seed, limit)
    cfg = recipe(setting, kind, seed)
    src, dest, home = work / "user.parquet", work / "cleaned.parquet", work / "home"
    write_user_file(src, ids, x, y_given)
    t0 = time.perf_counter()
    printed = audit_and_export(home, src, dest, kind, seed, cfg.epochs)
    audit_s = time.perf_counter() - t0
    label, targets, flagged = read_export(dest, ids)

    x, tx = torch.as_tensor(x), torch.as_tensor(tx)
    factory = lambda: build_model(kind, tuple(x.shape[1:]), 10)  # noqa: E731

    def fit(rows, y):
        model = train_model(factory, x[torch.as_tensor(rows)], torch.as_tensor(y), cfg, device=torch.device("cpu"),
                            keep_checkpoints=False).model
        return accuracy(model, tx, torch.as_tensor(ty))

    everything = np.arange(len(x))
    kept = np.flatnonzero(~flagged)
    flagged_only = np.eye(10, dtype=np.float32)[label]
    flagged_only[flagged] = targets[flagged]
    acc = {"given": fit(everything, y_given), "drop": fit(kept, y_given[kept]), "relabel": fit(everything, label),
           "soft": fit(everything, flagged_only), "soft-all": fit(everything, targets), "oracle": fit(everything, y_true)}
    wrong = y_given != y_true
    return {"setting": setting, "seed": seed, "n": int(len(x)), "wrong": int(wrong.sum()),
            "flagged": int(flagged.sum()), "flagged_wrong": int((flagged & wrong).sum()),
            "soft_argmax_true": float((targets[flagged].argmax(1) == y_true[flagged]).mean()) if flagged.any() else 0.0,
            "audit_and_export_s": round(audit_s, 1), "export": printed.strip(), "accuracy": acc}


def cmd_run(args) -> None:
    for setting, seed, dest in cells_to_run(Path(args.out), args.settings, args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            cell = run_cell(setting, seed, args.limit, Path(tmp))
        dest.write_text(json.dumps(cell, indent=1))
        a = cell["accuracy"]
        print(f"{setting} s{seed}: flagged {cell['flagged']} ({cell['flagged_wrong']} wrong of {cell['wrong']}); "
              + " ".join(f"{v} {a[v]:.4f}" for v in VARIANTS) + f"; audit+export {cell['audit_and_export_s']} s",
              flush=True)


def _ms(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}"


def paired(diffs) -> str:
    """Per-cell differences of two variants: mean ± standard error, and on how many cells ahead."""
    d = np.asarray(diffs, float)
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    return f"{d.mean():+.4f} ± {se:.4f} (s.e.), ahead on {(d > 0).sum()} of {len(d)}"


def cmd_report(args) -> None:
    cells = defaultdict(list)
    for js in sorted(Path(args.out).glob("*__s*.json")):
        cell = json.loads(js.read_text())
        cells[cell["setting"]].append(cell)
    print("| setting | seeds | flagged (wrong) / wrong | " + " | ".join(VARIANTS) + " | share of the gap: soft-all |"
          " soft | drop |")
    print("|---|---|---|" + "---|" * len(VARIANTS) + "---|---|---|")
    diffs = defaultdict(list)
    for setting, group in cells.items():
        acc = {v: [c["accuracy"][v] for c in group] for v in VARIANTS}
        gap = np.array(acc["oracle"]) - np.array(acc["given"])
        share = lambda v: (np.array(acc[v]) - np.array(acc["given"])).mean() / gap.mean()  # noqa: E731
        flags = f"{np.mean([c['flagged'] for c in group]):.0f} ({np.mean([c['flagged_wrong'] for c in group]):.0f}) " \
                f"/ {np.mean([c['wrong'] for c in group]):.0f}"
        print(f"| {setting} | {len(group)} | {flags} | " + " | ".join(_ms(acc[v]) for v in VARIANTS)
              + f" | {share('soft-all'):+.0%} | {share('soft'):+.0%} | {share('drop'):+.0%} |")
        for pair in (("soft-all", "given"), ("soft-all", "drop"), ("soft-all", "relabel"), ("soft-all", "soft"),
                     ("soft", "given"), ("soft", "drop"), ("soft", "relabel")):
            diffs[pair] += list(np.array(acc[pair[0]]) - np.array(acc[pair[1]]))
    for (a, b), d in diffs.items():
        print(f"\n{a} − {b}: {paired(d)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="audit, export and retrain each cell")
    run.add_argument("--out", required=True)
    run.add_argument("--settings", nargs="+", default=["digits:symmetric", "digits:instance-dependent",
                                                       "fmnist:instance-dependent"])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument("--limit", type=int, default=3000, help="training rows (Fashion-MNIST, CIFAR-10N)")
    rep = sub.add_parser("report", help="the per-setting table")
    rep.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
