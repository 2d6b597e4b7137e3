"""Remedies and noise-count estimators on the cells of ``benchmarks/real_noise.py`` (issue 14).

``real_noise.py run`` stores, per cell (setting × seed), the out-of-sample probabilities and every
detector's scores. This script reads those cells and

``remedies`` — retrains the audited recipe once per remedy (``tasks/remedies.py``, the same
function the audit's retrain stage calls) on the top k̂ of the recommended detector, k̂ from
``--estimator``, and stores each remedy's test accuracy in ``<cell>.remedies.json`` beside the cell
(a remedy already there is skipped, so more can be added later). The noisy accuracy is the cell's;
the oracle (true labels, same recipe and seed) is trained once and stored.

``estimators`` — each noise-count estimator's relative error (k̂ − k) / k on the stored
probabilities (seconds; no training); ``--second-opinion`` adds counts that also read the
label-free probe (minutes: every cell's inputs are reloaded and encoded).

``suggestions`` — how often the suggested label of a flagged row is its true class (the
out-of-sample argmax, and its average with the label-free probe: the real audit's suggestion).

``report`` — the markdown tables of ``docs/remedies.md``.

Usage::

    .venv/bin/python benchmarks/remedies_eval.py remedies --out data/real_noise --settings digits:symmetric
    .venv/bin/python benchmarks/remedies_eval.py estimators --out data/real_noise
    .venv/bin/python benchmarks/remedies_eval.py report --out data/real_noise
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_noise import _ms, derived_scores, load_setting, recipe, write_json, write_npz  # noqa: E402

from winnow.tasks import noise_rate, remedies  # noqa: E402
from winnow.tasks.models.nets import build_model  # noqa: E402
from winnow.tasks.models.training import accuracy, predict_logits, train_model  # noqa: E402
from winnow.tasks.review import suggestion_probs  # noqa: E402
from winnow.tasks.scorers import label_free  # noqa: E402

#: ``--estimator`` value that flags the true number of wrong labels (an oracle count, for analysis)
TRUE_COUNT = "true"
#: the remedies measured by default: every selectable one plus pruning k random samples (the floor)
REMEDIES = ["select", "prune", "relabel", "relabel-other", "relabel-agreed", "relabel-soft", "soft-all", "weight", "semi",
            "gce", "prune-random"]
DETECTOR = "knn-aum"


def _reload_cell(js: Path, info: dict, limit: int):
    """A stored cell's arrays, its setting's data reloaded (checked against the stored labels) and
    its training recipe."""
    setting, seed = info["setting"], info["seed"]
    arrays = np.load(js.with_suffix(".npz"))
    embedded = (arrays["emb_x"], arrays["emb_test_x"]) if "emb_x" in arrays.files else None
    data = load_setting(setting, seed, info["n"] if setting.startswith("fmnist") else limit, embedded)
    if not np.array_equal(data[2], arrays["y_given"]):
        raise ValueError(f"{js.name}: reloaded labels differ from the stored cell (different --limit?)")
    return arrays, data, recipe(setting, data[0], seed)


def _select_path(js: Path, key: str) -> Path:
    """Where a cell's ``select`` held-out vectors for ``key`` (= ``detector|estimator``) are
    stored: one file per key, since each detector's flags give ``select`` different candidates
    (the files of the first measurements, all ``knn-aum|expected``, keep the plain name)."""
    suffix = ".select.npz" if key == f"{DETECTOR}|expected" else f".select.{key.replace('|', '.')}.npz"
    return js.with_name(js.name.replace(".json", suffix))


def _cells(out: Path, settings: list[str] | None, seeds: list[int] | None):
    for js in sorted(out.glob("*__s*.json")):
        if js.name.endswith(".remedies.json"):
            continue
        info = json.loads(js.read_text())
        if (settings and info["setting"] not in settings) or (seeds is not None and info["seed"] not in seeds):
            continue
        yield js, info


def _trainer(factory, x, cfg):
    """(train_fn, predict_fn) of :func:`winnow.tasks.remedies.train_with_remedy` for tensor ``x``."""
    def train_fn(rows, labels, loss_fn):
        return train_model(factory, x[torch.as_tensor(rows)], torch.as_tensor(labels), cfg,
                           device=torch.device("cpu"), keep_checkpoints=False, loss_fn=loss_fn).model

    def predict_fn(model, rows):
        return torch.softmax(predict_logits(model, x[torch.as_tensor(rows)]), 1).double().numpy()

    return train_fn, predict_fn


def _oos_folds(y: np.ndarray, seed: int, kfold: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """The folds of the cell's out-of-sample probabilities (``neighbors.out_of_sample_views``)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = int(min(kfold, max(2, counts[counts > 0].min())))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def detector_scores(arrays, detector: str, x: torch.Tensor, y_given: np.ndarray, seed: int) -> np.ndarray:
    """A cell's ranking by ``detector``: one built from its stored pieces, or ``knn-aum-lf`` (the
    stored `knn-aum` rank-averaged with the label-free probe on the reloaded inputs, as the scorer does)."""
    derived = derived_scores(arrays)
    if detector != "knn-aum-lf":
        return derived[detector]
    from winnow.tasks.scorers.ensemble import rank_average
    from winnow.tasks.scorers.label_free import label_free_views

    probe = label_free_views(x.numpy(), y_given, 10, seed=seed, vote=False)["probe"]
    return rank_average([derived["knn-aum"], probe])


def _flagged(arrays, info: dict, detector: str, estimator: str, x: torch.Tensor,
             y_given: np.ndarray) -> tuple[int, np.ndarray]:
    """(k, flags) of a cell: k from ``estimator`` (:data:`TRUE_COUNT`: the true number of wrong
    labels), flags = the top k of ``detector``."""
    k = (int(info["wrong"]) if estimator == TRUE_COUNT
         else noise_rate.estimate(y_given, arrays["oos_probs"], estimator))
    flags = np.zeros(len(y_given), dtype=bool)
    flags[np.argsort(-detector_scores(arrays, detector, x, y_given, info["seed"]), kind="stable")[:k]] = True
    return k, flags


def cmd_remedies(args) -> int:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    for js, info in _cells(out, args.settings, args.seeds):
        seed = info["seed"]
        res_path = js.with_name(js.name.replace(".json", ".remedies.json"))
        res = json.loads(res_path.read_text()) if res_path.exists() else {}
        key = f"{args.detector}|{args.estimator}"
        done = res.setdefault(key, {})
        todo = [r for r in args.remedies if r not in done]
        if not todo and "oracle" in res:
            continue
        arrays, (model_kind, x, y_given, y_true, _, tx, ty), cfg = _reload_cell(js, info, args.limit)
        x, tx = torch.as_tensor(x), torch.as_tensor(tx)
        factory = lambda: build_model(model_kind, tuple(x.shape[1:]), 10)  # noqa: E731
        train_fn, predict_fn = _trainer(factory, x, cfg)
        probs = arrays["oos_probs"]
        k, flags = _flagged(arrays, info, args.detector, args.estimator, x, y_given)
        done["k"], done["wrong"], done["flag_precision"] = int(k), int(info["wrong"]), float(arrays["flipped"][flags].mean()) if k else float("nan")
        if "oracle" not in res:
            old = info.get("remedies", {}).get("oracle")  # real_noise.py's own oracle: same recipe and seed
            res["oracle"] = old if old is not None else accuracy(train_fn(np.arange(len(y_true)), y_true, None), tx, ty)
        res["noisy"] = info["test_acc_noisy"]
        second = None
        for name in todo:
            t0 = time.perf_counter()
            if name == "prune-random":
                rnd = np.zeros(len(y_given), dtype=bool)
                rnd[np.random.default_rng(seed).choice(len(y_given), size=k, replace=False)] = True
                outcome = remedies.train_with_remedy("prune", y_given, rnd, probs, seed, train_fn, predict_fn)
            elif name == "select":
                # the cell's out-of-sample pass is its `none` candidate (same folds); the final model
                # of a choice is the standalone remedy's (same plan, recipe, seed), so it is not
                # trained again, and the per-sample held-out correctness is stored so that the
                # report can apply the choice rule (and show a variant) without retraining
                outcome = remedies.train_with_remedy(name, y_given, flags, probs, seed, train_fn, predict_fn,
                                                     folds=_oos_folds(y_given, seed), train_final=False)
                write_npz(_select_path(js, key), fold_of=outcome.fold_of,
                          **{f"correct/{c}": v for c, v in outcome.holdout_correct.items()})
                done[name] = {"applied": outcome.applied, "holdout": outcome.holdout_accuracy,
                              "seconds": time.perf_counter() - t0}
            else:
                # what the audit's `second-opinion` stage gives the retrain (once per cell)
                if name in remedies.NEEDS_SECOND_OPINION and second is None:
                    second = label_free.second_opinion(x.numpy(), y_given, 10, seed=seed)
                outcome = remedies.train_with_remedy(name, y_given, flags, probs, seed, train_fn, predict_fn,
                                                     second=second if name in remedies.NEEDS_SECOND_OPINION else None)
            if name != "select":
                # a soft plan (relabel-soft) counts by its targets' argmax
                new = outcome.plan.labels if outcome.plan.labels.ndim == 1 else outcome.plan.labels.argmax(1)
                changed = new != y_given[outcome.plan.rows]
                done[name] = {"acc": accuracy(outcome.model, tx, ty), "applied": outcome.applied,
                              "seconds": time.perf_counter() - t0, "changed": outcome.plan.changed,
                              "dropped": outcome.plan.dropped,
                              # how many of the new labels are the true ones (read by the report only)
                              "changed_right": int((new == y_true[outcome.plan.rows])[changed].sum())}
            write_json(res_path, res)
            print(f"# {js.stem} {name}: {done[name].get('acc', float('nan')):.3f} ({outcome.applied}) noisy {res['noisy']:.3f} "
                  f"oracle {res['oracle']:.3f}, {done[name]['seconds']:.0f}s", file=sys.stderr, flush=True)
    return 0


#: the extra flip rate of the injection estimator (set before measuring it)
INJECTED_RATE = 0.1


def cmd_inject(args) -> int:
    """Out-of-sample probabilities after injecting ``INJECTED_RATE`` more random flips into the
    given labels (same folds scheme, recipe and seeds as the cell's own pass): ``<cell>.inject.npz``."""
    from dataclasses import replace

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    for js, info in _cells(out, args.settings, args.seeds):
        target = js.with_name(js.name.replace(".json", ".inject.npz"))
        if target.exists():
            continue
        seed = info["seed"]
        arrays, (model_kind, x, y_given, _, _, _, _), cfg = _reload_cell(js, info, args.limit)
        x = torch.as_tensor(x)
        factory = lambda: build_model(model_kind, tuple(x.shape[1:]), 10)  # noqa: E731
        t0 = time.perf_counter()
        injected = noise_rate.inject_flips(y_given, 10, INJECTED_RATE, seed)
        probs = np.zeros((len(y_given), 10))
        for fold, (fit, held) in enumerate(_oos_folds(injected, seed)):
            model = train_model(factory, x[torch.as_tensor(fit)], torch.as_tensor(injected[fit]),
                                replace(cfg, seed=cfg.seed + 1000 * (fold + 1)), device=torch.device("cpu"),
                                keep_checkpoints=False).model
            probs[held] = torch.softmax(predict_logits(model, x[torch.as_tensor(held)]), 1).double().numpy()
        write_npz(target, probs=probs, labels=injected, rate=INJECTED_RATE, seconds=time.perf_counter() - t0)
        print(f"# {js.stem}: injected pass {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return 0


def temperature_scaled(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``probs`` re-tempered by the temperature that minimises their NLL against the given labels
    (the probe's calibration, ``label_free.probe_probabilities``, on the log-probabilities)."""
    return label_free.probe_probabilities(np.log(np.clip(probs, 1e-12, 1.0)), labels)


def dawid_skene_count(votes: np.ndarray, num_classes: int, iterations: int = 50) -> float:
    """Expected number of rows whose true class differs from column 0 of ``votes`` (n, A) under
    the Dawid–Skene model (Dawid & Skene 1979): A annotators, each with its own confusion
    matrix, conditionally independent given the true class; EM from the majority vote."""
    n, raters = votes.shape
    rows = np.arange(n)
    post = np.zeros((n, num_classes))
    for a in range(raters):
        post[rows, votes[:, a]] += 1.0
    post /= post.sum(1, keepdims=True)
    for _ in range(iterations):
        log_post = np.log(post.mean(0) + 1e-12)[None].repeat(n, 0)
        for a in range(raters):
            confusion = post.T @ np.eye(num_classes)[votes[:, a]] + 0.01  # (true, said), smoothed
            log_post += np.log(confusion / confusion.sum(1, keepdims=True))[:, votes[:, a]].T
        post = np.exp(log_post - log_post.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
    return float((1.0 - post[rows, votes[:, 0]]).sum())


def second_opinion_counts(y: np.ndarray, probs: np.ndarray, probe: np.ndarray) -> dict[str, float]:
    """Counts that add the label-free probe (``label_free.second_opinion``: cross-fitted, as
    probabilities) to the out-of-sample probabilities: ``expected`` on the probe's and on their
    mean with the folds' (``review.suggestion_probs``), and Dawid–Skene with the given label, the
    folds' argmax and the probe's argmax as three annotators."""
    return {"expected:probe": noise_rate.expected_count(y, probe),
            "expected:folds+probe": noise_rate.expected_count(y, suggestion_probs(probs, probe)),
            "dawid-skene": dawid_skene_count(np.stack([y, probs.argmax(1), probe.argmax(1)], 1), probs.shape[1])}


def estimator_errors(out: Path, methods=noise_rate.ESTIMATORS, second_opinion: bool = False,
                     limit: int = 1000) -> dict[str, dict[str, list[float]]]:
    """setting -> estimator -> relative errors (k̂ − k)/k over the stored cells (``injected:<base>``
    where the cell has an injected pass; with ``second_opinion``, the counts of
    :func:`second_opinion_counts`, each cell's inputs reloaded for the probe)."""
    errors: dict = defaultdict(lambda: defaultdict(list))
    for js, info in _cells(out, None, None):
        arrays = np.load(js.with_suffix(".npz"))
        y, probs = arrays["y_given"], arrays["oos_probs"]
        k = int(arrays["flipped"].sum())
        for m in methods:
            errors[info["setting"]][m].append((noise_rate.estimate(y, probs, m) - k) / k)
        if second_opinion:
            x = np.asarray(_reload_cell(js, info, limit)[1][1])
            for m, est in second_opinion_counts(y, probs, label_free.second_opinion(x, y, 10, seed=info["seed"])).items():
                errors[info["setting"]][m].append((est - k) / k)
        errors[info["setting"]]["expected-T"].append((noise_rate.expected_count(y, temperature_scaled(y, probs)) - k) / k)
        inj = js.with_name(js.name.replace(".json", ".inject.npz"))
        if inj.exists():
            z = np.load(inj)
            for base in ("expected", "confident"):
                est = noise_rate.injected_slope_count(y, probs, z["probs"], float(z["rate"]), info["seed"], base)
                errors[info["setting"]][f"injected:{base}"].append((est - k) / k)
    return errors


def cmd_estimators(args) -> int:
    errors = estimator_errors(Path(args.out), second_opinion=args.second_opinion, limit=args.limit)
    methods = list(noise_rate.ESTIMATORS) + ["expected-T", "injected:expected", "injected:confident"]
    if args.second_opinion:
        methods += ["expected:probe", "expected:folds+probe", "dawid-skene"]
    print("| setting | seeds | " + " | ".join(f"`{m}`" for m in methods) + " |\n|---|---|" + "---|" * len(methods))
    worst = defaultdict(float)
    within = defaultdict(int)
    for s in sorted(errors):
        cells = []
        for m in methods:
            e = np.asarray(errors[s][m])
            if e.size == 0:
                cells.append("")
                continue
            worst[m] = max(worst[m], abs(e.mean()))
            within[m] += abs(e.mean()) <= 0.2
            cells.append(f"{e.mean():+.0%} ± {e.std(ddof=1) if len(e) > 1 else 0:.0%}")
        print(f"| {s} | {len(errors[s][methods[0]])} | " + " | ".join(cells) + " |")
    # (injected: counted over the settings that have the injected pass)
    print("| **within ±20%** | | " + " | ".join(f"{within[m]} of {sum(bool(errors[s][m]) for s in errors)}" for m in methods) + " |")
    print("| **worst mean error** | | " + " | ".join(f"{worst[m]:.0%}" for m in methods) + " |")
    return 0


def _select_from_stored(js: Path, key: str, done: dict, noisy: float) -> None:
    """Apply the choice rule to a cell's stored held-out correctness: ``select`` (the rule of
    ``remedies.choose_on_holdout``: McNemar and every fold) and ``select-pooled`` (McNemar alone);
    the chosen candidate's test accuracy is its standalone run's (the same training)."""
    sel = _select_path(js, key)
    if not sel.exists():
        done.pop("select", None)
        return
    z = np.load(sel)
    correct = {k.removeprefix("correct/"): z[k] for k in z.files if k.startswith("correct/")}
    for name, fold_of in (("select", z["fold_of"]), ("select-pooled", None)):
        choice, acc = remedies.choose_on_holdout(correct, fold_of=fold_of)
        test_acc = noisy if choice == "none" else done.get(choice, {}).get("acc")
        if test_acc is None:
            done.pop(name, None)
            continue
        done[name] = {"acc": test_acc, "applied": choice, "holdout": acc}


def cmd_report(args) -> int:
    out = Path(args.out)
    key = f"{args.detector}|{args.estimator}"
    table = defaultdict(list)
    for js, info in _cells(out, None, None):
        res_path = js.with_name(js.name.replace(".json", ".remedies.json"))
        if res_path.exists():
            res = json.loads(res_path.read_text())
            if key in res:
                _select_from_stored(js, key, res[key], res["noisy"])
                table[info["setting"]].append(res)
    names = [r for r in REMEDIES[:1] + ["select-pooled"] + REMEDIES[1:]
             if any(r in res[key] for rs in table.values() for res in rs)]
    print(f"Remedies on the top k̂ of `{args.detector}` (k̂ = `{args.estimator}`): test accuracy mean ± std over "
          "seeds, (fraction of the noisy → oracle gap recovered, from the means; `nan`: oracle ≤ noisy)\n")
    print("| setting | seeds | flag precision | noisy | oracle | gap ± se | " + " | ".join(names)
          + " |\n|---|---|---|---|---|---|" + "---|" * len(names))
    choices = defaultdict(lambda: defaultdict(int))
    for s in sorted(table):
        rs = table[s]
        cols = []
        for n in names:
            have = [r for r in rs if n in r[key]]
            accs = [r[key][n]["acc"] for r in have]
            if not accs:
                cols.append("")
                continue
            # the gap over the seeds this remedy ran on
            gap = remedies.gap_recovered(float(np.mean([r["noisy"] for r in have])), float(np.mean(accs)),
                                         float(np.mean([r["oracle"] for r in have])))
            cols.append(f"{_ms(accs)} ({gap:+.0%})" + (f" [{len(accs)}]" if len(accs) != len(rs) else ""))
            if n == "select":
                for r in rs:
                    if n in r[key]:
                        choices[s][r[key][n]["applied"]] += 1
        prec = _ms([r[key]["flag_precision"] for r in rs], ".2f")
        gaps = np.array([r["oracle"] - r["noisy"] for r in rs])
        se = gaps.std(ddof=1) / np.sqrt(len(gaps)) if len(gaps) > 1 else float("inf")
        testable = "" if gaps.mean() > 2 * se else " (untestable)"
        print(f"| {s} | {len(rs)} | {prec} | {_ms([r['noisy'] for r in rs])} | {_ms([r['oracle'] for r in rs])} | "
              f"{gaps.mean():+.3f} ± {se:.3f}{testable} | " + " | ".join(cols) + " |")
    if args.paired:
        a, b = args.paired
        print(f"\nPaired per cell: test accuracy of `{a}` minus `{b}` (same cell, flags, recipe and seed), mean ± "
              f"standard error over the seeds both ran on, and on how many seeds `{a}` was ahead\n")
        print("| setting | seeds | difference | ahead |\n|---|---|---|---|")
        pooled = []
        for s in sorted(table):
            d = np.array([r[key][a]["acc"] - r[key][b]["acc"] for r in table[s] if a in r[key] and b in r[key]])
            if d.size:
                pooled += list(d)
                se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
                print(f"| {s} | {len(d)} | {d.mean():+.4f} ± {se:.4f} | {int((d > 0).sum())} of {len(d)} |")
        if pooled:
            d = np.array(pooled)
            print(f"| **every cell** | {len(d)} | {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(len(d)):.4f} | "
                  f"{int((d > 0).sum())} of {len(d)} |")
    relabels = [n for n in names if any("changed_right" in r[key].get(n, {}) and r[key][n]["changed"]
                                        for rs in table.values() for r in rs)]
    if relabels:
        print("\nNew labels given by each relabelling remedy: how many per cell (mean), and the share that are the "
              "true class\n")
        print("| setting | " + " | ".join(relabels) + " |\n|---|" + "---|" * len(relabels))
        for s in sorted(table):
            cols = []
            for n in relabels:
                have = [r[key][n] for r in table[s] if "changed_right" in r[key].get(n, {})]
                changed = sum(h["changed"] for h in have)
                cols.append(f"{changed / len(have):.0f}, {sum(h['changed_right'] for h in have) / changed:.2f}"
                            if changed else "")
            print(f"| {s} | " + " | ".join(cols) + " |")
    if choices:
        print("\n`select` per setting: its choice per seed (cross-validated accuracy on the given labels), and "
              "its test accuracy minus the unchanged (noisy) model's, per seed\n")
        print("| setting | chosen | select − noisy (mean, min over seeds) | seeds below noisy |\n|---|---|---|---|")
        for s in sorted(choices):
            d = np.array([r[key]["select"]["acc"] - r["noisy"] for r in table[s] if "select" in r[key]])
            if d.size == 0:
                continue
            print(f"| {s} | " + ", ".join(f"{c} ×{n}" for c, n in sorted(choices[s].items()))
                  + f" | {d.mean():+.3f}, {d.min():+.3f} | {int((d < -1e-9).sum())} of {len(d)} |")
    return 0


def cmd_suggestions(args) -> int:
    """How often the suggested label of a flagged row is its true class: the out-of-sample argmax
    (what the review queue suggested before) against its average with the label-free probe's
    probabilities (what ``stages.second_opinion`` gives the real audit now), on the top k̂ of
    ``--detector``; over every flagged row (a right suggestion for a flagged *correct* label is the
    label itself) and over the flagged rows whose label is wrong."""
    table = defaultdict(lambda: defaultdict(list))
    for js, info in _cells(Path(args.out), args.settings, None):
        arrays, (_, x, y_given, y_true, _, _, _), _ = _reload_cell(js, info, args.limit)
        probs = arrays["oos_probs"]
        k, flags = _flagged(arrays, info, args.detector, args.estimator, torch.as_tensor(x), y_given)
        probe = label_free.second_opinion(np.asarray(x), y_given, 10, seed=info["seed"])
        wrong = flags & (y_given != y_true)
        for name, p in (("folds", probs), ("folds+probe", suggestion_probs(probs, probe))):
            right = p.argmax(1) == y_true
            table[info["setting"]][f"{name}|flagged"].append(right[flags].mean() if flags.any() else np.nan)
            table[info["setting"]][f"{name}|wrong"].append(right[wrong].mean() if wrong.any() else np.nan)
        print(f"# {js.stem}: " + ", ".join(f"{c} {v[-1]:.3f}" for c, v in table[info["setting"]].items()),
              file=sys.stderr, flush=True)
    cols = ["folds|flagged", "folds+probe|flagged", "folds|wrong", "folds+probe|wrong"]
    print(f"Suggested label = true class, on the top k̂ of `{args.detector}` (k̂ = `{args.estimator}`): mean ± std "
          "over seeds\n")
    print("| setting | seeds | " + " | ".join(c.replace("|", ", ") for c in cols) + " |\n|---|---|" + "---|" * len(cols))
    for s in sorted(table):
        print(f"| {s} | {len(table[s][cols[0]])} | " + " | ".join(_ms(table[s][c], ".2f") for c in cols) + " |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("remedies")
    r.add_argument("--out", default="data/real_noise")
    r.add_argument("--settings", nargs="+", default=None)
    r.add_argument("--seeds", nargs="+", type=int, default=None)
    r.add_argument("--limit", type=int, default=1000, help="the CIFAR-10N --limit the cells were run with")
    r.add_argument("--remedies", nargs="+", default=REMEDIES)
    r.add_argument("--detector", default=DETECTOR)
    r.add_argument("--estimator", default=noise_rate.RECOMMENDED, choices=noise_rate.ESTIMATORS + (TRUE_COUNT,),
                   help=f"how many to flag; {TRUE_COUNT!r} = the true number of wrong labels (an oracle: how much "
                        "a perfect count would change the remedy, not a product setting)")
    r.add_argument("--threads", type=int, default=1)
    e = sub.add_parser("estimators")
    e.add_argument("--out", default="data/real_noise")
    e.add_argument("--second-opinion", action="store_true",
                   help="also the counts that add the label-free probe (reloads every cell's inputs)")
    e.add_argument("--limit", type=int, default=1000, help="the CIFAR-10N --limit the cells were run with")
    i = sub.add_parser("inject")
    i.add_argument("--out", default="data/real_noise")
    i.add_argument("--settings", nargs="+", default=None)
    i.add_argument("--seeds", nargs="+", type=int, default=None)
    i.add_argument("--limit", type=int, default=1000)
    i.add_argument("--threads", type=int, default=1)
    g = sub.add_parser("suggestions")
    g.add_argument("--out", default="data/real_noise")
    g.add_argument("--settings", nargs="+", default=None)
    g.add_argument("--limit", type=int, default=1000, help="the CIFAR-10N --limit the cells were run with")
    g.add_argument("--detector", default="knn-aum-lf")
    g.add_argument("--estimator", default=noise_rate.RECOMMENDED, choices=noise_rate.ESTIMATORS)
    p = sub.add_parser("report")
    p.add_argument("--out", default="data/real_noise")
    p.add_argument("--detector", default=DETECTOR)
    p.add_argument("--estimator", default=noise_rate.RECOMMENDED, choices=noise_rate.ESTIMATORS + (TRUE_COUNT,))
    p.add_argument("--paired", nargs=2, metavar=("A", "B"), help="also the per-cell difference of remedy A minus B")
    args = ap.parse_args(argv)
    return {"remedies": cmd_remedies, "estimators": cmd_estimators, "inject": cmd_inject, "report": cmd_report,
            "suggestions": cmd_suggestions}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
