"""A plant on loopback: a central mosquitto and station mosquittos bridged to it, as deploy/ describes.

The station broker is the actuators' one (the daemon and the line's PLC talk to it); its `connection`
block forwards the station's topics to the central broker at QoS 1 over a persistent bridge session
(cleansession false, a fixed client id), queueing while the link is down. Both brokers keep QoS 0
messages for offline persistent sessions and the station broker upgrades what it forwards to QoS 1,
so the results published at QoS 0 are carried, acknowledged, hop by hop too.
"""

from __future__ import annotations

from pathlib import Path

from devkit.support import Broker


def central_broker(workdir: Path) -> Broker:
    """The plant's broker: persistent (sessions and queues survive a restart), large in-flight window."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir, persistence=True, max_queued=100_000)
    with broker.conf.open("a", encoding="utf-8") as fh:
        fh.write("queue_qos0_messages true\nmax_inflight_messages 1000\n")
    return broker


def station_broker(workdir: Path, central_port: int, prefix: str, name: str) -> Broker:
    """A station's broker bridging `<prefix>/#` out to the central broker on `central_port`."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Broker(workdir, persistence=False, max_queued=100_000)
    with broker.conf.open("a", encoding="utf-8") as fh:
        fh.write(bridge_block(central_port, prefix, name))
    return broker


def bridge_block(central_port: int, prefix: str, name: str) -> str:
    """The mosquitto.conf lines of one station's bridge (deploy/mosquitto-station.conf, on loopback)."""
    return (f"queue_qos0_messages true\nupgrade_outgoing_qos true\n"
            f"connection {name}\naddress 127.0.0.1:{central_port}\nbridge_protocol_version mqttv50\n"
            f"cleansession false\nclientid bridge-{name}\nlocal_clientid bridge-local-{name}\n"
            f"topic {prefix}/# out 1\nrestart_timeout 1\nkeepalive_interval 5\nnotifications false\n")
