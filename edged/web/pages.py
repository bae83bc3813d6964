"""The web view's pages: server-rendered HTML (every outside value escaped), a little plain JS, no build step.

The JS (`SCRIPT`, served as /static/app.js so the Content-Security-Policy can forbid inline scripts) only
refreshes: the live frames (the next one is asked for when the last has loaded, so a slow link asks less)
and the counters (polling /api/cameras and /api/status). Every form works without it.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edged.labels import Label
from edged.web.queries import RejectFilter

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;background:#f4f5f7;color:#222}
nav{background:#1f2a37;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center}
nav a{color:#cfe3ff;text-decoration:none}nav .who{margin-left:auto;color:#aab}
main{padding:16px}h1{font-size:20px;margin:0 0 12px}h2{font-size:16px}
.cards{display:flex;flex-wrap:wrap;gap:16px}.card{background:#fff;border-radius:6px;padding:12px;
box-shadow:0 1px 3px #0002}.frames{display:flex;gap:8px}.frames img{width:320px;background:#000;
image-rendering:pixelated}table{border-collapse:collapse;background:#fff}td,th{padding:4px 8px;
border-bottom:1px solid #e3e3e3;text-align:left;vertical-align:top}.bad{color:#b00020;font-weight:600}
.ok{color:#176f2c}button{cursor:pointer;padding:4px 10px}pre{background:#fff;padding:8px;overflow:auto;
max-height:480px}.kv td:first-child{color:#666}.scale{display:flex;align-items:center;gap:6px}
code{background:#eef;padding:2px 4px}.err{color:#b00020}
"""

SCRIPT = r"""
(function () {
  "use strict";
  function refresh(img) {
    var period = Number(img.dataset.period || 250), base = img.dataset.src;
    function next() {
      var n = new Image();
      n.onload = function () { img.src = n.src; img.dataset.loaded = String(Number(img.dataset.loaded || 0) + 1);
        setTimeout(next, period); };
      n.onerror = function () { setTimeout(next, 1000); };
      n.src = base + (base.indexOf("?") < 0 ? "?" : "&") + "t=" + Date.now();
    }
    next();
  }
  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? null : o[k]; }, obj);
  }
  function show(v) {
    if (v == null) { return "-"; }
    if (Array.isArray(v)) { return v.length ? v.join("; ") : "none"; }
    if (typeof v === "number") { return Number.isInteger(v) ? String(v) : v.toFixed(3); }
    if (typeof v === "object") { return JSON.stringify(v); }
    return String(v);
  }
  function poll() {
    fetch("/api/cameras", {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (cams) {
      cams.forEach(function (c) {
        document.querySelectorAll("[data-cam='" + c.name + "']").forEach(function (el) {
          el.textContent = show(get(c, el.dataset.key));
        });
      });
    }).catch(function () {});
    fetch("/api/status", {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(function (s) {
      document.querySelectorAll("[data-status]").forEach(function (el) {
        el.textContent = show(get(s, el.dataset.status));
      });
    }).catch(function () {});
  }
  document.querySelectorAll("img[data-src]").forEach(refresh);
  if (document.querySelector("[data-cam],[data-status]")) { poll(); setInterval(poll, 1000); }
})();
"""


@dataclass(frozen=True, slots=True)
class Context:
    """What every page needs: the station, who is logged in, the CSRF token for its forms."""

    station: str
    user: str
    csrf: str
    login: bool


def e(value: object) -> str:
    """Escape for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def when(epoch: Any) -> str:
    """Local time of a Unix time, '-' for none."""
    if not isinstance(epoch, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def num(value: Any, spec: str = ".4g") -> str:
    """A number for a cell, '-' for none."""
    return format(value, spec) if isinstance(value, int | float) else "-"


def layout(ctx: Context, title: str, body: str) -> str:
    """The page around `body`: navigation, who is logged in, the script."""
    who = ""
    if ctx.login:
        who = (f'<form class="who" method="post" action="/logout"><input type="hidden" name="csrf" '
               f'value="{e(ctx.csrf)}">{e(ctx.user)} <button>log out</button></form>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} - edged '
            f'{e(ctx.station)}</title><meta name="viewport" content="width=device-width"><style>{STYLE}</style>'
            f'</head><body><nav><b>edged {e(ctx.station)}</b><a href="/">overview</a><a href="/rejects">rejects</a>'
            f'<a href="/feedback">feedback</a><a href="/health">health</a><a href="/metrics">metrics</a>{who}</nav>'
            f'<main><h1>{e(title)}</h1>{body}</main><script src="/static/app.js"></script></body></html>')


def login(next_path: str, problem: str) -> str:
    """The login page (no Context: nobody is logged in)."""
    err = f'<p class="err" id="login-error">{e(problem)}</p>' if problem else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>edged login</title><style>{STYLE}'
            f'</style></head><body><main><h1>edged: log in</h1>{err}<form method="post" action="/login">'
            f'<input type="hidden" name="next" value="{e(next_path)}"><p><label>Your name <input name="user" '
            f'id="user" autocomplete="username" maxlength="40" required></label></p><p><label>Password <input '
            f'type="password" name="password" id="password" autocomplete="current-password" required></label></p>'
            f'<p><button id="login">log in</button></p></form></main></body></html>')


def error(ctx: Context, message: str) -> str:
    """A refusal, said plainly."""
    return layout(ctx, "Cannot do that", f'<p class="err">{e(message)}</p><p><a href="javascript:history.back()">'
                                         f'back</a></p>')


def _counter(camera: str, key: str, value: Any) -> str:
    shown = value if isinstance(value, str) else num(value)
    return f'<span data-cam="{e(camera)}" data-key="{e(key)}">{e(shown)}</span>'


def _camera_card(cam: dict[str, Any]) -> str:
    name = cam["name"]
    rows = [("state", "state"), ("input", "input.state"), ("input problem", "input.reason"), ("fps", "fps"),
            ("frames", "frames"), ("inspected", "inspected"),
            ("drops", "drops"), ("reconnects", "reconnects"), ("defective frames", "defective"),
            ("reject rate", "reject_rate"), ("latest score", "latest.score"), ("threshold", "latest.threshold"),
            ("latest reject seq", "latest_reject.seq"), ("latest reject score", "latest_reject.score")]
    values = {"state": cam["state"]}
    cells = "".join(f"<tr><td>{e(label)}</td><td>{_counter(name, key, _dig(cam, key)) if key != 'state' else ''}"
                    f"{_state(name, values['state']) if key == 'state' else ''}</td></tr>" for label, key in rows)
    return (f'<div class="card"><h2>{e(name)}</h2><div class="frames"><figure><img id="live-{e(name)}" alt="live" '
            f'data-src="/live/{e(name)}.jpg" data-period="250"><figcaption>live</figcaption></figure><figure>'
            f'<img id="reject-{e(name)}" alt="no reject yet" data-src="/live/{e(name)}.jpg?overlay=1" '
            f'data-period="2000"><figcaption>latest reject: map and regions</figcaption></figure></div>'
            f'<table class="kv">{cells}</table></div>')


def _state(camera: str, state: Any) -> str:
    return f'<span data-cam="{e(camera)}" data-key="state">{e(state)}</span>'


def _dig(obj: Any, path: str) -> Any:
    for key in path.split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _status_row(label: str, key: str, value: Any) -> str:
    if isinstance(value, list):
        shown = "; ".join(str(v) for v in value) or "none"
    else:
        shown = value if isinstance(value, str) else num(value)
    return f'<tr><td>{e(label)}</td><td data-status="{e(key)}">{e(shown)}</td></tr>'


def overview(ctx: Context, cams: list[dict[str, Any]], status: dict[str, Any], extra: str = "") -> str:
    """Per camera the live frame, the latest reject's overlay and counters; the pipeline's state; `extra` cards
    (the recipe selector)."""
    lat = status.get("latency_ms") or {}
    rows = [("broker", "broker", status.get("broker")),
            ("outbox backlog", "outbox_backlog", status.get("outbox_backlog")),
            ("expired rejects", "expired", status.get("expired")), ("inspected", "inspected", status.get("inspected")),
            ("rejects", "rejects", status.get("rejects")), ("latency p50 ms", "latency_ms.p50", lat.get("p50")),
            ("latency p99 ms", "latency_ms.p99", lat.get("p99")), ("model", "model", status.get("model")),
            ("threshold", "threshold", status.get("threshold")), ("problems", "problems", status.get("problems"))]
    table = "".join(_status_row(*r) for r in rows)
    cards = "".join(_camera_card(c) for c in cams)
    return layout(ctx, "Overview", f'<div class="cards">{cards}<div class="card"><h2>pipeline</h2>'
                                   f'<table class="kv" id="pipeline">{table}</table></div>{extra}</div>')


def recipe_card(ctx: Context, current: dict[str, dict[str, str]], names: list[str]) -> str:
    """The product changeover: each camera's recipe and model, and a form switching one camera or all (POST /recipe:
    the new model is loaded and verified before the switch; a refusal says why)."""
    rows = "".join(f'<tr><th>{e(cam)}</th><td class="recipe">{e(a.get("recipe"))}</td><td>{e(a.get("model"))}</td>'
                   f'</tr>' for cam, a in current.items())
    cams = "".join(f'<option value="{e(c)}">{e(c)}</option>' for c in current)
    opts = "".join(f'<option value="{e(n)}">{e(n)}</option>' for n in names)
    return (f'<div class="card"><h2>recipe</h2><table class="kv" id="recipes">{rows}</table>'
            f'<form method="post" action="/recipe" id="recipe-form"><input type="hidden" name="csrf" '
            f'value="{e(ctx.csrf)}">camera <select name="camera"><option value="">all</option>{cams}</select> '
            f'recipe <select name="recipe">{opts}</select> <button>switch</button></form></div>')


def _regions(regions: Iterable[dict[str, Any]]) -> str:
    items = list(regions)
    shown = ", ".join(f"{r.get('w')}x{r.get('h')} at {r.get('x')},{r.get('y')}" for r in items[:3])
    return f"{len(items)}" + (f": {e(shown)}" if shown else "")


def _mqtt(row: dict[str, Any]) -> str:
    state = row.get("mqtt")
    if state == "delivered":
        return f'<span class="ok">delivered {e(when(row.get("delivered_at")))}</span>'
    if state == "expired":
        return '<span class="bad">expired (sent to /audit)</span>'
    return e(state or "-")


def _filter_form(f: RejectFilter, cameras: list[str]) -> str:
    opts = "".join(f'<option value="{e(c)}"{" selected" if c == f.camera else ""}>{e(c)}</option>' for c in cameras)
    reasons = "".join(f'<option value="{r}"{" selected" if r == f.reason else ""}>{r}</option>'
                      for r in ("defect", "not_inspected"))
    hours = "".join(f'<option value="{h}">{t}</option>' for h, t in ((1, "hour"), (8, "8 hours (a shift)"),
                                                                     (24, "24 hours"), (168, "7 days")))
    return (f'<form method="get" action="/rejects" id="filter">camera <select name="camera"><option value="">all'
            f'</option>{opts}</select> reason <select name="reason"><option value="">all</option>{reasons}</select>'
            f' last <select name="hours"><option value="">any time</option>{hours}</select>'
            f' or since (Unix s) <input name="since" size="12" value="{e(num(f.since, ".0f") if f.since else "")}"> '
            f'until <input name="until" size="12" value="{e(num(f.until, ".0f") if f.until else "")}"> '
            f'<button>show</button></form>')


def _reject_row(r: dict[str, Any]) -> str:
    thumb = (f'<img src="/image/{r["id"]}/thumb.jpg" alt="frame" loading="lazy" width="160">' if r["has_image"]
             else "no image")
    overlay = f' <a href="/image/{r["id"]}/overlay.jpg">overlay</a>' if r["has_image"] else ""
    return (f'<tr class="reject" data-id="{r["id"]}"><td><a href="/part/{r["id"]}">{thumb}</a>{overlay}</td>'
            f'<td>{e(when(r["captured_at"]))}</td><td>{e(r["camera"])}</td><td>{e(r["part_id"])}</td>'
            f'<td>{e(r["reason"])}</td><td class="bad">{e(num(r["score"]))} / {e(num(r["threshold"]))}</td>'
            f'<td>{_regions(r["regions"])}</td><td>{_mqtt(r)}</td></tr>')


def rejects(ctx: Context, rows: list[dict[str, Any]], total: int, f: RejectFilter, cameras: list[str]) -> str:
    """The rejects, newest first, paged and filtered."""
    body = "".join(_reject_row(r) for r in rows) or '<tr><td colspan="8">no rejects match</td></tr>'
    query = {k: v for k, v in (("camera", f.camera), ("reason", f.reason), ("since", f.since), ("until", f.until))
             if v is not None}
    pages = []
    if f.page > 0:
        pages.append(f'<a href="/rejects?{_qs(query, f.page - 1)}">newer</a>')
    if (f.page + 1) * f.per_page < total:
        pages.append(f'<a href="/rejects?{_qs(query, f.page + 1)}" id="older">older</a>')
    return layout(ctx, "Rejects", f'{_filter_form(f, cameras)}<p>{total} reject(s); page {f.page + 1}. '
                                  f'{" ".join(pages)}</p><table id="rejects"><tr><th>frame</th><th>captured</th>'
                                  f'<th>camera</th><th>part</th><th>reason</th><th>score / threshold</th>'
                                  f'<th>regions</th><th>MQTT</th></tr>{body}</table>')


def _qs(query: dict[str, Any], page: int) -> str:
    import urllib.parse

    return e(urllib.parse.urlencode({**query, "page": page}))


def _label_buttons(ctx: Context, inspection_id: int, defective: bool, back: str) -> str:
    choices = (("false_reject", "false reject"), ("confirmed_defect", "confirmed defect")) if defective else \
        (("missed_defect", "missed defect"),)
    buttons = "".join(f'<button name="label" value="{v}" id="label-{v}-{inspection_id}">{t}</button> '
                      for v, t in choices)
    by = "" if ctx.login else '<input name="by" placeholder="your name" maxlength="40" size="12"> '
    return (f'<form method="post" action="/api/labels" class="label"><input type="hidden" name="csrf" '
            f'value="{e(ctx.csrf)}"><input type="hidden" name="inspection_id" value="{inspection_id}">'
            f'<input type="hidden" name="back" value="{e(back)}">{by}{buttons}</form>')


def _neighbour_chart(part: dict[str, Any]) -> str:
    items = [n for n in part.get("neighbours", []) if isinstance(n.get("score"), int | float)]
    if not items:
        return "<p>no neighbouring frames</p>"
    top = max([n["score"] for n in items] + [n["threshold"] or 0 for n in items]) or 1.0
    w, h, bw = 420, 120, 420 / len(items)
    bars = []
    for i, n in enumerate(items):
        bh = max(1.0, h * n["score"] / top)
        colour = "#b00020" if n["is_defective"] else "#4a7"
        stroke = ' stroke="#000" stroke-width="2"' if n["id"] == part["id"] else ""
        bars.append(f'<a href="/part/{n["id"]}"><rect x="{i * bw:.1f}" y="{h - bh:.1f}" width="{bw - 2:.1f}" '
                    f'height="{bh:.1f}" fill="{colour}"{stroke}><title>seq {n["seq"]}: {n["score"]:.4g}</title>'
                    f'</rect></a>')
    thr = part.get("threshold")
    line = (f'<line x1="0" x2="{w}" y1="{h - h * thr / top:.1f}" y2="{h - h * thr / top:.1f}" stroke="#000" '
            f'stroke-dasharray="4"/>' if isinstance(thr, int | float) else "")
    return f'<svg width="{w}" height="{h}" id="neighbours">{"".join(bars)}{line}</svg>'


def part(ctx: Context, p: dict[str, Any]) -> str:
    """One inspected frame: the frame, its overlay and the map's colour scale, scores around it, its labels."""
    pid = int(p["id"])
    images = (f'<div class="frames"><figure><img src="/image/{pid}.jpg" alt="frame" id="frame"><figcaption>frame'
              f'</figcaption></figure><figure><img src="/image/{pid}/overlay.jpg" alt="overlay" id="overlay">'
              f'<figcaption>anomaly map and regions</figcaption></figure></div><div class="scale">low <img '
              f'src="/static/scale.jpg" alt="colour scale" width="256" height="14"> high (the map, scaled to this '
              f'frame)</div>' if p["has_image"] else "<p>no image was stored for this frame</p>")
    facts = [("camera", p["camera"]), ("seq", p["seq"]), ("part", p["part_id"]), ("captured", when(p["captured_at"])),
             ("verdict", p["reason"]), ("score", num(p["score"])), ("threshold", num(p["threshold"])),
             ("latency ms", num(p["latency_ms"])), ("model", p["model"]), ("MQTT", None), ("regions", None)]
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in facts[:-2])
    rows += f"<tr><td>MQTT</td><td>{_mqtt(p)}</td></tr><tr><td>regions</td><td>{_regions(p['regions'])}</td></tr>"
    labels = "".join(f"<li>{e(lb['label'])} by {e(lb['by'])} at {e(when(lb['at']))}</li>" for lb in p["labels"])
    return layout(ctx, f"{p['camera']} frame {p['seq']}", (
        f'{images}<table class="kv">{rows}</table><h2>neighbouring frames</h2>{_neighbour_chart(p)}'
        f'<h2>feedback</h2>{_label_buttons(ctx, pid, bool(p["is_defective"]), f"/part/{pid}")}'
        f'<ul id="labels">{labels or "<li>no labels yet</li>"}</ul>'))


def feedback(ctx: Context, counts: dict[str, int], recent: list[Label], frames: list[dict[str, Any]],
             command: str, done: str) -> str:
    """Label counts, the recalibrate command, the newest labels, and recent frames to label."""
    count_rows = "".join(f'<tr><td>{e(k)}</td><td id="count-{e(k)}">{n}</td></tr>' for k, n in counts.items())
    label_rows = "".join(f"<tr><td>{e(when(lb.created_at))}</td><td>{e(lb.camera)}</td><td><a href=\"/part/"
                         f"{lb.inspection_id}\">{lb.inspection_id}</a></td><td>{e(lb.label)}</td><td>{e(lb.created_by)}"
                         f"</td><td>{'copied to good/' if lb.image_copy else ''}</td></tr>" for lb in recent)
    frame_rows = "".join(
        f'<tr><td><a href="/part/{f["id"]}">{e(f["camera"])} {f["seq"]}</a></td><td>{e(when(f["captured_at"]))}</td>'
        f'<td class="{"bad" if f["is_defective"] else "ok"}">{e(num(f["score"]))}</td><td>'
        f'{_label_buttons(ctx, int(f["id"]), bool(f["is_defective"]), "/feedback")}</td></tr>' for f in frames)
    return layout(ctx, "Feedback", (
        f'<table class="kv" id="counts">{count_rows}</table><p>False rejects\' frames are copied into the feedback '
        f'folder\'s good/ images. Re-derive the thresholds with them (then install the bundle as usual):</p>'
        f'<p><code id="recalibrate">{e(command)}</code></p><h2>newest labels</h2><table>{label_rows}</table>'
        f'<h2>recent frames</h2><table id="recent">{frame_rows}</table>'))


def health(ctx: Context, status: dict[str, Any], config: Any, versions: dict[str, str]) -> str:
    """The health document, the config as validated (secrets masked), the versions."""
    vrows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in versions.items())
    problems = status.get("problems") or []
    state = (f'<p class="bad">UNHEALTHY: {e("; ".join(problems))}</p>' if problems else '<p class="ok">healthy</p>')
    return layout(ctx, "Health and config", (
        f'{state}<h2>health</h2><pre id="health">{e(json.dumps(status, indent=1, default=str))}</pre>'
        f'<h2>config (as validated, secrets masked)</h2><pre id="config">{e(json.dumps(config, indent=1))}</pre>'
        f'<h2>versions</h2><table class="kv" id="versions">{vrows}</table>'))
