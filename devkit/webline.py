"""A running line with its web view, for the web tests: real mosquitto, a real ONNX bundle, a generated video
replayed at 30 fps in a loop, the daemon in-process with the view on a free loopback port behind a password.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.support import Broker, ServiceRunner, build_max_bundle, wait_until, write_config, write_spot_video
from edged.config import load_config

PASSWORD = "line-3-secret-pw"
DEFECTIVE = {20, 21, 60, 110, 111, 160}  # of 180 frames, looped: a reject every ~1.5 s


@dataclass
class WebLine:
    """The running line: its service, its broker, its folders, and where the view listens."""

    runner: ServiceRunner
    broker: Broker
    state: Path
    host: str
    port: int
    password: str = PASSWORD

    @property
    def base(self) -> str:
        """The view's address."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop the daemon, then the broker."""
        try:
            self.runner.stop()
        finally:
            self.broker.stop()


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode("utf-8", "replace")


@dataclass
class Client:
    """A plain HTTP client for the view (no redirects followed, cookies kept by hand)."""

    line: WebLine
    cookie: str | None = None
    csrf: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> Reply:
        """One request on a new connection."""
        conn = http.client.HTTPConnection(self.line.host, self.line.port, timeout=timeout)
        try:
            sent = {**self.extra, **(headers or {})}
            if self.cookie:
                sent["Cookie"] = self.cookie
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        """GET."""
        return self.request("GET", path, **kwargs)

    def post_form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Reply:
        """POST a urlencoded form."""
        return self.request("POST", path, urllib.parse.urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def login(self, user: str = "anna", password: str = PASSWORD) -> Reply:
        """Log in; keeps the session cookie and the page's CSRF token."""
        reply = self.post_form("/login", {"user": user, "password": password, "next": "/"})
        cookie = reply.headers.get("set-cookie", "")
        if reply.status == 303 and cookie:
            self.cookie = cookie.split(";")[0]
            page = self.get("/feedback").text
            found = re.search(r'name="csrf" value="([^"]+)"', page)
            self.csrf = found.group(1) if found else None
        return reply


def basic(password: str) -> dict[str, str]:
    """An Authorization header for Basic auth (any user name)."""
    return {"Authorization": "Basic " + base64.b64encode(f"prometheus:{password}".encode()).decode()}


def start_line(root: Path, web_extra: str = "", password: bool = True, request_timeout_s: float = 10.0) -> WebLine:
    """Build and start the line under `root` (the view behind PASSWORD, or open on loopback); the caller stops it.

    `request_timeout_s` is the product's default: a test that holds slots with silent sockets needs them held
    until it has looked, which a short deadline would race on a loaded machine."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "broker").mkdir(exist_ok=True)
    broker = Broker(root / "broker")
    broker.start()
    try:
        bundle = build_max_bundle(root / "bundle")
        video = root / "line.avi"
        write_spot_video(video, 180, DEFECTIVE, size=(160, 120))
        secret = root / "web-password"
        secret.write_text(PASSWORD + "\n")
        more = f", {web_extra}" if web_extra else ""
        login = f", password_file: {secret}" if password else ""
        cfg = load_config(write_config(
            root / "edged.yaml", bundle, video, root / "state", broker.port,
            extra_camera="    loop: true\n    realtime: true\n    fps: 30",
            extra=f"web: {{port: 0, request_timeout_s: {request_timeout_s}{login}{more}}}"))
        runner = ServiceRunner(cfg).start()
        wait_until(lambda: runner.service.web is not None or runner.error is not None, 30, "the web view")
        web = runner.service.web
        assert web is not None, runner.error
        wait_until(lambda: runner.service.counters.rejects > 0, 30, "a first reject")
        return WebLine(runner, broker, root / "state", web.listening.host, web.listening.port)
    except BaseException:
        broker.stop()
        raise
