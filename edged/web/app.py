"""The web view's requests and answers: auth, CSRF, routing; the pages' HTML is in `pages`, data in `api`.

Independent of the HTTP server (a Request in, a Response out), so each rule is one small function.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from edged import jsonin, jsonout, labels
from edged.safetext import escape
from edged.store import connect
from edged.web import api, images, pages, queries
from edged.web.auth import COOKIE, Session, Sessions, clean_name
from edged.web.live import LiveView
from edged.web.metrics import registry_for, scrape

if TYPE_CHECKING:
    from edged.service import Service

log = logging.getLogger(__name__)

LOGIN_FAILURE_DELAY_S = 1.0  # per failed attempt, in that request's thread (slots are bounded: so are guesses)
_ID = r"(\d{1,18})"


@dataclass(frozen=True, slots=True)
class Request:
    """What the server parsed from one HTTP request."""

    method: str
    path: str
    query: dict[str, str]
    body: bytes = b""
    cookie: str | None = None
    basic_password: str | None = None
    content_type: str = ""
    accept: str = ""
    origin: str | None = None
    host: str = ""
    csrf_header: str | None = None
    client: str = ""

    def form(self) -> dict[str, str]:
        """The body as fields: a urlencoded form or a JSON object (values as text)."""
        if self.content_type == "application/json":
            try:
                data = jsonin.loads(self.body.decode("utf-8") or "{}")  # refuses deep nesting (TooDeep)
            except (UnicodeDecodeError, ValueError):
                return {}
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        try:
            text = self.body.decode("utf-8")
        except UnicodeDecodeError:
            return {}
        return {k: v[-1] for k, v in urllib.parse.parse_qs(text, max_num_fields=16).items()}

    @property
    def wants_json(self) -> bool:
        """An API client (fetch, curl) rather than a browser form."""
        return self.path.startswith("/api/") and "text/html" not in self.accept


@dataclass(frozen=True, slots=True)
class Response:
    """One answer: status, body, type, extra headers, caching."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    cache: str = "no-store"

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        """Plain text (errors)."""
        return cls(status, (text + "\n").encode())

    @classmethod
    def json(cls, value: Any, status: int = HTTPStatus.OK) -> Response:
        """Strict JSON (never NaN)."""
        return cls(status, jsonout.dumps(value).encode(), "application/json")

    @classmethod
    def html(cls, text: str, status: int = HTTPStatus.OK, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        """A page."""
        return cls(status, text.encode(), "text/html; charset=utf-8", headers)

    @classmethod
    def jpeg(cls, data: bytes, cache: str = "no-store") -> Response:
        """An image."""
        return cls(HTTPStatus.OK, data, "image/jpeg", cache=cache)

    @classmethod
    def redirect(cls, to: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        """303 See Other (after a form's POST, or to the login)."""
        return cls(HTTPStatus.SEE_OTHER, b"", headers=(("Location", to), *headers))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: their session (None on an open view or with Basic auth) and the name labels are stored under."""

    session: Session | None
    user: str

    @property
    def csrf(self) -> str | None:
        """The session's CSRF token (None: the open view's)."""
        return self.session.csrf if self.session is not None else None


Handler = Callable[[Request, Caller, tuple[str, ...]], Response]


class WebApp:
    """The view of one running Service (see the package docstring)."""

    def __init__(self, service: Service, live: LiveView) -> None:
        cfg = service.config
        self.service = service
        self.live = live
        self.web = cfg.web
        self.sessions = Sessions(cfg.web.read_password(), cfg.web.session_hours)
        self.encoder = images.LiveEncoder(cfg.web.live_fps)
        self.registry = registry_for(service, live)
        self.db_path = cfg.storage.resolve(cfg.storage.database)
        self.images_dir = cfg.storage.resolve(cfg.storage.images.dir)
        self.feedback_dir = cfg.storage.resolve(cfg.web.feedback_dir)
        self.cameras = [c.name for c in cfg.cameras]
        conn = connect(self.db_path)
        try:
            labels.ensure_schema(conn)
        finally:
            conn.close()
        self._get: list[tuple[re.Pattern[str], Handler]] = [(re.compile(p + r"\Z"), h) for p, h in (
            (r"/", self._overview), (r"/rejects", self._rejects_page), (r"/part/" + _ID, self._part_page),
            (r"/feedback", self._feedback_page), (r"/health", self._health_page), (r"/metrics", self._metrics),
            (r"/static/app\.js", self._script), (r"/static/scale\.jpg", self._scale),
            (r"/live/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\.jpg", self._live),
            (r"/image/" + _ID + r"(/overlay|/thumb)?\.jpg", self._image),
            (r"/api/status", self._api_status), (r"/api/cameras", self._api_cameras),
            (r"/api/rejects", self._api_rejects), (r"/api/parts/" + _ID, self._api_part),
            (r"/api/labels", self._api_labels))]
        self._post: dict[str, Handler] = {"/api/labels": self._add_label, "/logout": self._logout,
                                          "/recipe": self._select_recipe}

    # --- entry -------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        """Route one request: login, then who is asking, then CSRF for POSTs, then the handler."""
        if req.path == "/login":
            return self._login(req)
        caller = self._caller(req)
        if caller is None:
            if req.path.startswith("/api/") or req.path == "/metrics":
                return Response(HTTPStatus.UNAUTHORIZED, b"login required\n",
                                headers=(("WWW-Authenticate", 'Basic realm="edged"'),))
            return Response.redirect("/login?next=" + urllib.parse.quote(req.path, safe="/"))
        if req.method == "POST":
            return self._post_request(req, caller)
        if req.method != "GET":
            return Response.text(HTTPStatus.METHOD_NOT_ALLOWED, "GET or POST")
        for pattern, handler in self._get:
            match = pattern.match(req.path)
            if match:
                return handler(req, caller, tuple(g or "" for g in match.groups()))
        return Response.text(HTTPStatus.NOT_FOUND, "not found")

    def _caller(self, req: Request) -> Caller | None:
        """Who asks, or None when a login is needed and missing (a Basic password counts for /api/ and /metrics)."""
        session = self.sessions.get(req.cookie)
        if session is not None:
            return Caller(session, session.user)
        if not self.sessions.required:
            return Caller(None, "")
        machine = req.path.startswith("/api/") or req.path == "/metrics"
        if machine and req.basic_password is not None and self.sessions.check_password(req.basic_password):
            return Caller(None, "api")
        return None

    def _post_request(self, req: Request, caller: Caller) -> Response:
        handler = self._post.get(req.path)
        if handler is None:
            return Response.text(HTTPStatus.NOT_FOUND, "not found")
        if not self._same_origin(req):
            return Response.text(HTTPStatus.FORBIDDEN, "cross-site request refused")
        sent = req.csrf_header or req.form().get("csrf")
        basic = caller.session is None and caller.user == "api"  # a script with the password: no page, no token
        if not basic and not self.sessions.csrf_ok(caller.session, sent):
            return Response.text(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token: reload the page")
        return handler(req, caller, ())

    @staticmethod
    def _same_origin(req: Request) -> bool:
        """An Origin header, when the browser sends one, must be this server."""
        if not req.origin or req.origin == "null":
            return req.origin != "null"
        return urllib.parse.urlsplit(req.origin).netloc == req.host

    # --- login ---------------------------------------------------------------------------------------
    def _login(self, req: Request) -> Response:
        nxt = req.query.get("next", "/")
        nxt = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"
        if not self.sessions.required:
            return Response.redirect("/")
        if req.method != "POST":
            return Response.html(pages.login(nxt, ""))
        form = req.form()
        user = clean_name(form.get("user", ""))
        if not self._same_origin(req) or not self.sessions.check_password(form.get("password", "")) or not user:
            log.warning("web: failed login from %s (%d failed so far)", escape(req.client, 60), self.sessions.failures)
            time.sleep(LOGIN_FAILURE_DELAY_S)
            why = "Name and password, please." if not user else "Wrong password."
            return Response.html(pages.login(nxt, why), HTTPStatus.UNAUTHORIZED)
        token = self.sessions.create(user)
        log.info("web: %s logged in from %s", escape(user, 40), escape(req.client, 60))
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(self.web.session_hours * 3600)}"
        return Response.redirect(form.get("next", nxt) if form.get("next", "/").startswith("/") else "/",
                                 (("Set-Cookie", cookie),))

    def _logout(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        self.sessions.end(req.cookie)
        gone = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        return Response.redirect("/login", (("Set-Cookie", gone),))

    # --- pages ---------------------------------------------------------------------------------------
    def _ctx(self, caller: Caller) -> pages.Context:
        return pages.Context(station=self.service.config.station, user=caller.user,
                             csrf=caller.csrf or self.sessions.open_csrf, login=self.sessions.required)

    def _overview(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        return Response.html(pages.overview(self._ctx(caller), api.cameras(self.service, self.live),
                                            api.status(self.service), self._recipe_card(caller)))

    # --- recipes (edged.recipes) -------------------------------------------------------------------------
    def _recipe_card(self, caller: Caller) -> str:
        """The recipe selector, where there is more than one recipe to choose from."""
        book = self.service.recipes
        if book is None or len(book.table) < 2 or self.service.switcher is None:
            return ""
        return pages.recipe_card(self._ctx(caller), book.summary(), list(book.table))

    def _select_recipe(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        """POST /recipe {camera ('' all), recipe}: switched (after load and verify) or refused with the reason."""
        form = req.form()
        camera, recipe = form.get("camera", ""), form.get("recipe", "")
        result, reason, model = self.service.select_recipe(camera, recipe, timeout_s=60.0)
        who = escape(caller.user or "local", 40)
        if result != "switched":
            log.warning("web: %s asked for recipe %s on %s: refused (%s)", who, escape(recipe, 60),
                        escape(camera or "every camera", 60), escape(reason, 200))
            if req.wants_json:
                return Response.json({"result": result, "reason": reason}, HTTPStatus.CONFLICT)
            return Response.html(pages.error(self._ctx(caller), f"recipe not switched: {reason}"),
                                 HTTPStatus.CONFLICT)
        log.info("web: %s switched %s to recipe %s (model %s)", who, escape(camera or "every camera", 60),
                 escape(recipe, 60), model)
        if req.wants_json:
            return Response.json({"result": result, "model": model})
        return Response.redirect("/")

    def _rejects_page(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        try:
            f = queries.RejectFilter.parse(req.query, self.cameras)
        except queries.BadQuery as exc:
            return Response.html(pages.error(self._ctx(caller), str(exc)), HTTPStatus.BAD_REQUEST)
        rows, total = self._read(lambda c: queries.rejects(c, f))
        return Response.html(pages.rejects(self._ctx(caller), rows, total, f, self.cameras))

    def _part_page(self, req: Request, caller: Caller, groups: tuple[str, ...]) -> Response:
        part = self._read(lambda c: api.part(c, int(groups[0])))
        if part is None:
            return Response.html(pages.error(self._ctx(caller), "no such inspection (deleted by retention?)"),
                                 HTTPStatus.NOT_FOUND)
        return Response.html(pages.part(self._ctx(caller), part))

    def _feedback_page(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        counts, recent, frames = self._read(lambda c: (labels.label_counts(c), labels.recent_labels(c, 30),
                                                       queries.recent(c, req.query.get("camera") or None, 20)))
        command = api.recalibrate_command(self.service.config, self.feedback_dir)
        return Response.html(pages.feedback(self._ctx(caller), counts, recent, frames, command,
                                            req.query.get("done", "")))

    def _health_page(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        return Response.html(pages.health(self._ctx(caller), api.status(self.service),
                                          api.masked_config(self.service.config), api.versions()))

    def _script(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        return Response(HTTPStatus.OK, pages.SCRIPT.encode(), "text/javascript; charset=utf-8", cache="max-age=300")

    def _scale(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        return Response.jpeg(images.colour_scale(), cache="max-age=86400")

    # --- images and metrics --------------------------------------------------------------------------
    def _live(self, req: Request, caller: Caller, groups: tuple[str, ...]) -> Response:
        camera = groups[0]
        if camera not in self.cameras:
            return Response.text(HTTPStatus.NOT_FOUND, "no such camera")
        overlay = req.query.get("overlay") == "1"
        stats = self.service.stats.get(camera)
        frame = stats.latest if stats is not None else None
        encoded = self.encoder.get(camera, frame, self.live.latest_reject.get(camera), overlay)
        if encoded is None:
            return Response.text(HTTPStatus.NOT_FOUND, "no frame yet")
        return Response(HTTPStatus.OK, encoded.data, "image/jpeg", headers=(("X-Frame-Seq", str(encoded.seq)),))

    def _image(self, req: Request, caller: Caller, groups: tuple[str, ...]) -> Response:
        path, regions = self._read(lambda c: queries.image_path(c, int(groups[0])))
        stored = images.stored_image(self.images_dir, path)
        if stored is None:
            return Response.text(HTTPStatus.NOT_FOUND, "no stored image for this inspection")
        kind = groups[1]
        if kind == "/overlay":
            beside = images.legacy_overlay_file(stored)
            with contextlib.suppress(OSError):  # deleted by the quota meanwhile: drawn from the frame below
                if beside is not None:
                    return Response.jpeg(beside.read_bytes(), cache="private, max-age=3600")
        frame = images.read_frame(stored)
        if frame is None:
            return Response.text(HTTPStatus.NOT_FOUND, "the stored image cannot be read")
        if kind == "/overlay":
            frame = images.stored_overlay(stored, frame, regions)
        data = images.encode_jpeg(frame, images.THUMB_WIDTH if kind == "/thumb" else None)
        return Response.jpeg(data, cache="private, max-age=3600")

    def _metrics(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        return Response(HTTPStatus.OK, scrape(self.registry), "text/plain; version=0.0.4; charset=utf-8")

    # --- API -----------------------------------------------------------------------------------------
    def _api_status(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        return Response.json(api.status(self.service))

    def _api_cameras(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        return Response.json(api.cameras(self.service, self.live))

    def _api_rejects(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        try:
            f = queries.RejectFilter.parse(req.query, self.cameras)
        except queries.BadQuery as exc:
            return Response.json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
        rows, total = self._read(lambda c: queries.rejects(c, f))
        return Response.json({"total": total, "page": f.page, "per_page": f.per_page, "rejects": rows})

    def _api_part(self, req: Request, caller: Caller, groups: tuple[str, ...]) -> Response:
        part = self._read(lambda c: api.part(c, int(groups[0])))
        if part is None:
            return Response.json({"error": "no such inspection"}, HTTPStatus.NOT_FOUND)
        return Response.json(part)

    def _api_labels(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        counts, recent = self._read(lambda c: (labels.label_counts(c), labels.recent_labels(c, 100)))
        return Response.json({"counts": counts, "labels": [lb.to_dict() for lb in recent],
                              "recalibrate": api.recalibrate_command(self.service.config, self.feedback_dir)})

    def _add_label(self, req: Request, caller: Caller, _: tuple[str, ...]) -> Response:
        form = req.form()
        by = caller.user or clean_name(form.get("by", "")) or "local"
        try:
            inspection_id = int(form.get("inspection_id", ""))
            label = self._write_label(inspection_id, form.get("label", ""), by)
        except ValueError as exc:  # LabelRefused is a ValueError; so is a bad id
            why = str(exc) if isinstance(exc, labels.LabelRefused) else "inspection_id: not a number"
            if req.wants_json:
                return Response.json({"error": why}, HTTPStatus.BAD_REQUEST)
            return Response.html(pages.error(self._ctx(caller), why), HTTPStatus.BAD_REQUEST)
        log.info("web: %s labelled inspection %d %s", escape(by, 40), inspection_id, label.label)
        if req.wants_json:
            return Response.json(label.to_dict(), HTTPStatus.CREATED)
        back = form.get("back", "")
        back = back if back.startswith("/") and not back.startswith("//") else f"/part/{inspection_id}"
        return Response.redirect(back)

    def _write_label(self, inspection_id: int, label: str, by: str) -> labels.Label:
        conn = connect(self.db_path)
        try:
            return labels.add_label(conn, inspection_id, label, by, self.feedback_dir, self.images_dir)
        except sqlite3.Error as exc:
            raise labels.LabelRefused(f"the label could not be stored: {exc}") from None
        finally:
            conn.close()

    def _read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `query` on a fresh read-only connection (closed after)."""
        conn = queries.open_readonly(self.db_path)
        try:
            return query(conn)
        finally:
            conn.close()

