"""One capture thread per camera: source -> validated, stamped frames -> the frame queue.

It owns the camera's reconnect logic (exponential backoff with jitter, stall detection) and its
state (`starting`, `streaming`, `reconnecting`, `failed`, `finished`), which it announces on the
`events` queue for the MQTT link and the log. It never waits on inference: live sources drop the
oldest queued frame instead. It knows no camera kind: the source, built by the kind registry from the
camera's typed config, says whether it is live and how fast to pace it (`Source.live`, `Source.pacing`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable

import numpy as np

from edged.backoff import backoff_delay
from edged.config import CameraConfig
from edged.frame_queue import FrameQueue, QueueClosed
from edged.frames import CameraStamp, Frame
from edged.health import CameraStats, Heartbeats, SupervisedThread
from edged.input_health import InputMonitor
from edged.parts import TriggerGate
from edged.safetext import escape
from edged.sources import BadFrame, NoFrameYet, Source, SourceEnded, SourceFailed, open_source

log = logging.getLogger(__name__)

SHAPE_SETTLE_FRAMES = 30  # a new frame size that persists this long is accepted (camera reconfigured)


class CaptureThread(SupervisedThread):
    """One camera's thread: opens its source, reopens it with backoff, and queues its frames (through the trigger gate
    in mqtt mode). State changes go to `events` for the supervisor."""

    def __init__(self, cam: CameraConfig, frames: FrameQueue, stats: CameraStats, heartbeats: Heartbeats,
                 stop: threading.Event, events: queue.Queue[tuple[str, str, str]] | None = None,
                 source_factory: Callable[[CameraConfig], Source] | None = None,
                 gate: TriggerGate | None = None, input_monitor: InputMonitor | None = None) -> None:
        super().__init__(f"capture:{cam.name}", heartbeats)
        self.heartbeats: Heartbeats = heartbeats
        self.what = f"{cam.name}: capture thread"
        self.cam = cam
        self.frames = frames
        self.stats = stats
        self.stop_event = stop
        self.events = events
        self.source_factory = source_factory or _default_factory
        self.gate = gate  # trigger mode mqtt: only frames chosen for a triggered part are inspected
        self.input_monitor = input_monitor  # input health: every frame measured here, in order (~0.2 ms)
        self.opened = threading.Event()  # set once the camera delivered its first frame
        self.finished = threading.Event()  # set when the thread ends for good
        self._rng = random.Random()
        self._seq = 0
        self._shape: tuple[int, ...] | None = None
        self._new_shape: tuple[int, ...] | None = None
        self._new_shape_count = 0
        self._last_bad_log = 0.0

    # --- state -------------------------------------------------------------------------------------
    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.stats.state:
            return
        self.stats.state = state
        level = logging.WARNING if state in ("reconnecting", "failed") else logging.INFO
        log.log(level, "%s: %s%s", self.cam.name, state, f" ({detail})" if detail else "")
        if self.events is not None:
            self.events.put(("camera", self.cam.name, state))

    def _beat(self) -> None:
        self.heartbeats.beat(self.name)

    def _sleep(self, seconds: float) -> bool:
        """Sleep in small steps, beating; False when asked to stop."""
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            self._beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self.stop_event.wait(min(remaining, 0.25))
        return False

    # --- main loop ---------------------------------------------------------------------------------
    def work(self) -> None:
        """Capture until stopped, the source ends, or reopening gives up (supervised: `SupervisedThread`)."""
        with contextlib.suppress(QueueClosed):  # the pipeline is shutting down
            self._run()

    def on_death(self) -> None:
        """The camera is failed: its state says so on MQTT and in the health file."""
        self._set_state("failed", "internal error")

    def finish(self) -> None:
        """The service waits on this to know the camera is done for good."""
        self.finished.set()

    def _run(self) -> None:
        failures = 0
        first = True
        while not self.stop_event.is_set():
            self._beat()
            source = self.source_factory(self.cam)
            try:
                source.open()
            except SourceFailed as exc:
                failures += 1
                if not self._retry_or_fail(failures, str(exc)):
                    return
                continue
            if not first:
                self.stats.reconnects += 1
            first = False
            outcome = self._stream(source)
            source.close()
            if outcome == "ended":
                self._set_state("finished", "end of file/folder")
                return
            if outcome == "stopped":
                return
            failures = 1
            if not self._retry_or_fail(failures, outcome):
                return

    def _retry_or_fail(self, failures: int, why: str) -> bool:
        rc = self.cam.reconnect
        if rc.give_up_after and failures >= rc.give_up_after:
            self._set_state("failed", f"{why}; gave up after {failures} attempts")
            return False
        delay = backoff_delay(failures, rc.initial_s, rc.max_s, rc.jitter, self._rng)
        self._set_state("reconnecting", why)
        log.info("%s: reopening in %.1f s (attempt %d): %s", self.cam.name, delay, failures, why)
        return self._sleep(delay)

    def _stream(self, source: Source) -> str:
        """Read until the source ends, fails or we stop. Returns 'ended', 'stopped' or a failure reason."""
        last_good = time.monotonic()
        pacing = source.pacing  # a replay paced like a camera (realtime) is read, and dropped, like one
        realtime_period = 1.0 / pacing if pacing else None
        next_due = time.monotonic()
        drop_oldest = source.live or realtime_period is not None
        self._attach_gate(source)
        while not self.stop_event.is_set():
            self._beat()
            if realtime_period is not None:
                due = self._pace(next_due, realtime_period)
                if due is None:
                    return "stopped"
                next_due = due
            try:
                image, name = self._read(source)
            except NoFrameYet:
                last_good = time.monotonic()  # a quiet watched folder is not a stalled camera
                self._idle(drop_oldest)
                continue
            except SourceEnded:
                return "ended"
            except SourceFailed as exc:
                return str(exc)
            except BadFrame as exc:
                self._bad(str(exc))
                if time.monotonic() - last_good > self.cam.stall_timeout_s:
                    return f"no usable frame for {self.cam.stall_timeout_s:g} s"
                continue
            mono, wall = time.monotonic(), time.time()
            usable = self._validate(image)
            if usable is None:
                if mono - last_good > self.cam.stall_timeout_s:
                    return f"no usable frame for {self.cam.stall_timeout_s:g} s"
                continue
            last_good = mono
            if not self._deliver(usable, name, mono, wall, drop_oldest, source.stamp):
                return "stopped"
        return "stopped"

    def _attach_gate(self, source: Source) -> None:
        """A camera edged fires itself (GenICam software trigger) is fired by the trigger gate, one at a time."""
        if self.gate is not None:
            self.gate.fire = source.fire if source.fires_triggers else None

    def _read(self, source: Source) -> tuple[np.ndarray, str]:
        """One read; frames the camera says it lost meanwhile (GenICam) are counted, whatever the read raised."""
        try:
            return source.read()
        finally:
            self.stats.missed += source.take_missed()

    def _pace(self, next_due: float, period: float) -> float | None:
        """Wait for `next_due` (a realtime replay, read like a camera; a late read is not caught up on).
        The next read's due time; None when asked to stop while waiting."""
        wait = next_due - time.monotonic()
        if wait > 0 and not self._sleep(wait):
            return None
        return max(next_due + period, time.monotonic() - period)

    def _idle(self, drop_oldest: bool) -> None:
        """No new frame yet (a quiet watched folder): still streaming, and the trigger gate may still pick a
        kept frame for a trigger that came late."""
        self._set_state("streaming")
        if self.gate is not None:
            for item in self.gate.offer(None):
                self._enqueue(item, drop_oldest)

    def _deliver(self, image: np.ndarray, name: str, mono: float, wall: float, drop_oldest: bool,
                 stamp: CameraStamp | None = None) -> bool:
        """A usable frame: numbered, counted, and queued (through the trigger gate when triggered);
        False when asked to stop while waiting for room."""
        self._set_state("streaming")
        self.opened.set()
        flag = self.input_monitor.feed(image, mono, wall) if self.input_monitor is not None else None
        frame = Frame(camera=self.cam.name, seq=self._seq, image=image, captured_mono=mono,
                      captured_at=wall, source_name=name, input=flag, camera_stamp=stamp)
        self._seq += 1
        self.stats.frame_captured(mono, wall)
        self.stats.latest = frame  # a reference, no copy: the web view encodes it on demand in its own thread
        selected = [frame] if self.gate is None else self.gate.offer(frame)
        return all(self._enqueue(item, drop_oldest) for item in selected)  # stops at the first refusal

    def _enqueue(self, frame: Frame, drop_oldest: bool) -> bool:
        """Hand a frame to inspection; False when asked to stop while waiting for room."""
        if drop_oldest:
            self.frames.put(frame, drop_oldest=True)
            return True
        while not self.frames.put(frame, drop_oldest=False, timeout=0.25):
            self._beat()
            if self.stop_event.is_set():
                return False
        return True

    def _bad(self, why: str) -> None:
        self.stats.bad_frames += 1
        now = time.monotonic()
        if now - self._last_bad_log > 5.0:  # a broken cable must not flood the journal
            # `why` may name a file dropped into a watched folder by another process: outside text
            log.warning("%s: bad frame skipped: %s (%d so far)", self.cam.name, escape(why, 200), self.stats.bad_frames)
            self._last_bad_log = now

    def _validate(self, image: np.ndarray) -> np.ndarray | None:
        """Skip frames that are empty, oddly typed or of a different size than the stream's."""
        if image is None or not isinstance(image, np.ndarray) or image.size == 0:
            self._bad("empty frame")
            return None
        if image.dtype not in (np.uint8, np.uint16):
            self._bad(f"pixel type {image.dtype}")
            return None
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            self._bad(f"shape {image.shape}")
            return None
        shape = image.shape
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            if shape == self._new_shape:
                self._new_shape_count += 1
            else:
                self._new_shape, self._new_shape_count = shape, 1
            if self._new_shape_count < SHAPE_SETTLE_FRAMES:
                self._bad(f"frame size changed from {self._shape} to {shape}")
                return None
            log.warning("%s: frame size is now %s (was %s); accepting it", self.cam.name, shape, self._shape)
            self._shape, self._new_shape, self._new_shape_count = shape, None, 0
        if self.cam.roi is not None:
            x, y, w, h = self.cam.roi
            crop = image[y:y + h, x:x + w]
            if crop.size == 0:
                self._bad(f"roi {self.cam.roi} is outside the frame {shape}")
                return None
            image = crop
        return image


def _default_factory(cam: CameraConfig) -> Source:
    """A new source per attempt, built by the camera's kind (edged/sources/registry.py)."""
    return open_source(cam)
