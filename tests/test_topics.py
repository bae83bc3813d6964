"""The topic tree (edged/topics.py): spelled out literally here, because these strings are the contract
with the line (README, "MQTT contract"), and no other module of edged may build one."""

from __future__ import annotations

import re
from pathlib import Path

from edged.config import Config, parse_config
from edged.topics import Topics

EDGED = Path(__file__).resolve().parent.parent / "edged"


def _config(**mqtt: object) -> Config:
    return parse_config({"station": "line1", "model": {"bundle": "b"}, "cameras": [{"name": "cam1", "source": "0"}],
                         "mqtt": mqtt})


def test_every_topic_of_the_contract() -> None:
    t = Topics.of(_config())
    assert (t.reject, t.result, t.audit, t.status, t.stats, t.trigger) == (
        "edged/line1/reject", "edged/line1/result", "edged/line1/audit", "edged/line1/status", "edged/line1/stats",
        "edged/line1/trigger")
    assert t.camera("cam1") == "edged/line1/camera/cam1"
    assert t.command("recipe") == "edged/line1/cmd/recipe"
    assert t.display == "edged/line1/..."


def test_the_prefix_comes_from_the_config() -> None:
    t = Topics.of(_config(prefix="plant/hall3"))
    assert t.base == "plant/hall3/line1" and t.reject == "plant/hall3/line1/reject"


def test_no_other_module_builds_a_topic() -> None:
    """Only topics.py joins mqtt.prefix and the station; the others take their topics from Topics."""
    offenders = []
    for path in sorted(EDGED.glob("*.py")):
        if path.name == "topics.py":
            continue
        text = path.read_text(encoding="utf-8")
        # mqtt.prefix read in code (not named in a log line), or an f-string joining something with a subtopic
        if re.search(r"\.prefix\b(?! or)|\}/(reject|result|audit|status|stats|trigger|camera|cmd)\b", text):
            offenders.append(path.name)
    assert offenders == []
