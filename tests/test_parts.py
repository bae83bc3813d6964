"""free_run part events: one reject per bad part, carrying its best frame."""

from __future__ import annotations

import numpy as np

from edged.frames import Frame, Verdict
from edged.parts import FreeRunGrouper


def verdict(seq: int, t: float, score: float, threshold: float = 1.0) -> Verdict:
    f = Frame("c", seq, np.zeros((1, 1), np.uint8), t, 1000 + t)
    return Verdict(f, score, threshold, score > threshold, t + 0.01, 1000 + t, "m")


def run(grouper: FreeRunGrouper, scores: list[float], period: float = 0.033) -> list[tuple[int, int, int]]:
    events = []
    for i, s in enumerate(scores):
        events += grouper.feed(verdict(i, i * period, s))
    events += grouper.flush()
    return [(e.first.frame.seq, e.best.frame.seq, e.frames) for e in events]


def test_consecutive_defective_frames_are_one_part_with_the_best_frame() -> None:
    scores = [0, 0, 2, 3, 2.5, 0, 0, 0]
    assert run(FreeRunGrouper("c", gap_ms=100), scores) == [(2, 3, 3)]


def test_two_separate_parts_give_two_events() -> None:
    scores = [0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 4, 0]
    assert run(FreeRunGrouper("c", gap_ms=100), scores) == [(1, 1, 2), (10, 10, 1)]


def test_a_short_good_gap_inside_a_part_does_not_split_it() -> None:
    scores = [2, 0, 3, 0, 0, 0, 0, 0]
    assert run(FreeRunGrouper("c", gap_ms=100), scores) == [(0, 2, 2)]


def test_gap_zero_rejects_every_defective_frame_at_once() -> None:
    g = FreeRunGrouper("c", gap_ms=0)
    assert len(g.feed(verdict(0, 0.0, 2))) == 1
    assert len(g.feed(verdict(1, 0.03, 2))) == 1
    assert g.open is None


def test_tick_closes_an_idle_event() -> None:
    g = FreeRunGrouper("c", gap_ms=100)
    assert g.feed(verdict(0, 0.0, 2)) == []
    assert g.tick(0.05) == []
    assert len(g.tick(0.2)) == 1
