"""The line's web view, served by the daemon itself: live frames, rejects, feedback, health, /metrics, /api/.

`server` is the HTTP side (its own threads), `live` what the pipeline hands it (by reference, at no cost to
the hot path), `queries` the read-only SQLite side, `metrics` the Prometheus collector, `auth` logins and
sessions, `pages` the server-rendered HTML, `images` JPEGs and overlays encoded on demand.
"""
