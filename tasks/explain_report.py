"""Pictures and report fragments for the explain stage.

* :func:`explanation_pngs` draws, per flagged sample, one row of five panels -- original | IG map
  of the given label | IG map of the suggested label | counterfactual toward the given label |
  counterfactual toward the suggested label -- as one PNG per sample and one grid of all rows.
* :func:`explain_section_html` renders a run's explanations (from the lake tables ``explanations``
  and ``explain_checks``, images inlined as base64) as an HTML fragment for the review report.
* :func:`checks_markdown` is the same summary as Markdown (Prefect artifact, MLflow).

This module imports nothing from :mod:`winnow.tasks.report`, so the report can import it.
"""
from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

# What each check measures, in one line (shown beside its figures).
CHECKS = {
    "ig": ("Integrated Gradients with an explicit baseline (Cui & Fan)",
           "completeness gap |Σ attributions − (f(x) − f(baseline))| of the explained logit; steps doubled until "
           "it is ≤ rtol·|f(x) − f(b)| + 1e-4"),
    "counterfactual": ("Latent counterfactuals (Alipour et al. 2022)",
                       "validity = fraction whose VAE counterfactual reaches the target label; proximity = latent / "
                       "pixel distance; contrastive sufficiency / necessity of the latent class directions"),
    "edda": ("EDDA: explanation-driven data augmentation (arXiv 2105.14162)",
             "alignment = mean confidence drop with the top-10% IG-salient pixels occluded minus the drop with "
             "random pixels occluded, for the run's model and the same recipe retrained with EDDA"),
}

PANELS = ("original", "IG · given", "IG · suggested", "CF → given", "CF → suggested")


def safe_name(sample_id: str) -> str:
    """A file-name-safe version of a sample id (ids come from users' files)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(sample_id))[:80] or "sample"


def _as_image(a: np.ndarray) -> np.ndarray:
    """(C, H, W) / (C, L) / (H, W) -> a 2-D array for imshow (channels averaged)."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3:
        return a.mean(0)
    return a if a.ndim == 2 else a.reshape(1, -1)


def _draw_row(axes, image, attr_given, attr_suggested, cf_given, cf_suggested, labels: dict) -> None:
    import matplotlib.pyplot as plt  # noqa: F401  (Agg is selected by winnow.tasks.plots)

    # One colour scale for both IG maps of a sample, so their magnitudes compare.
    lim = float(max(np.abs(attr_given).max(), np.abs(attr_suggested).max(), 1e-12))
    aspect = "auto" if _as_image(image).shape[0] == 1 else "equal"
    panels = ((image, "gray", 0, 1), (attr_given, "bwr", -lim, lim), (attr_suggested, "bwr", -lim, lim),
              (cf_given, "gray", 0, 1), (cf_suggested, "gray", 0, 1))
    for ax, (img, cmap, lo, hi), title in zip(axes, panels, labels["titles"]):
        ax.imshow(_as_image(img), cmap=cmap, vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(labels["row"], fontsize=7)


def explanation_pngs(out_dir: Path, sample_ids: list[str], x: np.ndarray, attr_given: np.ndarray,
                     attr_suggested: np.ndarray, cf_given: np.ndarray, cf_suggested: np.ndarray,
                     titles: list[list[str]], rows: list[str]) -> tuple[list[Path], Path]:
    """Write one 5-panel PNG per flagged sample and a grid of all of them.

    Parameters
    ----------
    out_dir : Path
    sample_ids : list of str, length n
    x, attr_given, attr_suggested, cf_given, cf_suggested : np.ndarray, shape (n, *sample_shape)
    titles : list of n lists of 5 panel titles
    rows : list of n row labels

    Returns
    -------
    per_sample : list of Path
    grid : Path
    """
    from .plots import plt  # Agg backend

    out_dir.mkdir(parents=True, exist_ok=True)
    per_sample = []
    for i, sid in enumerate(sample_ids):
        fig, axes = plt.subplots(1, 5, figsize=(7.5, 1.9))
        _draw_row(axes, x[i], attr_given[i], attr_suggested[i], cf_given[i], cf_suggested[i],
                  {"titles": titles[i], "row": rows[i]})
        fig.tight_layout()
        dest = out_dir / f"sample-{i:03d}-{safe_name(sid)}.png"
        fig.savefig(dest, dpi=100)
        plt.close(fig)
        per_sample.append(dest)
    n = len(sample_ids)
    fig, axes = plt.subplots(n, 5, figsize=(7.5, 1.75 * n), squeeze=False)
    for i in range(n):
        _draw_row(axes[i], x[i], attr_given[i], attr_suggested[i], cf_given[i], cf_suggested[i],
                  {"titles": titles[i], "row": rows[i]})
    fig.tight_layout()
    grid = out_dir / "grid.png"
    fig.savefig(grid, dpi=80)
    plt.close(fig)
    return per_sample, grid


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def checks_markdown(checks: pd.DataFrame) -> str:
    """The ``explain_checks`` rows of one run as Markdown (one table per check)."""
    lines = []
    for check, (title, what) in CHECKS.items():
        rows = checks[checks["method"] == check]
        lines += [f"#### {title}", "", f"_{what}_", ""]
        if rows.empty:
            lines += ["not run (`winnow explain RUN_ID --edda` runs it)" if check == "edda" else "not run", ""]
            continue
        lines += ["| figure | value |", "|---|---|"]
        lines += [f"| {r.name} | {_fmt(r.value)} |" for r in rows.itertuples(index=False)]
        lines.append("")
    return "\n".join(lines)


def _png_b64(path: str | Path) -> str | None:
    p = Path(path)
    return base64.b64encode(p.read_bytes()).decode() if p.is_file() else None


def _read(table: str, run_id: str) -> pd.DataFrame:
    from . import lake

    folder = lake.paths().lake / table
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return pd.DataFrame()
    con = lake.connect()
    try:
        return con.execute(f'SELECT * FROM "{table}" WHERE run_id = ?', [run_id]).df()
    finally:
        con.close()


def explain_section_html(run_id: str) -> str:
    """An HTML fragment with a run's flagged samples' explanations and the three checks.

    Reads the lake tables ``explanations`` and ``explain_checks`` for ``run_id`` (the lake run id)
    and inlines each sample's 5-panel PNG as base64, so the fragment is self-contained. Writes
    nothing.

    Parameters
    ----------
    run_id : str

    Returns
    -------
    str
        ``<section id="explanations">...</section>``; when the run has no explanations, a section
        that says so and names the command that makes them.
    """
    rid = html.escape(str(run_id))
    rows, checks = _read("explanations", run_id), _read("explain_checks", run_id)
    head = "<section id='explanations' class='explain'><h2>Why the model disagrees with the label</h2>"
    if rows.empty:
        return (f"{head}<p>No explanations for run <code>{rid}</code> yet: run "
                f"<code>winnow explain {rid}</code>.</p></section>")
    rows = rows.sort_values("rank")
    first = rows.iloc[0]
    intro = (f"<p class='meta'>Top {len(rows)} samples by <code>{html.escape(str(first['scorer']))}</code> score; "
             f"baseline <code>{html.escape(str(first['baseline']))}</code>. Panels: "
             f"{' | '.join(html.escape(p) for p in PANELS)} (IG: red supports the label, blue opposes it; "
             f"CF = the VAE counterfactual that the model calls that label).</p>")
    check_parts = []
    for check, (title, what) in CHECKS.items():
        sub = checks[checks["method"] == check] if not checks.empty else checks
        if sub.empty:
            body = "<p>not run" + (" (<code>--edda</code>)" if check == "edda" else "") + "</p>"
        else:
            body = "<table>" + "".join(
                f"<tr><th>{html.escape(str(r.name))}</th><td>{html.escape(_fmt(r.value))}</td></tr>"
                for r in sub.itertuples(index=False)) + "</table>"
        check_parts.append(f"<div class='explain-check' data-check='{check}'><h3>{html.escape(title)}</h3>"
                           f"<p class='meta'>{html.escape(what)}</p>{body}</div>")
    samples = []
    for r in rows.itertuples(index=False):
        b64 = _png_b64(r.image_path)
        img = (f"<img alt='explanation of sample {html.escape(str(r.sample_id))}' style='max-width:100%' "
               f"src='data:image/png;base64,{b64}'/>" if b64 else "<p>(image missing)</p>")
        cf = lambda ok: "reached" if ok else "not reached"  # noqa: E731
        steps = lambda n: f"at {n} steps" if n > 0 else "(tolerance not met)"  # noqa: E731
        samples.append(
            f"<figure class='explain-sample' data-sample-id='{html.escape(str(r.sample_id))}'>{img}"
            f"<figcaption><b>#{int(r.rank)} · {html.escape(str(r.sample_id))}</b>: given "
            f"<span class='given'>{html.escape(str(r.given_class))}</span>, suggested "
            f"<span class='suggested'>{html.escape(str(r.suggested_class))}</span> "
            f"(p = {r.p_suggested:.2f}); IG gaps {_fmt(r.ig_gap_given)} / {_fmt(r.ig_gap_suggested)} "
            f"{steps(int(r.ig_steps))}; counterfactual → given {cf(r.cf_given_success)} "
            f"(latent {_fmt(r.cf_given_latent_distance)}), → suggested {cf(r.cf_suggested_success)}"
            f"</figcaption></figure>")
    return (f"{head}{intro}<div class='explain-checks'>{''.join(check_parts)}</div>"
            f"<div class='explain-samples'>{''.join(samples)}</div></section>")
