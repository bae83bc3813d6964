"""free_run part events: one reject per bad part, carrying its best frame."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edged.frames import Frame, Verdict
from edged.parts import FreeRunGrouper


def verdict(seq: int, t: float, score: float, threshold: float = 1.0) -> Verdict:
    f = Frame("c", seq, np.zeros((1, 1), np.uint8), t, 1000 + t)
    return Verdict(f, score, threshold, score > threshold, t + 0.01, 1000 + t, "m")


def run(grouper: FreeRunGrouper, scores: Sequence[float], period: float = 0.033) -> list[tuple[int, int, int]]:
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


def test_defects_that_never_pause_close_the_part_at_its_maximum_length() -> None:
    """Defective frames closer than gap_ms without end (a stuck part): still one reject per max_part_ms,
    and the open part never holds more than max_part_frames frames."""
    g = FreeRunGrouper("c", gap_ms=500, max_part_ms=1000, max_part_frames=10_000)
    events = []
    for i in range(300):  # 10 s at 30 fps, every frame defective
        events += g.feed(verdict(i, i * 0.033, 2 + (i % 7)))
        assert g.open is None or g.open.frames <= 31
    assert len(events) == 9 and all(e.capped for e in events)
    assert all(0.95 <= e.last_defect_mono - e.first.frame.captured_mono < 1.05 for e in events)
    assert events[1].first.frame.seq == round(events[0].last_defect_mono / 0.033) + 1  # the next frame opens a part
    assert events[0].last_captured_at == 1000 + events[0].last_defect_mono


def test_max_part_frames_closes_a_part_too() -> None:
    g = FreeRunGrouper("c", gap_ms=500, max_part_ms=60_000, max_part_frames=5)
    events = [e for i in range(12) for e in g.feed(verdict(i, i * 0.033, 2))]
    assert [(e.first.frame.seq, e.frames) for e in events] == [(0, 5), (5, 5)]
    assert g.open is not None and g.open.frames == 2
    short = FreeRunGrouper("c", gap_ms=100, max_part_ms=1000, max_part_frames=5)
    assert run(short, [2, 3, 0, 0, 0, 0, 0]) == [(0, 1, 2)], "an ordinary part is not capped"


def test_a_capped_part_is_rejected_by_the_daemon_with_a_deadline_from_its_last_frame(tmp_path: Path,
                                                                                   tiny_bundle: Path) -> None:
    """Through the real pipeline: 12 defective images, gap_ms far longer than the run, 5 frames at most
    per part: three rejects (two capped, the rest at the end), each still actionable when made."""
    import cv2

    from devkit.support import spot_frame, write_config
    from edged.config import load_config
    from edged.payloads import Reject
    from edged.sdnotify import Notifier
    from edged.service import Service

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:02d}.png"), spot_frame(True, seed=i))
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, folder, tmp_path / "state")
    cfg.write_text(cfg.read_text().replace("trigger: {gap_ms: 0}", "trigger: {gap_ms: 60000, max_part_frames: 5}"))
    service = Service(load_config(cfg), notifier=Notifier({}), handle_signals=False)
    assert service.run() == 0
    assert service.counters.rejects == 3 and service.counters.parts == 3
    g = FreeRunGrouper("c", gap_ms=500, max_part_ms=1000)
    capped = next(e for i in range(40) for e in g.feed(verdict(i, i * 0.033, 2)))
    payload = Reject.for_part(capped, "u", "s", 2000.0, None).to_dict()
    assert payload["expires_at"] == round(capped.last_captured_at + 2.0, 6) > capped.first.frame.captured_at + 2.0


def _frame(seq: int, at: float) -> Frame:
    return Frame("c", seq, np.zeros((1, 1), np.uint8), at, at)


def test_gate_never_gives_a_trigger_a_frame_after_its_own_was_discarded() -> None:
    import time

    from edged.parts import Trigger, TriggerGate

    gate = TriggerGate(keep_s=1.0)
    now = time.time()
    for i in range(40):  # frames of the last 4 s at 10 fps: those older than 1 s are discarded
        gate.offer(_frame(i, now - 4.0 + i * 0.1))
    late = Trigger("late", "c", now - 3.0, now + 1.0, now)  # its frame went 2 s ago
    fresh = Trigger("fresh", "c", now - 0.45, now + 1.0, now)
    gate.inbox.put(late)
    gate.inbox.put(fresh)
    chosen = gate.offer(None)
    assert [(f.part_id, f.seq) for f in chosen] == [("fresh", 36)]  # the frame at or after its due time
    assert gate.offer(None) == []  # and the late one is let go (the recorder reports it not_inspected)


def test_gate_lets_triggers_go_at_their_deadline_even_without_frames() -> None:
    import time

    from edged.parts import Trigger, TriggerGate

    gate = TriggerGate()
    now = time.time()
    for i in range(500):
        gate.inbox.put(Trigger(f"p{i}", "c", now + 60, now - 0.001 if i % 2 else now + 60, now))
    assert gate.offer(None) == []
    assert len(gate._pending) == 250  # the expired half is gone, with no frame ever captured
    assert gate.inbox.maxsize == TriggerGate.INBOX_MAX


def test_joined_is_the_part_of_each_defective_frame_fed() -> None:
    """The recorder names each defective row after its part: `joined` after every feed, None for a good frame,
    the part itself for a frame that closed it by a cap (gap 0: every defect its own part)."""
    grouper = FreeRunGrouper("c", gap_ms=100)
    joined = []
    for i, s in enumerate([0.1, 2.0, 3.0, 0.1, 0.1, 0.1, 0.1, 0.1, 2.0]):
        grouper.feed(verdict(i, i * 0.033, s))
        joined.append(grouper.joined.part_id if grouper.joined is not None else None)
    assert joined == [None, "c-1", "c-1", None, None, None, None, None, "c-8"]
    single = FreeRunGrouper("c", gap_ms=0)
    closed = single.feed(verdict(5, 0.0, 2.0))
    assert single.joined is closed[0] and single.joined.part_id == "c-5"
