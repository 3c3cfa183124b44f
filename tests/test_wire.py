"""
What goes over the wire around errors and limits: packets read before a bad
one are still handled, MQTT 3.1's own fixed header flags, the client's
Maximum Packet Size on every packet the broker sends, the 3.1.1 form of the
CONNACK for an unsupported level, and closes that let the peer read why
(FIN after the last packet; an abort only for a peer that stops reading).
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from zope.interface import implementer

from mqttd.codec import (
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacket,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
)
from mqttd.interfaces import Allow, Credentials, IAuthenticator
from mqttd.protocol import MQTTServerProtocol

from . import e2e
from .conftest import Clients
from .harness import Client, World

# A PUBLISH first byte with QoS 3: malformed at every level [MQTT-3.3.1-4].
QOS_3_PUBLISH = bytes.fromhex("3605000174000161")


def _aborted(client: object) -> bool:
    """Whether the broker reset the connection rather than closing it with FIN."""
    return bool(client.transport.disconnected)  # type: ignore[attr-defined]


# Packets before a malformed one


def test_decoder_keeps_packets_before_the_error() -> None:
    """
    L{Decoder.feed} hands the good packets a read completed before a bad one
    with the error it raises, and none again on the next call.
    """
    decoder = Decoder()
    data = encode(Connect(4, "c")) + encode(Publish("t", b"one")) + QOS_3_PUBLISH
    with pytest.raises(MalformedPacket) as caught:
        decoder.feed(data)
    assert caught.value.packets == [Connect(4, "c"), Publish("t", b"one")]
    with pytest.raises(MalformedPacket) as again:
        decoder.feed(b"")
    assert again.value.packets == []


def test_two_connects_in_one_read_get_the_first_connack() -> None:
    """
    Two CONNECTs in one TCP segment: the first is answered with CONNACK 0,
    then the second closes the connection [MQTT-3.1.0-2], with FIN.
    """
    world = World()
    client = world.client()
    client.sendBytes(encode(Connect(4, "c")) + encode(Connect(4, "c")))
    assert client.read() == [Connack(False, 0)]
    assert client.closed and not _aborted(client)


def test_publish_before_malformed_packet_is_delivered() -> None:
    """
    A valid QoS 0 PUBLISH followed in the same write by a malformed packet is
    delivered before the connection is closed, as mosquitto does.
    """
    world = World()
    sub = world.subscriber("sub", ("t", 0))
    pub = world.connect("pub")
    pub.sendBytes(encode(Publish("t", b"before")) + QOS_3_PUBLISH)
    assert sub.publishes() == [Publish("t", b"before")]
    assert pub.closed


def test_packets_before_error_wait_for_a_slow_handler() -> None:
    """
    The error waits its turn behind a packet whose handling is asynchronous:
    a CONNECT held by an authenticator that answers later still gets its
    CONNACK before the malformed packet read with it closes the connection.
    """
    world = World()
    answers: list[Deferred[Allow]] = []

    @implementer(IAuthenticator)
    class Later:
        def authenticate(self, credentials: Credentials) -> Deferred[Allow]:
            answers.append(Deferred())
            return answers[-1]

    world.broker.authenticators = (Later(),)
    client = world.client()
    client.sendBytes(encode(Connect(4, "c")) + QOS_3_PUBLISH)
    assert client.read() == [] and not client.closed
    answers[0].callback(Allow())
    assert client.read() == [Connack(False, 0)]
    assert client.closed and not _aborted(client)


# MQTT 3.1 fixed header flags


def test_mqtt31_dup_on_resent_pubrel_subscribe_unsubscribe() -> None:
    """
    MQTT 3.1 sends PUBREL, SUBSCRIBE and UNSUBSCRIBE at QoS 1 and sets DUP when
    it re-sends one (3.1 section 2.1); a 3.1 client doing so is answered, not
    disconnected.
    """
    world = World()
    client = world.connect("c31", level=3)
    client.send(Publish("t", b"x", qos=2, packet_id=7))
    assert client.read() == [Pubrec(7)]
    client.sendBytes(bytes.fromhex("6a020007"))  # PUBREL, DUP set
    assert client.read() == [Pubcomp(7)]
    client.sendBytes(bytes.fromhex("8a0600080001" + "7400"))  # SUBSCRIBE "t" QoS 0, DUP set
    assert client.read() == [Suback(8, [0])]
    client.sendBytes(bytes.fromhex("aa05000900017" + "4"))  # UNSUBSCRIBE "t", DUP set
    assert client.read() == [Unsuback(9)]
    assert not client.closed


@pytest.mark.parametrize("first", ["6a", "8a", "aa"])
def test_mqtt311_dup_on_pubrel_subscribe_unsubscribe_closes(first: str) -> None:
    """
    At level 4 the same bytes break the fixed flags 0010 of PUBREL, SUBSCRIBE
    and UNSUBSCRIBE [MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1]: closed.
    """
    world = World()
    client = world.connect("c311")
    body = {"6a": "020007", "8a": "06000800017400", "aa": "0500090001" + "74"}[first]
    client.sendBytes(bytes.fromhex(first + body))
    assert client.closed and client.read() == []


def test_mqtt31_client_decoder_accepts_dup_pubrel() -> None:
    """A client-side decoder for level 3 reads a re-sent PUBREL (0x6A) from a 3.1 server."""
    assert Decoder(server=False, protocol_level=3).feed(bytes.fromhex("6a020005")) == [Pubrel(5)]
    with pytest.raises(MalformedPacket):
        Decoder(server=False, protocol_level=4).feed(bytes.fromhex("6a020005"))


# Maximum Packet Size on every packet sent


def _connect5(world: World, clientId: str, maximum: int) -> Client:
    client = world.client(level=5)
    client.send(Connect(5, clientId, properties=Properties(maximum_packet_size=maximum or None)))
    return client


def test_connack_larger_than_maximum_packet_size_not_sent() -> None:
    """
    A 5.0 client declaring Maximum Packet Size 2 is sent no CONNACK (it is
    larger) [MQTT-3.1.2-24]; the packet is discarded [MQTT-3.1.2-25] and, the
    client never having been told it is connected, the connection closed.
    """
    world = World()
    client = _connect5(world, "tiny", 2)
    assert client.transport.value() == b""
    assert client.closed and not _aborted(client)
    client.finish()
    assert "tiny" not in world.broker.sessions


def test_connack_fits_a_maximum_packet_size_just_large_enough() -> None:
    """
    The CONNACK that exactly fits a 5.0 client's Maximum Packet Size is sent
    [MQTT-3.1.2-24].
    """
    world = World()
    size = len(_connect5(world, "probe", 0).transport.value())
    client = _connect5(world, "fits", size)
    assert len(client.transport.value()) == size
    connack = client.read()[0]
    assert isinstance(connack, Connack) and connack.return_code == 0


def test_suback_and_unsuback_larger_than_maximum_packet_size_not_sent() -> None:
    """
    A SUBACK or UNSUBACK larger than a 5.0 client's Maximum Packet Size is not
    sent [MQTT-3.1.2-24, MQTT-3.1.2-25]; the subscriptions are made and
    removed all the same, and a small one still is.
    """
    world = World()
    size = len(_connect5(world, "probe", 0).transport.value())
    client = _connect5(world, "c", size)
    client.read()
    filters = [(f"t/{i}", 0) for i in range(size + 1)]
    client.send(Subscribe(1, filters))
    assert client.transport.value() == b""
    assert len(world.broker.sessions["c"].subscriptions) == size + 1
    client.send(Unsubscribe(2, [f for f, _ in filters]))
    assert client.transport.value() == b""
    assert not world.broker.sessions["c"].subscriptions
    client.send(Subscribe(3, [("a", 1)]))
    assert client.read() == [Suback(3, [1])]


def test_disconnect_larger_than_maximum_packet_size_not_sent() -> None:
    """
    With Maximum Packet Size 2 the 3-byte DISCONNECT 0x8D of a 5.0 keepalive
    timeout is not sent [MQTT-3.1.2-24, MQTT-3.14.2-3]; the connection is
    closed all the same.  The 2-byte PINGRESP fits and is sent
    [MQTT-3.12.4-1].
    """
    world = World()
    size = len(_connect5(world, "probe", 0).transport.value())
    client = world.client(level=5)
    client.send(Connect(5, "c", keepalive=10, properties=Properties(maximum_packet_size=size)))
    client.read()
    client.protocol.maxPacketSize = 2
    client.sendBytes(b"\xc0\x00")
    assert client.transport.value() == b"\xd0\x00"
    client.transport.clear()
    world.clock.advance(16)
    assert client.transport.value() == b""
    assert client.closed


def test_reason_string_and_user_properties_dropped_to_fit() -> None:
    """
    A packet too large for a 5.0 client's Maximum Packet Size only because of
    its Reason String and User Properties is sent without them
    [MQTT-3.4.2-2, MQTT-3.4.2-3]; one too large even without them is not
    sent at all [MQTT-3.1.2-25].
    """
    world = World()
    client = world.connect("c", level=5)
    protocol: MQTTServerProtocol = client.protocol
    # As a CONNECT's Maximum Packet Size 16 would set it, had the CONNACK fitted.
    protocol.maxPacketSize = 16
    verbose = Properties(reason_string="x" * 40, user_properties=(("k", "v" * 40),))
    protocol.sendPacket(Puback(5, ReasonCode.NO_MATCHING_SUBSCRIBERS, verbose))
    assert client.read() == [Puback(5, ReasonCode.NO_MATCHING_SUBSCRIBERS)]
    protocol.sendPacket(Disconnect(ReasonCode.NORMAL_DISCONNECTION, verbose))
    assert client.read() == [Disconnect(ReasonCode.NORMAL_DISCONNECTION)]
    protocol.maxPacketSize = 3
    protocol.sendPacket(Puback(5, ReasonCode.NO_MATCHING_SUBSCRIBERS, verbose))
    assert client.transport.value() == b""


# Unsupported protocol levels


def test_unsupported_level_in_311_layout_gets_311_connack() -> None:
    """
    "MQTT" level 6 laid out as a 3.1.1 CONNECT, and "MQIsdp" level 4, are
    answered with the 3.1.1 CONNACK return code 1 [MQTT-3.1.2-2], as mosquitto
    does, then closed with FIN.
    """
    world = World()
    for hex_connect in (
        "101000044d5154540602003c000474657374",
        "101000064d51497364700402003c00027463",
    ):
        client = world.client()
        client.sendBytes(bytes.fromhex(hex_connect))
        assert client.transport.value() == b"\x20\x02\x00\x01"
        assert client.closed and not _aborted(client)


def test_malformed_level_5_connect_gets_5_connack() -> None:
    """
    A level 5 CONNECT with a problem is answered in 5.0 form: a reserved flag
    gives CONNACK 0x81 Malformed Packet [MQTT-3.1.2-3, MQTT-3.1.4-1].
    """
    world = World()
    client = world.client(level=5)
    data = bytearray(encode(Connect(5, "c"), 5))
    data[9] |= 0x01
    client.sendBytes(bytes(data))
    assert client.read() == [Connack(False, ReasonCode.MALFORMED_PACKET)]
    assert client.closed


# Orderly close


def test_protocol_error_closes_with_fin_then_aborts_a_stalled_peer() -> None:
    """
    A protocol error closes with FIN (loseConnection), not a reset; a peer that
    has not taken the bytes within the close timeout is then aborted.
    """
    world = World()
    client = world.connect("c")
    client.sendBytes(QOS_3_PUBLISH)
    assert client.closed and not _aborted(client)
    world.clock.advance(MQTTServerProtocol.closeTimeout)
    assert _aborted(client)


def test_closed_in_time_is_not_aborted() -> None:
    """A peer that takes the last bytes before the close timeout is never aborted."""
    world = World()
    client = world.connect("c")
    client.sendBytes(QOS_3_PUBLISH)
    client.finish()
    world.clock.advance(MQTTServerProtocol.closeTimeout)
    assert not _aborted(client)
    assert not world.clock.getDelayedCalls()


def test_keepalive_and_connect_timeout_close_with_fin() -> None:
    """
    Keepalive expiry (3.1.1 and 5.0, the latter after DISCONNECT 0x8D) and the
    CONNECT timeout close with FIN.
    """
    world = World()
    old = world.connect("old", keepalive=10)
    new = world.connect("new", keepalive=10, level=5)
    silent = world.client()
    world.clock.advance(world.broker.config.connect_timeout)
    assert silent.closed and not _aborted(silent)
    world.clock.advance(15)
    assert old.closed and not _aborted(old)
    assert new.read() == [Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)]
    assert new.closed and not _aborted(new)


def test_session_queues_instead_of_writing_while_closing() -> None:
    """
    Between the close and the transport's end nothing more is written: the
    DISCONNECT to a 5.0 client is the last packet [MQTT-3.14.4-1], even if
    the transport asks for more.
    """
    world = World()
    sub = world.connect("sub", level=5)
    sub.send(Subscribe(1, [("t", 0)]))
    sub.read()
    sub.protocol.close("test", ReasonCode.ADMINISTRATIVE_ACTION)
    sub.protocol.resumeProducing()
    world.connect("pub").send(Publish("t", b"late"))
    assert sub.read() == [Disconnect(ReasonCode.ADMINISTRATIVE_ACTION)]


def _read_to_eof(raw: e2e.RawClient) -> bytes:
    """Read until the broker's FIN; fail on a reset."""
    data = b""
    while True:
        try:
            chunk = raw.sock.recv(65536)
        except ConnectionResetError:
            raise AssertionError(f"reset after {data!r}") from None
        if not chunk:
            return data
        data += chunk


def test_e2e_two_connects_in_one_segment(clients: Clients) -> None:
    """
    Over TCP, two CONNECTs in one segment get the first CONNACK, then FIN
    (not a reset that could lose the CONNACK).
    """
    raw = clients.raw()
    raw.send(e2e.connect_packet("a") + e2e.connect_packet("a"))
    assert _read_to_eof(raw) == e2e.CONNACK_ACCEPTED


def test_e2e_bad_level_connack_then_fin(clients: Clients) -> None:
    """Over TCP, "MQTT" level 6 in 3.1.1 layout reads CONNACK return code 1, then EOF."""
    raw = clients.raw()
    raw.send(bytes.fromhex("101000044d5154540602003c000474657374"))
    assert _read_to_eof(raw) == b"\x20\x02\x00\x01"


def test_e2e_publish_before_malformed_delivered(clients: Clients) -> None:
    """
    Over TCP, a QoS 0 PUBLISH and a malformed packet in one write: the PUBLISH
    reaches a paho subscriber; the publisher reads EOF, not a reset.
    """
    sub = clients("sub")
    sub.subscribe("t")
    raw = clients.raw()
    raw.connect("pub")
    raw.send(bytes.fromhex("3006000174686921") + QOS_3_PUBLISH)
    assert _read_to_eof(raw) == b""
    (received,) = sub.wait_for(1)
    assert (received.topic, received.payload) == ("t", b"hi!")


def test_e2e_protocol_error_before_connect_is_orderly(clients: Clients) -> None:
    """Over TCP, a PINGREQ before CONNECT [MQTT-3.1.0-1] ends in EOF, not a reset."""
    raw = clients.raw()
    raw.send(b"\xc0\x00")
    assert _read_to_eof(raw) == b""
