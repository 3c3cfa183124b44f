"""
TCP_NODELAY per listener: on by default, so small packets (a PUBACK, a chat message) leave at
once instead of waiting for the peer's ACK of the previous segment; off with C{tcp_nodelay =
false}.  Checked on the broker's own socket of a real connection, plain and under WebSocket.
"""

from __future__ import annotations

import _socket
import socket
from pathlib import Path
from typing import Any

import pytest

from mqttd.config import ConfigError, load_config
from tests import e2e
from tests.listeners import start_listener, tcpListener
from tests.test_websocket import pahoWebSocket


def _brokerSocketNoDelay(running: e2e.RunningBroker, clientId: str) -> int:
    """TCP_NODELAY of the broker's socket for C{clientId}'s connection, found under its layers."""

    def read() -> int:
        transport: Any = running.broker.sessions[clientId].connection.transport  # type: ignore[union-attr]
        # Twisted's transport gives a socket.socket; mqttd's lean one the _socket.socket under it.
        while not hasattr(transport, "getHandle") or not isinstance(
            transport.getHandle(), _socket.socket
        ):
            transport = transport.transport
        handle: _socket.socket = transport.getHandle()
        return handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    return running.call(read)


@pytest.mark.parametrize("keys, expected", [({}, True), ({"tcp_nodelay": False}, False)])
def test_tcpNoDelayPerListener(keys: dict[str, Any], expected: bool) -> None:
    """A TCP listener's connections have TCP_NODELAY unless the listener turns it off."""
    started = start_listener(tcpListener(**keys))
    client = e2e.Client(started.port, "nagle")
    try:
        assert bool(_brokerSocketNoDelay(started.broker, "nagle")) is expected
    finally:
        client.close()
        started.broker.stop()


def test_tcpNoDelayUnderWebSocket() -> None:
    """The MQTT connection inside a WebSocket sets TCP_NODELAY on the TCP socket beneath."""
    started = start_listener(tcpListener(protocol="websocket"))
    client = e2e.Client(started.port, "ws-nagle", transport="websockets", setup=pahoWebSocket())
    try:
        assert _brokerSocketNoDelay(started.broker, "ws-nagle")
    finally:
        client.close()
        started.broker.stop()


def test_tcpNoDelayKey(tmp_path: Path) -> None:
    """C{tcp_nodelay} is a boolean listener key, true by default; other values stop start-up."""
    ini = tmp_path / "mqttd.ini"
    ini.write_text(
        "[listener:a]\nendpoint = tcp:1883\n"
        "[listener:b]\nendpoint = tcp:1884\ntcp_nodelay = false\n"
    )
    listeners = {listener.name: listener for listener in load_config(str(ini)).listeners}
    assert listeners["a"].tcp_nodelay is True
    assert listeners["b"].tcp_nodelay is False
    ini.write_text("[listener:a]\nendpoint = tcp:1883\ntcp_nodelay = sometimes\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(ini))
    assert (e.value.section, e.value.key) == ("listener:a", "tcp_nodelay")
