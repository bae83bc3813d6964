#!/usr/bin/env python3
"""Benchmark of the daemon's hot path against the reference design's deployment loop.

    python scripts/bench.py run --bundles DIR [--duration 12] [--only cae-128-int8 ...]
    python scripts/bench.py startup --bundle DIR        # process start to READY=1 of `edged run`
    python scripts/bench.py soak --bundle DIR --minutes 10
    python scripts/bench.py collect [--messages 20000] [--collectors 2]  # edged collect into PostgreSQL
    python scripts/bench.py web --bundle DIR [--rate 30]  # e2e p99 with the web view on + a polling browser vs off
    python scripts/bench.py genicam [--size 640x480]  # fake GigE camera (Aravis) vs OpenCV file: fps, latency, CPU

`run` plays a synthetic video (tools/synth.py: parts, some defective) through the REAL pipeline
(`edged.service.Service` in a child process: capture with video decode, frame queue, preprocess,
ONNX Runtime, verdict, SQLite group commit, outbox, MQTT publish to a local mosquitto started on a
free port) at fixed input rates and flat out, once per bundle. A subscriber here stamps each reject
on arrival: end-to-end latency is its `time.time()` minus the payload's `captured_at`. The child
records per-stage timestamps of every frame (queue, preprocess, inference, hand-off to the recorder,
commit), its CPU time and peak RSS. The baseline is the reference design's loop, measured in the same
run: its PyTorch CAE (`tools/methods/cae/`, variant `cae-reference`) called image by image
(transform, forward, MSE, `.item()`) with 1 and 2 torch threads.

Results: JSON (`--json`, default docs/performance.json) and a markdown table (`--md`). Nothing here
asserts on speed: the numbers are measured, written, and read by people.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from devkit.localbroker import BrokerUnavailable, LocalBroker, free_port  # noqa: E402

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from edged.frames import Verdict

STAGES = ("queue", "preprocess", "infer", "handoff", "commit", "publish")


@dataclass(frozen=True)
class Case:
    """One bundle to measure: a folder under --bundles, a precision, and the input rates to try."""

    name: str
    folder: str
    precision: str | None
    rates: tuple[float, ...]  # frames/s; 0 = flat out


def default_cases() -> list[Case]:
    cases = [Case("classic", "classic", None, (30, 100, 0))]
    for size in (96, 128, 224):
        for precision in ("fp32", "int8"):
            cases.append(Case(f"cae-{size}-{precision}", f"cae-{size}", precision, (30, 100, 0)))
    cases.append(Case("patchcore", "patchcore", None, (15, 0)))
    cases.append(Case("cae-reference-128", "cae-reference-128", "fp32", (0,)))  # the reference model, in ORT
    return cases


# --- machine --------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    import onnxruntime

    return {"cpu_model": model, "cores": os.cpu_count(), "memory_mb": mem, "kernel": platform.release(),
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "hostname": socket.gethostname()}


def peak_rss_mb() -> float:
    """VmHWM of this process image (ru_maxrss would include the parent's size at fork, kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 3) if values else None


def summary(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "n": len(values)}


# --- broker and subscriber ------------------------------------------------------------------------

class Broker(LocalBroker):
    """The local broker the benchmark publishes to (deep queue: flat-out runs publish fast)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, max_queued=100000)
        try:
            self.start()
        except BrokerUnavailable as exc:
            raise SystemExit(f"bench: {exc}") from None


class RejectListener:
    """Subscribes to every station's reject topic; stamps each message with time.time() on arrival."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.got: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{free_port()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("bench subscriber could not subscribe at the broker")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:
        client.subscribe([("edged/+/reject", 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode],
                      props: Properties | None) -> None:
        self.connected.set()  # the SUBACK: rejects published from now on arrive

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self.got.append((now, msg.topic, payload))

    def take(self, station: str) -> list[tuple[float, dict[str, Any]]]:
        topic = f"edged/{station}/reject"
        with self._lock:
            return [(t, p) for t, top, p in self.got if top == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- inputs -----------------------------------------------------------------------------------------

def make_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """A synthetic production line (tools/synth.py); every 5th part defective."""
    if not path.exists():
        from tools.synth import write_video

        write_video(path, frames, range(0, frames, 5), size=size, fps=30)
    return path


def read_frames(video: Path, limit: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    out: list[np.ndarray] = []
    while len(out) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def cv2_frame_count(video: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    cap.release()
    return n


def reject_threshold(bundle: Path, precision: str | None, frames: list[np.ndarray], fraction: float) -> float:
    """A camera threshold that rejects about `fraction` of the video's frames, whatever the model's quality.

    Latency to a reject needs rejects; a briefly trained benchmark model does not find synthetic
    defects reliably, so the threshold is set from its own scores on the video instead.
    """
    from edged.detector import Detector

    det = Detector(bundle, precision, verify=False)
    scores = [o.score for i in range(0, len(frames), 8) for o in det.infer(frames[i:i + 8])]
    return float(np.quantile(np.asarray(scores), 1.0 - fraction))


def write_config(path: Path, *, station: str, bundle: Path, precision: str | None, video: Path, rate: float,
                 threshold: float, state_dir: Path, port: int | None, model_extra: dict[str, Any],
                 images: str = "rejects", web: dict[str, Any] | None = None) -> Path:
    model: dict[str, Any] = {"bundle": str(bundle), "verify_sha256": False, **model_extra}
    if precision:
        model["precision"] = precision
    camera: dict[str, Any] = {"name": "cam1", "source": str(video), "loop": True, "realtime": rate > 0,
                              "threshold": threshold, "trigger": {"gap_ms": 0}}
    if rate > 0:
        camera["fps"] = rate
    cfg: dict[str, Any] = {
        "station": station, "model": model, "cameras": [camera],
        "storage": {"state_dir": str(state_dir), "images": {"save": images}},
        "health": {"status_interval_s": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "stats_interval_s": 10} if port else {"enabled": False},
        "logging": {"level": "warning"},
        "web": web or {"enabled": False},  # off unless a run measures it (its default port is one per machine)
    }
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


# --- the child: the real pipeline in one process, instrumented ----------------------------------------

def child_main(args: argparse.Namespace) -> int:
    """Run `Service` with per-frame stage stamps; write window statistics to args.out."""
    import psutil

    import edged.service as service_mod
    from edged.config import load_config
    from edged.health import thread_cpu_seconds
    from edged.logsetup import setup_logging
    from edged.store import InspectionRow, InspectionWriter, OutboxMessage, Recorded

    cfg = load_config(args.config)
    setup_logging("warning")
    if os.environ.get("BENCH_SWITCH_INTERVAL"):  # experiment: the GIL hand-over interval `Service.run` sets
        service_mod.GIL_SWITCH_INTERVAL_S = float(os.environ["BENCH_SWITCH_INTERVAL"])
    lock = threading.Lock()
    gc_seconds = [0.0, 0.0]  # [total, this collection's start], by gc.callbacks: the collector's share of the window
    gc_runs: collections.Counter[int] = collections.Counter()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_seconds[1] = time.perf_counter()
        else:
            gc_seconds[0] += time.perf_counter() - gc_seconds[1]
            gc_runs[info["generation"]] += 1

    gc.callbacks.append(on_gc)
    pending: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    commits: list[float] = []

    class TimedWriter(InspectionWriter):
        def record(self, rows: list[InspectionRow], messages: list[OutboxMessage]) -> Recorded:
            t0 = time.monotonic()
            done = super().record(rows, messages)
            t1, wall = time.monotonic(), time.time()
            commits.append((t1 - t0) * 1000)
            with lock:
                for r in pending:
                    r["committed"], r["committed_at"] = t1, wall
                records.extend(pending)
                pending.clear()
            return done

    def on_verdict(v: Verdict, uid: str) -> None:
        f = v.frame
        with lock:
            pending.append({"seq": f.seq, "captured": f.captured_mono, "captured_at": f.captured_at,
                            "dequeued": v.dequeued_mono, "prepared": v.prepared_mono, "decided": v.decided_mono,
                            "recorded": time.monotonic(), "defective": v.is_defective})

    service_mod.InspectionWriter = TimedWriter  # type: ignore[misc]  # a timed subclass, for this run only
    svc = service_mod.Service(cfg, on_verdict=on_verdict)
    proc = psutil.Process()
    window: dict[str, Any] = {}

    def snapshot() -> dict[str, Any]:
        cpu = proc.cpu_times()
        return {"mono": time.monotonic(), "cpu": cpu.user + cpu.system, "frames": sum(s.frames for s in
                svc.stats.values()), "inspected": svc.counters.inspected,
                "drops": sum(svc.frames.drops(n) for n in svc.stats), "gc_s": gc_seconds[0], "gc_runs": dict(gc_runs),
                "threads": thread_cpu_seconds(),
                "web_cpu": svc.web.cpu_seconds if svc.web is not None else 0.0}

    def timer() -> None:
        while not any(t.opened.is_set() for t in svc.captures):
            if svc.stop_requested.wait(0.05):
                return
        time.sleep(args.warmup)
        window["start"] = snapshot()
        time.sleep(args.duration)
        window["end"] = snapshot()
        svc.stop_requested.set()

    threading.Thread(target=timer, daemon=True).start()
    svc.run()
    start, end = window.get("start"), window.get("end")
    if not start or not end:
        raise SystemExit("bench child: the run ended before its measuring window (video too short?)")
    in_window = [r for r in records if start["mono"] <= r["captured"] <= end["mono"]]
    span = end["mono"] - start["mono"]
    det = svc.detector
    out = {
        "seconds": round(span, 3),
        "captured": end["frames"] - start["frames"],
        "inspected": end["inspected"] - start["inspected"],
        "drops": end["drops"] - start["drops"],
        "cpu_percent": round(100 * (end["cpu"] - start["cpu"]) / span, 1),
        "web_cpu_percent": round(100 * (end["web_cpu"] - start["web_cpu"]) / span, 2),
        "gc_percent": round(100 * (end["gc_s"] - start["gc_s"]) / span, 2),
        "gc_runs": {g: n - start["gc_runs"].get(g, 0) for g, n in end["gc_runs"].items()},
        "cpu_percent_by_thread": dict(sorted(((k, round(100 * (v - start["threads"].get(k, 0.0)) / span, 1))
                                              for k, v in end["threads"].items()), key=lambda kv: -kv[1])),
        "peak_rss_mb": peak_rss_mb(),
        "commit_ms": summary(commits),
        "records": in_window,
        "precision": det.precision if det else None,
        "runtime": det.runtime if det else None, "runtime_choice": det.choice.describe() if det else None,
        "workers": cfg.model.workers, "intra_op_threads": cfg.model.intra_op_threads,
        "batch_size": cfg.model.batch_size,
    }
    Path(args.out).write_text(json.dumps(out))
    return 0


# --- the parent: one measured run ---------------------------------------------------------------------

def measure(case: Case, rate: float, *, bundles: Path, video: Path, frames: list[np.ndarray], work: Path,
            listener: RejectListener | None, port: int | None, duration: float, warmup: float,
            model_extra: dict[str, Any], reject_fraction: float, web: dict[str, Any] | None = None) -> dict[str, Any]:
    bundle = bundles / case.folder
    station = f"b{int(time.time() * 1000) % 10**9}"
    run_dir = work / f"{case.name}-{int(rate)}-{station}"
    run_dir.mkdir(parents=True)
    thr = reject_threshold(bundle, case.precision, frames, reject_fraction)
    cfg = write_config(run_dir / "edged.yaml", station=station, bundle=bundle, precision=case.precision,
                       video=video, rate=rate, threshold=thr, state_dir=run_dir, port=port, model_extra=model_extra,
                       web=web)
    load_before = loadavg()
    out = run_dir / "child.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", "--config", str(cfg), "--out", str(out),
           "--duration", str(duration), "--warmup", str(warmup)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 120)
    if res.returncode != 0:
        raise RuntimeError(f"bench child failed for {case.name} at {rate}: {res.stderr[-2000:]}")
    time.sleep(0.3)  # the last QoS 1 publishes are on their way
    child = json.loads(out.read_text())
    recs = child.pop("records")
    stages: dict[str, list[float]] = {s: [] for s in STAGES}  # the rejects' path
    stages_all: dict[str, list[float]] = {s: [] for s in STAGES[:-1]}  # every frame (good ones wait to group)
    verdict_ms: list[float] = []
    for r in recs:
        row = {"queue": r["dequeued"] - r["captured"], "preprocess": r["prepared"] - r["dequeued"],
               "infer": r["decided"] - r["prepared"], "handoff": r["recorded"] - r["decided"],
               "commit": r["committed"] - r["recorded"]}
        for k, v in row.items():
            stages_all[k].append(v * 1000)
            if r["defective"]:
                stages[k].append(v * 1000)
        verdict_ms.append((r["decided"] - r["captured"]) * 1000)
    e2e: list[float] = []
    if listener is not None:
        committed = {r["seq"]: r["committed_at"] for r in recs}
        lo = min((r["captured_at"] for r in recs), default=0.0)
        hi = max((r["captured_at"] for r in recs), default=0.0)
        for t, p in listener.take(station):
            if lo <= p["captured_at"] <= hi:
                e2e.append((t - p["captured_at"]) * 1000)
                if p["seq"] in committed:
                    stages["publish"].append((t - committed[p["seq"]]) * 1000)
    result = {
        "bundle": case.name, "rate_fps": rate or "max", "precision": child["precision"],
        "runtime": child.get("runtime"), "runtime_choice": child.get("runtime_choice"),
        "throughput_fps": round(child["inspected"] / child["seconds"], 1),
        "captured": child["captured"], "inspected": child["inspected"], "drops": child["drops"],
        "rejects_received": len(e2e), "e2e_ms": summary(e2e), "verdict_ms": summary(verdict_ms),
        "stages_ms": {s: summary(v) for s, v in stages.items()},
        "stages_all_frames_ms": {s: summary(v) for s, v in stages_all.items()}, "commit_call_ms": child["commit_ms"],
        "cpu_percent": child["cpu_percent"], "web_cpu_percent": child["web_cpu_percent"],
        "gc_percent": child["gc_percent"], "gc_runs": child["gc_runs"],
        "cpu_percent_by_thread": child["cpu_percent_by_thread"],
        "peak_rss_mb": child["peak_rss_mb"],
        "workers": child["workers"], "intra_op_threads": child["intra_op_threads"],
        "batch_size": child["batch_size"], "seconds": child["seconds"],
        "load_avg": {"before": load_before, "after": loadavg()},
    }
    shutil.rmtree(run_dir / "images", ignore_errors=True)
    return result


# --- the baseline: the reference design's loop -------------------------------------------------------

def reference_main(args: argparse.Namespace) -> int:
    """Reference CAE in PyTorch, image by image: transform, forward, MSE, .item(). Prints JSON."""
    import cv2
    import torch
    import torch.nn.functional as F

    from tools.methods.cae.model import Autoencoder
    from tools.methods.cae.options import REFERENCE

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Autoencoder(REFERENCE).eval()  # weights do not change the time; the architecture does
    frames = read_frames(Path(args.video), args.images)
    size = args.size

    def score(frame: np.ndarray) -> float:
        rgb = cv2.cvtColor(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
        with torch.no_grad():
            recon = model(x)
            return F.mse_loss(recon, x).item()

    for f in frames[:10]:
        score(f)
    times = []
    t_all = time.perf_counter()
    for f in frames:
        t0 = time.perf_counter()
        score(f)
        times.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - t_all
    print(json.dumps({"size": size, "threads": args.threads, "images": len(frames),
                      "ms_per_image": summary(times), "mean_ms": round(statistics.fmean(times), 3),
                      "images_per_s": round(len(frames) / total, 1)}))
    return 0


def baseline(video: Path, sizes: list[int], images: int) -> list[dict[str, Any]]:
    out = []
    for size in sizes:
        for threads in (1, 2):
            load_before = loadavg()
            cmd = [sys.executable, str(Path(__file__).resolve()), "reference", "--video", str(video), "--size",
                   str(size), "--threads", str(threads), "--images", str(images)]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if res.returncode != 0:
                raise RuntimeError(f"reference loop failed: {res.stderr[-2000:]}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row["load_avg"] = {"before": load_before, "after": loadavg()}
            out.append(row)
    return out


# --- start-up and soak ---------------------------------------------------------------------------------

def startup_times(bundle: Path, precision: str | None, video: Path, work: Path, runs: int) -> list[float]:
    """`edged run` from process start to READY=1 on a NOTIFY_SOCKET datagram socket (a fake systemd)."""
    out = []
    for i in range(runs):
        sock_dir = Path(tempfile.mkdtemp(prefix="bench-sdn-", dir="/tmp"))
        path = str(sock_dir / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(0.2)
        run_dir = work / f"startup-{i}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = write_config(run_dir / "edged.yaml", station="startup", bundle=bundle, precision=precision,
                           video=video, rate=30, threshold=1e9, state_dir=run_dir, port=None, model_extra={})
        env = {**os.environ, "NOTIFY_SOCKET": path}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ready = None
        try:
            while time.monotonic() - t0 < 60 and proc.poll() is None:
                try:
                    data = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if "READY=1" in data.splitlines():
                    ready = time.monotonic() - t0
                    break
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            sock.close()
            shutil.rmtree(sock_dir, ignore_errors=True)
        if ready is None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"edged run never sent READY=1: {err}")
        out.append(round(ready, 3))
    return out


def soak(bundle: Path, precision: str | None, video: Path, frames: list[np.ndarray], work: Path, minutes: float,
         rate: float, sample_s: float = 5.0, images: str = "rejects") -> dict[str, Any]:
    """`edged run` at a fixed rate for `minutes`, RSS sampled; the slope of RSS over the second half."""
    import psutil

    broker = Broker(work)
    try:
        run_dir = work / "soak"
        run_dir.mkdir(parents=True, exist_ok=True)
        thr = reject_threshold(bundle, precision, frames, 0.2)
        cfg = write_config(run_dir / "edged.yaml", station="soak", bundle=bundle, precision=precision, video=video,
                           rate=rate, threshold=thr, state_dir=run_dir, port=broker.port, model_extra={},
                           images=images)
        proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ps = psutil.Process(proc.pid)
        t0 = time.monotonic()
        samples: list[tuple[float, float]] = []
        load: list[list[float]] = []
        try:
            while time.monotonic() - t0 < minutes * 60:
                time.sleep(sample_s)
                if proc.poll() is not None:
                    raise RuntimeError("edged run exited during the soak")
                samples.append((time.monotonic() - t0, ps.memory_info().rss / 1e6))
                load.append(loadavg())
            cpu = ps.cpu_times()
            health = json.loads((run_dir / "health.json").read_text())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    finally:
        broker.stop()
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    half = t >= t[-1] / 2
    slope_all = float(np.polyfit(t / 60, rss, 1)[0]) if len(t) > 2 else None
    slope_half = float(np.polyfit(t[half] / 60, rss[half], 1)[0]) if half.sum() > 2 else None
    return {"minutes": minutes, "rate_fps": rate, "bundle": str(bundle.name), "precision": precision,
            "images_saved": images,
            "rss_mb_first": round(float(rss[0]), 1), "rss_mb_last": round(float(rss[-1]), 1),
            "rss_mb_max": round(float(rss.max()), 1),
            "slope_mb_per_min_all": round(slope_all, 4) if slope_all is not None else None,
            "slope_mb_per_min_second_half": round(slope_half, 4) if slope_half is not None else None,
            "inspected": health.get("inspected"), "latency_ms": health.get("latency_ms"),
            "cpu_seconds": round(cpu.user + cpu.system, 1), "samples": [[round(a, 1), round(b, 2)] for a, b in samples],
            "load_avg": load[-1] if load else None, "load_avg_max_1min": max((x[0] for x in load), default=None)}


# --- report ------------------------------------------------------------------------------------------

def ratios(results: list[dict[str, Any]], base: list[dict[str, Any]]) -> None:
    """Each flat-out throughput against the reference loop's (same size when there is one, else 128)."""
    by_size: dict[int, dict[int, dict[str, Any]]] = {}
    for b in base:
        by_size.setdefault(b["size"], {})[b["threads"]] = b
    for r in results:
        if r["rate_fps"] != "max":  # at a fixed input rate, throughput is the input rate
            r.pop("vs_reference", None)
            continue
        size = next((s for s in (96, 128, 224) if f"-{s}-" in r["bundle"] + "-"), 128)
        ref = by_size.get(size) or by_size.get(128) or (next(iter(by_size.values())) if by_size else None)
        if not ref:
            continue
        best = max(ref.values(), key=lambda b: b["images_per_s"])
        r["vs_reference"] = {"size": best["size"], "threads": best["threads"],
                             "throughput_x": round(r["throughput_fps"] / best["images_per_s"], 2),
                             "reference_ms": best["ms_per_image"]["p50"]}


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


HOW_TO_RUN = """## How to run it

```sh
# bundles to measure, one folder each (a short training is enough: speed does not depend on accuracy)
edged-train synth /tmp/bench/data --size 256
edged-train fit /tmp/bench/data --method classic --out /tmp/bench/bundles/classic
for s in 96 128 224; do
  edged-train fit /tmp/bench/data --method cae --size $s --epochs 2 --int8-tolerance 1 --out /tmp/bench/bundles/cae-$s
done
edged-train fit /tmp/bench/data --method patchcore --out /tmp/bench/bundles/patchcore
python scripts/bench.py soak --bundle /tmp/bench/bundles/cae-128 --precision int8 --out /tmp/bench/soak.json
python scripts/bench.py run --bundles /tmp/bench/bundles --soak-json /tmp/bench/soak.json   # -> docs/performance.*
```

`--only cae-128-int8 patchcore` picks cases, `--rates 30 0` overrides the input rates (0 = flat out),
`--workers/--intra-op-threads/--batch-size` override the model settings, `--video FILE` plays a recorded
video instead of the synthetic one. Check `uptime` first: on a shared machine the load is in every figure."""


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: machine, baseline table, pipeline table, start-up, soak, notes."""
    m = report["machine"]
    lines = [
        "# Performance of the hot path",
        "",
        f"Measured {report['started']} UTC by `{report['command']}`.",
        "",
        f"Machine: **{m['cpu_model']}**, {m['cores']} cores, {m['memory_mb']} MB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, ONNX Runtime {m['onnxruntime']}. Load average (1, 5, 15 min) at start "
        f"{report['load_avg_start']}, at end {report['load_avg_end']} (the machine is shared; figures taken under "
        "load are slower than on an idle box).",
        "",
        f"Input: synthetic video {report['video']['size'][0]}x{report['video']['size'][1]} MJPG "
        f"({report['video']['frames']} frames, looped), decoded by the capture thread; the camera threshold is set "
        f"so that about {int(100 * report['reject_fraction'])}% of frames are rejects (one reject per frame, "
        "`gap_ms: 0`), each saved as a JPEG with overlay (the default `images.save: rejects`). "
        f"Each run: {report['warmup_s']} s warm-up, then {report['duration_s']} s measured.",
        "",
        HOW_TO_RUN,
        "",
        "## Reference loop (baseline, PyTorch, image by image)",
        "",
        "| size | torch threads | ms/image p50 | ms/image p99 | images/s |",
        "|---|---|---|---|---|",
    ]
    for b in report["baseline"]:
        lines.append(f"| {b['size']} | {b['threads']} | {fmt(b['ms_per_image']['p50'])} | "
                     f"{fmt(b['ms_per_image']['p99'])} | {fmt(b['images_per_s'])} |")
    lines += [
        "",
        "## Pipeline (edged.service.Service: capture, queue, preprocess, ONNX Runtime, SQLite, MQTT QoS 1)",
        "",
        "e2e = capture to reject received by an MQTT subscriber; verdict = capture to decision (every frame). "
        "Stage p50 in ms along the rejects' path: queue wait, preprocess, inference, hand-off to the recorder "
        "(regions, frame JPEG), commit (SQLite + outbox), publish (commit to received). Good frames also wait up "
        "to `commit_interval_ms` to share a transaction (`stages_all_frames_ms` in the JSON). x ref = "
        "throughput over the best reference loop at the same size.",
        "",
        "| bundle | input fps | frames/s | drops | e2e p50 | e2e p99 | verdict p50 | verdict p99 | queue | prep | "
        "infer | handoff | commit | publish | CPU % | peak RSS MB | x ref | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        st = r["stages_ms"]
        lines.append(
            f"| {r['bundle']} | {r['rate_fps']} | {fmt(r['throughput_fps'])} | {r['drops']} | "
            f"{fmt(r['e2e_ms']['p50'])} | {fmt(r['e2e_ms']['p99'])} | {fmt(r['verdict_ms']['p50'])} | "
            f"{fmt(r['verdict_ms']['p99'])} | " + " | ".join(fmt(st[s]["p50"]) for s in STAGES) +
            f" | {fmt(r['cpu_percent'])} | {fmt(r['peak_rss_mb'])} | "
            f"{fmt(r.get('vs_reference', {}).get('throughput_x'))} | {r['load_avg']['after'][0]} |")
    by_thread = [r for r in report["results"] if r.get("cpu_percent_by_thread")]
    if by_thread:
        lines += ["", "CPU % of one core by thread over the window (kernel thread names; the broker and the "
                  "subscriber are other processes; Python's garbage collector's share of the window in brackets):", ""]
        for r in by_thread:
            shares = ", ".join(f"{k} {v}" for k, v in r["cpu_percent_by_thread"].items() if v >= 0.5)
            lines.append(f"- {r['bundle']} @ {r['rate_fps']}: {shares} (gc {r.get('gc_percent')}%)")
    cfgs = {(r["workers"], r["intra_op_threads"], r["batch_size"]) for r in report["results"]}
    lines += ["", "Model settings: " + "; ".join(f"{w} worker(s) x {t} intra-op thread(s), batch_size {b}"
                                                 for w, t, b in sorted(cfgs)) + "."]
    if report.get("startup_s"):
        s = report["startup_s"]
        lines += ["", f"## Start-up\n\n`edged run` with the {s['bundle']} bundle, process start to READY=1 on "
                  f"NOTIFY_SOCKET: {', '.join(f'{x:.2f}' for x in s['runs'])} s (median {s['median']:.2f} s)."]
    soaks = report.get("soaks") or ([report["soak"]] if report.get("soak") else [])
    if soaks:
        lines += ["", "## Soak", ""]
    for k in soaks:
        lines += [f"- `edged run`, {k['bundle']} {k['precision'] or ''}, {k['rate_fps']} fps for {k['minutes']} min, "
                  f"`images.save: {k.get('images_saved', 'rejects')}`: RSS {k['rss_mb_first']} MB after 5 s, "
                  f"{k['rss_mb_last']} MB at the end, max {k['rss_mb_max']} MB; slope {k['slope_mb_per_min_all']} "
                  f"MB/min over the run, {k['slope_mb_per_min_second_half']} MB/min over the second half; "
                  f"{k['inspected']} frames inspected; load average max {k['load_avg_max_1min']}."]
    if report.get("notes"):
        lines += ["", report["notes"].strip()]
    return "\n".join(lines) + "\n"


# --- commands ------------------------------------------------------------------------------------------

def prepare_inputs(args: argparse.Namespace, work: Path) -> tuple[Path, list[np.ndarray]]:
    if args.video:
        video = Path(args.video).resolve()
        frames = read_frames(video, 200)
        if not frames:
            raise SystemExit(f"bench: cannot read frames from {video}")
        args.video_size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
        return video, frames
    w, h = (int(v) for v in args.video_size.split("x"))
    video = make_video(work / f"line-{w}x{h}-{args.frames}.avi", args.frames, (w, h))
    return video, read_frames(video, min(args.frames, 200))


def model_extra(args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for key in ("workers", "intra_op_threads", "batch_size"):
        v = getattr(args, key, None)
        if v is not None:
            extra[key] = v
    return extra


def run_main(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bundles = Path(args.bundles)
    cases = [c for c in default_cases() if not args.only or c.name in args.only]
    cases = [c for c in cases if (bundles / c.folder / "manifest.json").exists()] if not args.strict else cases
    if args.rates:
        cases = [Case(c.name, c.folder, c.precision, tuple(args.rates)) for c in cases]
    if not cases:
        expected = ", ".join(sorted({c.folder for c in default_cases()}))
        raise SystemExit(f"bench: no bundle found under {bundles} (expected {expected})")
    video, frames = prepare_inputs(args, work)
    if args.video:
        args.frames = int(cv2_frame_count(video))
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "command": " ".join(sys.argv),
        "machine": machine(), "load_avg_start": loadavg(), "duration_s": args.duration, "warmup_s": args.warmup,
        "video": {"size": [int(v) for v in args.video_size.split("x")], "frames": args.frames,
                  "path": str(video) if args.video else "synthetic (tools/synth.py)"},
        "reject_fraction": args.reject_fraction, "model_overrides": model_extra(args),
    }
    print(f"bench: machine {report['machine']['cpu_model']}, {report['machine']['cores']} cores, "
          f"load {report['load_avg_start']}", flush=True)
    sizes = sorted({int(s) for s in args.baseline_sizes}) if args.baseline_images > 0 else []
    report["baseline"] = baseline(video, sizes, args.baseline_images) if sizes else []
    for b in report["baseline"]:
        print(f"reference {b['size']}px {b['threads']} thread(s): {b['ms_per_image']['p50']} ms/image p50, "
              f"{b['images_per_s']} images/s", flush=True)
    broker = Broker(work)
    listener = RejectListener(broker.port)
    results = []
    try:
        for case in cases:
            for rate in case.rates:
                r = measure(case, rate, bundles=bundles, video=video, frames=frames, work=work, listener=listener,
                            port=broker.port, duration=args.duration, warmup=args.warmup,
                            model_extra=model_extra(args), reject_fraction=args.reject_fraction)
                results.append(r)
                print(f"{r['bundle']:>16} @ {r['rate_fps']!s:>3}: {r['throughput_fps']:7.1f} frames/s, "
                      f"drops {r['drops']}, e2e p50 {r['e2e_ms']['p50']} p99 {r['e2e_ms']['p99']} ms "
                      f"({r['rejects_received']} rejects), verdict p99 {r['verdict_ms']['p99']} ms, infer p50 "
                      f"{r['stages_ms']['infer']['p50']} ms, CPU {r['cpu_percent']}%, RSS {r['peak_rss_mb']} MB, "
                      f"load {r['load_avg']['after'][0]}", flush=True)
                print("      CPU by thread: " + ", ".join(f"{k} {v}%" for k, v in r["cpu_percent_by_thread"].items()
                                                         if v >= 0.5), flush=True)
    finally:
        listener.close()
        broker.stop()
    ratios(results, report["baseline"])
    report["results"] = results
    if args.startup_runs > 0:
        sb = bundles / args.startup_bundle
        runs = startup_times(sb, None, video, work, args.startup_runs)
        report["startup_s"] = {"bundle": args.startup_bundle, "runs": runs, "median": statistics.median(runs)}
        print(f"startup ({args.startup_bundle}): {runs} s", flush=True)
    report["soaks"] = [json.loads(Path(f).read_text()) for f in args.soak_json or [] if Path(f).exists()]
    if args.notes:
        report["notes"] = Path(args.notes).read_text()
    report["load_avg_end"] = loadavg()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    md = args.md or (str(Path(args.json).with_suffix(".md")) if args.json else None)
    if md:
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        Path(md).write_text(markdown(report))
    print(f"bench: wrote {args.json or '-'} and {md or '-'}")
    return 0


def render_main(args: argparse.Namespace) -> int:
    """Rewrite the markdown from a JSON report (e.g. after editing the notes)."""
    report = json.loads(Path(args.json).read_text())
    if args.notes:
        report["notes"] = Path(args.notes).read_text()
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    ratios(report["results"], report["baseline"])
    Path(args.md).write_text(markdown(report))
    return 0


def startup_main(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-"))
    video, _ = prepare_inputs(args, work)
    runs = startup_times(Path(args.bundle), args.precision, video, work, args.runs)
    print(json.dumps({"bundle": str(args.bundle), "runs": runs, "median": statistics.median(runs),
                      "load_avg": loadavg()}))
    return 0


def soak_main(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-"))
    video, frames = prepare_inputs(args, work)
    result = soak(Path(args.bundle), args.precision, video, frames, work, args.minutes, args.rate,
                  images=args.images)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


# --- the web view: e2e latency with it on and a browser polling, against off, in one run --------------

class OverviewPoller:
    """What a browser on the overview asks for, at the page's own rates (edged/web/pages.py's script): the live frame
    every 250 ms, the latest reject's overlay every 2 s, /api/cameras and /api/status every second."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.requests = 0
        self.failures = 0
        self.thread = threading.Thread(target=self._run, name="overview-poller", daemon=True)

    def _get(self, path: str) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            self.requests += 1
        except OSError:
            self.failures += 1  # the child is not listening yet, or has stopped
        finally:
            conn.close()

    def _run(self) -> None:
        tick = 0
        while not self.stop.wait(0.25):
            self._get("/live/cam1.jpg")
            if tick % 4 == 0:
                self._get("/api/cameras")
                self._get("/api/status")
            if tick % 8 == 0:
                self._get("/live/cam1.jpg?overlay=1")
            tick += 1


def live_hook_us(calls: int = 200_000) -> float:
    """Microseconds per call of the only code the web view adds to the recorder's path (LiveView.seen)."""
    from edged.frames import Frame, Verdict
    from edged.web.live import LiveView

    live = LiveView(["cam1"])
    frame = Frame("cam1", 0, np.zeros((480, 640, 3), np.uint8), 0.0, 0.0)
    verdicts = [Verdict(frame, 0.1, 0.5, i % 50 == 0, 0.004, 0.0, "m") for i in range(100)]
    t0 = time.perf_counter()
    for i in range(calls):
        live.seen(verdicts[i % 100])
    return round((time.perf_counter() - t0) / calls * 1e6, 3)


def web_main(args: argparse.Namespace) -> int:
    """Alternating runs with the web view off and on (a poller on the overview), the same bundle, rate and video."""
    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    video, frames = prepare_inputs(args, work)
    bundle = Path(args.bundle).resolve()
    broker = Broker(work)
    listener = RejectListener(broker.port)
    runs: list[dict[str, Any]] = []
    try:
        for i in range(args.rounds):
            for mode in ("off", "on"):
                runs.append(_web_run(args, mode, i, bundle, video, frames, work, listener, broker.port))
    finally:
        listener.close()
        broker.stop()
    p99 = {mode: [r["e2e_ms"]["p99"] for r in runs if r["web"] == mode] for mode in ("off", "on")}
    out = {"bundle": str(bundle), "rate_fps": args.rate, "duration_s": args.duration, "machine": machine(),
           "runs": runs, "e2e_p99_ms": p99, "live_hook_us": live_hook_us(),
           "p99_delta_ms": [round(b - a, 3) for a, b in zip(p99["off"], p99["on"], strict=True)
                            if a is not None and b is not None]}
    print(f"bench web: e2e p99 off {p99['off']} ms, on {p99['on']} ms, on - off per round {out['p99_delta_ms']} ms; "
          f"the recorder's live-view hook {out['live_hook_us']} us per verdict")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _web_run(args: argparse.Namespace, mode: str, round_no: int, bundle: Path, video: Path, frames: list[np.ndarray],
             work: Path, listener: RejectListener, broker_port: int) -> dict[str, Any]:
    """One measured run, the view off or on (then polled like a browser on the overview)."""
    port = free_port()
    poller = OverviewPoller(port) if mode == "on" else None
    if poller is not None:
        poller.thread.start()
    try:
        r = measure(Case(f"web-{mode}", bundle.name, args.precision, (args.rate,)), args.rate,
                    bundles=bundle.parent, video=video, frames=frames, work=work, listener=listener,
                    port=broker_port, duration=args.duration, warmup=args.warmup, model_extra={},
                    reject_fraction=args.reject_fraction,
                    web={"enabled": True, "port": port} if mode == "on" else None)
    finally:
        if poller is not None:
            poller.stop.set()
            poller.thread.join(5)
    r.update(web=mode, round=round_no, poll_requests=poller.requests if poller else 0)
    print(f"web {mode:>3} (round {round_no}): e2e p50 {r['e2e_ms']['p50']} p99 {r['e2e_ms']['p99']} ms "
          f"({r['rejects_received']} rejects), throughput {r['throughput_fps']} fps, drops {r['drops']}, "
          f"CPU {r['cpu_percent']}%, web threads {r['web_cpu_percent']}% of a core, "
          f"{r['poll_requests']} poll requests", flush=True)
    return r


def collect_bench(work: Path, messages: int, collectors: int, batch_size: int) -> dict[str, Any]:
    """Messages/s that `collectors` collectors sharing one subscription write into a real PostgreSQL (fsync and
    synchronous commit on, as in production): their sessions are made, the collectors stopped, `messages`
    results queued for them at the central broker, then the collectors started and timed until every row is
    committed (the broker's queue is full from the start, so the publisher's speed is not measured)."""
    from devkit.bridge import central_broker
    from devkit.collecting import CollectorRunner, collect_config, preload_results, table_ids
    from devkit.postgres import LocalPostgres

    broker = central_broker(work / f"central-{collectors}")
    broker.start()
    pg = LocalPostgres(durable=True)
    pg.start()
    try:
        dsn = pg.create_database("plant")
        configs = [collect_config(broker.port, dsn, ["acme/plant1/+/+"], client_id=f"bench-collector-{i}",
                                  batch_size=batch_size) for i in range(collectors)]
        for config in configs:  # the sessions (and their shared subscriptions) exist before the messages
            CollectorRunner(config).start().stop()
        publish_s = preload_results(broker.port, "acme/plant1/press-shop/line3", 30, messages)
        runners = [CollectorRunner(config) for config in configs]
        t0 = time.perf_counter()
        for r in runners:
            r.start()
        while sum(r.collector.counts.recorded for r in runners) < messages:
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("the collectors did not record every message in 10 minutes")
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        for r in runners:
            r.stop()
        rows = len(table_ids(dsn, "results"))
        batches = sum(r.collector.counts.batches for r in runners)
    finally:
        pg.stop()
        broker.stop()
    rate = messages / elapsed
    return {"collectors": collectors, "messages": messages, "rows": rows, "seconds": round(elapsed, 3),
            "messages_per_s": round(rate, 1), "batches": batches, "batch_size": batch_size,
            "broker_ingest_per_s": round(messages / publish_s, 1),
            # one station at 30 fps with publish_results: 30 results/s (rejects and stats add a few per mille)
            "stations_at_30fps": int(rate // 30.1)}


def collect_main(args: argparse.Namespace) -> int:
    """`bench collect`: one collector, then `--collectors` sharing a subscription."""
    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-collect-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = [collect_bench(work, args.messages, n, args.batch_size) for n in sorted({1, args.collectors})]
    for r in runs:
        print(f"collect: {r['collectors']} collector(s) wrote {r['rows']} of {r['messages']} results in "
              f"{r['seconds']} s = {r['messages_per_s']} messages/s ({r['batches']} batches of <= "
              f"{r['batch_size']}) -> {r['stations_at_30fps']} stations at 30 fps with publish_results; "
              f"broker ingest from one publisher {r['broker_ingest_per_s']} messages/s", flush=True)
    out = {"machine": machine(), "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def genicam_main(args: argparse.Namespace) -> int:
    """GenICam through Aravis (the fake GigE camera) against the OpenCV file path: scripts/bench_genicam.py."""
    from scripts.bench_genicam import bench

    w, h = (int(v) for v in args.size.lower().split("x"))
    out = bench(Path(args.work) if args.work else None, Path(args.bundle) if args.bundle else None, (w, h),
                args.duration, args.warmup)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def input_health_cost(frames: list[np.ndarray], calls: int, threads: int) -> dict[str, Any]:
    """Per-frame cost (ms) of the capture thread's input-health step (edged.input_health.InputMonitor.feed: grey
    copy, statistics, checks, state) on `frames`, with OpenCV at `threads` threads (the daemon sets 1 when it
    runs several workers, the default)."""
    import queue

    import cv2

    from edged.input_health import InputAlarm, InputHealthConfig, InputMonitor, fit_statistics

    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        ref = fit_statistics(frames[:: max(1, len(frames) // 50)])
        monitor = InputMonitor("cam1", InputHealthConfig(), ref, queue.Queue[InputAlarm]())
        for i in range(50):  # warm-up: caches, OpenCV's first calls
            monitor.feed(frames[i % len(frames)], i / 30.0)
        decoded = np.empty_like(frames[0])
        times: list[float] = []
        cold: list[float] = []
        for i in range(calls):
            frame = frames[i % len(frames)]
            t0 = time.perf_counter()
            monitor.feed(frame, (50 + 2 * i) / 30.0)  # a frame not touched since long: read from memory
            cold.append((time.perf_counter() - t0) * 1000.0)
            np.copyto(decoded, frames[(i + 1) % len(frames)])  # as a source's decode leaves its frame: in cache
            t0 = time.perf_counter()
            monitor.feed(decoded, (51 + 2 * i) / 30.0)
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        cv2.setNumThreads(before)
    h, w = frames[0].shape[:2]
    return {"frame": f"{w}x{h}", "opencv_threads": threads, "ms": summary(times), "ms_cold": summary(cold),
            "frames_out_of_range": monitor.frames_not_ok}


def input_health_main(args: argparse.Namespace) -> int:
    """`bench input-health`: the per-frame cost of the input-health statistics (target < 0.3 ms at 640x480)."""
    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-input-"))
    work.mkdir(parents=True, exist_ok=True)
    _, frames = prepare_inputs(args, work)
    runs = [input_health_cost(frames, args.calls, threads) for threads in (1, 2)]
    for r in runs:
        print(f"input health: {r['frame']} BGR, OpenCV threads {r['opencv_threads']}: just decoded p50 "
              f"{r['ms']['p50']} ms, p99 {r['ms']['p99']} ms; from memory p50 {r['ms_cold']['p50']} ms, p99 "
              f"{r['ms_cold']['p99']} ms per frame ({r['ms']['n']} frames each)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1) + "\n")
    return 0


def recipes_main(args: argparse.Namespace) -> int:
    """`bench recipes`: a recipe switch under load (devkit/recipe_load.py: 30 fps, a trigger every 100 ms, a real
    mosquitto): request -> ack (load and verify) and request -> the first result decided by the new model."""
    from devkit import recipe_load
    from devkit.localbroker import LocalBroker

    work = Path(args.work or tempfile.mkdtemp(prefix="edged-bench-recipes-"))
    (work / "broker").mkdir(parents=True, exist_ok=True)
    broker = LocalBroker(work / "broker")
    broker.start()
    try:
        runs = [recipe_load.run(work / f"run{i}", broker.port, seconds=args.seconds, switches=args.switches)
                for i in range(args.runs)]
    finally:
        broker.stop()
    switch = [v for r in runs for v in r.switch_ms() if v is not None]
    ack = [v for r in runs for v in r.ack_ms() if v is not None]
    out: dict[str, Any] = {
        "machine": machine(), "switches": sum(len(r.requests) for r in runs),
        "triggers": sum(len(r.triggers) for r in runs), "switch_ms": summary(switch), "ack_ms": summary(ack),
        "refused_while_switching": sum(1 for r in runs for a in r.trigger_acks if a["result"] == "refused"),
        "switch_ms_each": switch, "ack_ms_each": ack}
    print(f"recipes: {out['switches']} switches under {out['triggers']} triggers (every 100 ms, 30 fps): request -> "
          f"first result on the new model p50 {out['switch_ms']['p50']} ms, max {max(switch, default=None)} ms; "
          f"request -> ack (loaded and verified) p50 {out['ack_ms']['p50']} ms, max {max(ack, default=None)} ms; "
          f"{out['refused_while_switching']} trigger(s) refused as recipe_switching", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def runtimes_main(args: argparse.Namespace) -> int:
    """Every bundle x runtime x precision, and auto's choice (issue 19): scripts/bench_runtimes.py."""
    from scripts.bench_runtimes import run

    return run(args, sys.modules[__name__])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def inputs(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--work", help="scratch folder (default: a new temporary one)")
        sp.add_argument("--video-size", default="640x480", help="synthetic video frame size WxH (default 640x480)")
        sp.add_argument("--frames", type=int, default=300, help="frames in the synthetic video (looped)")
        sp.add_argument("--video", help="a recorded video to play instead of the synthetic one")

    sp = sub.add_parser("run", help="the benchmark: every bundle at fixed rates and flat out, plus the baseline")
    inputs(sp)
    sp.add_argument("--bundles", required=True, help="folder with classic/, cae-96/, cae-128/, cae-224/, patchcore/")
    sp.add_argument("--only", nargs="*", help="case names, e.g. cae-128-int8 patchcore")
    sp.add_argument("--strict", action="store_true", help="fail when a bundle folder is missing (default: skip it)")
    sp.add_argument("--rates", nargs="*", type=float, help="input rates (0 = flat out) instead of each case's")
    sp.add_argument("--duration", type=float, default=12.0, help="measured seconds per run")
    sp.add_argument("--warmup", type=float, default=3.0, help="seconds after the first frame before measuring")
    sp.add_argument("--reject-fraction", type=float, default=0.2)
    sp.add_argument("--workers", type=int, help="override model.workers (default: the config default)")
    sp.add_argument("--intra-op-threads", dest="intra_op_threads", type=int)
    sp.add_argument("--batch-size", dest="batch_size", type=int)
    sp.add_argument("--baseline-images", type=int, default=200, help="images per reference loop run (0: skip)")
    sp.add_argument("--baseline-sizes", nargs="*", default=["96", "128", "224"])
    sp.add_argument("--startup-runs", type=int, default=3)
    sp.add_argument("--startup-bundle", default="cae-128")
    sp.add_argument("--soak-json", nargs="*", help="soak results to include in the report")
    sp.add_argument("--notes", help="a markdown file appended to the report (findings, caveats)")
    sp.add_argument("--json", default=str(ROOT / "docs" / "performance.json"))
    sp.add_argument("--md", default=None,
                    help="markdown report (default: beside --json, e.g. docs/performance.md for the default json; "
                         "a partial run written elsewhere must not overwrite the docs)")
    sp.set_defaults(func=run_main)

    sp = sub.add_parser("render", help="rewrite the markdown report from its JSON")
    sp.add_argument("--json", default=str(ROOT / "docs" / "performance.json"))
    sp.add_argument("--md", default=str(ROOT / "docs" / "performance.md"))
    sp.add_argument("--notes", help="a markdown file to put in the report (replaces its notes)")
    sp.set_defaults(func=render_main)

    sp = sub.add_parser("startup", help="edged run: process start to READY=1")
    inputs(sp)
    sp.add_argument("--bundle", required=True)
    sp.add_argument("--precision")
    sp.add_argument("--runs", type=int, default=3)
    sp.set_defaults(func=startup_main)

    sp = sub.add_parser("soak", help="edged run at a fixed rate for minutes: RSS and its slope")
    inputs(sp)
    sp.add_argument("--bundle", required=True)
    sp.add_argument("--precision")
    sp.add_argument("--minutes", type=float, default=10.0)
    sp.add_argument("--rate", type=float, default=30.0)
    sp.add_argument("--images", choices=("none", "rejects", "all"), default="rejects", help="storage.images.save")
    sp.add_argument("--out", help="write the JSON result here too")
    sp.set_defaults(func=soak_main)

    sp = sub.add_parser("web", help="e2e p99 with the web view on and a browser polling the overview vs off, one run")
    inputs(sp)
    sp.add_argument("--bundle", required=True)
    sp.add_argument("--precision")
    sp.add_argument("--rate", type=float, default=30.0)
    sp.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    sp.add_argument("--warmup", type=float, default=3.0)
    sp.add_argument("--rounds", type=int, default=2, help="off/on pairs (alternating: drift hits both)")
    sp.add_argument("--reject-fraction", type=float, default=0.2)
    sp.add_argument("--json", help="write the result here too")
    sp.set_defaults(func=web_main)

    sp = sub.add_parser("collect", help="messages/s `edged collect` writes to PostgreSQL; 1 and N collectors")
    sp.add_argument("--work", help="scratch folder (default: a new temporary one)")
    sp.add_argument("--messages", type=int, default=20000, help="results queued for the collectors")
    sp.add_argument("--collectors", type=int, default=2, help="collectors sharing one subscription (and 1)")
    sp.add_argument("--batch-size", dest="batch_size", type=int, default=500)
    sp.add_argument("--json", help="write the result here too")
    sp.set_defaults(func=collect_main)

    sp = sub.add_parser("genicam", help="fake GigE camera at 30 fps and flat out vs the OpenCV file path: fps, "
                        "latency, CPU per frame")
    sp.add_argument("--work", help="scratch folder (default: a new temporary one)")
    sp.add_argument("--bundle", help="model bundle (default: a tiny generated one, so capture dominates)")
    sp.add_argument("--size", default="640x480", help="frame size WxH (camera region and video)")
    sp.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    sp.add_argument("--warmup", type=float, default=2.0)
    sp.add_argument("--json", help="write the result here too")
    sp.set_defaults(func=genicam_main)

    sp = sub.add_parser("input-health", help="per-frame cost of the input-health statistics (capture thread)")
    inputs(sp)
    sp.add_argument("--calls", type=int, default=3000, help="frames measured per OpenCV thread setting")
    sp.add_argument("--json", help="write the result here too")
    sp.set_defaults(func=input_health_main)

    sp = sub.add_parser("recipes", help="recipe switch under load: request -> first result on the new model")
    sp.add_argument("--work", help="scratch folder (default: a new temporary one)")
    sp.add_argument("--runs", type=int, default=3, help="daemon runs (each with its own bundles and video)")
    sp.add_argument("--switches", type=int, default=4, help="switches per run, a -> b -> a ...")
    sp.add_argument("--seconds", type=float, default=10.0, help="triggered seconds per run")
    sp.add_argument("--json", help="write the result here too")
    sp.set_defaults(func=recipes_main)

    sp = sub.add_parser("runtimes", help="every bundle x runtime x precision (verified here): model ms, e2e at 30 "
                        "fps, frames/s flat out vs the reference loop, RSS; whether auto picks the fastest")
    inputs(sp)
    sp.add_argument("--bundles", required=True, help="folder with classic/, cae-128/, patchcore/ (copied, verified)")
    sp.add_argument("--only", nargs="*", help="bundle folders (default classic cae-128 patchcore)")
    sp.add_argument("--rates", nargs="*", type=float, default=[30.0, 0.0], help="input rates (0 = flat out)")
    sp.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    sp.add_argument("--warmup", type=float, default=1.5)
    sp.add_argument("--reject-fraction", type=float, default=0.2)
    sp.add_argument("--baseline-images", type=int, default=100, help="images of the 128 px reference loop (0: skip)")
    sp.add_argument("--json", help="write the result here too")
    sp.set_defaults(func=runtimes_main)

    sp = sub.add_parser("child", help=argparse.SUPPRESS)
    sp.add_argument("--config", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--duration", type=float, required=True)
    sp.add_argument("--warmup", type=float, required=True)
    sp.set_defaults(func=child_main)

    sp = sub.add_parser("reference", help=argparse.SUPPRESS)
    sp.add_argument("--video", required=True)
    sp.add_argument("--size", type=int, required=True)
    sp.add_argument("--threads", type=int, required=True)
    sp.add_argument("--images", type=int, required=True)
    sp.set_defaults(func=reference_main)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
