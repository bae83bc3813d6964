"""The daemon's one YAML config, validated once at start into typed, frozen objects.

Every error names the key path (``cameras[0].queue_size``) and what was expected; unknown keys are
refused with a suggestion when they look like a known key. `load_config` raises `ConfigError`, whose
message is what the technician sees; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edged.safetext import redact_url

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe in MQTT topics, file names and SQL values


class ConfigError(Exception):
    """A config the daemon refuses to run with; str() is a message for a person, naming the key."""


class _Section(BaseModel):
    # allow_inf_nan=False: every float key of every section refuses .inf and .nan ("Input should be a
    # finite number", naming the key): a TTL of .inf never expires, a NaN threshold rejects nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class ReconnectConfig(_Section):
    """How a lost camera is reopened: exponential backoff with jitter."""

    initial_s: float = Field(1.0, gt=0, le=60)
    max_s: float = Field(30.0, gt=0, le=3600)
    jitter: float = Field(0.2, ge=0, le=1)  # +- this fraction of the delay
    give_up_after: int = Field(0, ge=0)  # 0: never give up (state 'reconnecting' forever)


class TriggerConfig(_Section):
    """What makes a part: every frame (`free_run`) or a trigger message from the line (`mqtt`)."""

    mode: Literal["free_run", "mqtt"] = "free_run"
    gap_ms: float = Field(500.0, ge=0)  # free_run: defective frames closer than this are one part
    # free_run: a part still open this long after its first defective frame, or with this many defective
    # frames, is closed and rejected anyway (defects closer than gap_ms without end would never give one)
    max_part_ms: float = Field(5000.0, gt=0, le=3_600_000)
    max_part_frames: int = Field(300, ge=1, le=100_000)
    delay_ms: float = Field(0.0, ge=0)  # mqtt: inspect the first frame captured this long after the trigger
    timeout_ms: float = Field(1000.0, gt=0)  # mqtt: no verdict by then -> not_inspected
    fail_safe: Literal["pass", "reject"] = "pass"  # what a not_inspected part gets on the reject topic


class CameraConfig(_Section):
    name: str = Field(pattern=NAME_RE)
    source: str  # "0" (V4L2 index), rtsp://..., http(s)://..., a video file, an image folder, "gst:<pipeline>"
    watch: bool = False  # folder sources: keep watching for new files
    loop: bool = False  # video files and folders: start again at the end (demos, soak tests)
    realtime: bool = False  # video files and folders: pace frames at `fps` like a live camera (drops possible)
    fps: float | None = Field(None, gt=0, le=1000)  # pacing for realtime replay; for devices, requested fps
    width: int | None = Field(None, gt=0)  # requested capture size for devices
    height: int | None = Field(None, gt=0)
    queue_size: int = Field(4, ge=1, le=1024)
    threshold: float | None = None  # overrides the bundle's calibrated threshold for this camera
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h crop in frame pixels before inspection
    open_timeout_s: float = Field(10.0, gt=0, le=300)
    read_timeout_s: float = Field(5.0, gt=0, le=300)
    stall_timeout_s: float = Field(10.0, gt=0, le=3600)  # no frame for this long -> reopen
    # folders: an image file larger than this (width x height from its header, checked before decoding)
    # is skipped and counted as a bad frame: a 20000x20000 PNG would take GBs of memory to decode
    max_image_megapixels: float = Field(50.0, gt=0, le=1000)
    reconnect: ReconnectConfig = ReconnectConfig()
    trigger: TriggerConfig = TriggerConfig()

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v.strip()

    @field_validator("roi")
    @classmethod
    def _roi_positive(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError("must be [x, y, width, height] with x, y >= 0 and width, height > 0")
        return v


class ModelConfig(_Section):
    bundle: Path
    precision: Literal["int8", "fp32"] | None = None  # None: the bundle's default
    runtime: Literal["onnxruntime", "opencv"] = "onnxruntime"
    providers: tuple[Literal["tensorrt", "cuda", "openvino", "cpu"], ...] = ("cpu",)
    intra_op_threads: int = Field(1, ge=0, le=64)  # 0: ONNX Runtime's default
    workers: int = Field(2, ge=1, le=16)  # threads sharing one session: 2 x 1 thread beats 1 x 2 on 2 cores
    batch_size: int = Field(1, ge=1, le=64)  # frames taken from the queue per inference at most
    map_threshold: float | None = None  # overrides the bundle's pixel threshold for regions
    min_region_area: int = Field(16, ge=1)  # smaller connected areas (frame pixels) are ignored
    verify_sha256: bool = True

    @field_validator("providers")
    @classmethod
    def _providers_nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one execution provider, e.g. [cpu]")
        return v


class RetentionConfig(_Section):
    max_age_days: float = Field(90.0, gt=0)
    max_rows: int = Field(5_000_000, ge=1000)


class ImagesConfig(_Section):
    save: Literal["none", "rejects", "all"] = "rejects"
    dir: Path = Path("images")  # relative paths are under storage.state_dir
    quota_mb: float = Field(1024.0, gt=0)
    overlay: bool = True  # also save the anomaly map over the frame
    format: Literal["jpg", "png"] = "jpg"


class StorageConfig(_Section):
    state_dir: Path = Path(os.environ.get("STATE_DIRECTORY", "/var/lib/edged").split(":")[0])
    database: Path = Path("edged.db")  # relative paths are under state_dir
    retention: RetentionConfig = RetentionConfig()
    images: ImagesConfig = ImagesConfig()
    commit_interval_ms: float = Field(50.0, ge=0, le=5000)  # group commit: verdicts per transaction

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else self.state_dir / path


class TlsConfig(_Section):
    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip host name verification (test benches only)


class OutboxConfig(_Section):
    max_rows: int = Field(100_000, ge=100)
    max_results: int = Field(10_000, ge=100)  # triggered parts' results kept pending (rejects go first)
    rate_per_s: float = Field(200.0, gt=0)  # resend rate after an outage
    audit_expired: bool = True  # publish expired rejects to <prefix>/<station>/audit


class MqttConfig(_Section):
    enabled: bool = True
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None  # default: edged-<station>
    keepalive_s: int = Field(30, ge=5, le=3600)
    prefix: str = Field("edged", pattern=r"^[^#+\s]+$")
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None  # or $CREDENTIALS_DIRECTORY/mqtt-password (systemd LoadCredential=)
    tls: TlsConfig = TlsConfig()
    reject_ttl_ms: float = Field(2000.0, gt=0)  # a reject older than this is never published to /reject
    publish_results: bool = False  # every verdict on <prefix>/<station>/result (QoS 0)
    stats_interval_s: float = Field(10.0, ge=1)
    outbox: OutboxConfig = OutboxConfig()

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set either password or password_file, not both")
        return self

    def read_password(self) -> str | None:
        """Password from the config, a file, or the systemd credential `mqtt-password`."""
        if self.password is not None:
            return self.password
        candidates = [self.password_file] if self.password_file else []
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and self.username:
            candidates.append(Path(cred_dir) / "mqtt-password")
        for path in candidates:
            if path is not None and path.is_file():
                return path.read_text(encoding="utf-8").strip()
        if self.password_file is not None:
            raise ConfigError(f"mqtt.password_file: {self.password_file} does not exist")
        return None


class HealthConfig(_Section):
    heartbeat_timeout_s: float = Field(20.0, gt=0)  # a thread silent this long is unhealthy
    status_interval_s: float = Field(5.0, gt=0)  # sd_notify STATUS= and the health file


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(_Section):
    station: str = Field("station1", pattern=NAME_RE)
    model: ModelConfig
    cameras: tuple[CameraConfig, ...] = Field(min_length=1)
    storage: StorageConfig = StorageConfig()
    mqtt: MqttConfig = MqttConfig()
    health: HealthConfig = HealthConfig()
    logging: LoggingConfig = LoggingConfig()

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

def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names valid at `loc` (used to suggest a key for a typo)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = _section_type(annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}).keys())


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


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key = _format_loc(loc)
    if err["type"] == "extra_forbidden":
        known = _known_keys(Config, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else (f" (known keys: {', '.join(known)})" if known
                                                                else "")
        return f"{key}: unknown key{hint}"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    msg = re.sub(r"^Value error, ", "", err["msg"])
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {redact_url(repr(got))})"
    if loc and "password" in str(loc[-1]):  # the message goes to the journal: never echo a secret
        shown = ""
    return f"{key}: {msg}{shown}"


def parse_config(data: Any, origin: str = "config") -> Config:
    """Validate a parsed YAML document; raises ConfigError listing every problem by key path."""
    if data is None:
        raise ConfigError(f"{origin}: the file is empty; see config/edged.yaml for a documented example")
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of keys at the top level, got {type(data).__name__}")
    nul = _nul_path(data)
    if nul is not None:  # would pass validation, then crash the first os call that gets it as a path
        raise ConfigError(f"{origin}: invalid config:\n  {_format_loc(nul)}: contains a NUL character")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
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
    config = parse_config(data, origin=str(path))
    return _resolve_relative(config, base_dir or path.resolve().parent)


def _resolve_relative(config: Config, base: Path) -> Config:
    """Make file paths relative to the config file's folder, so `edged run -c x.yaml` works anywhere."""
    model = config.model
    if not model.bundle.is_absolute():
        model = model.model_copy(update={"bundle": base / model.bundle})
    storage = config.storage
    if not storage.state_dir.is_absolute():
        storage = storage.model_copy(update={"state_dir": base / storage.state_dir})
    cameras = tuple(
        c.model_copy(update={"source": str(base / c.source)})
        if _is_relative_path_source(c.source, base) else c
        for c in config.cameras
    )
    return config.model_copy(update={"model": model, "storage": storage, "cameras": cameras})


def _is_relative_path_source(source: str, base: Path) -> bool:
    if source.isdigit() or "://" in source or source.startswith("gst:") or source.startswith("/"):
        return False
    return (base / source).exists()
