"""
Tests for L{mqttd.sn.codec}: every MQTT-SN 1.2 message type of L{tests.sn_vectors} decodes to
its value and encodes back to the same bytes, bad datagrams are refused with the reason a
gateway counts, and no input at all makes the decoder raise anything but L{SNDecodeError}.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqttd.sn.codec import SNDecodeError, decode, encode
from mqttd.sn.packets import (
    MsgType,
    Publish,
    TopicIdType,
    shortTopicId,
    shortTopicName,
)

from .sn_vectors import BAD, GOOD, BadVector, Vector


@pytest.mark.parametrize("vector", GOOD, ids=[v.name for v in GOOD])
def test_good_vector_decodes(vector: Vector) -> None:
    """Each vector decodes to exactly the message it is annotated with (its spec section)."""
    assert decode(vector.data) == vector.packet


@pytest.mark.parametrize("vector", GOOD, ids=[v.name for v in GOOD])
def test_good_vector_encodes(vector: Vector) -> None:
    """Encoding the message reproduces the vector's bytes."""
    assert encode(vector.packet) == vector.data


def test_every_message_type_has_a_vector() -> None:
    """The vectors cover every MsgType of MQTT-SN 1.2 (section 5.2.2)."""
    covered = {v.data[3] if v.data[0] == 1 else v.data[1] for v in GOOD}
    assert covered == {t.value for t in MsgType}


@pytest.mark.parametrize("vector", BAD, ids=[v.name for v in BAD])
def test_bad_vector_refused(vector: BadVector) -> None:
    """Each bad datagram is refused with its counted reason."""
    with pytest.raises(SNDecodeError) as caught:
        decode(vector.data)
    assert caught.value.reason == vector.reason, vector.why


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    """Any datagram either decodes or raises SNDecodeError, nothing else."""
    try:
        decode(data)
    except SNDecodeError as e:
        assert e.reason in {"short", "length", "type", "malformed"}


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=1000),
    st.sampled_from([-1, 0, 1, 2]),
    st.booleans(),
    st.booleans(),
    st.sampled_from(list(TopicIdType)),
)
def test_publish_round_trip(
    topicId: int, msgId: int, payload: bytes, qos: int, retain: bool, dup: bool, kind: int
) -> None:
    """PUBLISH of any size and flags survives encode then decode, in both length forms."""
    packet = Publish(topicId, msgId, payload, qos, retain, dup, kind)
    data = encode(packet)
    assert (data[0] == 1) == (len(data) >= 256)
    assert decode(data) == packet


def test_too_large_to_encode() -> None:
    """A message longer than the length field can state is refused, not truncated."""
    with pytest.raises(ValueError):
        encode(Publish(1, 0, b"x" * 0xFFFF))


def test_short_topic_names() -> None:
    """A short topic name is its two octets read as the topic id (section 5.3.11)."""
    assert shortTopicId("tp") == 0x7470
    assert shortTopicName(0x7470) == "tp"
    with pytest.raises(ValueError):
        shortTopicId("abc")
    with pytest.raises(ValueError):
        shortTopicName(0xFFFF)
