"""
Tests for the MQTT 5.0 side of L{mqttd.codec}: the wire vectors of
L{tests.vectors5}, the bad inputs 17 to 20 of bad-inputs.md, and property-based
round trips of every packet type with random properties.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import SupportsIndex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttd.codec import (
    ALLOWED_PROPERTIES,
    AUTH_REASON_CODES,
    CONNACK_REASON_CODES,
    DISCONNECT_REASON_CODES,
    NO_PROPERTIES,
    PROPERTY_TYPES,
    PUBACK_REASON_CODES,
    PUBREL_REASON_CODES,
    SUBACK_REASON_CODES,
    UNSUBACK_REASON_CODES,
    Auth,
    Connack,
    Connect,
    DecodeError,
    Decoder,
    Disconnect,
    IdentifierRejected,
    LimitExceeded,
    MalformedPacket,
    Packet,
    PacketTooLarge,
    Pingreq,
    Pingresp,
    Properties,
    PropertyId,
    PropertyType,
    ProtocolViolation,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    UnacceptableProtocol,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_properties,
    property_block,
    publish_prefix,
)
from mqttd.codec.properties import FIELD_NAMES
from mqttd.codec.propertylist import read_properties

from .vectors import BOTH, CLIENT, CONNECT_311, SERVER, Vector
from .vectors5 import BAD, CONNECT_5, DECODE_ONLY, GOOD, BadVector5, user_property_flood


def _server() -> Decoder:
    return Decoder(mqtt5=True)


def _client() -> Decoder:
    return Decoder(server=False, protocol_level=5)


def _decoders(vector: Vector) -> Iterator[tuple[str, Decoder]]:
    """A fresh server for a CONNECT, a server after CONNECT_5, a level 5 client."""
    if vector.direction in (SERVER, BOTH):
        decoder = _server()
        if not isinstance(vector.packet, Connect):
            assert len(decoder.feed(CONNECT_5)) == 1
        yield "server", decoder
    if vector.direction in (CLIENT, BOTH):
        yield "client", _client()


def _bad_decoder(vector: BadVector5) -> Decoder:
    if vector.direction == CLIENT:
        return _client()
    decoder = _server()
    if vector.connected:
        assert len(decoder.feed(CONNECT_5)) == 1
    return decoder


def _ids(vectors: list[Vector] | list[BadVector5]) -> list[str]:
    return [v.name for v in vectors]


@pytest.mark.parametrize("vector", GOOD + DECODE_ONLY, ids=_ids(GOOD + DECODE_ONLY))
def test_good_vector_decodes_whole(vector: Vector) -> None:
    """
    Each 5.0 vector, fed as one chunk, decodes to exactly its packet in every
    direction it is valid for and leaves nothing buffered: properties of every
    type, short and long acknowledgement forms, AUTH ([MQTT-2.2.2-1],
    [MQTT-3.1.3-1], [MQTT-3.3.2-18], [MQTT-3.15.2-1] and each vector's own).
    """
    for label, decoder in _decoders(vector):
        assert decoder.feed(vector.data) == [vector.packet], label
        assert not decoder._buffer, label


@pytest.mark.parametrize("vector", GOOD + DECODE_ONLY, ids=_ids(GOOD + DECODE_ONLY))
def test_good_vector_decodes_bytewise(vector: Vector) -> None:
    """
    Each 5.0 vector fed one byte at a time yields its packet exactly once, on
    the last byte: properties split across reads reassemble ([MQTT-6.0.0-2]).
    """
    for label, decoder in _decoders(vector):
        for i in range(len(vector.data) - 1):
            assert decoder.feed(vector.data[i : i + 1]) == [], label
        assert decoder.feed(vector.data[-1:]) == [vector.packet], label


@pytest.mark.parametrize("vector", GOOD, ids=_ids(GOOD))
def test_good_vector_encodes(vector: Vector) -> None:
    """
    C{encode(packet, 5)} reproduces each vector byte for byte, in the shortest
    forms the spec allows (Remaining Length 2 PUBACK, 0 DISCONNECT and AUTH)
    and with the Property Length always present otherwise [MQTT-2.2.2-1].
    """
    assert encode(vector.packet, 5) == vector.data


def _stream(direction: str) -> tuple[bytes, list[Packet]]:
    vectors = [
        v
        for v in GOOD + DECODE_ONLY
        if v.direction in (direction, BOTH) and not isinstance(v.packet, Connect)
    ]
    data = b"".join(v.data for v in vectors)
    packets = [v.packet for v in vectors]
    if direction == SERVER:
        return CONNECT_5 + data, [Connect(5, "c1", keepalive=60), *packets]
    return data, packets


@pytest.mark.parametrize("direction", [SERVER, CLIENT])
def test_all_vectors_in_one_chunk(direction: str) -> None:
    """
    All 5.0 vectors of one direction concatenated decode in order from one
    chunk: the server switches to level 5 on the CONNECT inside the chunk
    ([MQTT-3.1.0-1], [MQTT-4.2.0-1]: an ordered stream of bytes).
    """
    data, expected = _stream(direction)
    decoder = _server() if direction == SERVER else _client()
    assert decoder.feed(data) == expected
    assert decoder.protocol_level == 5


@pytest.mark.parametrize("direction", [SERVER, CLIENT])
@given(data=st.data())
def test_all_vectors_arbitrary_split(direction: str, data: st.DataObject) -> None:
    """
    The concatenated 5.0 vectors cut at arbitrary points decode to the same
    packets ([MQTT-6.0.0-2]: packets are not aligned with reads).
    """
    stream, expected = _stream(direction)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = _server() if direction == SERVER else _client()
    packets: list[Packet] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        packets += decoder.feed(stream[start:stop])
    assert packets == expected
    assert not decoder._buffer


def _properties_of(packet: Packet) -> Iterator[Properties]:
    properties = getattr(packet, "properties", NO_PROPERTIES)
    yield properties
    will = getattr(packet, "will", None)
    if will is not None:
        yield will.properties


def test_every_property_has_a_vector() -> None:
    """
    The good vectors carry every property identifier of section 2.2.2.2, each
    in a packet allowed to carry it, so each property's wire type is checked
    against hand-written bytes in both directions ([MQTT-1.5.5-1],
    [MQTT-1.5.7-1], [MQTT-2.2.2-1]).
    """
    present: set[PropertyId] = set()
    for vector in GOOD:
        for properties in _properties_of(vector.packet):
            for identifier, name in FIELD_NAMES.items():
                if getattr(properties, name) not in (None, ()):
                    present.add(identifier)
    assert present == set(PropertyId)


def test_property_tables_are_complete() -> None:
    """
    Every property has a wire type and a L{Properties} field, and each packet
    type's allowed set matches section 3 (e.g. Subscription Identifier only in
    PUBLISH and SUBSCRIBE, [MQTT-3.3.4-6]; nothing but User Property in
    UNSUBSCRIBE).
    """
    assert set(PROPERTY_TYPES) == set(PropertyId) == set(FIELD_NAMES)
    assert sorted(FIELD_NAMES.values()) == sorted(f.name for f in fields(Properties))
    assert len(PropertyId) == 27
    carriers = {
        name
        for name, allowed in ALLOWED_PROPERTIES.items()
        if PropertyId.SUBSCRIPTION_IDENTIFIER in allowed
    }
    assert carriers == {"PUBLISH", "SUBSCRIBE"}
    assert ALLOWED_PROPERTIES["UNSUBSCRIBE"] == {PropertyId.USER_PROPERTY}
    assert PropertyId.WILL_DELAY_INTERVAL in ALLOWED_PROPERTIES["WILL"]
    assert PropertyId.WILL_DELAY_INTERVAL not in ALLOWED_PROPERTIES["PUBLISH"]
    assert all(PropertyId.USER_PROPERTY in allowed for allowed in ALLOWED_PROPERTIES.values())


@pytest.mark.parametrize("vector", BAD, ids=_ids(BAD))
def test_bad_vector_whole(vector: BadVector5) -> None:
    """
    Each bad 5.0 vector raises exactly its error class with its statement id
    and its 5.0 reason code, and says the connection speaks level 5 so the
    broker answers with a 5.0 CONNACK or DISCONNECT (bad-inputs entries 17,
    19, 20; [MQTT-1.5.4-1], [MQTT-1.5.5-1], [MQTT-2.2.2-1], [MQTT-3.3.2-8],
    [MQTT-3.3.2-14], [MQTT-3.3.4-6], [MQTT-3.14.2-2], [MQTT-3.1.2-2],
    [MQTT-4.7.3-1], [MQTT-3.8.3-2], [MQTT-3.8.3-4], [MQTT-3.8.3-5],
    [MQTT-3.10.3-2], [MQTT-3.4.2-1], [MQTT-3.6.2-1], [MQTT-3.14.2-1],
    [MQTT-3.15.2-1], [MQTT-3.2.2-1], [MQTT-3.2.2-6], [MQTT-3.2.2-8],
    [MQTT-3.9.3-2], [MQTT-3.11.3-2], [MQTT-4.13.1-1]; see each vector).
    """
    decoder = _bad_decoder(vector)
    with pytest.raises(vector.error) as caught:
        decoder.feed(vector.data)
    error = caught.value
    assert type(error) is vector.error
    assert error.spec == vector.spec
    assert error.reason_code == vector.reason_code
    assert error.protocol_level == 5
    with pytest.raises(vector.error) as again:
        decoder.feed(CONNECT_5)
    assert again.value is error


@pytest.mark.parametrize("vector", BAD, ids=_ids(BAD))
def test_bad_vector_bytewise(vector: BadVector5) -> None:
    """
    Fed one byte at a time, each bad 5.0 vector raises on exactly the byte it
    names: header errors ([MQTT-3.1.0-2], [MQTT-3.14.1-1], [MQTT-3.15.1-1])
    and a too-large Remaining Length (bad-inputs entry 20) on the fixed
    header, property errors once the packet is complete.
    """
    decoder = _bad_decoder(vector)
    for i in range(vector.raise_index):
        assert decoder.feed(vector.data[i : i + 1]) == []
    with pytest.raises(vector.error) as caught:
        decoder.feed(vector.data[vector.raise_index : vector.raise_index + 1])
    assert caught.value.reason_code == vector.reason_code


def test_bad_vectors_cover_entries_17_to_20() -> None:
    """Bad-inputs entries 17 to 20 each have codec-level vectors ([MQTT-4.13.1-1])."""
    assert {17, 19, 20} <= {v.entry for v in BAD}


def test_user_property_cap() -> None:
    """
    Bad-inputs entry 18 (CVE-2021-41039): 128 User Properties are accepted by
    default, 129 raise L{LimitExceeded} (reason code 0x83, a valid packet this
    server will not process); the cap is configurable, and 100,000 properties
    in one packet are refused ([MQTT-3.3.2-17] forwards the ones accepted).
    """
    [packet] = _connected().feed(user_property_flood(128))
    assert isinstance(packet, Publish)
    assert len(packet.properties.user_properties) == 128
    with pytest.raises(LimitExceeded) as caught:
        _connected().feed(user_property_flood(129))
    assert caught.value.reason_code == ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR
    assert caught.value.protocol_level == 5
    roomy = Decoder(mqtt5=True, max_user_properties=1000)
    roomy.feed(CONNECT_5)
    assert len(roomy.feed(user_property_flood(1000))) == 1
    with pytest.raises(LimitExceeded):
        _connected().feed(user_property_flood(100_000))


def _connected() -> Decoder:
    decoder = _server()
    decoder.feed(CONNECT_5)
    return decoder


class _CountingBytes(bytes):
    """Bytes that count how often the parser reads them (each index or slice)."""

    reads = 0

    def __getitem__(self, key: SupportsIndex | slice) -> int | bytes:  # type: ignore[override]
        _CountingBytes.reads += 1
        return super().__getitem__(key)


def _reads_to_parse(count: int, cap: int) -> int:
    """Reads of the buffer needed to parse C{count} User Properties under C{cap}."""
    flood = user_property_flood(count)
    # The Property Length follows the topic "t".
    start = flood.index(b"\x00\x01t") + 3
    _CountingBytes.reads = 0
    try:
        read_properties(_CountingBytes(flood), start, len(flood), "PUBLISH", "PUBLISH", cap)
    except LimitExceeded:
        pass
    return _CountingBytes.reads


def test_user_properties_parse_in_linear_time() -> None:
    """
    Bad-inputs entry 18: the work to parse User Properties, counted as reads
    of the packet buffer, grows linearly (doubling the count doubles the
    reads, with a small constant per property), and a 100,000-property flood
    under the default cap of 128 costs no more than 129 properties do: the
    parser stops at the cap instead of reading on ([MQTT-3.3.2-18] order is
    kept by appending).
    """
    small = _reads_to_parse(1000, 10**6)
    large = _reads_to_parse(2000, 10**6)
    # The few reads of the Property Length field are the only non-linear part.
    assert abs(large - 2 * small) <= 4
    assert small <= 10 * 1000
    at_cap = _reads_to_parse(129, 128)
    flood = _reads_to_parse(100_000, 128)
    assert abs(flood - at_cap) <= 4
    assert flood <= 10 * 129


def test_level_5_needs_mqtt5() -> None:
    """
    A server decoder made without C{mqtt5} refuses a level 5 CONNECT as
    before (3.1.1 CONNACK 1), and the error says the peer speaks 5.0 so an
    MQTT 5 broker can answer 0x84 instead ([MQTT-3.1.2-2], bad-inputs entry 7).
    """
    with pytest.raises(UnacceptableProtocol) as caught:
        Decoder().feed(CONNECT_5)
    assert caught.value.connack_code == 1
    assert caught.value.reason_code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    assert caught.value.protocol_level == 5


def test_protocol_levels() -> None:
    """
    A server decoder learns level 5 from CONNECT [MQTT-3.1.0-1]; a client
    decoder is told its level; level 3.1.1 errors carry level 4, errors
    before CONNECT none, so the broker picks the reply format
    ([MQTT-3.1.2-2], [MQTT-4.13.1-1]).
    """
    server = _server()
    assert server.protocol_level is None
    server.feed(CONNECT_5)
    assert server.protocol_level == 5
    assert _client().protocol_level == 5
    with pytest.raises(ValueError):
        Decoder(protocol_level=5)
    old = Decoder(mqtt5=True)
    old.feed(CONNECT_311)
    assert old.protocol_level == 4
    with pytest.raises(ProtocolViolation) as caught:
        old.feed(b"\xf0\x00")
    assert caught.value.protocol_level == 4
    with pytest.raises(ProtocolViolation) as early:
        Decoder().feed(b"\x30")
    assert early.value.protocol_level is None


def test_error_reason_codes() -> None:
    """
    Each error class carries the 5.0 reason code the broker answers with
    (section 4.13; bad-inputs 17 and 20) next to its 3.1.1 CONNACK code.
    """
    assert MalformedPacket("x").reason_code == 0x81
    assert ProtocolViolation("x").reason_code == 0x82
    assert LimitExceeded("x").reason_code == 0x83
    assert UnacceptableProtocol("x").reason_code == 0x84
    assert IdentifierRejected("x").reason_code == 0x85
    assert PacketTooLarge("x").reason_code == 0x95
    assert ProtocolViolation("x", None, 0x94).reason_code == 0x94
    assert DecodeError("x").reason_code == 0x80
    # Every code a decode error can carry may be sent in CONNACK and DISCONNECT.
    for code in (0x81, 0x82, 0x83, 0x84, 0x85, 0x95):
        assert code in CONNACK_REASON_CODES
    for code in (0x81, 0x82, 0x83, 0x94, 0x95):
        assert code in DISCONNECT_REASON_CODES


def test_reason_code_sets() -> None:
    """
    The reason codes of section 2.4 each belong to at least one packet's set,
    and each set holds the codes of its section ([MQTT-3.2.2-8],
    [MQTT-3.4.2-1], [MQTT-3.6.2-1], [MQTT-3.9.3-2], [MQTT-3.11.3-2],
    [MQTT-3.14.2-1], [MQTT-3.15.2-1]).
    """
    sets = [
        CONNACK_REASON_CODES,
        PUBACK_REASON_CODES,
        PUBREL_REASON_CODES,
        SUBACK_REASON_CODES,
        UNSUBACK_REASON_CODES,
        DISCONNECT_REASON_CODES,
        AUTH_REASON_CODES,
    ]
    assert {int(code) for code in ReasonCode} == set().union(*sets)
    assert len({int(code) for code in ReasonCode}) == 43
    assert [len(s) for s in sets] == [22, 9, 2, 12, 7, 29, 3]
    assert 0x04 in DISCONNECT_REASON_CODES and 0x8C not in DISCONNECT_REASON_CODES


def test_subscription_options() -> None:
    """
    L{SubscriptionOptions} packs QoS (bits 0-1), No Local (2), Retain As
    Published (3) and Retain Handling (4-5) as section 3.8.3.1 lays them out
    ([MQTT-3.8.3-3]), and equals the bare QoS when nothing else is set.
    """
    options = SubscriptionOptions.of(2, no_local=True, retain_as_published=True, retain_handling=1)
    assert options == 0x1E
    assert (options.qos, options.no_local, options.retain_as_published) == (2, True, True)
    assert options.retain_handling == 1
    assert SubscriptionOptions.of(1) == 1
    assert "retain_handling=1" in repr(options)


def test_level_4_encoding_leaves_out_5_fields() -> None:
    """
    At 3.1.1 the encoder writes exactly what it always did, dropping reason
    codes and properties a 3.1.1 peer cannot read, and refuses AUTH, which
    only exists at 5.0 (section 3.15).
    """
    properties = Properties(reason_string="r")
    assert encode(Puback(1, 0x10, properties)) == b"\x40\x02\x00\x01"
    assert encode(Disconnect(0x8E, properties)) == b"\xe0\x00"
    assert encode(Unsuback(3, [0x11], properties)) == b"\xb0\x02\x00\x03"
    assert encode(Publish("t", b"p", properties=properties)) == b"\x30\x04\x00\x01tp"
    with pytest.raises(ValueError):
        encode(Auth())


def test_encode_refuses_unrepresentable_properties() -> None:
    """
    Property values outside their wire type raise C{ValueError} instead of
    being truncated: a Two Byte Integer over 65535, a Variable Byte Integer
    over 268,435,455 ([MQTT-1.5.5-1]), a string over 65535 bytes.
    """
    for properties in (
        Properties(topic_alias=65536),
        Properties(subscription_identifiers=(268_435_456,)),
        Properties(message_expiry_interval=-1),
        Properties(content_type="x" * 65536),
    ):
        with pytest.raises(ValueError):
            encode_properties(properties)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_prefix_5(qos: int) -> None:
    """
    The 5.0 fan-out path: a message's shared properties encoded once, each
    subscriber's Subscription Identifiers and Topic Alias encoded per
    delivery, joined by L{property_block}; prefix + packet id + block +
    payload is a PUBLISH that decodes to the merged properties and is as long
    as the one C{encode} writes (only the property order differs)
    ([MQTT-3.3.4-3], [MQTT-3.3.2-17], [MQTT-3.3.2-11]).
    """
    payload = b"hello" * 30
    shared = Properties(
        message_expiry_interval=60, content_type="text", user_properties=(("a", "1"),)
    )
    own = Properties(subscription_identifiers=(5, 900), topic_alias=2)
    block = property_block(encode_properties(shared), encode_properties(own))
    packet_id = 300 if qos else None
    prefix = publish_prefix(b"s/t", len(payload), qos, True, False, block)
    wire = prefix + (packet_id.to_bytes(2, "big") if packet_id else b"") + block + payload
    merged = Properties(
        message_expiry_interval=60,
        content_type="text",
        user_properties=(("a", "1"),),
        subscription_identifiers=(5, 900),
        topic_alias=2,
    )
    packet = Publish("s/t", payload, qos, True, False, packet_id, merged)
    assert _client().feed(wire) == [packet]
    assert len(wire) == len(encode(packet, 5))


def test_empty_properties_are_shared() -> None:
    """
    Packets without properties decode to the one shared L{NO_PROPERTIES}
    ([MQTT-2.2.2-1]), which is also every packet's default, so the 3.1.1 path
    and empty 5.0 lists allocate nothing for properties.
    """
    [publish] = _connected().feed(b"\x30\x04\x00\x01t\x00")
    assert isinstance(publish, Publish)
    assert publish.properties is NO_PROPERTIES
    assert Puback(1).properties is NO_PROPERTIES
    assert Properties() == NO_PROPERTIES
    assert repr(Properties(topic_alias=1)) == "Properties(topic_alias=1)"


# Property-based round trips.

_char = st.characters(codec="utf-8", exclude_characters="\x00")
_text = st.text(_char, max_size=8)
_nonempty_text = st.text(_char, min_size=1, max_size=8)
_topic_name = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00+#"), min_size=1, max_size=8
)
_packet_id = st.integers(1, 0xFFFF)
_bytes = st.binary(max_size=16)

_NONZERO = {
    PropertyId.RECEIVE_MAXIMUM,
    PropertyId.MAXIMUM_PACKET_SIZE,
    PropertyId.TOPIC_ALIAS,
}
_VALUES = {
    PropertyType.BYTE: st.integers(0, 1),
    PropertyType.TWO_BYTE_INTEGER: st.integers(0, 0xFFFF),
    PropertyType.FOUR_BYTE_INTEGER: st.integers(0, 0xFFFFFFFF),
    PropertyType.UTF8_STRING: _text,
    PropertyType.BINARY_DATA: _bytes,
}


@st.composite
def _properties(
    draw: st.DrawFn, scope: str, identifiers: int = 0, exclude: frozenset[PropertyId] = frozenset()
) -> Properties:
    """
    Random valid properties for one packet type: any subset of what it may
    carry, up to C{identifiers} Subscription Identifiers.
    """
    values: dict[str, object] = {}
    for identifier in sorted(ALLOWED_PROPERTIES[scope] - exclude):
        if not draw(st.booleans()):
            continue
        name = FIELD_NAMES[identifier]
        kind = PROPERTY_TYPES[identifier]
        if identifier == PropertyId.USER_PROPERTY:
            values[name] = tuple(draw(st.lists(st.tuples(_text, _text), max_size=3)))
        elif identifier == PropertyId.SUBSCRIPTION_IDENTIFIER:
            if identifiers:
                ids = st.integers(1, 268_435_455)
                values[name] = tuple(draw(st.lists(ids, min_size=1, max_size=identifiers)))
        elif identifier == PropertyId.RESPONSE_TOPIC:
            values[name] = draw(_topic_name)
        elif identifier in _NONZERO:
            values[name] = draw(_VALUES[kind].filter(bool))
        else:
            values[name] = draw(_VALUES[kind])
    if "authentication_data" in values and "authentication_method" not in values:
        values["authentication_method"] = draw(_text)
    return Properties(**values)  # type: ignore[arg-type]


@st.composite
def _connects(draw: st.DrawFn) -> Connect:
    will = draw(
        st.none()
        | st.builds(
            Will, _topic_name, _bytes, st.integers(0, 2), st.booleans(), _properties("WILL")
        )
    )
    return Connect(
        5,
        draw(_text),
        draw(st.booleans()),
        draw(st.integers(0, 0xFFFF)),
        will,
        draw(st.none() | _text),
        draw(st.none() | _bytes),
        draw(_properties("CONNECT")),
    )


@st.composite
def _publishes(draw: st.DrawFn, identifiers: int) -> Publish:
    qos = draw(st.integers(0, 2))
    properties = draw(_properties("PUBLISH", identifiers))
    topic = draw(_topic_name if properties.topic_alias is None else st.just("") | _topic_name)
    return Publish(
        topic,
        draw(st.binary(max_size=64)),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(_packet_id) if qos else None,
        properties,
    )


def _acks(codes: frozenset[int], scope: str) -> st.SearchStrategy[tuple[int, int, Properties]]:
    return st.tuples(_packet_id, st.sampled_from(sorted(codes)), _properties(scope))


_options = st.builds(
    SubscriptionOptions.of, st.integers(0, 2), st.booleans(), st.booleans(), st.integers(0, 2)
)
_common = st.one_of(
    st.builds(lambda a: Puback(*a), _acks(PUBACK_REASON_CODES, "PUBACK")),
    st.builds(lambda a: Pubrec(*a), _acks(PUBACK_REASON_CODES, "PUBREC")),
    st.builds(lambda a: Pubrel(*a), _acks(PUBREL_REASON_CODES, "PUBREL")),
    st.builds(lambda a: Pubcomp(*a), _acks(PUBREL_REASON_CODES, "PUBCOMP")),
    st.builds(Auth, st.sampled_from(sorted(AUTH_REASON_CODES)), _properties("AUTH")),
)
_server_bound = st.one_of(
    _publishes(0),
    _common,
    st.builds(
        Subscribe,
        _packet_id,
        st.lists(st.tuples(_topic_name, _options), min_size=1, max_size=4),
        _properties("SUBSCRIBE", 1),
    ),
    st.builds(
        Unsubscribe,
        _packet_id,
        st.lists(_nonempty_text, min_size=1, max_size=4),
        _properties("UNSUBSCRIBE"),
    ),
    st.just(Pingreq()),
    st.builds(
        Disconnect, st.sampled_from(sorted(DISCONNECT_REASON_CODES)), _properties("DISCONNECT")
    ),
)


@st.composite
def _connacks(draw: st.DrawFn) -> Connack:
    code = draw(st.sampled_from(sorted(CONNACK_REASON_CODES)))
    return Connack(draw(st.booleans()) if code == 0 else False, code, draw(_properties("CONNACK")))


_client_bound = st.one_of(
    _connacks(),
    _publishes(3),
    _common,
    st.builds(
        Suback,
        _packet_id,
        st.lists(st.sampled_from(sorted(SUBACK_REASON_CODES)), min_size=1, max_size=4),
        _properties("SUBACK"),
    ),
    st.builds(
        Unsuback,
        _packet_id,
        st.lists(st.sampled_from(sorted(UNSUBACK_REASON_CODES)), min_size=1, max_size=4),
        _properties("UNSUBACK"),
    ),
    st.just(Pingresp()),
    st.builds(
        Disconnect,
        st.sampled_from(sorted(DISCONNECT_REASON_CODES)),
        _properties("DISCONNECT", exclude=frozenset({PropertyId.SESSION_EXPIRY_INTERVAL})),
    ),
)


@given(_connects())
def test_roundtrip_connect(packet: Connect) -> None:
    """
    decode(encode(p)) == p for any valid 5.0 CONNECT with random CONNECT and
    Will Properties, a password with or without user name ([MQTT-3.1.3-1]
    field order, [MQTT-3.1.2-9], [MQTT-3.1.3-10] user property order).
    """
    decoder = _server()
    assert decoder.feed(encode(packet)) == [packet]
    assert decoder.protocol_level == 5


@given(st.lists(_server_bound, min_size=1, max_size=6))
def test_roundtrip_server_bound(packets: list[Packet]) -> None:
    """
    decode(encode(p, 5)) == p for sequences of every packet type a broker
    receives at 5.0, each with random properties of its allowed set
    ([MQTT-2.2.2-1], [MQTT-3.3.2-18], [MQTT-3.8.3-1], [MQTT-3.10.3-1]).
    """
    decoder = _connected()
    assert decoder.feed(b"".join(encode(p, 5) for p in packets)) == packets


@given(st.lists(_client_bound, min_size=1, max_size=6))
def test_roundtrip_client_bound(packets: list[Packet]) -> None:
    """
    decode(encode(p, 5)) == p for sequences of every packet type a client
    receives at 5.0, including several Subscription Identifiers per PUBLISH
    ([MQTT-3.3.4-4], [MQTT-3.9.3-2], [MQTT-3.11.3-2], [MQTT-3.14.2-1]).
    """
    assert _client().feed(b"".join(encode(p, 5) for p in packets)) == packets


@given(_server_bound, st.integers(1, 8))
def test_roundtrip_split(packet: Packet, step: int) -> None:
    """
    A valid 5.0 packet split into chunks of any small size decodes the same
    as whole ([MQTT-6.0.0-2]).
    """
    decoder = _connected()
    data = encode(packet, 5)
    out: list[Packet] = []
    for i in range(0, len(data), step):
        out += decoder.feed(data[i : i + step])
    assert out == [packet]


@given(st.binary(max_size=64))
def test_garbage_never_crashes(data: bytes) -> None:
    """
    Arbitrary bytes after a 5.0 CONNECT, and to a 5.0 client, either decode
    or raise a L{DecodeError} carrying a reason code, never another exception
    ([MQTT-4.13.1-1]; bad-inputs entries 4, 10, 13, 17).
    """
    for decoder in (_connected(), _client()):
        try:
            decoder.feed(data)
        except DecodeError as e:
            assert e.reason_code >= 0x80
