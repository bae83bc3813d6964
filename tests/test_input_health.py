"""Input health: each statistic and each reason on synthetic frames, the camera state machine, the reject rate."""

from __future__ import annotations

import queue

import cv2
import numpy as np
import pytest

from edged.bundle import InputStatistics
from edged.input_health import (
    STATS_SIZE,
    Bounds,
    InputAlarm,
    InputHealthConfig,
    InputMonitor,
    RejectRateMonitor,
    fit_statistics,
    measure,
    problems,
    small_grey,
)

CFG = InputHealthConfig(degraded_after_s=1.0, recover_after_s=0.5)


def scene(seed: int, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A textured BGR part on a mid-grey belt: blobs and edges, a little sensor noise per frame."""
    w, h = size
    rng = np.random.default_rng(1000)
    base = np.full((h, w, 3), 110, np.uint8)
    for _ in range(40):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(5, 40))
        cv2.circle(base, (x, y), r, [int(v) for v in rng.integers(40, 220, 3)], -1)
    noise = np.random.default_rng(seed).normal(0, 3, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ref() -> InputStatistics:
    return fit_statistics(scene(i) for i in range(8))


def found(image: np.ndarray, ref: InputStatistics | None, previous: np.ndarray | None = None) -> tuple[str, ...]:
    bounds = Bounds.of(ref, CFG.pixel_margin) if ref is not None else None
    prev = small_grey(previous) if previous is not None else None
    return problems(measure(small_grey(image), prev, bounds), ref, CFG)


def test_training_images_and_new_good_frames_are_in_range(ref: InputStatistics) -> None:
    assert ref.n_images == 8 and ref.stats_size == STATS_SIZE
    assert len(ref.reference_low) == ref.reference_size[0] * ref.reference_size[1]
    for seed in (50, 51, 52):
        assert found(scene(seed), ref, previous=scene(seed + 10)) == ()


def test_statistics_have_their_units() -> None:
    grey = np.full((120, 160), 100, np.uint8)
    grey[:, :80] = 0
    grey[:, 150:] = 255
    s = measure(grey, grey, None)
    assert s.mean == pytest.approx((70 * 100 + 10 * 255) / 160)
    assert s.clipped_low == pytest.approx(0.5) and s.clipped_high == pytest.approx(10 / 160)
    assert s.frozen_diff == 0.0 and s.differs is None
    assert s.spread > 50
    flat = measure(np.full((120, 160), 128, np.uint8), None, None)
    assert flat.sharpness == 0.0 and flat.spread == 0.0 and flat.frozen_diff is None


def test_sharpness_does_not_depend_on_the_light() -> None:
    grey = small_grey(scene(1))
    dim = (grey * 0.5).astype(np.uint8)
    a, b = measure(grey, None, None).sharpness, measure(dim, None, None).sharpness
    assert b == pytest.approx(a, rel=0.15)  # scaled to mean 128: dimming is not blur


@pytest.mark.parametrize(("name", "change", "reason"), [
    ("dim x0.5", lambda im: (im * 0.5).astype(np.uint8), "too_dark"),
    ("bright x1.8", lambda im: np.clip(im * 1.8, 0, 255).astype(np.uint8), "too_bright"),
    ("blur", lambda im: cv2.GaussianBlur(im, (0, 0), 4), "out_of_focus"),
    ("half covered black", lambda im: np.concatenate([im[:, :320] * 0, im[:, 320:]], axis=1), "blocked"),
    ("half covered white", lambda im: np.concatenate([im[:, :320] * 0 + 255, im[:, 320:]], axis=1), "blocked"),
    ("lens cap", lambda im: np.full_like(im, 20), "blocked"),
])
def test_each_reason(ref: InputStatistics, name: str, change: object, reason: str) -> None:
    assert callable(change)
    got = found(change(scene(3)), ref)
    assert got and got[0] == reason, f"{name}: {got}"


def test_frozen_frame(ref: InputStatistics) -> None:
    image = scene(4)
    assert found(image, ref, previous=image.copy()) == ("frozen",)
    assert found(image, None, previous=image.copy()) == ("frozen",)  # needs no reference


def test_without_reference_only_frozen_and_uniform(ref: InputStatistics) -> None:
    assert found((scene(3) * 0.3).astype(np.uint8), None) == ()  # cannot know what is dark
    assert found(np.full((480, 640, 3), 90, np.uint8), None) == ("blocked",)


def test_gray_and_16_bit_frames() -> None:
    grey = cv2.cvtColor(scene(2), cv2.COLOR_BGR2GRAY)
    assert small_grey(grey).shape == (STATS_SIZE[1], STATS_SIZE[0])
    wide = (grey.astype(np.uint16) << 4)  # a 12-bit camera
    assert np.array_equal(small_grey(wide, bit_depth=12), small_grey(grey))


def test_manifest_section_refuses_a_wrong_grid(ref: InputStatistics) -> None:
    data = ref.model_dump()
    data["reference_low"] = data["reference_low"][:-1]
    with pytest.raises(ValueError, match="reference_low"):
        InputStatistics.model_validate(data)


def dark(seed: int) -> np.ndarray:
    return (scene(seed) * 0.4).astype(np.uint8)


def _monitor(ref: InputStatistics | None) -> tuple[InputMonitor, queue.Queue[InputAlarm]]:
    events: queue.Queue[InputAlarm] = queue.Queue()
    return InputMonitor("cam1", CFG, ref, events), events


def test_degraded_after_the_configured_time_and_cleared(ref: InputStatistics) -> None:
    mon, events = _monitor(ref)
    t = 0.0
    for i in range(10):  # 1 s of good frames at 10 fps
        assert mon.feed(scene(i), t).ok
        t += 0.1
    for i in range(10):  # 0.9 s out of range: not yet
        flag = mon.feed(dark(i), t)
        assert not flag.ok and flag.problems[0] == "too_dark" and flag.degraded == ""
        t += 0.1
    assert events.empty()
    flag = mon.feed(dark(10), t)
    assert flag.degraded == "too_dark" and mon.health()["state"] == "degraded"
    alarm = events.get_nowait()
    assert (alarm.camera, alarm.source, alarm.reason) == ("cam1", "input", "too_dark")
    for i in range(5):  # 0.4 s back in range: still degraded
        t += 0.1
        assert mon.feed(scene(20 + i), t).degraded == "too_dark"
    t += 0.1
    assert mon.feed(scene(30), t).degraded == ""
    assert events.get_nowait().reason == "" and mon.health()["alarms"] == 1


def test_a_new_reason_that_persists_replaces_the_old(ref: InputStatistics) -> None:
    mon, events = _monitor(ref)
    t = 0.0
    for i in range(12):
        mon.feed(dark(i), t)
        t += 0.1
    assert mon.reason == "too_dark"
    for i in range(12):
        mon.feed(cv2.GaussianBlur(scene(i), (0, 0), 4), t)
        t += 0.1
    assert mon.reason == "out_of_focus"
    assert [events.get_nowait().reason for _ in range(2)] == ["too_dark", "out_of_focus"]


def test_a_short_glitch_raises_nothing(ref: InputStatistics) -> None:
    mon, events = _monitor(ref)
    t = 0.0
    for i in range(40):
        image = np.full((480, 640, 3), 0, np.uint8) if i % 5 == 0 else scene(i)  # a dark frame now and then
        mon.feed(image, t)
        t += 0.1
    assert events.empty() and mon.reason == "" and mon.frames_not_ok == 8


def test_reject_rate_alarm_and_hysteresis() -> None:
    events: queue.Queue[InputAlarm] = queue.Queue()
    cfg = InputHealthConfig(reject_rate_window=20, reject_rate_factor=5.0, reject_rate_floor=0.05)
    mon = RejectRateMonitor("cam1", cfg, expected=0.02, events=events)
    assert mon.limit == pytest.approx(0.1)
    for i in range(40):
        mon.feed(i % 20 == 0)  # 5%: normal
    assert events.empty()
    for _ in range(3):
        mon.feed(True)  # 4 of the last 20
    assert mon.alarming and events.get_nowait().reason == "reject_rate"
    for _ in range(19):
        mon.feed(False)
    assert not mon.alarming and events.get_nowait().reason == ""
