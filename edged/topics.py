"""The MQTT topic tree: the one place a topic string is made (README, "MQTT contract").

Every topic is `<mqtt.prefix>/<station>/<subtopic>`. Building them here, once per config, means the
prefix and station cannot be joined two ways in two modules, and a new topic is one property here.
Outgoing topics are published by `edged.mqtt_link`; incoming ones are keys of its dispatch table.
"""

from __future__ import annotations

from dataclasses import dataclass

from edged.config import Config


@dataclass(frozen=True, slots=True)
class Topics:
    """`base` is `<prefix>/<station>`; each property is one topic of the contract."""

    base: str

    @classmethod
    def of(cls, config: Config) -> Topics:
        """The tree of a config: `<mqtt.prefix>/<station>/...`."""
        return cls(f"{config.mqtt.prefix}/{config.station}")

    def _sub(self, subtopic: str) -> str:
        return f"{self.base}/{subtopic}"

    # --- outgoing ---------------------------------------------------------------------------------
    @property
    def reject(self) -> str:
        """QoS 1, durable: move the part off the line."""
        return self._sub("reject")

    @property
    def result(self) -> str:
        """Every verdict (optional) and every triggered part's one result."""
        return self._sub("result")

    @property
    def audit(self) -> str:
        """Rejects that expired before delivery, so the MES learns of the part."""
        return self._sub("audit")

    @property
    def status(self) -> str:
        """Retained: online, offline (last will), stopped."""
        return self._sub("status")

    @property
    def stats(self) -> str:
        """Every `mqtt.stats_interval_s`: counts, latency, CPU and memory (not retained)."""
        return self._sub("stats")

    def camera(self, name: str) -> str:
        """Retained state of one camera."""
        return self._sub(f"camera/{name}")

    def alarm(self, name: str) -> str:
        """Retained while camera `name` is degraded (input health, reject rate); an empty retained message clears it."""
        return self._sub(f"alarm/{name}")

    @property
    def trigger_ack(self) -> str:
        """QoS 1: each trigger's answer, per camera: accepted, or refused with the reason (edged.handshake)."""
        return self._sub("trigger/ack")

    def ready(self, name: str) -> str:
        """Retained: whether camera `name` would accept a trigger now."""
        return self._sub(f"ready/{name}")

    @property
    def display(self) -> str:
        """`<prefix>/<station>/...`: how `edged check-config` names the whole tree (not a subscription)."""
        return self._sub("...")

    # --- incoming (subscribed; handlers in the MQTT link's dispatch table) -------------------------
    @property
    def trigger(self) -> str:
        """From the line: inspect a part (triggered inspection)."""
        return self._sub("trigger")

    @property
    def recipe_command(self) -> str:
        """From the line: switch a camera (or all) to another recipe (edged.recipes); answered on `recipe_ack`."""
        return self.command("recipe")

    @property
    def recipe_ack(self) -> str:
        """Outgoing, QoS 1: the answer to each recipe command (switched, or refused with the reason)."""
        return self.command("recipe/ack")

    @property
    def result_ack(self) -> str:
        """From the line: the PLC has taken results (`inspection_id`s); results not acked are counted."""
        return self.command("result_ack")

    def command(self, name: str) -> str:
        """`cmd/<name>`: commands to the daemon (none yet; e.g. `cmd/recipe`). Give each its own property."""
        return self._sub(f"cmd/{name}")


# --- the plant side: what `edged collect` subscribes to on the central broker ------------------------
COLLECTED = ("result", "reject", "audit", "stats")  # the subtopics a collector records, one table each


def collector_filters(prefixes: tuple[str, ...], share_group: str | None) -> tuple[str, ...]:
    """`$share/<group>/<prefix>/+/<kind>` for each station prefix filter and kind: MQTT 5 shared
    subscriptions, so the collectors of one group share the messages and one may die. `prefixes` may
    hold `+` levels (checked by `edged.topic_names.check_prefix(wildcards=True)`)."""
    share = f"$share/{share_group}/" if share_group else ""
    return tuple(f"{share}{prefix}/+/{kind}" for prefix in prefixes for kind in COLLECTED)


@dataclass(frozen=True, slots=True)
class StationTopic:
    """A collected message's topic read back: `<line>/<station>/<kind>`, the line being the prefix."""

    line: str
    station: str
    kind: str

    @classmethod
    def parse(cls, topic: str) -> StationTopic | None:
        """None for a topic that is not `<prefix>/<station>/<collected kind>`."""
        levels = topic.rsplit("/", 2)
        if len(levels) != 3 or not all(levels) or levels[2] not in COLLECTED:
            return None
        line, station, kind = levels
        return cls(line=line, station=station, kind=kind)
