"""/metrics: the daemon's counters in the Prometheus text format, read at scrape time.

A custom collector (prometheus-client's documented way for values another component owns): nothing is
counted twice and the pipeline does no work for a scrape; the collector reads the same counters as the
health file (CameraStats, Counters, the frame queue, the MQTT link, the recorder) plus the latency
histogram the live view keeps. Its own registry: the library's default one would add this process's
Python internals under names a plant's dashboards did not ask for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from edged import __version__
from edged.handshake import TriggerRefusal
from edged.health import thread_cpu_seconds

if TYPE_CHECKING:
    from edged.service import Service
    from edged.web.live import LiveView


K = TypeVar("K")


class PipelineCollector(Collector):
    """Every metric of the daemon, built from its counters at each scrape."""

    def __init__(self, service: Service, live: LiveView) -> None:
        self.service = service
        self.live = live

    def collect(self) -> Iterator[Metric]:
        """The metric families (prometheus-client calls this per scrape, in the web thread)."""
        yield from self._cameras()
        yield from self._latency()
        yield from self._pipeline()
        yield from self._link()
        yield from self._model()
        yield from self._input_health()
        yield from self._handshake()
        yield from self._recipes()

    def _cameras(self) -> Iterator[Metric]:
        svc = self.service
        families = {
            "frames": CounterMetricFamily("edged_frames", "Frames captured", labels=["camera"]),
            "drops": CounterMetricFamily("edged_drops", "Frames dropped from a full queue (live cameras)",
                                         labels=["camera"]),
            "bad": CounterMetricFamily("edged_bad_frames", "Frames skipped as unusable at capture", labels=["camera"]),
            "reconnects": CounterMetricFamily("edged_reconnects", "Times the camera was reopened", labels=["camera"]),
            "defective": CounterMetricFamily("edged_defective_frames", "Frames over the threshold",
                                             labels=["camera"]),
            "missed": CounterMetricFamily("edged_missed_frames", "Frames the camera sent that never arrived whole "
                                          "(GenICam: incomplete buffers, frame-id gaps)", labels=["camera"]),
        }
        fps = GaugeMetricFamily("edged_camera_fps", "Recent frame rate", labels=["camera"])
        depth = GaugeMetricFamily("edged_queue_depth", "Frames waiting for inference", labels=["camera"])
        up = GaugeMetricFamily("edged_camera_streaming", "1 while the camera delivers frames", labels=["camera"])
        for name, s in svc.stats.items():
            families["frames"].add_metric([name], s.frames)
            families["drops"].add_metric([name], svc.frames.drops(name))
            families["bad"].add_metric([name], s.bad_frames)
            families["reconnects"].add_metric([name], s.reconnects)
            families["defective"].add_metric([name], self.live.defective.get(name, 0))
            families["missed"].add_metric([name], s.missed)
            fps.add_metric([name], round(s.fps(), 3))
            depth.add_metric([name], svc.frames.depth(name))
            up.add_metric([name], 1.0 if s.state == "streaming" else 0.0)
        yield from (*families.values(), fps, depth, up)

    def _latency(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily("edged_latency_seconds", "Capture to verdict", labels=["camera"])
        for name, h in self.live.latency.items():
            hist.add_metric([name], h.cumulative(), sum_value=h.total_ms / 1000.0)
        yield hist

    def _pipeline(self) -> Iterator[Metric]:
        c = self.service.counters
        inspected = CounterMetricFamily("edged_inspected", "Frames inspected (a verdict recorded)")
        inspected.add_metric([], c.inspected)
        rejects = CounterMetricFamily("edged_rejects", "Reject messages committed, by camera and reason",
                                      labels=["camera", "reason"])
        counted = _copy(c.rejects_by_camera)
        for camera in self.service.stats:
            for reason in sorted({"defect", *(r for cam, r in counted if cam == camera)}):
                rejects.add_metric([camera, reason], counted.get((camera, reason), 0))
        invalid = CounterMetricFamily("edged_invalid_outputs", "Frames whose model output was NaN or infinite")
        invalid.add_metric([], c.invalid_outputs)
        rec = self.service.recorder
        db_errors = CounterMetricFamily("edged_db_errors", "Failed database commits")
        db_errors.add_metric([], rec.db_errors if rec is not None else 0)
        dead = GaugeMetricFamily("edged_dead_threads", "Threads that must live and have died (0 when healthy)")
        dead.add_metric([], len(self.service.dead_threads()))
        web = self.service.web
        web_cpu = CounterMetricFamily("edged_web_cpu_seconds", "CPU time of the web view's request threads")
        web_cpu.add_metric([], web.cpu_seconds if web is not None else 0.0)
        refused = CounterMetricFamily("edged_web_refused", "Web requests answered 503 (every slot busy)")
        refused.add_metric([], web.refused if web is not None else 0)
        threads = CounterMetricFamily("edged_thread_cpu_seconds", "CPU time of each of the daemon's threads by "
                                      "name (capture:<camera>, inference:<n>, recorder, images, mqtt, ...)",
                                      labels=["thread"])
        for name, seconds in sorted(thread_cpu_seconds().items()):
            threads.add_metric([name], round(seconds, 2))
        yield from (inspected, rejects, invalid, db_errors, dead, web_cpu, refused, threads)

    def _link(self) -> Iterator[Metric]:
        link = self.service.link
        backlog = GaugeMetricFamily("edged_outbox_backlog", "MQTT messages waiting in the durable outbox")
        expired = CounterMetricFamily("edged_rejects_expired", "Rejects that expired undelivered (sent to /audit)")
        delivered = CounterMetricFamily("edged_mqtt_delivered", "Outbox messages the broker acknowledged")
        connected = GaugeMetricFamily("edged_broker_connected", "1 while connected to the broker")
        backlog.add_metric([], link.backlog if link else 0)
        expired.add_metric([], link.expired if link else 0)
        delivered.add_metric([], link.delivered if link else 0)
        connected.add_metric([], 1.0 if link is not None and link.connected else 0.0)
        yield from (backlog, expired, delivered, connected)

    def _model(self) -> Iterator[Metric]:
        det = self.service.detector
        info = InfoMetricFamily("edged_model", "The model running")
        threshold = GaugeMetricFamily("edged_model_threshold", "The bundle's calibrated score threshold")
        if det is not None:
            info.add_metric([], {"bundle": det.bundle_id, "method": det.manifest.method,
                                 "precision": det.precision, "runtime": det.runtime, "provider": det.provider})
            threshold.add_metric([], det.threshold)
        choice = InfoMetricFamily("edged_runtime_choice", "The runtime and precision the first camera's model runs, "
                                  "and whether model.runtime named it (explicit) or auto chose it")
        if det is not None:
            choice.add_metric([], {"runtime": det.choice.runtime, "precision": det.choice.precision,
                                   "mode": det.choice.mode})
        build = InfoMetricFamily("edged_build", "This daemon")
        build.add_metric([], {"version": __version__, "station": self.service.config.station})
        yield from (info, threshold, choice, build)

    def _input_health(self) -> Iterator[Metric]:
        """Per camera: degraded now (frames out of the bundle's ranges, frozen, covered, or a reject-rate alarm),
        alarms raised, verdicts made not_inspected; absent while input_health is off."""
        health = self.service.input_health
        degraded = GaugeMetricFamily("edged_input_degraded", "1 while the camera's input is degraded",
                                     labels=["camera"])
        alarms = CounterMetricFamily("edged_input_alarms", "Input-health alarms raised (input and reject rate)",
                                     labels=["camera"])
        not_inspected = CounterMetricFamily("edged_input_not_inspected", "Verdicts made not_inspected because the "
                                            "input was degraded", labels=["camera"])
        if health is not None:
            for name in list(health.monitors):
                state = health.camera_health(name)
                degraded.add_metric([name], 1.0 if state["state"] == "degraded" else 0.0)
                alarms.add_metric([name], _number(state["alarms"]))
                not_inspected.add_metric([name], _number(state["not_inspected"]))
        yield from (degraded, alarms, not_inspected)

    def _handshake(self) -> Iterator[Metric]:
        """The PLC's result acks (cmd/result_ack, OPC UA AcknowledgeResult): waiting, acked, lost, unknown."""
        acks = self.service.result_acks
        waiting = GaugeMetricFamily("edged_results_unacknowledged", "Results sent and not acknowledged by the PLC")
        waiting.add_metric([], acks.unacknowledged())
        acked = CounterMetricFamily("edged_results_acknowledged", "Results the PLC acknowledged")
        acked.add_metric([], acks.acknowledged)
        overruns = CounterMetricFamily("edged_result_ack_overruns", "Results given up unacknowledged (the waiting "
                                       "list is bounded)")
        overruns.add_metric([], acks.overruns)
        unknown = CounterMetricFamily("edged_result_acks_unknown", "Acks of an id not awaited (twice, overrun, never "
                                      "sent)")
        unknown.add_metric([], acks.unknown)
        refused = CounterMetricFamily("edged_triggers_refused", "Trigger acks refused, by reason (one per camera a "
                                      "trigger names; MQTT and OPC UA)", labels=["reason"])
        counted = _copy(self.service.trigger_refusals)
        for reason in sorted({r.value for r in TriggerRefusal} | set(counted)):
            refused.add_metric([reason], counted.get(reason, 0))
        yield from (waiting, acked, overruns, unknown, refused)

    def _recipes(self) -> Iterator[Metric]:
        """Each camera's recipe and the model it runs, as an info metric (a switch changes the labels)."""
        info = InfoMetricFamily("edged_recipe", "The recipe (product) each camera runs and its model",
                                labels=["camera"])
        book = self.service.recipes
        if book is not None:
            for camera, active in book.summary().items():
                info.add_metric([camera], {"recipe": active["recipe"], "model": active["model"]})
        yield info


def _number(value: object) -> float:
    """A count from a health dict (typed object there); anything not a number reads 0."""
    return float(value) if isinstance(value, int | float) else 0.0


def _copy(counts: dict[K, int]) -> dict[K, int]:
    """A snapshot of a dict the recorder may be adding a key to right now (a copy can then raise; try again)."""
    for _ in range(5):
        try:
            return dict(counts)
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}


def registry_for(service: Service, live: LiveView) -> CollectorRegistry:
    """A registry holding only the daemon's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PipelineCollector(service, live))
    return registry


def scrape(registry: CollectorRegistry) -> bytes:
    """The text exposition of one scrape."""
    return generate_latest(registry)
