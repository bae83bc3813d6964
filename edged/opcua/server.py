"""The OPC UA server: asyncua's asyncio loop in one supervised thread, the station's namespace, two methods.

It talks to the pipeline only through what the service hands it, the same seams as MQTT: `trigger` (the
MQTT trigger's checks, admission and ack), `select_recipe` (the recipe switcher; waited for in an executor
thread, never in the loop), `snapshot` (counters and states, read every SNAPSHOT_S) and `result` (called by
the recorder after each triggered part's commit: one queue put, thread-safe, never blocking). The pipeline
never waits on OPC UA clients.

Namespace `urn:edged:<station>` under Objects (after OPC 40100 where it fits):

    <station>                      VisionSystem
      SystemState                  String: Preoperational | Operational | Halted | Error
      Inspected, Rejects, NotInspected, Drops          UInt64 counters
      Trigger(Camera, PartId) -> (Result, Reason)       as an MQTT trigger: accepted | refused
      SelectRecipe(Camera, Recipe) -> (Result, Reason, Model)   switched | refused (after load and verify)
      AcknowledgeResult(InspectionId) -> (Result)       acknowledged | unknown (as cmd/result_ack)
      Cameras/<camera>             one object per camera
        Ready (Boolean), Recipe, Model (String)
        LastResult/ PartId, Verdict, InspectionId (Int64), IsDefective (Boolean), Score, Threshold (Double),
                    CaptureTime, DecisionTime (DateTime), Model, Recipe (String)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edged.health import Heartbeats, SupervisedThread
from edged.opcua.config import OpcUaConfig

log = logging.getLogger(__name__)

SNAPSHOT_S = 0.5
RECIPE_WAIT_S = 120.0  # SelectRecipe waits this long for the load and verification (a TensorRT build is slow)
INSTALL_HINT = "OPC UA needs asyncua: pip install 'edged[opcua]' (or set opcua.enabled: false)"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the namespace shows besides results: read from the service every SNAPSHOT_S."""

    state: str  # Preoperational | Operational | Halted | Error
    counters: Mapping[str, int]  # Inspected, Rejects, NotInspected, Drops
    cameras: Mapping[str, tuple[bool, str, str]]  # camera -> (ready, recipe, model)


class Hooks:
    """The service's side, as callables (so this module never imports the service)."""

    def __init__(self, trigger: Callable[[str, str], tuple[str, str]],
                 select_recipe: Callable[[str, str], tuple[str, str, str]], snapshot: Callable[[], Snapshot],
                 acknowledge: Callable[[int], bool]) -> None:
        self.trigger = trigger  # (camera, part id) -> (accepted | refused, reason)
        self.select_recipe = select_recipe  # (camera or '', recipe) -> (switched | refused, reason, model)
        self.snapshot = snapshot
        self.acknowledge = acknowledge  # inspection id -> whether it was awaited (edged.handshake.ResultAcks)


def asyncua_available() -> bool:
    """Whether the opcua extra is installed."""
    try:
        import asyncua  # noqa: F401
    except ImportError:
        return False
    return True


class _Users:
    """asyncua's user manager: the one configured user (constant-time compare), and anonymous where allowed."""

    def __init__(self, cfg: OpcUaConfig, password: str | None) -> None:
        self.cfg = cfg
        self.password = password
        self.refused = 0

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        if username is None and certificate is None:
            if self.cfg.anonymous:
                return User(role=UserRole.User)
            self.refused += 1
            return None
        if (self.cfg.username is not None and self.password is not None and username is not None
                and hmac.compare_digest(username.encode(), self.cfg.username.encode())
                and hmac.compare_digest((password or "").encode(), self.password.encode())):
            return User(role=UserRole.User, name=username)
        self.refused += 1
        log.warning("OPC UA: a login was refused (wrong user name or password)")
        return None


class OpcUaServer(SupervisedThread):
    """The server thread (see the module docstring). `listening` is set once the endpoint is open."""

    def __init__(self, cfg: OpcUaConfig, station: str, cameras: list[str], hooks: Hooks, heartbeats: Heartbeats,
                 password: str | None) -> None:
        super().__init__("opcua", heartbeats)
        self.heartbeats: Heartbeats = heartbeats
        self.what = "OPC UA server"
        self.cfg = cfg
        self.station = station
        self.camera_names = cameras
        self.hooks = hooks
        self.users = _Users(cfg, password)
        self.stop_event = threading.Event()
        self.listening = threading.Event()
        self.failed = ""  # why the endpoint could not open ('' while fine)
        self.endpoint = cfg.endpoint
        self._results: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)
        self._nodes: dict[str, Any] = {}

    # --- from other threads ------------------------------------------------------------------------
    def result(self, payload: Mapping[str, Any]) -> None:
        """A committed result of a triggered part (recorder thread): queued, dropped when the server lags far."""
        with contextlib.suppress(queue.Full):  # the namespace shows the newest per camera: a lagging server skips
            self._results.put_nowait(dict(payload))

    def stop(self) -> None:
        """Close the endpoint and end the thread (bounded)."""
        self.stop_event.set()
        self.join(timeout=5.0)

    # --- the thread ----------------------------------------------------------------------------------
    def work(self) -> None:
        """Run the server's asyncio loop until stopped (supervised: `SupervisedThread`)."""
        asyncio.run(self._main())

    async def _main(self) -> None:
        from asyncua import Server

        # _Users has UserManager's one method; it cannot subclass it: this module must import without asyncua
        server = Server(user_manager=self.users)  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"edged {self.station}")
        try:
            await self._security(server)
        except Exception as exc:  # an unreadable or invalid certificate or key: loud, and the line inspects on
            self.failed = f"cannot load opcua.certificate / opcua.private_key: {type(exc).__name__}: {exc}"
            log.error("OPC UA server not started: %s", self.failed)
            self.listening.set()
            return
        idx = await server.register_namespace(f"urn:edged:{self.station}")
        await self._namespace(server, idx)
        try:
            await server.start()
        except OSError as exc:  # a port in use: the line inspects on without OPC UA
            self.failed = f"cannot listen on {self.cfg.bind} port {self.cfg.port}: {exc.strerror or exc}"
            log.error("OPC UA server not started: %s; the line runs on without it", self.failed)
            self.listening.set()
            return
        log.info("OPC UA server on %s (%s)", self.endpoint, ", ".join(self.cfg.security))
        self.listening.set()
        try:
            while not self.stop_event.is_set():
                self.heartbeats.beat(self.name)
                await self._refresh()
                await asyncio.sleep(SNAPSHOT_S / 5)
        finally:
            self.heartbeats.forget(self.name)
            await server.stop()

    async def _security(self, server: Any) -> None:
        from asyncua import ua

        policies = {"none": ua.SecurityPolicyType.NoSecurity,
                    "sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
                    "sign_and_encrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}
        server.set_security_policy([policies[m] for m in self.cfg.security])
        ids = (["Anonymous"] if self.cfg.anonymous else []) + (["Username"] if self.cfg.username else [])
        server.set_security_IDs(ids)
        if self.cfg.certificate is not None and self.cfg.private_key is not None:
            await server.load_certificate(str(self.cfg.certificate))
            await server.load_private_key(str(self.cfg.private_key))

    async def _namespace(self, server: Any, idx: int) -> None:
        from asyncua import ua

        root = await server.nodes.objects.add_object(idx, self.station)
        n = self._nodes
        n["SystemState"] = await root.add_variable(idx, "SystemState", "Preoperational")
        for name in ("Inspected", "Rejects", "NotInspected", "Drops"):
            n[name] = await root.add_variable(idx, name, 0, ua.VariantType.UInt64)
        cameras = await root.add_folder(idx, "Cameras")
        for cam in self.camera_names:
            obj = await cameras.add_object(idx, cam)
            n[f"{cam}/Ready"] = await obj.add_variable(idx, "Ready", False)
            n[f"{cam}/Recipe"] = await obj.add_variable(idx, "Recipe", "")
            n[f"{cam}/Model"] = await obj.add_variable(idx, "Model", "")
            last = await obj.add_object(idx, "LastResult")
            for key, value, vtype in _LAST_RESULT:
                n[f"{cam}/LastResult/{key}"] = await last.add_variable(idx, key, value, vtype)
        str_t = ua.VariantType.String
        await root.add_method(idx, "Trigger", self._trigger, [str_t, str_t], [str_t, str_t])
        await root.add_method(idx, "SelectRecipe", self._select_recipe, [str_t, str_t], [str_t, str_t, str_t])
        await root.add_method(idx, "AcknowledgeResult", self._acknowledge, [ua.VariantType.Int64], [str_t])

    async def _refresh(self) -> None:
        """Results first (each the newest of its camera in turn), then the snapshot every SNAPSHOT_S."""
        while True:
            try:
                payload = self._results.get_nowait()
            except queue.Empty:
                break
            await self._write_result(payload)
        now = asyncio.get_running_loop().time()
        if now - getattr(self, "_last_snapshot", 0.0) < SNAPSHOT_S:
            return
        self._last_snapshot = now
        snap = self.hooks.snapshot()
        await self._set("SystemState", snap.state)
        for name, value in snap.counters.items():
            await self._set(name, value, "UInt64")
        for cam, (ready, recipe, model) in snap.cameras.items():
            await self._set(f"{cam}/Ready", ready)
            await self._set(f"{cam}/Recipe", recipe)
            await self._set(f"{cam}/Model", model)

    async def _write_result(self, r: Mapping[str, Any]) -> None:
        cam = str(r.get("camera"))
        if f"{cam}/LastResult/PartId" not in self._nodes:
            return
        values = {"PartId": str(r.get("part_id") or ""), "Verdict": str(r.get("reason") or ""),
                  "InspectionId": int(r.get("inspection_id") or 0), "IsDefective": bool(r.get("is_defective")),
                  "Score": float(r.get("score") or 0.0), "Threshold": float(r.get("threshold") or 0.0),
                  "CaptureTime": _time(r.get("captured_at")), "DecisionTime": _time(r.get("decided_at")),
                  "Model": str(r.get("model") or ""), "Recipe": str(r.get("recipe") or "")}
        for key, value in values.items():  # InspectionId last: a client subscribed to it reads a whole result
            if key != "InspectionId":
                await self._set(f"{cam}/LastResult/{key}", value, _VTYPES.get(key))
        await self._set(f"{cam}/LastResult/InspectionId", values["InspectionId"], "Int64")

    async def _set(self, key: str, value: Any, vtype: str | None = None) -> None:
        from asyncua import ua

        node = self._nodes[key]
        if vtype is None:
            await node.write_value(value)
        else:
            await node.write_value(ua.Variant(value, getattr(ua.VariantType, vtype)))

    # --- methods (in the loop; the work is done in executor threads) ---------------------------------
    async def _trigger(self, parent: Any, camera: Any, part_id: Any) -> list[Any]:
        from asyncua import ua

        result, reason = await asyncio.get_running_loop().run_in_executor(
            None, self.hooks.trigger, str(camera.Value or ""), str(part_id.Value or ""))
        return [ua.Variant(result, ua.VariantType.String), ua.Variant(reason, ua.VariantType.String)]

    async def _select_recipe(self, parent: Any, camera: Any, recipe: Any) -> list[Any]:
        from asyncua import ua

        result, reason, model = await asyncio.get_running_loop().run_in_executor(
            None, self.hooks.select_recipe, str(camera.Value or ""), str(recipe.Value or ""))
        return [ua.Variant(v, ua.VariantType.String) for v in (result, reason, model)]


    async def _acknowledge(self, parent: Any, inspection_id: Any) -> list[Any]:
        """AcknowledgeResult(InspectionId) -> acknowledged | unknown, as `<base>/cmd/result_ack` (in the loop)."""
        from asyncua import ua

        value = inspection_id.Value
        known = isinstance(value, int) and value > 0 and self.hooks.acknowledge(value)
        return [ua.Variant("acknowledged" if known else "unknown", ua.VariantType.String)]


def _time(value: object) -> datetime.datetime:
    seconds = float(value) if isinstance(value, int | float) else 0.0
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


_EPOCH = datetime.datetime.fromtimestamp(0, tz=datetime.timezone.utc)
_VTYPES = {"InspectionId": "Int64", "Score": "Double", "Threshold": "Double", "CaptureTime": "DateTime",
           "DecisionTime": "DateTime", "IsDefective": "Boolean"}


def _last_result_fields() -> list[tuple[str, Any, Any]]:
    from asyncua import ua

    v = ua.VariantType
    return [("PartId", "", v.String), ("Verdict", "", v.String), ("IsDefective", False, v.Boolean),
            ("Score", 0.0, v.Double), ("Threshold", 0.0, v.Double), ("CaptureTime", _EPOCH, v.DateTime),
            ("DecisionTime", _EPOCH, v.DateTime), ("Model", "", v.String), ("Recipe", "", v.String),
            ("InspectionId", 0, v.Int64)]


class _LastResultFields:
    """The LastResult variables, built on first use (asyncua is imported lazily)."""

    def __iter__(self) -> Any:
        return iter(_last_result_fields())


_LAST_RESULT = _LastResultFields()
