"""The benchmark's aggregation, verdicts, plots and Markdown report.

Pure where it can be (DataFrames in, DataFrames or strings out); the plot functions write PNGs.
One row of the input is one (dataset, noise, rate, ranker, seed); every figure of the report is a
mean ± std over seeds.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .plots import save_figure  # noqa: E402

SETTING = ["dataset", "noise", "rate"]
KEYS = SETTING + ["scorer", "kind"]
#: the figures aggregated over seeds (columns of the benchmark table)
METRICS = ("auroc", "ap", "precision_at_k", "recall_at_k", "found_at_5pct", "found_at_10pct", "found_at_20pct",
           "found_at_30pct", "acc_noisy", "acc_clean", "acc_prune_rate", "acc_prune_cl", "frac_cl",
           "acc_relabel_rate", "fixed_relabel_rate", "score_seconds")
#: influence-style rankings, for the seed paper's "training loss beats influence methods"
INFLUENCE_METHODS = ("influence", "tracin", "tracin-last", "representer", "turnover", "captum-tracincp")
#: rankings that are baselines, never "winners"
BASELINES = ("oracle-rank", "random")


def aggregate(rows: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Mean, std (ddof=1; 0 for a single seed) and seed count per (setting, ranker).

    Parameters
    ----------
    rows : DataFrame
        One row per (dataset, noise, rate, scorer, kind, seed) with the ``metrics`` columns.

    Returns
    -------
    DataFrame
        ``KEYS`` + ``<metric>_mean``, ``<metric>_std`` per metric + ``seeds``.
    """
    missing = [c for c in KEYS + ["seed"] if c not in rows.columns]
    if missing:
        raise ValueError(f"benchmark rows lack columns {missing}")
    if rows.empty:
        raise ValueError("no benchmark rows to aggregate")
    present = [m for m in metrics if m in rows.columns]
    g = rows.groupby(KEYS, sort=False, dropna=False)
    mean = g[present].mean().add_suffix("_mean")
    std = g[present].std(ddof=1).fillna(0.0).add_suffix("_std")
    out = pd.concat([mean, std, g["seed"].nunique().rename("seeds")], axis=1).reset_index()
    return out


def pm(mean: float, std: float, digits: int = 3) -> str:
    """``0.912 ± 0.004``; an em dash for a missing figure."""
    if mean is None or not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def winners(agg: pd.DataFrame, metric: str, exclude=BASELINES) -> pd.DataFrame:
    """Per setting, the ranker with the highest mean ``metric`` (baselines excluded).

    Returns
    -------
    DataFrame
        ``SETTING`` + ``winner``, ``mean``, ``std``, ``runner_up``, ``runner_up_mean``.
    """
    col = f"{metric}_mean"
    if col not in agg.columns:
        raise ValueError(f"no aggregated metric {metric!r}")
    cand = agg[~agg["scorer"].isin(exclude) & agg[col].notna()]
    out = []
    for setting, grp in cand.groupby(SETTING, sort=False):
        grp = grp.sort_values(col, ascending=False, kind="stable")
        best = grp.iloc[0]
        second = grp.iloc[1] if len(grp) > 1 else None
        out.append({**dict(zip(SETTING, setting)), "winner": best["scorer"], "mean": best[col],
                    "std": best[f"{metric}_std"], "runner_up": None if second is None else second["scorer"],
                    "runner_up_mean": np.nan if second is None else second[col]})
    return pd.DataFrame(out, columns=SETTING + ["winner", "mean", "std", "runner_up", "runner_up_mean"])


def ranking_table(agg: pd.DataFrame, metric: str = "auroc", exclude=("oracle-rank",)) -> pd.DataFrame:
    """Rankers ordered by mean rank of ``metric`` over every setting (1 = best), with the number
    of settings won and the per-dataset mean of the metric."""
    col = f"{metric}_mean"
    cand = agg[~agg["scorer"].isin(exclude)].copy()
    cand["rank"] = cand.groupby(SETTING)[col].rank(ascending=False, method="min")
    won = winners(agg, metric, exclude=BASELINES)["winner"].value_counts()
    table = cand.groupby("scorer").agg(kind=("kind", "first"), mean_rank=("rank", "mean"),
                                       settings=("rank", "size"))
    table["wins"] = won.reindex(table.index).fillna(0).astype(int)
    for ds, grp in cand.groupby("dataset", sort=False):
        table[f"{metric}·{ds}"] = grp.groupby("scorer")[col].mean()
        table[f"{metric}_std·{ds}"] = grp.groupby("scorer")[f"{metric}_std"].mean()
    return table.sort_values(["mean_rank", "scorer"]).reset_index()


#: the paper's detection figure: share of the mislabels found when inspecting as many samples as
#: there are flips (= recall@k with k = round(rate · n); at 10% noise, "found in the top 10%")
FINDING_METRIC = "recall_at_k"


def verdict(diff: float, spread: float, tol: float = 0.005) -> str:
    """``holds`` / ``breaks`` / ``tie``: a difference within the seeds' spread (or ``tol``) is a tie."""
    if not np.isfinite(diff):
        return "—"
    if abs(diff) <= max(tol, spread):
        return "tie"
    return "holds" if diff > 0 else "breaks"


def model_learned(row, ratio: float = 0.75) -> bool:
    """Whether the noisy-label model learned the task: its test accuracy is at least ``ratio`` of
    the clean-label model's (a model stuck near chance makes every ranking meaningless)."""
    noisy, clean = row.get("acc_noisy_mean", np.nan), row.get("acc_clean_mean", np.nan)
    return not (np.isfinite(noisy) and np.isfinite(clean)) or noisy >= ratio * clean


def paper_finding(agg: pd.DataFrame, metric: str = FINDING_METRIC) -> pd.DataFrame:
    """Mercier et al. 2020's finding per setting: does training loss beat every influence method?

    Returns
    -------
    DataFrame
        ``SETTING`` + ``loss``, ``best_influence``, ``best_influence_mean``, ``verdict``
        (holds / breaks / tie, where a tie is a difference within the mean of the two stds;
        ``untestable`` where the noisy-label model did not learn, see :func:`model_learned`).
    """
    col, sd = f"{metric}_mean", f"{metric}_std"
    out = []
    for setting, grp in agg.groupby(SETTING, sort=False):
        loss = grp[grp["scorer"] == "loss"]
        infl = grp[grp["scorer"].isin(INFLUENCE_METHODS)].sort_values(col, ascending=False)
        if loss.empty or infl.empty:
            continue
        l, b = loss.iloc[0], infl.iloc[0]
        said = verdict(float(l[col] - b[col]), 0.5 * float(l[sd] + b[sd]))
        if not model_learned(l):
            said = "untestable"  # rankings of a model that learned nothing test no method
        out.append({**dict(zip(SETTING, setting)), "loss": float(l[col]), "best_influence": b["scorer"],
                    "best_influence_mean": float(b[col]), "verdict": said})
    return pd.DataFrame(out, columns=SETTING + ["loss", "best_influence", "best_influence_mean", "verdict"])


def finding_per_method(agg: pd.DataFrame, metric: str = FINDING_METRIC) -> pd.DataFrame:
    """Loss against each influence-style method on its own, over the settings where the
    noisy-label model learned: how often loss wins, ties, loses (the paper's claim is per method;
    the best-of-six comparison of :func:`paper_finding` favours the influence side).

    Returns
    -------
    DataFrame
        One row per influence method present: ``method``, ``holds``, ``tie``, ``breaks`` (counts
        of settings) and ``mean_gap`` (mean of loss − method over those settings).
    """
    col, sd = f"{metric}_mean", f"{metric}_std"
    counts: dict[str, dict] = {}
    for _, grp in agg.groupby(SETTING, sort=False):
        loss = grp[grp["scorer"] == "loss"]
        if loss.empty or not model_learned(loss.iloc[0]):
            continue
        l = loss.iloc[0]
        for r in grp[grp["scorer"].isin(INFLUENCE_METHODS)].itertuples(index=False):
            m = r._asdict()
            gap = float(l[col] - m[col])
            c = counts.setdefault(m["scorer"], {"method": m["scorer"], "holds": 0, "tie": 0, "breaks": 0, "gaps": []})
            c[verdict(gap, 0.5 * float(l[sd] + m[sd]))] += 1
            c["gaps"].append(gap)
    rows = [{**{k: v for k, v in c.items() if k != "gaps"}, "mean_gap": float(np.mean(c["gaps"]))}
            for c in counts.values()]
    return pd.DataFrame(rows, columns=["method", "holds", "tie", "breaks", "mean_gap"]).sort_values(
        "mean_gap", ascending=False, ignore_index=True)


# ---------------------------------------------------------------- plots


def _setting_panels(frame: pd.DataFrame, what: str):
    """One panel per (noise, rate) of ``frame``, up to 3 per row, and one colour per scorer.

    Returns ``fig``, ``colours`` (scorer -> colour) and ``panels``: (ax, noise, rate, rows of
    that setting) per setting, in sorted order; the first panel carries the legend.
    """
    settings = sorted({(r.noise, r.rate) for r in frame.itertuples()})
    if not settings:
        raise ValueError(f"no {what} to plot")
    ncols = min(3, len(settings))
    nrows = int(np.ceil(len(settings) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(settings):]:
        ax.axis("off")
    cmap = plt.get_cmap("tab20")
    colours = {n: cmap(i % 20) for i, n in enumerate(sorted(frame["scorer"].unique()))}
    panels = []
    for ax, (noise, rate) in zip(axes, settings):
        ax.set_title(f"{noise} · {rate:.0%}", fontsize=10)
        ax.grid(alpha=0.25)
        panels.append((ax, noise, rate, frame[(frame.noise == noise) & (frame.rate == rate)]))
    return fig, colours, panels


def found_curves(curves: pd.DataFrame, dest: Path, title: str = "") -> Path:
    """Fraction of mislabels found vs. fraction inspected, mean ± std over seeds, one panel per
    (noise, rate) of one data set. ``curves``: dataset, noise, rate, scorer, seed, fraction, found."""
    fig, colours, panels = _setting_panels(curves, "curves")
    for ax, noise, rate, sub in panels:
        stats = sub.groupby(["scorer", "fraction"])["found"].agg(["mean", "std"]).reset_index()
        for name, s in stats.groupby("scorer"):
            style = {"ls": ":", "lw": 1.2} if name in BASELINES else {"lw": 1.4}
            ax.plot(s["fraction"], s["mean"], label=name, color=colours[name], **style)
            ax.fill_between(s["fraction"], s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                            color=colours[name], alpha=0.12, lw=0)
        for f in (0.05, 0.10, 0.20, 0.30):
            ax.axvline(f, color="grey", lw=0.5, alpha=0.4)
        ax.set_xlabel("fraction of training set inspected")
        ax.set_ylabel("fraction of mislabels found")
        ax.set_ylim(0, 1.02)
    panels[0][0].legend(fontsize=6, ncol=2, loc="lower right")
    return save_figure(fig, dest, title)


def accuracy_vs_pruned(rows: pd.DataFrame, dest: Path, title: str = "") -> Path:
    """Test accuracy vs. fraction of the training set pruned (x = noise rate, x = confident
    learning's estimate), mean ± std over seeds per ranker; noisy model at 0, clean labels as a
    line. ``rows``: the benchmark rows of one data set."""
    fig, colours, panels = _setting_panels(rows, "rows")
    for ax, noise, rate, sub in panels:
        for name, s in sub.groupby("scorer"):
            if s["acc_prune_rate"].isna().all() and s["acc_prune_cl"].isna().all():
                continue  # detection only: this ranker was not retrained
            pts = [(0.0, s["acc_noisy"])]
            pts.append((rate, s["acc_prune_rate"]))
            if s["acc_prune_cl"].notna().any():
                pts.append((float(s["frac_cl"].mean()), s["acc_prune_cl"]))
            xs = [p[0] for p in pts]
            ys = [float(p[1].mean()) for p in pts]
            es = [float(p[1].std(ddof=1)) if len(p[1]) > 1 else 0.0 for p in pts]
            order = np.argsort(xs)
            marker = "s" if name in BASELINES else "o"
            ax.errorbar(np.array(xs)[order], np.array(ys)[order], yerr=np.array(es)[order], label=name,
                        color=colours[name], marker=marker, ms=3, lw=0.9, capsize=2)
        ax.axhline(float(sub["acc_clean"].mean()), color="black", ls="--", lw=0.8, label="clean labels")
        ax.set_xlabel("fraction of training set pruned")
        ax.set_ylabel("test accuracy")
    panels[0][0].legend(fontsize=6, ncol=2, loc="lower left")
    return save_figure(fig, dest, title)


# ---------------------------------------------------------------- Markdown


def headline_table(agg: pd.DataFrame) -> str:
    """The one table to read: every ranker, mean rank by AUROC, wins, AUROC and the share of
    mislabels found when inspecting as many samples as there are flips (R@k) per data set, and accuracy after pruning at the noise rate (mean over settings,
    ± the mean of the per-setting std over seeds)."""
    rank = ranking_table(agg, "auroc")
    datasets = list(dict.fromkeys(agg["dataset"]))
    head = ["ranker", "kind", "mean rank (AUROC)", "settings won"]
    for ds in datasets:
        head += [f"AUROC · {ds}", f"R@k · {ds}", f"acc. pruned · {ds}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = agg.groupby(["scorer", "dataset"])
    for r in rank.itertuples(index=False):
        cells = [f"`{r.scorer}`", r.kind, f"{r.mean_rank:.1f}", f"{r.wins}/{int(r.settings)}"]
        for ds in datasets:
            if (r.scorer, ds) not in by.groups:
                cells += ["—"] * 3
                continue
            g = by.get_group((r.scorer, ds))
            cells += [pm(g["auroc_mean"].mean(), g["auroc_std"].mean()),
                      pm(g["recall_at_k_mean"].mean(), g["recall_at_k_std"].mean()),
                      pm(g["acc_prune_rate_mean"].mean(), g["acc_prune_rate_std"].mean())]
        lines.append("| " + " | ".join(cells) + " |")
    ref = agg.drop_duplicates(SETTING).groupby("dataset")[["acc_noisy_mean", "acc_clean_mean"]].mean()
    lines.append("")
    lines.append("Reference accuracy (mean over settings): " + "; ".join(
        f"{ds}: noisy {ref.loc[ds, 'acc_noisy_mean']:.3f}, clean labels {ref.loc[ds, 'acc_clean_mean']:.3f}"
        for ds in datasets if ds in ref.index) + ".")
    return "\n".join(lines)


def _setting_table(agg: pd.DataFrame, dataset: str) -> str:
    sub = agg[agg["dataset"] == dataset]
    cols = [("AUROC", "auroc"), ("AP", "ap"), ("R@k", "recall_at_k"), ("found@5%", "found_at_5pct"), ("found@10%", "found_at_10pct"),
            ("found@20%", "found_at_20pct"), ("found@30%", "found_at_30pct"), ("acc. prune x=rate", "acc_prune_rate"),
            ("acc. prune x=CL", "acc_prune_cl"), ("acc. relabel", "acc_relabel_rate"), ("score s", "score_seconds")]
    out = []
    for (noise, rate), grp in sub.groupby(["noise", "rate"], sort=False):
        first = grp.iloc[0]
        out += [f"#### {dataset} · {noise} · {rate:.0%}", "",
                f"Noisy model {pm(first['acc_noisy_mean'], first['acc_noisy_std'])}; clean labels "
                f"{pm(first['acc_clean_mean'], first['acc_clean_std'])}; confident learning estimates "
                f"{pm(first['frac_cl_mean'], first['frac_cl_std'])} of the set is mislabelled.", "",
                "| ranker | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
        for r in grp.sort_values("auroc_mean", ascending=False).itertuples(index=False):
            d = r._asdict()
            out.append(f"| `{r.scorer}` | " + " | ".join(
                pm(d.get(f"{c}_mean", np.nan), d.get(f"{c}_std", 0.0), 2 if c == "score_seconds" else 3)
                for _, c in cols) + " |")
        out.append("")
    return "\n".join(out)


def render(agg: pd.DataFrame, meta: dict, plots: dict[str, list[str]]) -> str:
    """The report: what was run, the headline table, who wins where, the seed paper's finding,
    then per-setting detail. ``meta``: command, wall_seconds, grid (dict), bounds (list of str),
    notes (list of str). ``plots``: dataset -> relative PNG paths."""
    lines = [f"# winnow benchmark — {meta.get('title', 'report')}", "",
             f"Reproduce: `{meta['command']}`  ", f"Wall time: **{meta['wall_seconds'] / 60:.1f} min** "
             f"({meta['wall_seconds']:.0f} s, {meta.get('cached_fraction', 0):.0%} of task calls served from cache) "
             f"on {meta.get('machine', 'this machine')}.", ""]
    g = meta["grid"]
    models = meta.get("models", {})
    described = ", ".join(f"{d} ({models.get(d, '?')})" for d in g["datasets"])
    lines += ["## Grid", "",
              f"- data sets: {described}",
              f"- noise: {', '.join(g['noises'])} at {', '.join(f'{r:.0%}' for r in g['rates'])}; "
              f"seeds {', '.join(map(str, g['seeds']))} (every figure: mean ± std over seeds)",
              f"- rankers: {', '.join(g['scorers'])}; peers: {', '.join(g['peers']) or 'none'}; "
              "baselines: noisy model, `random` removal/inspection, `oracle-rank` (the true flips first), "
              "clean-label retraining (the oracle)",
              f"- prune at x = {', '.join(g['prune_at'])}; relabel: inspect the top x = {', '.join(g['relabel_at'])} "
              "(x = rate: the noise rate; x = CL: confident learning's estimate of the mislabelled count)", ""]
    if meta.get("bounds"):
        lines += ["Bounds (to fit the time budget on a 2-core CPU):", ""] + [f"- {b}" for b in meta["bounds"]] + [""]
    if meta.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in meta["notes"]] + [""]
    lines += ["## Headline", "", headline_table(agg), ""]
    lines += ["## Who wins where", ""]
    w_auc, w_found = winners(agg, "auroc"), winners(agg, FINDING_METRIC)
    w_prune, w_relab = winners(agg, "acc_prune_rate"), winners(agg, "acc_relabel_rate")
    finding = paper_finding(agg)
    lines += ["R@k: share of the mislabels among the top k = round(rate · n), i.e. found when inspecting "
              "the noise-rate fraction (the paper's figure at 10% noise). Verdict: `tie` when the gap is "
              "within the seeds' spread (mean of the two stds, at least 0.005).", "",
              "| data set | noise | rate | best AUROC | best R@k | best acc. after pruning | "
              "best acc. after relabel | loss vs best influence method (R@k) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in w_auc.itertuples(index=False):
        key = (r.dataset, r.noise, r.rate)

        def pick(w):
            m = w[(w.dataset == key[0]) & (w.noise == key[1]) & (w.rate == key[2])]
            return "—" if m.empty else f"`{m.iloc[0].winner}` {m.iloc[0]['mean']:.3f}"

        f = finding[(finding.dataset == key[0]) & (finding.noise == key[1]) & (finding.rate == key[2])]
        said = "—" if f.empty else (
            f"{f.iloc[0].verdict}: loss {f.iloc[0].loss:.3f} vs "
            f"`{f.iloc[0].best_influence}` {f.iloc[0].best_influence_mean:.3f}")
        first = agg[(agg.dataset == key[0]) & (agg.noise == key[1]) & (agg.rate == key[2])].iloc[0]
        if not model_learned(first):
            said = (f"untestable: the noisy-label model did not learn (acc. {first['acc_noisy_mean']:.3f} vs "
                    f"clean {first['acc_clean_mean']:.3f})")
        lines.append(f"| {r.dataset} | {r.noise} | {r.rate:.0%} | `{r.winner}` {r.mean:.3f} | {pick(w_found)} | "
                     f"{pick(w_prune)} | {pick(w_relab)} | {said} |")
    lines.append("")
    lines += ["## The seed paper's finding", "", summarise_finding(finding, agg), ""]
    per_method = finding_per_method(agg)
    if not per_method.empty:
        lines += ["Loss against each influence-style method on its own (settings where the noisy-label model "
                  "learned; R@k; a tie is a gap within the seeds' spread):", "",
                  "| method | loss better | tie | loss worse | mean gap (loss − method) |", "|---|---|---|---|---|"]
        lines += [f"| `{r.method}` | {r.holds} | {r.tie} | {r.breaks} | {r.mean_gap:+.3f} |"
                  for r in per_method.itertuples(index=False)]
        lines.append("")
    lines += ["## Plots", ""]
    for ds, files in plots.items():
        for f in files:
            lines.append(f"![{ds}]({f})")
    lines += ["", "## Detail (mean ± std over seeds)", ""]
    for ds in dict.fromkeys(agg["dataset"]):
        lines.append(_setting_table(agg, ds))
    return "\n".join(lines)


def summarise_finding(finding: pd.DataFrame, agg: pd.DataFrame) -> str:
    """One paragraph: where "training loss beats the influence methods" holds and where it breaks."""
    if finding.empty:
        return ("Not testable on this grid: it needs `loss` and at least one influence-style method "
                f"({', '.join(INFLUENCE_METHODS)}).")
    count = finding["verdict"].value_counts()
    n = len(finding) - int(count.get("untestable", 0))
    parts = [f"Mercier et al. 2020 found that the final model's training loss finds more mislabels than "
             f"influence methods. Judged by R@k (mean over seeds) against the best influence-style method of "
             f"each setting, it **holds in {count.get('holds', 0)} of {n} testable settings, breaks in "
             f"{count.get('breaks', 0)}, and is a tie (within the seeds' spread) in {count.get('tie', 0)}**."]
    bad = finding[finding["verdict"] == "untestable"]
    if len(bad):
        parts.append(f"In {len(bad)} setting(s) the noisy-label model did not learn (test accuracy below 3/4 of "
                     "the clean-label model's), so no ranking there tests anything: " + "; ".join(
                         f"{r.dataset} {r.noise} {r.rate:.0%}" for r in bad.itertuples()) + ".")
    broke = finding[finding["verdict"] == "breaks"]
    if len(broke):
        parts.append("It breaks in: " + "; ".join(
            f"{r.dataset} {r.noise} {r.rate:.0%} (`{r.best_influence}` {r.best_influence_mean:.3f} vs loss {r.loss:.3f})"
            for r in broke.itertuples()) + ".")
    per = finding[finding["verdict"] != "untestable"].groupby("dataset")["verdict"].value_counts().unstack(
        fill_value=0)
    parts.append("Per data set (holds/tie/breaks): " + ", ".join(
        f"{ds} {int(r.get('holds', 0))}/{int(r.get('tie', 0))}/{int(r.get('breaks', 0))}" for ds, r in per.iterrows())
        + ".")
    best_inf = finding["best_influence"].value_counts()
    parts.append("Strongest influence-style method most often: " + ", ".join(
        f"`{k}` ({v})" for k, v in best_inf.items()) + ". Variants: `influence` is exact last-layer "
        "influence (not the paper's full-model LiSSA), `tracin-last` and `captum-tracincp` are last-layer "
        "TracIn, `tracin` uses all layers.")
    return " ".join(parts)
