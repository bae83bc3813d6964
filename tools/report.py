"""The evaluation report: report.json for machines, report.html / report.md with plots for people.

Plots (matplotlib, Agg backend, PNG next to the report): ROC curve with the bundle's operating point,
score histograms of good vs defective parts with the threshold line, a grid of example images (the
strongest detections, the misses, the false rejects, typical good parts) with their anomaly maps, and
for ``--robustness`` the false-reject rate and recall under each perturbation, and the false rejects among the
good images the daemon's input health would let pass.

Readability rules every figure follows (tests/tools/test_report.py checks them): no figure is wider
than the page (`PAGE_WIDTH_PX`), so the browser never shrinks it and text stays at least
`MIN_TEXT_PX` tall; legends sit outside the plotting area, where they cannot hide a bar; the colour
of overlapping histograms has its own legend entry; every anomaly map has its colour scale.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GOOD_COLOR = "#2e7d32"
BAD_COLOR = "#c62828"
GOOD_ALPHA, BAD_ALPHA = 0.55, 0.45
DPI = 100
PAGE_WIDTH_PX = 1100  # the report page's width (css max-width): figures up to this are shown 1:1
MIN_TEXT_PX = 12  # smallest text on a figure, in screen pixels
FONT_PT = 10  # 13.9 px at DPI 100
SMALL_PT = 9  # 12.5 px: legends, tick labels, captions


def write_json(path: Path, report: dict[str, Any]) -> None:
    """report.json: the report as returned by `evaluate_bundle` (already plain JSON types), indented."""
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": FONT_PT, "axes.titlesize": FONT_PT + 1, "figure.dpi": DPI,
                         "savefig.dpi": DPI, "legend.fontsize": SMALL_PT, "xtick.labelsize": SMALL_PT,
                         "ytick.labelsize": SMALL_PT})
    return plt


def _save(fig: Any, path: Path) -> None:
    plt = _plt()
    fig.savefig(path)
    plt.close(fig)


def blend(*layers: tuple[str, float]) -> tuple[float, float, float]:
    """The colour bars of (colour, alpha) drawn in this order show on white (what overlapping bars look like)."""
    from matplotlib.colors import to_rgb

    out = np.ones(3)
    for color, alpha in layers:
        out = (1 - alpha) * out + alpha * np.asarray(to_rgb(color))
    return (float(out[0]), float(out[1]), float(out[2]))


def _plot_roc(path: Path, labels: np.ndarray, scores: np.ndarray, report: dict[str, Any]) -> bool:
    """roc.png with the bundle's operating point; False (nothing written) without both good and defective images."""
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return False
    plt = _plt()
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    ax.plot(fpr, tpr, color="#1565c0", lw=2, label=f"ROC (image AUROC {report['image_auroc']:.3f})")
    ax.plot([0, 1], [0, 1], color="#999", lw=1, ls=":", label="chance")
    ax.axvline(0.01, color="#777", lw=1, ls="--", label=f"1% false rejects: recall {report['recall_at_1pct_frr']:.2f}")
    if report["frr"] is not None and report["recall"] is not None:
        ax.plot([report["frr"]], [report["recall"]], "o", color=BAD_COLOR, ms=8,
                label=f"bundle threshold: FRR {100 * report['frr']:.1f}%, recall {100 * report['recall']:.1f}%")
    ax.set_xlabel("false-reject rate (good parts rejected)")
    ax.set_ylabel("recall (defective parts rejected)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{report['method']} ({report['precision']})")
    fig.tight_layout()
    _save(fig, path)
    return True


def histogram_figure(labels: np.ndarray, scores: np.ndarray, records: Sequence[Any], report: dict[str, Any]) -> Any:
    """Good and defective score histograms, the threshold, and a legend entry for where they overlap."""
    from matplotlib.patches import Patch

    plt = _plt()
    fig, ax = plt.subplots(figsize=(10.5, 4.6))
    lo, hi = float(np.min(scores)), float(np.max(scores))
    thr = float(report["threshold"])
    lo, hi = min(lo, thr), max(hi, thr)
    pad = 0.03 * (hi - lo or 1.0)
    bins = np.linspace(lo - pad, hi + pad, int(np.clip(2 * np.sqrt(len(scores)), 10, 60)) + 1)
    good = scores[labels == 0]
    n_good, _, _ = ax.hist(good, bins=bins, color=GOOD_COLOR, alpha=GOOD_ALPHA, label=f"good (n={len(good)})")
    defect_types = sorted({r.label for r in records if not r.is_good})
    if defect_types:
        bad = scores[labels == 1]
        n_bad, _, _ = ax.hist(bad, bins=bins, color=BAD_COLOR, alpha=BAD_ALPHA,
                              label=f"defective, all types (n={len(bad)})")
        if np.any((np.asarray(n_good) > 0) & (np.asarray(n_bad) > 0)):
            overlap = Patch(facecolor=blend(("white", 1.0), (GOOD_COLOR, GOOD_ALPHA), (BAD_COLOR, BAD_ALPHA)),
                            label="good and defective overlap")
        else:
            overlap = None
        if len(defect_types) > 1:
            cmap = plt.get_cmap("tab10")
            for k, t in enumerate(defect_types):
                sel = np.asarray([r.label == t for r in records])
                ax.hist(scores[sel], bins=bins, histtype="step", lw=1.4, color=cmap(k % 10), label=f"{t} (outline)")
    else:
        overlap = None
    ax.axvline(thr, color="black", ls="--", lw=1.5, label=f"threshold {thr:.4g}")
    ax.set_xlabel("anomaly score (higher = more anomalous); rejected when score > threshold")
    ax.set_ylabel("images")
    ax.yaxis.get_major_locator().set_params(integer=True)
    handles, names = ax.get_legend_handles_labels()
    if overlap is not None:
        handles.insert(2, overlap)
        names.insert(2, overlap.get_label())
    ax.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("score distribution: good vs defective")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


SHOWN_AS = {"highest defect": "highest-scoring", "lowest defect": "lowest-scoring", "highest good": "highest-scoring",
            "typical good": "typical"}


def pick_examples(labels: np.ndarray, scores: np.ndarray, n: int = 12) -> list[tuple[int, str]]:
    """(index, why) of instructive images: best and worst defects, closest good calls, typical good parts."""
    picks: list[tuple[int, str]] = []
    seen: set[int] = set()

    def take(indices: Sequence[int], why: str, k: int) -> None:
        for i in indices:
            if len([p for p in picks if p[1] == why]) >= k or len(picks) >= n:
                return
            if int(i) not in seen:
                seen.add(int(i))
                picks.append((int(i), why))

    bad = np.nonzero(labels == 1)[0]
    good = np.nonzero(labels == 0)[0]
    by_score_bad = list(bad[np.argsort(-scores[bad], kind="stable")])
    by_score_good = list(good[np.argsort(-scores[good], kind="stable")])
    typical = list(good[np.argsort(np.abs(scores[good] - np.median(scores[good])), kind="stable")]) if len(good) else []
    take(by_score_bad, "highest defect", 4)  # what the model finds best (detected or not: see the title colour)
    take(by_score_bad[::-1], "lowest defect", 3)  # what it misses first
    take(by_score_good, "highest good", 2)  # the false rejects, or the closest calls
    take(typical, "typical good", 3)
    take(by_score_bad, "highest defect", n)
    return picks


EXAMPLES_PER_ROW = 2  # image + map + colour scale each: 2 per row keep the figure at page width


def examples_figure(picks: list[tuple[int, str]], images: Sequence[np.ndarray], records: Sequence[Any],
                    scores: np.ndarray, maps: Sequence[np.ndarray] | None, masks: Sequence[np.ndarray] | None,
                    threshold: float, map_threshold: float | None) -> Any:
    """Example images with their anomaly maps, each map with its colour scale (one scale for all)."""
    plt = _plt()
    per_row = EXAMPLES_PER_ROW if maps is not None else 4
    panels = 2 if maps is not None else 1
    rows = max(1, int(np.ceil(len(picks) / per_row)))
    width = (PAGE_WIDTH_PX - 20) / DPI  # the page's width less the image border and a margin
    fig, axes = plt.subplots(rows, per_row * panels, figsize=(width, 3.1 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    vmin = vmax = None
    if maps is not None:
        shown = np.concatenate([maps[i].ravel() for i, _ in picks]) if picks else np.zeros(1)
        vmin = float(np.percentile(shown, 1))
        vmax = float(max(np.percentile(shown, 99.9), map_threshold or -np.inf, vmin + 1e-9))
    for k, (i, why) in enumerate(picks):
        r, c = divmod(k, per_row)
        image = images[i]
        target = maps[i].shape[::-1] if maps is not None else (160, int(160 * image.shape[0] / image.shape[1]))
        shown_image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
        if shown_image.ndim == 3:
            shown_image = cv2.cvtColor(shown_image[:, :, :3], cv2.COLOR_BGR2RGB)
        verdict = "REJECT" if scores[i] > threshold else "pass"
        correct = (scores[i] > threshold) == (not records[i].is_good)
        ax = axes[r, c * panels]
        ax.imshow(shown_image, cmap="gray" if shown_image.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(f"{records[i].label} · {SHOWN_AS.get(why, why)}\nscore {scores[i]:.4g} → {verdict}",
                     fontsize=FONT_PT, color=GOOD_COLOR if correct else BAD_COLOR)
        if maps is not None:
            ax = axes[r, c * panels + 1]
            shown_map = ax.imshow(maps[i], cmap="inferno", vmin=vmin, vmax=vmax)
            if masks is not None and masks[i].any():
                ax.contour(masks[i].astype(float), levels=[0.5], colors=["lime"], linewidths=1.0)
            if map_threshold is not None and (maps[i] > map_threshold).any():
                ax.contour((maps[i] > map_threshold).astype(float), levels=[0.5], colors=["cyan"], linewidths=1.0)
            ax.set_title("anomaly map", fontsize=FONT_PT)
            bar = fig.colorbar(shown_map, ax=ax, fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=SMALL_PT)
            if map_threshold is not None and vmin is not None and vmin <= map_threshold <= (vmax or map_threshold):
                bar.ax.axhline(map_threshold, color="cyan", lw=1.5)
    legend = "title green: correct verdict, red: wrong"
    if maps is not None:
        legend += ("\nmap: lime outline = true defect, cyan = above the map threshold (cyan line on the colour "
                   "scale)")
    fig.suptitle(legend, fontsize=FONT_PT)
    fig.tight_layout()
    return fig


def _input_cell(verdict: Any) -> str:
    """The daemon's input-health verdict on a condition's good images: 'flagged 95% (too_dark)', '-' when not run."""
    from tools.input_check import describe

    return describe(verdict) if isinstance(verdict, dict) else "-"


def robustness_figure(report: dict[str, Any]) -> Any:
    """False rejects and recall per perturbation; values written on the bars, the legend beside the axes."""
    plt = _plt()
    rob = report["robustness"]
    names = ["none", *rob.keys()]
    frr = [report["frr"], *[v["frr"] for v in rob.values()]]
    rec = [report["recall"], *[v["recall"] for v in rob.values()]]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10.5, 4.8))
    for offset, values, color, label in ((-0.2, frr, BAD_COLOR, "false rejects (good)"),
                                         (0.2, rec, "#1565c0", "recall (defects)")):
        heights = [np.nan if v is None else 100 * v for v in values]
        bars = ax.bar(x + offset, heights, 0.4, color=color, label=label)
        ax.bar_label(bars, labels=["" if v is None else f"{100 * v:.0f}" for v in values], fontsize=SMALL_PT,
                     padding=1)
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylabel("% of images")
    ax.set_ylim(0, 110)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("robustness at the bundle threshold")
    fig.tight_layout()
    return fig


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}" if abs(v) >= 0.001 or v == 0 else f"{v:.3g}"
    return html.escape(str(v))


def _summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, HTML-escaped value) rows of the summary table, shared by report.md and report.html."""
    t = report["threshold_info"]
    how = (f"{t['method']} {t['percentile'] if t['method'] == 'percentile' else t['target_frr']} of "
           f"{t['n_images']} good images ({t['source']})")
    return [
        ("bundle", f"{report['bundle_id']} ({report['method']}, {report['precision']}: {report['model_file']}, "
                   f"input {report['input']})"),
        ("data", f"{report['data']} ({report['evaluated_on']}): {report['n_good']} good, "
                 f"{report['n_defect']} defective"),
        ("image AUROC", _fmt(report["image_auroc"])),
        ("pixel AUROC", _fmt(report["pixel_auroc"])),
        ("AUPRO (FPR ≤ 30%)", _fmt(report["aupro"])),
        ("threshold", f"{_fmt(report['threshold'])} — {how}"),
        ("false-reject rate (good)", _fmt(report["frr"], pct=True)),
        ("recall (defective)", _fmt(report["recall"], pct=True)),
        ("recall at 1% false rejects", _fmt(report["recall_at_1pct_frr"], pct=True)),
        ("ms / image fp32 · int8", f"{_fmt(report['ms_per_image_fp32'])} · {_fmt(report['ms_per_image_int8'])} "
                                   f"(median over {report['timing']['images']} images, 1 thread, preprocessing "
                                   f"included)"),
    ]


def write_report(report_dir: Path, report: dict[str, Any], images: Sequence[np.ndarray], records: Sequence[Any],
                 scores: np.ndarray, maps: Sequence[np.ndarray] | None, masks: Sequence[np.ndarray] | None,
                 ) -> Path:
    """report.md, report.html and their PNG plots in `report_dir` (which must exist); the HTML file's path.

    `images`, `records`, `scores` and `maps`/`masks` (at the model's size, or None) are in one order, that
    of the report's evaluation."""
    labels = np.asarray([0 if r.is_good else 1 for r in records])
    plots: list[tuple[str, str]] = []
    if _plot_roc(report_dir / "roc.png", labels, scores, report):
        plots.append(("roc.png", "ROC curve"))
    _save(histogram_figure(labels, scores, records, report), report_dir / "histogram.png")
    plots.append(("histogram.png", "Score histograms"))
    picks = pick_examples(labels, scores)
    _save(examples_figure(picks, images, records, scores, maps, masks, report["threshold"], report["map_threshold"]),
          report_dir / "examples.png")
    plots.append(("examples.png", "Examples"))
    if report.get("robustness"):
        _save(robustness_figure(report), report_dir / "robustness.png")
        plots.append(("robustness.png", "Robustness"))
    rows = _summary_rows(report)
    defects = report["recall_per_defect"]
    rob = report.get("robustness") or {}

    # Markdown (reads well in a terminal or a repository)
    md = [f"# Evaluation of {report['bundle_id']}", "", "| | |", "|---|---|"]
    md += [f"| {k} | {html.unescape(v)} |" for k, v in rows]
    if defects:
        md += ["", "## Recall per defect type at the bundle threshold", "", "| defect | images | recall |",
               "|---|---|---|"]
        md += [f"| {t} | {v['n']} | {_fmt(v['recall'], pct=True)} |" for t, v in defects.items()]
    health = report.get("input_health") or {}
    if rob:
        md += ["", "## Robustness (at the bundle threshold)", "",
               "| perturbation | false rejects | recall | image AUROC | false rejects among the good images input "
               "health passes | input health (good images) |",
               "|---|---|---|---|---|---|"]
        md += [f"| {k} | {_fmt(v['frr'], True)} | {_fmt(v['recall'], True)} | {_fmt(v['image_auroc'])} | "
               f"{_fmt(v.get('frr_unflagged'), True)} | {_input_cell(health.get(k))} |"
               for k, v in [("none", report), *rob.items()]]
    md += [""] + [f"## {title}\n\n![{title}]({file})\n" for file, title in plots]
    (report_dir / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    # HTML
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
           "th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}")
    body = [f"<h1>Evaluation of {html.escape(report['bundle_id'])}</h1>", "<table>"]
    body += [f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows]
    body.append("</table>")
    if defects:
        body.append("<h2>Recall per defect type at the bundle threshold</h2><table><tr><th>defect</th><th>images</th>"
                    "<th>recall</th></tr>")
        body += [f"<tr><td>{html.escape(t)}</td><td>{v['n']}</td><td>{_fmt(v['recall'], True)}</td></tr>"
                 for t, v in defects.items()]
        body.append("</table>")
    if rob:
        body.append("<h2>Robustness (at the bundle threshold)</h2><table><tr><th>perturbation</th>"
                    "<th>false rejects</th><th>recall</th><th>image AUROC</th><th>false rejects among the good "
                    "images input health passes</th><th>input health</th></tr>")
        body += [f"<tr><td>{html.escape(k)}</td><td>{_fmt(v['frr'], True)}</td><td>{_fmt(v['recall'], True)}</td>"
                 f"<td>{_fmt(v['image_auroc'])}</td><td>{_fmt(v.get('frr_unflagged'), True)}</td>"
                 f"<td>{html.escape(_input_cell(health.get(k)))}</td></tr>"
                 for k, v in [("none", report), *rob.items()]]
        body.append("</table>")
    for file, title in plots:
        body.append(f"<h2>{html.escape(title)}</h2><img src='{file}' alt='{html.escape(title)}'>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report['bundle_id'])}</title>"
            f"<style>{css}</style></head><body>{''.join(body)}</body></html>\n")
    out = report_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
