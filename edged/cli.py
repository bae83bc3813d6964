"""The `edged` command: run, check-config, replay, status.

Exit codes: 0 success; 1 the daemon failed at run time (systemd restarts it); 2 a bad config, model
bundle or argument (systemd's RestartPreventExitStatus=2: restarting cannot fix it). A user error is
one clear line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from edged import __version__
from edged.bundle import BundleError
from edged.config import Config, ConfigError, MqttConfig, load_config
from edged.instance import InstanceLocked
from edged.logsetup import setup_logging
from edged.safetext import redact_url
from edged.store import NotADatabase, StoreError, check_database_path
from edged.topics import Topics

log = logging.getLogger("edged")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_CONFIG = os.environ.get("EDGED_CONFIG", "/etc/edged/edged.yaml")
DEFAULT_COLLECT_CONFIG = "/etc/edged/collect.yaml"


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="Find defective parts on a production line.")
    p.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    sp = sub.add_parser("run", help="run the daemon in the foreground (what systemd starts)")
    common(sp)
    sp = sub.add_parser("check-config", help="validate the config, load the model, print what will run")
    common(sp)
    sp = sub.add_parser("replay", help="run the pipeline over a video file or image folder, as fast as it goes")
    sp.add_argument("source", help="video file or image folder")
    common(sp)
    sp.add_argument("--json", type=Path, help="write one JSON line per frame here")
    sp.add_argument("--db", type=Path, help="SQLite database to log to (default: a temporary one)")
    sp.add_argument("--mqtt", action="store_true", help="also publish to the configured broker (off by default:"
                    " a replay must not move a live line's actuators)")
    sp = sub.add_parser("status", help="health of the running daemon, for the technician at the box")
    common(sp)
    _add_cameras_parser(sub)
    sp = sub.add_parser("collect", help="record every station's results in PostgreSQL (a plant's central record)")
    sp.add_argument("-c", "--config", default=DEFAULT_COLLECT_CONFIG,
                    help=f"collect.yaml (default {DEFAULT_COLLECT_CONFIG})")
    sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    """The `edged` command. Returns the exit code, never raises for a user's mistake: 2 bad input (config, bundle, not a
    database), 1 failure (database error, state directory locked)."""
    args = _build_parser().parse_args(argv)
    if args.command is None:
        _build_parser().print_help(sys.stderr)
        return EXIT_BAD_INPUT
    if args.command == "cameras":  # no config: it is how a technician finds what to write into one
        return cmd_cameras(args.json, args.fake, sys.stdout)
    if args.command == "collect":  # its own config file (collect.yaml), not a station's edged.yaml
        return cmd_collect(args.config, args.verbose)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    setup_logging(config.logging.level, verbose=args.verbose)
    try:
        if args.command == "run":
            return cmd_run(config)
        if args.command == "check-config":
            return cmd_check_config(config, sys.stdout)
        if args.command == "replay":
            return cmd_replay(config, args.source, args.json, args.db, args.mqtt, sys.stdout)
        if args.command == "status":
            from edged.status import main as status_main

            return status_main(config)
    except (BundleError, ConfigError, NotADatabase) as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (StoreError, InstanceLocked) as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_BAD_INPUT


def cmd_run(config: Config) -> int:
    """`edged run`: the daemon in the foreground until SIGTERM/SIGINT (or every file source has ended); its exit
    code, non-zero asking systemd for a restart."""
    from edged.service import Service

    if config.mqtt.enabled:
        config.mqtt.read_password()  # an unreadable password file: a clear message and exit 2 now, not a link retrying
    return Service(config).run()


def cmd_collect(path: str, verbose: bool) -> int:
    """`edged collect`: the plant's collector (edged/collect/); needs psycopg, the `collect` extra."""
    try:
        import psycopg  # noqa: F401 (only to say clearly what is missing)
    except ImportError:
        print("edged: edged collect needs psycopg 3: pip install 'edged[collect]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    from edged.collect.command import run_collect

    return run_collect(path, verbose)


def cmd_check_config(config: Config, out: TextIO) -> int:
    """Load everything that can be loaded without starting cameras, and say what will run."""
    from edged.detector import Detector
    from edged.input_health import describe_reference

    m = config.model
    det = Detector(m.bundle, m.precision, m.runtime, m.providers, m.intra_op_threads, m.verify_sha256)
    not_sqlite = check_database_path(config.storage.resolve(config.storage.database))
    if not_sqlite:
        raise NotADatabase(not_sqlite)
    man = det.manifest
    w = out.write
    w(f"config OK: station {config.station}\n")
    w(f"model:    {man.bundle_id} ({man.method}, {det.precision}) from {m.bundle}\n")
    light = ", light normalized per image (mean_std)" if man.input.normalize == "mean_std" else ""
    w(f"          input {man.input.width}x{man.input.height} {man.input.color_order}{light}, threshold "
      f"{det.threshold:.6g} ({man.model(det.precision).threshold.method}"
      f"{_pct(man.model(det.precision).threshold.percentile)})\n")
    w(f"input:    {describe_reference(man.input_stats, config.input_health)}\n")
    w(f"runtime:  {det.runtime}, provider {det.provider}, {m.intra_op_threads} thread(s) x {m.workers} worker(s),"
      f" batch {m.batch_size}\n")
    w(f"          chosen: {det.choice.describe()}\n")
    for text in det.warnings:
        w(f"warning:  {text}\n")
    for cam in config.cameras:
        thr = f"threshold {cam.threshold:.6g} (camera override)" if cam.threshold is not None else "bundle threshold"
        trig = cam.trigger.mode + (f", gap {cam.trigger.gap_ms:g} ms" if cam.trigger.mode == "free_run" else
                                   f", delay {cam.trigger.delay_ms:g} ms, timeout {cam.trigger.timeout_ms:g} ms, "
                                   f"fail-safe {cam.trigger.fail_safe}")
        w(f"camera:   {cam.name}: {cam.kind} {redact_url(cam.source)}; queue {cam.queue_size}; "
          f"{thr}; {trig}\n")
    for line in _camera_checks(config):
        w(f"camera:   {line}\n")
    mq = config.mqtt
    if mq.enabled:
        w(f"mqtt:     {mq.host}:{mq.port} (MQTT {mq.protocol}{', TLS' if mq.tls.enabled else ''}"
          f"{', user ' + mq.username if mq.username else ''}{_mqtt_password(mq)}), topics {Topics.of(config).display}, "
          f"reject TTL {mq.reject_ttl_ms:g} ms\n")
    else:
        w("mqtt:     disabled (rejects are only logged)\n")
    st = config.storage
    w(f"storage:  {st.resolve(st.database)}; images: {st.images.save} -> {st.resolve(st.images.dir)} "
      f"(quota {st.images.quota_mb:g} MB)\n")
    for line in _recipe_lines(config, det.bundle_id):
        w(f"recipe:   {line}\n")
    w(f"web:      {_web_line(config)}\n")
    if config.opcua.enabled:
        w(f"opcua:    {_opcua_line(config)}\n")
    return EXIT_OK


def _recipe_lines(config: Config, default_model: str) -> list[str]:
    """Each recipe (name -> bundle, model id) and the one each camera starts on, kept across a restart or
    configured: a technician sees which product's model the line comes back on before it does."""
    from edged.bundle import load_manifest
    from edged.recipes import DEFAULT_RECIPE, SELECTION_FILE, load_selection, recipe_table, starting_recipe

    table = recipe_table(config.recipes, config.model.bundle)
    keep = config.storage.state_dir / SELECTION_FILE
    kept = load_selection(keep, table)
    starts: dict[str, str] = {}
    for cam in config.cameras:
        configured = starting_recipe(cam.recipe, config.recipes)
        name = kept.get(cam.name) or configured
        starts[cam.name] = name
    lines = []
    for name, recipe in table.items():
        if name == DEFAULT_RECIPE and name not in config.recipes:
            model = default_model
        else:
            try:
                model = load_manifest(recipe.bundle).bundle_id
            except BundleError as exc:
                if name in starts.values():  # the daemon would refuse to start on it too
                    raise BundleError(f"recipes.{name}: {exc}") from None
                model = f"? not loadable, a switch to it will be refused: {exc}"  # the line runs on without it
        thr = f", threshold {recipe.threshold:.6g}" if recipe.threshold is not None else ""
        lines.append(f"{name} -> {recipe.bundle} (model {model}{thr})")
    for cam in config.cameras:
        configured = starting_recipe(cam.recipe, config.recipes)
        why = f"kept in {keep}; configured {configured}" if starts[cam.name] != configured else "configured"
        lines.append(f"camera {cam.name} starts on {starts[cam.name]} ({why})")
    return lines


def _mqtt_password(mq: MqttConfig) -> str:
    """Whether the broker gets a password (never the password itself); reading it here fails check-config the way
    `edged run` would fail for an unreadable password file."""
    return ", password set" if mq.read_password() else ""


def _web_line(config: Config) -> str:
    """Where the web view listens and whether it asks for a login (never the password itself); reading the
    password here fails check-config the way the daemon would fail for a missing one."""
    from edged.web.server import Listening

    web = config.web
    if not web.enabled:
        return "disabled"
    login = "password login" if web.read_password() is not None else "no login (open)"
    return f"{Listening(web.bind, web.port).url} ({login}; /metrics, /api/)"


def _opcua_line(config: Config) -> str:
    """The opc.tcp endpoint the server opens, its security and who may log in."""
    ua = config.opcua
    users = [u for u in ("anonymous" if ua.anonymous else "", f"user {ua.username}" if ua.username else "") if u]
    return f"{ua.endpoint} (security {', '.join(ua.security)}; {', '.join(users)})"


def _camera_checks(config: Config) -> list[str]:
    """Cameras with settings of their own (GenICam) opened once to apply them; a refused one is a bad config."""
    from edged.sources import SettingRefused, check_cameras

    try:
        return check_cameras(config.cameras)
    except SettingRefused as exc:
        raise ConfigError(f"camera setting refused: {exc}") from None


def _add_cameras_parser(sub: Any) -> None:
    sp = sub.add_parser("cameras", help="list the GenICam cameras found and the settings they take")
    sp.add_argument("--json", action="store_true", help="one JSON document instead of text")
    sp.add_argument("--fake", action="store_true", help="include Aravis' in-process fake camera (Fake_1)")
    sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def cmd_cameras(as_json: bool, fake: bool, out: TextIO) -> int:
    """`edged cameras`: each GenICam device found (id, vendor, model, serial, address) and the ranges and entries
    of the settings a config can give it; exit 2 without Aravis, 1 when discovery fails."""
    from edged.sources.aravis import AravisError, AravisMissing
    from edged.sources.camera_list import list_cameras, write_text

    try:
        found = list_cameras(with_fake=fake)
    except AravisMissing as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AravisError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        out.write(json.dumps({"cameras": found}, indent=2) + "\n")
    else:
        write_text(found, out)
    return EXIT_OK


def _pct(p: float | None) -> str:
    return f" {p:g}th percentile" if p is not None else ""


def cmd_replay(config: Config, source: str, json_out: Path | None, db: Path | None, mqtt: bool,
               out: TextIO) -> int:
    """The production pipeline over a file or folder: nothing dropped, a summary at the end."""
    from edged.service import Service
    from edged.sources import camera_for, classify

    path = Path(source).resolve()
    kind = classify(str(path))
    if kind not in ("file", "folder") or not path.exists():
        raise ConfigError(f"replay: {source} is not a video file or an image folder")
    tmp = None
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="edged-replay-")
        db = Path(tmp.name) / "replay.db"
    # the first camera's common settings (name, threshold, roi, trigger) over the file, its kind's own
    # keys at their defaults: no loop, no realtime pacing, no watching
    cam = camera_for(str(path), like=config.cameras[0], kind=kind)
    storage = config.storage.model_copy(update={
        "database": db.resolve(), "state_dir": db.resolve().parent,
        "images": config.storage.images.model_copy(update={"save": "none"})})
    cfg = config.model_copy(update={"cameras": (cam,), "storage": storage})
    scores: list[float] = []
    fh = json_out.open("w", encoding="utf-8") if json_out else None

    def on_verdict(v: Any, uid: str) -> None:
        scores.append(v.score)
        if fh is not None:
            fh.write(json.dumps({"seq": v.frame.seq, "name": v.frame.source_name, "score": round(v.score, 6),
                                 "threshold": v.threshold, "is_defective": v.is_defective,
                                 "latency_ms": round(v.latency_ms, 3),
                                 "regions": [r.to_dict() for r in v.regions]}) + "\n")

    # its own MQTT client id and no status/last will: beside the service, a replay must neither take the
    # service's session over nor overwrite the station's retained status
    client_id = f"{config.mqtt.client_id or 'edged-' + config.station}-replay-{os.getpid()}"
    service = Service(cfg, mqtt_enabled=mqtt, on_verdict=on_verdict, mqtt_client_id=client_id, mqtt_announce=False,
                      web_enabled=False)
    t0 = time.monotonic()
    try:
        code = service.run()  # 1 when a thread died: the summary is then incomplete
    finally:
        if fh is not None:
            fh.close()
    s = service.summary()
    elapsed = time.monotonic() - t0
    lat = s.latency
    out.write(f"replay {source}: {s.frames} frames, {s.inspected} inspected, {s.rejects} rejects, "
              f"{s.bad_frames} bad frames, {s.drops} dropped\n")
    if scores:
        out.write(f"scores: min {min(scores):.6g}, max {max(scores):.6g}; threshold "
                  f"{service.detector.threshold if service.detector else float('nan'):.6g}\n")
    out.write(f"latency: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms; {s.inspected / max(elapsed, 1e-9):.1f} "
              f"frames/s over {elapsed:.2f} s\n")
    if tmp is not None:
        tmp.cleanup()
    return EXIT_OK if code == 0 else EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
