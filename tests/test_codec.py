"""
Tests for L{mqttd.codec}: the wire vectors of L{tests.vectors}, the hostile
inputs of bad-inputs.md that a codec can see, and property-based round trips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttd.codec import (
    MAX_REMAINING_LENGTH,
    Connack,
    Connect,
    DecodeError,
    Decoder,
    Disconnect,
    IdentifierRejected,
    MalformedPacket,
    Packet,
    PacketTooLarge,
    Pingreq,
    Pingresp,
    ProtocolViolation,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    UnacceptableProtocol,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_remaining_length,
    publish_prefix,
)

from .vectors import BAD, BOTH, CLIENT, CONNECT_31, CONNECT_311, GOOD, SERVER, BadVector, Vector

MiB = 1024 * 1024


def _decoders(vector: Vector) -> Iterator[tuple[str, Decoder]]:
    """
    Every decoder state in which C{vector} must decode: a fresh server for a
    CONNECT, a server after a 3.1.1 and after a 3.1 CONNECT for the rest, and
    a client for what a client receives.
    """
    if vector.direction in (SERVER, BOTH):
        if isinstance(vector.packet, Connect):
            yield "server", Decoder()
        else:
            for label, connect in (("3.1.1", CONNECT_311), ("3.1", CONNECT_31)):
                decoder = Decoder()
                assert len(decoder.feed(connect)) == 1
                yield f"server after {label} CONNECT", decoder
    if vector.direction in (CLIENT, BOTH):
        yield "client", Decoder(server=False)


def _bad_decoder(vector: BadVector) -> Decoder:
    if vector.direction == CLIENT:
        return Decoder(server=False)
    decoder = Decoder()
    if vector.connected:
        assert len(decoder.feed(CONNECT_311)) == 1
    return decoder


def _feed_bytewise(decoder: Decoder, data: bytes) -> list[Packet]:
    packets: list[Packet] = []
    for i in range(len(data)):
        packets += decoder.feed(data[i : i + 1])
    return packets


def _ids(vectors: list[Vector] | list[BadVector]) -> list[str]:
    return [v.name for v in vectors]


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_good_vector_decodes_whole(vector: Vector) -> None:
    """
    Each good vector, fed as one chunk, decodes to exactly its packet in every
    direction it is valid for, and leaves nothing buffered.  Together the
    vectors cover every packet type of 3.1 and 3.1.1 and the statements they
    list (e.g. [MQTT-3.1.0-1], [MQTT-3.1.2-9], [MQTT-1.5.3-3], [MQTT-2.3.1-5]).
    """
    for label, decoder in _decoders(vector):
        assert decoder.feed(vector.data) == [vector.packet], label
        assert not decoder._buffer, label


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_good_vector_decodes_bytewise(vector: Vector) -> None:
    """
    Each good vector fed one byte at a time yields its packet exactly once,
    on the last byte: packets need not be aligned with reads (bad-inputs
    entry 3, [MQTT-6.0.0-2]).
    """
    for label, decoder in _decoders(vector):
        for i in range(len(vector.data) - 1):
            assert decoder.feed(vector.data[i : i + 1]) == [], label
        assert decoder.feed(vector.data[-1:]) == [vector.packet], label
        assert not decoder._buffer, label


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_good_vector_encodes(vector: Vector) -> None:
    """
    C{encode} reproduces each good vector byte for byte, so the encoder is
    checked against the same oracle as the decoder.
    """
    assert encode(vector.packet) == vector.data


def _stream(direction: str) -> tuple[bytes, list[Packet]]:
    if direction == SERVER:
        vectors = [
            v for v in GOOD if v.direction in (SERVER, BOTH) and not isinstance(v.packet, Connect)
        ]
        head = [Connect(4, "c1", keepalive=60)]
        return CONNECT_311 + b"".join(v.data for v in vectors), head + [v.packet for v in vectors]
    vectors = [v for v in GOOD if v.direction in (CLIENT, BOTH)]
    return b"".join(v.data for v in vectors), [v.packet for v in vectors]


@pytest.mark.parametrize("direction", [SERVER, CLIENT])
def test_all_vectors_in_one_chunk(direction: str) -> None:
    """
    All good vectors of one direction concatenated into a single chunk decode
    to all their packets in order: many packets per read, each parsed in
    place from the chunk ([MQTT-7.1.1-1]: an ordered stream of bytes).
    """
    data, expected = _stream(direction)
    decoder = Decoder(server=direction == SERVER)
    assert decoder.feed(data) == expected
    assert not decoder._buffer


@pytest.mark.parametrize("direction", [SERVER, CLIENT])
@given(data=st.data())
def test_all_vectors_arbitrary_split(direction: str, data: st.DataObject) -> None:
    """
    The concatenated vectors cut at arbitrary points decode to the same
    packets: partial headers, partial bodies and several packets per read
    all go through the reassembly buffer correctly (bad-inputs entry 3).
    """
    stream, expected = _stream(direction)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = Decoder(server=direction == SERVER)
    packets: list[Packet] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        packets += decoder.feed(stream[start:stop])
    assert packets == expected
    assert not decoder._buffer


def test_payloads_are_bytes_when_reassembled() -> None:
    """
    A PUBLISH completed from the reassembly buffer still has a C{bytes}
    payload and topic C{str}, not views into the buffer, and the buffer is
    emptied once the packet is out.
    """
    decoder = Decoder()
    decoder.feed(CONNECT_311)
    data = encode(Publish("t", b"x" * 300, qos=1, packet_id=9))
    assert decoder.feed(data[:100]) == []
    [packet] = decoder.feed(data[100:] + data[:3])
    assert isinstance(packet, Publish)
    assert type(packet.payload) is bytes and type(packet.topic) is str
    assert packet.payload == b"x" * 300
    assert len(decoder._buffer or b"") == 3
    assert decoder.feed(data[3:]) == [packet]


@pytest.mark.parametrize("vector", BAD, ids=_ids(BAD))
def test_bad_vector_whole(vector: BadVector) -> None:
    """
    Each bad vector, fed whole, raises exactly its error class carrying its
    spec id; the decoder then stays dead.  This covers bad-inputs entries 1,
    2, 4, 5, 6, 7, 8, 9 (3.1 client id), 10, 11, 12, 13, 14 and 20 and the
    statements [MQTT-3.1.0-1], [MQTT-3.1.0-2], [MQTT-3.1.2-2], [MQTT-3.1.2-3],
    [MQTT-3.1.2-13], [MQTT-3.1.2-14], [MQTT-3.1.2-15], [MQTT-3.1.2-22],
    [MQTT-3.1.3-9], [MQTT-1.5.3-1], [MQTT-1.5.3-2], [MQTT-4.7.3-1],
    [MQTT-3.3.2-2], [MQTT-3.3.1-2], [MQTT-3.3.1-4], [MQTT-2.3.1-1],
    [MQTT-2.3.1-6], [MQTT-2.3.1-7], [MQTT-2.2.2-2], [MQTT-3.6.1-1],
    [MQTT-3.8.1-1], [MQTT-3.10.1-1], [MQTT-3.14.1-1], [MQTT-3.8.3-3],
    [MQTT-3.8.3-4], [MQTT-3.10.3-2], [MQTT-3.9.3-2], [MQTT-3.2.2-4] (see each
    vector for its own).
    """
    decoder = _bad_decoder(vector)
    with pytest.raises(vector.error) as caught:
        decoder.feed(vector.data)
    assert type(caught.value) is vector.error
    assert caught.value.spec == vector.spec
    with pytest.raises(vector.error) as again:
        decoder.feed(CONNECT_311)
    assert again.value is caught.value
    assert not decoder._buffer


@pytest.mark.parametrize("vector", BAD, ids=_ids(BAD))
def test_bad_vector_bytewise(vector: BadVector) -> None:
    """
    Fed one byte at a time, each bad vector raises on exactly the byte its
    vector names: header errors (bad-inputs entries 1, 2, 5, 6, 13, 20; e.g.
    [MQTT-3.1.0-1], [MQTT-2.2.2-2], [MQTT-3.3.1-4]) as soon as the fixed
    header shows them, never after buffering a body; body errors on the
    packet's last byte.
    """
    decoder = _bad_decoder(vector)
    for i in range(vector.raise_index):
        assert decoder.feed(vector.data[i : i + 1]) == []
    with pytest.raises(vector.error) as caught:
        decoder.feed(vector.data[vector.raise_index : vector.raise_index + 1])
    assert caught.value.spec == vector.spec


def test_huge_connect_then_trickle() -> None:
    """
    Bad-inputs entry 1 (CVE-2017-7651, CVE-2023-0809): a CONNECT header
    declaring ~256 MB is refused with L{PacketTooLarge} the moment its length
    field is complete, before any body byte is awaited.
    """
    decoder = Decoder()
    assert decoder.feed(b"\x10") == []
    assert decoder.feed(b"\xff\xff\xff") == []
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"\x7f")
    with pytest.raises(PacketTooLarge):
        decoder.feed(b"\x00")


@pytest.mark.parametrize("first", [b for b in range(256) if b != 0x10])
def test_first_byte_not_connect(first: int) -> None:
    """
    Bad-inputs entries 1 and 6, [MQTT-3.1.0-1]: any first byte other than
    0x10 (CONNECT with its zero flags) raises L{ProtocolViolation} on that
    single byte.
    """
    with pytest.raises(ProtocolViolation) as caught:
        Decoder().feed(bytes((first,)))
    assert caught.value.spec == "MQTT-3.1.0-1"


def test_declared_lengths_do_not_allocate() -> None:
    """
    Bad-inputs entry 1 (memory part) and 3: fourteen connections each
    declaring ~256 MB (limits raised so nothing refuses them) and sending
    1 KB hold only what arrived, both for a CONNECT and for a PUBLISH.
    """
    declared = encode_remaining_length(MAX_REMAINING_LENGTH)
    decoders = [Decoder(max_packet_size=300 * MiB, max_connect_size=300 * MiB) for _ in range(14)]
    for n, decoder in enumerate(decoders):
        if n % 2:
            decoder.feed(CONNECT_311)
            head = b"\x30" + declared
        else:
            head = b"\x10" + declared
        assert decoder.feed(head) == []
        for _ in range(8):
            assert decoder.feed(b"\x00" * 128) == []
        assert len(decoder._buffer or b"") == len(head) + 1024


def test_pending_packet_not_reparsed_until_complete() -> None:
    """
    Bytes of a partially received body are appended without re-parsing
    (bad-inputs entry 3): the buffer tracks how much it needs, so a large
    packet trickling in costs linear, not quadratic, work.
    """
    decoder = Decoder()
    decoder.feed(CONNECT_311)
    data = encode(Publish("t", b"p" * 5000))
    decoder.feed(data[:10])
    assert decoder._need == len(data)
    for i in range(10, len(data) - 1, 100):
        assert decoder.feed(data[i : min(i + 100, len(data) - 1)]) == []
    assert decoder.feed(data[-1:]) == [Publish("t", b"p" * 5000)]


def test_protocol_level() -> None:
    """
    C{protocol_level} is C{None} until CONNECT, then 4 for "MQTT" and 3 for
    "MQIsdp", the two levels accepted [MQTT-3.1.2-2].
    """
    for data, level in ((CONNECT_311, 4), (CONNECT_31, 3)):
        decoder = Decoder()
        assert decoder.protocol_level is None
        decoder.feed(data)
        assert decoder.protocol_level == level
    assert Decoder(server=False).protocol_level is None


def test_connack_codes_of_refusals() -> None:
    """
    The CONNECT refusals that are answered carry their CONNACK return code:
    1 for an unknown protocol [MQTT-3.1.2-2] (bad-inputs entry 7), 2 for a
    refused client id [MQTT-3.1.3-9] (entry 9); plain malformed packets are
    closed without a CONNACK [MQTT-3.1.4-1].
    """
    assert UnacceptableProtocol("x").connack_code == 1
    assert IdentifierRejected("x").connack_code == 2
    assert MalformedPacket("x").connack_code is None


def test_identifier_checked_after_well_formedness() -> None:
    """
    A 3.1 CONNECT with an over-long client id that is also malformed later
    (trailing byte) is closed as malformed, not answered with CONNACK 2:
    the server must not answer a CONNECT that does not conform [MQTT-3.1.4-1].
    """
    body = b"\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x18" + b"a" * 24 + b"\x00"
    with pytest.raises(MalformedPacket):
        Decoder().feed(bytes((0x10, len(body))) + body)


def test_empty_client_id_311_left_to_broker() -> None:
    """
    Bad-inputs entry 9 at 3.1.1: an empty client id decodes as C{""} with
    clean session 0 as well; refusing it (CONNACK 2, [MQTT-3.1.3-8]) is the
    broker's decision, not the codec's.
    """
    packet = Connect(4, "", clean_session=False)
    assert Decoder().feed(encode(packet)) == [packet]


def test_remaining_length_encoding() -> None:
    """
    The Remaining Length boundaries of the spec's table 2.4 encode to 1 to 4
    bytes; negative and over-large lengths are refused (bad-inputs entry 2).
    """
    table = {
        0: b"\x00",
        127: b"\x7f",
        128: b"\x80\x01",
        16383: b"\xff\x7f",
        16384: b"\x80\x80\x01",
        2097151: b"\xff\xff\x7f",
        2097152: b"\x80\x80\x80\x01",
        268435455: b"\xff\xff\xff\x7f",
    }
    for n, data in table.items():
        assert encode_remaining_length(n) == data
    for n in (-1, 268435456):
        with pytest.raises(ValueError):
            encode_remaining_length(n)


@pytest.mark.parametrize("size", [0, 127, 128, 16383, 16384, 70000])
def test_remaining_length_decoding(size: int) -> None:
    """
    Packets whose Remaining Length takes 1, 2 and 3 bytes decode when the
    read boundary falls inside the length field.
    """
    packet = Publish("a", b"z" * (size - 3 if size >= 3 else 0)) if size else Pingreq()
    data = encode(packet)
    decoder = Decoder()
    decoder.feed(CONNECT_311)
    cut = min(2, len(data) - 1)
    assert decoder.feed(data[:cut]) == []
    assert decoder.feed(data[cut:]) == [packet]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_prefix(qos: int) -> None:
    """
    C{publish_prefix} + packet id (QoS > 0 only, [MQTT-2.3.1-5]) + payload
    is exactly the PUBLISH C{encode} writes, for every QoS and flag.
    """
    payload = b"hello" * 50
    for retain in (False, True):
        dup = qos > 0
        packet_id = 513 if qos else None
        packet = Publish("s/€", payload, qos, retain, dup, packet_id)
        prefix = publish_prefix("s/€".encode(), len(payload), qos, retain, dup)
        wire = prefix + (packet_id.to_bytes(2, "big") if packet_id else b"") + payload
        assert wire == encode(packet)


def test_encode_refuses_what_the_wire_cannot_carry() -> None:
    """
    C{encode} raises C{ValueError} for a string over 65535 bytes
    [MQTT-4.7.3-3] and for QoS > 0 without a packet id [MQTT-2.3.1-1].
    """
    with pytest.raises(ValueError):
        encode(Publish("t" * 65536, b""))
    with pytest.raises(ValueError):
        encode(Publish("t", b"", qos=1))


def test_feed_empty() -> None:
    """Feeding no bytes is harmless and returns no packets in any state."""
    decoder = Decoder()
    assert decoder.feed(b"") == []
    decoder.feed(CONNECT_311[:3])
    assert decoder.feed(b"") == []


# Property-based round trips.

# The utf-8 codec leaves out surrogates [MQTT-1.5.3-1]; U+0000 is excluded
# [MQTT-1.5.3-2], and wildcards from topic names [MQTT-3.3.2-2].
_char = st.characters(codec="utf-8", exclude_characters="\x00")
_text = st.text(_char, max_size=12)
_nonempty_text = st.text(_char, min_size=1, max_size=12)
_topic_name = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00+#"), min_size=1, max_size=12
)
_packet_id = st.integers(1, 0xFFFF)
_bytes = st.binary(max_size=64)


@st.composite
def _connects(draw: st.DrawFn) -> Connect:
    level = draw(st.sampled_from([3, 4]))
    if level == 3:
        client_id = draw(st.text(_char, min_size=1, max_size=23))
    else:
        client_id = draw(_text)
    will = draw(st.none() | st.builds(Will, _topic_name, _bytes, st.integers(0, 2), st.booleans()))
    username = draw(st.none() | _text)
    password = draw(st.none() | _bytes) if username is not None else None
    return Connect(
        level,
        client_id,
        draw(st.booleans()),
        draw(st.integers(0, 0xFFFF)),
        will,
        username,
        password,
    )


@st.composite
def _publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(_topic_name),
        draw(st.binary(max_size=300)),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(_packet_id) if qos else None,
    )


@st.composite
def _connacks(draw: st.DrawFn) -> Connack:
    code = draw(st.integers(0, 5))
    return Connack(draw(st.booleans()) if code == 0 else False, code)


_server_bound = st.one_of(
    _publishes(),
    st.builds(Puback, _packet_id),
    st.builds(Pubrec, _packet_id),
    st.builds(Pubrel, _packet_id),
    st.builds(Pubcomp, _packet_id),
    st.builds(
        Subscribe,
        _packet_id,
        st.lists(st.tuples(_nonempty_text, st.integers(0, 2)), min_size=1, max_size=5),
    ),
    st.builds(Unsubscribe, _packet_id, st.lists(_nonempty_text, min_size=1, max_size=5)),
    st.just(Pingreq()),
    st.just(Disconnect()),
)
_client_bound = st.one_of(
    _connacks(),
    _publishes(),
    st.builds(Puback, _packet_id),
    st.builds(Pubrec, _packet_id),
    st.builds(Pubrel, _packet_id),
    st.builds(Pubcomp, _packet_id),
    st.builds(
        Suback, _packet_id, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=5)
    ),
    st.builds(Unsuback, _packet_id),
    st.just(Pingresp()),
)


@given(_connects())
def test_roundtrip_connect(packet: Connect) -> None:
    """
    decode(encode(p)) == p for any valid CONNECT of 3.1 (client id 1..23
    characters) and 3.1.1, with or without will, user name and password
    ([MQTT-3.1.3-1] field order, [MQTT-3.1.2-9], [MQTT-3.1.2-22]).
    """
    decoder = Decoder()
    assert decoder.feed(encode(packet)) == [packet]
    assert decoder.protocol_level == packet.protocol_level


@given(st.lists(_server_bound, min_size=1, max_size=8))
def test_roundtrip_server_bound(packets: list[Packet]) -> None:
    """
    decode(encode(p)) == p for sequences of every packet type a broker
    receives after CONNECT, decoded as one stream ([MQTT-2.3.1-1],
    [MQTT-2.3.1-5], [MQTT-3.8.3-1], [MQTT-3.10.3-1]).
    """
    decoder = Decoder()
    decoder.feed(CONNECT_311)
    assert decoder.feed(b"".join(encode(p) for p in packets)) == packets


@given(st.lists(_client_bound, min_size=1, max_size=8))
def test_roundtrip_client_bound(packets: list[Packet]) -> None:
    """
    decode(encode(p)) == p for sequences of every packet type a client
    receives, with a client-side decoder ([MQTT-3.9.3-2], [MQTT-3.2.2-4]).
    """
    assert Decoder(server=False).feed(b"".join(encode(p) for p in packets)) == packets


@given(_server_bound, st.integers(1, 8))
def test_roundtrip_split(packet: Packet, step: int) -> None:
    """
    A valid packet split into chunks of any small size decodes the same as
    whole ([MQTT-6.0.0-2]: packets are not aligned with reads).
    """
    decoder = Decoder()
    decoder.feed(CONNECT_311)
    data = encode(packet)
    out: list[Packet] = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i : i + step])
    assert out == [packet]


@given(st.binary(max_size=64))
def test_garbage_never_crashes(data: bytes) -> None:
    """
    Arbitrary bytes after a CONNECT either decode or raise a L{DecodeError}
    subclass, never another exception (bad-inputs entries 4, 10, 13).
    """
    decoder = Decoder()
    decoder.feed(CONNECT_311)
    try:
        decoder.feed(data)
    except DecodeError:
        pass
    client = Decoder(server=False)
    try:
        client.feed(data)
    except DecodeError:
        pass
