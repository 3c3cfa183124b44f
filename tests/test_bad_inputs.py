"""
Every malformed server-bound vector of L{tests.vectors} fed through the real
protocol and broker: the offending connection gets the spec's answer (a
CONNACK refusal code, or a close without reply) and the broker keeps
serving everyone else (../shared/bad-inputs.md, entries 1-14 and 20).
"""

from __future__ import annotations

import pytest

from mqttd.codec import DecodeError, Decoder, encode
from mqttd.codec.packets import Connack, Publish
from tests.harness import World
from tests.vectors import BAD, CONNECT_311, SERVER, BadVector

SERVER_BAD = [v for v in BAD if v.direction == SERVER]


@pytest.mark.parametrize("vector", SERVER_BAD, ids=[v.name for v in SERVER_BAD])
def test_bad_input_answered_and_others_unaffected(vector: BadVector) -> None:
    """
    The bad bytes close only their own connection, after CONNACK with the
    refusal code where the spec names one ([MQTT-3.1.2-2], [MQTT-3.1.3-9]),
    and never write anything else [MQTT-4.8.0-1]; a subscriber and a
    publisher connected before and after keep exchanging messages.
    """
    world = World()
    sub = world.subscriber("bystander-sub", ("t", 1))
    pub = world.connect("bystander-pub")
    bad = world.client()
    if vector.connected:
        bad.sendBytes(CONNECT_311)
        assert bad.read() == [Connack(False, 0)]
    bad.sendBytes(vector.data)
    level5 = _level5Error(vector)
    if level5 is not None:
        # The broker speaks 5.0, so a level 5 CONNECT is read as one and refused in its format.
        assert bad.transport.value() == encode(Connack(False, level5.reason_code), 5)
    else:
        replies = bad.read()
        code = vector.error.connack_code
        if code is not None and not vector.connected:
            assert replies == [Connack(False, code)]
        else:
            assert replies == []
    assert bad.closed
    bad.finish()

    late = world.connect("bystander-late")
    pub.send(Publish("t", b"after", qos=1, packet_id=1))
    assert [p.payload for p in sub.publishes()] == [b"after"]
    assert not (sub.closed or pub.closed or late.closed)


def _level5Error(vector: BadVector) -> DecodeError | None:
    """The error a 5.0-capable decoder raises at level 5 for C{vector}, if it does."""
    decoder = Decoder(server=True, mqtt5=True)
    try:
        decoder.feed((CONNECT_311 if vector.connected else b"") + vector.data)
    except DecodeError as e:
        return e if e.protocol_level == 5 else None
    return None
