"""
Operator limits on connections: C{max_connections} (per listener and for the broker), the
listen backlog, and keepalive 0 under C{max_keepalive}; and the summary of repeated log lines
that keeps a flood of refusals from flooding the log.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, LogLevel, formatEvent

from mqttd.codec.packets import Connack, Connect
from mqttd.config import DEFAULT_BACKLOG, ConfigError, ListenerConfig, load_config
from mqttd.logsummary import WINDOW, RepeatSummary
from mqttd.protocol import MQTTServerFactory
from mqttd.service import makeBrokerService
from tests.harness import LISTENER, World
from tests.test_logging import Events


def address(host: str = "10.0.0.7", port: int = 50000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


def connectTo(factory: MQTTServerFactory, host: str = "10.0.0.7") -> Any:
    """A connection accepted by C{factory}, or L{None} if it refused it."""
    protocol = factory.buildProtocol(address(host))
    if protocol is not None:
        protocol.makeConnection(StringTransport(peerAddress=address(host)))
    return protocol


def captureLog(world: World) -> Events:
    events = Events()
    world.broker.repeats.log = Logger(observer=events)
    return events


def test_listenerMaxConnections() -> None:
    """
    A listener with C{max_connections = 2} refuses a third connection at once (no protocol is
    built, so the socket is closed before any byte is read), and accepts again once one of the
    two has gone.
    """
    world = World(listener=replace(LISTENER, max_connections=2))
    first, second = connectTo(world.factory), connectTo(world.factory)
    assert first is not None and second is not None
    assert connectTo(world.factory) is None
    first.connectionLost()
    assert connectTo(world.factory) is not None
    assert connectTo(world.factory) is None


def test_brokerMaxConnectionsCountsEveryListener() -> None:
    """
    C{[broker] max_connections} counts the connections of all listeners together: with a limit
    of 2, one connection on each of two listeners fills it.
    """
    world = World(max_connections=2)
    other = MQTTServerFactory(world.broker, replace(LISTENER, name="other"), world.clock)
    a = connectTo(world.factory)
    assert connectTo(other) is not None
    assert connectTo(world.factory) is None
    assert connectTo(other) is None
    a.connectionLost()
    assert connectTo(other) is not None


def test_refusalsSummarisedPerAddress() -> None:
    """
    A flood of refused connections from one address writes one line, then, when the minute is
    up, one line with the count of the rest ("and 4,812 more in the last minute"); another
    address gets its own first line.
    """
    world = World(listener=replace(LISTENER, max_connections=1))
    events = captureLog(world)
    connectTo(world.factory)
    for _ in range(4813):
        assert connectTo(world.factory, "10.0.0.9") is None
    assert connectTo(world.factory, "10.0.0.10") is None
    lines = [formatEvent(e) for e in events]
    assert lines == [
        "connection from 10.0.0.9 to listener test refused: listener max_connections (1) reached",
        "connection from 10.0.0.10 to listener test refused: listener max_connections (1) reached",
    ]
    world.clock.advance(WINDOW)
    # The accepted connection's own line (no CONNECT in time) is about another address.
    events[:] = [e for e in events if e["source"] != "10.0.0.7"]
    assert formatEvent(events[2]) == (
        "10.0.0.9: connections refused, listener max_connections (1) reached, and 4,812 more"
        " in the last minute"
    )
    assert len(events) == 3
    assert all(e["log_level"] == LogLevel.warn for e in events)


def test_summaryBounded() -> None:
    """
    More addresses than the summary tracks close the oldest windows early (their counts are
    written then), so memory stays bounded in a flood from many addresses.
    """
    events = Events()
    limit = 100
    summary = RepeatSummary(MemoryReactorClock(), Logger(observer=events), limit)
    for i in range(limit):
        summary.emit(LogLevel.info, f"h{i}", "k", "first from {source}")
    summary.emit(LogLevel.info, "h0", "k", "first from {source}")
    summary.emit(LogLevel.info, "new", "k", "first from {source}")
    assert len(summary._windows) == limit
    assert formatEvent(events[-2]) == "h0: k, and 1 more in the last minute"
    assert formatEvent(events[-1]) == "first from new"


def test_keepaliveZeroAcceptedUnderMaxKeepalive() -> None:
    """
    With C{max_keepalive = 60}, a 3.1.1 client asking for keepalive 0 is accepted, as mosquitto
    2.0 does (paho's interoperability suite connects so); C{allow_zero_keepalive = false} refuses
    it with CONNACK 2 as before; a keepalive above the maximum is refused either way.
    """
    world = World(max_keepalive=60)
    client = world.client()
    client.send(Connect(4, "zero", keepalive=0))
    assert client.read() == [Connack(False, 0)]
    strict = World(max_keepalive=60, allow_zero_keepalive=False)
    for keepalive in (0, 61):
        client = strict.client()
        client.send(Connect(4, "c", keepalive=keepalive))
        assert client.read() == [Connack(False, 2)]
    client = world.client()
    client.send(Connect(4, "c", keepalive=61))
    assert client.read() == [Connack(False, 2)]


def test_backlogDefaultAndKey(tmp_path: Path) -> None:
    """
    A TCP listener listens with a backlog of 1024 by default (Twisted's own is 50), and with
    the listener's C{backlog} when set; the broker really passes it to listen().
    """
    ini = tmp_path / "mqttd.ini"
    ini.write_text(
        "[listener:a]\nendpoint = tcp:1883\n[listener:b]\nendpoint = tcp:1884\nbacklog = 4096\n"
    )
    reactor = MemoryReactorClock()
    service = makeBrokerService(load_config(str(ini)), reactor)
    service.startService()
    try:
        backlogs = {port: backlog for port, _, backlog, _ in reactor.tcpServers}
        assert backlogs == {1883: DEFAULT_BACKLOG, 1884: 4096}
    finally:
        service.stopService()
    endpoint = "tcp:1883:backlog=7"
    assert ListenerConfig("c", endpoint).listenEndpoint() == endpoint


@pytest.mark.parametrize(
    "listener, why",
    [
        ("endpoint = systemd:domain=INET:index=0\nbacklog = 10\n", "only used with tcp:"),
        ("endpoint = tcp:1883:backlog=5\nbacklog = 10\n", "already sets backlog="),
        ("endpoint = tcp:1883\nbacklog = 0\n", "expected a positive integer"),
        ("endpoint = tcp:1883\nmax_connections = -1\n", "expected a non-negative integer"),
        ("endpoint = tcp:1883\nprotocol = http\nmax_connections = 5\n", "only used with MQTT"),
    ],
)
def test_limitKeysChecked(tmp_path: Path, listener: str, why: str) -> None:
    """The new keys are checked like every other: one ConfigError naming section and key."""
    ini = tmp_path / "mqttd.ini"
    ini.write_text("[listener:a]\n" + listener)
    with pytest.raises(ConfigError) as e:
        load_config(str(ini))
    assert e.value.section == "listener:a"
    assert why in e.value.why


def test_stopWritesOpenSummaries(tmp_path: Path) -> None:
    """Stopping the broker service writes the counts of windows still open, losing none."""
    ini = tmp_path / "mqttd.ini"
    ini.write_text("[listener:a]\nendpoint = tcp:1883\n")
    service = makeBrokerService(load_config(str(ini)), MemoryReactorClock())
    service.startService()
    events = Events()
    service.broker.repeats.log = Logger(observer=events)
    for _ in range(3):
        service.broker.repeats.emit(LogLevel.warn, "10.0.0.9", "refused", "refused {source}")
    service.stopService()
    assert events.lines() == [
        "refused 10.0.0.9",
        "10.0.0.9: refused, and 2 more in the last minute",
    ]
