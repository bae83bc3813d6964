"""Text that leaves the process: secrets masked, outside text escaped.

One owner for both, because both are about what an operator, a log reader or an MQTT subscriber gets
to see. `redact_url` is the only password masking in the daemon (health file, /stats, logs, `edged
status`, `check-config` all use it); `escape` is how text that came from outside (an MQTT message,
a part id) is put into a log line, so that a newline in it cannot forge a line of its own.
"""

from __future__ import annotations

import re
import reprlib

# scheme://authority: the authority ends at the first '/', '?', '#' or blank (RFC 3986); userinfo is
# everything before its LAST '@' (a password may hold a raw '@', as urllib also assumes)
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\s\"']*)")
MASK = "***"


def redact_url(text: str) -> str:
    """Mask the password of every URL in `text`: rtsp://user:secret@host -> rtsp://user:***@host.

    A userinfo without ':' (a token: http://token@host) is masked whole. Works on any text, so a
    GStreamer pipeline or an error message that quotes a URL is masked too.
    """
    return _URL.sub(_mask_authority, text)


def _mask_authority(match: re.Match[str]) -> str:
    scheme, authority = match.group("scheme"), match.group("authority")
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return match.group(0)
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{user}:{MASK}@{host}" if colon else f"{scheme}{MASK}@{host}"


def escape(text: object, limit: int = 120) -> str:
    """Outside text for a log line: printable characters as they are, anything else (newlines, control
    and format characters, lone surrogates) as a Python escape; cut to `limit` characters."""
    s = text if isinstance(text, str) else reprlib.repr(text)  # bounded: depth and size
    out = "".join(ch if ch.isprintable() else _escape_char(ch) for ch in s[:limit])
    return out + (f"...({len(s)} chars)" if len(s) > limit else "")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
