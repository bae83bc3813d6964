"""GenICam over the real GigE Vision protocol: Aravis' fake GigE camera (arv-fake-gv-camera-0.8) on
127.0.0.1, found by discovery and opened by its serial: settings (packet size and delay too) applied and
read back, lost packets counted as missed frames, a camera that goes away reopened when it is back, and a
software-triggered camera fired once per MQTT trigger."""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devkit.support import Broker, ServiceRunner, Subscriber, wait_until, write_config
from edged.config import load_config
from edged.sources import aravis as aravis_module
from edged.sources.genicam import GenicamCamera, GenicamSource
from edged.topics import Topics

FAKE_GV = "arv-fake-gv-camera-0.8"
pytestmark = [
    pytest.mark.skipif(not aravis_module.available(), reason="Aravis 0.8 is not installed"),
    pytest.mark.skipif(shutil.which(FAKE_GV) is None, reason=f"{FAKE_GV} (aravis-tools) is not installed"),
]

StartCamera = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def gv_camera() -> Iterator[StartCamera]:
    """Starts fake GigE Vision cameras on 127.0.0.1 (one at a time: GVCP's port); stops them at the end."""
    running: list[subprocess.Popen[bytes]] = []

    def start(serial: str, lost_per_thousand: int = 0) -> subprocess.Popen[bytes]:
        cmd = [FAKE_GV, "-i", "127.0.0.1", "-s", serial]
        if lost_per_thousand:
            cmd += ["-r", str(lost_per_thousand)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running.append(proc)
        wait_until(lambda: any(d.serial == serial for d in aravis_module.devices()), 20,
                   f"the fake GigE camera {serial} found by discovery")
        return proc

    yield start
    for proc in running:
        proc.kill()
        proc.wait(10)


def _gv(serial: str, **settings: object) -> GenicamCamera:
    return GenicamCamera.model_validate({"name": "cam1", "source": f"genicam:{serial}", **settings})


def test_gige_camera_on_loopback_settings_and_frames(gv_camera: StartCamera) -> None:
    gv_camera("GVT1")
    source = GenicamSource(_gv("GVT1", pixel_format="BayerGR8", region=[0, 0, 128, 96], fps=50,
                               packet_size=1000, packet_delay_ns=2000, exposure_us=5000))
    source.open()
    try:
        dev = source.camera
        assert dev is not None and dev.is_gige
        assert dev.packet_size() == 1000
        assert abs(dev.packet_delay_ns() - 2000) <= 1000  # the camera's tick rounds it
        assert dev.pixel_format() == "BayerGR8" and dev.region() == (0, 0, 128, 96)
        ids = []
        for _ in range(10):
            image, _ = source.read()
            assert image.shape == (96, 128, 3)
            assert source.stamp is not None
            ids.append(source.stamp.frame_id)
        assert ids == list(range(ids[0], ids[0] + 10)) and source.take_missed() == 0
    finally:
        source.close()


def test_lost_packets_are_counted_as_missed_frames(gv_camera: StartCamera) -> None:
    """The fake drops 2% of its stream packets; without resends a frame of ~47 packets often arrives incomplete:
    each such buffer (and any frame-id gap) is a missed frame, and only complete frames are delivered."""
    gv_camera("GVLOSS", lost_per_thousand=20)
    source = GenicamSource(_gv("GVLOSS", pixel_format="Mono8", region=[0, 0, 256, 256], fps=100,
                               packet_size=1400, packet_resend=False))
    source.open()
    try:
        delivered = 0
        missed = 0
        while delivered < 20 or missed < 5:
            image, _ = source.read()
            assert image.shape == (256, 256)
            delivered += 1
            missed += source.take_missed()
            assert delivered < 2000, "no incomplete buffer in 2000 frames"
    finally:
        source.close()
    assert missed >= 5


def test_a_camera_that_goes_away_is_reopened(tmp_path: Path, tiny_bundle: Path, gv_camera: StartCamera) -> None:
    proc = gv_camera("GVBACK")
    cfg_path = write_config(tmp_path / "edged.yaml", tiny_bundle, "genicam:GVBACK", tmp_path / "state",
                            extra_camera="    pixel_format: Mono8\n    region: [0, 0, 32, 32]\n    fps: 30\n"
                                         "    reconnect: {initial_s: 0.2, max_s: 1, jitter: 0}")
    runner = ServiceRunner(load_config(cfg_path)).start()
    stats = runner.service.stats["cam1"]
    try:
        wait_until(lambda: stats.state == "streaming" and stats.frames >= 10, 30, "frames from the GigE camera")
        proc.kill()  # unplugged
        proc.wait(10)
        wait_until(lambda: stats.state == "reconnecting", 30, "the lost camera noticed")
        before = stats.frames
        gv_camera("GVBACK")  # plugged back in
        wait_until(lambda: stats.state == "streaming" and stats.frames >= before + 10, 60, "the camera reopened")
    finally:
        runner.stop()
    assert stats.reconnects >= 1
    assert runner.service.counters.inspected >= 20


@pytest.mark.slow
def test_software_trigger_gives_one_inspected_frame_per_trigger(tmp_path: Path, tiny_bundle: Path, broker: Broker,
                                                                gv_camera: StartCamera) -> None:
    """Each accepted MQTT trigger fires TriggerSoftware once; the fake GigE camera sends a frame only when fired,
    so a burst of triggers gives exactly that many camera frames, each inspected once under its own part id."""
    gv_camera("GVTRIG")
    cfg_path = write_config(tmp_path / "edged.yaml", tiny_bundle, "genicam:GVTRIG", tmp_path / "state",
                            broker.port,
                            extra_camera="    pixel_format: Mono8\n    region: [0, 0, 32, 32]\n"
                                         "    trigger: {mode: mqtt, source: software, timeout_ms: 3000}")
    cfg = load_config(cfg_path)
    topics = Topics.of(cfg)
    sub = Subscriber(broker.port, [topics.result])
    runner = ServiceRunner(cfg).start()
    stats = runner.service.stats["cam1"]
    parts = [f"P{i}" for i in range(8)]
    plc = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plc-genicam")
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connected, 30, "MQTT up")
        wait_until(lambda: stats.state == "streaming", 30, "the camera streaming (waiting for triggers)")
        assert stats.frames == 0  # nothing fired yet, nothing sent
        plc.connect("127.0.0.1", broker.port)
        plc.loop_start()
        for part in parts:  # a burst: faster than the camera's frame time, so they queue
            plc.publish(topics.trigger, json.dumps({"part_id": part, "camera": "cam1"}), qos=1).wait_for_publish(5)
        results = sub.wait_for_objects(topics.result, len(parts), timeout=30)
        wait_until(lambda: runner.service.counters.inspected >= len(parts), 10, "every triggered frame inspected")
    finally:
        plc.loop_stop()
        plc.disconnect()
        runner.stop()
        sub.close()
    assert sorted(r["part_id"] for r in results) == parts  # one result per trigger, none lost
    assert {r["reason"] for r in results} <= {"ok", "defect"}  # every one inspected, none not_inspected
    assert stats.frames == len(parts)  # the camera was fired exactly once per trigger
    assert runner.service.counters.inspected == len(parts)
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    rows = db.execute("SELECT part_id, seq FROM inspections ORDER BY seq").fetchall()
    db.close()
    assert [p for p, _ in rows] == parts and [s for _, s in rows] == list(range(len(parts)))


def test_edged_cameras_finds_the_gige_camera(gv_camera: StartCamera, capsys: pytest.CaptureFixture[str]) -> None:
    from edged import cli

    gv_camera("GVLIST")
    assert cli.main(["cameras", "--json"]) == 0
    (cam,) = [c for c in json.loads(capsys.readouterr().out)["cameras"] if c["serial"] == "GVLIST"]
    assert cam["address"] == "127.0.0.1" and cam["protocol"] == "GigEVision" and cam["source"] == "genicam:GVLIST"
    assert cam["settings"]["packet_size"]["min"] <= 1400 <= cam["settings"]["packet_size"]["max"]


@pytest.mark.slow
def test_missed_frames_surface_in_health_and_status(tmp_path: Path, tiny_bundle: Path,
                                                    gv_camera: StartCamera) -> None:
    """The daemon on a lossy link: missed frames are counted per camera in the health file (and so in /stats,
    which is built from it) and shown by `edged status`, beside drops."""
    import io

    from edged import status

    gv_camera("GVMISS", lost_per_thousand=20)
    cfg_path = write_config(tmp_path / "edged.yaml", tiny_bundle, "genicam:GVMISS", tmp_path / "state",
                            extra_camera="    pixel_format: Mono8\n    region: [0, 0, 256, 256]\n    fps: 60\n"
                                         "    packet_resend: false")
    cfg = load_config(cfg_path)
    runner = ServiceRunner(cfg).start()
    health = tmp_path / "state" / "health.json"

    def missed() -> int:
        try:
            value = json.loads(health.read_text())["cameras"]["cam1"]["missed"]
        except (OSError, ValueError, KeyError):
            return 0
        return int(value)

    try:
        wait_until(lambda: missed() >= 3, 60, "missed frames in the health file")
        out = io.StringIO()
        status.main(cfg, out=out)
    finally:
        runner.stop()
    assert runner.service.counters.inspected > 0  # the complete frames are inspected
    assert "missed " in out.getvalue()


def test_gige_frame_ids_wrap_without_a_missed_frame(gv_camera: StartCamera) -> None:
    """GigE Vision block ids are 16 bits and skip 0: 65535 is followed by 1. Aravis' fake starts at 65401, so a
    few hundred frames cross the wrap, which must not count as 65534 lost frames."""
    gv_camera("GVWRAP")
    source = GenicamSource(_gv("GVWRAP", pixel_format="Mono8", region=[0, 0, 64, 64], fps=200))
    source.open()
    ids = []
    missed = 0
    try:
        for _ in range(300):
            source.read()
            assert source.stamp is not None
            ids.append(source.stamp.frame_id)
            missed += source.take_missed()
    finally:
        source.close()
    assert (65535, 1) in list(itertools.pairwise(ids))  # the wrap was crossed
    assert missed == 0


def test_gige_packet_size_outside_the_range_names_it(gv_camera: StartCamera) -> None:
    from edged.sources import SettingRefused, check_cameras

    gv_camera("GVPKT")
    with pytest.raises(SettingRefused) as err:
        check_cameras([_gv("GVPKT", packet_size=20000)])
    assert err.value.key == "cameras[0].packet_size"
    assert "20000 is outside the camera's range 220 to 16404 in steps of 4" in str(err.value)
