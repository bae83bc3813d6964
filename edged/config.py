"""The daemon's one YAML config, validated once at start into typed, frozen objects.

Every error names the key path (``cameras[0].queue_size``) and what was expected; unknown keys are
refused with a suggestion when they look like a known key. `load_config` raises `ConfigError`, whose
message is what the technician sees; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, Tag, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from edged.credentials import credential, read_secret
from edged.input_health import InputHealthConfig
from edged.opcua.config import OpcUaConfig
from edged.recipes import DEFAULT_RECIPE, RecipeConfig
from edged.safetext import escape, redact_url
from edged.section import NAME_RE, Section
from edged.sources import (  # the camera sections live with the sources (edged/sources/, one module per kind)
    KINDS,
    AnyCamera,
    CameraConfig,  # noqa: F401 (re-exported: the common base of every camera kind, for worker, recorder, capture)
    paths_relative_to,
)
from edged.topic_names import check_prefix


class ConfigError(Exception):
    """A config the daemon refuses to run with; str() is a message for a person, naming the key."""


class ModelConfig(Section):
    """The bundle the workers run, and how: precision, runtime, execution providers, threads."""

    bundle: Path = Field(description="Folder written by `edged-train fit` (manifest.json and the ONNX files).",
                         examples=["/var/lib/edged/models/current"], json_schema_extra={"common": True})
    precision: Literal["int8", "fp32"] | None = Field(
        None, description="Which of the bundle's models to run; null: the bundle's default (int8 unless int8 lost "
                          "accuracy at fit).")
    runtime: Literal["auto", "onnxruntime", "openvino", "opencv"] = Field(
        "auto", description="Inference library: auto (the fastest runtime and precision the bundle was verified "
                            "under by `edged-train verify`, timed at start; ONNX Runtime for bundles never "
                            "verified), onnxruntime, openvino (pip extra edged[openvino]) or opencv (cv2.dnn, "
                            "fp32 only). A runtime that failed the bundle's parity check is refused.",
        json_schema_extra={"common": True})
    providers: tuple[Literal["tensorrt", "cuda", "openvino", "cpu"], ...] = Field(
        ("cpu",), description="ONNX Runtime execution providers in priority order; the first one available wins.",
        json_schema_extra={"common": True})
    intra_op_threads: int = Field(
        1, ge=0, le=64, description="Threads per inference (0: ONNX Runtime's default); on small CPUs more workers "
                                    "beat more threads.")
    workers: int = Field(
        2, ge=1, le=16, description="Inference threads sharing one model: two 1-thread inferences side by side beat "
                                    "one 2-thread inference on a 2-core PC (docs/performance.md); 1 on a single core.",
        json_schema_extra={"common": True})
    batch_size: int = Field(1, ge=1, le=64, description="Queued frames taken into one inference call at most.")
    map_threshold: float | None = Field(
        None, description="Per-pixel anomaly threshold for defect regions; null: the bundle's calibrated one.")
    min_region_area: int = Field(16, ge=1, description="Defect regions smaller than this (frame pixels) are ignored.")
    verify_sha256: bool = Field(True, description="Refuse a bundle whose ONNX file does not match its manifest's "
                                                  "checksum (a half-copied or edited model).")

    @field_validator("providers")
    @classmethod
    def _providers_nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one execution provider, e.g. [cpu]")
        return v


class RetentionConfig(Section):
    """How long inspection rows stay in the local database."""

    max_age_days: float = Field(90.0, gt=0, description="Inspection rows older than this are deleted (hourly).")
    max_rows: int = Field(5_000_000, ge=1000, description="And never more rows than this; the oldest go first.")


class ImagesConfig(Section):
    """Which frames are kept on disk as image files, and how much disk they may take."""

    save: Literal["none", "rejects", "all"] = Field(
        "rejects", description="Which frames are written as image files.", json_schema_extra={"common": True})
    dir: Path = Field(Path("images"), description="Image folder; a relative path is under storage.state_dir.")
    quota_mb: float = Field(1024.0, gt=0, description="Above this many MB the oldest images are deleted.",
                            json_schema_extra={"common": True})
    overlay: bool = Field(True, description="Also save the anomaly map beside the frame (`<name>_map.png`, grey, at "
                          "the model's resolution); the web view draws it over the frame on demand.")
    format: Literal["jpg", "png"] = Field("jpg", description="Image file format (png: lossless, several times larger).")


class StorageConfig(Section):
    """Where the daemon keeps its state: the SQLite database, the health file and the images."""

    state_dir: Path = Field(
        Path(os.environ.get("STATE_DIRECTORY", "/var/lib/edged").split(":")[0]),
        description="Folder of the database, health file and images (systemd's StateDirectory; its default is "
                    "$STATE_DIRECTORY or /var/lib/edged).", json_schema_extra={"doc_default": "/var/lib/edged"})
    database: Path = Field(
        Path("edged.db"), description="SQLite file (WAL mode), relative to state_dir. A folder or a file that is "
                                      "not SQLite is refused (exit 2), never moved aside; only a file SQLite calls "
                                      "corrupt is moved aside (edged.db.corrupt-<time>) and a fresh one created.")
    retention: RetentionConfig = Field(RetentionConfig(), description="How long inspection rows are kept.")
    images: ImagesConfig = Field(ImagesConfig(), description="Frames kept as image files.")
    commit_interval_ms: float = Field(
        50.0, ge=0, le=5000, description="Good verdicts are committed in groups at most this far apart (a reject "
                                         "is committed at once).")

    def resolve(self, path: Path) -> Path:
        """A storage path as configured: a relative one is inside `state_dir`."""
        return path if path.is_absolute() else self.state_dir / path


class TlsConfig(Section):
    """TLS to the broker: server verification by a CA, and an optional client certificate."""

    enabled: bool = Field(False, description="Connect with TLS (usually port 8883).")
    ca_file: Path | None = Field(None, description="CA certificate(s) to verify the broker with; null: the "
                                                   "system's CAs.")
    cert_file: Path | None = Field(None, description="Client certificate, for brokers that authenticate clients "
                                                     "by certificate.")
    key_file: Path | None = Field(None, description="The client certificate's private key.")
    insecure: bool = Field(False, description="Skip the broker's host name check (test benches only, never on a "
                                              "line).")


class OutboxConfig(Section):
    """The durable outbox: messages kept in SQLite until the broker acknowledges them."""

    max_rows: int = Field(100_000, ge=100, description="Undelivered messages kept across outages and restarts; "
                                                       "above it the oldest are dropped (counted).")
    max_results: int = Field(10_000, ge=100, description="Of which triggered parts' results at most (rejects are "
                                                         "always sent first).")
    rate_per_s: float = Field(200.0, gt=0, description="Resend rate after an outage, messages per second.")
    audit_expired: bool = Field(True, description="Rejects that expired undelivered go to <prefix>/<station>/audit "
                                                  "so the MES learns of them.")


class MqttConfig(Section):
    """The broker the rejects go to (and the triggers come from)."""

    enabled: bool = Field(True, description="Publish rejects, states and stats over MQTT; false: SQLite only.")
    host: str = Field("localhost", description="Broker host name or address.", json_schema_extra={"common": True})
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual for TLS).",
                      json_schema_extra={"common": True})
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT version: 5 (rejects carry a message expiry) or "
                                                             "3.1.1.")
    client_id: str | None = Field(None, description="MQTT client id; null: edged-<station>. Two clients with one id "
                                                    "take the session from each other.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive: a silent broker is noticed within 1.5 "
                                                            "times this.")
    prefix: str = Field("edged", description="First level(s) of every topic: <prefix>/<station>/reject, /status, "
                                             "/result, /stats, /trigger, ...; several levels name the place, e.g. "
                                             "acme/plant1/press-shop/line3 (no + # $ or empty levels).")
    username: str | None = Field(None, description="User name at the broker; null: anonymous.",
                                 json_schema_extra={"common": True})
    password: str | None = Field(None, description="Password in this file (better: password_file, or systemd "
                                                   "LoadCredential=mqtt-password); never logged or shown.")
    password_file: Path | None = Field(
        None, description="File holding the password; without it and with a username, "
                          "$CREDENTIALS_DIRECTORY/mqtt-password (systemd LoadCredential=) is read.",
        json_schema_extra={"common": True})
    tls: TlsConfig = Field(TlsConfig(), description="TLS to the broker.")
    reject_ttl_ms: float = Field(2000.0, gt=0, description="A reject not delivered this long after its part's "
                                                           "capture is never published to /reject (so never "
                                                           "actuated): it goes to /audit.",
                                 json_schema_extra={"common": True})
    publish_results: bool = Field(False, description="Also publish every verdict on <prefix>/<station>/result "
                                                     "(QoS 0).")
    stats_interval_s: float = Field(10.0, ge=1, description="Seconds between <prefix>/<station>/stats messages.")
    outbox: OutboxConfig = Field(OutboxConfig(), description="The durable outbox.")

    @field_validator("prefix")
    @classmethod
    def _topic_prefix(cls, v: str) -> str:
        return check_prefix(v)

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        return self

    def read_password(self) -> str | None:
        """Password from the config, mqtt.password_file, or the systemd credential `mqtt-password` (when a
        username is set); None: none configured. Read again at every connection, so a rotated file takes effect;
        an unreadable one raises ConfigError naming the key and path (edged run and check-config stop on it at
        start, the MQTT link logs it and retries later)."""
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            return read_secret(self.password_file, "mqtt.password_file", ConfigError)
        cred = credential("mqtt-password")
        if cred is not None and self.username and cred.exists():
            return read_secret(cred, "mqtt credential mqtt-password", ConfigError)
        return None


class HealthConfig(Section):
    """When the daemon calls itself unhealthy, and how often it says how it is."""

    heartbeat_timeout_s: float = Field(
        20.0, gt=0, description="A capture or inference thread silent this long stops the systemd watchdog; a "
                                "thread that dies stops it at once, and edged exits 1 this long after (restart).")
    status_interval_s: float = Field(5.0, gt=0, description="Seconds between systemd STATUS= lines and health-file "
                                                            "updates (what `edged status` reads).")


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class WebConfig(Section):
    """The line's web view (edged/web/): live frames, rejects, feedback, /metrics and the JSON API."""

    enabled: bool = Field(True, description="Serve the web view from the daemon (its own threads; the pipeline never "
                                            "waits on it).", json_schema_extra={"common": True})
    bind: str = Field("127.0.0.1", min_length=1, description="Address to listen on; anything but loopback needs a "
                                                             "password, or auth: none written explicitly.",
                      json_schema_extra={"common": True})
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port, for tests).",
                      json_schema_extra={"common": True})
    auth: Literal["password", "none"] | None = Field(
        None, description="password: a login page (sessions by cookie); none: open to anyone who can reach it; "
                          "null: password when one is configured, else none (loopback only).")
    password: str | None = Field(None, description="Login password in this file (better: password_file, or systemd "
                                                   "LoadCredential=web-password); never logged or shown.")
    password_file: Path | None = Field(
        None, description="File holding the login password; without it, $CREDENTIALS_DIRECTORY/web-password "
                          "(systemd LoadCredential=) is read when present.")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="A login lasts this long (one shift).")
    max_clients: int = Field(8, ge=1, le=64, description="Requests served at once; more are answered 503 at once, "
                                                         "so a crowd of browsers cannot pile up threads.")
    request_timeout_s: float = Field(10.0, gt=0, le=300, description="A connection not done this long after it "
                                                                     "was accepted is cut (a slow or hostile "
                                                                     "browser), however it trickles its bytes.")
    live_fps: float = Field(4.0, gt=0, le=30, description="The live frame is encoded at most this often per camera "
                                                          "(in the web thread, shared by every viewer).")
    feedback_dir: Path = Field(Path("feedback"), description="Folder of feedback images, relative to "
                                                             "storage.state_dir: false rejects' frames go to its "
                                                             "good/ (what `edged-train calibrate` reads).")

    @model_validator(mode="after")
    def _auth_outside_loopback(self) -> WebConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        if self.auth == "none" or self.bind in LOOPBACK_HOSTS:
            return self
        if self.password is None and self.password_file is None and not os.environ.get("CREDENTIALS_DIRECTORY"):
            raise ValueError(f"bind {self.bind} is not loopback: set password_file (or LoadCredential=web-password), "
                             "or write auth: none to serve the view to anyone who can reach it")
        return self

    def read_password(self) -> str | None:
        """The login password from the config, a file, or the systemd credential `web-password`; None: no login.
        Raises ConfigError where a login is needed (auth: password, or a bind outside loopback) and no password is
        found, or only an empty one: such a view must not open to everyone."""
        found = self._find_password()
        needed = self.auth == "password" or (self.auth is None and self.bind not in LOOPBACK_HOSTS)
        if found is None and needed:
            raise ConfigError(f"web: a login is needed (auth {self.auth or 'password'}, bind {self.bind}) but no "
                              "password was found: web.password_file and $CREDENTIALS_DIRECTORY/web-password are "
                              "missing or empty")
        return found

    def _find_password(self) -> str | None:
        if self.auth == "none":
            return None
        if self.password is not None:
            return self.password or None
        if self.password_file is not None:
            return read_secret(self.password_file, "web.password_file", ConfigError) or None
        cred = credential("web-password")
        if cred is not None and cred.exists():
            return read_secret(cred, "web credential web-password", ConfigError) or None
        return None

    def open_to_all(self) -> bool:
        """True when the view may run without a login: auth none, or loopback without a password."""
        return self.auth == "none" or self.bind in LOOPBACK_HOSTS


class LoggingConfig(Section):
    """What goes to the journal."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")


class Config(Section):
    """The whole file: this station, its model, its cameras, and where verdicts go."""

    station: str = Field("station1", pattern=NAME_RE, json_schema_extra={"common": True}, description=(
        "This inspection station's name (letters, digits, _ . -); part of every MQTT topic and message."))
    model: ModelConfig = Field(description="The model bundle and how it runs.")
    cameras: tuple[AnyCamera, ...] = Field(min_length=1, examples=[[{"name": "cam1", "source": "0"}]], description=(
        "The cameras, one capture thread each; a camera's own keys depend on its kind (device, stream, file, "
        "folder, gst), given by `kind` or following from `source`."))
    storage: StorageConfig = Field(StorageConfig(), description="The local record: database, images, retention.")
    mqtt: MqttConfig = Field(MqttConfig(), description="The broker: rejects out (durable), triggers in.")
    health: HealthConfig = Field(HealthConfig(), description="Watchdog and status reporting.")
    logging: LoggingConfig = Field(LoggingConfig(), description="The journal's level.")
    input_health: InputHealthConfig = Field(
        InputHealthConfig(), description="Per-frame checks against the bundle's training images (too dark or "
                                         "bright, out of focus, blocked, frozen) and the reject-rate alarm.")
    web: WebConfig = Field(WebConfig(), description="The line's web view: live frames, rejects, feedback, /metrics.")
    opcua: OpcUaConfig = Field(OpcUaConfig(), description="The OPC UA server for the line's PLC (off by default).")
    recipes: dict[str, RecipeConfig] = Field({}, description=(
        "Products and their models, by name (letters, digits, _ . -): a camera starts on its `recipe` (else the "
        "first one here) and `<base>/cmd/recipe` switches it; `default` is `model.bundle` unless named here."))

    @model_validator(mode="after")
    def _known_recipes(self) -> Config:
        """Recipe names are safe in topics and rows; each camera's starting recipe exists."""
        bad = [n for n in self.recipes if not re.fullmatch(NAME_RE, n)]
        if bad:
            raise ValueError(f"recipes: name {escape(bad[0], 60)} must be letters, digits, _ . - (at most 64)")
        known = {DEFAULT_RECIPE, *self.recipes}
        for i, cam in enumerate(self.cameras):
            if cam.recipe is not None and cam.recipe not in known:
                raise ValueError(f"cameras[{i}].recipe: {escape(cam.recipe, 60)} is not a recipe "
                                 f"(known: {', '.join(sorted(known))})")
        return self

    @model_validator(mode="after")
    def _unique_camera_names(self) -> Config:
        names = [c.name for c in self.cameras]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"camera names must be unique; repeated: {', '.join(dupes)}")
        triggered = [c.name for c in self.cameras if c.trigger.mode == "mqtt"]
        if triggered and not self.mqtt.enabled:
            raise ValueError(f"camera(s) {', '.join(triggered)} use trigger mode mqtt, which needs mqtt.enabled: true")
        return self


# --- loading and error messages -------------------------------------------------------------------

def _walk(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type[BaseModel] | None, str | None]:
    """Follow an error's key path through the schema: (the path as written in the YAML, without the union
    tags pydantic inserts (`cameras.0.folder.watch` is `cameras[0].watch`), the section the path ends in
    (None past a plain value), the camera kind on the way (None outside cameras))."""
    shown: list[Any] = []
    current: type[BaseModel] | None = Config
    tags: dict[str, type[BaseModel]] = {}
    kind = None
    named = False  # the part is a name in a table of sections (recipes.<name>), not a key
    for part in loc:
        if tags and isinstance(part, str) and part in tags:  # the discriminated union's tag: not a key
            current, kind, tags = tags[part], part, {}
            continue
        shown.append(part)
        if isinstance(part, int) or current is None or named:
            named = False
            continue
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            current = None
            continue
        tags = _tagged(field.annotation)
        current = None if tags else _section_type(field.annotation)
        named = typing.get_origin(field.annotation) is dict
    return tuple(shown), current, kind


def _tagged(annotation: Any) -> dict[str, type[BaseModel]]:
    """The members of a discriminated union found in `annotation` (`Annotated[Model, Tag(t)]`), by tag."""
    out: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Annotated:
            inner, *meta = typing.get_args(arg)
            tags = [m.tag for m in meta if isinstance(m, Tag)]
            if tags and isinstance(inner, type) and issubclass(inner, BaseModel):
                out[tags[0]] = inner
                continue
        out.update(_tagged(arg))
    return out


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at `loc`, a pydantic error path from the top (to suggest a key for a typo)."""
    section = _walk(loc)[1]
    return list(section.model_fields) if section is not None else []


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format_error(err: ErrorDetails, data: Any = None) -> str:
    """One line per error, naming the key as written in the YAML; `data` (the document) lets a camera's
    message name its source."""
    loc = tuple(err["loc"])
    shown, _, kind = _walk(loc)
    key = _format_loc(shown)
    if err["type"] == "camera_kind":
        got = err.get("input")
        if isinstance(got, dict):
            return f"{key}.kind: must be one of {', '.join(KINDS)} (got {escape(got.get('kind'), 40)})"
        return f"{key}: must be a camera: a mapping of keys such as name and source"
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        name = str(loc[-1])
        elsewhere = [k for k, entry in KINDS.items() if name in entry.config.model_fields]
        if kind is not None and len(shown) == 3 and elsewhere:  # a key of another kind of camera
            return (f"{key}: unknown key for a {kind} camera{_camera_source(data, shown[1])}; it applies to "
                    f"{_and(elsewhere)} cameras")
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (known keys: {', '.join(known)})" if known
                                                                else "")
        return f"{key}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
    got = err.get("input")
    shown_value = "" if isinstance(got, dict | list) or got is None else f" (got {redact_url(repr(got))})"
    if loc and "password" in str(loc[-1]):  # the message goes to the journal: never echo a secret
        shown_value = ""
    return f"{key}: {msg}{shown_value}"


def _items_failed(err: ErrorDetails) -> bool:
    """A list "too short" only because its items failed (each reported on its own): not worth a line."""
    got, ctx = err.get("input"), err.get("ctx") or {}
    return err["type"] == "too_short" and isinstance(got, list | tuple) and ctx.get("actual_length", 0) < len(got)


def _camera_source(data: Any, index: Any) -> str:
    """' (source ...)' for camera `index` of the document, as it was written (credentials masked)."""
    cameras = data.get("cameras") if isinstance(data, dict) else None
    if isinstance(cameras, list) and isinstance(index, int) and 0 <= index < len(cameras):
        cam = cameras[index]
        source = cam.get("source") if isinstance(cam, dict) else None
        if isinstance(source, str):
            return f" (source {escape(redact_url(source.strip()), 80)})"
    return ""


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def parse_config(data: Any, origin: str = "config", base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; raises ConfigError listing every problem by key path.

    `base_dir` is the config file's folder: a camera's relative source path is classified (folder or
    file) from there, where it will be opened.
    """
    if data is None:
        raise ConfigError(f"{origin}: the file is empty; see config/edged.yaml for a documented example")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys at the top level, got {type(data).__name__}")
    nul = _nul_path(data)
    if nul is not None:  # would pass validation, then crash the first os call that gets it as a path
        raise ConfigError(f"{origin}: invalid config:\n  {_format_loc(nul)}: contains a NUL character")
    try:
        with paths_relative_to(base_dir):
            return Config.model_validate(data)
    except ValidationError as exc:
        lines = [_format_error(e, data) for e in exc.errors() if not _items_failed(e)]
        raise ConfigError(f"{origin}: invalid config:\n  " + "\n  ".join(lines)) from None


def _nul_path(data: Any, loc: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The key path of the first string (key or value) with a NUL character in it, if any."""
    if isinstance(data, str):
        return loc if "\x00" in data else None
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        if isinstance(k, str) and "\x00" in k:
            return (*loc, k)
        found = _nul_path(v, (*loc, k))
        if found is not None:
            return found
    return None


def load_config(path: str | Path, base_dir: Path | None = None) -> Config:
    """Read and validate a YAML config file. Relative paths in it are taken from the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    base = base_dir or path.resolve().parent
    return _resolve_relative(parse_config(data, origin=str(path), base_dir=base), base)


def _resolve_relative(config: Config, base: Path) -> Config:
    """Make file paths relative to the config file's folder, so `edged run -c x.yaml` works anywhere."""
    model = config.model
    if not model.bundle.is_absolute():
        model = model.model_copy(update={"bundle": base / model.bundle})
    storage = config.storage
    if not storage.state_dir.is_absolute():
        storage = storage.model_copy(update={"state_dir": base / storage.state_dir})
    cameras = tuple(c.with_paths_from(base) for c in config.cameras)  # each kind knows which of its keys are paths
    recipes = {name: r if r.bundle.is_absolute() else r.model_copy(update={"bundle": base / r.bundle})
               for name, r in config.recipes.items()}
    opcua = config.opcua.model_copy(update={  # password, certificate and key files beside the config
        k: base / v for k in ("password_file", "certificate", "private_key")
        if isinstance(v := getattr(config.opcua, k), Path) and not v.is_absolute()})
    return config.model_copy(update={"model": model, "storage": storage, "cameras": cameras, "recipes": recipes,
                                     "opcua": opcua})
