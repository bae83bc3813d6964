"""GenICam over the real GigE Vision protocol: Aravis' fake GigE camera (arv-fake-gv-camera-0.8) on
127.0.0.1, found by discovery and opened by its serial: settings (packet size and delay too) applied and
read back, lost packets counted as missed frames, a camera that goes away reopened when it is back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.support import ServiceRunner, wait_until, write_config
from edged.config import load_config
from edged.sources import aravis as aravis_module
from edged.sources.genicam import GenicamCamera, GenicamSource

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
