"""Logins and sessions for the web view: one shared password, a name per person, a cookie per session.

The password is compared in constant time (hmac.compare_digest over SHA-256 digests, so lengths do not
leak either); a session is a random 256-bit token held only in memory (a restart logs everyone out) and
sent only as an HttpOnly, SameSite=Strict cookie, never in a page or URL. Every POST carries the
session's CSRF token (a hidden field or X-CSRF-Token): SameSite=Strict already keeps other sites'
forms from riding the cookie, the token also covers the open (no password) view on loopback, which has
no cookie to protect it. Failed logins are logged with the address, never with what was typed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "edged_session"
MAX_SESSIONS = 256  # the oldest is dropped beyond this: a login flood cannot grow memory
NAME_MAX = 40


@dataclass(frozen=True, slots=True)
class Session:
    """Who is logged in, until when, and the token their forms must carry."""

    user: str
    csrf: str
    expires_mono: float


def clean_name(text: str) -> str:
    """A person's name as typed: printable, trimmed, at most NAME_MAX characters; '' when nothing is left."""
    return "".join(ch for ch in text if ch.isprintable()).strip()[:NAME_MAX]


class Sessions:
    """The password check and the live sessions (thread-safe: every web thread uses it)."""

    def __init__(self, password: str | None, hours: float) -> None:
        self._digest = hashlib.sha256(password.encode("utf-8")).digest() if password is not None else None
        self._lifetime = hours * 3600.0
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.open_csrf = secrets.token_urlsafe(32)  # the CSRF token of an open view (no login)
        self.failures = 0

    @property
    def required(self) -> bool:
        """True when pages need a login."""
        return self._digest is not None

    def check_password(self, typed: str) -> bool:
        """Constant time; always False when no password is set (there is nothing to log in to)."""
        if self._digest is None:
            return False
        ok = hmac.compare_digest(hashlib.sha256(typed.encode("utf-8", "replace")).digest(), self._digest)
        if not ok:
            self.failures += 1
        return ok

    def create(self, user: str) -> str:
        """A new session for `user`; returns its token (for the cookie only)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].expires_mono)
                del self._sessions[oldest]
            self._sessions[token] = Session(user, secrets.token_urlsafe(32), time.monotonic() + self._lifetime)
        return token

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, or None (unknown, expired)."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is not None and session.expires_mono < time.monotonic():
                del self._sessions[token]
                return None
            return session

    def end(self, token: str | None) -> None:
        """Log out."""
        if token:
            with self._lock:
                self._sessions.pop(token, None)

    def csrf_ok(self, session: Session | None, sent: str | None) -> bool:
        """The POST carries the token of its session (or of the open view); constant time."""
        expected = session.csrf if session is not None else self.open_csrf
        return sent is not None and hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode())
