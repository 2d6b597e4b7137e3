"""Detectors, noise-count estimates and remedies on real (CIFAR-10N) and hard synthetic noise.

Two steps, so that the expensive part runs once and the analysis can be redone in seconds:

``run`` — for every cell (setting × seed) train the audited recipe on the noisy labels, compute
every candidate score, the peers (cleanlab's ``find_label_issues`` and label-quality score on the
same out-of-sample probabilities), the noise-count estimates and, with ``--remedies``, the test
accuracy of each remedy; one ``<cell>.npz`` + ``<cell>.json`` per cell in ``--out`` (a finished
cell is skipped on a rerun).

``analyse`` — read every cell and print mean ± std tables: detection (AUROC, P@k with k = the
true number of wrong labels), the recommended detector chosen leave-one-data-set-out, the k error
of each noise-count estimator, and the fraction of the noisy → oracle gap each remedy recovers.

Settings (``--settings``):

* ``c10n-cnn:<label set>`` — CIFAR-10N dev file (``tasks/data/cifar10n.py``), a seeded subset of
  ``--limit`` training images, the small CNN; truth = the human label differs from CIFAR-10's.
* ``c10n-emb:<label set>`` — the same audited subset as 128-d embeddings from a CNN trained on
  the *other* training images of the file with the same human label set (no clean labels), and
  an MLP on them (the "user embeddings" case).
* ``fmnist:<noise>`` / ``digits:<noise>`` — Fashion-MNIST (MLP, ``--limit`` training images) or
  digits with 20% injected noise: ``symmetric``, ``class-pair``, ``instance-dependent``.

Usage::

    .venv/bin/python benchmarks/real_noise.py run --out data/real_noise --seeds 0 1 2 --remedies
    .venv/bin/python benchmarks/real_noise.py analyse --out data/real_noise
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from winnow.tasks import noise_rate, remedies
from winnow.tasks.metrics import detection_metrics
from winnow.tasks.models.nets import build_model
from winnow.tasks.models.training import accuracy, predict_logits, train_model
from winnow.tasks.scorers import TrainingContext, get_scorer
from winnow.tasks.scorers.dynamics import area_under_margin
from winnow.tasks.scorers.ensemble import rank_average
from winnow.tasks.scorers.neighbors import label_disagreement, neighbour_votes, out_of_sample_views
from winnow.tasks.stages import default_config

DEFAULT_SETTINGS = [
    "c10n-cnn:random_label1", "c10n-cnn:aggre_label", "c10n-cnn:worse_label",
    "c10n-emb:random_label1", "c10n-emb:aggre_label", "c10n-emb:worse_label",
    "fmnist:instance-dependent", "fmnist:symmetric", "fmnist:class-pair",
    "digits:instance-dependent", "digits:symmetric", "digits:class-pair",
]
#: registered scorers computed in every cell (the others are built from the cached pieces)
SCORERS = ["loss", "loss-mean", "aum", "margin", "confident", "knn", "knn:space=penultimate", "knn-consensus"]
PEERS = ["cleanlab-issues", "cleanlab-quality"]
#: the headline table's detector: `knn-aum`, the default when these cells were run (the default is now
#: `knn-aum-lf`, measured on the detection grid by benchmarks/detection_views.py labelfree)
RECOMMENDED = "knn-aum"


# ---------------------------------------------------------------- data per setting


def _cifar(label_set: str, limit: int, seed: int):
    from winnow.tasks.data.cifar10n import load_cifar10n

    full = load_cifar10n(label_set=label_set)
    train_rows = np.flatnonzero(full.split == "train")
    audited = np.sort(np.random.default_rng(seed).choice(train_rows, size=min(limit, len(train_rows)), replace=False))
    rest = np.setdiff1d(train_rows, audited)
    test = np.flatnonzero(full.split == "test")
    clean = full.meta["clean_label"]
    return full, audited, rest, test, clean


def _embed(full, rest, rows_list, seed: int) -> list[np.ndarray]:
    """Train the CNN on ``rest`` (human labels) and return standardised penultimate features."""
    from winnow.tasks.scorers.gradients import head_features

    factory = lambda: build_model("cnn", full.x.shape[1:], 10)  # noqa: E731
    cfg = default_config("cifar10n", "cnn", seed=seed + 500)
    fit = np.sort(np.random.default_rng(seed + 500).choice(rest, size=min(len(rest), len(rows_list[0])), replace=False))
    encoder = train_model(factory, full.x[fit], full.label[fit], cfg, device=torch.device("cpu"),
                          keep_checkpoints=False).model
    with torch.no_grad():
        feats = [head_features(encoder, torch.as_tensor(full.x[r]))[0].numpy() for r in rows_list]
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    return [((f - mu) / sd).astype(np.float32) for f in feats]


def _synthetic(dataset: str, kind: str, limit: int, seed: int, rate: float = 0.2):
    from winnow.tasks.data import noise
    from winnow.tasks.data.sources import load_source
    from winnow.tasks.stages import clean_model_probs

    ds = load_source(dataset, limit=limit if dataset == "fashion-mnist" else None)
    tr = ds.split == "train"
    x, y = ds.x[tr], ds.label[tr]
    if kind == "symmetric":
        noisy = noise.symmetric(y, 10, rate, seed)
    elif kind == "class-pair":
        noisy = noise.class_pair(y, 10, rate, seed, noise.confusable_partners(x, y, 10))
    elif kind == "instance-dependent":
        noisy = noise.instance_dependent(y, 10, rate, seed, clean_model_probs(x, y, 10, seed))
    else:
        raise ValueError(f"unknown noise {kind!r}")
    return x, noisy, y, ds.sample_id[tr], ds.x[~tr], ds.label[~tr]


def load_setting(setting: str, seed: int, limit: int, embedded: tuple | None = None):
    """Returns (model kind, x, given labels, true labels, ids, test x, test labels).

    ``embedded``: (x, test x) of a ``c10n-emb`` setting saved by an earlier run (skips the encoder)."""
    family, _, variant = setting.partition(":")
    if family in ("c10n-cnn", "c10n-emb"):
        full, audited, rest, test, clean = _cifar(variant, limit, seed)
        y_given, y_true = full.label[audited], clean[audited]
        if family == "c10n-cnn":
            return "cnn", full.x[audited], y_given, y_true, full.sample_id[audited], full.x[test], full.label[test]
        fa, ft = embedded if embedded is not None else _embed(full, rest, [audited, test], seed)
        return "mlp", fa, y_given, y_true, full.sample_id[audited], ft, full.label[test]
    if family in ("fmnist", "digits"):
        x, noisy, y, ids, tx, ty = _synthetic("fashion-mnist" if family == "fmnist" else "digits", variant, limit, seed)
        return "mlp", x, noisy, y, ids, tx, ty
    raise ValueError(f"unknown setting {setting!r}")


# ---------------------------------------------------------------- one cell


def recipe(setting: str, model_kind: str, seed: int):
    """The audit's training recipe for the setting's data set (``stages.default_config``)."""
    family = setting.split(":")[0]
    dataset = {"digits": "digits", "fmnist": "fashion-mnist"}.get(family, "cifar10n")
    return default_config(dataset, model_kind, seed=seed)


def _train_acc(factory, x, y, cfg, tx, ty, rows=None) -> float:
    xs, ys = (x, y) if rows is None else (x[rows], y)
    model = train_model(factory, xs, ys, cfg, device=torch.device("cpu"), keep_checkpoints=False).model
    return accuracy(model, tx, ty)


def run_cell(setting: str, seed: int, limit: int, with_remedies: bool, kfold: int) -> tuple[dict, dict]:
    from winnow.tasks.protocols import cleanlab_scores

    t_load = time.perf_counter()
    model_kind, x, y_given, y_true, ids, tx, ty = load_setting(setting, seed, limit)
    t_load = time.perf_counter() - t_load
    x, tx = torch.as_tensor(x), torch.as_tensor(tx)
    flipped = y_given != y_true
    family = setting.split(":")[0]
    cfg = recipe(setting, model_kind, seed)
    factory = lambda: build_model(model_kind, tuple(x.shape[1:]), 10)  # noqa: E731
    t0 = time.perf_counter()
    result = train_model(factory, x, y_given, cfg, device=torch.device("cpu"))
    train_seconds = time.perf_counter() - t0
    ctx = TrainingContext(x, torch.as_tensor(y_given), 10, factory, result.checkpoints, cfg, ids, seed=seed,
                          kfold=kfold, device=torch.device("cpu"))
    info = {"setting": setting, "seed": seed, "n": int(len(y_given)), "wrong": int(flipped.sum()), "model": model_kind,
            "test_acc_noisy": accuracy(result.model, tx, ty), "train_seconds": train_seconds, "load_seconds": t_load,
            "seconds": {}, "counts": {}}
    arrays = {"flipped": flipped, "y_given": y_given}
    if family == "c10n-emb":  # the encoder's output, so the remedies step need not retrain it
        arrays["emb_x"], arrays["emb_test_x"] = x.numpy(), tx.numpy()
    t0 = time.perf_counter()
    probs, votes = out_of_sample_views(ctx)
    info["oos_seconds"] = time.perf_counter() - t0
    arrays["oos_probs"], arrays["oos_votes"] = probs, votes
    for spec in SCORERS:
        name, *opts = spec.split(":")
        options = dict(o.split("=", 1) for o in opts)
        t0 = time.perf_counter()
        arrays[f"score/{spec}"] = get_scorer(name, **options)(ctx)
        info["seconds"][spec] = time.perf_counter() - t0
    for peer in PEERS:
        t0 = time.perf_counter()
        arrays[f"score/{peer}"] = cleanlab_scores(y_given, probs, peer.removeprefix("cleanlab-"))
        info["seconds"][peer] = time.perf_counter() - t0
    arrays["aum"] = area_under_margin(ctx.checkpoint_logits(), ctx.y)
    arrays["pen_votes"] = neighbour_votes(ctx, "penultimate")
    for method in noise_rate.ESTIMATORS:
        info["counts"][method] = noise_rate.estimate(y_given, probs, method)
    from cleanlab.count import num_label_issues
    info["counts"]["cleanlab-num_label_issues"] = int(num_label_issues(y_given, probs))
    info["counts"]["cleanlab-find_label_issues"] = int((arrays["score/cleanlab-issues"] >= 1).sum())
    if with_remedies:
        info["remedies"] = run_remedies(ctx.x, factory, cfg, y_given, y_true, probs, arrays["score/knn-consensus"],
                                        tx, ty, seed, info["test_acc_noisy"])
    return info, arrays


def run_remedies(x, factory, cfg, y_given, y_true, probs, scores, tx, ty, seed, noisy_acc) -> dict:
    """Test accuracy of each remedy applied to the top-k̂ of ``scores`` (k̂ = the recommended
    noise-count estimate), beside the noisy and the oracle (true labels) models."""
    k = noise_rate.estimate(y_given, probs, "expected")  # the estimator with the smallest worst-case error
    flags = np.zeros(len(y_given), dtype=bool)
    flags[np.argsort(-scores, kind="stable")[:k]] = True
    out = {"k": int(k), "noisy": noisy_acc, "estimator": "expected"}
    t0 = time.perf_counter()
    out["oracle"] = _train_acc(factory, x, y_true, cfg, tx, ty)
    plans = {"prune": remedies.prune(y_given, flags), "relabel": remedies.relabel(y_given, flags, probs),
             "weight": remedies.weight(y_given, flags, seed)}
    for name, plan in plans.items():
        out[name] = _train_acc(factory, x, plan.labels, cfg, tx, ty, rows=plan.rows)
    # semi: a model on the unflagged rows pseudo-labels the flagged ones
    keep = np.flatnonzero(~flags)
    inter = train_model(factory, x[keep], y_given[keep], cfg, device=torch.device("cpu"), keep_checkpoints=False).model
    inter_probs = torch.softmax(predict_logits(inter, x), 1).double().numpy()
    plan = remedies.pseudo_label_plan(y_given, flags, inter_probs)
    out["semi"] = _train_acc(factory, x, plan.labels, cfg, tx, ty, rows=plan.rows)
    # random pruning of the same k: the floor a detector must beat
    rnd = np.zeros(len(y_given), dtype=bool)
    rnd[np.random.default_rng(seed).choice(len(y_given), size=k, replace=False)] = True
    plan = remedies.prune(y_given, rnd)
    out["prune-random"] = _train_acc(factory, x, plan.labels, cfg, tx, ty, rows=plan.rows)
    out["seconds"] = time.perf_counter() - t0
    return out


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, through a temp file and a rename (no half-written cell)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.rename(path)


def write_npz(path: Path, compressed: bool = True, **arrays) -> None:
    """``arrays`` as ``path`` (ending ``.npz``), through a temp file and a rename."""
    tmp = path.with_name(path.name.removesuffix(".npz") + ".tmp.npz")
    (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
    tmp.rename(path)


def cmd_run(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for setting in args.settings:
        if setting.startswith("c10n"):
            from winnow.tasks.data.cifar10n import default_path
            if default_path() is None:
                print(f"# {setting}: skipped, the CIFAR-10N file is not here (set $WINNOW_CIFAR10N)", file=sys.stderr)
                continue
        for seed in args.seeds:
            name = f"{setting.replace(':', '__')}__s{seed}"
            if (out / f"{name}.json").exists() and not args.refresh:
                continue
            t0 = time.perf_counter()
            info, arrays = run_cell(setting, seed, args.limit if not setting.startswith("fmnist") else args.fmnist_limit,
                                    args.remedies, args.kfold)
            info["cell_seconds"] = time.perf_counter() - t0
            write_npz(out / f"{name}.npz", **arrays)
            write_json(out / f"{name}.json", info)
            print(f"# {name}: noisy acc {info['test_acc_noisy']:.3f}, {info['wrong']} wrong of {info['n']}, "
                  f"{info['cell_seconds']:.0f}s", file=sys.stderr, flush=True)
    return 0


def cmd_remedies(args) -> int:
    """Add remedy accuracies to finished cells (reads their stored probabilities and scores)."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    for setting in args.settings:
        for seed in args.seeds:
            name = f"{setting.replace(':', '__')}__s{seed}"
            js = out / f"{name}.json"
            if not js.exists():
                continue
            info = json.loads(js.read_text())
            if "remedies" in info and not args.refresh:
                continue
            arrays = np.load(out / f"{name}.npz")
            embedded = (arrays["emb_x"], arrays["emb_test_x"]) if "emb_x" in arrays.files else None
            limit = args.limit if not setting.startswith("fmnist") else args.fmnist_limit
            model_kind, x, y_given, y_true, _, tx, ty = load_setting(setting, seed, limit, embedded)
            if not np.array_equal(y_given, arrays["y_given"]):
                raise ValueError(f"{name}: reloaded labels differ from the stored cell (different --limit?)")
            cfg = recipe(setting, model_kind, seed)
            x, tx = torch.as_tensor(x), torch.as_tensor(tx)
            factory = lambda: build_model(model_kind, tuple(x.shape[1:]), 10)  # noqa: E731
            info["remedies"] = run_remedies(x, factory, cfg, y_given, y_true, arrays["oos_probs"],
                                            derived_scores(arrays)[args.detector], tx, ty, seed, info["test_acc_noisy"])
            info["remedies"]["detector"] = args.detector
            write_json(js, info)
            print(f"# {name}: remedies {info['remedies']['seconds']:.0f}s", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------- analysis


def _ms(values, fmt: str = ".3f") -> str:
    """``mean ± std`` (sample std; 0 for one value), as every table of these benchmarks prints it."""
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():{fmt}} ± {v.std(ddof=1) if len(v) > 1 else 0.0:{fmt}}"


def derived_scores(arrays) -> dict[str, np.ndarray]:
    """Every ranking of a cell: the stored scorers and peers, and combinations of stored pieces."""
    y = arrays["y_given"]
    rows = np.arange(len(y))
    out = {k.removeprefix("score/"): arrays[k] for k in arrays.files if k.startswith("score/")}
    oos_sc = 1.0 - arrays["oos_probs"][rows, y]
    knn_oos = label_disagreement(arrays["oos_votes"], y)
    knn_pen = label_disagreement(arrays["pen_votes"], y)
    aum = -arrays["aum"]
    out["oos+knn"] = rank_average([oos_sc, knn_oos])
    out["aum+knn"] = rank_average([aum, knn_oos])
    out["aum+oos"] = rank_average([aum, oos_sc])
    out["knn-aum"] = rank_average([aum, knn_pen])  # = the registered `knn-aum` scorer
    out["aum+oos+knn+knn-pen"] = rank_average([aum, oos_sc, knn_oos, knn_pen])
    loss = arrays["score/loss"]
    out["loss+knn-pen"] = rank_average([loss, knn_pen])
    out["loss+knn"] = rank_average([loss, knn_oos])
    out["loss+oos+knn-pen"] = rank_average([loss, oos_sc, knn_pen])
    out["knn-aum-loss"] = rank_average([loss, aum, knn_pen])  # = the registered `knn-aum-loss` scorer
    # product of probabilities: the label is wrong for the fold model AND for its neighbours
    out["oos*knn"] = 1.0 - arrays["oos_probs"][rows, y] * arrays["oos_votes"][rows, y]
    return out


def load_cells(out: Path):
    cells = []
    for js in sorted(out.glob("*.json")):
        info = json.loads(js.read_text())
        arrays = np.load(js.with_suffix(".npz"))
        cells.append((info, arrays))
    return cells


def cmd_analyse(args) -> int:
    cells = load_cells(Path(args.out))
    if not cells:
        print(f"no cells in {args.out}", file=sys.stderr)
        return 1
    metrics = defaultdict(lambda: defaultdict(list))  # setting -> ranker -> [(auroc, p@k)]
    counts = defaultdict(lambda: defaultdict(list))
    acc = defaultdict(list)
    rem = defaultdict(lambda: defaultdict(list))
    secs = defaultdict(list)
    for info, arrays in cells:
        s = info["setting"]
        flipped = arrays["flipped"]
        k = int(flipped.sum())
        acc[s].append(info["test_acc_noisy"])
        secs[s].append((info["train_seconds"], info["oos_seconds"]))
        for name, sc in derived_scores(arrays).items():
            m = detection_metrics(sc, flipped, k)
            metrics[s][name].append((m["auroc"], m["precision_at_k"]))
        for method, c in info["counts"].items():
            counts[s][method].append((c - k) / k)
        for r, v in info.get("remedies", {}).items():
            if r in ("k", "noisy", "oracle", "seconds") or not isinstance(v, float):
                continue
            rem[s][r].append(remedies.gap_recovered(info["remedies"]["noisy"], v, info["remedies"]["oracle"]))
        if "remedies" in info:
            rem[s]["_acc"].append({r: v for r, v in info["remedies"].items() if isinstance(v, float)})
    settings = list(metrics)
    rankers = list(next(iter(metrics.values())))
    print("## Detection: AUROC / P@k (k = true number of wrong labels), mean ± std over seeds\n")
    for s in settings:
        n_seeds = len(acc[s])
        tr, oo = np.mean(secs[s], axis=0)
        print(f"### {s}  ({n_seeds} seeds, noisy-model test acc {_ms(acc[s])}, train {tr:.0f}s, K-fold {oo:.0f}s)")
        print("| ranker | AUROC | P@k |\n|---|---|---|")
        for r in sorted(rankers, key=lambda r: -np.mean([a for a, _ in metrics[s][r]])):
            a = [v[0] for v in metrics[s][r]]
            p = [v[1] for v in metrics[s][r]]
            print(f"| `{r}` | {_ms(a)} | {_ms(p)} |")
        print()
    print("## Headline: the recommended detector beside the peers (AUROC / P@k, mean ± std over seeds)\n")
    head = [RECOMMENDED, "knn-consensus", "loss", "cleanlab-quality", "cleanlab-issues"]
    print("| setting | noisy acc | " + " | ".join(f"`{r}`" for r in head)
          + " | Δ vs best of loss/cleanlab (AUROC, P@k) |\n|---|---|" + "---|" * (len(head) + 1))
    for s in settings:
        mean = {r: (np.mean([a for a, _ in metrics[s][r]]), np.mean([p for _, p in metrics[s][r]])) for r in head}
        cells_txt = [f"{_ms([a for a, _ in metrics[s][r]])} / {_ms([p for _, p in metrics[s][r]])}" for r in head]
        peers = ["loss", "cleanlab-quality", "cleanlab-issues"]
        da = mean[RECOMMENDED][0] - max(mean[r][0] for r in peers)
        dp = mean[RECOMMENDED][1] - max(mean[r][1] for r in peers)
        print(f"| {s} | {np.mean(acc[s]):.3f} | " + " | ".join(cells_txt) + f" | {da:+.3f}, {dp:+.3f} |")
    print()
    # leave-one-data-set-out choice (data set = setting family + data: c10n-cnn, c10n-emb, fmnist, digits)
    family = {s: s.split(":")[0] for s in settings}
    per_setting = {s: {r: np.mean([a for a, _ in metrics[s][r]]) + np.mean([p for _, p in metrics[s][r]])
                       for r in rankers} for s in settings}
    candidates = [r for r in rankers if not r.startswith("cleanlab")]
    print("## Leave-one-data-set-out choice (criterion: mean over settings of AUROC + P@k)\n")
    print("| held out | picked on the others | its AUROC+P@k there | best there in hindsight |\n|---|---|---|---|")
    for held in sorted(set(family.values())):
        train = [s for s in settings if family[s] != held]
        test = [s for s in settings if family[s] == held]
        if not train:
            continue
        pick = max(candidates, key=lambda r: np.mean([per_setting[s][r] for s in train]))
        there = {r: np.mean([per_setting[s][r] for s in test]) for r in candidates}
        best = max(there, key=there.get)
        print(f"| {held} | `{pick}` | {there[pick]:.3f} | `{best}` {there[best]:.3f} |")
    print("\n## Cost: seconds per cell (mean), one CPU thread on a shared machine\n")
    print("| setting | training | K-fold (cleanlab, confident, knn-consensus) | knn-aum on top of training | ratio |\n"
          "|---|---|---|---|---|")
    for s in settings:
        tr = np.mean([i["train_seconds"] for i, _ in cells if i["setting"] == s])
        oo = np.mean([i["oos_seconds"] for i, _ in cells if i["setting"] == s])
        # knn-aum = the checkpoint logits (paid by `loss`, the first scorer) + AUM + the penultimate vote
        ka = np.mean([i["seconds"]["loss"] + i["seconds"]["aum"] + i["seconds"]["knn:space=penultimate"]
                      for i, _ in cells if i["setting"] == s])
        print(f"| {s} | {tr:.0f} | {oo:.0f} | {ka:.1f} | {ka / tr:.2f}× |")
    print("\n## Hard clean vs. wrong: AUROC of each view among the 30% of samples with the highest "
          "training loss (the clean hard samples and most wrong labels both live there)\n")
    views = ["loss", "cleanlab-quality", "aum", "knn", "knn:space=penultimate", "knn-consensus"]
    print("| setting | " + " | ".join(f"`{v}`" for v in views) + " |\n|---|" + "---|" * len(views))
    for s in settings:
        vals = defaultdict(list)
        for info, arrays in cells:
            if info["setting"] != s:
                continue
            scores = derived_scores(arrays)
            hard = scores["loss"] >= np.quantile(scores["loss"], 0.7)
            for v in views:
                vals[v].append(detection_metrics(scores[v][hard], arrays["flipped"][hard], 1)["auroc"])
        print(f"| {s} | " + " | ".join(_ms(vals[v]) for v in views) + " |")
    print("\n## Noise-count estimates: relative error (k̂ − k) / k, mean ± std over seeds\n")
    methods = list(next(iter(counts.values())))
    print("| setting | " + " | ".join(f"`{m}`" for m in methods) + " |\n|---|" + "---|" * len(methods))
    for s in settings:
        print(f"| {s} | " + " | ".join(f"{np.mean(counts[s][m]):+.0%} ± {np.std(counts[s][m]):.0%}"
                                       for m in methods) + " |")
    if rem:
        print("\n## Remedies on the top k̂ of the recommended detector (k̂ = the noise-count estimate): test accuracy "
              "mean ± std, (fraction of the noisy → oracle gap recovered, from the means)\n")
        names = ["prune", "relabel", "weight", "semi", "prune-random"]
        print("| setting | noisy acc | oracle acc | " + " | ".join(names) + " |\n|---|---|---|" + "---|" * len(names))
        for s in settings:
            if s not in rem:
                continue
            accs = rem[s]["_acc"]
            # the gap fraction of the seed means (a per-seed fraction explodes where a seed's gap is ~0)
            noisy_m, oracle_m = np.mean([r["noisy"] for r in accs]), np.mean([r["oracle"] for r in accs])
            cols = [f"{_ms([r[n] for r in accs])} ({remedies.gap_recovered(noisy_m, np.mean([r[n] for r in accs]), oracle_m):+.0%})"
                    for n in names]
            print(f"| {s} | {_ms([r['noisy'] for r in accs])} | {_ms([r['oracle'] for r in accs])} | "
                  + " | ".join(cols) + " |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", default="data/real_noise")
    r.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--limit", type=int, default=3000, help="CIFAR-10N audited training images")
    r.add_argument("--fmnist-limit", type=int, default=6000)
    r.add_argument("--kfold", type=int, default=3)
    r.add_argument("--remedies", action="store_true")
    r.add_argument("--refresh", action="store_true")
    r.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("remedies")
    m.add_argument("--out", default="data/real_noise")
    m.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    m.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    m.add_argument("--limit", type=int, default=3000)
    m.add_argument("--fmnist-limit", type=int, default=6000)
    m.add_argument("--detector", default="knn-aum", help="a ranker of the analysis (stored or derived)")
    m.add_argument("--refresh", action="store_true")
    m.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("analyse")
    a.add_argument("--out", default="data/real_noise")
    args = ap.parse_args(argv)
    return {"run": cmd_run, "remedies": cmd_remedies, "analyse": cmd_analyse}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
