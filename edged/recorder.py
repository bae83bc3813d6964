"""The recorder thread: verdicts -> capture order -> part events -> SQLite (+ outbox) -> images.

It is the only writer of inspection rows. Verdicts from several workers are put back in capture
order per camera (by dispatch number), grouped into part events, and committed in groups: whatever
has arrived is written in one transaction, with the reject messages of the parts it closes, and the
MQTT link is woken to publish them. The messages are `edged.payloads` on `edged.topics`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edged.archive import ImageArchive, ImageWriter
from edged.config import CameraConfig, Config
from edged.frames import Verdict
from edged.health import Counters, Heartbeats, LatencyWindow, SupervisedThread
from edged.input_health import InputHealth
from edged.logsetup import LogThrottle
from edged.parts import FreeRunGrouper, PartEvent, Trigger, TriggerBook
from edged.payloads import NotInspected, Reject, Result
from edged.store import InspectionRow, InspectionWriter, OutboxItem, OutboxMessage, Recorded, is_disk_full
from edged.topics import Topics
from edged.worker import Decided

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 3600.0


@dataclass
class _Group:
    """What one commit holds, built in capture order by `RecorderThread._process`."""

    rows: list[InspectionRow] = field(default_factory=list)
    verdict_rows: dict[tuple[str, int], int] = field(default_factory=dict)  # defective (camera, seq) -> row index
    events: list[PartEvent] = field(default_factory=list)  # free-run parts closed in this group
    triggered: list[OutboxMessage] = field(default_factory=list)  # results and rejects of triggered parts
    images: list[tuple[Verdict, int]] = field(default_factory=list)  # (verdict, row index): written after the commit


class RecorderThread(SupervisedThread):
    """The only writer of inspection rows (see the module docstring); when the database fails, rejects are published
    directly, not durably."""

    def __init__(self, config: Config, decided: queue.Queue[Decided], writer: InspectionWriter,
                 archive: ImageArchive | None, counters: Counters, latency: LatencyWindow,
                 heartbeats: Heartbeats, stop: threading.Event, to_link: Callable[[list[OutboxItem]], None],
                 send_result: Callable[[Result], None] | None = None,
                 on_verdict: Callable[[Verdict, str], None] | None = None,
                 publish_direct: Callable[[str, dict[str, object]], None] | None = None,
                 input_health: InputHealth | None = None) -> None:
        super().__init__("recorder", heartbeats)
        self.heartbeats: Heartbeats = heartbeats
        self.what = "recorder"
        self.config = config
        self.topics = Topics.of(config)
        self.decided = decided
        self.writer = writer
        self.archive = archive
        self.images = ImageWriter(archive, config.station, heartbeats=heartbeats) if archive is not None else None
        self.counters = counters
        self.latency = latency
        self.heartbeats = heartbeats
        self.stop_event = stop
        self.to_link = to_link  # committed outbox messages: the link publishes them (MqttLink.offer)
        self.send_result = send_result
        self.on_verdict = on_verdict  # replay's per-frame output
        self.publish_direct = publish_direct  # when the database cannot be written
        self.input_health = input_health  # reject rates (fed here) and what a degraded camera's verdicts become
        self.cameras: Mapping[str, CameraConfig] = {c.name: c for c in config.cameras}
        self.groupers = {c.name: FreeRunGrouper(c.name, c.trigger.gap_ms, c.trigger.max_part_ms,
                                                c.trigger.max_part_frames)
                         for c in config.cameras if c.trigger.mode == "free_run"}
        self.triggered = {c.name for c in config.cameras if c.trigger.mode == "mqtt"}
        self.triggers: queue.Queue[Trigger] = queue.Queue()  # from the MQTT thread
        self.book = TriggerBook()
        self._next: dict[str, int] = {c.name: 0 for c in config.cameras}
        self._waiting: dict[str, dict[int, Decided]] = {c.name: {} for c in config.cameras}
        self._defect_rows: dict[tuple[str, int], tuple[int, str, str | None]] = {}  # -> (id, uid, image)
        self._last_retention = 0.0
        self.db_errors = 0
        self.db_full = False  # the last commit failed because the disk is full (health file, status)
        self.last_db_error = ""  # '' while commits succeed
        self._throttle = LogThrottle(log, 30.0)
        self.workers_done = threading.Event()  # set by the service when no verdict can arrive any more
        # committed results of triggered parts: (row id, payload) (edged.handshake, the OPC UA server)
        self.on_results: Callable[[list[tuple[int, dict[str, object]]]], None] | None = None

    def work(self) -> None:
        """Record until the workers are done and the queue is empty, then close the open parts (supervised:
        `SupervisedThread`)."""
        if self.images is not None:
            self.images.start()
        while True:
            self.heartbeats.beat(self.name)
            items = self._collect()
            ordered = [d for item in items for d in self._reorder(item)]
            self._process(ordered, time.monotonic())
            if not items and self.workers_done.is_set() and self.decided.empty():
                self._process([], time.monotonic(), final=True)
                if self.images is not None:
                    self.images.close()
                self._forget_lost_images()
                return
            self._maintain()

    def _collect(self) -> list[Decided]:
        """A group to commit: everything available now, plus, while it holds only good verdicts, what
        arrives within `commit_interval_ms`. A reject (or a triggered part's result) ends the wait at
        once: its latency is the line's, while a good row can wait to share a transaction."""
        items: list[Decided] = []
        try:
            items.append(self.decided.get(timeout=0.05))
        except queue.Empty:
            return items
        urgent = self._urgent(items[0])
        deadline = time.monotonic() + self.config.storage.commit_interval_ms / 1000.0
        while len(items) < 512:
            try:
                item = self.decided.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if urgent or remaining <= 0:
                    break
                try:
                    item = self.decided.get(timeout=remaining)
                except queue.Empty:
                    break
            items.append(item)
            urgent = urgent or self._urgent(item)
        return items

    def _urgent(self, item: Decided) -> bool:
        v = item.verdict
        return v is not None and (v.is_defective or v.frame.camera in self.triggered)

    def _reorder(self, item: Decided) -> list[Decided]:
        waiting = self._waiting[item.camera]
        waiting[item.dispatch] = item
        out = []
        while self._next[item.camera] in waiting:
            out.append(waiting.pop(self._next[item.camera]))
            self._next[item.camera] += 1
        return out

    def _process(self, ordered: list[Decided], now_mono: float, final: bool = False) -> None:
        """One group, in capture order: rows and part events, their messages, ONE transaction for all of
        them, then counters, the link's wake-up and the images (after the commit: no reject waits for a JPEG)."""
        self._take_triggers()
        group = _Group()
        for d in ordered:
            if d.verdict is None:
                self._not_inspected_frame(d)
            else:
                self._add_verdict(group, d.verdict)
        for grouper in self.groupers.values():
            group.events.extend(grouper.flush() if final else grouper.tick(now_mono))
        messages = [self._reject_message(e, group.verdict_rows) for e in group.events] + group.triggered
        messages += self._expired_triggers(group.rows, final)
        if not group.rows and not messages:
            return
        try:
            done = self.writer.record(group.rows, messages)
        except sqlite3.Error as exc:
            self._commit_failed(exc, group, messages)
            return
        self._committed(group, messages, done)

    def _take_triggers(self) -> None:
        """Book the triggers the MQTT thread queued since the last group."""
        while not self.triggers.empty():
            self.book.add(self.triggers.get_nowait())
            self.counters.triggers += 1

    def _not_inspected_frame(self, d: Decided) -> None:
        """A frame the worker could not decide: counted and logged (rate-limited), no row."""
        self.counters.bad_frames_inference += 1
        if d.invalid_output:  # a broken model: counted apart, and loud (every frame may do it)
            self.counters.invalid_outputs += 1
            self._throttle.log(logging.ERROR, f"invalid:{d.camera}", "%s: frame %s NOT INSPECTED: %s "
                               "(%d so far)", d.camera, d.frame.seq if d.frame else "?", d.error,
                               self.counters.invalid_outputs)
        else:
            self._throttle.log(logging.WARNING, f"bad:{d.camera}", "%s: frame %s not inspected: %s",
                               d.camera, d.frame.seq if d.frame else "?", d.error)

    def _add_verdict(self, group: _Group, v: Verdict) -> None:
        """A verdict's part (the free-run grouper's events; a defect's row names its part), its row (and planned
        image) into the group, its result, and a triggered part's messages."""
        v = self._input_checked(v)
        uid = uuid.uuid4().hex
        image_path = self._plan_image(v, group.images, len(group.rows))
        part_id = v.frame.part_id  # a trigger's
        if v.frame.camera not in self.triggered:
            grouper = self.groupers[v.frame.camera]
            group.events.extend(grouper.feed(v))
            if grouper.joined is not None:  # a free-run defect: its row names its part, as the reject does
                part_id = grouper.joined.part_id
        group.rows.append(InspectionRow(
            uid=uid, seq=v.frame.seq, camera=v.frame.camera, part_id=part_id,
            captured_at=v.frame.captured_at, decided_at=v.decided_at, score=v.score, threshold=v.threshold,
            is_defective=v.is_defective, confidence=v.confidence, latency_ms=round(v.latency_ms, 3),
            model=v.model, regions=[r.to_dict() for r in v.regions], image_path=image_path, reason=v.reason,
            input_ok=v.frame.input.ok if v.frame.input is not None else None, recipe=v.recipe or None,
            camera_stamp=v.frame.camera_stamp))
        if v.is_defective:
            group.verdict_rows[(v.frame.camera, v.frame.seq)] = len(group.rows) - 1
            self._defect_rows[(v.frame.camera, v.frame.seq)] = (-1, uid, image_path)
        self.latency.add(v.latency_ms)
        self.counters.inspected += 1
        if self.send_result is not None:
            self.send_result(Result.for_verdict(v, uid, self.config.station, part_id))
        if self.on_verdict is not None:
            self.on_verdict(v, uid)
        if v.frame.camera in self.triggered:
            group.triggered.extend(self._triggered_verdict(v, uid, image_path, len(group.rows) - 1))

    def _input_checked(self, v: Verdict) -> Verdict:
        """The camera's reject rate is fed; a verdict of a degraded camera says so, and with `input_health.on_degraded:
        not_inspected` it becomes not_inspected (no reject; a triggered part gets its fail-safe)."""
        health = self.input_health
        if health is None:
            return v
        health.rates[v.frame.camera].feed(v.is_defective)
        why = health.degraded(v.frame.camera, v.frame.input)
        if not why:
            return v
        if health.cfg.on_degraded == "not_inspected":
            health.not_inspected[v.frame.camera] += 1
            return dataclasses.replace(v, is_defective=False, reason="not_inspected", regions=(), degraded=why)
        return dataclasses.replace(v, degraded=why)

    def _commit_failed(self, exc: sqlite3.Error, group: _Group, messages: list[OutboxMessage]) -> None:
        """The group's transaction failed: counted, logged rate-limited, its messages published directly
        (not durably) so rejects still reach the line, its images saved without row ids."""
        self.db_errors += 1
        self.db_full = is_disk_full(exc)
        self.last_db_error = str(exc)
        # one line per 30 s, not one per commit (15 a second on a full disk); the count says the rest
        self._throttle.log(logging.ERROR, "db", "cannot write %d inspection rows to the database: %s (%d failed "
                           "commits so far; rejects are published directly meanwhile)", len(group.rows), exc,
                           self.db_errors)
        if messages and self.publish_direct is not None:  # rejects still reach the line, not durably
            for m in messages:
                self.publish_direct(m.topic, m.payload)
        self._save_images(group.images, None)

    def _committed(self, group: _Group, messages: list[OutboxMessage], done: Recorded) -> None:
        """After the group's transaction: the messages to the link first (a reject is the line's latency), then row
        ids for open parts, counters, images."""
        if done.outbox:
            self.to_link(done.outbox)
        if self.last_db_error:
            log.warning("the database accepts commits again (after %d failed ones)", self.db_errors)
            self.last_db_error, self.db_full = "", False
        ids = done.ids
        self._remember_defect_ids(group.verdict_rows, ids)
        if self.on_results is not None:
            sent = [(ids[m.row_index], m.payload) for m in messages if m.kind == "result" and m.row_index is not None]
            if sent:
                self.on_results(sent)
        self._count(group.events, messages)
        self._save_images(group.images, ids)

    def _remember_defect_ids(self, verdict_rows: dict[tuple[str, int], int], ids: list[int]) -> None:
        """Defective rows get their database ids (a later reject of their part refers to them); rows no
        open part can refer to any more are forgotten."""
        for key, index in verdict_rows.items():
            _, uid, image = self._defect_rows[key]
            self._defect_rows[key] = (ids[index], uid, image)
        for camera, grouper in self.groupers.items():
            keep_from = grouper.open.first.frame.seq if grouper.open is not None else None
            for key in [k for k in self._defect_rows if k[0] == camera]:
                if keep_from is None or key[1] < keep_from:
                    del self._defect_rows[key]

    def _count(self, events: list[PartEvent], messages: list[OutboxMessage]) -> None:
        """Parts and rejects of a committed group (health file, /stats, `edged status`)."""
        rejects = [m for m in messages if m.kind == "reject"]
        for m in rejects:
            reason = str(m.payload.get("reason", "defect"))
            self.counters.rejects_by_reason[reason] = self.counters.rejects_by_reason.get(reason, 0) + 1
            key = (str(m.payload.get("camera", "")), reason)  # /metrics: rejects per camera and reason
            self.counters.rejects_by_camera[key] = self.counters.rejects_by_camera.get(key, 0) + 1
        self.counters.parts += len(events) + sum(1 for m in messages if m.kind == "result")
        if rejects:
            self.counters.rejects += len(rejects)
            self.counters.last_reject_at = time.time()

    def _triggered_verdict(self, v: Verdict, uid: str, image: str | None, row_index: int) -> list[OutboxMessage]:
        """A verdict for a triggered part: exactly one durable result, and a reject when defective."""
        trig = self.book.outstanding.get((v.frame.camera, v.frame.part_id or ""))
        if trig is None or not self.book.settle(v):
            self.counters.late_verdicts += 1
            log.warning("%s: verdict for part %s came after its deadline: logged only (not_inspected was sent)",
                        v.frame.camera, v.frame.part_id)
            return []
        if v.reason == "not_inspected":
            return self._degraded_part(v, trig, uid, row_index)
        station = self.config.station
        out = [OutboxMessage("result", self.topics.result, Result.for_verdict(v, uid, station).to_dict(), None,
                             row_index=row_index)]
        if v.is_defective:
            event = PartEvent(v.frame.camera, v, v, v.frame.captured_mono, given_id=v.frame.part_id)
            reject = Reject.for_part(event, uid, station, self.config.mqtt.reject_ttl_ms, image)
            out.append(OutboxMessage("reject", self.topics.reject, reject.to_dict(), reject.deadline,
                                     row_index=row_index))
        return out

    def _degraded_part(self, v: Verdict, trig: Trigger, uid: str, row_index: int) -> list[OutboxMessage]:
        """A triggered part seen by a degraded camera (on_degraded: not_inspected): the not-inspected result, and the
        trigger's fail-safe, so the PLC decides."""
        self.counters.not_inspected += 1
        log.warning("%s: part %s NOT INSPECTED (camera degraded: %s)", v.frame.camera, v.frame.part_id, v.degraded)
        message = dataclasses.replace(
            NotInspected.for_trigger(trig, uid, self.config.station, self.config.mqtt.reject_ttl_ms,
                                     decided_at=v.decided_at),
            input_ok=v.frame.input.ok if v.frame.input is not None else None, degraded=v.degraded,
            camera_stamp=v.frame.camera_stamp)
        payload = message.to_dict()
        out = [OutboxMessage("result", self.topics.result, payload, None, row_index=row_index)]
        if self.cameras[v.frame.camera].trigger.fail_safe == "reject":
            out.append(OutboxMessage("reject", self.topics.reject, payload, message.deadline, row_index=row_index))
        return out

    def _expired_triggers(self, rows: list[InspectionRow], final: bool) -> list[OutboxMessage]:
        """Triggered parts past their deadline: a not_inspected row and result, and a reject if fail-safe."""
        now = time.time()
        gone = self.book.expire(float("inf") if final else now)
        out: list[OutboxMessage] = []
        for trig in gone:
            self.counters.not_inspected += 1
            uid = uuid.uuid4().hex
            why = f"trigger refused: {trig.refused}" if trig.refused else "no verdict within its timeout"
            log.warning("%s: part %s NOT INSPECTED (%s)", trig.camera, trig.part_id, why)
            rows.append(InspectionRow(
                uid=uid, seq=-1, camera=trig.camera, part_id=trig.part_id, captured_at=trig.due_at, decided_at=now,
                score=None, threshold=None, is_defective=False, confidence=None, latency_ms=None, model="",
                regions=[], image_path=None, reason="not_inspected"))
            message = NotInspected.for_trigger(trig, uid, self.config.station, self.config.mqtt.reject_ttl_ms,
                                               decided_at=time.time())
            payload = message.to_dict()
            out.append(OutboxMessage("result", self.topics.result, payload, None, row_index=len(rows) - 1))
            if self.cameras[trig.camera].trigger.fail_safe == "reject":
                out.append(OutboxMessage("reject", self.topics.reject, payload, message.deadline,
                                         row_index=len(rows) - 1))
        return out

    def _reject_message(self, event: PartEvent, verdict_rows: dict[tuple[str, int], int]) -> OutboxMessage:
        key = (event.camera, event.best.frame.seq)
        inspection_id, uid, image = self._defect_rows.get(key, (-1, uuid.uuid4().hex, None))
        reject = Reject.for_part(event, uid, self.config.station, self.config.mqtt.reject_ttl_ms, image)
        if key in verdict_rows:
            return OutboxMessage("reject", self.topics.reject, reject.to_dict(), reject.deadline,
                                 row_index=verdict_rows[key])
        return OutboxMessage("reject", self.topics.reject, reject.to_dict(), reject.deadline,
                             inspection_id=inspection_id if inspection_id >= 0 else None)

    def _plan_image(self, v: Verdict, images: list[tuple[Verdict, int]], row_index: int) -> str | None:
        """The frame's future path, for the row and the reject; the JPEG is encoded after the commit so
        that no reject waits for it (the file appears a few ms after the message)."""
        policy = self.config.storage.images.save
        if self.archive is None or policy == "none" or (policy == "rejects" and not v.is_defective):
            return None
        path = self.archive.planned_path(v, self.config.station)
        if path is not None:
            images.append((v, row_index))
        return path

    def _save_images(self, images: list[tuple[Verdict, int]], ids: list[int] | None) -> None:
        """Hand the planned frames to the image thread (row ids, so a failed write can clear its path)."""
        if self.images is not None:
            for v, index in images:
                self.images.put(v, ids[index] if ids is not None else None)

    def _forget_lost_images(self) -> None:
        """Rows whose frame could not be written lose their image path (no path to a missing file)."""
        if self.images is None or self.images.lost.empty():
            return
        lost = []
        while not self.images.lost.empty():
            lost.append(self.images.lost.get_nowait())
        try:
            self.writer.forget_images(lost)
        except sqlite3.Error as exc:
            log.warning("cannot clear the image path of %d rows: %s", len(lost), exc)

    def _maintain(self) -> None:
        self._forget_lost_images()
        now = time.monotonic()
        if now - self._last_retention < RETENTION_EVERY_S:
            return
        self._last_retention = now
        r = self.config.storage.retention
        try:
            deleted = self.writer.retention(r.max_age_days, r.max_rows)
            if deleted:
                log.info("retention: deleted %d old inspection rows", deleted)
        except sqlite3.Error as exc:
            log.warning("retention failed: %s", exc)
