"""Input health: each statistic and each reason on synthetic frames, the camera state machine, the reject rate."""

from __future__ import annotations

import logging
import queue
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from devkit.support import Broker, ServiceRunner, Subscriber, build_max_bundle, json_object, wait_until, write_config
from edged.bundle import InputStatistics, load_manifest, write_manifest
from edged.config import load_config
from edged.input_health import (
    STATS_SIZE,
    Bounds,
    InputAlarm,
    InputHealth,
    InputHealthConfig,
    InputMonitor,
    RejectRateMonitor,
    describe_reference,
    drift_problem,
    expected_reject_rate,
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
    assert flat.sharpness == 0.0 and flat.noise == 0.0 and flat.spread == 0.0 and flat.frozen_diff is None
    steps = np.tile(np.array([100, 100, 100, 103], np.uint8), (120, 40))  # |Laplacian| 0 or 3-6 on every row
    assert 0.0 < measure(steps, None, None).noise < 6.0


def _noisy(image: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(7)
    return np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).astype(np.uint8)


def test_noise_is_told_from_texture(ref: InputStatistics) -> None:
    """The median |Laplacian| rises with sensor noise on every pixel, not with the part's edges: another part of
    the product is not noisy, nor is noise of 1 grey level; noise of 4 grey levels is; a bundle fitted before
    the statistic was kept (no ``noise`` range) checks nothing of it."""
    assert ref.noise is not None and ref.noise[0] > 0
    assert "noisy" not in found(scene(60), ref)
    assert "noisy" not in found(_noisy(scene(60), 1.0), ref)
    assert found(_noisy(scene(60), 4.0), ref) == ("noisy",)
    old = ref.model_copy(update={"noise": None})
    assert found(_noisy(scene(60), 8.0), old) == ()


def test_sharpness_does_not_depend_on_the_light() -> None:
    grey = small_grey(scene(1))
    dim = (grey * 0.5).astype(np.uint8)
    a, b = measure(grey, None, None).sharpness, measure(dim, None, None).sharpness
    assert b == pytest.approx(a, rel=0.15)  # scaled to mean 128: dimming is not blur


@pytest.mark.parametrize(("name", "change", "reason"), [
    ("dim x0.5", lambda im: (im * 0.5).astype(np.uint8), "too_dark"),
    ("bright x1.8", lambda im: np.clip(im * 1.8, 0, 255).astype(np.uint8), "too_bright"),
    ("blur", lambda im: cv2.GaussianBlur(im, (0, 0), 4), "out_of_focus"),
    ("sensor noise sigma 8", lambda im: _noisy(im, 8.0), "noisy"),
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


def test_a_lamp_that_ages_is_too_dark_by_its_drift_even_within_the_range() -> None:
    lit = [np.clip(scene(i) * g, 0, 255).astype(np.uint8) for i, g in enumerate((0.6, 0.8, 1.0, 1.2, 1.4))]
    wide = fit_statistics(lit)  # parts under every light the training set had
    events: queue.Queue[InputAlarm] = queue.Queue()
    mon = InputMonitor("cam1", CFG, wide, events)
    t = 0.0
    for i in range(CFG.drift_window - 1):  # x0.55 of the usual light: each frame alone is within the range
        assert mon.feed((scene(i) * 0.55).astype(np.uint8), t).ok
        t += 0.1
    for i in range(30):
        mon.feed((scene(100 + i) * 0.55).astype(np.uint8), t)
        t += 0.1
    assert mon.reason == "too_dark" and events.get_nowait().reason == "too_dark"


def _lit(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(image * gain, 0, 255).astype(np.uint8)


def test_a_light_the_bundle_tolerates_is_no_camera_change(ref: InputStatistics) -> None:
    """A bundle that normalizes the light (or calibrated under x0.7 and x1.3) records those gains: its bounds
    stretch by them, per frame and drift, so a lamp it scores as usual is not reported; beyond them it still is,
    and clipping is checked as before."""
    tolerant = fit_statistics((scene(i) for i in range(8)), light_gain=(0.7, 1.3))
    assert ref.light_gain == (1.0, 1.0) and tolerant.light_gain == (0.7, 1.3)
    assert found(_lit(scene(3), 0.6), ref) == ("too_dark",)
    assert found(_lit(scene(3), 0.6), tolerant) == ()
    assert found(_lit(scene(3), 0.45), tolerant) == ("too_dark",)
    assert found(_lit(scene(3), 1.8), tolerant)[0] == "too_bright"
    assert drift_problem(ref.reference_mean * 0.6, ref, CFG) == "too_dark"
    assert drift_problem(ref.reference_mean * 0.6, tolerant, CFG) is None
    assert drift_problem(ref.reference_mean * 1.6, tolerant, CFG) is None
    assert drift_problem(ref.reference_mean * 1.8, tolerant, CFG) == "too_bright"
    assert drift_problem(ref.reference_mean * 0.4, tolerant, CFG) == "too_dark"
    with pytest.raises(ValidationError, match="light_gain"):
        InputStatistics.model_validate({**ref.model_dump(), "light_gain": (1.2, 1.3)})


def test_noise_through_the_calibration_jpeg_is_not_noisy(ref: InputStatistics) -> None:
    """A bundle calibrated through JPEG learns its noise range through it too (`through_jpeg`: the training images
    as that JPEG delivers them; here noisier by 4 grey levels, as the blocks of a small textured part are): that
    much is not flagged, much more still is; the other ranges are the stored images' alone."""
    def as_encoded(image: np.ndarray, quality: int) -> np.ndarray:
        assert quality == 75
        return _noisy(image, 4.0)

    encoded = fit_statistics((scene(i) for i in range(8)), jpeg_quality=75, through_jpeg=as_encoded)
    assert encoded.noise_jpeg_quality == 75 and ref.noise_jpeg_quality is None
    assert ref.noise is not None and encoded.noise is not None and encoded.noise[1] > ref.noise[1]
    assert encoded.mean == ref.mean and encoded.sharpness == ref.sharpness
    assert found(_noisy(scene(60), 4.0), ref) == ("noisy",)
    assert found(_noisy(scene(60), 4.0), encoded) == ()
    assert found(_noisy(scene(60), 16.0), encoded) == ("noisy",)


def test_check_config_says_what_frames_are_checked_against(ref: InputStatistics) -> None:
    tolerant = ref.model_copy(update={"light_gain": (0.7, 1.3), "noise_jpeg_quality": 75})
    line = describe_reference(tolerant, InputHealthConfig(on_degraded="not_inspected"))
    assert line.startswith("against 8 training images (brightness ")
    assert "a lamp x0.7-x1.3 tolerated, noise through JPEG 75" in line and "verdicts then: not_inspected" in line
    assert "the training images' light)" in describe_reference(ref, CFG)
    assert describe_reference(None, CFG).startswith("frozen and covered frames only")
    assert describe_reference(ref, InputHealthConfig(enabled=False)) == "off (input_health.enabled: false)"


def test_a_short_glitch_raises_nothing(ref: InputStatistics) -> None:
    mon, events = _monitor(ref)
    t = 0.0
    for i in range(40):
        image = np.full((480, 640, 3), 0, np.uint8) if i % 5 == 0 else scene(i)  # a dark frame now and then
        mon.feed(image, t)
        t += 0.1
    assert events.empty() and mon.reason == "" and mon.frames_not_ok == 8


def test_the_expected_reject_rate_is_the_calibrated_one(tmp_path: Path) -> None:
    manifest = load_manifest(build_max_bundle(tmp_path / "b"))
    assert expected_reject_rate(manifest, None) is None  # a manual threshold
    entry = manifest.models["int8"]
    calibrated = entry.model_copy(update={"threshold": entry.threshold.model_copy(update={
        "method": "percentile", "percentile": 99.5, "expected_frr": 0.0})})
    manifest = manifest.model_copy(update={"models": {**manifest.models, "int8": calibrated}})
    assert expected_reject_rate(manifest, "int8") == pytest.approx(0.005)  # 0 on a small set: the design point


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


def test_a_bundle_without_input_statistics_still_loads_and_checks_what_it_can(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    manifest = load_manifest(build_max_bundle(tmp_path / "bundle"))
    assert manifest.input_stats is None
    with caplog.at_level(logging.WARNING):
        health = InputHealth(CFG, ["cam1", "cam2"], manifest)
    assert sum("records no input statistics" in r.getMessage() for r in caplog.records) == 1  # once, not per camera
    mon = health.monitors["cam1"]
    assert mon.feed(dark(1), 0.0).ok  # what is too dark needs the reference
    assert mon.feed(dark(1), 0.1).problems == ("frozen",)
    assert health.rates["cam1"].limit == CFG.reject_rate_floor  # a manual threshold promises no rate
    assert health.camera_health("cam2")["reference"] is False


@pytest.mark.parametrize("mode", ["judge", "not_inspected"])
def test_a_degraded_cameras_free_run_verdicts(tmp_path: Path, mode: str) -> None:
    import threading

    from edged.frames import Frame, FrameInput, Verdict
    from edged.health import Counters, Heartbeats, LatencyWindow
    from edged.recorder import RecorderThread, _Group
    from edged.store import InspectionWriter, open_database

    bundle = build_max_bundle(tmp_path / "b")
    cfg = load_config(write_config(tmp_path / "edged.yaml", bundle, "0", tmp_path / "state",
                                   extra=f"input_health: {{on_degraded: {mode}}}"))
    health = InputHealth(cfg.input_health, ["cam1"], load_manifest(bundle))
    rec = RecorderThread(cfg, queue.Queue(), InspectionWriter(open_database(tmp_path / "e.db")), None, Counters(),
                         LatencyWindow(), Heartbeats(), threading.Event(), to_link=lambda items: None,
                         input_health=health)
    frame = Frame("cam1", 5, np.zeros((4, 4), np.uint8), 0.0, 0.0, input=FrameInput(False, ("frozen",), "frozen"))
    group = _Group()
    rec._add_verdict(group, Verdict(frame, 0.9, 0.5, True, 0.0, 0.0, "m", reason="defect"))
    row = group.rows[0]
    assert row.input_ok is False and health.rates["cam1"].rate == 1.0  # the raw verdict feeds the reject rate
    if mode == "judge":
        assert row.reason == "defect" and row.is_defective  # judged as usual, flagged
    else:
        assert row.reason == "not_inspected" and not row.is_defective and health.not_inspected["cam1"] == 1
        assert rec.groupers["cam1"].open is None  # no part, so no reject


def test_the_status_line_and_the_alarm_name_every_active_reason(tmp_path: Path) -> None:
    from edged.service import Service

    bundle = build_max_bundle(tmp_path / "b")
    service = Service(load_config(write_config(tmp_path / "edged.yaml", bundle, "0", tmp_path / "state")),
                      handle_signals=False)
    assert service._alarm_message("cam1") == "" and "DEGRADED" not in service.status_line()
    service._alarms["cam1"] = {"reject_rate": InputAlarm("cam1", "reject_rate", "reject_rate", 20.0, {"limit": 0.05}),
                               "input": InputAlarm("cam1", "input", "too_dark", 10.0, {"mean": 12.5})}
    assert service.status_line().endswith(", cam1 DEGRADED (too_dark, reject_rate)")
    message = service._alarm_message("cam1")
    assert not isinstance(message, str)
    assert message.to_dict() == {"station": "test", "camera": "cam1", "state": "degraded", "reason": "too_dark",
                                 "reasons": ["too_dark", "reject_rate"], "since": 10.0, "on_degraded": "judge",
                                 "detail": {"limit": 0.05, "mean": 12.5}}


# --- the daemon: a generated line video that dims, blurs, freezes and is half-covered -----------------------

FPS = 30.0
SEG = 30  # frames per segment: 1 s
PLAN = ("normal", "too_dark", "normal", "out_of_focus", "normal", "frozen", "normal", "blocked", "normal", "normal")


def line_frame(i: int, condition: str) -> np.ndarray:
    """A 320x240 textured part moving along the belt (2 px per frame), changed by the segment's condition."""
    if condition == "frozen":
        return cv2.resize(scene(999), (320, 240), interpolation=cv2.INTER_AREA)  # the same image, repeated
    image = np.roll(cv2.resize(scene(i), (320, 240), interpolation=cv2.INTER_AREA), 2 * i, axis=1)
    if condition == "too_dark":
        return (image * 0.4).astype(np.uint8)
    if condition == "out_of_focus":
        return cv2.GaussianBlur(image, (0, 0), 4)
    if condition == "blocked":
        image[:, :160] = 0  # the left half covered
    return image


def write_line_video(path: Path) -> list[np.ndarray]:
    """The video of PLAN; returns its normal frames as read back (what a fit on this camera's images sees)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (320, 240))
    assert writer.isOpened()
    for i in range(SEG * len(PLAN)):
        writer.write(line_frame(i, PLAN[i // SEG]))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    normal = []
    for i in range(SEG * len(PLAN)):
        ok, image = cap.read()
        assert ok, f"cannot read frame {i} back"
        if PLAN[i // SEG] == "normal":
            normal.append(image)
    cap.release()
    return normal


class _Triggers:
    """A PLC stand-in: a trigger every 0.15 s until stopped (a real paho client on the test broker)."""

    def __init__(self, port: int) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-plc", protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import json

        while not self.stop.wait(0.15):
            self.client.publish("edged/test/trigger", json.dumps({"part_id": f"P{self.sent}", "camera": "cam1"}),
                                qos=1)
            self.sent += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_daemon_degrades_alarms_clears_and_parts_are_not_inspected(tmp_path: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    normal = write_line_video(video)
    bundle = build_max_bundle(tmp_path / "bundle", threshold=0.95)  # the texture alone never scores a defect
    manifest = load_manifest(bundle)
    write_manifest(bundle, manifest.model_copy(update={"input_stats": fit_statistics(normal)}))
    cfg_path = write_config(
        tmp_path / "edged.yaml", bundle, video, tmp_path / "state", broker.port,
        extra_camera="    realtime: true\n    fps: 30\n"
                     "    trigger: {mode: mqtt, delay_ms: 0, timeout_ms: 1500, fail_safe: reject}",
        extra="input_health: {degraded_after_s: 0.3, recover_after_s: 0.3, on_degraded: not_inspected}")
    cfg_path.write_text(cfg_path.read_text().replace("    trigger: {gap_ms: 0}\n", ""))
    sub = Subscriber(broker.port, ["edged/test/alarm/cam1", "edged/test/result", "edged/test/reject"])
    runner = ServiceRunner(load_config(cfg_path)).start()
    triggers: _Triggers | None = None
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connected, 20, "the broker")
        triggers = _Triggers(broker.port)
        wait_until(lambda: runner.thread.is_alive() is False, 60, "the end of the video")
    finally:
        if triggers is not None:
            triggers.close()
        runner.stop()
        sub.close()
    alarms = [payload for topic, payload, _ in sub.messages if topic == "edged/test/alarm/cam1"]
    raised = [a for a in alarms if a != ""]
    assert [json_object(a)["reason"] for a in raised] == ["too_dark", "out_of_focus", "frozen", "blocked"], alarms
    first = alarms.index(raised[0])
    assert first >= 1 and set(alarms[:first]) == {""}, alarms  # cleared at start (maybe twice: sent, and on connect)
    assert alarms[first:] == [x for a in raised for x in (a, "")], alarms  # each cleared once back in range
    assert all(json_object(a)["on_degraded"] == "not_inspected" for a in raised)

    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    rows = db.execute("SELECT seq, part_id, reason, input_ok FROM inspections WHERE seq >= 0").fetchall()
    seq_of = {part: seq for seq, part, _, _ in rows}
    for seq, _, _, input_ok in rows:  # a property of each frame, not of timing (the segment's first is mixed)
        if seq % SEG:
            assert input_ok == (PLAN[seq // SEG] == "normal"), (seq, input_ok)
    results = [json_object(p) for t, p, _ in sub.messages if t == "edged/test/result"]
    not_inspected = [r for r in results if r["reason"] == "not_inspected" and r["part_id"] in seq_of]
    for reason in ("too_dark", "out_of_focus", "frozen", "blocked"):
        assert any(r["degraded"] == reason for r in not_inspected), (reason, results)
    for r in not_inspected:  # in its bad segment, or in the next while it recovers
        seq = seq_of[str(r["part_id"])]
        assert PLAN[seq // SEG] == r["degraded"] or PLAN[seq // SEG - 1] == r["degraded"], (seq, r)
    for r in results:  # judged only where the camera cannot have been degraded for long
        if r["reason"] != "not_inspected":
            seq = seq_of[str(r["part_id"])]
            assert PLAN[seq // SEG] == "normal" or seq % SEG < 20, (seq, r)
            assert r["degraded"] is None
    rejects = [json_object(p) for t, p, _ in sub.messages if t == "edged/test/reject"]
    assert rejects and all(r["reason"] == "not_inspected" for r in rejects)  # the trigger's fail-safe
    health = runner.service.input_health
    assert health is not None and health.camera_health("cam1")["alarms"] == 4
    assert runner.service.degraded_cameras() == {}


def test_a_recipe_switch_brings_its_own_ranges_and_rate(tmp_path: Path, ref: InputStatistics) -> None:
    plain = load_manifest(build_max_bundle(tmp_path / "plain"))  # no statistics, manual threshold
    health = InputHealth(CFG, ["cam1"], plain)
    mon, rate = health.monitors["cam1"], health.rates["cam1"]
    assert mon.feed(dark(1), 0.0).ok  # without a reference, dark is not known
    for _ in range(30):
        rate.feed(True)
    entry = plain.models["int8"]
    calibrated = plain.model_copy(update={"input_stats": ref, "bundle_id": "parts-b", "models": {
        **plain.models, "int8": entry.model_copy(update={"threshold": entry.threshold.model_copy(
            update={"method": "percentile", "percentile": 99.0})})}})
    health.use_model("cam1", calibrated, "int8")  # from the switcher's thread: taken at the next frame / verdict
    assert mon.feed(dark(2), 0.1).problems[0] == "too_dark"
    rate.feed(False)
    assert rate.expected == pytest.approx(0.01) and rate.rate == 0.0  # the old model's rejects are forgotten
