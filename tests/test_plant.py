"""A plant on loopback (README, "A plant"): three stations on the line's mosquitto, bridged (QoS 1, persistent)
to a central mosquitto, a collector writing into a real PostgreSQL. The link between the line's broker and the
central one (a TCP forwarder, devkit.bridge.Link) is cut for 10 s and restored: every result and reject
reaches PostgreSQL exactly once, and the line's actuator kept receiving the rejects, before their expiry,
while the link was down."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from devkit.bridge import Link, central_broker, station_broker
from devkit.collecting import CollectorRunner, collect_config, query, table_ids
from devkit.postgres import LocalPostgres
from devkit.support import (
    DurableSubscriber,
    ServiceRunner,
    build_max_bundle,
    wait_until,
    write_config,
    write_spot_video,
)
from edged.config import load_config

PREFIX = "acme/plant1/press-shop/line3"
STATIONS = ("st1", "st2", "st3")
FRAMES, FPS = 450, 30.0  # 15 s per station, paced like a camera
CUT_AT_S, CUT_FOR_S = 3.0, 10.0


def _station_config(tmp: Path, name: str, bundle: Path, video: Path, port: int) -> Path:
    path = write_config(tmp / f"{name}.yaml", bundle, video, tmp / f"state-{name}", broker_port=port,
                        extra_camera="    realtime: true",
                        mqtt_extra=f"prefix: {PREFIX}, publish_results: true, reject_ttl_ms: 60000")
    path.write_text(path.read_text().replace("station: test", f"station: {name}"))
    return path


@pytest.mark.slow
def test_a_cut_central_link_loses_nothing_and_the_line_keeps_actuating(tmp_path: Path,
                                                                        postgres: LocalPostgres) -> None:
    central = central_broker(tmp_path / "central")
    central.start()
    link = Link(central.port)  # the plant network between the line's bridge and the central broker
    link.restore()
    line = station_broker(tmp_path / "line", link.port, PREFIX, "line3")
    line.start()
    dsn = postgres.create_database("plant")
    collector = CollectorRunner(collect_config(central.port, dsn, ["acme/plant1/+/+"], client_id="collector-1"))
    collector.start()
    actuator = DurableSubscriber(line.port, [f"{PREFIX}/+/reject", f"{PREFIX}/+/result"])
    bundle = build_max_bundle(tmp_path / "bundle")
    video = tmp_path / "line.avi"
    write_spot_video(video, FRAMES, defective=set(range(10, FRAMES, 15)), fps=FPS)
    stations = [ServiceRunner(load_config(_station_config(tmp_path, n, bundle, video, line.port))) for n in STATIONS]
    try:
        for s in stations:
            s.start()
        time.sleep(CUT_AT_S)
        cut_start = time.time()
        link.cut()  # the plant link is down: the bridge queues, the line's broker keeps serving
        time.sleep(CUT_FOR_S)
        cut_end = time.time()
        link.restore()
        for s in stations:
            s.thread.join(120)  # the video ends, the daemon exits
            s.stop()
        results = [str(p["id"]) for n in STATIONS for _, p, _ in actuator.objects(f"{PREFIX}/{n}/result")]
        rejects = [(t, p) for n in STATIONS for t, p, _ in actuator.objects(f"{PREFIX}/{n}/reject")]
        inspected = sum(s.service.summary().inspected for s in stations)
        assert len(set(results)) == inspected == FRAMES * len(STATIONS)  # every verdict reached the line's broker
        reject_ids = {str(p["id"]) for _, p in rejects}
        assert len(reject_ids) == len(STATIONS) * len(range(10, FRAMES, 15))
        try:
            wait_until(lambda: len(table_ids(dsn, "results")) >= len(set(results)) and
                       len(table_ids(dsn, "rejects")) >= len(reject_ids), 90, "every result and reject in PostgreSQL")
        except AssertionError as exc:  # say how far it got
            raise AssertionError(f"{exc}: {len(table_ids(dsn, 'results'))} of {len(set(results))} results, "
                                 f"{len(table_ids(dsn, 'rejects'))} of {len(reject_ids)} rejects; collector "
                                 f"{collector.collector.counts}, connected {collector.collector.connected.is_set()}"
                                 ) from None
        stored_results, stored_rejects = table_ids(dsn, "results"), table_ids(dsn, "rejects")
        assert Counter(stored_results) == Counter(set(results))  # exactly once, none lost, none extra
        assert Counter(stored_rejects) == Counter(reject_ids)
        held = query(dsn, f"SELECT count(*) FROM results WHERE decided_at BETWEEN to_timestamp({cut_start + 1}) "
                          f"AND to_timestamp({cut_end - 1}) AND received_at > to_timestamp({cut_end})")
        assert held[0][0] > 0, "no result decided during the cut was held back by the bridge: was the link cut?"
        during_cut = [p for t, p in rejects if cut_start < t < cut_end]
        assert during_cut, "the actuator received no reject while the central link was down"
        assert all(t < float(p["expires_at"]) for t, p in rejects)  # every reject actuated before its expiry
        per_line = query(dsn, "SELECT line, rejects FROM reject_rate_hourly")
        assert {row[0] for row in per_line} == {PREFIX} and sum(row[1] for row in per_line) == len(reject_ids)
        assert {row[0] for row in query(dsn, "SELECT DISTINCT station FROM stats")} == set(STATIONS)
    finally:
        for s in stations:
            if s.thread.is_alive():
                s.stop()
        actuator.close()
        collector.stop()
        line.stop()
        link.cut()
        central.stop()


# --- the deploy/ examples of a plant: they parse, and say what the tested setup does ------------------
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _conf_keys(text: str) -> dict[str, str]:
    lines = [ln.split(None, 1) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return {parts[0]: parts[1] if len(parts) > 1 else "" for parts in lines}


def test_the_example_collect_yaml_is_valid() -> None:
    from edged.collect.config import load_collect_config

    config = load_collect_config(DEPLOY / "collect.yaml")
    assert config.stations == ("acme/plant1/+/+",) and config.share_group and config.broker.client_id


def test_the_example_bridge_sets_what_the_plant_test_uses() -> None:
    """Every option of the tested bridge (devkit/bridge.py) is in the example, with the same value where it
    matters for losing nothing (persistent session, QoS 1 out, MQTT 5, queued QoS 0)."""
    from devkit.bridge import bridge_block

    example = _conf_keys((DEPLOY / "mosquitto-station.conf").read_text())
    tested = _conf_keys(bridge_block(1883, PREFIX, "line3"))
    assert set(tested) <= set(example)
    for key in ("cleansession", "bridge_protocol_version", "queue_qos0_messages", "upgrade_outgoing_qos"):
        assert example[key] == tested[key], key
    assert example["topic"] == f"{PREFIX}/# out 1"
    central = _conf_keys((DEPLOY / "mosquitto-central.conf").read_text())
    assert central["persistence"] == "true" and central["queue_qos0_messages"] == "true"


def test_the_alert_rules_name_metrics_the_web_view_exports() -> None:
    import re

    import yaml

    rules = yaml.safe_load((DEPLOY / "edged-alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"EdgedStationOffline", "EdgedCameraNotStreaming", "EdgedOutboxBacklogGrowing",
            "EdgedRejectsExpired"} <= names
    exported = set(re.findall(r'MetricFamily\("(edged_[a-z_]+)"',
                              (Path(__file__).resolve().parents[1] / "edged" / "web" / "metrics.py").read_text()))
    for rule in rules:
        for metric in re.findall(r"\bedged_[a-z_]+", rule["expr"]):
            assert metric.removesuffix("_total") in exported, (rule["alert"], metric)
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"
