"""The documents the pages and `/api/` share: status, cameras, one part, the config (secrets masked), versions.

Built at request time from the service's counters (the health file's own function) and the live view;
nothing here writes.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shlex
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged import __version__, labels
from edged.safetext import MASK, redact_url
from edged.web import queries
from edged.web.live import LiveView

if TYPE_CHECKING:
    from edged.config import Config
    from edged.service import Service

SECRET_KEYS = ("password",)  # keys whose value is a secret wherever they are in the config
VERSIONED = ("numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "onnxruntime-gpu", "paho-mqtt",
             "pydantic", "prometheus-client")


def status(service: Service) -> dict[str, Any]:
    """The health document (as `edged status` reads it) plus the web view's own state."""
    doc = service.health()
    web = service.web
    doc["web"] = {"url": web.listening.url if web else None, "refused": web.refused if web else 0,
                  "cpu_seconds": round(web.cpu_seconds, 3) if web else 0.0}
    return doc


def cameras(service: Service, live: LiveView) -> list[dict[str, Any]]:
    """Per camera: state and counters, the latest verdict, the latest reject (for the overview's cards)."""
    out = []
    monitor = service.input_health
    for name, s in service.stats.items():
        latest, reject = live.latest.get(name), live.latest_reject.get(name)
        hist = live.latency.get(name)
        inspected = hist.count if hist is not None else 0
        out.append({
            "name": name, "state": s.state, "fps": round(s.fps(), 2), "frames": s.frames,
            "drops": service.frames.drops(name), "reconnects": s.reconnects, "bad_frames": s.bad_frames,
            "inspected": inspected, "defective": live.defective.get(name, 0),
            "input": monitor.camera_health(name) if monitor is not None else None,  # too dark, blurred, ...
            "reject_rate": round(live.defective.get(name, 0) / inspected, 5) if inspected else None,
            "latest": None if latest is None else {"seq": latest.frame.seq, "score": latest.score,
                                                   "threshold": latest.threshold, "at": latest.frame.captured_at,
                                                   "defective": latest.is_defective},
            "latest_reject": None if reject is None else {
                "seq": reject.frame.seq, "score": reject.score, "threshold": reject.threshold,
                "at": reject.frame.captured_at, "regions": [r.to_dict() for r in reject.regions]},
        })
    return out


def part(conn: sqlite3.Connection, inspection_id: int) -> dict[str, Any] | None:
    """One inspection with its labels and its camera's neighbouring scores."""
    row = queries.inspection(conn, inspection_id)
    if row is None:
        return None
    row["labels"] = [lb.to_dict() for lb in labels.labels_of(conn, inspection_id)]
    row["neighbours"] = queries.neighbours(conn, inspection_id, str(row["camera"]))
    return row


def masked_config(config: Config) -> Any:
    """The config as validated, every password masked and every URL's credentials too."""
    return _mask(config.model_dump(mode="json"))


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if key in SECRET_KEYS and value is not None:
        return MASK
    return redact_url(value) if isinstance(value, str) else value


def versions() -> dict[str, str]:
    """edged, Python and the libraries the pipeline runs on (those installed)."""
    out = {"edged": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def recalibrate_command(config: Config, feedback_dir: Path) -> str:
    """The command that re-derives the bundle's thresholds with the false rejects counted as good images."""
    return (f"edged-train calibrate {shlex.quote(str(config.model.bundle))} "
            f"{shlex.quote(str(feedback_dir / 'good'))}")
