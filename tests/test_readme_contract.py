"""The README's MQTT contract against the code: every topic `Topics` makes is in the topic table, and every key
of every outgoing payload is in the message-keys table, so the tables cannot drift from edged/topics.py and
edged/payloads.py again. Payloads are built from their own dataclass fields (placeholder values by type)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from edged import payloads
from edged.frames import CameraStamp
from edged.topics import Topics

README = Path(__file__).resolve().parents[1] / "README.md"
BASE = "P/S"

# Which topic each payload class goes to (a new payload class must be added here, and to the README).
PAYLOAD_TOPICS: dict[type[payloads.Payload], str] = {
    payloads.Reject: "reject", payloads.Result: "result", payloads.NotInspected: "result",
    payloads.Audit: "audit", payloads.Stats: "stats", payloads.Alarm: "alarm/<name>",
    payloads.TriggerAck: "trigger/ack", payloads.Ready: "ready/<name>", payloads.RecipeAck: "cmd/recipe/ack",
}
NOT_TOPICS = {"display", "command", "of", "base"}  # the tree's name in check-config, the generic cmd/<name>


def contract_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## MQTT contract")
    return text[start:text.index("\n## ", start + 1)]


def table_rows(section: str, header: str) -> dict[str, str]:
    """`.../<suffix>` -> the rest of its row, for the table whose header row starts with `header`."""
    start = section.index(header)
    rows: dict[str, str] = {}
    for line in section[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        m = re.match(r"\| `\.\.\./([^`]+)` \|(.*)", line)
        assert m, f"a row without a `.../topic` first cell: {line[:80]}"
        rows[m.group(1)] = m.group(2)
    return rows


def topic_suffixes() -> set[str]:
    """Every topic of the contract, as `Topics` makes it, with `<name>` for a camera's."""
    tree = Topics(BASE)
    out = set()
    for name in dir(Topics):
        if name.startswith("_") or name in NOT_TOPICS:
            continue
        attr = getattr(Topics, name)
        topic = getattr(tree, name) if isinstance(attr, property) else attr(tree, "<name>")
        assert topic.startswith(BASE + "/"), (name, topic)
        out.add(topic[len(BASE) + 1:])
    return out


def placeholder(annotation: str) -> Any:
    """A value of the field's declared type (annotations are strings here: `from __future__ import annotations`)."""
    kinds: list[tuple[str, Any]] = [("CameraStamp", CameraStamp(frame_id=7, timestamp_ns=9)),
                                    ("bool", True), ("int", 1), ("float", 1.0), ("str", "x"),
                                    ("tuple[str", ("x",)), ("tuple", ()),
                                    ("Mapping", {})]
    for prefix, value in kinds:
        if annotation.startswith(prefix):
            return value
    raise AssertionError(f"no placeholder for a field of type {annotation}: extend placeholder()")


def payload_keys(cls: type[payloads.Payload]) -> set[str]:
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]  # every Payload subclass is a dataclass
    values = {f.name: placeholder(str(f.type)) for f in fields}
    return set(cls(**values).to_dict())


def test_the_topic_table_lists_every_topic_topics_makes() -> None:
    listed = table_rows(contract_section(), "| topic | QoS |")
    assert topic_suffixes() - set(listed) == set(), "made by edged/topics.py, missing from the README's topic table"
    assert set(listed) - topic_suffixes() == set(), "in the README's topic table, not made by edged/topics.py"


def test_every_payload_class_has_a_topic_here() -> None:
    classes = {c for c in vars(payloads).values()
               if isinstance(c, type) and issubclass(c, payloads.Payload) and c is not payloads.Payload}
    assert classes == set(PAYLOAD_TOPICS), "a payload class is missing from PAYLOAD_TOPICS (and the README?)"
    assert set(PAYLOAD_TOPICS.values()) <= topic_suffixes()


def test_the_keys_table_lists_every_key_of_every_payload() -> None:
    rows = table_rows(contract_section(), "| topic | keys |")
    for cls, topic in PAYLOAD_TOPICS.items():
        assert topic in rows, f"{topic} ({cls.__name__}) has no row in the README's message-keys table"
        named = set(re.findall(r"`([a-z_]+)`", rows[topic]))
        missing = payload_keys(cls) - named
        assert not missing, f"{cls.__name__} keys not in the README's {topic} row: {sorted(missing)}"


def test_the_keys_table_names_no_key_a_payload_lacks() -> None:
    """The other way round: a documented key the code no longer sends is a stale row (values in backticks, like
    `defect`, are allowed only where they are some payload's value words listed here)."""
    values = {"defect", "ok", "not_inspected", "fail_safe", "reject", "true", "false", "null", "accepted",
              "refused", "switched", "degraded", "judge", "unacknowledged", "acknowledged", "overruns",
              "unknown_acks"}
    rows = table_rows(contract_section(), "| topic | keys |")
    for topic, row in rows.items():
        keys: set[str] = set()
        for cls, t in PAYLOAD_TOPICS.items():
            if t == topic:
                keys |= payload_keys(cls)
        stale = set(re.findall(r"`([a-z_]+)`", row)) - keys - values
        assert not stale, f"README {topic} row names keys no payload sends: {sorted(stale)}"
