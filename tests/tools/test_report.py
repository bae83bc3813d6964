"""The report's figures are readable: text size on the page, legends that hide nothing, colour scales."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from tools import report


@dataclass
class Rec:
    label: str

    @property
    def is_good(self) -> bool:
        return self.label == "good"


def _data(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[Rec]]:
    rng = np.random.default_rng(seed)
    records = [Rec("good")] * n + [Rec("scratch")] * (n // 2) + [Rec("spot")] * (n // 2)
    labels = np.asarray([0 if r.is_good else 1 for r in records])
    scores = np.r_[rng.normal(1.0, 0.2, n), rng.normal(1.5, 0.3, n)]  # overlapping on purpose
    return labels, scores, records


def _texts_px(fig: Figure) -> list[tuple[str, float]]:
    """(text, height in screen pixels on the report page) of every visible text of a figure."""
    width_px = fig.get_figwidth() * fig.dpi
    shrink = min(1.0, report.PAGE_WIDTH_PX / width_px)
    out = []
    for t in fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text")):
        assert isinstance(t, Text), t  # what has a font size and a text is a Text (or an Annotation)
        if t.get_visible() and t.get_text().strip():
            out.append((t.get_text(), float(t.get_fontsize()) * fig.dpi / 72 * shrink))
    return out


def _robustness_report() -> dict[str, object]:
    return {"frr": 0.0, "recall": 1.0, "robustness": {
        "strong light": {"frr": 1.0, "recall": 1.0}, "blur": {"frr": 0.0, "recall": 0.92},
        "noise": {"frr": None, "recall": 1.0}}}


def _examples() -> tuple[Figure, int]:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(6)]
    maps = [rng.random((32, 32)).astype(np.float32) for _ in range(6)]
    records = [Rec("good")] * 3 + [Rec("spot")] * 3
    scores = np.asarray([0.1, 0.2, 0.9, 0.8, 0.3, 0.95])
    picks = report.pick_examples(np.asarray([0, 0, 0, 1, 1, 1]), scores)
    return report.examples_figure(picks, images, records, scores, maps, None, 0.5, 0.9), len(picks)


@pytest.mark.parametrize("which", ["examples", "histogram", "robustness"])
def test_every_text_is_readable_on_the_page(which: str) -> None:
    labels, scores, records = _data()
    fig = (_examples()[0] if which == "examples" else
           report.histogram_figure(labels, scores, records, {"threshold": 1.4}) if which == "histogram" else
           report.robustness_figure(_robustness_report()))
    fig.canvas.draw()
    small = [(t, round(px, 1)) for t, px in _texts_px(fig) if px < report.MIN_TEXT_PX]
    assert not small, small
    assert fig.get_figwidth() * fig.dpi <= report.PAGE_WIDTH_PX


def test_every_anomaly_map_has_a_colour_scale() -> None:
    fig, n = _examples()
    maps = [a for a in fig.axes if a.get_title() == "anomaly map"]
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    assert len(maps) == n == len(bars)


def test_robustness_legend_hides_no_bar() -> None:
    fig: Figure = report.robustness_figure(_robustness_report())
    fig.canvas.draw()
    ax = fig.axes[0]
    legend_box = ax.get_legend()
    assert legend_box is not None and all(isinstance(p, Rectangle) for p in ax.patches)
    legend = legend_box.get_window_extent()
    bars = [p.get_window_extent() for p in ax.patches
            if isinstance(p, Rectangle) and np.isfinite(p.get_height()) and p.get_height() > 0]
    assert len(bars) == 5 and not [b for b in bars if b.overlaps(legend)]
    assert {t.get_text() for t in ax.texts} >= {"100", "0", "92"}  # values written, a 0 bar visible too


def test_histogram_legend_names_the_overlap_colour() -> None:
    labels, scores, records = _data()
    legend = report.histogram_figure(labels, scores, records, {"threshold": 1.4}).axes[0].get_legend()
    entries = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles, strict=True))
    overlap = entries["good and defective overlap"]
    expected = report.blend(("white", 1.0), (report.GOOD_COLOR, report.GOOD_ALPHA), (report.BAD_COLOR,
                                                                                      report.BAD_ALPHA))
    assert overlap.get_facecolor()[:3] == pytest.approx(expected)
    apart = np.r_[scores[labels == 0] - 5, scores[labels == 1] + 5]
    legend = report.histogram_figure(labels, apart, records, {"threshold": 1.4}).axes[0].get_legend()
    assert "good and defective overlap" not in [t.get_text() for t in legend.get_texts()]
