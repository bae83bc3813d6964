"""The bounded queue between the capture threads and the inference workers.

One lane per camera, each with its own capacity. A live camera never waits for inference: when its
lane is full the OLDEST frame is dropped (the newest is what the line needs) and the drop is counted.
A file or folder replay waits instead, so it loses nothing. Workers take frames from the lanes in
turn, so a busy camera cannot starve a quiet one.

A frame put wakes ONE waiting worker (no frame is stranded: every put that finds a worker waiting wakes
one, and a worker looks at the lanes before it waits), and a frame taken wakes only blocked producers:
waking every worker for every frame (one condition for all) made the losers of each race queue for the
GIL just as the winner began preparing its frame.

Every frame a worker takes gets a per-camera dispatch number (0, 1, 2, ... without gaps), which lets
the downstream stage put verdicts from several workers back in capture order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from edged.frames import Frame


@dataclass(frozen=True, slots=True)
class Dispatched:
    """A frame as a worker took it, numbered per camera so verdicts can be put back in capture order."""

    frame: Frame
    dispatch: int  # per camera, contiguous in the order frames left the queue


class QueueClosed(Exception):
    """Raised to a blocked producer when the queue shuts down."""


class FrameQueue:
    """Bounded per-camera lanes between capture threads and workers (see the module docstring); every method is
    thread-safe."""

    def __init__(self) -> None:
        lock = threading.Lock()
        self._has_frames = threading.Condition(lock)  # workers wait here; a put wakes one
        self._has_room = threading.Condition(lock)  # blocking producers wait here; a take wakes them
        self._lanes: dict[str, deque[Frame]] = {}
        self._capacity: dict[str, int] = {}
        self._drops: dict[str, int] = {}
        self._dispatched: dict[str, int] = {}
        self._order: list[str] = []
        self._next = 0
        self._closed = False

    def add_lane(self, camera: str, capacity: int) -> None:
        """A lane of `capacity` frames for `camera`; add every camera's before frames are put."""
        with self._has_frames:
            self._lanes[camera] = deque()
            self._capacity[camera] = capacity
            self._drops[camera] = 0
            self._dispatched[camera] = 0
            self._order.append(camera)

    def put(self, frame: Frame, drop_oldest: bool, timeout: float | None = None) -> bool:
        """Add a frame. Live sources pass drop_oldest=True and never block.

        Returns False when a blocking put timed out (the caller may retry after checking for stop).
        """
        with self._has_frames:
            lane = self._lanes[frame.camera]
            cap = self._capacity[frame.camera]
            if drop_oldest:
                while len(lane) >= cap:
                    lane.popleft()
                    self._drops[frame.camera] += 1
            else:
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(lane) >= cap and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._has_room.wait(remaining)
            if self._closed:
                raise QueueClosed
            lane.append(frame)
            self._has_frames.notify()
            return True

    def get_batch(self, max_items: int, timeout: float) -> list[Dispatched]:
        """Up to max_items frames of ONE camera, oldest first; [] on timeout or when closed and empty."""
        deadline = time.monotonic() + timeout
        with self._has_frames:
            while True:
                for _ in range(len(self._order)):
                    camera = self._order[self._next % len(self._order)]
                    self._next += 1
                    lane = self._lanes[camera]
                    if lane:
                        out: list[Dispatched] = []
                        while lane and len(out) < max_items:
                            out.append(Dispatched(lane.popleft(), self._dispatched[camera]))
                            self._dispatched[camera] += 1
                        self._has_room.notify_all()
                        return out
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return []
                self._has_frames.wait(remaining)

    def drain(self) -> list[Dispatched]:
        """Take everything left (at shutdown, to count what is dropped)."""
        with self._has_frames:
            out = []
            for camera in self._order:
                lane = self._lanes[camera]
                while lane:
                    out.append(Dispatched(lane.popleft(), self._dispatched[camera]))
                    self._dispatched[camera] += 1
            self._has_room.notify_all()
            return out

    def close(self) -> None:
        """Wake everyone: producers get QueueClosed, consumers get what is left, then []."""
        with self._has_frames:
            self._closed = True
            self._has_frames.notify_all()
            self._has_room.notify_all()

    @property
    def closed(self) -> bool:
        """True once `close` was called: producers get QueueClosed, workers drain what is left."""
        return self._closed

    def depth(self, camera: str) -> int:
        """Frames waiting in `camera`'s lane now (health file)."""
        with self._has_frames:
            return len(self._lanes[camera])

    def drops(self, camera: str) -> int:
        """Frames dropped from `camera`'s full lane so far (a live camera drops the oldest)."""
        with self._has_frames:
            return self._drops[camera]
