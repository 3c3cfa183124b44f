"""
WebSocket and secure WebSocket listeners end to end: paho-mqtt's WebSocket transport, and a raw
client built on wsproto for what paho will not do (frames cut where the test chooses, text
frames, pings, a bad upgrade).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from mqttd.protocol import MQTTServerFactory
from mqttd.transports.websocket import MAX_UPGRADE_SIZE, MQTTWebSocketProtocol
from tests import e2e
from tests.listeners import PKI, Listen, Started, tcpListener

SUBSCRIBE_T_QOS0 = b"\x82\x06\x00\x01\x00\x01t\x00"
SUBACK_1_QOS0 = b"\x90\x03\x00\x01\x00"
PUBLISH_T_HELLO = b"\x30\x08\x00\x01thello"


def wsListener(**keys: Any) -> Any:
    return tcpListener(protocol="websocket", **keys)


class RawWebSocket:
    """A WebSocket client on a plain socket, with wsproto doing the framing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((e2e.HOST, port), timeout=e2e.TIMEOUT)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.received = b""

    def upgrade(self, target: str = "/mqtt", subprotocols: tuple[str, ...] = ("mqtt",)) -> Event:
        """Send the upgrade request; return the broker's AcceptConnection or RejectConnection."""
        self.sock.sendall(
            self.ws.send(Request(host=e2e.HOST, target=target, subprotocols=list(subprotocols)))
        )
        return self.next(AcceptConnection, RejectConnection)

    def next(self, *kinds: type) -> Any:
        """The next event of one of C{kinds}, skipping others; fails on EOF or timeout."""
        deadline = time.monotonic() + e2e.TIMEOUT
        while time.monotonic() < deadline:
            for event in self.ws.events():
                if isinstance(event, BytesMessage):
                    self.received += event.data
                if isinstance(event, kinds):
                    return event
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed while waiting for {kinds}")
            self.ws.receive_data(data)
        raise AssertionError(f"no {kinds} within {e2e.TIMEOUT} s")

    def sendFrames(self, *chunks: bytes) -> None:
        """Each chunk as its own binary message (one frame each), in one TCP write."""
        self.sock.sendall(b"".join(self.ws.send(BytesMessage(data=c)) for c in chunks))

    def expect(self, data: bytes) -> None:
        """Read binary messages until exactly C{data} has arrived, whatever the framing."""
        while len(self.received) < len(data):
            self.next(BytesMessage)
        got, self.received = self.received[: len(data)], self.received[len(data) :]
        assert got == data

    def closed(self) -> bytes:
        """Read until EOF; return the raw bytes received."""
        data = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()


def upgraded(started: Started) -> RawWebSocket:
    ws = RawWebSocket(started.port)
    accepted = ws.upgrade()
    assert isinstance(accepted, AcceptConnection)
    return ws


def pahoWebSocket(path: str = "/mqtt", tls: PKI | None = None) -> Any:
    def setup(client: Any) -> None:
        client.ws_set_options(path=path)
        if tls is not None:
            client.tls_set(ca_certs=str(tls.ca.path))

    return setup


def test_pahoOverWebSocket(listen: Listen) -> None:
    """paho-mqtt over WebSocket subscribes, publishes and receives, at every QoS."""
    started = listen(wsListener())
    c = e2e.Client(started.port, "ws-paho", transport="websockets", setup=pahoWebSocket())
    try:
        for qos in (0, 1, 2):
            c.subscribe(f"ws/{qos}", qos)
            c.publish(f"ws/{qos}", b"over ws", qos)
            assert c.wait_for(1) == [e2e.Received(f"ws/{qos}", b"over ws", qos, False)]
    finally:
        c.close()


def test_pahoOverSecureWebSocket(pki: PKI, listen: Listen) -> None:
    """paho-mqtt over WSS (WebSocket inside mqttd-managed TLS) verifies the server and talks."""
    started = listen(
        wsListener(
            path="/secure", certificate=str(pki.server.certificate), private_key=str(pki.server.key)
        )
    )
    c = e2e.Client(
        started.port,
        "wss-paho",
        transport="websockets",
        setup=pahoWebSocket("/secure", tls=pki),
    )
    try:
        c.subscribe("wss/t", 1)
        c.publish("wss/t", b"sealed", 1)
        assert c.wait_for(1) == [e2e.Received("wss/t", b"sealed", 1, False)]
    finally:
        c.close()


def test_sessionMovesBetweenTcpAndWebSocket(listen: Listen) -> None:
    """
    The broker is transport-blind: a persistent session made over WebSocket is resumed over
    plain TCP on the same broker, with the message queued for it meanwhile.
    """
    started = listen(wsListener())
    running = started.broker
    listener = tcpListener()
    tcpPort = running.call(
        lambda: serverFromString(e2e.reactor, listener.endpoint).listen(
            MQTTServerFactory(running.broker, listener, e2e.reactor)
        )
    )
    try:
        ws = e2e.Client(
            started.port, "mover", clean=False, transport="websockets", setup=pahoWebSocket()
        )
        ws.subscribe("move/t", 1)
        ws.disconnect()
        pub = e2e.Client(started.port, "pub", transport="websockets", setup=pahoWebSocket())
        pub.publish("move/t", b"queued", 1)
        pub.close()
        tcp = e2e.Client(tcpPort.getHost().port, "mover", clean=False)
        try:
            assert tcp.session_present
            assert tcp.wait_for(1) == [e2e.Received("move/t", b"queued", 1, False)]
        finally:
            tcp.close()
    finally:
        running.call(tcpPort.stopListening)


def test_subprotocolEchoed(listen: Listen) -> None:
    """[MQTT-6.0.0-4]: the broker selects mqtt, and echoes mqttv3.1 to clients offering only it."""
    started = listen(wsListener())
    for offered, chosen in [
        (("mqtt",), "mqtt"),
        (("mqttv3.1",), "mqttv3.1"),
        (("x", "mqtt"), "mqtt"),
    ]:
        ws = RawWebSocket(started.port)
        try:
            accepted = ws.upgrade(subprotocols=offered)
            assert isinstance(accepted, AcceptConnection)
            assert accepted.subprotocol == chosen
        finally:
            ws.close()


def test_missingOrWrongSubprotocolRefused(listen: Listen) -> None:
    """
    [MQTT-6.0.0-3]: an upgrade offering no mqtt subprotocol is refused with HTTP 400 and the
    connection closed, instead of being accepted as something a browser would drop anyway.
    """
    started = listen(wsListener())
    for offered in [(), ("chat",)]:
        ws = RawWebSocket(started.port)
        try:
            refused = ws.upgrade(subprotocols=offered)
            assert isinstance(refused, RejectConnection) and refused.status_code == 400
            assert ws.next(RejectData).data.startswith(b"the WebSocket subprotocol mqtt")
        finally:
            ws.close()


def test_wrongPathRefused(listen: Listen) -> None:
    """An upgrade for another path than the listener's gets HTTP 404."""
    started = listen(wsListener(path="/broker"))
    ws = RawWebSocket(started.port)
    try:
        refused = ws.upgrade(target="/mqtt")
        assert isinstance(refused, RejectConnection) and refused.status_code == 404
    finally:
        ws.close()
    ws = RawWebSocket(started.port)
    try:
        assert isinstance(ws.upgrade(target="/broker?token=1"), AcceptConnection)
    finally:
        ws.close()


def test_packetSplitAcrossFrames(listen: Listen) -> None:
    """
    [MQTT-6.0.0-2]: a CONNECT cut into two binary messages, and a PUBLISH cut into a fragmented
    message (a non-final frame and its continuation), are each read as one packet.
    """
    started = listen(wsListener())
    ws = upgraded(started)
    try:
        connect = e2e.connect_packet("split")
        ws.sendFrames(connect[:5], connect[5:])
        ws.expect(e2e.CONNACK_ACCEPTED)
        ws.sendFrames(SUBSCRIBE_T_QOS0)
        ws.expect(SUBACK_1_QOS0)
        ws.sock.sendall(
            ws.ws.send(BytesMessage(data=PUBLISH_T_HELLO[:4], message_finished=False))
            + ws.ws.send(BytesMessage(data=PUBLISH_T_HELLO[4:], message_finished=True))
        )
        ws.expect(PUBLISH_T_HELLO)
    finally:
        ws.close()


def test_severalPacketsInOneFrame(listen: Listen) -> None:
    """
    [MQTT-6.0.0-2]: CONNECT, SUBSCRIBE and PUBLISH in a single binary frame are all handled, in
    order: the client gets CONNACK, SUBACK and its own message back.
    """
    started = listen(wsListener())
    ws = upgraded(started)
    try:
        ws.sendFrames(e2e.connect_packet("several") + SUBSCRIBE_T_QOS0 + PUBLISH_T_HELLO)
        ws.expect(e2e.CONNACK_ACCEPTED + SUBACK_1_QOS0 + PUBLISH_T_HELLO)
    finally:
        ws.close()


def test_pingAnsweredAndCloseEchoed(listen: Listen) -> None:
    """A WebSocket ping gets its pong; a close frame gets a close frame back, then EOF."""
    started = listen(wsListener())
    ws = upgraded(started)
    try:
        ws.sendFrames(e2e.connect_packet("pinger"))
        ws.expect(e2e.CONNACK_ACCEPTED)
        ws.sock.sendall(ws.ws.send(Ping(payload=b"are you there")))
        assert ws.next(Pong).payload == b"are you there"
        ws.sock.sendall(ws.ws.send(CloseConnection(code=1000)))
        assert ws.next(CloseConnection).code == 1000
        assert ws.closed() == b""
        started.broker.wait_gone("pinger")
    finally:
        ws.close()


def test_textFrameClosesConnection(listen: Listen) -> None:
    """[MQTT-6.0.0-1]: a text frame closes the connection (close code 1003)."""
    started = listen(wsListener())
    ws = upgraded(started)
    try:
        ws.sendFrames(e2e.connect_packet("texter"))
        ws.expect(e2e.CONNACK_ACCEPTED)
        ws.sock.sendall(ws.ws.send(TextMessage(data="hello")))
        assert ws.next(CloseConnection).code == 1003
        started.broker.wait_gone("texter")
    finally:
        ws.close()


def test_oversizedUpgradeRefused(listen: Listen) -> None:
    """An upgrade request larger than MAX_UPGRADE_SIZE is cut off before it is complete."""
    started = listen(wsListener())
    ws = RawWebSocket(started.port)
    try:
        filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
        head = b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        try:
            for _ in range(MAX_UPGRADE_SIZE // len(filler) + 2):
                ws.sock.sendall(filler if head is None else head + filler)
                head = None  # type: ignore[assignment]
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert b"101" not in ws.closed()
    finally:
        ws.close()


def test_slowUpgradeTimesOut(listen: Listen) -> None:
    """An upgrade not completed within connect_timeout is dropped without an answer."""
    started = listen(wsListener(), connect_timeout=0.3)
    ws = RawWebSocket(started.port)
    try:
        ws.sock.sendall(b"GET /mqtt HTTP/1.1\r\n")
        assert ws.closed() == b""
    finally:
        ws.close()


def test_mqtt5OverWebSocket(listen: Listen) -> None:
    """
    A 5.0 client over WebSocket: an upgrade offering no "mqtt" is refused [MQTT-6.0.0-3]; one
    offering it gets "mqtt" selected [MQTT-6.0.0-4]; its 5.0 CONNECT in a binary frame is answered
    by a 5.0 CONNACK in binary frames, and a text frame then closes the connection (1003)
    [MQTT-6.0.0-1].
    """
    started = listen(wsListener())
    ws = RawWebSocket(started.port)
    try:
        refused = ws.upgrade(subprotocols=("mqttv5",))
        assert isinstance(refused, RejectConnection) and refused.status_code == 400
    finally:
        ws.close()
    ws = RawWebSocket(started.port)
    try:
        accepted = ws.upgrade(subprotocols=("mqttv5", "mqtt"))
        assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "mqtt"
        connect5 = bytes.fromhex("100f00044d5154540502003c000002") + b"w5"
        ws.sendFrames(connect5)
        while len(ws.received) < 2:
            ws.next(BytesMessage)
        assert ws.received[:1] == b"\x20"
        while len(ws.received) < 2 + ws.received[1]:
            ws.next(BytesMessage)
        connack = ws.received[2 : 2 + ws.received[1]]
        # Flags, reason code 0x00 Success, then a 5.0 Property Length.
        assert connack[:2] == b"\x00\x00" and len(connack) > 2
        ws.sock.sendall(ws.ws.send(TextMessage(data="hello")))
        assert ws.next(CloseConnection).code == 1003
        started.broker.wait_gone("w5")
    finally:
        ws.close()


def test_framesOfOneReadReachMQTTAsOneRead() -> None:
    """
    The binary frames that arrive in one read are handed to the MQTT protocol as one read, in
    order (one decoder pass for many small messages), and frames of later reads as later ones.
    """

    class Recorder(Protocol):
        def __init__(self) -> None:
            self.reads: list[bytes] = []

        def dataReceived(self, data: bytes) -> None:
            self.reads.append(data)

    transport = StringTransport()
    ws = MQTTWebSocketProtocol(
        Factory.forProtocol(Recorder),
        IPv4Address("TCP", "127.0.0.1", 1),
        "/mqtt",
        MemoryReactorClock(),
        10.0,
    )
    ws.makeConnection(transport)
    client = WSConnection(ConnectionType.CLIENT)
    ws.dataReceived(client.send(Request(host="h", target="/mqtt", subprotocols=["mqtt"])))
    client.receive_data(transport.value())
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    ws.dataReceived(b"".join(client.send(BytesMessage(data=c)) for c in (b"ab", b"cd", b"ef")))
    ws.dataReceived(client.send(BytesMessage(data=b"gh")))
    assert isinstance(ws.wrapped, Recorder)
    assert ws.wrapped.reads == [b"abcdef", b"gh"]
