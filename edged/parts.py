"""Parts, not frames: turn a camera's verdict stream into part events, one reject per bad part.

`free_run`: a free-running camera sees a part in several consecutive frames. Defective frames closer
than `gap_ms` (capture time) to the previous defective frame belong to the same part event; the event
closes `gap_ms` after its last defective frame (or at once when `gap_ms` is 0) and yields ONE reject
carrying its best (highest-scoring) frame. A part is also closed once it has lasted `max_part_ms` from
its first defective frame or counted `max_part_frames` defective frames: defects that keep coming closer
than `gap_ms` (a stuck part, a dirty lens, a model that flags everything) would otherwise never give a
reject while the open part grew without end; the next defective frame starts a new part.
"""

from __future__ import annotations

import dataclasses
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass

from edged.frames import Frame, Verdict


@dataclass
class PartEvent:
    """One free-run part: a camera's defective frames closer than the gap; `best` (highest score) is rejected."""

    camera: str
    first: Verdict
    best: Verdict
    last_defect_mono: float
    frames: int = 1
    given_id: str | None = None  # from a trigger; else the event is named after its first frame
    capped: bool = False  # closed by max_part_ms / max_part_frames rather than by the gap
    last_captured_at: float = 0.0  # Unix time of its last defective frame (a capped reject's deadline runs from it)

    @property
    def part_id(self) -> str:
        """The part's id in messages: the trigger's, else `<camera>-<seq of its first frame>`; a frame the line's
        sensor triggered (GenICam line trigger) is its own part, `<camera>-<the camera's frame id>`."""
        stamp = self.first.frame.camera_stamp
        if stamp is not None and stamp.line_triggered:
            return self.given_id or f"{self.camera}-{stamp.frame_id}"
        return self.given_id or f"{self.camera}-{self.first.frame.seq}"


class FreeRunGrouper:
    """Per-camera state machine; feed verdicts in capture order, call `tick` to close idle events."""

    def __init__(self, camera: str, gap_ms: float, max_part_ms: float = 5000.0, max_part_frames: int = 300) -> None:
        self.camera = camera
        self.gap_s = gap_ms / 1000.0
        self.max_s = max_part_ms / 1000.0
        self.max_frames = max_part_frames
        self.open: PartEvent | None = None
        self.joined: PartEvent | None = None  # the part the last verdict fed belongs to (None: a good frame)

    def feed(self, verdict: Verdict) -> list[PartEvent]:
        """One verdict, in capture order; returns the parts it closes (by the gap, or by the part's caps).
        Afterwards `joined` is the defective verdict's part (its row carries the part's id)."""
        closed: list[PartEvent] = []
        self.joined = None
        t = verdict.frame.captured_mono
        if self.open is not None and t - self.open.last_defect_mono > self.gap_s:
            closed.append(self.open)
            self.open = None
        if verdict.is_defective:
            if self.open is None:
                self.open = PartEvent(self.camera, verdict, verdict, t, last_captured_at=verdict.frame.captured_at)
            else:
                self.open.frames += 1
                self.open.last_defect_mono = t
                self.open.last_captured_at = verdict.frame.captured_at
                if verdict.score > self.open.best.score:
                    self.open.best = verdict
            self.joined = self.open
            if self.gap_s <= 0 or self._full(self.open):
                self.open.capped = self.gap_s > 0
                closed.append(self.open)
                self.open = None
        return closed

    def _full(self, event: PartEvent) -> bool:
        return (event.frames >= self.max_frames
                or event.last_defect_mono - event.first.frame.captured_mono >= self.max_s)

    def tick(self, now_mono: float) -> list[PartEvent]:
        """Close the open part when no defect came within the gap (call also while no frame arrives)."""
        if self.open is not None and now_mono - self.open.last_defect_mono > self.gap_s:
            event, self.open = self.open, None
            return [event]
        return []

    def flush(self) -> list[PartEvent]:
        """Close the open part now (shutdown, end of a replay)."""
        event, self.open = self.open, None
        return [event] if event is not None else []


# --- triggered inspection (`trigger.mode: mqtt`) ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Trigger:
    """One part announced by the line: inspect `camera`'s first frame captured at or after `due_at`."""

    part_id: str
    camera: str
    due_at: float  # Unix seconds: trigger time + delay
    deadline_at: float  # Unix seconds: no verdict by then -> not_inspected
    received_at: float
    refused: str = ""  # why its camera refused it at once (edged.handshake: not_ready...); '' when accepted


class TriggerGate:
    """Capture side: picks the frame for each trigger. Triggers arrive on a queue from the MQTT thread.

    Recent frames are kept for a moment, because a trigger stamped with the sensor's time may arrive
    after the frame that shows the part was captured. A trigger whose frame is no longer kept, or whose
    deadline has passed, is let go (the recorder reports it not_inspected): never a wrong frame, and
    nothing waits here past its deadline, even while the camera delivers no frames.
    """

    INBOX_MAX = 2000  # more than the entry admits (incoming.MAX_OUTSTANDING_TRIGGERS): a full inbox is a bug

    def __init__(self, keep_s: float = 2.0) -> None:
        self.inbox: queue.Queue[Trigger] = queue.Queue(maxsize=self.INBOX_MAX)
        self.keep_s = keep_s
        self._pending: list[Trigger] = []
        self._recent: list[Frame] = []
        self._discarded_at = 0.0  # capture time of the newest frame no longer kept
        # a camera edged triggers itself (GenICam software trigger): set by the capture thread to fire it once
        self.fire: Callable[[], bool] | None = None
        self._in_flight: Trigger | None = None  # fired, its frame not come yet
        self.unasked = 0  # frames a fired camera sent that no trigger asked for (not inspected)

    def offer(self, frame: Frame | None) -> list[Frame]:
        """Call for every captured frame (or None when idle); returns frames to inspect, with part ids."""
        while not self.inbox.empty():
            self._pending.append(self.inbox.get_nowait())
        if self.fire is not None:
            return self._offer_fired(frame)
        if frame is not None:
            self._recent.append(frame)
            cutoff = frame.captured_at - self.keep_s
            while self._recent and self._recent[0].captured_at < cutoff:
                self._discarded_at = self._recent.pop(0).captured_at
        out: list[Frame] = []
        still: list[Trigger] = []
        newest = self._recent[-1].captured_at if self._recent else 0.0
        now = time.time()
        for trig in sorted(self._pending, key=lambda x: x.due_at):
            if newest > trig.deadline_at or trig.due_at <= self._discarded_at:
                continue  # too late to be useful, or its frame is gone: the recorder reports it not_inspected
            match = next((f for f in self._recent if f.captured_at >= trig.due_at), None)
            if match is None:
                if now <= trig.deadline_at:
                    still.append(trig)
            else:
                out.append(dataclasses.replace(match, part_id=trig.part_id))
        self._pending = still
        return out


    def _offer_fired(self, frame: Frame | None) -> list[Frame]:
        """A camera that takes a frame only when edged fires it: one trigger at a time is fired (at its due time)
        and the next frame the camera sends is that trigger's, so each trigger gets exactly one frame, its own.
        A trigger whose frame does not come by its deadline is let go (not_inspected) and the next one fired;
        a frame no trigger asked for is not inspected."""
        out: list[Frame] = []
        if frame is not None:
            if self._in_flight is not None:
                out.append(dataclasses.replace(frame, part_id=self._in_flight.part_id))
                self._in_flight = None
            else:
                self.unasked += 1
        now = time.time()
        if self._in_flight is not None and now > self._in_flight.deadline_at:
            self._in_flight = None  # its frame was lost: the recorder reports it not_inspected
        if self._in_flight is None:
            self._fire_next(now)
        return out

    def _fire_next(self, now: float) -> None:
        """Fire the earliest due trigger (dropping those already past their deadline)."""
        self._pending.sort(key=lambda t: t.due_at)
        while self._pending and self._pending[0].due_at <= now:
            trig = self._pending.pop(0)
            if now <= trig.deadline_at and self.fire is not None and self.fire():
                self._in_flight = trig
                return


class TriggerBook:
    """Recorder side: every trigger gets exactly one result, a verdict or `not_inspected` at its deadline."""

    def __init__(self) -> None:
        self.outstanding: dict[tuple[str, str], Trigger] = {}

    def add(self, trig: Trigger) -> None:
        """An admitted trigger: it now awaits a verdict or its deadline."""
        self.outstanding[(trig.camera, trig.part_id)] = trig

    def settle(self, verdict: Verdict) -> bool:
        """True when this verdict answers an outstanding trigger (and so gets the result)."""
        key = (verdict.frame.camera, verdict.frame.part_id or "")
        if key in self.outstanding:
            del self.outstanding[key]
            return True
        return False  # its deadline passed already: not_inspected went out, this verdict is only logged

    def expire(self, now: float) -> list[Trigger]:
        """Remove and return the triggers whose deadline is past at `now` (Unix seconds): each gets not_inspected."""
        gone = [t for t in self.outstanding.values() if now >= t.deadline_at]
        for t in gone:
            del self.outstanding[(t.camera, t.part_id)]
        return gone
