"""A plant on loopback: a central mosquitto and station mosquittos bridged to it, as deploy/ describes.

The station broker is the actuators' one (the daemon and the line's PLC talk to it); its `connection`
block forwards the station's topics to the central broker at QoS 1 over a persistent bridge session
(cleansession false, a fixed client id), queueing while the link is down. Both brokers keep QoS 0
messages for offline persistent sessions and the station broker upgrades what it forwards to QoS 1,
so the results published at QoS 0 are carried, acknowledged, hop by hop too.
"""

from __future__ import annotations

import contextlib
import socket
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


class Link:
    """The plant network between a line's bridge and the central broker, on loopback, that a test can cut.

    A TCP forwarder from its own port to the central broker's; `cut()` drops every connection and refuses
    new ones (the bridge sees the network go), `restore()` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        import threading

        from devkit.localbroker import free_port

        self.port = free_port()
        self.target_port = target_port
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def restore(self) -> None:
        """Accept connections (again) and forward them."""
        import threading

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="link-accept", daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                return  # cut (the listener closed), or the central broker is not there: the bridge retries
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), name="link-pump", daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection and stop listening."""
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it, or the port stays taken
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
