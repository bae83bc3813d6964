"""The bounded frame queue: live lanes drop the oldest (counted), replay lanes block, workers take turns."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edged.frame_queue import FrameQueue, QueueClosed
from edged.frames import Frame


def frame(camera: str, seq: int) -> Frame:
    return Frame(camera, seq, np.zeros((2, 2), np.uint8), time.monotonic(), time.time())


def test_live_lane_drops_oldest_and_counts() -> None:
    q = FrameQueue()
    q.add_lane("a", 3)
    for i in range(10):
        assert q.put(frame("a", i), drop_oldest=True)
    assert q.drops("a") == 7
    got = q.get_batch(10, timeout=0.1)
    assert [d.frame.seq for d in got] == [7, 8, 9]
    assert [d.dispatch for d in got] == [0, 1, 2]


def test_replay_lane_blocks_instead_of_dropping() -> None:
    q = FrameQueue()
    q.add_lane("a", 2)
    assert q.put(frame("a", 0), drop_oldest=False)
    assert q.put(frame("a", 1), drop_oldest=False)
    assert not q.put(frame("a", 2), drop_oldest=False, timeout=0.05)  # full: times out, nothing dropped
    taken: list[int] = []

    def consume() -> None:
        while len(taken) < 5:
            taken.extend(d.frame.seq for d in q.get_batch(1, timeout=1))

    t = threading.Thread(target=consume)
    t.start()
    for i in range(2, 5):
        assert q.put(frame("a", i), drop_oldest=False, timeout=5)
    t.join(5)
    assert taken == [0, 1, 2, 3, 4]
    assert q.drops("a") == 0


def test_lanes_take_turns_and_dispatch_numbers_are_per_camera() -> None:
    q = FrameQueue()
    q.add_lane("a", 10)
    q.add_lane("b", 10)
    for i in range(3):
        q.put(frame("a", i), True)
        q.put(frame("b", i), True)
    cams = [q.get_batch(1, 0.1)[0] for _ in range(6)]
    assert [d.frame.camera for d in cams] == ["a", "b", "a", "b", "a", "b"]
    assert [d.dispatch for d in cams if d.frame.camera == "b"] == [0, 1, 2]


def test_close_wakes_blocked_producer_and_consumer() -> None:
    q = FrameQueue()
    q.add_lane("a", 1)
    q.put(frame("a", 0), False)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            q.put(frame("a", 1), False)
        except QueueClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert errors and not t.is_alive()
    assert len(q.get_batch(5, 0.1)) == 1  # what was queued can still be taken
    assert q.get_batch(5, 0.1) == []


def test_put_after_close_raises() -> None:
    q = FrameQueue()
    q.add_lane("a", 1)
    q.close()
    with pytest.raises(QueueClosed):
        q.put(frame("a", 0), True)


def test_every_frame_reaches_a_waiting_worker_though_a_put_wakes_only_one() -> None:
    """Each put wakes one worker: frames put faster than the woken take them must still all be taken promptly
    (the workers wait 30 s, so a lost wake-up would strand a frame far past the join below)."""
    q = FrameQueue()
    q.add_lane("a", 10)
    q.add_lane("b", 10)
    taken: list[tuple[str, int]] = []
    lock = threading.Lock()

    def work() -> None:
        while True:
            got = q.get_batch(1, timeout=30)
            if not got:
                return
            with lock:
                taken.extend((d.frame.camera, d.frame.seq) for d in got)
                if len(taken) == 12:
                    q.close()

    workers = [threading.Thread(target=work) for _ in range(3)]
    for t in workers:
        t.start()
    time.sleep(0.05)  # all three waiting
    for i in range(6):
        q.put(frame("a", i), drop_oldest=False)
        q.put(frame("b", i), drop_oldest=True)
    for t in workers:
        t.join(5)
    assert not any(t.is_alive() for t in workers)
    assert sorted(taken) == sorted([("a", i) for i in range(6)] + [("b", i) for i in range(6)])


def test_close_wakes_a_waiting_worker() -> None:
    q = FrameQueue()
    q.add_lane("a", 1)
    got: list[list] = []
    t = threading.Thread(target=lambda: got.append(q.get_batch(1, timeout=30)))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(2)
    assert not t.is_alive() and got == [[]]
