"""The web view's HTTP server: the stdlib's threading server, bounded, in threads of its own.

Why the stdlib and not a framework: the view serves one station's few browsers and a Prometheus scraper,
so the standard library's `http.server` is enough once it is bounded, and it adds no dependency (and no
event loop) to a daemon that must run for years on a small box. The bounds are what keeps a slow or hostile
client from the pipeline: at most `web.max_clients` requests are served at once (more get a 503 at once,
they do not queue up threads), every connection is cut `web.request_timeout_s` after it was accepted (a whole
deadline, not one per read: a client that trickles a byte a second would reset a per-read timeout forever and
keep its slot), a request body is at most
MAX_BODY bytes, headers are bounded by http.server itself (64 KiB lines, 100 headers). The handlers never
take a lock the capture, inference or recorder threads take: they read counters and the latest verdicts by
reference, encode JPEGs themselves, and read SQLite through their own read-only connection.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import logging
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import TYPE_CHECKING, Any

from edged.health import Heartbeats, SupervisedThread
from edged.safetext import escape
from edged.web import auth
from edged.web.app import Request, Response, WebApp

if TYPE_CHECKING:
    from edged.config import WebConfig

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024  # forms and JSON from the view are a few hundred bytes


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """ThreadingHTTPServer with a cap on requests served at once (503 beyond it) and a heartbeat."""

    daemon_threads = True  # a stuck client never holds up the daemon's exit
    block_on_close = False
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], app: WebApp, web: WebConfig, beat: Any) -> None:
        self.app = app
        self.web = web
        self.slots = threading.BoundedSemaphore(web.max_clients)
        self.refused = 0
        self.cpu_seconds = 0.0  # CPU time of every request's thread (bench: the view's CPU share)
        self._cpu_lock = threading.Lock()
        self._beat = beat
        self._deadlines: dict[socket.socket, float] = {}  # connections being served, and when each is cut
        self._deadline_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        # the socket timeout of every client (a silent client is dropped): StreamRequestHandler's class attribute
        handler = type("_TimedHandler", (_Handler,), {"timeout": web.request_timeout_s})
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the request when a slot is free; else 503 at once (no thread, no wait)."""
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The request under its deadline, then its slot back whatever happened."""
        with self._deadline_lock:
            self._deadlines[request] = time.monotonic() + self.web.request_timeout_s
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def shutdown_request(self, request: Any) -> None:
        """Close a connection, first taken off the deadlines (so `_cut_overdue` never touches a closed socket)."""
        with self._deadline_lock:
            self._deadlines.pop(request, None)
        super().shutdown_request(request)

    def _cut_overdue(self) -> None:
        """Shut down every connection past its deadline: its handler's blocked read or write returns at once and
        its thread ends, giving its slot back."""
        now = time.monotonic()
        with self._deadline_lock:
            for request, deadline in self._deadlines.items():
                if deadline <= now:
                    with contextlib.suppress(OSError):  # already gone
                        request.shutdown(socket.SHUT_RDWR)

    def add_cpu(self, seconds: float) -> None:
        """A request's thread CPU time (its handler calls this once, at its end)."""
        with self._cpu_lock:
            self.cpu_seconds += seconds

    def service_actions(self) -> None:
        """Called by serve_forever between polls (at least every poll_interval): the heartbeat, the deadlines."""
        self._beat()
        self._cut_overdue()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler's exception is logged, never printed to stderr; a client that hung up or went silent is only
        a debug line (a hostile client must not be able to fill the journal with tracebacks)."""
        who = client_address[0] if client_address else "?"
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("web: connection from %s ended: %s", who, sys.exc_info()[1])
            return
        log.exception("web: request from %s failed", who)


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request: parse, check size, hand it to the app, write its response."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "edged"
    sys_version = ""

    def handle(self) -> None:
        """The connection's requests, their thread's CPU time counted."""
        start = time.thread_time()
        try:
            super().handle()
        finally:
            self.server.add_cpu(time.thread_time() - start)

    def do_GET(self) -> None:
        """GET and HEAD."""
        self._serve(b"")

    def do_HEAD(self) -> None:
        """HEAD: the GET's headers only."""
        self._serve(b"", head=True)

    def do_POST(self) -> None:
        """POST: a bounded body, then the app."""
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._write(Response.text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of at most {MAX_BODY} bytes"))
            self.close_connection = True
            return
        self._serve(self.rfile.read(length) if length else b"")

    def _serve(self, body: bytes, head: bool = False) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, max_num_fields=32).items()}
        request = Request(method="GET" if head else self.command, path=url.path, query=query, body=body,
                          cookie=_cookie(self.headers.get("Cookie")),
                          basic_password=_basic_password(self.headers.get("Authorization")),
                          content_type=(self.headers.get("Content-Type") or "").split(";")[0].strip().lower(),
                          accept=self.headers.get("Accept") or "", origin=self.headers.get("Origin"),
                          host=self.headers.get("Host") or "", csrf_header=self.headers.get("X-CSRF-Token"),
                          client=self.client_address[0])
        try:
            response = self.server.app.handle(request)
        except Exception:
            log.exception("web: %s %s failed", self.command, escape(url.path, 80))
            response = Response.text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (see the journal)")
        self._write(response, head)

    def _write(self, response: Response, head: bool = False) -> None:
        self.send_response(response.status)
        # one request per connection: an idle keep-alive connection (a browser keeps several) would hold a slot
        # until its timeout, and a few open tabs would use up max_clients
        self.close_connection = True
        headers = {"Connection": "close", "Content-Type": response.content_type,
                   "Content-Length": str(len(response.body)),
                   "Cache-Control": response.cache, "X-Content-Type-Options": "nosniff",
                   "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                   "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' "
                                              "'unsafe-inline'; frame-ancestors 'none'"}
        headers.update(dict(response.headers))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access lines at debug level only, escaped (a request line is outside text)."""
        log.debug("web: %s %s", self.client_address[0], escape(format % args, 200))


def _cookie(header: str | None) -> str | None:
    if not header:
        return None
    try:
        jar = SimpleCookie(header)
    except CookieError:
        return None
    morsel = jar.get(auth.COOKIE)
    return morsel.value if morsel is not None else None


def _basic_password(header: str | None) -> str | None:
    """The password of an `Authorization: Basic` header (Prometheus' basic_auth for /metrics and /api/)."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


@dataclass(frozen=True, slots=True)
class Listening:
    """Where the view listens (the port is the real one when the config says 0)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """The address a browser on this box opens."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


class WebServer(SupervisedThread):
    """The web view's accept loop (request threads are its own, bounded); binds in __init__, so a port in use is an
    OSError at start, before the thread exists."""

    what = "web view"

    def __init__(self, app: WebApp, web: WebConfig, heartbeats: Heartbeats) -> None:
        super().__init__("web", heartbeats)
        self._heartbeats = heartbeats
        self._server = _Server((web.bind, web.port), app, web, lambda: heartbeats.beat("web"))
        self.listening = Listening(web.bind, int(self._server.server_address[1]))
        self.login_required = app.sessions.required

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the view's request threads have used since start."""
        return self._server.cpu_seconds

    @property
    def refused(self) -> int:
        """Requests answered 503 because every slot was busy."""
        return self._server.refused

    def work(self) -> None:
        """Serve until `stop` (supervised: `SupervisedThread`)."""
        self._heartbeats.beat(self.name)
        self._server.serve_forever(poll_interval=0.5)

    def stop(self, timeout: float = 3.0) -> None:
        """Stop accepting, close the socket; requests in flight end on their own (daemon threads, timeouts)."""
        if self.is_alive():
            done = threading.Thread(target=self._server.shutdown, daemon=True)
            done.start()
            done.join(timeout)
        self._server.server_close()
        deadline = time.monotonic() + timeout
        self.join(max(0.0, deadline - time.monotonic()))
