"""Issue 14, detector half: which views of a training run separate wrong labels from clean hard
samples, and does any combination of them beat loss and cleanlab, chosen leave-one-data-set-out?

Two steps (the expensive one stores every piece, the analysis reruns in seconds):

``run`` — per cell (setting × seed, settings and data as in ``benchmarks/real_noise.py``) train the
audited recipe once and store the raw pieces every candidate view is built from:

* the training run: checkpoint logits (T, n, C), the final model's penultimate features, and
  for images its logits under test-time augmentations (flips and 2-pixel shifts);
* the K-fold pass (the same folds and seeds as the peers): every fold model's logits and
  penultimate features on *all* n samples (so out-of-sample probabilities, in-fold vs
  out-of-fold memorisation and neighbour votes with any k can be rebuilt);
* a *probe* run: the same recipe trained once more on the given labels with 10% extra flips
  injected (chosen where the audited run itself is least sure, flipped to its runner-up class:
  model-confusable, like human noise; no clean label is read). Its views, labelled by "was this
  flip injected", train a small logistic-regression combiner that is then applied to the
  audited run's views ("noise you inject is noise you can label").
* the peers: cleanlab's ``find_label_issues`` and label-quality score on the K-fold probabilities.

``analyse`` — every candidate ranking (single views, rank averages, the learned combiner) per
setting, the leave-one-data-set-out choice among the candidates whose cost is within 2× one
training run, and the headline table beside loss and both cleanlab figures.

Usage::

    .venv/bin/python benchmarks/detection_views.py run --out data/detection_views --seeds 0 1 2 \\
        --limit 4000 --settings c10n-cnn:random_label1 c10n-cnn:aggre_label c10n-cnn:worse_label
    .venv/bin/python benchmarks/detection_views.py analyse --out data/detection_views
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from winnow.tasks.data.cifar10n import default_path as cifar10n_path
from winnow.tasks.metrics import detection_metrics
from winnow.tasks.models.nets import build_model
from winnow.tasks.models.training import accuracy, predict_logits, train_model
from winnow.tasks.protocols import cleanlab_scores
from winnow.tasks.scorers import TrainingContext
from winnow.tasks.scorers.dynamics import area_under_margin, forgetting_counts
from winnow.tasks.scorers.ensemble import rank_average
from winnow.tasks.scorers.gradients import head_features
from winnow.tasks.scorers.neighbors import knn_votes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_noise import _ms, load_setting, recipe, write_json, write_npz  # noqa: E402  (same data and recipe as the real-noise benchmark)

PROBE_RATE = 0.10  # share of samples given an extra, injected flip in the probe run
CPU = torch.device("cpu")


# ---------------------------------------------------------------- pieces of one run


def augmentations(x: torch.Tensor) -> list[torch.Tensor]:
    """Horizontal flip and 2-pixel shifts (zero padded) of an image batch (n, C, H, W)."""
    h, w = x.shape[2:]
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = [(0, 0), (4, 4), (0, 4), (4, 0)]  # crop offsets into the padded image: moves of ±2 px
    out = [x.flip(3)]
    for dy, dx in shifts:
        crop = padded[:, :, dy:dy + h, dx:dx + w]
        out += [crop, crop.flip(3)]
    return out


def uses_tta(setting: str) -> bool:
    """Augmentations that keep the label: natural images only (not 8×8 digits or embeddings)."""
    return setting.split(":")[0] in ("c10n-cnn", "fmnist")


def run_views(model, ckpt_model_at, n_ckpt: int, x: torch.Tensor, tta: bool) -> dict[str, np.ndarray]:
    """The cheap views' raw material of one training run: checkpoint logits, penultimate features,
    test-time-augmentation logits."""
    out = {"ckpt_logits": torch.stack([predict_logits(ckpt_model_at(t), x) for t in range(n_ckpt)]).numpy()}
    with torch.no_grad():
        out["pen_feats"] = head_features(model, x)[0].float().numpy()
        if tta:
            shaped = x.reshape(len(x), *x.shape[1:]) if x.ndim == 4 else x.reshape(len(x), 1, 28, 28)
            out["tta_logits"] = np.stack([predict_logits(model, a.reshape(x.shape).contiguous()).numpy()
                                          for a in augmentations(shaped)])
    return out


def inject_probe_flips(ckpt_logits: np.ndarray, labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Labels with ``rate`` · n extra flips where the run is least sure of the given label.

    A sample is drawn with probability ∝ 1 − p̄(given) (p̄: softmax averaged over checkpoints) and
    flipped to its most probable *other* class — model-confusable flips, as people make them.

    Returns
    -------
    np.ndarray, shape (n,), int64 — the probe labels (differ from ``labels`` on the injected rows)
    """
    probs = torch.softmax(torch.as_tensor(ckpt_logits, dtype=torch.float64), -1).mean(0).numpy()
    rows = np.arange(len(labels))
    doubt = 1.0 - probs[rows, labels] + 1e-3
    m = int(round(rate * len(labels)))
    chosen = np.random.default_rng(seed + 7).choice(len(labels), size=m, replace=False, p=doubt / doubt.sum())
    other = probs.copy()
    other[rows, labels] = -1.0
    probe = labels.copy()
    probe[chosen] = other[chosen].argmax(1)
    return probe


def inject_agreed_flips(ckpt_logits: np.ndarray, labels: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Probe labels, version 2: flips only where the run *agrees* with the given label.

    Version 1 (:func:`inject_probe_flips`) drew where the run doubts the given label and flipped to
    its runner-up class, which is then often the run's own prediction: on CIFAR-10N, where many
    doubted labels are wrong, the injected label was frequently *right*, and the combiner learned
    that a low loss means "injected" (AUROC below 0.5). Here a sample is drawn only among those
    whose given label is the run's argmax (probability ∝ 1 − p̄(given): agreed but ambiguous) and
    flipped to its runner-up class, so the injected label is wrong unless the run was.

    Returns
    -------
    np.ndarray, shape (n,), int64
    """
    probs = torch.softmax(torch.as_tensor(ckpt_logits, dtype=torch.float64), -1).mean(0).numpy()
    rows = np.arange(len(labels))
    agreed = np.flatnonzero(probs.argmax(1) == labels)
    doubt = 1.0 - probs[agreed, labels[agreed]] + 1e-3
    m = min(int(round(rate * len(labels))), len(agreed))
    chosen = np.random.default_rng(seed + 7).choice(agreed, size=m, replace=False, p=doubt / doubt.sum())
    other = probs.copy()
    other[rows, labels] = -1.0
    probe = labels.copy()
    probe[chosen] = other[chosen].argmax(1)
    return probe


def reload_setting(setting: str, seed: int, limit: int, arrays):
    """:func:`load_setting` for a stored cell, its given labels checked against the cell's."""
    data = load_setting(setting, seed, limit)
    if not np.array_equal(data[2], arrays["y_given"]):
        raise ValueError(f"{setting} seed {seed}: reloaded labels differ from the stored cell (different --limit?)")
    return data


def run_probe2(setting: str, seed: int, limit: int, arrays) -> tuple[dict, dict]:
    """Train the version-2 probe run for a stored cell; returns (seconds, probe2 pieces)."""
    model_kind, x, y_given, _, ids, _, _ = reload_setting(setting, seed, limit, arrays)
    x = torch.as_tensor(x)
    cfg = recipe(setting, model_kind, seed)
    factory = lambda: build_model(model_kind, tuple(x.shape[1:]), 10)  # noqa: E731
    t0 = time.perf_counter()
    labels = inject_agreed_flips(arrays["ckpt_logits"], y_given, PROBE_RATE, seed)
    probe = train_model(factory, x, labels, replace(cfg, seed=cfg.seed + 77), device=CPU)
    pctx = TrainingContext(x, torch.as_tensor(labels), 10, factory, probe.checkpoints, cfg, ids, seed=seed, device=CPU)
    pieces = {"probe_labels": labels}
    pieces.update({f"probe_{k}": v for k, v in run_views(probe.model, pctx.model_at, len(probe.checkpoints), x,
                                                          uses_tta(setting)).items()})
    return {"probe2": time.perf_counter() - t0}, pieces


def run_labelfree(setting: str, seed: int, limit: int, arrays) -> tuple[dict, dict]:
    """The label-free views of a stored cell (``tasks/scorers/label_free.py``, the code `knn-aum-lf`
    runs): the cell's inputs are reloaded (labels checked against the cell), encoded without labels,
    probed and searched. Returns (seconds, pieces): ``lf_probe`` (the ridge probe's doubt) and
    ``lf_knn20`` (the k = 20 vote's disagreement in the label-free space)."""
    from winnow.tasks.scorers.label_free import label_free_views

    _, x, y_given, _, _, _, _ = reload_setting(setting, seed, limit, arrays)
    t0 = time.perf_counter()
    views = label_free_views(np.asarray(x), y_given, 10, seed=seed)
    return {"labelfree": time.perf_counter() - t0}, {"lf_probe": views["probe"], "lf_knn20": views["knn"]}


def _add_side_files(args, kind: str, run) -> int:
    """For every stored cell of ``args.settings`` × ``args.seeds`` without ``<cell>.<kind>.npz``
    (or with ``--refresh``): ``run(setting, seed, limit, arrays) -> (seconds, pieces)``, the pieces
    written there and the seconds added to the cell's record."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    for setting in args.settings:
        for seed in args.seeds:
            name = f"{setting.replace(':', '__')}__s{seed}"
            js, side = out / f"{name}.json", out / f"{name}.{kind}.npz"
            if not js.exists() or (side.exists() and not args.refresh):
                continue
            info = json.loads(js.read_text())
            secs, pieces = run(setting, seed, _limit(args, setting), np.load(out / f"{name}.npz"))
            write_npz(side, **pieces)
            info["seconds"].update(secs)
            write_json(js, info)
            print(f"# {name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in secs.items())
                  + f" (training was {info['seconds']['train']:.1f}s); load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr, flush=True)
    return 0


def cmd_probe2(args) -> int:
    """Add the version-2 probe run to stored cells (``<cell>.probe2.npz``)."""
    return _add_side_files(args, "probe2", run_probe2)


def cmd_labelfree(args) -> int:
    """Add the label-free views to stored cells (``<cell>.labelfree.npz``)."""
    return _add_side_files(args, "labelfree", run_labelfree)


def _limit(args, setting: str) -> int:
    return args.fmnist_limit.get(setting.split(":")[1], 6000) if setting.startswith("fmnist") else args.limit


def run_cell(setting: str, seed: int, limit: int, kfold: int) -> tuple[dict, dict]:
    t0 = time.perf_counter()
    model_kind, x, y_given, y_true, ids, tx, ty = load_setting(setting, seed, limit)
    info = {"setting": setting, "seed": seed, "load_seconds": time.perf_counter() - t0, "seconds": {}}
    x, tx = torch.as_tensor(x), torch.as_tensor(tx)
    cfg = recipe(setting, model_kind, seed)
    factory = lambda: build_model(model_kind, tuple(x.shape[1:]), 10)  # noqa: E731
    tta = uses_tta(setting)
    sec = info["seconds"]

    t0 = time.perf_counter()
    result = train_model(factory, x, y_given, cfg, device=CPU)
    sec["train"] = time.perf_counter() - t0
    ctx = TrainingContext(x, torch.as_tensor(y_given), 10, factory, result.checkpoints, cfg, ids, seed=seed,
                          kfold=kfold, device=CPU)
    info.update(n=int(len(y_given)), wrong=int((y_given != y_true).sum()), model=model_kind,
                test_acc_noisy=accuracy(result.model, tx, ty), epochs=len(result.checkpoints))
    arrays = {"flipped": y_given != y_true, "y_given": y_given}
    t0 = time.perf_counter()
    arrays.update(run_views(result.model, ctx.model_at, len(result.checkpoints), x, tta))
    sec["views"] = time.perf_counter() - t0

    # K-fold: the folds and seeds of TrainingContext.out_of_sample_probs / out_of_sample_views
    t0 = time.perf_counter()
    folds = ctx.folds()
    fold_id = np.zeros(len(y_given), dtype=np.int64)
    fold_logits, fold_feats = [], []
    for f, (fit, held) in enumerate(folds):
        fold_id[held] = f
        fcfg = replace(cfg, seed=cfg.seed + 1000 * (f + 1))
        m = ctx.train(x[fit], ctx.y[fit], fcfg, keep_checkpoints=False).model.eval()
        with torch.no_grad():
            feats, logits = head_features(m, x)
        fold_logits.append(logits.float().numpy())
        fold_feats.append(feats.float().numpy().astype(np.float16))
    arrays.update(fold_id=fold_id, fold_logits=np.stack(fold_logits), fold_feats=np.stack(fold_feats))
    probs = torch.softmax(torch.as_tensor(arrays["fold_logits"], dtype=torch.float64), -1).numpy()
    arrays["oos_probs"] = probs[fold_id, np.arange(len(y_given))]
    sec["kfold"] = time.perf_counter() - t0
    for peer in ("issues", "quality"):
        arrays[f"cleanlab-{peer}"] = cleanlab_scores(y_given, arrays["oos_probs"], peer)

    # probe run: injected flips on top of the given labels, same recipe, seed shifted
    t0 = time.perf_counter()
    probe_labels = inject_probe_flips(arrays["ckpt_logits"], y_given, PROBE_RATE, seed)
    probe = train_model(factory, x, probe_labels, replace(cfg, seed=cfg.seed + 77), device=CPU)
    pctx = TrainingContext(x, torch.as_tensor(probe_labels), 10, factory, probe.checkpoints, cfg, ids, seed=seed,
                           device=CPU)
    arrays["probe_labels"] = probe_labels
    arrays.update({f"probe_{k}": v for k, v in run_views(probe.model, pctx.model_at, len(probe.checkpoints), x,
                                                          tta).items()})
    sec["probe"] = time.perf_counter() - t0
    return info, arrays


def cmd_run(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for setting in args.settings:
        if setting.startswith("c10n") and cifar10n_path() is None:
            print(f"# {setting}: skipped, the CIFAR-10N file is not here (set $WINNOW_CIFAR10N)", file=sys.stderr)
            continue
        for seed in args.seeds:
            name = f"{setting.replace(':', '__')}__s{seed}"
            if (out / f"{name}.json").exists() and not args.refresh:
                continue
            t0 = time.perf_counter()
            info, arrays = run_cell(setting, seed, _limit(args, setting), args.kfold)
            info["cell_seconds"] = time.perf_counter() - t0
            info["load_average"] = [round(v, 2) for v in __import__("os").getloadavg()]
            write_npz(out / f"{name}.npz", **arrays)
            write_json(out / f"{name}.json", info)
            print(f"# {name}: noisy acc {info['test_acc_noisy']:.3f}, {info['wrong']} wrong of {info['n']}, "
                  f"{info['cell_seconds']:.0f}s {info['seconds']} load {info['load_average']}",
                  file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------- views (higher = more suspicious)


def _softmax(logits) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()


def _own(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probs[..., np.arange(len(labels)), labels]


def weighted_votes(feats: np.ndarray, labels: np.ndarray, k: int, trust: np.ndarray | None = None) -> np.ndarray:
    """k-NN label votes (self excluded) with each neighbour's vote multiplied by its ``trust``.

    Returns shape (n, C), rows sum to 1 (one pseudo-vote per class)."""
    f = torch.as_tensor(feats, dtype=torch.float32)
    f = F.normalize(f - f.mean(0, keepdim=True), dim=1)
    lab = torch.as_tensor(labels)
    w_n = torch.ones(len(f), dtype=torch.float64) if trust is None else torch.as_tensor(trust, dtype=torch.float64)
    votes = torch.ones(len(f), 10, dtype=torch.float64)
    for s in range(0, len(f), 2048):
        sim = f[s:s + 2048] @ f.T
        r = torch.arange(sim.shape[0])
        sim[r, r + s] = -np.inf
        top, idx = sim.topk(k, dim=1)
        votes[s:s + 2048].scatter_add_(1, lab[idx], (1.0 + top.double()) / 2.0 * w_n[idx])
    return (votes / votes.sum(1, keepdim=True)).numpy()


def cheap_views(pieces: dict, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Views from one training run (no K-fold), each shape (n,), higher = more suspicious."""
    rows = np.arange(len(labels))
    logits = pieces["ckpt_logits"]
    probs = _softmax(logits)
    own = _own(probs, labels)  # (T, n)
    v = {"loss": -np.log(own[-1] + 1e-12), "loss-mean": -np.log(own + 1e-12).mean(0),
         "aum": -area_under_margin(logits, labels)}
    forgot, learned = forgetting_counts(logits, labels)
    # never learned first, then by number of forgetting events (Toneva et al.)
    v["forgetting"] = forgot + (~learned) * (logits.shape[0] + 1)
    correct = probs.argmax(-1) == labels  # (T, n)
    # the epoch after which the given label is predicted for good (late = suspicious)
    stays = np.flip(np.cumprod(np.flip(correct, 0), 0), 0)
    v["learned-late"] = logits.shape[0] - stays.sum(0)
    feats = pieces["pen_feats"]
    for k in (5, 10, 20, 50):
        v[f"knn-pen{k}"] = 1.0 - weighted_votes(feats, labels, k)[rows, labels]
    v["knn-pen-multi"] = rank_average([v[f"knn-pen{k}"] for k in (5, 10, 20, 50)])
    # cleanliness-weighted vote (SimiFeat-like rounds): neighbours already suspected count less
    trust = 1.0 - rankdata(rank_average([v["aum"], v["knn-pen10"]])) / len(labels)
    for _ in range(2):
        votes = weighted_votes(feats, labels, 20, trust)
        v["knn-pen-trusted"] = 1.0 - votes[rows, labels]
        trust = 1.0 - rankdata(rank_average([v["aum"], v["knn-pen-trusted"]])) / len(labels)
    if "tta_logits" in pieces:
        tp = _softmax(pieces["tta_logits"])  # (A, n, C)
        all_p = np.concatenate([probs[-1:], tp])
        v["tta-loss"] = -np.log(_own(all_p, labels) + 1e-12).mean(0)
        v["tta-disagree"] = 1.0 - (all_p.argmax(-1) == labels).mean(0) + 1e-3 * v["tta-loss"]
    else:  # digits 8×8 and embeddings: no label-preserving augmentation, the plain views stand in
        v["tta-loss"] = v["loss"]
        v["tta-disagree"] = v["loss"]
    # within the given class (confident learning's per-class thresholds, as a ranking): a class
    # that is hard for every sample (cat) does not crowd the top of the list
    for name in ("loss", "aum", "tta-loss"):
        v[f"{name}-classnorm"] = rank_within_class(v[name], labels)
    return v


def rank_within_class(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each score's rank among the samples with the same given label, in (0, 1]. Shape (n,)."""
    out = np.zeros(len(scores))
    for c in np.unique(labels):
        rows = labels == c
        out[rows] = rankdata(scores[rows]) / rows.sum()
    return out


def kfold_views(arrays, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Views that need the K-fold models (cost: ~2× a training run on top of it)."""
    rows = np.arange(len(labels))
    fold_id = arrays["fold_id"]
    probs = _softmax(arrays["fold_logits"])  # (F, n, C)
    own = _own(probs, labels)  # (F, n)
    oos = own[fold_id, rows]
    in_fold = (own.sum(0) - oos) / max(1, len(own) - 1)
    v = {"oos": 1.0 - oos, "memorisation": in_fold - oos, "fold-spread": own.std(0) - oos}
    feats = arrays["fold_feats"].astype(np.float32)
    votes = np.zeros((len(labels), 10))
    for f in range(len(feats)):
        held, fit = fold_id == f, fold_id != f
        votes[held] = knn_votes(feats[f][held], feats[f][fit], labels[fit], 10, k=10)
    v["knn-oos"] = 1.0 - votes[rows, labels]
    return v


#: views given to the learned combiner (all from one run: no K-fold)
COMBINER_VIEWS = ("loss", "loss-mean", "aum", "forgetting", "learned-late", "knn-pen5", "knn-pen20", "knn-pen50",
                  "knn-pen-trusted", "tta-loss", "tta-disagree")


def _rank01(a: np.ndarray) -> np.ndarray:
    return rankdata(a) / len(a)


def learned_combiner(arrays, main: dict, views=COMBINER_VIEWS, probe_source=None) -> np.ndarray:
    """Logistic regression on the probe run's views (target: the flip was injected), applied to
    the audited run's views. Views enter as within-run ranks, so the probe's extra noise does not
    shift their scale."""
    from sklearn.linear_model import LogisticRegression

    src = arrays if probe_source is None else probe_source
    probe_labels = src["probe_labels"]
    pieces = {k.removeprefix("probe_"): src[k] for k in src.files if k.startswith("probe_") and k != "probe_labels"}
    probe = cheap_views(pieces, probe_labels)
    target = probe_labels != arrays["y_given"]
    xp = np.column_stack([_rank01(probe[v]) for v in views])
    xm = np.column_stack([_rank01(main[v]) for v in views])
    lr = LogisticRegression(C=1.0, max_iter=1000).fit(xp, target)
    return lr.decision_function(xm)


def candidates(arrays, probe2=None, labelfree=None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every ranking of a cell and its cost class: 'run' (one training + forward passes), 'probe'
    (one more training), 'kfold' (K-fold models, ~2× a training), 'peer'."""
    y = arrays["y_given"]
    main = cheap_views(arrays, y)
    out = dict(main)
    cost = {k: "run" for k in main}
    kv = kfold_views(arrays, y)
    out.update(kv)
    cost.update({k: "kfold" for k in kv})
    for peer in ("cleanlab-issues", "cleanlab-quality"):
        out[peer], cost[peer] = arrays[peer], "peer"

    def add(name, parts, c):
        out[name], cost[name] = rank_average([out[p] for p in parts]), c

    add("knn-aum", ["aum", "knn-pen10"], "run")  # the current default
    add("aum+knn-multi", ["aum", "knn-pen-multi"], "run")
    add("aum+knn-trusted", ["aum", "knn-pen-trusted"], "run")
    add("aum+knn-pen20", ["aum", "knn-pen20"], "run")
    add("aum+tta", ["aum", "tta-loss"], "run")
    add("aum+knn+tta", ["aum", "knn-pen10", "tta-loss"], "run")
    add("aum+knn-multi+tta", ["aum", "knn-pen-multi", "tta-loss"], "run")
    add("aum+knn-trusted+tta", ["aum", "knn-pen-trusted", "tta-loss"], "run")
    add("loss+knn-multi+tta", ["loss", "knn-pen-multi", "tta-loss"], "run")
    add("aum+knn+forgetting", ["aum", "knn-pen10", "forgetting"], "run")
    add("knn-aum-classnorm", ["aum-classnorm", "knn-pen10"], "run")
    add("knn-aum+tta-classnorm", ["aum-classnorm", "knn-pen10", "tta-loss-classnorm"], "run")
    add("aum+knn+oos", ["aum", "knn-pen10", "oos"], "kfold")
    add("aum+knn+memorisation", ["aum", "knn-pen10", "memorisation"], "kfold")
    add("knn-aum+knn-oos", ["aum", "knn-pen10", "knn-oos"], "kfold")
    out["learned"], cost["learned"] = learned_combiner(arrays, main), "probe"
    out["learned+knn-aum"], cost["learned+knn-aum"] = rank_average([out["learned"], out["knn-aum"]]), "probe"
    if labelfree is not None:  # features without labels + a linear fit: cheaper than one training
        out["lf-probe"], cost["lf-probe"] = labelfree["lf_probe"], "run"
        out["lf-knn20"], cost["lf-knn20"] = labelfree["lf_knn20"], "run"
        add("knn-aum+lf-probe", ["knn-aum", "lf-probe"], "run")
        add("aum+knn+lf-probe", ["aum", "knn-pen10", "lf-probe"], "run")
        add("loss+lf-probe", ["loss", "lf-probe"], "run")
        add("aum+lf-probe", ["aum", "lf-probe"], "run")
        add("knn-aum+lf-probe+lf-knn", ["aum", "knn-pen10", "lf-probe", "lf-knn20"], "run")
    if probe2 is not None:
        out["learned2"], cost["learned2"] = learned_combiner(arrays, main, probe_source=probe2), "probe"
        out["learned2+knn-aum"], cost["learned2+knn-aum"] = rank_average([out["learned2"], out["knn-aum"]]), "probe"
    return out, cost


# ---------------------------------------------------------------- analysis


def load_cells(out: Path):
    """Per stored cell: (info, arrays, side files {'probe2': …, 'labelfree': …} where present)."""
    for js in sorted(out.glob("*.json")):
        sides = {kind: js.with_name(f"{js.stem}.{kind}.npz") for kind in ("probe2", "labelfree")}
        yield (json.loads(js.read_text()), np.load(js.with_suffix(".npz")),
               {kind: np.load(f) for kind, f in sides.items() if f.exists()})


def family_of(setting: str) -> str:
    return setting.split(":")[0]


def cached_candidates(out: Path, info: dict, arrays, sides: dict) -> tuple[dict, dict]:
    """:func:`candidates` of a cell, kept in ``<cell>.scores.npz`` (recomputed when this script,
    the cell or one of its side files is newer), so a rerun of the analysis takes seconds."""
    name = f"{info['setting'].replace(':', '__')}__s{info['seed']}"
    cache = out / f"{name}.scores.npz"
    inputs = [out / f"{name}.npz", out / f"{name}.probe2.npz", out / f"{name}.labelfree.npz", Path(__file__)]
    newest = max(p.stat().st_mtime for p in inputs if p.exists())
    if cache.exists() and cache.stat().st_mtime > newest:
        with np.load(cache) as z:
            cost = json.loads(str(z["__cost__"]))
            return {k: z[k] for k in z.files if k != "__cost__"}, cost
    scores, cost = candidates(arrays, sides.get("probe2"), sides.get("labelfree"))
    write_npz(cache, compressed=False, __cost__=json.dumps(cost), **scores)
    return scores, cost


def cmd_analyse(args) -> int:
    metrics = defaultdict(lambda: defaultdict(list))  # setting -> ranker -> [(auroc, p@k)]
    info_by = defaultdict(list)
    cost = {}
    for info, arrays, sides in load_cells(Path(args.out)):
        s = info["setting"]
        info_by[s].append(info)
        flipped = arrays["flipped"]
        scores, c = cached_candidates(Path(args.out), info, arrays, sides)
        cost.update(c)
        for name, sc in scores.items():
            m = detection_metrics(sc, flipped, int(flipped.sum()))
            metrics[s][name].append((m["auroc"], m["precision_at_k"]))
    if not metrics:
        print(f"no cells in {args.out}", file=sys.stderr)
        return 1
    settings = sorted(metrics)
    # a ranker counts only where every cell has it (learned2 needs the probe2 step)
    rankers = [r for r in cost if all(len(metrics[s][r]) == len(info_by[s]) for s in settings)]

    def mean(s, r, i):
        return float(np.mean([v[i] for v in metrics[s][r]]))

    print("## Every candidate: AUROC / P@k (k = true number of wrong labels), mean ± std over seeds\n")
    print("| ranker | cost | " + " | ".join(settings) + " |\n|---|---|" + "---|" * len(settings))
    for r in rankers:
        print(f"| `{r}` | {cost[r]} | " + " | ".join(
            f"{mean(s, r, 0):.3f} / {mean(s, r, 1):.3f}" for s in settings) + " |")
    eligible = [r for r in rankers if cost[r] in ("run", "probe")]  # within 2× one training
    families = sorted({family_of(s) for s in settings})
    score = {s: {r: mean(s, r, 0) + mean(s, r, 1) for r in rankers} for s in settings}
    print("\n## Leave-one-data-set-out choice among the candidates within 2× a training run "
          "(criterion: mean over settings of AUROC + P@k)\n")
    print("| held out | picked on the others | its AUROC+P@k there | `knn-aum` there | best there in hindsight |\n"
          "|---|---|---|---|---|")
    for held in families:
        train = [s for s in settings if family_of(s) != held]
        test = [s for s in settings if family_of(s) == held]
        if not train:
            continue
        pick = max(eligible, key=lambda r: np.mean([score[s][r] for s in train]))
        there = {r: np.mean([score[s][r] for s in test]) for r in eligible}
        best = max(there, key=there.get)
        print(f"| {held} | `{pick}` | {there[pick]:.3f} | {there['knn-aum']:.3f} | `{best}` {there[best]:.3f} |")
    overall = {r: np.mean([np.mean([score[s][r] for s in settings if family_of(s) == f]) for f in families])
               for r in eligible}
    top = sorted(overall, key=overall.get, reverse=True)[:8]
    print("\nOn all data sets (mean over data sets of the mean AUROC + P@k of their settings): "
          + ", ".join(f"`{r}` {overall[r]:.3f}" for r in top) + f"; `knn-aum` {overall['knn-aum']:.3f}")
    head = [args.detector, "knn-aum", "loss", "cleanlab-quality", "cleanlab-issues"]
    print(f"\n## Headline: `{args.detector}` beside the peers (AUROC / P@k, mean ± std over seeds)\n")
    print("| setting | n | noisy acc | " + " | ".join(f"`{r}`" for r in head)
          + " | Δ vs best of loss/cleanlab (AUROC, P@k) |\n|---|---|---|" + "---|" * (len(head) + 1))
    peers = ["loss", "cleanlab-quality", "cleanlab-issues"]
    for s in settings:
        txt = [f"{_ms([a for a, _ in metrics[s][r]])} / {_ms([p for _, p in metrics[s][r]])}" for r in head]
        da = mean(s, args.detector, 0) - max(mean(s, r, 0) for r in peers)
        dp = mean(s, args.detector, 1) - max(mean(s, r, 1) for r in peers)
        acc = [i["test_acc_noisy"] for i in info_by[s]]
        print(f"| {s} | {info_by[s][0]['n']} | {_ms(acc)} | " + " | ".join(txt) + f" | {da:+.3f}, {dp:+.3f} |")
    print("\n## Cost per cell (seconds, mean over seeds; one torch thread; load average at the cell's end)\n")
    print("| setting | training | views (checkpoint logits, features, TTA) | probe run | K-fold | load |\n"
          "|---|---|---|---|---|---|")
    for s in settings:
        sec = {k: np.mean([i["seconds"][k] for i in info_by[s]]) for k in ("train", "views", "probe", "kfold")}
        loads = [i["load_average"][0] for i in info_by[s]]
        print(f"| {s} | {sec['train']:.0f} | {sec['views']:.1f} | {sec['probe']:.0f} | {sec['kfold']:.0f} | "
              f"{min(loads):.1f}–{max(loads):.1f} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for step in ("run", "probe2", "labelfree"):  # run: the cells; the others add side files to them
        r = sub.add_parser(step)
        r.add_argument("--out", default="data/detection_views")
        r.add_argument("--settings", nargs="+", required=True)
        r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        r.add_argument("--limit", type=int, default=4000, help="CIFAR-10N audited training images")
        r.add_argument("--refresh", action="store_true")
        r.add_argument("--threads", type=int, default=1)
        if step == "run":
            r.add_argument("--kfold", type=int, default=3)
    a = sub.add_parser("analyse")
    a.add_argument("--out", default="data/detection_views")
    a.add_argument("--detector", default="knn-aum", help="the ranker of the headline table")
    args = ap.parse_args(argv)
    if args.cmd in ("run", "probe2", "labelfree"):
        # Fashion-MNIST sizes of the real-noise benchmark: 6,000 (instance-dependent), 3,000 otherwise
        args.fmnist_limit = {"instance-dependent": 6000, "symmetric": 3000, "class-pair": 3000}
    return {"run": cmd_run, "probe2": cmd_probe2, "labelfree": cmd_labelfree, "analyse": cmd_analyse}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
