"""Secrets masked and outside text escaped: the one helper each, with what it must never let through."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from edged.safetext import escape, redact_url


def test_redact_url_masks_the_password_and_keeps_the_rest() -> None:
    assert redact_url("rtsp://u:p@h:554/x") == "rtsp://u:***@h:554/x"
    assert redact_url("rtsp://h/x") == "rtsp://h/x"
    assert redact_url("0") == "0" and redact_url("/data/line.avi") == "/data/line.avi"
    assert redact_url("http://token@cam/snap.jpg") == "http://***@cam/snap.jpg"
    # the two helpers this one replaced leaked the part of these passwords after ':' or '@'
    assert redact_url("rtsp://admin:pa:ss@10.0.0.5/live") == "rtsp://admin:***@10.0.0.5/live"
    assert redact_url("rtsp://admin:p@ss@10.0.0.5/live") == "rtsp://admin:***@10.0.0.5/live"
    # an '@' in the path is not a password
    assert redact_url("http://cam/x@y?a=b@c") == "http://cam/x@y?a=b@c"
    # a URL inside other text: a GStreamer pipeline, an error message
    assert (redact_url('gst:rtspsrc location="rtsp://u:secret@cam/1" ! decodebin ! appsink')
            == 'gst:rtspsrc location="rtsp://u:***@cam/1" ! decodebin ! appsink')
    assert redact_url("cannot open rtsp://u:secret@cam/1 (timeout)") == "cannot open rtsp://u:***@cam/1 (timeout)"


password = st.text(alphabet=string.ascii_letters + string.digits + "!$%&()*+,;=:@-._~", min_size=4, max_size=20)


@given(user=st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8), secret=password,
       host=st.from_regex(r"[a-z][a-z0-9.-]{0,15}(:[0-9]{1,5})?", fullmatch=True),
       path=st.from_regex(r"(/[A-Za-z0-9@._-]*){0,3}", fullmatch=True),
       scheme=st.sampled_from(["rtsp", "rtsps", "http", "https"]))
def test_redact_url_never_lets_a_password_through(user: str, secret: str, host: str, path: str, scheme: str) -> None:
    url = f"{scheme}://{user}:{secret}@{host}{path}"
    shown = redact_url(url)
    assert shown == f"{scheme}://{user}:***@{host}{path}"
    assert redact_url(f"pipeline location={url} ! appsink") == f"pipeline location={shown} ! appsink"


def test_escape_keeps_one_log_line_one_line() -> None:
    assert escape("A-1042") == "A-1042"
    assert escape("Teil-Ä 7") == "Teil-Ä 7"  # printable non-ASCII stays readable
    assert escape("x\n2026-11-27 07:00:00.000 ERROR edged: forged") == \
        "x\\x0a2026-11-27 07:00:00.000 ERROR edged: forged"
    assert escape("a\rb\x00c\u2028d\ud800e\x1b[31m") == "a\\x0db\\x00c\\u2028d\\ud800e\\x1b[31m"
    assert escape("p" * 10_000_000, limit=20) == "p" * 20 + "...(10000000 chars)"
    nested: list[object] = []
    for _ in range(100_000):  # reprlib: bounded depth, no RecursionError
        nested = [nested]
    assert len(escape(nested)) < 200


@given(st.text())
def test_escape_never_yields_a_line_break_or_control_character(text: str) -> None:
    out = escape(text, limit=50)
    assert all(ch.isprintable() for ch in out)
    assert len(out) <= 50 * 10 + 30
