"""`bench.py genicam`: the GenICam capture path measured against the OpenCV file path, in one run.

Aravis' fake GigE Vision camera (arv-fake-gv-camera-0.8) serves frames over the real protocol on 127.0.0.1;
the daemon (`edged.service.Service`, in this process, MQTT off, no images written) inspects them at 30 fps
and flat out (the camera asked for its top rate: the live lane drops the oldest frame when inspection falls
behind). The same model then inspects a video file of the same size through OpenCV, paced at 30 fps and
flat out (a replay waits, so nothing is dropped). For each run: frames/s captured and inspected,
capture-to-verdict latency p50/p99 (`Verdict.latency_ms`: from the host's stamp when the frame was read to
the verdict), the capture thread's CPU per captured frame (psutil's per-thread times: Aravis' copy and
demosaic against OpenCV's decode) and the whole process's CPU per inspected frame. The fake camera's own
process is not counted. Nothing asserts on speed: the figures are printed and written as JSON.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from devkit.support import ServiceRunner, build_max_bundle, wait_until, write_config, write_spot_video
from edged.config import Config, load_config
from edged.frames import Verdict
from edged.health import percentile

FAKE_GV = "arv-fake-gv-camera-0.8"
SERIAL = "EDGEDBENCH"


def _config(work: Path, name: str, bundle: Path, source: str, camera: str) -> Config:
    path = write_config(work / f"{name}.yaml", bundle, source, work / name, extra_camera=camera)
    cfg = load_config(path)
    storage = cfg.storage.model_copy(update={"images": cfg.storage.images.model_copy(update={"save": "none"})})
    return cfg.model_copy(update={"storage": storage})


def _cpu_s(proc: psutil.Process, thread_id: int | None) -> tuple[float, float]:
    """(process CPU seconds, the capture thread's CPU seconds)."""
    times = proc.cpu_times()
    thread = next((t.user_time + t.system_time for t in proc.threads() if t.id == thread_id), 0.0)
    return times.user + times.system, thread


def run_case(name: str, cfg: Config, duration: float, warmup: float) -> dict[str, Any]:
    """One measured run of the daemon on `cfg`: rates, latency and CPU per frame (see the module docstring)."""
    latencies: list[float] = []
    runner = ServiceRunner(cfg)
    service = runner.service

    def on_verdict(v: Verdict, uid: str) -> None:
        latencies.append(v.latency_ms)

    service.on_verdict = on_verdict
    runner.start()
    proc = psutil.Process()
    try:
        wait_until(lambda: bool(latencies), 60, f"{name}: the first verdict")
        time.sleep(warmup)
        stats = service.stats["cam1"]
        thread_id = service.captures[0].native_id
        frames0, inspected0, drops0, missed0 = (stats.frames, service.counters.inspected,
                                                service.frames.drops("cam1"), stats.missed)
        cpu0, cap0 = _cpu_s(proc, thread_id)
        start, mark = time.monotonic(), len(latencies)
        time.sleep(duration)
        elapsed = time.monotonic() - start
        cpu1, cap1 = _cpu_s(proc, thread_id)
        window = latencies[mark:]
        frames = stats.frames - frames0
        inspected = service.counters.inspected - inspected0
        drops, missed = service.frames.drops("cam1") - drops0, stats.missed - missed0
    finally:
        runner.stop()

    def ms(q: float) -> float | None:
        value = percentile(window, q)
        return None if value is None else round(value, 2)

    latency = {"p50": ms(50), "p99": ms(99)}
    out = {"case": name, "captured_fps": round(frames / elapsed, 1), "inspected_fps": round(inspected / elapsed, 1),
           "latency_ms": latency, "drops": drops, "missed": missed,
           "capture_cpu_ms_per_frame": round((cap1 - cap0) * 1000 / max(frames, 1), 3),
           "process_cpu_ms_per_inspected": round((cpu1 - cpu0) * 1000 / max(inspected, 1), 3)}
    print(f"{name:>13}: captured {out['captured_fps']} fps, inspected {out['inspected_fps']} fps, latency p50 "
          f"{latency['p50']} ms p99 {latency['p99']} ms, drops {drops}, missed {missed}; "
          f"capture thread {out['capture_cpu_ms_per_frame']} ms CPU/frame, process "
          f"{out['process_cpu_ms_per_inspected']} ms CPU/inspected frame", flush=True)
    return out


def _start_camera() -> subprocess.Popen[bytes]:
    from edged.sources import aravis

    proc = subprocess.Popen([FAKE_GV, "-i", "127.0.0.1", "-s", SERIAL], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until(lambda: any(d.serial == SERIAL for d in aravis.devices()), 20, "the fake GigE camera")
    return proc


def bench(work: Path | None, bundle: Path | None, size: tuple[int, int], duration: float,
          warmup: float) -> dict[str, Any]:
    """Both paths, 30 fps and flat out each; the results as a dict (also printed)."""
    if shutil.which(FAKE_GV) is None:
        raise SystemExit(f"bench genicam: {FAKE_GV} is not installed (apt-get install aravis-tools)")
    work = Path(work or tempfile.mkdtemp(prefix="edged-bench-genicam-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = bundle or build_max_bundle(work / "bundle", size=64, channels=3)
    w, h = size
    video = work / "line.avi"
    write_spot_video(video, 150, set(range(5, 150, 10)), fps=30.0, size=size)
    region = f"    pixel_format: BayerRG8\n    region: [0, 0, {w}, {h}]\n    packet_size: 1400\n"
    cases = [
        ("genicam-30", f"genicam:{SERIAL}", region + "    fps: 30"),
        ("genicam-flat", f"genicam:{SERIAL}", region + "    fps: 1000"),
        ("file-30", str(video), "    loop: true\n    realtime: true\n    fps: 30"),
        ("file-flat", str(video), "    loop: true"),
    ]
    camera = _start_camera()
    results = []
    try:
        for name, source, extra in cases:
            results.append(run_case(name, _config(work, name, bundle, source, extra), duration, warmup))
    finally:
        camera.kill()
        camera.wait(10)
    return {"bundle": str(bundle), "frame": f"{w}x{h}", "camera": "aravis fake GigE Vision on 127.0.0.1, BayerRG8",
            "video": "MJPG file through OpenCV", "duration_s": duration, "cpus": psutil.cpu_count(),
            "loadavg": list(psutil.getloadavg()), "runs": results}
