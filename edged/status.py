"""`edged status`: the technician's view at the box, read from the state the daemon keeps.

Two sources, both read-only: the health file the daemon rewrites every `health.status_interval_s`
(``<state_dir>/health.json``: cameras, threads, broker, model) and the SQLite database (reject counts and
rates over the last 5 and 60 minutes, per-camera latency). Nothing here talks to the daemon, so it
works the same whether the daemon is healthy, hung or stopped, and it never disturbs the line.

Exit code 0: healthy. 1: the daemon looks unhealthy; every reason is printed.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import sys
import textwrap
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edged.config import Config
from edged.health import percentile
from edged.safetext import escape, redact_url

HEALTH_FILE = "health.json"
WINDOWS_S = (300.0, 3600.0)  # reject counts and rates: last 5 and last 60 minutes
STALE_FACTOR = 3.0  # the health file is stale after this many status intervals
WIDTH = 80
LABEL = 14  # width of the label column


@dataclass
class CameraStats:
    """What the database says about one camera in one time window."""

    inspected: int = 0
    rejects: int = 0
    latencies: list[float] = field(default_factory=list)


# --- small formatting helpers ---------------------------------------------------------------------

def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> str:
    n = _num(value)
    return "?" if n is None else str(int(n))


def fmt_duration(seconds: float | None) -> str:
    """Short human durations: 0.4 s, 12 s, 5 min 03 s, 2 h 07 min, 3 d 04 h."""
    if seconds is None:
        return "?"
    if seconds < 0:
        return f"-{fmt_duration(-seconds)}"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def _fmt_time(epoch: float | None, now: float) -> str:
    if epoch is None or epoch <= 0:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    return f"{stamp} ({fmt_duration(now - epoch)} ago)"


def _fmt_ms(value: Any) -> str:
    n = _num(value)
    return "-" if n is None else f"{n:.1f} ms"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def pid_alive(pid: int) -> bool:
    """Whether the process exists (one owned by another user, the service user, counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the service user)
    except OSError:
        return False
    return True


# --- reading the daemon's state -------------------------------------------------------------------

def read_health(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The parsed health file, or None and the reason it cannot be used."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, f"no health file at {path}: the daemon is not running or has not started yet"
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc} (run with sudo or join group edged)"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        # on a full disk the daemon rewrites the file in place: a read may catch it half written
        time.sleep(0.2)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None, f"health file {path} is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return None, f"health file {path} does not hold a JSON object"
    return data, None


def _first_id_after(conn: sqlite3.Connection, since: float) -> int:
    """Smallest inspection id decided at or after `since`, by bisecting the rowid.

    Rows are appended in time order, so this finds the window's start in ~25 primary-key lookups
    instead of scanning millions of rows (the table need not have an index on decided_at).
    """
    row = conn.execute("SELECT MIN(id), MAX(id) FROM inspections").fetchone()
    if row is None or row[0] is None:
        return 0
    lo, hi = int(row[0]), int(row[1]) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        got = conn.execute("SELECT id, decided_at FROM inspections WHERE id >= ? ORDER BY id LIMIT 1",
                           (mid,)).fetchone()
        if got is None or (got[1] is not None and got[1] >= since):
            hi = mid  # no row in [mid, got.id) and the rows from got on are recent enough
        else:
            lo = int(got[0]) + 1
    return lo


def _recent_rows(uri: str, since: float) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(uri, uri=True, timeout=2.0)
    try:
        slack = 60.0  # rows are committed in small groups, not strictly in decided_at order
        start_id = _first_id_after(conn, since - slack)
        return conn.execute(
            "SELECT camera, decided_at, is_defective, latency_ms FROM inspections "
            "WHERE id >= ? AND decided_at >= ? AND reason != 'not_inspected'",
            (start_id, since),
        ).fetchall()
    finally:
        conn.close()


def read_database(path: Path, now: float) -> tuple[dict[float, dict[str, CameraStats]], str | None]:
    """Per window (seconds) and camera: inspected, rejects, latencies. Read-only; WAL readers never block
    the daemon's writer."""
    if not path.exists():
        return {}, f"{path} does not exist yet"
    base = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    since = now - max(WINDOWS_S)
    try:
        rows = _recent_rows(base, since)
    except sqlite3.Error as first:
        # A WAL database whose daemon has stopped has no -shm file, and a reader without write access to
        # the state directory (a technician in group edged) cannot create one. With no writer running,
        # reading the main file as immutable is safe (at worst it misses rows still in an old -wal).
        try:
            rows = _recent_rows(base + "&immutable=1", since)
        except sqlite3.Error:
            return {}, f"cannot read database {path}: {first}"
    result: dict[float, dict[str, CameraStats]] = {}
    for window in WINDOWS_S:
        per_camera: dict[str, CameraStats] = {}
        for camera, decided_at, defective, latency in rows:
            if decided_at is None or decided_at < now - window:
                continue
            stats = per_camera.setdefault(str(camera), CameraStats())
            stats.inspected += 1
            stats.rejects += 1 if defective else 0
            if window == min(WINDOWS_S) and _num(latency) is not None:
                stats.latencies.append(float(latency))
        result[window] = per_camera
    return result, None


# --- the report -----------------------------------------------------------------------------------

def _line(out: TextIO, label: str, text: str) -> None:
    out.write(_clip(f"{label:<{LABEL}}{text}", WIDTH).rstrip() + "\n")


def _wrapped(out: TextIO, label: str, text: str) -> None:
    """Long messages wrap under the value column instead of being cut (paths stay whole)."""
    out.write(textwrap.fill(text, WIDTH, initial_indent=f"{label:<{LABEL}}", subsequent_indent=" " * LABEL,
                            break_long_words=False, break_on_hyphens=False) + "\n")


def _rate(stats: CameraStats | None) -> str:
    if stats is None or stats.inspected == 0:
        return "0 of 0"
    return f"{stats.rejects} of {stats.inspected} ({100.0 * stats.rejects / stats.inspected:.2f} %)"


def check_health(health: dict[str, Any], config: Config, now: float) -> tuple[list[str], list[str]]:
    """(reasons the daemon is unhealthy, warnings that do not change the exit code)."""
    problems = [*_stale_problems(health, config, now), *_death_problems(health), *_process_problems(health),
                *_camera_problems(health, config), *_heartbeat_problems(health, config),
                *_database_problems(health, config)]
    warnings = [*_pipeline_warnings(health), *_mqtt_warnings(health.get("mqtt"))]
    return problems, warnings


def _stale_problems(health: dict[str, Any], config: Config, now: float) -> list[str]:
    """A health file not rewritten in time: the daemon is hung or stopped, or its disk is full."""
    interval = config.health.status_interval_s
    updated = _num(health.get("updated_at"))
    if updated is None:
        return ["health file has no updated_at"]
    if now - updated > STALE_FACTOR * interval:
        full = disk_full(config.storage.state_dir)
        return [f"health file is {fmt_duration(now - updated)} old (written every "
                f"{fmt_duration(interval)}): " + (f"the disk of {config.storage.state_dir} is FULL (the "
                                                  "daemon cannot write it), or the daemon is hung" if full
                                                  else "the daemon is hung or stopped")]
    return []


def _death_problems(health: dict[str, Any]) -> list[str]:
    dead = health.get("dead_threads")
    if not isinstance(dead, dict):
        return []
    return [f"thread {name} DIED ({why}): the daemon stops for systemd to restart it"
            for name, why in sorted(dead.items())]


def _process_problems(health: dict[str, Any]) -> list[str]:
    pid = _num(health.get("pid"))
    if pid is None or not pid_alive(int(pid)):
        return [f"daemon process {_int(health.get('pid'))} is not running"]
    return []


def _camera_problems(health: dict[str, Any], config: Config) -> list[str]:
    """Cameras not streaming, and configured cameras the daemon does not know (it runs an older config)."""
    cameras = health.get("cameras")
    if not isinstance(cameras, dict) or not cameras:
        return ["no camera in the health file"]
    problems: list[str] = []
    for name, cam in sorted(cameras.items()):
        state = cam.get("state", "?") if isinstance(cam, dict) else "?"
        if state != "streaming":
            problems.append(f"camera {name} is {state}, not streaming")
        problems.extend(_input_problem(name, cam))
    problems.extend(f"camera {cam_config.name} is not in the health file (config changed since the daemon "
                    f"started? systemctl restart edged)" for cam_config in config.cameras
                    if cam_config.name not in cameras)
    return problems


def _input_problem(name: str, cam: Any) -> list[str]:
    """A degraded camera (edged.input_health): the camera changed, not the parts; [] when its input is ok."""
    entry = _mapping(cam.get("input")) if isinstance(cam, dict) else {}
    if entry.get("state") != "degraded":
        return []
    return [f"camera {name} input DEGRADED: {escape(str(entry.get('reason')), 40)} (the camera changed, not the "
            f"parts: check light, lens, view)"]


def _input_lines(out: TextIO, entry: dict[str, Any], now: float) -> None:
    """`  input` of one camera: ok or degraded (why, since when), alarms raised, frames out of range."""
    if not entry:
        return
    state = "DEGRADED: " + escape(str(entry.get("reason")), 40) if entry.get("state") == "degraded" else "ok"
    since = _num(entry.get("since"))
    for_how_long = f" for {fmt_duration(now - since)}" if since else ""
    ref = "" if entry.get("reference", True) else "   (no input statistics in the bundle: frozen/covered only)"
    _line(out, "  input", f"{state}{for_how_long}{ref}")
    _line(out, "  alarms", f"{_int(entry.get('alarms'))}   frames out of range {_int(entry.get('frames_not_ok'))}"
                            f"   reject rate {_fmt_float(entry.get('reject_rate'), '.3f')}")


def _heartbeat_problems(health: dict[str, Any], config: Config) -> list[str]:
    threads = health.get("threads")
    if not isinstance(threads, dict):
        return []
    limit = config.health.heartbeat_timeout_s
    problems: list[str] = []
    for name, age in sorted(threads.items()):
        seconds = _num(age)
        if seconds is None or seconds > limit:
            problems.append(f"thread {name} silent for {fmt_duration(seconds)} (limit {fmt_duration(limit)}): hung")
    return problems


def _database_problems(health: dict[str, Any], config: Config) -> list[str]:
    disk = health.get("disk")
    if isinstance(disk, dict) and disk.get("db_full"):
        return [f"database disk FULL ({_int(disk.get('db_errors'))} failed commits): inspection rows are "
                "not stored; rejects are published directly, not durably. Free space on "
                f"{config.storage.state_dir}"]
    if isinstance(disk, dict) and disk.get("db_error"):
        return [f"database error: {disk.get('db_error')} ({_int(disk.get('db_errors'))} failed commits)"]
    return []


def _pipeline_warnings(health: dict[str, Any]) -> list[str]:
    """What the daemon copes with but the technician should know: broker down, images paused, NaN outputs."""
    warnings: list[str] = []
    if health.get("broker") == "disconnected":
        warnings.append("MQTT broker disconnected: rejects wait in the outbox and expire after reject_ttl_ms")
    disk = health.get("disk")
    if isinstance(disk, dict) and disk.get("images_paused"):
        warnings.append("image saving paused: disk quota or free space reached")
    invalid = _num(health.get("invalid_outputs"))
    if invalid:
        warnings.append(f"{int(invalid)} frame(s) not inspected: the model's output was NaN or infinite (a broken "
                        "model or bundle?)")
    return warnings


def _mqtt_warnings(mqtt: Any) -> list[str]:
    """What came in over MQTT or what the broker did, for the technician (the daemon carried on)."""
    if not isinstance(mqtt, dict):
        return []
    out: list[str] = []
    if _num(mqtt.get("callback_errors")) or _num(mqtt.get("paho_restarts")):
        out.append(f"MQTT: {_int(mqtt.get('callback_errors'))} callback error(s), {_int(mqtt.get('paho_restarts'))} "
                   "network thread restart(s): see the log (journalctl -u edged -p err)")
    if _num(mqtt.get("connect_refusals")) or _num(mqtt.get("session_takeovers")):
        out.append(f"MQTT: the broker refused or dropped {_int(mqtt.get('connect_refusals'))} connection(s); "
                   f"{_int(mqtt.get('session_takeovers'))} session takeover(s) by another client with our client id")
    return out


def disk_full(folder: Path) -> bool:
    """True when the file system of `folder` has (almost) no room left for an unprivileged writer:
    under 1 MiB, or under 5% of a file system smaller than 20 MiB."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < min(1 << 20, st.f_blocks * st.f_frsize // 20)


def render(config: Config, health: dict[str, Any] | None, db: dict[float, dict[str, CameraStats]],
           db_note: str | None, out: TextIO, now: float) -> None:
    """Print the report (everything except the final verdict)."""
    h = health or {}
    started = _num(h.get("started_at"))
    pid = _num(h.get("pid"))
    pid_text = "?" if pid is None else f"{int(pid)} ({'running' if pid_alive(int(pid)) else 'not running'})"
    _line(out, "station", f"{h.get('station', config.station)}   edged {h.get('version', '?')}   pid {pid_text}")
    if health is not None:
        _line(out, "uptime", f"{fmt_duration(None if started is None else now - started)}   health file "
                             f"written {fmt_duration(_age(h.get('updated_at'), now))} ago")
        _line(out, "model", f"{h.get('model', '?')} ({h.get('method', '?')}, {h.get('precision', '?')})")
        _line(out, "runtime", f"{h.get('runtime', '?')} / {h.get('provider', '?')}   threshold "
                              f"{_fmt_float(h.get('threshold'))}")
        choice = _mapping(h.get("runtime_choice"))
        if choice.get("reason"):
            _wrapped(out, "chosen", str(choice["reason"]))
        lat = _mapping(h.get("latency_ms"))
        _line(out, "latency", f"p50 {_fmt_ms(lat.get('p50'))}   p99 {_fmt_ms(lat.get('p99'))}   (all cameras)")
        _line(out, "broker", f"{h.get('broker', '?')}   outbox backlog {_int(h.get('outbox_backlog'))}   "
                             f"expired {_int(h.get('expired'))}   delivered {_int(h.get('delivered'))}")
        mqtt = _mapping(h.get("mqtt"))
        if mqtt:
            _line(out, "mqtt in", f"refused {_int(mqtt.get('refused'))}   triggers outstanding "
                                  f"{_int(mqtt.get('triggers_outstanding'))}   callback errors "
                                  f"{_int(mqtt.get('callback_errors'))}")
        _line(out, "inspected", f"{_int(h.get('inspected'))}   parts {_int(h.get('parts'))}   rejects "
                                f"{_int(h.get('rejects'))}   (since start)")
        by_reason = _mapping(h.get("rejects_by_reason"))
        if by_reason:
            _line(out, "rejects by", "   ".join(f"{k} {_int(v)}" for k, v in sorted(by_reason.items())))
        trig = _mapping(h.get("triggers"))
        if _num(trig.get("received")):
            _line(out, "triggers", f"{_int(trig.get('received'))}   not inspected in time "
                                   f"{_int(trig.get('not_inspected'))}   late {_int(trig.get('late_verdicts'))}")
        _handshake_line(out, _mapping(h.get("handshake")))
        _line(out, "last reject", _fmt_time(_num(h.get("last_reject_at")), now))
    if db_note:
        _wrapped(out, "database", db_note)

    cameras = _mapping(h.get("cameras"))
    names = list(cameras) + [c.name for c in config.cameras if c.name not in cameras]
    for name in names:
        cam = _mapping(cameras.get(name))
        out.write("\n")
        source = cam.get("source") or next((c.source for c in config.cameras if c.name == name), "?")
        state = cam.get("state", "unknown (not in the health file)")
        _line(out, "camera", f"{name}: {state}   {redact_url(str(source))}")
        _line(out, "  last frame", _fmt_time(_num(cam.get("last_frame_at")), now))
        _line(out, "  capture", f"fps {_fmt_float(cam.get('fps'), '.1f')}   frames {_int(cam.get('frames'))}   "
                                f"queue {_int(cam.get('queue_depth'))}   drops {_int(cam.get('drops'))}")
        missed = f"   missed {_int(cam.get('missed'))}" if cam.get("missed") else ""  # GenICam: lost on the wire
        _line(out, "  faults", f"bad frames {_int(cam.get('bad_frames'))}   reconnects {_int(cam.get('reconnects'))}"
                               f"{missed}")
        recipe = _mapping(_mapping(h.get("recipes")).get(name))
        if recipe:
            _line(out, "  recipe", f"{recipe.get('recipe', '?')}   model {recipe.get('model', '?')}")
        _input_lines(out, _mapping(cam.get("input")), now)
        short, long_ = db.get(WINDOWS_S[0], {}).get(name), db.get(WINDOWS_S[1], {}).get(name)
        if db:
            _line(out, "  rejects", f"5 min: {_rate(short)}   60 min: {_rate(long_)}")
            lats = short.latencies if short else []
            _line(out, "  latency", f"p50 {_fmt_ms(percentile(lats, 50))}   p99 {_fmt_ms(percentile(lats, 99))}"
                                    f"   (last 5 min, {len(lats)} frames)")

    threads = _mapping(h.get("threads"))
    if threads:
        out.write("\n")
        _wrapped(out, "heartbeats", "   ".join(f"{n} {fmt_duration(_num(a))}" for n, a in sorted(threads.items())))


def _handshake_line(out: TextIO, hs: dict[str, Any]) -> None:
    """Results the PLC has not acknowledged (edged.handshake), once any result was sent or acknowledged."""
    if any(_num(hs.get(k)) for k in ("unacknowledged", "acknowledged", "overruns", "unknown_acks")):
        _line(out, "plc acks", f"unacknowledged {_int(hs.get('unacknowledged'))}   acknowledged "
                               f"{_int(hs.get('acknowledged'))}   overruns {_int(hs.get('overruns'))}   unknown "
                               f"{_int(hs.get('unknown_acks'))}")


def _mapping(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else {}: the health file is read defensively (any version, any damage)."""
    return value if isinstance(value, dict) else {}


def _age(epoch: Any, now: float) -> float | None:
    t = _num(epoch)
    return None if t is None else now - t


def _fmt_float(value: Any, spec: str = ".4g") -> str:
    n = _num(value)
    return "?" if n is None else format(n, spec)


def main(config: Config, out: TextIO = sys.stdout, now: float | None = None) -> int:
    """Print the report; 0 when the daemon looks healthy, 1 otherwise (the reasons are printed)."""
    now = time.time() if now is None else now
    health_path = config.storage.state_dir / HEALTH_FILE
    health, health_problem = read_health(health_path)
    db, db_note = read_database(config.storage.resolve(config.storage.database), now)
    render(config, health, db, db_note, out, now)

    problems: list[str] = [health_problem] if health_problem else []
    warnings: list[str] = []
    if health is not None:
        problems, warnings = check_health(health, config, now)
    out.write("\n")
    for warning in warnings:
        _wrapped(out, "warning", warning)
    if problems:
        _line(out, "health", "UNHEALTHY")
        for problem in problems:
            out.write(textwrap.fill(problem, WIDTH, initial_indent="  - ", subsequent_indent="    ") + "\n")
        out.write("  more: systemctl status edged;  journalctl -u edged -n 50\n")
        return 1
    _line(out, "health", "OK")
    return 0
