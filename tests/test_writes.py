"""
A plain TCP connection's packets of one reactor turn go out as one C{send()} on its socket,
without the reactor watching the socket for writability (mqttd.writes); what the kernel does not
take goes through the transport, in order and with nothing lost; over WebSocket they share one
frame.  Real broker, real sockets.
"""

from __future__ import annotations

import socket
from typing import Any, Literal

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock
from wsproto.events import BytesMessage

from mqttd.codec import Decoder, encode
from mqttd.codec.packets import Connack, Connect, Packet, Publish, Suback, Subscribe
from mqttd.message import Message
from mqttd.transports.tcp import Connection
from mqttd.writes import WriteCoalescer
from tests import e2e
from tests.listeners import Listen
from tests.test_websocket import SUBACK_1_QOS0, SUBSCRIBE_T_QOS0, upgraded, wsListener


class _CountingSocket:
    """The broker's socket for one connection, counting the C{send} calls made on it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends: list[int] = []

    def send(self, data: bytes) -> int:
        sent = self._sock.send(data)
        self.sends.append(sent)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _subscriber(port: int, clientId: str, topic: str, rcvbuf: int = 0) -> socket.socket:
    sock = socket.create_connection((e2e.HOST, port))
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.sendall(encode(Connect(4, clientId, keepalive=60), 4))
    sock.sendall(encode(Subscribe(1, [(topic, 0)]), 4))
    got = _read(sock, Decoder(server=False), 2)
    assert isinstance(got[0], Connack) and isinstance(got[1], Suback)
    return sock


def _publishes(sock: socket.socket, n: int) -> list[Publish]:
    got = _read(sock, Decoder(server=False), n)
    assert all(isinstance(p, Publish) for p in got)
    return [p for p in got if isinstance(p, Publish)]


def _read(sock: socket.socket, decoder: Decoder, n: int) -> list[Packet]:
    packets: list[Packet] = []
    sock.settimeout(e2e.TIMEOUT)
    while len(packets) < n:
        data = sock.recv(65536)
        assert data, "connection closed"
        packets += decoder.feed(data)
    return packets


@pytest.mark.parametrize("transport", ["lean", "twisted"])
def test_oneSendPerTurnWithoutWriteWatch(transport: Literal["lean", "twisted"]) -> None:
    """
    Five messages routed to a subscriber in one reactor turn reach its socket in one C{send()},
    and the reactor was never asked to watch that socket for writing: on mqttd's lean TCP
    transport and on Twisted's.
    """
    running = e2e.start_broker(transport=transport)
    sock = _subscriber(running.port, "sub", "t/#")
    try:

        def route() -> tuple[_CountingSocket, bool]:
            transport: Any = running.broker.sessions["sub"].connection.transport  # type: ignore[union-attr]
            counting = _CountingSocket(transport.socket)
            transport.socket = counting
            for i in range(5):
                running.broker.route(Message(f"t/{i}", b"m%d" % i, 0, False))
            return counting, transport in reactor.getWriters()

        counting, watched = running.call(route)
        got = _publishes(sock, 5)
        assert [(p.topic, p.payload) for p in got] == [(f"t/{i}", b"m%d" % i) for i in range(5)]
        assert not watched
        # Read in the reactor thread: the data can reach us before send() has returned there.
        assert running.call(lambda: len(counting.sends)) == 1
    finally:
        sock.close()
        running.stop()


def test_turnWritesFlushedByTheReactorNotATimedCall() -> None:
    """
    With mqttd's dispatch on the reactor (as C{twistd mqttd} installs it) the packets of a turn
    are sent at the turn's end by the reactor itself: no C{DelayedCall} is made for them.
    """
    running = e2e.start_broker()
    sock = _subscriber(running.port, "sub", "t/#")
    try:

        def route() -> list[object]:
            before = set(reactor.getDelayedCalls())
            for i in range(3):
                running.broker.route(Message(f"t/{i}", b"m%d" % i, 0, False))
            return [call for call in reactor.getDelayedCalls() if call not in before]

        made = running.call(route)
        got = _publishes(sock, 3)
        assert [p.payload for p in got] == [b"m0", b"m1", b"m2"]
        assert made == []
    finally:
        sock.close()
        running.stop()


@pytest.mark.parametrize("transport", ["lean", "twisted"])
def test_whatTheKernelRefusesGoesThroughTheTransport(transport: Literal["lean", "twisted"]) -> None:
    """
    A subscriber that stops reading fills its socket: the rest waits in the transport, and once
    it reads again every message arrives, in order; on both transports.
    """
    running = e2e.start_broker(transport=transport)
    sock = _subscriber(running.port, "slow", "big/#", rcvbuf=4096)
    payload = b"x" * 8192
    try:
        # The broker's side takes little too, so the kernel refuses most of the first turn.
        running.call(
            lambda: running.broker.sessions["slow"].connection.transport.socket.setsockopt(  # type: ignore[union-attr]
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
        )
        for batch in range(2):
            running.call(
                lambda b=batch: [
                    running.broker.route(Message("big/t", b"%d-%d:" % (b, i) + payload, 0, False))
                    for i in range(20)
                ]
            )

        def buffered() -> int:
            transport: Any = running.broker.sessions["slow"].connection.transport  # type: ignore[union-attr]
            if transport.__class__ is Connection:
                return len(transport._out or b"")
            return len(transport.dataBuffer) + sum(map(len, transport._tempDataBuffer))

        e2e.wait_until(lambda: running.call(buffered) > 0, "the transport to hold the rest")
        got = _publishes(sock, 40)
        assert [p.payload.split(b":")[0] for p in got] == [
            b"%d-%d" % (b, i) for b in range(2) for i in range(20)
        ]
    finally:
        sock.close()
        running.stop()


def test_webSocketPacketsOfOneTurnShareOneFrame(listen: Listen) -> None:
    """
    Over WebSocket the packets the broker writes to a connection in one reactor turn go out as
    one binary frame, not one frame each (several packets may share a frame [MQTT-6.0.0-2]):
    five PUBLISHes that arrive in one read reach the subscriber as a single message, intact and
    in order.
    """
    started = listen(wsListener())
    ws = upgraded(started)
    try:
        ws.sendFrames(e2e.connect_packet("frames") + SUBSCRIBE_T_QOS0)
        ws.expect(e2e.CONNACK_ACCEPTED + SUBACK_1_QOS0)
        publishes = [encode(Publish("t", b"m%d" % i), 4) for i in range(5)]
        ws.sendFrames(b"".join(publishes))
        data = b""
        while True:
            message = ws.next(BytesMessage)
            data += message.data
            if message.message_finished:
                break
        assert data == b"".join(publishes)
    finally:
        ws.close()


def test_coalescerFallsBackToACallLaterElsewhere() -> None:
    """
    On a reactor without mqttd's dispatch (here a test clock) the turn's writes are flushed by
    one C{callLater(0)} for all the connections that wrote, each flushed once.
    """
    clock = Clock()
    coalescer = WriteCoalescer(clock)
    flushed: list[str] = []

    class Writing:
        def __init__(self, name: str) -> None:
            self.name = name

        def flushWrites(self) -> None:
            flushed.append(self.name)

    for name in ("a", "b"):
        coalescer.waiting(Writing(name))  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) == 1 and flushed == []
    clock.advance(0)
    assert flushed == ["a", "b"]
    coalescer.waiting(Writing("c"))  # type: ignore[arg-type]
    clock.advance(0)
    assert flushed == ["a", "b", "c"]
