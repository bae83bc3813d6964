"""Service wiring: build the pipeline from the config, run it, report health, stop it cleanly.

    capture threads --FrameQueue--> inference workers --queue--> recorder --SQLite outbox--> MQTT link
                                                                    \\-> image archive

The main thread only supervises: it sends systemd READY/STATUS/WATCHDOG (the watchdog ping only
while every thread's heartbeat is fresh, so a hung thread gets the process restarted), writes the
health file for `edged status`, publishes stats, and on SIGTERM/SIGINT stops the stages in order
so nothing committed is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import psutil

from edged import __version__, jsonout
from edged.archive import ImageArchive
from edged.bundle import BundleError
from edged.capture import CaptureThread
from edged.config import Config, ConfigError
from edged.detector import Detector
from edged.frame_queue import FrameQueue
from edged.frames import Verdict
from edged.handshake import ResultAcks, TriggerRefusal, camera_refusal
from edged.health import CameraStats, Counters, Heartbeats, LatencyWindow
from edged.incoming import (
    CommandRefused,
    MessageRefused,
    TriggerAdmission,
    TriggerRefused,
    parse_recipe_command,
    parse_result_ack,
    parse_trigger,
)
from edged.input_health import InputAlarm, InputHealth
from edged.instance import InstanceLock
from edged.mqtt_link import MqttLink, Route
from edged.parts import TriggerGate
from edged.payloads import Alarm, CameraState, Ready, RecipeAck, Stats, TriggerAck
from edged.recipes import (
    DEFAULT_RECIPE,
    SELECTION_FILE,
    ActiveRecipe,
    RecipeBook,
    RecipeConfig,
    RecipeOutcome,
    RecipeRequest,
    RecipeSwitcher,
    load_selection,
    recipe_table,
    starting_recipe,
)
from edged.recorder import RecorderThread
from edged.safetext import redact_url
from edged.sdnotify import Notifier
from edged.sources import SettingRefused, check_cameras
from edged.store import InspectionWriter, open_database
from edged.topics import Topics
from edged.web.live import LiveView
from edged.worker import Decided, InferenceWorker

if TYPE_CHECKING:
    from edged.opcua.server import OpcUaServer, Snapshot
    from edged.web.server import WebServer

log = logging.getLogger(__name__)

# Python hands the GIL to a waiting thread only every 5 ms by default: a reject's commit or publish
# could sit behind a worker's Python code for that long. 1 ms cut the reject's capture-to-publish p99
# from 15-17 ms to 12.6-13 ms in scripts/bench.py (CAE-128 int8 at 30 fps) at no throughput cost seen.
GIL_SWITCH_INTERVAL_S = 0.001

READY_TIMEOUT_S = 20.0  # READY=1 even without a camera after this, so systemd does not loop on a dead cable
WORKER_DRAIN_S = 3.0  # at shutdown, queued frames get this long to be inspected; the rest are dropped (counted)


@dataclass
class RunSummary:
    """Totals since start: `edged replay`'s last line."""

    frames: int = 0
    inspected: int = 0
    rejects: int = 0
    drops: int = 0
    bad_frames: int = 0
    dropped_at_shutdown: int = 0
    seconds: float = 0.0
    latency: dict[str, float | None] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)


class Service:
    """The daemon: wires capture, queue, workers, recorder, MQTT link and images, supervises them (heartbeats, watchdog,
    health file) and stops them in order. Driven from one thread."""

    def __init__(self, config: Config, *, detector: Detector | None = None, mqtt_enabled: bool | None = None,
                 on_verdict: Callable[[Verdict, str], None] | None = None, notifier: Notifier | None = None,
                 handle_signals: bool = True, mqtt_client_id: str | None = None, mqtt_announce: bool = True,
                 web_enabled: bool | None = None) -> None:
        self.config = config
        self.web_enabled = config.web.enabled if web_enabled is None else web_enabled  # replay: never
        self.live = LiveView([c.name for c in config.cameras])  # fed by the recorder only while the view runs
        self.web: WebServer | None = None
        self.detector = detector
        self.mqtt_enabled = config.mqtt.enabled if mqtt_enabled is None else mqtt_enabled
        self.mqtt_client_id = mqtt_client_id  # None: the config's (edged replay uses its own)
        self.mqtt_announce = mqtt_announce
        self.on_verdict = on_verdict
        self.notifier = notifier or Notifier()
        self.handle_signals = handle_signals
        self.heartbeats = Heartbeats()
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.frames = FrameQueue()
        self.capture_stop = threading.Event()
        self.worker_stop = threading.Event()
        self.link_stop = threading.Event()
        self.stop_requested = threading.Event()
        self.camera_events: queue.Queue[tuple[str, str, str]] = queue.Queue()
        self.decided: queue.Queue[Decided] = queue.Queue()
        self.stats = {c.name: CameraStats(c.name, redact_url(c.source)) for c in config.cameras}  # shown, never opened
        self.captures: list[CaptureThread] = []
        self.workers: list[InferenceWorker] = []
        self.recorder: RecorderThread | None = None
        self.link: MqttLink | None = None
        self.archive: ImageArchive | None = None
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._ready_sent = False
        self._stale: list[str] = []
        self._dead: dict[str, str] = {}  # threads that must live and have died: name -> why
        self._dead_since: float | None = None
        self._stopping = False
        self._health_write_failed = False
        self._process = psutil.Process()
        self.gates = {c.name: TriggerGate() for c in config.cameras if c.trigger.mode == "mqtt"}
        self._trigger_timing = {c.name: (c.trigger.delay_ms, c.trigger.timeout_ms) for c in config.cameras
                                if c.trigger.mode == "mqtt"}
        self._admission = TriggerAdmission()
        self._trigger_lock = threading.Lock()  # triggers come from the MQTT thread and OPC UA's executor threads
        self.instance_lock = InstanceLock(config.storage.state_dir)  # taken in start()
        self.input_health: InputHealth | None = None  # built in start(), from the bundle's ranges
        self._alarms: dict[str, dict[str, InputAlarm]] = {}  # camera -> source -> its active alarm
        self.recipes: RecipeBook | None = None  # built in start(): which recipe (model) each camera runs
        self.switcher: RecipeSwitcher | None = None  # loads and verifies a new recipe off the hot path
        self.opcua: OpcUaServer | None = None  # the PLC's OPC UA view (edged/opcua/), when enabled
        self._recipe_waiters: dict[str, tuple[threading.Event, list[RecipeOutcome]]] = {}  # OPC UA's SelectRecipe
        self.recipe_stop = threading.Event()
        self.result_acks = ResultAcks()  # triggered parts' results the PLC has not acknowledged (edged.handshake)
        self.trigger_refusals: dict[str, int] = {}  # refused trigger acks by reason (written under _trigger_lock)
        self._ready: dict[str, tuple[bool, str]] = {}  # camera -> the ready flag last published
        if self.gates and not self.mqtt_enabled:
            raise ConfigError("cameras with trigger mode mqtt need MQTT (triggers come over MQTT)")

    # --- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Take the state directory (InstanceLocked if another daemon has it), load the model (BundleError), open the
        database and start every thread."""
        cfg = self.config
        # first: a second daemon on this state directory must not touch its database or its outbox
        self.instance_lock.acquire()
        self._check_opcua()
        self._check_cameras()
        self._load_recipes()
        assert self.detector is not None and self.recipes is not None
        db_path = cfg.storage.resolve(cfg.storage.database)
        self.db = open_database(db_path)
        self.writer = InspectionWriter(self.db)
        images = cfg.storage.images
        if images.save != "none":
            self.archive = ImageArchive(cfg.storage.resolve(images.dir), images.quota_mb, images.overlay,
                                        images.format)
        if self.mqtt_enabled:
            self.link = MqttLink(cfg, db_path, self.heartbeats, self.link_stop, routes=self.routes(),
                                 client_id=self.mqtt_client_id, announce=self.mqtt_announce)
        self._start_input_health()
        self.recorder = RecorderThread(
            cfg, self.decided, self.writer, self.archive, self.counters, self.latency, self.heartbeats,
            self.worker_stop, to_link=self.link.offer if self.link else (lambda items: None),
            send_result=self.link.send_result if (self.link and cfg.mqtt.publish_results) else None,
            on_verdict=self._on_verdict if self.web_enabled else self.on_verdict,
            publish_direct=self.link.publish_direct if self.link else None, input_health=self.input_health)
        self.recorder.on_results = self._results_committed
        self.recorder.start()
        if self.link is not None:
            self.link.start()
        cameras = {c.name: c for c in cfg.cameras}
        for i in range(cfg.model.workers):
            w = InferenceWorker(i, self.detector, self.frames, self.decided, cameras, cfg.model, self.heartbeats,
                                self.worker_stop, recipes=self.recipes)
            self.workers.append(w)
            w.start()
        for cam in cfg.cameras:
            self.frames.add_lane(cam.name, cam.queue_size)
            t = CaptureThread(cam, self.frames, self.stats[cam.name], self.heartbeats, self.capture_stop,
                              self.camera_events, gate=self.gates.get(cam.name),
                              input_monitor=self.input_health.monitors[cam.name] if self.input_health else None)
            self.captures.append(t)
            t.start()
        log.info("edged %s started: station %s, %d camera(s), model %s, %d worker(s)", __version__, cfg.station,
                 len(cfg.cameras), self.detector.bundle_id, len(self.workers))
        self._start_switcher()
        self._start_opcua()
        self._start_web()

    # --- recipes (edged.recipes) ---------------------------------------------------------------------
    def _load_model(self, recipe: RecipeConfig) -> Detector:
        """A recipe's bundle loaded and self-tested the way `model:` says (precision, runtime, providers, threads)."""
        m = self.config.model
        return Detector(recipe.bundle, m.precision, m.runtime, m.providers, m.intra_op_threads, m.verify_sha256)

    def _load_recipes(self) -> None:
        """Each camera's starting recipe, loaded once per recipe (BundleError names the recipe); `self.detector` is
        the first camera's model (input health's ranges, the health file), or the one the caller gave (replay)."""
        cfg = self.config
        table = recipe_table(cfg.recipes, cfg.model.bundle)
        keep: Path | None = cfg.storage.state_dir / SELECTION_FILE
        if not self.mqtt_announce:  # edged replay: the config's recipes, and nothing kept for the station
            keep = None
        kept = load_selection(keep, table) if keep is not None else {}
        loaded: dict[str, Detector] = {DEFAULT_RECIPE: self.detector} if self.detector is not None else {}
        active: dict[str, ActiveRecipe] = {}
        for cam in cfg.cameras:
            name = kept.get(cam.name) or starting_recipe(cam.recipe, cfg.recipes)
            if name != starting_recipe(cam.recipe, cfg.recipes):
                log.info("camera %s starts on recipe %s, selected before the restart (kept in %s)", cam.name, name,
                         keep)
            if name not in loaded:
                try:
                    loaded[name] = self._load_model(table[name])
                except BundleError as exc:
                    where = "model.bundle" if name == DEFAULT_RECIPE and name not in cfg.recipes else f"recipes.{name}"
                    raise BundleError(f"{where}: {exc}") from None
            active[cam.name] = ActiveRecipe(name, loaded[name], table[name].threshold)
        self.recipes = RecipeBook(table, active, keep)
        if self.detector is None:
            self.detector = active[cfg.cameras[0].name].detector

    def _check_opcua(self) -> None:
        """opcua.enabled without the extra installed is a bad config (exit 2) that says what to install."""
        if self.config.opcua.enabled:
            from edged.opcua.server import INSTALL_HINT, asyncua_available

            if not asyncua_available():
                raise ConfigError(INSTALL_HINT)

    def _start_switcher(self) -> None:
        if self.recipes is None or (self.link is None and not self.config.opcua.enabled and not self.web_enabled):
            return  # commands come over MQTT, OPC UA or the web view
        self.switcher = RecipeSwitcher(self.recipes, self._load_model, lambda cam: self.stats[cam].latest,
                                       self._recipe_answered, self.heartbeats, self.recipe_stop)
        self.switcher.start()

    def _on_recipe_command(self, payload: bytes, arrived_at: float) -> None:
        """`<base>/cmd/recipe` (on the MQTT thread): checked, queued for the switcher, answered on the ack topic when
        done; a refusal with a readable request id is answered at once (and counted by the link)."""
        if self.switcher is None or self.recipes is None:
            raise MessageRefused("recipe command before the pipeline started")
        try:
            request = parse_recipe_command(payload, arrived_at, self.recipes.cameras(), list(self.recipes.table))
            busy = self.switcher.submit(request)
            if busy:
                raise CommandRefused(request.request_id, busy)
        except CommandRefused as exc:
            self._recipe_answered(RecipeOutcome(RecipeRequest(exc.request_id, "", (), arrived_at), False, str(exc),
                                                None, {}, time.time()))
            raise

    def _recipe_answered(self, outcome: RecipeOutcome) -> None:
        """The ack of a recipe request: to its OPC UA caller, or QoS 1 on MQTT (switcher's thread or MQTT thread)."""
        if outcome.ok:
            self._input_follows_recipes(list(outcome.request.cameras))
            if self.recipes is not None:  # `detector` names the first camera's model (the view's /metrics too)
                self.detector = self.recipes.current(self.config.cameras[0].name).detector
        waiter = self._recipe_waiters.pop(outcome.request.request_id, None)
        if waiter is not None:  # OPC UA's SelectRecipe waits for it
            waiter[1].append(outcome)
            waiter[0].set()
            return
        if self.link is None or self.recipes is None:
            return
        current = {cam: a["recipe"] for cam, a in self.recipes.summary().items()}
        ack = RecipeAck.of(outcome, self.config.station, current)
        if not outcome.request.recipe:
            ack = dataclasses.replace(ack, recipe=None)
        self.link.send(Topics.of(self.config).recipe_ack, ack, qos=1)

    # --- OPC UA (edged/opcua/) -----------------------------------------------------------------------
    def _start_opcua(self) -> None:
        """The OPC UA server thread, when enabled; a port in use is logged and the line runs on without it."""
        cfg = self.config.opcua
        if not cfg.enabled:
            return
        from edged.opcua.server import Hooks, OpcUaServer

        try:
            password = cfg.read_password()
        except ValueError as exc:  # never open to everyone for want of a password
            log.error("OPC UA server not started: %s", exc)
            return
        self.opcua = OpcUaServer(cfg, self.config.station, [c.name for c in self.config.cameras],
                                 Hooks(self._opcua_trigger, self.select_recipe, self._opcua_snapshot,
                                       lambda inspection_id: self.result_acks.acked((inspection_id,)) == 1),
                                 self.heartbeats, password)
        self.opcua.start()
        self.opcua.listening.wait(20.0)
        if self.opcua.failed:  # a port in use: logged by the server; the line inspects on without it
            self.opcua.join(timeout=5.0)
            self.opcua = None

    def _results_committed(self, results: list[tuple[int, dict[str, object]]]) -> None:
        """Recorder thread, after a commit: the results now await the PLC's ack, and OPC UA shows them."""
        self.result_acks.sent([i for i, _ in results], time.time())
        if self.opcua is not None:
            for inspection_id, payload in results:
                self.opcua.result({**payload, "inspection_id": inspection_id})

    def _opcua_trigger(self, camera: str, part_id: str) -> tuple[str, str]:
        """OPC UA's Trigger(camera, part_id): the MQTT trigger's path; -> (accepted | refused, reason)."""
        body: dict[str, object] = {"part_id": part_id}
        if camera:
            body["camera"] = camera
        acks: list[TriggerAck] = []
        try:
            self.admit_trigger(jsonout.dumps(body).encode(), time.time(), acks)
        except MessageRefused as exc:
            if not acks:
                return "refused", str(exc)
        refused = [a for a in acks if not a.accepted]
        if refused:
            return "refused", f"{refused[0].reason}: {refused[0].detail}"
        return "accepted", ""

    def select_recipe(self, camera: str, recipe: str, timeout_s: float = 120.0) -> tuple[str, str, str]:
        """Switch `camera` ('' for all) to `recipe` and wait for the outcome (any thread but the switcher's):
        -> (switched | refused, reason, model)."""
        if self.switcher is None or self.recipes is None:
            return "refused", "the pipeline is not running", ""
        request_id = f"opcua-{time.monotonic_ns()}"
        body: dict[str, object] = {"request_id": request_id, "recipe": recipe}
        if camera:
            body["camera"] = camera
        try:
            request = parse_recipe_command(jsonout.dumps(body).encode(), time.time(), self.recipes.cameras(),
                                           list(self.recipes.table))
        except MessageRefused as exc:
            return "refused", str(exc), ""
        done: tuple[threading.Event, list[RecipeOutcome]] = (threading.Event(), [])
        self._recipe_waiters[request_id] = done
        busy = self.switcher.submit(request)
        if busy:
            self._recipe_waiters.pop(request_id, None)
            return "refused", busy, ""
        if not done[0].wait(timeout_s):
            return "refused", f"no outcome within {timeout_s:g} s (still loading?)", ""
        if not done[1]:  # released by the shutdown
            return "refused", "the daemon is stopping", ""
        outcome = done[1][0]
        return ("switched", "", outcome.model or "") if outcome.ok else ("refused", outcome.reason, "")

    def _opcua_snapshot(self) -> Snapshot:
        """What the OPC UA namespace shows besides results (its loop calls this every half second)."""
        from edged.opcua.server import Snapshot

        state = ("Halted" if self._stopping else "Error" if self._dead else
                 "Operational" if self._ready_sent else "Preoperational")
        counters = {"Inspected": self.counters.inspected, "Rejects": self.counters.rejects,
                    "NotInspected": self.counters.not_inspected, "Drops": sum(self.frames.drops(n) for n in self.stats)}
        cams = {}
        for name, stats in self.stats.items():
            active = self.recipes.current(name) if self.recipes is not None else None
            ready = stats.state == "streaming" and (name not in self.gates or self.trigger_refusal(name) is None)
            cams[name] = (ready, active.name if active else "", active.model if active else "")
        return Snapshot(state, counters, cams)

    # --- web view ----------------------------------------------------------------------------------
    def _start_web(self) -> None:
        """The web view in its own threads (edged/web/); a port in use or a database it cannot prepare is logged
        and the line runs on without the view (inspection matters more than the page)."""
        if not self.web_enabled:
            return
        from edged.web.app import WebApp  # here: the daemon's other commands never load the server
        from edged.web.server import WebServer
        web = self.config.web
        try:
            self.web = WebServer(WebApp(self, self.live), web, self.heartbeats)
        except (OSError, sqlite3.Error, ConfigError) as exc:  # a port in use, no password where one is needed
            log.error("web view not started on %s port %d: %s; the line runs on without it", web.bind, web.port, exc)
            return
        self.web.start()
        log.info("web view on %s (%s)", self.web.listening.url,
                 "login required" if self.web.login_required else "no login: open to this address")

    def _on_verdict(self, verdict: Verdict, uid: str) -> None:
        """The recorder's per-verdict hook while the view runs: references for the live view, then replay's hook."""
        self.live.seen(verdict)
        if self.on_verdict is not None:
            self.on_verdict(verdict, uid)

    def _stop_web(self) -> None:
        if self.web is not None:
            self.web.stop()

    def _check_cameras(self) -> None:
        """A camera that refuses a configured setting (GenICam) is a bad config, exit 2, found before anything runs."""
        try:
            for line in check_cameras(self.config.cameras):
                log.info("camera %s", line)
        except SettingRefused as exc:
            raise ConfigError(f"camera setting refused: {exc}") from None

    # --- supervise ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Supervise until a signal, or until every file/folder source has ended. Returns the exit code."""
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        if self.handle_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.start()
        interval = self.config.health.status_interval_s
        watchdog = self.notifier.watchdog_interval_s
        tick = min(0.25, watchdog or 0.25)
        next_status = 0.0
        next_stats = time.monotonic() + self.config.mqtt.stats_interval_s
        while not self.stop_requested.is_set():
            now = time.monotonic()
            self._camera_events()
            self._input_alarms()
            self._supervised("ready flags", self._publish_ready)
            self._maybe_ready(now)
            deaths = len(self._dead)
            healthy = self._healthy()
            if watchdog and healthy:
                self.notifier.watchdog()
            if now >= next_status or len(self._dead) != deaths:  # a death is reported at once
                next_status = now + interval
                self._supervised("status", self._report)
            if self.link is not None and self.mqtt_announce and now >= next_stats:  # a replay's are not the station's
                next_stats = now + self.config.mqtt.stats_interval_s
                self._supervised("stats", self._send_stats)
            if self._dead_since is not None and now - self._dead_since >= self.config.health.heartbeat_timeout_s:
                # the watchdog would abort us soon (if armed); a clean stop commits what the living threads
                # hold, and exit code 1 has systemd restart edged (Restart=on-failure), watchdog or not
                log.error("exiting with code 1 for systemd to restart edged: %s", self._dead_text())
                self.shutdown()
                return 1
            if all(t.finished.is_set() for t in self.captures):
                failed = [n for n, s in self.stats.items() if s.state == "failed"]
                if failed:  # exit non-zero: systemd restarts the service, which retries the cameras
                    log.error("every camera has stopped; failed: %s", ", ".join(failed))
                    self.shutdown()
                    return 1
                log.info("all sources have ended")
                break
            self.stop_requested.wait(tick)
        self.shutdown()
        return 0

    def routes(self) -> dict[str, Route]:
        """The incoming dispatch table: each topic edged subscribes to and its handler (on paho's thread).
        A new incoming topic (a `cmd/...` command) is a handler here and one entry: `Topics` names it,
        `edged.incoming` checks its payload."""
        topics = Topics.of(self.config)
        table: dict[str, Route] = {}
        if self.gates:  # only cameras in trigger mode mqtt take triggers
            table[topics.trigger] = Route(self._on_trigger, "trigger")
            table[topics.result_ack] = Route(self._on_result_ack, "result ack")
        if self.mqtt_announce:  # the station's commands, not a replay's
            table[topics.recipe_command] = Route(self._on_recipe_command, "recipe command")
        return table

    def _on_trigger(self, payload: bytes, arrived_at: float) -> None:
        """A trigger message from the line (on the MQTT thread): `admit_trigger`, its acks on `<base>/trigger/ack`.
        Raises MessageRefused for a message it cannot use (the link counts it), after acknowledging it."""
        acks: list[TriggerAck] = []
        try:
            self.admit_trigger(payload, arrived_at, acks)
        finally:
            if self.link is not None:
                for ack in acks:
                    self.link.send(Topics.of(self.config).trigger_ack, ack, qos=1)

    def admit_trigger(self, payload: bytes, arrived_at: float, acks: list[TriggerAck]) -> None:
        """A trigger (MQTT, or OPC UA's Trigger method): checked, admitted (bounded), then to the recorder and the
        cameras; every camera it names gets its ack in `acks` (edged.handshake). A camera that cannot take it now
        (not ready, recipe switching) refuses it in the ack AND gives the part its one result at once,
        not_inspected (with its fail-safe reject where configured): a PLC that reads only results stays safe.
        Raises MessageRefused for a message it cannot use, after acknowledging it. One caller at a time."""
        with self._trigger_lock:
            self._admit_trigger(payload, arrived_at, acks)

    def _admit_trigger(self, payload: bytes, arrived_at: float, acks: list[TriggerAck]) -> None:
        if self.recorder is None:
            self._trigger_refused(TriggerRefused(TriggerRefusal.NOT_READY, "trigger before the pipeline started"),
                                  arrived_at, acks)
        try:
            parsed = parse_trigger(payload, arrived_at, self._trigger_timing)
        except TriggerRefused as exc:
            self._trigger_refused(exc, arrived_at, acks)
        except MessageRefused as exc:
            self._trigger_refused(TriggerRefused(TriggerRefusal.BAD_MESSAGE, str(exc)), arrived_at, acks)
        refusals = {t.camera: r for t in parsed if (r := self.trigger_refusal(t.camera)) is not None}
        parsed = [dataclasses.replace(t, deadline_at=arrived_at, refused=refusals[t.camera].value)
                  if t.camera in refusals else t for t in parsed]
        try:
            triggers = self._admission.admit(parsed, arrived_at)
        except TriggerRefused as exc:
            for trig in parsed:
                self._ack(acks, trig.part_id, trig.camera, exc.code.value, str(exc), arrived_at)
            raise
        for trig in triggers:
            self.recorder.triggers.put(trig)  # first: the verdict must find its trigger registered
            refusal = refusals.get(trig.camera)
            if refusal is not None:  # its deadline is now: the recorder answers not_inspected
                self._ack(acks, trig.part_id, trig.camera, refusal.value,
                                       f"camera {trig.camera}: {refusal.value}", arrived_at)
                continue
            with contextlib.suppress(queue.Full):  # cannot happen (admission is smaller); the book answers it
                self.gates[trig.camera].inbox.put_nowait(trig)
            self._ack(acks, trig.part_id, trig.camera, "", "", arrived_at)
        for trig in parsed:
            if trig not in triggers:  # a repeat of an outstanding part, beside fresh ones
                self._ack(acks, trig.part_id, trig.camera, TriggerRefusal.REPEATED.value,
                                       "already outstanding (repeated)", arrived_at)

    # --- the handshake (edged.handshake) -------------------------------------------------------------
    def _trigger_refused(self, exc: TriggerRefused, arrived_at: float, acks: list[TriggerAck]) -> NoReturn:
        """Acknowledge a trigger refused as a whole, then raise it for the link to count."""
        self._ack(acks, exc.part_id, None, exc.code.value, str(exc), arrived_at)
        raise exc

    def trigger_refusal(self, camera: str) -> TriggerRefusal | None:
        """Why camera `camera` would refuse a trigger now (None: it would accept it)."""
        stats = self.stats.get(camera)
        if stats is None or camera not in self.gates:
            return TriggerRefusal.UNKNOWN_CAMERA
        if self.recorder is None or self._stopping:
            return TriggerRefusal.NOT_READY
        return camera_refusal(stats.state, self.recipes is not None and self.recipes.switching(camera))

    def _ack(self, acks: list[TriggerAck], part_id: str | None, camera: str | None, reason: str, detail: str,
             arrived_at: float) -> None:
        acks.append(TriggerAck(self.config.station, part_id, camera, not reason, reason, detail, arrived_at))
        if reason:
            self.trigger_refusals[reason] = self.trigger_refusals.get(reason, 0) + 1

    def _on_result_ack(self, payload: bytes, arrived_at: float) -> None:
        """`<base>/cmd/result_ack` (MQTT thread): the PLC took these results; an id not awaited is counted."""
        ids = parse_result_ack(payload)
        if self.result_acks.acked(ids) < len(ids):
            raise MessageRefused(f"result ack of {len(ids)} id(s), some not awaited (acknowledged twice, given up "
                                 "as an overrun, or never sent)")

    def _publish_ready(self) -> None:
        """Each triggered camera's retained ready flag, on a change (supervisor loop)."""
        if self.link is None or not self.mqtt_announce or self.recipes is None:
            return
        for camera in self.gates:
            refusal = self.trigger_refusal(camera)
            stats = self.stats[camera]
            flag = (refusal is None and stats.state == "streaming", refusal.value if refusal else
                    ("" if stats.state == "streaming" else "starting"))
            if self._ready.get(camera) == flag:
                continue
            self._ready[camera] = flag
            active = self.recipes.current(camera)
            self.link.send(Topics.of(self.config).ready(camera), Ready(
                self.config.station, camera, flag[0], flag[1], active.name, active.model, time.time()),
                qos=1, retain=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stop_requested.set()

    def _maybe_ready(self, now: float) -> None:
        if self._ready_sent:
            return
        opened = any(t.opened.is_set() for t in self.captures)
        if opened or now - self._started_mono > READY_TIMEOUT_S:
            if not opened:
                log.warning("no camera delivered a frame within %.0f s; running anyway (see edged status)",
                            READY_TIMEOUT_S)
            self.notifier.ready()
            self._ready_sent = True

    def _camera_events(self) -> None:
        while True:
            try:
                _, name, state = self.camera_events.get_nowait()
            except queue.Empty:
                return
            if self.link is not None:
                try:
                    typed = CameraState(state)
                except ValueError:  # a capture state the contract does not list: a bug, never a crash here
                    log.error("camera %s: state %r is not in the MQTT contract; not published", name, state)
                    continue
                self.link.camera_state(name, typed)

    # --- input health (edged.input_health) ---------------------------------------------------------
    def _start_input_health(self) -> None:
        """The per-camera monitors, from the loaded bundle's ranges; a camera's stale retained alarm (from before a
        restart) is cleared, since a new spell must be measured first."""
        cfg = self.config
        if not cfg.input_health.enabled or self.detector is None:
            return
        self.input_health = InputHealth(cfg.input_health, [c.name for c in cfg.cameras], self.detector.manifest,
                                        self.detector.precision)
        self._input_follows_recipes([c.name for c in cfg.cameras])
        if self.link is not None and self.mqtt_announce:
            topics = Topics.of(cfg)
            for cam in cfg.cameras:
                self.link.send(topics.alarm(cam.name), "", qos=1, retain=True)

    def _input_follows_recipes(self, cameras: list[str]) -> None:
        """Each camera's input ranges and expected reject rate are those of the model it runs now (its recipe)."""
        if self.input_health is None or self.recipes is None:
            return
        for cam in cameras:
            det = self.recipes.current(cam).detector
            self.input_health.use_model(cam, det.manifest, det.precision)

    def _input_alarms(self) -> None:
        """Alarm changes from the capture threads (input) and the recorder (reject rate): each camera's retained
        alarm on <base>/alarm/<camera> while any is active, an empty retained message once none is."""
        if self.input_health is None:
            return
        while True:
            try:
                alarm = self.input_health.events.get_nowait()
            except queue.Empty:
                return
            active = self._alarms.setdefault(alarm.camera, {})
            if alarm.reason:
                active[alarm.source] = alarm
            else:
                active.pop(alarm.source, None)
            if self.link is not None and self.mqtt_announce:
                self.link.send(Topics.of(self.config).alarm(alarm.camera), self._alarm_message(alarm.camera),
                               qos=1, retain=True)

    def _alarm_message(self, camera: str) -> Alarm | str:
        """The camera's alarm payload, '' (clears the retained alarm) when none is active."""
        active = sorted(self._alarms.get(camera, {}).values(), key=lambda a: a.source != "input")  # input first
        if not active:
            return ""
        detail = {k: v for a in active for k, v in a.detail.items()}
        return Alarm(self.config.station, camera, tuple(a.reason for a in active), min(a.at for a in active),
                     self.config.input_health.on_degraded, detail)

    def degraded_cameras(self) -> dict[str, str]:
        """Cameras whose alarm is active: name -> reasons (status line)."""
        return {name: ", ".join(a.reason for a in sorted(active.values(), key=lambda a: a.source != "input"))
                for name, active in sorted(self._alarms.items()) if active}

    def _healthy(self) -> bool:
        """Every thread alive and beating; a dead one makes the daemon unhealthy for good (no watchdog ping)."""
        stale = sorted(self.heartbeats.stale(self.config.health.heartbeat_timeout_s))
        if stale != self._stale:  # log the change, not every tick
            if stale:
                log.error("thread(s) %s silent for over %.0f s: withholding the watchdog ping (systemd will "
                          "restart edged)", ", ".join(stale), self.config.health.heartbeat_timeout_s)
            else:
                log.warning("all threads alive again: watchdog pings resume")
            self._stale = stale
        dead = self.dead_threads()
        for name in sorted(set(dead) - set(self._dead)):
            log.error("thread %s DIED (%s): edged is unhealthy, the watchdog ping is withheld", name, dead[name])
        if dead and self._dead_since is None:
            self._dead_since = time.monotonic()
        self._dead = dead
        return not stale and not dead

    def dead_threads(self) -> dict[str, str]:
        """Threads (and supervisor jobs) that must live but have ended, with why. Captures may end by
        design (end of file, give_up_after); they count only when they die of an exception."""
        dead = self.heartbeats.dead()
        if self._stopping:
            return dead
        images = self.recorder.images if self.recorder is not None else None
        for t in (*self.workers, self.recorder, self.link, images, self.web, self.switcher, self.opcua):
            if t is not None and t.has_ended() and t.name not in dead:
                dead[t.name] = "ended unexpectedly"
        return dead

    def _dead_text(self) -> str:
        return "; ".join(f"thread {n} died ({why})" for n, why in sorted(self._dead.items()))

    def _supervised(self, job: str, run: Callable[[], None]) -> None:
        """A job of the supervisor loop itself (status, health file, stats): its failure is a death too."""
        try:
            run()
        except Exception as exc:
            if job not in self.heartbeats.dead():
                log.exception("supervisor job %s failed", job)
            self.heartbeats.died(job, exc)

    def _send_stats(self) -> None:
        if self.link is not None:
            self.link.send_stats(self.stats_message())

    def _report(self) -> None:
        self.notifier.status(self.status_line())
        self.write_health()

    # --- reporting ---------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """What makes the daemon unhealthy right now, for STATUS=, the health file and the log."""
        out = [f"thread {n} died ({why})" for n, why in sorted(self._dead.items())]
        out += [f"thread {n} silent" for n in self._stale]
        rec = self.recorder
        if rec is not None and rec.last_db_error:
            out.append("DATABASE DISK FULL: rows not stored, rejects sent directly" if rec.db_full
                       else f"database error: {rec.last_db_error}")
        return out

    def status_line(self) -> str:
        """The STATUS= line of `systemctl status edged`: problems first, then rates, broker and latency."""
        problems = self.problems()
        head = f"UNHEALTHY: {'; '.join(problems)} | " if problems else ""
        fps = sum(s.fps() for s in self.stats.values())
        last = self.counters.last_reject_at
        last_text = time.strftime("%H:%M:%S", time.localtime(last)) if last else "never"
        broker = self._broker_state()
        lat = self.latency.percentiles()
        p99 = f"{lat['p99']:.1f} ms" if lat["p99"] is not None else "-"
        degraded = "".join(f", {name} DEGRADED ({why})" for name, why in self.degraded_cameras().items())
        return (f"{head}{fps:.1f} fps, {self.counters.inspected} inspected, {self.counters.rejects} rejects "
                f"(last {last_text}), p99 {p99}, broker {broker}{degraded}")

    def _broker_state(self) -> str:
        if self.link is None:
            return "disabled"
        if self.link.done.is_set():
            return "stopped"  # after a clean stop: the retained status says 'stopped' too
        return "connected" if self.link.connected else "disconnected"

    def health(self) -> dict[str, Any]:
        """The health file's content (what `edged status` reads); only after `start`. Its model is the one the first
        camera runs now (after a recipe switch too); `recipes` has every camera's."""
        det = self.recipes.current(self.config.cameras[0].name).detector if self.recipes is not None else self.detector
        assert det is not None
        cams: dict[str, dict[str, Any]] = {}
        for name, s in self.stats.items():
            cams[name] = {"state": s.state, "source": s.source, "last_frame_at": s.last_frame_at,
                          "fps": round(s.fps(), 2), "frames": s.frames, "drops": self.frames.drops(name),
                          "bad_frames": s.bad_frames, "reconnects": s.reconnects, "missed": s.missed,
                          "queue_depth": self.frames.depth(name)}
            if self.input_health is not None:
                cams[name]["input"] = self.input_health.camera_health(name)
        link = self.link
        return {
            "version": __version__, "pid": os.getpid(), "station": self.config.station,
            "started_at": self.started_at, "updated_at": time.time(), "model": det.bundle_id,
            "method": det.manifest.method, "precision": det.precision, "runtime": det.runtime,
            "provider": det.provider, "runtime_choice": det.choice.as_dict(), "threshold": det.threshold,
            "broker": self._broker_state(),
            "outbox_backlog": link.backlog if link else 0, "expired": link.expired if link else 0,
            "delivered": link.delivered if link else 0, "inspected": self.counters.inspected,
            "rejects": self.counters.rejects, "last_reject_at": self.counters.last_reject_at,
            "parts": self.counters.parts, "rejects_by_reason": dict(self.counters.rejects_by_reason),
            "triggers": {"received": self.counters.triggers, "not_inspected": self.counters.not_inspected,
                         "late_verdicts": self.counters.late_verdicts},
            "latency_ms": self.latency.percentiles(),
            "threads": {k: round(v, 3) for k, v in self.heartbeats.ages().items()},
            "dead_threads": self.dead_threads(), "problems": self.problems(),
            "invalid_outputs": self.counters.invalid_outputs,
            "cameras": cams,
            "disk": {"images_paused": bool(self.archive and self.archive.paused),
                     "db_errors": self.recorder.db_errors if self.recorder else 0,
                     "db_full": bool(self.recorder and self.recorder.db_full),
                     "db_error": self.recorder.last_db_error if self.recorder else ""},
            "mqtt": self._link_counts(),
            "recipes": self.recipes.summary() if self.recipes is not None else {},
            "handshake": self.result_acks.counts(),
            "opcua": ({"endpoint": self.opcua.endpoint, "refused_logins": self.opcua.users.refused}
                      if self.opcua is not None else {}),
        }

    def _link_counts(self) -> dict[str, int]:
        """What came in from outside and what the broker did to us: refused messages, callback errors."""
        link = self.link
        if link is None:
            return {}
        return {"refused": link.refused, "callback_errors": link.callback_errors,
                "paho_restarts": link.paho_restarts, "connect_refusals": link.connect_refusals,
                "session_takeovers": link.takeovers,
                "triggers_outstanding": self._admission.outstanding()}

    def write_health(self) -> None:
        """Atomically (temp file, rename); on a full disk in place, so `edged status` reads 'disk full'
        rather than a stale file it must call hung. The file is padded to whole pages plus one, so an
        in-place rewrite of about the same length needs no new disk block."""
        path = self.config.storage.state_dir / "health.json"
        tmp = path.with_name(".health.json.tmp")
        text = jsonout.dumps(self.health(), indent=1, separators=(",", ": "))
        text += " " * (-(len(text) + 1) % 4096 + 4096) + "\n"
        try:
            tmp.write_text(text)
            tmp.replace(path)
            self._health_write_failed = False
            return
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            error = exc
        if error.errno in (errno.ENOSPC, errno.EDQUOT) and self._write_in_place(path, text):
            return
        if not self._health_write_failed:  # once per failing spell, not every status interval
            log.warning("cannot write %s: %s", path, error)
        self._health_write_failed = True

    @staticmethod
    def _write_in_place(path: Path, text: str) -> bool:
        try:
            with path.open("r+", encoding="utf-8") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(0)
                fh.write(text.ljust(size - 1) + "\n" if len(text) < size else text)
            return True
        except OSError:
            return False

    def stats_message(self) -> Stats:
        """The /stats message: the health summary plus this process's CPU and memory."""
        with self._process.oneshot():
            cpu = self._process.cpu_percent(None)
            rss = self._process.memory_info().rss
        return Stats.from_health(self.health(), cpu, rss)

    # --- stop --------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop in pipeline order, each stage bounded in time, so a stop takes a few seconds at most."""
        self.notifier.stopping()
        self._stopping = True  # threads now end by design
        self.recipe_stop.set()  # a switch half-loaded is abandoned: the cameras keep what they run
        for waiter in list(self._recipe_waiters.values()):  # SelectRecipe callers (OPC UA, web) are answered now
            waiter[0].set()
        self._stop_web()  # first: no page reads the pipeline while it is taken down
        if self.opcua is not None:
            self.opcua.stop()
        if self.switcher is not None:
            self.switcher.join(timeout=2.0)
        self.capture_stop.set()
        for t in self.captures:
            t.join(timeout=2.0)
        self.frames.close()
        deadline = time.monotonic() + WORKER_DRAIN_S
        for w in self.workers:
            w.join(timeout=max(0.0, deadline - time.monotonic()))
        self.worker_stop.set()
        left = self.frames.drain()
        if left:
            self.counters.dropped_at_shutdown += len(left)
            log.warning("%d queued frame(s) dropped at shutdown", len(left))
        for w in self.workers:
            w.join(timeout=1.0)
        if self.recorder is not None:
            self.recorder.workers_done.set()
            self.recorder.join(timeout=5.0)
        self._camera_events()
        self._input_alarms()
        self._publish_ready()  # not_ready: the daemon is stopping
        if self.link is not None:
            self.link_stop.set()
            self.link.wake()
            self.link.join(timeout=5.0)
        self.write_health()
        with contextlib.suppress(Exception):  # closing must never turn a clean stop into a crash
            self.db.close()
        self.instance_lock.release()
        log.info("stopped: %d inspected, %d rejects", self.counters.inspected, self.counters.rejects)

    def summary(self) -> RunSummary:
        """Totals since start (frames, verdicts, drops, latency)."""
        return RunSummary(
            frames=sum(s.frames for s in self.stats.values()), inspected=self.counters.inspected,
            rejects=self.counters.rejects, drops=sum(self.frames.drops(n) for n in self.stats),
            bad_frames=sum(s.bad_frames for s in self.stats.values()) + self.counters.bad_frames_inference,
            dropped_at_shutdown=self.counters.dropped_at_shutdown,
            seconds=time.monotonic() - self._started_mono, latency=self.latency.percentiles())
