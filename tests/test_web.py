"""The web view over HTTP against a running line (real mosquitto, real bundle, a 30 fps video): logins,
sessions, CSRF, the API, /metrics, feedback labels, and the bounds that keep a hostile client off the pipeline."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit.support import ServiceRunner, build_max_bundle, wait_until, write_config, write_spot_video
from devkit.webline import PASSWORD, Client, WebLine, basic, start_line
from edged.archive import map_path
from edged.config import ConfigError, load_config, parse_config
from edged.incoming import MessageRefused
from edged.payloads import TriggerAck
from edged.web import images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebLine]:
    running = start_line(tmp_path_factory.mktemp("webline"), "max_clients: 3")
    yield running
    running.stop()


@pytest.fixture
def client(line: WebLine) -> Client:
    c = Client(line)
    assert c.login().status == 303
    return c


def test_pages_and_api_need_a_login_and_a_wrong_password_is_refused(line: WebLine) -> None:
    anon = Client(line)
    page = anon.get("/")
    assert page.status == 303 and page.headers["location"].startswith("/login")
    assert anon.get("/api/status").status == 401
    assert anon.get("/metrics").status == 401
    assert anon.get("/metrics", headers=basic("wrong")).status == 401
    wrong = anon.login(password="not-the-password")
    assert wrong.status == 401 and "set-cookie" not in wrong.headers
    assert "Wrong password" in wrong.text
    assert anon.get("/api/status", headers={"Cookie": "edged_session=forged"}).status == 401
    assert anon.get("/metrics", headers=basic(PASSWORD)).status == 200


def test_session_cookie_is_httponly_strict_and_no_page_holds_the_secret(line: WebLine) -> None:
    c = Client(line)
    reply = c.login()
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and PASSWORD not in cookie
    assert PASSWORD not in reply.headers.get("location", "")
    for path in ("/", "/rejects", "/feedback", "/health", "/api/status", "/api/cameras", "/metrics"):
        got = c.get(path)
        assert got.status == 200, path
        assert PASSWORD not in got.text, path
    assert "web-password" in c.get("/health").text  # the file is named, its content is not
    c.post_form("/logout", {"csrf": c.csrf or ""})
    assert c.get("/api/status").status == 401


def test_metrics_parse_and_count_at_scrape_time(client: Client) -> None:
    def scrape() -> dict[str, float]:
        text = client.get("/metrics").text
        return {f"{s.name}{sorted(s.labels.items())}": s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    first = scrape()
    for name in ("edged_frames_total[('camera', 'cam1')]", "edged_drops_total[('camera', 'cam1')]",
                 "edged_reconnects_total[('camera', 'cam1')]",
                 "edged_rejects_total[('camera', 'cam1'), ('reason', 'defect')]",
                 "edged_latency_seconds_count[('camera', 'cam1')]", "edged_outbox_backlog[]",
                 "edged_rejects_expired_total[]", "edged_db_errors_total[]", "edged_inspected_total[]"):
        assert name in first, name
    assert any(k.startswith("edged_model_info") and "test-max" in k for k in first)
    for name in ("edged_missed_frames_total[('camera', 'cam1')]", "edged_input_degraded[('camera', 'cam1')]",
                 "edged_input_alarms_total[('camera', 'cam1')]", "edged_input_not_inspected_total[('camera', 'cam1')]",
                 "edged_results_unacknowledged[]", "edged_results_acknowledged_total[]",
                 "edged_result_ack_overruns_total[]", "edged_result_acks_unknown_total[]",
                 "edged_recipe_info[('camera', 'cam1'), ('model', 'test-max'), ('recipe', 'default')]"):
        assert name in first, name
    assert first["edged_missed_frames_total[('camera', 'cam1')]"] == 0  # a video file loses no frame
    for thread in ("capture:cam1", "inference:0", "recorder"):  # the kernel names the threads carry
        assert f"edged_thread_cpu_seconds_total[('thread', '{thread}')]" in first, thread
    assert first["edged_input_degraded[('camera', 'cam1')]"] in (0.0, 1.0)
    assert any(k.startswith("edged_runtime_choice_info") and "('mode', 'auto')" in k and "('runtime', '" in k
               for k in first), [k for k in first if "runtime" in k]
    wait_until(lambda: scrape()["edged_frames_total[('camera', 'cam1')]"] >
               first["edged_frames_total[('camera', 'cam1')]"], 10, "frames counted between scrapes")


def test_readme_lists_every_metric_served(client: Client) -> None:
    """The README's /metrics table names every family a scrape serves (so a new metric cannot go undocumented)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### /metrics"):]
    listed = set(re.findall(r"^\| `(edged_\w+)` \|", section, re.MULTILINE))
    served = set()
    for fam in text_string_to_metric_families(client.get("/metrics").text):
        suffix = {"counter": "_total", "info": "_info"}.get(fam.type, "")
        served.add(fam.name + suffix)
    assert served - listed == set(), "served but not in the README's /metrics table"
    assert listed - served == set(), "in the README's /metrics table but not served"


def test_metrics_read_the_plcs_result_acks_at_scrape_time(client: Client, line: WebLine) -> None:
    """The handshake's counters as the MQTT thread leaves them (this free-run line takes no cmd/result_ack, so the
    test calls the same ResultAcks the route does): a result sent, one acked, an id never sent."""
    def scrape() -> dict[str, float]:
        text = client.get("/metrics").text
        return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if "result" in s.name}

    before = scrape()
    acks = line.runner.service.result_acks
    acks.sent([987654320, 987654322], time.time())
    acks.acked((987654320, 987654321))
    after = scrape()
    assert after["edged_results_unacknowledged"] == before["edged_results_unacknowledged"] + 1
    assert after["edged_results_acknowledged_total"] == before["edged_results_acknowledged_total"] + 1
    assert after["edged_result_acks_unknown_total"] == before["edged_result_acks_unknown_total"] + 1
    acks.acked((987654322,))


def test_metrics_count_refused_triggers_by_reason(client: Client, line: WebLine) -> None:
    """A trigger this free-run line cannot take (no camera in trigger mode mqtt), through the same admit_trigger
    the MQTT route and OPC UA call, is counted under its ack's reason; every reason is served from 0."""
    def refused() -> dict[str, float]:
        text = client.get("/metrics").text
        return {s.labels["reason"]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == "edged_triggers_refused_total"}

    before = refused()
    assert {"unknown_camera", "not_ready", "recipe_switching", "bad_message", "repeated", "overloaded"} <= set(before)
    acks: list[TriggerAck] = []
    with contextlib.suppress(MessageRefused):  # refused whole, after its acks
        line.runner.service.admit_trigger(b'{"part_id": "P-1", "camera": "cam1"}', time.time(), acks)
    reasons = [a.reason for a in acks]
    assert reasons and all(reasons), acks
    after = refused()
    for reason in set(reasons):
        assert after[reason] == before[reason] + reasons.count(reason), reason


def test_rejects_api_pages_and_filters(client: Client, line: WebLine) -> None:
    wait_until(lambda: client.get("/api/rejects").json()["total"] >= 2, 30, "two rejected frames")
    everything = client.get("/api/rejects").json()
    newest = everything["rejects"][0]
    assert newest["camera"] == "cam1" and newest["score"] > newest["threshold"] and newest["regions"]
    assert newest["part_id"] and str(newest["part_id"]).startswith("cam1-")  # the reject message's part id
    assert newest["has_image"] and "image_path" not in newest  # the path on disk stays inside
    # pages of a window that ends just after the newest reject: the line goes on rejecting between the two
    # requests, and a new reject would shift the pages (one full run saw page 1 start with page 0's reject)
    until = float(newest["captured_at"]) + 0.001  # frames are 33 ms apart, committed in capture order
    one, two = (client.get(f"/api/rejects?per_page=1&page={p}&until={until}").json()["rejects"] for p in (0, 1))
    assert one[0]["id"] == newest["id"] and two[0]["id"] < one[0]["id"]
    assert client.get(f"/api/rejects?since={time.time() + 3600}").json()["total"] == 0
    assert client.get("/api/rejects?camera=cam1&reason=defect").json()["total"] >= 2
    bad = client.get("/api/rejects?camera=nope")
    assert bad.status == 400 and "camera" in bad.json()["error"]
    assert client.get("/api/rejects?since=nan").status == 400
    assert client.get("/api/rejects?hours=1").json()["total"] >= 2  # the page's "last hour"
    assert client.get("/api/rejects?hours=-1").status == 400
    part = client.get(f"/api/parts/{newest['id']}").json()
    assert part["id"] == newest["id"] and any(n["id"] == newest["id"] for n in part["neighbours"])
    # the row carries its image's path at once; the frame and then its map are written after the commit by a
    # thread at idle priority (edged.archive.ImageWriter), so on a busy machine they come a moment later
    wait_until(lambda: _heat_overlay(client, newest["id"]), 30, "the reject's frame and map written and drawn")
    image = client.get(f"/image/{newest['id']}.jpg")
    assert image.status == 200 and image.body[:2] == b"\xff\xd8"
    assert client.get("/image/999999999.jpg").status == 404


def _heat_overlay(client: Client, inspection_id: int) -> bool:
    """The stored frame's overlay is drawn from its saved map: a heat map over the whole frame, not the regions'
    boxes alone (what it is while the map is not written yet)."""
    image, overlay = client.get(f"/image/{inspection_id}.jpg"), client.get(f"/image/{inspection_id}/overlay.jpg")
    if image.status != 200 or overlay.status != 200:
        return False
    frame_px, overlay_px = (cv2.imdecode(np.frombuffer(r.body, np.uint8), cv2.IMREAD_COLOR) for r in (image, overlay))
    if frame_px is None or overlay_px is None or frame_px.shape != overlay_px.shape:
        return False
    return bool(np.abs(frame_px.astype(int) - overlay_px).mean() > 10)


def test_live_frame_is_a_jpeg_that_follows_the_camera(client: Client) -> None:
    first = client.get("/live/cam1.jpg")
    assert first.status == 200 and first.headers["content-type"] == "image/jpeg" and first.body[:2] == b"\xff\xd8"
    assert first.headers["connection"] == "close"  # an idle keep-alive connection would hold a slot
    seq = int(first.headers["x-frame-seq"])
    wait_until(lambda: int(client.get("/live/cam1.jpg").headers["x-frame-seq"]) > seq, 10, "a newer live frame")
    assert client.get("/live/cam1.jpg?overlay=1").status == 200  # the latest reject's map and regions
    assert client.get("/live/nocam.jpg").status == 404


def test_false_reject_is_stored_with_who_and_its_frame_goes_to_the_feedback_folder(client: Client,
                                                                                   line: WebLine) -> None:
    wait_until(lambda: client.get("/api/rejects").json()["total"] >= 1, 30, "a reject")
    reject = client.get("/api/rejects").json()["rejects"][0]
    headers = {"X-CSRF-Token": client.csrf or "", "Content-Type": "application/json", "Accept": "application/json"}
    reply = client.request("POST", "/api/labels", f'{{"inspection_id": {reject["id"]}, "label": "false_reject"}}'
                           .encode(), headers)
    assert reply.status == 201, reply.text
    stored = reply.json()
    assert stored["by"] == "anna" and stored["label"] == "false_reject"
    copy = Path(stored["image_copy"])
    assert copy.is_file() and copy.parent == line.state / "feedback" / "good"
    db = sqlite3.connect(line.state / "edged.db")
    row = db.execute("SELECT label, created_by, inspection_id FROM labels WHERE id = ?", (stored["id"],)).fetchone()
    assert row == ("false_reject", "anna", reject["id"])
    assert client.get("/api/labels").json()["counts"]["false_reject"] >= 1
    assert "edged-train calibrate" in client.get("/api/labels").json()["recalibrate"]
    wrong = client.request("POST", "/api/labels", f'{{"inspection_id": {reject["id"]}, "label": "missed_defect"}}'
                           .encode(), headers)
    assert wrong.status == 400 and "missed_defect" in wrong.json()["error"]


def test_posts_without_the_csrf_token_or_from_another_site_are_refused(client: Client) -> None:
    fields = {"inspection_id": "1", "label": "missed_defect"}
    assert client.post_form("/api/labels", fields).status == 403
    assert client.post_form("/api/labels", {**fields, "csrf": "guess"}).status == 403
    other = client.post_form("/api/labels", {**fields, "csrf": client.csrf or ""},
                             headers={"Origin": "http://evil.example"})
    assert other.status == 403


def test_an_oversized_body_is_refused(client: Client) -> None:
    reply = client.request("POST", "/api/labels", b"x" * 20000, {"Content-Type": "application/json"})
    assert reply.status == 413


def test_silent_clients_get_no_more_than_their_slots_and_the_pipeline_goes_on(line: WebLine) -> None:
    """max_clients 3: three sockets that never send a byte hold every slot; the next request is answered 503
    at once, inspection keeps going meanwhile, and the slots come back when the silent ones go."""
    svc = line.runner.service
    anon = Client(line)
    silent = [socket.create_connection((line.host, line.port)) for _ in range(3)]
    try:
        wait_until(lambda: anon.get("/login").status == 503, 10, "a 503 while every slot is held")
        inspected = svc.counters.inspected
        wait_until(lambda: svc.counters.inspected > inspected + 30, 10, "inspection while the view is saturated")
    finally:
        for s in silent:
            s.close()
    wait_until(lambda: anon.get("/login").status == 200, 10, "a slot again once the silent clients left")
    assert line.runner.service.web is not None and line.runner.service.web.refused >= 1


def test_a_client_trickling_its_request_is_cut_at_the_deadline(line: WebLine) -> None:
    """request_timeout_s is one deadline for the connection: a byte every 0.3 s (each read well inside the
    timeout) no longer holds a slot for ever; the server cuts it once the 10 s are up (with slack for a loaded
    box) and the view still answers."""
    timeout_s = line.runner.service.config.web.request_timeout_s
    start = time.monotonic()
    cut = False
    with socket.create_connection((line.host, line.port)) as trickle:
        trickle.settimeout(0.3)
        request = b"GET /login HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 200
        for byte in request:
            try:
                trickle.sendall(bytes([byte]))
                if trickle.recv(1024) == b"":
                    cut = True
                    break
            except TimeoutError:
                pass  # nothing from the server yet: trickle on
            except OSError:
                cut = True
                break
            if time.monotonic() - start > timeout_s + 15:
                break
    assert cut, f"a trickling client still held its slot {time.monotonic() - start:.0f} s after connecting"
    assert time.monotonic() - start >= timeout_s - 0.5  # cut by the deadline, not at once
    assert Client(line).get("/login").status == 200


def test_a_view_outside_loopback_needs_a_password_or_auth_none() -> None:
    base = {"model": {"bundle": "/b"}, "cameras": [{"name": "c", "source": "x.avi"}]}
    with pytest.raises(ConfigError, match=r"web: .*bind 0\.0\.0\.0 is not loopback"):
        parse_config({**base, "web": {"bind": "0.0.0.0"}})
    assert parse_config({**base, "web": {"bind": "0.0.0.0", "auth": "none"}}).web.open_to_all()
    assert parse_config({**base, "web": {"bind": "0.0.0.0", "password_file": "/run/pw"}}).web.bind == "0.0.0.0"
    with pytest.raises(ConfigError, match="web: set either password or password_file"):
        parse_config({**base, "web": {"password": "a", "password_file": "/run/pw"}})


def test_an_open_view_on_loopback_needs_no_login_but_its_posts_need_the_page_token(tmp_path: Path) -> None:
    """No password on 127.0.0.1: pages and API open, but a POST still needs the token of a page of this view
    (another site's page in the same browser cannot label frames)."""
    open_line = start_line(tmp_path / "open", password=False)
    try:
        anon = Client(open_line)
        page = anon.get("/feedback")
        assert page.status == 200 and "log out" not in page.text
        assert anon.get("/login").status == 303  # nothing to log in to
        wait_until(lambda: anon.get("/api/rejects").json()["total"] >= 1, 30, "a reject")
        reject = anon.get("/api/rejects").json()["rejects"][0]
        fields = {"inspection_id": str(reject["id"]), "label": "confirmed_defect", "by": "Ben\n"}
        assert anon.post_form("/api/labels", fields).status == 403
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        done = anon.post_form("/api/labels", {**fields, "csrf": token.group(1)})
        assert done.status == 201  # no Accept: text/html, so the API answers JSON (a browser form gets a 303)
        labels = anon.get("/api/labels").json()["labels"]
        assert labels[0]["label"] == "confirmed_defect" and labels[0]["by"] == "Ben"  # typed name, cleaned
    finally:
        open_line.stop()


def test_a_login_without_a_password_found_refuses_the_view_not_the_line(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """auth: password with an empty password file (systemd's LoadCredential= needs the file to exist, so it is
    often empty): the view is not started open to everyone, the line inspects on; and a port in use is the same."""
    empty = tmp_path / "web-password"
    empty.write_text("\n")
    base = {"model": {"bundle": "/b"}, "cameras": [{"name": "c", "source": "x.avi"}]}
    web = parse_config({**base, "web": {"auth": "password", "password_file": str(empty)}}).web
    with pytest.raises(ConfigError, match="no password was found"):
        web.read_password()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        bundle = build_max_bundle(tmp_path / "bundle")
        video = tmp_path / "v.avi"
        write_spot_video(video, 60, {10})
        for extra in (f"web: {{auth: password, password_file: {empty}, port: 0}}",
                      f"web: {{port: {busy.getsockname()[1]}}}"):
            cfg = load_config(write_config(tmp_path / "edged.yaml", bundle, video, tmp_path / "state", extra=extra))
            runner = ServiceRunner(cfg).start()
            try:
                wait_until(lambda: runner.service.counters.inspected >= 30, 30, "inspection without the view")  # noqa: B023
                assert runner.service.web is None
            finally:
                runner.stop()
            assert any("web view not started" in r.message for r in caplog.records)
            caplog.clear()
    finally:
        busy.close()


def test_a_stored_overlay_without_its_map_is_the_frame_with_its_boxes(tmp_path: Path) -> None:
    """A frame saved without its map (images.overlay off, a map deleted or spoiled) still gets an overlay: its
    regions' boxes; a region the database holds badly is left out, not a 500. An older edged's rendered
    overlay in the map's place is shown as it is."""
    frame = np.full((40, 60, 3), 90, np.uint8)
    stored = tmp_path / "f.jpg"
    cv2.imwrite(str(stored), frame)
    regions = json.loads('[{"x": 5, "y": 6, "w": 10, "h": 8}, {"x": "bad"}]')  # as the row's column holds them
    assert np.array_equal(images.stored_overlay(stored, frame, regions), images.boxes_on(frame, regions[:1]))
    map_path(stored).write_bytes(b"not a png")
    assert np.array_equal(images.stored_overlay(stored, frame, regions), images.boxes_on(frame, regions[:1]))
    cv2.imwrite(str(map_path(stored)), np.full((4, 6), 200, np.uint8))
    assert not np.array_equal(images.stored_overlay(stored, frame, regions), images.boxes_on(frame, regions[:1]))
    legacy = np.full((40, 60, 3), 33, np.uint8)  # an overlay an older edged rendered there (images.format: png)
    cv2.imwrite(str(map_path(stored)), legacy)
    assert np.array_equal(images.stored_overlay(stored, frame, regions), legacy)
