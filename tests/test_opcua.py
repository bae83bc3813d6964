"""The OPC UA server (edged/opcua/) with a real asyncua client against the daemon on a generated video: the
namespace browsed, Trigger answered and its result received by subscription, SelectRecipe and the next result
on the new model, wrong credentials and anonymous refused; the config's safety rules."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.support import Broker, ServiceRunner, build_max_bundle, free_port, wait_until, write_spot_video
from edged.config import ConfigError, load_config, parse_config

asyncua = pytest.importorskip("asyncua")
ua = asyncua.ua


def _base(extra: dict[str, object]) -> dict[str, object]:
    return {"model": {"bundle": "/b"}, "cameras": [{"name": "cam1", "source": "0"}], "opcua": extra}


@pytest.mark.parametrize(("opcua", "message"), [
    ({"enabled": True, "bind": "0.0.0.0"}, "bind 0.0.0.0 is not loopback: set anonymous: false"),
    ({"anonymous": False}, "anonymous is false and no username is set"),
    ({"security": ["sign"]}, "security sign or sign_and_encrypt needs certificate and private_key"),
    ({"security": ["encrypt"]}, "opcua.security[0]: Input should be 'none', 'sign' or 'sign_and_encrypt'"),
])
def test_unsafe_opcua_configs_are_refused_naming_the_key(opcua: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_base(opcua))
    assert message in str(err.value), str(err.value)


def test_without_asyncua_the_daemon_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edged.service import Service

    monkeypatch.setitem(sys.modules, "asyncua", None)  # an import of it now fails, as where the extra is missing
    cfg = parse_config({**_base({"enabled": True}), "storage": {"state_dir": str(tmp_path)},
                        "mqtt": {"enabled": False}})
    with pytest.raises(ConfigError, match=r"pip install 'edged\[opcua\]'"):
        Service(cfg, handle_signals=False).start()


def _serving(cfg: Path, port: int) -> tuple[ServiceRunner, str]:
    """The daemon on `cfg`, its OPC UA endpoint open and cam1 streaming; the runner and the endpoint's URL."""
    runner = ServiceRunner(load_config(cfg)).start()
    try:
        wait_until(lambda: runner.service.opcua is not None and runner.service.opcua.listening.is_set(), 30,
                   "the OPC UA endpoint")
        wait_until(lambda: runner.service.stats["cam1"].state == "streaming", 20, "cam1 streaming")
    except BaseException:
        runner.stop()
        raise
    return runner, f"opc.tcp://127.0.0.1:{port}/edged/"


def _run_to_the_end(cfg: Path) -> ServiceRunner:
    """The daemon on `cfg` (a video that is not looped) until its video ends, then stopped."""
    runner = ServiceRunner(load_config(cfg)).start()
    try:
        wait_until(lambda: not runner.thread.is_alive(), 60, "the end of the video")
    finally:
        runner.stop()
    return runner


async def _client_session(url: str, user: str | None, password: str | None) -> Any:
    client = asyncua.Client(url, timeout=10)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    await client.connect()
    return client


async def _refused(url: str, user: str | None, password: str | None) -> str:
    try:
        client = await _client_session(url, user, password)
    except Exception as exc:  # asyncua raises ua.UaStatusCodeError (BadUserAccessDenied, BadIdentityTokenInvalid)
        return type(exc).__name__
    await client.disconnect()
    return ""


class _Changes:
    """asyncua's data-change handler: every value of the subscribed node."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.append(val)


async def _wait_value(changes: _Changes, count: int, timeout: float) -> None:
    for _ in range(int(timeout * 20)):
        if len([v for v in changes.values if v]) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no result by subscription within {timeout} s: {changes.values}")


async def _plc(url: str) -> dict[str, Any]:
    """The PLC's session: browse, trigger, subscribe, switch recipe, trigger again."""
    client = await _client_session(url, "plc", "s3cret")
    try:
        idx = await client.get_namespace_index("urn:edged:test")
        station = await client.nodes.objects.get_child(f"{idx}:test")
        names = sorted([(await n.read_browse_name()).Name for n in await station.get_children()])
        cam = await station.get_child([f"{idx}:Cameras", f"{idx}:cam1"])
        last = await cam.get_child(f"{idx}:LastResult")
        fields = sorted([(await n.read_browse_name()).Name for n in await last.get_children()])
        changes = _Changes()
        sub = await client.create_subscription(50, changes)
        await sub.subscribe_data_change(await last.get_child(f"{idx}:InspectionId"))
        trigger = await station.get_child(f"{idx}:Trigger")
        select = await station.get_child(f"{idx}:SelectRecipe")
        first = await station.call_method(trigger, "cam1", "OPC-1")
        await _wait_value(changes, 1, 15)
        one = {k: await (await last.get_child(f"{idx}:{k}")).read_value() for k in ("PartId", "Model", "Recipe",
                                                                                   "Verdict", "InspectionId")}
        unknown = await station.call_method(trigger, "cam9", "OPC-X")
        switched = await station.call_method(select, "cam1", "b")
        bad = await station.call_method(select, "cam1", "nope")
        await station.call_method(trigger, "cam1", "OPC-2")
        await _wait_value(changes, 2, 15)
        two = {k: await (await last.get_child(f"{idx}:{k}")).read_value() for k in ("PartId", "Model", "Recipe",
                                                                                   "InspectionId")}
        ack = await station.get_child(f"{idx}:AcknowledgeResult")
        acked = [await station.call_method(ack, ua.Variant(int(two["InspectionId"]), ua.VariantType.Int64)),
                 await station.call_method(ack, ua.Variant(int(two["InspectionId"]), ua.VariantType.Int64))]
        state_node = await station.get_child(f"{idx}:SystemState")
        for _ in range(200):  # refreshed every half second from the service
            state = await state_node.read_value()
            if state == "Operational":
                break
            await asyncio.sleep(0.05)
        ready = await (await cam.get_child(f"{idx}:Ready")).read_value()
        await sub.delete()
        return {"names": names, "fields": fields, "first": first, "one": one, "unknown": unknown,
                "switched": switched, "bad": bad, "two": two, "state": state, "ready": ready, "acked": acked}
    finally:
        await client.disconnect()


@pytest.mark.slow
def test_a_plc_browses_triggers_subscribes_and_switches_recipes(tmp_path: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 90, set())
    a = build_max_bundle(tmp_path / "a", bundle_id="model-a")
    b = build_max_bundle(tmp_path / "b", threshold=0.9, bundle_id="model-b")
    (tmp_path / "opcua-password").write_text("s3cret\n")
    port = free_port()
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""
station: test
model: {{bundle: {a}}}
recipes: {{a: {{bundle: {a}}}, b: {{bundle: {b}, threshold: 0.9}}}}
cameras:
  - {{name: cam1, source: "{video}", realtime: true, fps: 30, loop: true, trigger: {{mode: mqtt, timeout_ms: 3000}}}}
storage: {{state_dir: {tmp_path / "state"}}}
mqtt: {{host: 127.0.0.1, port: {broker.port}}}
opcua: {{enabled: true, port: {port}, anonymous: false, username: plc, password_file: {tmp_path / "opcua-password"}}}
web: {{enabled: false}}
""")
    runner, url = _serving(cfg, port)
    try:
        wrong = asyncio.run(_refused(url, "plc", "wrong"))
        anonymous = asyncio.run(_refused(url, None, None))
        got = asyncio.run(_plc(url))
        refused_logins = runner.service.opcua.users.refused if runner.service.opcua else 0
        health = runner.service.health()
    finally:
        runner.stop()
    assert wrong and anonymous and refused_logins >= 1, (wrong, anonymous, refused_logins)  # anonymous: not offered
    assert {"SystemState", "Cameras", "Trigger", "SelectRecipe", "Inspected", "Rejects", "NotInspected",
            "Drops"} <= set(got["names"]), got["names"]
    assert got["fields"] == sorted(["PartId", "Verdict", "IsDefective", "Score", "Threshold", "CaptureTime",
                                    "DecisionTime", "Model", "Recipe", "InspectionId"])
    assert got["first"] == ["accepted", ""], got["first"]
    assert got["one"]["PartId"] == "OPC-1" and got["one"]["Model"] == "model-a" and got["one"]["Recipe"] == "a"
    assert got["one"]["Verdict"] == "ok" and got["one"]["InspectionId"] > 0
    assert got["unknown"][0] == "refused" and got["unknown"][1].startswith("unknown_camera"), got["unknown"]
    assert got["switched"] == ["switched", "", "model-b"], got["switched"]
    assert got["bad"][0] == "refused" and "unknown recipe" in got["bad"][1], got["bad"]
    assert got["two"]["PartId"] == "OPC-2" and got["two"]["Model"] == "model-b" and got["two"]["Recipe"] == "b"
    assert got["two"]["InspectionId"] > got["one"]["InspectionId"]
    assert got["state"] == "Operational" and got["ready"] is True
    assert got["acked"] == ["acknowledged", "unknown"]  # the second ack of one result: not awaited any more
    assert health["handshake"]["acknowledged"] == 1 and health["handshake"]["unacknowledged"] == 1  # OPC-1 waits


async def _certificates(folder: Path, app_uri: str, server: bool) -> tuple[Path, Path]:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    role = "server" if server else "client"
    key, cert = folder / f"{role}-key.pem", folder / f"{role}.der"
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    await setup_self_signed_certificate(key, cert, app_uri, "localhost", use, {"commonName": app_uri})
    return cert, key


async def _secure_session(url: str, cert: Path, key: Path, encrypted: bool) -> tuple[str, list[Any]]:
    client = asyncua.Client(url, timeout=10)
    client.application_uri = "urn:edged:test-client"
    client.set_user("plc")
    client.set_password("s3cret")
    if encrypted:
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    try:
        await client.connect()
    except Exception as exc:  # no such endpoint: the server offers only SignAndEncrypt
        return type(exc).__name__, []
    try:
        policy = client.security_policy.URI
        idx = await client.get_namespace_index("urn:edged:test")
        station = await client.nodes.objects.get_child(f"{idx}:test")
        answer = await station.call_method(await station.get_child(f"{idx}:Trigger"), "cam1", "SEC-1")
        return policy, answer
    finally:
        await client.disconnect()


@pytest.mark.slow
def test_basic256sha256_sign_and_encrypt_with_certificates_from_files(tmp_path: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 90, set())
    bundle = build_max_bundle(tmp_path / "a")
    (tmp_path / "pw").write_text("s3cret")
    server_cert, server_key = asyncio.run(_certificates(tmp_path, "urn:edged:test:server", server=True))
    client_cert, client_key = asyncio.run(_certificates(tmp_path, "urn:edged:test-client", server=False))
    port = free_port()
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""
station: test
model: {{bundle: {bundle}}}
cameras:
  - {{name: cam1, source: "{video}", realtime: true, fps: 30, loop: true, trigger: {{mode: mqtt}}}}
storage: {{state_dir: {tmp_path / "state"}}}
mqtt: {{host: 127.0.0.1, port: {broker.port}}}
opcua: {{enabled: true, port: {port}, anonymous: false, username: plc, password_file: {tmp_path / "pw"},
        security: [sign_and_encrypt], certificate: {server_cert}, private_key: {server_key}}}
web: {{enabled: false}}
""")
    runner, url = _serving(cfg, port)
    try:
        plain = asyncio.run(_secure_session(url, client_cert, client_key, encrypted=False))
        secure = asyncio.run(_secure_session(url, client_cert, client_key, encrypted=True))
    finally:
        runner.stop()
    assert plain[1] == [] and plain[0], plain  # no unencrypted session on a sign_and_encrypt-only server
    assert secure == ("http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256", ["accepted", ""]), secure


def test_opcua_files_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "edged.yaml"
    path.write_text("model: {bundle: a}\ncameras: [{name: cam1, source: '0'}]\nmqtt: {enabled: false}\n"
                    "opcua: {username: plc, password_file: secrets/pw, security: [sign], certificate: c.der, "
                    "private_key: /abs/k.pem}\n")
    cfg = load_config(path).opcua
    assert (cfg.password_file, cfg.certificate, cfg.private_key) == (tmp_path / "secrets" / "pw",
                                                                     tmp_path / "c.der", Path("/abs/k.pem"))


@pytest.mark.slow
def test_a_port_in_use_leaves_the_line_inspecting_without_opcua(tmp_path: Path) -> None:
    import socket

    video = tmp_path / "line.avi"
    write_spot_video(video, 60, {30})
    bundle = build_max_bundle(tmp_path / "a")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "edged.yaml"
        cfg.write_text(f"""
model: {{bundle: {bundle}}}
cameras: [{{name: cam1, source: "{video}", trigger: {{gap_ms: 0}}}}]
storage: {{state_dir: {tmp_path / "state"}}}
mqtt: {{enabled: false}}
opcua: {{enabled: true, port: {port}}}
web: {{enabled: false}}
""")
        runner = _run_to_the_end(cfg)
    assert runner.exit_code == 0 and runner.service.opcua is None
    assert runner.service.counters.inspected == 60 and runner.service.counters.rejects == 1


@pytest.mark.slow
def test_a_certificate_that_cannot_be_loaded_leaves_the_line_inspecting_without_opcua(tmp_path: Path) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 60, {30})
    bundle = build_max_bundle(tmp_path / "a")
    (tmp_path / "cert.der").write_bytes(b"not a certificate")
    (tmp_path / "key.pem").write_bytes(b"not a key")
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""
model: {{bundle: {bundle}}}
cameras: [{{name: cam1, source: "{video}", trigger: {{gap_ms: 0}}}}]
storage: {{state_dir: {tmp_path / "state"}}}
mqtt: {{enabled: false}}
opcua: {{enabled: true, port: {free_port()}, security: [sign], certificate: cert.der, private_key: key.pem}}
web: {{enabled: false}}
""")
    runner = _run_to_the_end(cfg)
    assert runner.exit_code == 0 and runner.service.opcua is None and runner.service.counters.rejects == 1
