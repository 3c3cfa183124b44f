"""
RFC 6455 frames on a WebSocket listener, end to end over real sockets: frames built here by hand
(so a client can break the rules wsproto would not let it break), the broker's answers read with
wsproto (which rejects a server frame that is masked or not in its shortest form); and the frame
reader (mqttd/transports/wsframes.py) alone, fed the same frames cut at every byte.
"""

from __future__ import annotations

import gc
import os
import random
import weakref

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Pong, Request

from mqttd.transports.websocket import MQTTWebSocketProtocol
from mqttd.transports.wsframes import (
    CLOSE,
    PING,
    PONG,
    Control,
    FrameDecoder,
    FrameError,
    closeFrame,
)
from tests import e2e
from tests.listeners import Listen, Started
from tests.test_websocket import RawWebSocket, upgraded, wsListener

BINARY, CONTINUATION, TEXT = 0x2, 0x0, 0x1
SUBSCRIBE_T_QOS0 = b"\x82\x06\x00\x01\x00\x01t\x00"
SUBACK_1_QOS0 = b"\x90\x03\x00\x01\x00"


def publishT(payload: bytes) -> bytes:
    """A QoS 0 PUBLISH to topic "t", encoded by hand."""
    body = b"\x00\x01t" + payload
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return b"\x30" + bytes(length) + body


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    lengthForm: int | None = None,
) -> bytes:
    """
    One client frame, masked with a random key unless C{masked} is false; C{length} overrides
    the length announced, C{lengthForm} (7, 16 or 64 bits) the way it is written.
    """
    n = len(payload) if length is None else length
    form = lengthForm or (7 if n < 126 else 16 if n < 65536 else 64)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    if form == 7:
        head += bytes([bit | n])
    elif form == 16:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def connected(started: Started, clientId: str) -> RawWebSocket:
    """A raw WebSocket client, upgraded and CONNECTed in one frame of its own making."""
    ws = upgraded(started)
    ws.sock.sendall(frame(BINARY, e2e.connect_packet(clientId)))
    ws.expect(e2e.CONNACK_ACCEPTED)
    return ws


def closedWith(ws: RawWebSocket, started: Started, clientId: str) -> int:
    """The code of the broker's CLOSE frame; the broker must then end the connection."""
    code = ws.next(CloseConnection).code
    assert ws.closed() == b""
    started.broker.wait_gone(clientId)
    return int(code)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("unmasked", frame(BINARY, publishT(b"x"), masked=False)),
        ("reserved bits", frame(BINARY, publishT(b"x"), rsv=4)),
        ("unknown opcode", frame(0x3, b"x")),
        ("unknown control opcode", frame(0xB, b"x")),
        ("fragmented ping", frame(PING, b"x", fin=False)),
        ("ping over 125 bytes", frame(PING, b"p" * 126)),
        ("continuation without a start", frame(CONTINUATION, publishT(b"x"))),
        ("16-bit length for 5 bytes", frame(BINARY, b"\xc0\x00" + b"abc", lengthForm=16)),
        ("64-bit length for 200 bytes", frame(BINARY, b"\x00" * 200, lengthForm=64)),
        ("64-bit length with its top bit set", frame(BINARY, b"", length=1 << 63)),
        ("close with a 1-byte payload", frame(CLOSE, b"\x03")),
        ("close with code 1005", frame(CLOSE, (1005).to_bytes(2, "big"))),
        ("close with code 999", frame(CLOSE, (999).to_bytes(2, "big"))),
        ("close with code 2000", frame(CLOSE, (2000).to_bytes(2, "big"))),
    ],
)
def test_badFrameClosesWithProtocolError(listen: Listen, name: str, bad: bytes) -> None:
    """
    RFC 6455 sections 5.1-5.5 and 7.4: a frame breaking the framing rules gets a CLOSE frame
    with code 1002 (protocol error), the TCP connection ends and the MQTT client is gone; the
    PUBLISH sent before it in the same write still reaches the subscriber, in order.
    """
    started = listen(wsListener())
    ws = connected(started, "bad")
    try:
        ws.sock.sendall(frame(BINARY, SUBSCRIBE_T_QOS0))
        ws.expect(SUBACK_1_QOS0)
        ws.sock.sendall(frame(BINARY, publishT(b"before")) + bad)
        ws.expect(publishT(b"before"))
        assert closedWith(ws, started, "bad") == 1002, name
    finally:
        ws.close()


def test_textInsideFragmentedMessageIsProtocolError(listen: Listen) -> None:
    """
    RFC 6455 section 5.4: a new data frame (here a text one) before a fragmented binary message's
    final frame is a protocol error (1002), not the 1003 a text message alone gets
    [MQTT-6.0.0-1]; so is a second binary start.
    """
    started = listen(wsListener())
    for second in (frame(TEXT, b"hi"), frame(BINARY, b"\x00")):
        ws = connected(started, "frag")
        try:
            ws.sock.sendall(frame(BINARY, b"\x30", fin=False) + second)
            assert closedWith(ws, started, "frag") == 1002
        finally:
            ws.close()


def test_controlFramesBetweenFragments(listen: Listen) -> None:
    """
    RFC 6455 section 5.4: control frames may come between the fragments of a message. A PUBLISH
    cut into three fragments with a PING and a PONG between them is delivered whole, and the
    PING answered with a PONG carrying its payload.
    """
    started = listen(wsListener())
    ws = connected(started, "interleaved")
    try:
        ws.sock.sendall(frame(BINARY, SUBSCRIBE_T_QOS0))
        ws.expect(SUBACK_1_QOS0)
        packet = publishT(b"in three parts")
        ws.sock.sendall(
            frame(BINARY, packet[:3], fin=False)
            + frame(PING, b"between")
            + frame(CONTINUATION, packet[3:9], fin=False)
            + frame(PONG, b"unasked")
            + frame(CONTINUATION, packet[9:])
        )
        assert ws.next(Pong).payload == b"between"
        ws.expect(packet)
    finally:
        ws.close()


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        ((1000).to_bytes(2, "big") + b"bye", 1000),
        ((4321).to_bytes(2, "big"), 4321),
        (b"", 1005),
        ((1000).to_bytes(2, "big") + b"\xff\xfe", 1007),
    ],
)
def test_closeAnswered(listen: Listen, payload: bytes, answer: int) -> None:
    """
    RFC 6455 sections 5.5.1 and 7.4: a client's CLOSE is answered with a CLOSE echoing its code
    (none, which wsproto reports as 1005, for one without a code), one whose reason is not UTF-8
    with 1007; then the broker ends the connection and the MQTT client is gone.
    """
    started = listen(wsListener())
    ws = connected(started, "closer")
    try:
        ws.sock.sendall(frame(CLOSE, payload))
        assert closedWith(ws, started, "closer") == answer
    finally:
        ws.close()


def test_frameAnnouncedHugeIsStreamed(listen: Listen) -> None:
    """
    A binary frame announcing 2**40 bytes is not buffered whole: the CONNECT and SUBSCRIBE at its
    start are answered while the frame goes on, and a PUBLISH later in it is delivered.
    """
    started = listen(wsListener())
    ws = upgraded(started)
    try:
        key = os.urandom(4)
        data = e2e.connect_packet("huge") + SUBSCRIBE_T_QOS0
        head = frame(BINARY, b"", length=1 << 40)[:-4] + key
        masked = bytes(b ^ key[i % 4] for i, b in enumerate(data + publishT(b"later")))
        ws.sock.sendall(head + masked[: len(data)])
        ws.expect(e2e.CONNACK_ACCEPTED + SUBACK_1_QOS0)
        ws.sock.sendall(masked[len(data) :])
        ws.expect(publishT(b"later"))
    finally:
        ws.close()


def test_packetOverMaximumSizeAcrossFramesCloses(listen: Listen) -> None:
    """
    The MQTT limit still bounds what a client sends, however it is framed: a PUBLISH whose
    Remaining Length exceeds max_packet_size, cut over several frames, ends the connection.
    """
    started = listen(wsListener(), max_packet_size=1000)
    ws = connected(started, "big")
    try:
        packet = publishT(b"x" * 2000)
        ws.sock.sendall(
            frame(BINARY, packet[:600], fin=False)
            + frame(CONTINUATION, packet[600:1200], fin=False)
            + frame(CONTINUATION, packet[1200:])
        )
        started.broker.wait_gone("big")
        ws.closed()
    finally:
        ws.close()


@pytest.mark.parametrize("size", [60, 200, 70_000])
def test_serverFramesInEveryLengthForm(listen: Listen, size: int) -> None:
    """
    RFC 6455 section 5.2: the broker's binary frames carry packets of every size in the 7-, 16-
    and 64-bit length forms, unmasked and in the shortest form (wsproto's client rejects
    others), and several packets of one turn arrive whole.
    """
    started = listen(wsListener())
    ws = connected(started, "sizes")
    try:
        ws.sock.sendall(frame(BINARY, SUBSCRIBE_T_QOS0))
        ws.expect(SUBACK_1_QOS0)
        packets = [publishT(bytes([i]) * size) for i in range(3)]
        ws.sock.sendall(b"".join(frame(BINARY, p) for p in packets))
        ws.expect(b"".join(packets))
    finally:
        ws.close()


def test_brokerCloseIsAFrame(listen: Listen) -> None:
    """
    When the MQTT side ends the connection (a second CONNECT, [MQTT-3.1.0-2]) the client gets a
    CLOSE frame with code 1000 before the TCP connection ends.
    """
    started = listen(wsListener())
    ws = connected(started, "twice")
    try:
        ws.sock.sendall(frame(BINARY, e2e.connect_packet("twice")))
        assert closedWith(ws, started, "twice") == 1000
    finally:
        ws.close()


# The frame reader alone


def clientFrames() -> tuple[bytes, list[bytes | tuple[int, bytes]]]:
    """A stream of client frames of every kind and length form, and what it should decode to."""
    rng = random.Random(6455)
    sizes = [rng.choice([0, 1, 3, 64, 130, 300]) for _ in range(40)]
    sizes[20] = 70_000
    packets = [publishT(bytes([i]) * size) for i, size in enumerate(sizes)]
    stream = b""
    expected: list[bytes | tuple[int, bytes]] = []
    run = b""
    for i, packet in enumerate(packets):
        if i % 7 == 3:
            cut = len(packet) // 2
            stream += frame(BINARY, packet[:cut], fin=False) + frame(PING, b"p%d" % i)
            expected += [run + packet[:cut], (PING, b"p%d" % i)]
            stream += frame(CONTINUATION, packet[cut:])
            run = packet[cut:]
        else:
            stream += frame(BINARY, packet)
            run += packet
    stream += frame(BINARY, b"") + frame(CLOSE, (1000).to_bytes(2, "big"))
    expected += [run, (CLOSE, (1000).to_bytes(2, "big"))]
    return stream, expected


def decodeInPieces(stream: bytes, cuts: list[int]) -> list[bytes | tuple[int, bytes]]:
    """Feed C{stream} cut at C{cuts}; the binary bytes between control frames joined."""
    decoder = FrameDecoder()
    got: list[bytes | tuple[int, bytes]] = []
    run = b""
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        for event in decoder.feed(stream[start:stop]):
            assert not isinstance(event, FrameError), event.reason
            if isinstance(event, Control):
                got += [run, (event.opcode, event.payload)]
                run = b""
            else:
                run += event
    if run:
        got.append(run)
    return got


def test_frameReaderWhateverTheReads() -> None:
    """
    The frame reader gives the same bytes and control frames however the stream is cut: in one
    read, byte by byte, and at random places (frames and masks continued across reads).
    """
    stream, expected = clientFrames()
    rng = random.Random(19)
    assert decodeInPieces(stream, []) == expected
    assert decodeInPieces(stream, list(range(1, len(stream)))) == expected
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 300))
        assert decodeInPieces(stream, cuts) == expected


def test_frameReaderStopsAfterClose() -> None:
    """RFC 6455 section 5.5.1: nothing after a client's CLOSE is read, even a valid frame."""
    decoder = FrameDecoder()
    events = decoder.feed(frame(CLOSE, b"") + frame(BINARY, b"more"))
    assert [(e.opcode, e.payload) for e in events if isinstance(e, Control)] == [(CLOSE, b"")]
    assert len(events) == 1
    assert decoder.feed(frame(BINARY, b"more")) == []


def test_closeFrameReasonCutToFit() -> None:
    """A CLOSE frame's payload stays within 125 bytes, cut on a UTF-8 character boundary."""
    data = closeFrame(1002, "é" * 200)
    assert data[0] == 0x88 and data[1] == len(data) - 2 <= 125
    assert data[4:].decode("utf-8") == "é" * ((len(data) - 4) // 2)


def test_handshakeObjectsReleasedOnUpgrade() -> None:
    """
    Once the upgrade is accepted, wsproto's handshake (its h11 connection and buffers, ~4.6 KB
    per connection by tracemalloc) is let go: the frame reader is all an open connection keeps.
    """
    ws = MQTTWebSocketProtocol(
        Factory.forProtocol(Protocol),
        IPv4Address("TCP", "127.0.0.1", 1),
        "/mqtt",
        MemoryReactorClock(),
        10.0,
    )
    ws.makeConnection(StringTransport())
    handshake = weakref.ref(ws._ws)
    client = WSConnection(ConnectionType.CLIENT)
    ws.dataReceived(client.send(Request(host="h", target="/mqtt", subprotocols=["mqtt"])))
    assert ws.wrapped is not None
    gc.collect()
    assert handshake() is None
