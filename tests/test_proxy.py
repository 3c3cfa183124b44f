"""
Listeners behind a load balancer: C{haproxy:} endpoints (PROXY protocol v1/v2, parsed by Twisted)
wrap any other endpoint, and the client address the balancer reports is the one mqttd uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mqttd.config import ListenerConfig, load_config
from tests import e2e
from tests.listeners import Listen, tcpListener
from tests.test_websocket import RawWebSocket

PROXY_HEADER = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 1883\r\n"


def proxied(**keys: Any) -> ListenerConfig:
    return tcpListener(endpoint=f"haproxy:tcp:0:interface={e2e.HOST}", **keys)


def clientAddresses(running: e2e.RunningBroker) -> list[str]:
    return running.call(lambda: [p.clientAddress for p in running.factory.live])


def test_haproxyEndpointParses(tmp_path: Path) -> None:
    """A haproxy: endpoint around tcp: is accepted by the configuration as is."""
    path = tmp_path / "mqttd.ini"
    path.write_text("[listener:lb]\nendpoint = haproxy:tcp:1883:interface=127.0.0.1\n")
    (listener,) = load_config(str(path)).listeners
    assert listener.endpoint == "haproxy:tcp:1883:interface=127.0.0.1"


def test_proxyHeaderGivesClientAddress(listen: Listen) -> None:
    """The address in the PROXY header, not the balancer's, is the client's address."""
    started = listen(proxied())
    raw = e2e.RawClient(started.port)
    try:
        raw.send(PROXY_HEADER)
        raw.connect("behind-lb")
        assert clientAddresses(started.broker) == ["203.0.113.7:56324"]
    finally:
        raw.close()


def test_proxyHeaderBeforeWebSocket(listen: Listen) -> None:
    """PROXY then a WebSocket upgrade: the MQTT connection still sees the real client address."""
    started = listen(proxied(protocol="websocket"))
    ws = RawWebSocket(started.port)
    try:
        ws.sock.sendall(PROXY_HEADER)
        ws.upgrade()
        ws.sendFrames(e2e.connect_packet("ws-behind-lb"))
        ws.expect(e2e.CONNACK_ACCEPTED)
        assert clientAddresses(started.broker) == ["203.0.113.7:56324"]
    finally:
        ws.close()
