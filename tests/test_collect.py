"""`edged collect` (edged/collect/) against a real mosquitto and a real PostgreSQL: every message recorded
once by id, bad ones counted and the loop alive, nothing lost when the collector or the database is down,
two collectors sharing one subscription, the hourly reject-rate and station-health views."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from devkit.collecting import CollectorRunner, Publisher, collect_config, query, table_ids
from devkit.postgres import LocalPostgres
from devkit.support import Broker, wait_until
from edged.cli import main as cli_main
from edged.collect.config import parse_collect_config
from edged.collect.store import PgStore
from edged.config import ConfigError
from tests.test_collect_messages import reject, result

LINE = "acme/plant1/press-shop/line3"


def _publish_results(pub: Publisher, station: str, uids: list[str], defective: bool = False) -> None:
    for uid in uids:
        pub.send(f"{LINE}/{station}/result", result(uid, station, defective).to_json())


def test_every_kind_is_recorded_once_and_bad_messages_are_counted(broker: Broker, postgres: LocalPostgres) -> None:
    dsn = postgres.create_database("plant")
    runner = CollectorRunner(collect_config(broker.port, dsn, ["acme/plant1/+/+"])).start()
    pub = Publisher(broker.port)
    try:
        _publish_results(pub, "st1", ["r1", "r2"])
        pub.send(f"{LINE}/st1/result", result("r1", "st1").to_json())  # a redelivery: the same id again
        pub.send(f"{LINE}/st1/reject", reject("j1", "st1").to_json())
        pub.send(f"{LINE}/st1/audit", json.dumps({**reject("j0", "st1").to_dict(), "expired": True}))
        pub.send(f"{LINE}/st1/stats", json.dumps({"station": "st1", "at": 1.8e9, "outbox_backlog": 0}))
        for bad in (b"not json", b"[]", b'{"station": "st1", "x": "\\u0000"}', b'{"station": "other"}'):
            pub.send(f"{LINE}/st1/result", bad)
        pub.send(f"{LINE}/st1/result", result("r3", "st1").to_json())  # after the bad ones: the loop lives
        counts = runner.collector.counts
        wait_until(lambda: counts.recorded == 6 and counts.bad == 4, 15, "6 rows and 4 bad messages")
        assert sorted(table_ids(dsn, "results")) == ["r1", "r2", "r3"]
        assert table_ids(dsn, "rejects") == ["j1"] and table_ids(dsn, "audits") == ["j0"]
        assert len(table_ids(dsn, "stats")) == 1
        assert counts.duplicates == 1
        assert query(dsn, "SELECT line, station, camera FROM results WHERE id = 'r1'") == [(LINE, "st1", "cam1")]
    finally:
        pub.close()
        runner.stop()
    # the collector's own counts, for a person: bad messages seen from SQL
    assert query(dsn, "SELECT received, recorded, duplicates, bad FROM collectors") == [(11, 6, 1, 4)]


def test_a_stopped_collector_resumes_its_session_and_loses_nothing(broker: Broker, postgres: LocalPostgres) -> None:
    dsn = postgres.create_database("plant")
    config = collect_config(broker.port, dsn, [LINE], client_id="collector-a")
    runner = CollectorRunner(config).start()
    pub = Publisher(broker.port)
    try:
        _publish_results(pub, "st1", ["a1"])
        wait_until(lambda: runner.collector.counts.recorded == 1, 15, "the first result")
        runner.stop()
        _publish_results(pub, "st1", [f"b{i}" for i in range(50)])  # queued in the collector's session
        runner = CollectorRunner(config).start()
        wait_until(lambda: runner.collector.counts.recorded == 50, 15, "the 50 queued results")
        assert len(set(table_ids(dsn, "results"))) == len(table_ids(dsn, "results")) == 51
    finally:
        pub.close()
        runner.stop()


def test_a_plain_subscription_survives_a_broker_restart(tmp_path: Path, postgres: LocalPostgres) -> None:
    """share_group: null (one collector, a plain subscription): the persistent central broker keeps the collector's
    subscription over its own restart, so what arrives before the collector is back is queued for it. (mosquitto
    2.0 does not restore shared subscriptions from its persistence: README, "A plant".)"""
    from devkit.bridge import central_broker

    central = central_broker(tmp_path / "central")
    central.start()
    dsn = postgres.create_database("plant")
    config = collect_config(central.port, dsn, [LINE], client_id="collector-plain", share_group=None)
    runner = CollectorRunner(config).start()
    runner.stop()
    central.stop()
    central.start()
    pub = Publisher(central.port)
    try:
        _publish_results(pub, "st1", [f"p{i}" for i in range(10)])
        runner = CollectorRunner(config).start()
        wait_until(lambda: len(table_ids(dsn, "results")) == 10, 15, "the 10 results queued over the restart")
    finally:
        pub.close()
        runner.stop()
        central.stop()


def test_a_database_outage_loses_nothing(broker: Broker, postgres: LocalPostgres) -> None:
    """Messages arriving while PostgreSQL is down are not acknowledged; they are recorded once it is back."""
    dsn = postgres.create_database("plant")
    runner = CollectorRunner(collect_config(broker.port, dsn, [LINE])).start()
    pub = Publisher(broker.port)
    try:
        _publish_results(pub, "st1", ["x0"])
        wait_until(lambda: runner.collector.counts.recorded == 1, 15, "the first result")
        postgres.halt()
        _publish_results(pub, "st1", [f"y{i}" for i in range(20)])
        wait_until(lambda: runner.collector.counts.store_errors > 0, 15, "the collector to notice the outage")
        postgres.start()
        wait_until(lambda: len(table_ids(dsn, "results")) == 21, 60, "all 21 results after the outage")
        assert len(set(table_ids(dsn, "results"))) == 21
    finally:
        pub.close()
        runner.stop()


def test_messages_taken_but_not_committed_are_redelivered(broker: Broker, postgres: LocalPostgres) -> None:
    """A collector holding messages it could not commit (database down) and then stopped never acknowledged
    them: the broker gives them to the next collector of the same session."""
    dsn = postgres.create_database("plant")
    config = collect_config(broker.port, dsn, [LINE], client_id="collector-a")
    runner = CollectorRunner(config).start()
    pub = Publisher(broker.port)
    try:
        postgres.halt()
        _publish_results(pub, "st1", [f"z{i}" for i in range(10)])
        wait_until(lambda: runner.collector.counts.received == 10, 15, "the collector to hold the 10 messages")
        runner.stop()
        assert runner.collector.counts.recorded == 0
        postgres.start()
        runner = CollectorRunner(config).start()
        wait_until(lambda: len(table_ids(dsn, "results")) == 10, 30, "the 10 redelivered results")
        assert len(set(table_ids(dsn, "results"))) == 10
    finally:
        pub.close()
        runner.stop()


def test_two_collectors_share_one_subscription(broker: Broker, postgres: LocalPostgres) -> None:
    dsn = postgres.create_database("plant")
    runners = [CollectorRunner(collect_config(broker.port, dsn, [LINE], client_id=f"c{i}")).start() for i in (1, 2)]
    pub = Publisher(broker.port)
    try:
        _publish_results(pub, "st1", [f"s{i}" for i in range(100)])
        wait_until(lambda: sum(r.collector.counts.received for r in runners) >= 100, 15, "100 messages received")
        wait_until(lambda: len(table_ids(dsn, "results")) == 100, 15, "100 rows")
        got = [r.collector.counts.received for r in runners]
        assert sum(got) == 100 and min(got) > 0, got  # shared: each message went to one collector only
    finally:
        pub.close()
        for r in runners:
            r.stop()


def test_views_reject_rate_per_line_and_hour_and_station_health(postgres: LocalPostgres) -> None:
    from edged.collect.messages import parse

    dsn = postgres.create_database("plant")
    store = PgStore(collect_config(1883, dsn, [LINE]).postgres)
    store.connect()
    store.connect()  # a second start: the schema is current, the views replaced
    rows = [parse(f"{LINE}/st1/result", result(f"g{i}", "st1", defective=i < 2).to_json().encode())
            for i in range(8)]
    rows += [parse(f"{LINE}/st1/reject", reject(f"j{i}", "st1").to_json().encode()) for i in range(2)]
    now = time.time()
    rows += [parse(f"{LINE}/st1/stats", json.dumps({"station": "st1", "at": now - 100 + 10 * i,
                                                      "outbox_backlog": i}).encode()) for i in range(3)]
    rows += [parse(f"{LINE}/st2/stats", json.dumps({"station": "st2", "at": now - 1 - 10 * i,
                                                      "outbox_backlog": 0}).encode()) for i in range(2)]
    written = store.write(rows)
    assert (written.new, written.duplicates) == (15, 0)
    assert store.write(rows).duplicates == 15  # idempotent by id
    store.close()
    assert query(dsn, "SELECT line, results, defective, rejects, reject_rate FROM reject_rate_hourly") == [
        (LINE, 8, 2, 2, 0.25)]
    # st1's last stats is 80 s old at a 10 s interval: offline; st2's is 1 s old: online
    health = query(dsn, "SELECT station, round(extract(epoch FROM stats_interval)), outbox_backlog, offline "
                        "FROM station_health ORDER BY station")
    assert health == [("st1", 10, 2, True), ("st2", 10, 0, False)]


def test_a_bad_collect_yaml_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "collect.yaml"
    path.write_text("stations: ['acme/#']\npostgres: {dsn: x}\nbroker: {port: 0}\n")
    assert cli_main(["collect", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stations: [0] 'acme/#' must not contain the wildcard '#'" in err and "broker.port:" in err
    with pytest.raises(ConfigError, match="postgres: required key is missing"):
        parse_collect_config({"stations": ["a"]})


def test_the_collect_benchmark_runs(tmp_path: Path) -> None:
    """scripts/bench.py collect in a tiny configuration, so it cannot rot (nothing here checks speed)."""
    from devkit.support import load_script

    pytest.importorskip("psycopg")
    if not LocalPostgres.available():
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh dev installs it)")
    bench = load_script("bench")
    run = bench.collect_bench(tmp_path, messages=300, collectors=2, batch_size=100)
    assert (run["collectors"], run["rows"], run["messages"]) == (2, 300, 300)
    assert run["messages_per_s"] > 0 and run["stations_at_30fps"] == int(run["messages_per_s"] // 30.1)


def test_the_readme_queries_run(postgres: LocalPostgres) -> None:
    """Every statement of README "A plant"'s SQL example runs against the collector's schema and finds rows."""
    import re

    from edged.collect.messages import parse

    dsn = postgres.create_database("plant")
    store = PgStore(collect_config(1883, dsn, [LINE]).postgres)
    store.connect()
    now = time.time()
    store.write([parse(f"{LINE}/st2/reject", json.dumps({**reject("j1", "st2").to_dict(), "decided_at": now}).encode()),
                 parse(f"{LINE}/st2/result", json.dumps({**result("r1", "st2").to_dict(), "decided_at": now}).encode()),
                 parse(f"{LINE}/st2/stats", json.dumps({"station": "st2", "at": now - 600,
                                                        "cameras": {"cam1": {"state": "reconnecting"}}}).encode())])
    store.close()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"## A plant.*?```sql\n(.*?)```", readme, re.S)
    assert block is not None
    statements = [s for s in block.group(1).split(";") if s.strip()]
    assert len(statements) == 4
    for statement in statements:
        assert query(dsn, statement), statement


@pytest.mark.slow
def test_the_edged_collect_command_records_and_stops_on_sigterm(tmp_path: Path, broker: Broker,
                                                                 postgres: LocalPostgres) -> None:
    import signal
    import subprocess
    import sys

    dsn = postgres.create_database("plant")
    path = tmp_path / "collect.yaml"
    path.write_text(f"broker: {{host: 127.0.0.1, port: {broker.port}, client_id: cmd-test}}\n"
                    f"stations: ['{LINE}']\npostgres: {{dsn: '{dsn}'}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "edged", "collect", "-c", str(path)], stderr=subprocess.PIPE,
                            text=True)
    pub = Publisher(broker.port)
    try:
        def recorded() -> bool:
            if not query(dsn, "SELECT 1 FROM pg_tables WHERE schemaname = 'edged' AND tablename = 'results'"):
                return False  # the command has not migrated the schema yet
            _publish_results(pub, "st1", [f"cmd{len(table_ids(dsn, 'results'))}"])  # until it is subscribed
            return len(table_ids(dsn, "results")) > 0

        wait_until(lambda: proc.poll() is None and recorded(), 30, "the command to record a result", poll=0.3)
    finally:
        pub.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "subscribing to $share/edged-collect/" in err
    assert "the central broker granted the subscription" in err


def test_a_missing_table_is_a_store_failure_not_a_bad_row(postgres: LocalPostgres) -> None:
    """Only a value the database cannot hold is a refused row (acknowledged, counted); a table or right that is
    missing fails the batch (nothing acknowledged, retried), so an operator's mistake loses no message."""
    import psycopg

    from edged.collect.messages import parse
    from edged.collect.store import StoreDown

    dsn = postgres.create_database("plant")
    store = PgStore(collect_config(1883, dsn, [LINE]).postgres)
    store.connect()
    row = parse(f"{LINE}/st1/result", result("r1", "st1").to_json().encode())
    huge = parse(f"{LINE}/st1/result", json.dumps({**result("r2", "st1").to_dict(), "seq": 2**63 - 1}).encode())
    assert store.write([row, huge]).new == 2
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE edged.results CASCADE")
    with pytest.raises(StoreDown):
        store.write([parse(f"{LINE}/st1/result", result("r3", "st1").to_json().encode())])


def test_an_older_schema_is_migrated_at_start(postgres: LocalPostgres) -> None:
    """A database at version 1 (before the collectors table) gets migration 2 only, once, when a collector starts."""
    import psycopg

    from edged.collect.schema import MIGRATIONS

    dsn = postgres.create_database("plant")
    store = PgStore(collect_config(1883, dsn, [LINE]).postgres)
    store.connect()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE edged.collectors")
        conn.execute("DELETE FROM edged.edged_schema WHERE version > 1")
    store.connect()
    store.close()
    assert query(dsn, "SELECT version FROM edged_schema ORDER BY version") == [(v,) for v in
                                                                              range(1, len(MIGRATIONS) + 1)]
    assert query(dsn, "SELECT count(*) FROM collectors") == [(0,)]
