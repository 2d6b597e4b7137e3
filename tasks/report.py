"""The review report: one self-contained HTML page per run (images inlined as base64 PNG), so it
opens from disk, from an MLflow artifact or from a CI log alike.

It shows the gate verdict, summary plots, and each flagged sample as a thumbnail with its given
and suggested labels and its rank under every scorer.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from .validation import CheckReport


def png_bytes(image: np.ndarray, size: int = 96) -> bytes:
    """A (C, H, W) or (H, W) image in [0, 1] as PNG bytes, upscaled without smoothing to about
    ``size`` pixels on its longer side (an integer factor, so pixels stay square)."""
    from PIL import Image

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr)
    scale = max(1, size // max(arr.shape[:2]))
    pil = pil.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def png_b64(image: np.ndarray, size: int = 96) -> str:
    """:func:`png_bytes` as base64 (for pages that inline their images)."""
    return base64.b64encode(png_bytes(image, size)).decode()


def summary_plot(scores: dict[str, np.ndarray], flagged: np.ndarray, given: np.ndarray, class_names: list[str],
                 planted: np.ndarray | None = None) -> str:
    """Score distributions (flagged vs. not, canaries marked) and flags per given class, as base64 PNG."""
    from .plots import plt  # Agg backend set there

    names = sorted(scores)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2))
    for ax, name in zip(axes, names):
        s = scores[name]
        bins = np.histogram_bin_edges(s, bins=30)
        ax.hist(s[~flagged], bins=bins, alpha=0.6, label="not flagged")
        ax.hist(s[flagged], bins=bins, alpha=0.8, label="flagged")
        if planted is not None and planted.any():
            ax.plot(s[planted], np.zeros(planted.sum()), "v", color="crimson", label="canary")
        ax.set_title(f"{name} score")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax = axes[-1]
    counts = np.bincount(given[flagged], minlength=len(class_names))
    ax.bar(range(len(counts)), counts)
    ax.set_xticks(range(len(counts)), [class_names[i] if i < len(class_names) else str(i) for i in range(len(counts))],
                  fontsize=7)
    ax.set_title("flagged per given label")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _gate_html(reports: list[CheckReport]) -> str:
    parts = []
    for r in reports:
        rows = "".join(
            f"<tr class='{'ok' if d['success'] else 'bad'}'><td>{html.escape(d['expectation'])}</td>"
            f"<td>{html.escape(str(d.get('column') or ''))}</td><td>{'yes' if d['success'] else 'NO'}</td>"
            f"<td>{html.escape(str(d['observed']))}</td></tr>" for d in r.results)
        extra = "".join(f"<li>{html.escape(f)}</li>" for f in r.failures)
        parts.append(f"<h3>suite <code>{html.escape(r.suite)}</code>: {'passed' if r.success else 'FAILED'}</h3>"
                     f"<table><tr><th>expectation</th><th>column</th><th>ok</th><th>observed</th></tr>{rows}</table>"
                     + (f"<ul class='failures'>{extra}</ul>" if extra else ""))
    return "".join(parts)


CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin:0 0 .2em} .meta{color:#555;font-size:.9em}
.verdict{display:inline-block;padding:.3em .8em;border-radius:4px;font-weight:bold;color:#fff}
.pass{background:#2e7d32} .fail{background:#c62828}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em} td,th{border:1px solid #ccc;padding:2px 6px}
tr.bad td{background:#fde0e0}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ccc;border-radius:6px;padding:6px;width:150px;font-size:.8em;text-align:center}
.card img{image-rendering:pixelated;width:96px;height:96px}
.given{color:#c62828} .suggested{color:#2e7d32}
"""


def render(run_id: str, title: str, verdict_passed: bool, verdict_line: str, reports: list[CheckReport],
           flagged: pd.DataFrame, images: np.ndarray, figures: dict[str, float | str], plot_b64: str | None,
           scorer_names: list[str], review: tuple[str, str] | None = None) -> str:
    """The report page.

    Parameters
    ----------
    flagged : DataFrame
        One row per flagged sample: sample_id, given_class, suggested_class, score and
        ``rank_<scorer>`` for each scorer (1 = most suspicious).
    images : shape (len(flagged), C, H, W)
        Their pixels, in the same order.
    figures : dict
        Headline figures (noise rate, flagged fraction, canary recall, accuracies, ...).
    review : (url, command), optional
        Where the review page of these samples is served, and the command that serves it.
    """
    cards = []
    for (_, row), img in zip(flagged.iterrows(), images):
        ranks = " · ".join(f"{s} #{int(row[f'rank_{s}'])}" for s in scorer_names if f"rank_{s}" in row)
        cards.append(
            f"<div class='card' data-sample-id='{html.escape(str(row['sample_id']))}'>"
            f"<img alt='sample {html.escape(str(row['sample_id']))}' src='data:image/png;base64,{png_b64(img)}'/>"
            f"<div><b>{html.escape(str(row['sample_id']))}</b></div>"
            f"<div>given <span class='given'>{html.escape(str(row['given_class']))}</span> → suggested "
            f"<span class='suggested'>{html.escape(str(row['suggested_class']))}</span></div>"
            f"<div class='ranks'>{html.escape(ranks)}</div></div>")
    fig_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v if isinstance(v, str) else f'{v:.4g}')}</td></tr>"
                       for k, v in figures.items())
    plot = f"<img alt='summary plots' src='data:image/png;base64,{plot_b64}'/>" if plot_b64 else ""
    review_p = (f"<p id='review-link'>Decide in the browser: <a href='{html.escape(review[0])}'>"
                f"{html.escape(review[0])}</a> (served by <code>{html.escape(review[1])}</code>)</p>") if review else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>winnow review · {html.escape(run_id)}</title><style>{CSS}</style></head>
<body>
<h1>winnow review report</h1>
<div class="meta">{html.escape(title)} · run <code>{html.escape(run_id)}</code></div>
<p><span id="verdict" class="verdict {'pass' if verdict_passed else 'fail'}">{'GATE PASSED' if verdict_passed else 'GATE FAILED'}</span>
 {html.escape(verdict_line)}</p>
<h2>Figures</h2><table id="figures">{fig_rows}</table>
<h2>Summary plots</h2>{plot}
<h2 id="flagged-title">Flagged samples ({len(cards)})</h2>{review_p}
<div class="grid" id="flagged">{''.join(cards) or '<p>none flagged</p>'}</div>
<h2>Release gate (Great Expectations)</h2>{_gate_html(reports)}
</body></html>
"""


EXPLAIN_MARK = ("<!-- winnow:explain -->", "<!-- /winnow:explain -->")


def with_explanations(page: str, section_html: str) -> str:
    """The page with the explain flow's section before ``</body>``, replacing an earlier one
    (explaining a run again must not stack sections)."""
    start, end = EXPLAIN_MARK
    if start in page and end in page:
        page = page[:page.index(start)] + page[page.index(end) + len(end):]
    if "</body>" not in page:
        raise ValueError("not a report page: no </body>")
    i = page.rindex("</body>")
    return page[:i] + f"{start}<h2 id='why-flagged'>Why they were flagged</h2>{section_html}{end}\n" + page[i:]


def write(dest: Path, page: str) -> Path:
    """Write the page atomically (a reader never sees half a report)."""
    from .artifacts import atomic_write_bytes

    return atomic_write_bytes(page.encode(), dest)
