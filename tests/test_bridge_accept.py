"""
mqttd as the remote end of another broker's bridge: mosquitto's own bridge, with its default
C{try_private true} (CONNECT protocol level 0x84), pointed at mqttd; and the codec's bridge bit.
"""

from __future__ import annotations

import pytest

from mqttd.codec import Decoder, encode
from mqttd.codec.errors import UnacceptableProtocol
from mqttd.codec.packets import Connect
from tests import e2e
from tests.conftest import Clients
from tests.mosquitto import Start, mosquittos

__all__ = ["mosquittos"]


def _connectBytes(level: int, name: bytes = b"MQTT") -> bytes:
    body = len(name).to_bytes(2, "big") + name + bytes((level, 0x02)) + b"\x00\x3c\x00\x01b"
    return bytes((0x10, len(body))) + body


def test_bridgeBitDecoded() -> None:
    """
    Levels 0x84 ("MQTT") and 0x83 ("MQIsdp") decode as 3.1.1 and 3.1 CONNECTs marked as a
    bridge's; the encoder writes the bit back, and an ordinary level stays unmarked.
    """
    for level, name in ((0x84, b"MQTT"), (0x83, b"MQIsdp"), (0x04, b"MQTT")):
        (packet,) = Decoder(server=True).feed(_connectBytes(level, name))
        assert isinstance(packet, Connect)
        assert packet.protocol_level == level & 0x7F
        assert packet.bridge == bool(level & 0x80)
        assert encode(packet) == _connectBytes(level, name)


def test_bridgeBitOnlyOnItsOwnLevel() -> None:
    """
    The bit is accepted only on the level its protocol name goes with: 0x83 under "MQTT", 0x84
    under "MQIsdp" and 0x86 are still unacceptable protocols [MQTT-3.1.2-2].
    """
    for level, name in ((0x83, b"MQTT"), (0x84, b"MQIsdp"), (0x86, b"MQTT")):
        with pytest.raises(UnacceptableProtocol):
            Decoder(server=True).feed(_connectBytes(level, name))


@pytest.mark.parametrize("version", ["mqttv311", "mqttv50"])
def test_mosquittoBridgeWithTryPrivate(
    e2e_broker: e2e.RunningBroker, clients: Clients, mosquittos: Start, version: str
) -> None:
    """
    Debian's mosquitto with a bridge to mqttd in its default form (try_private, so level 0x84
    at 3.1.1) is accepted and marked a bridge; at 5.0 (no bit: mosquitto asks for No Local and
    Retain As Published in SUBSCRIBE instead) it is an ordinary 5.0 client.  Either way topics
    flow both ways at QoS 1; what the bridge forwarded is not echoed back to it (a C{both}
    topic published on mosquitto reaches mosquitto's subscriber once); and a retained message
    published on mqttd reaches mosquitto with its retain flag, so mosquitto retains it for
    later subscribers.
    """
    remote = mosquittos(
        "remote",
        f"connection tomqttd\naddress {e2e.HOST}:{e2e_broker.port}\nclientid mosq-bridge\n"
        f"bridge_protocol_version {version}\n"
        "cleansession true\ntopic out/# out 1\ntopic in/# in 1\ntopic both/# both 1\n",
    )
    e2e.wait_until(lambda: e2e_broker.is_connected("mosq-bridge"), "mosquitto's bridge")
    conn = e2e_broker.call(lambda: e2e_broker.broker.sessions["mosq-bridge"].connection)
    assert conn is not None
    assert conn.bridge == (version == "mqttv311")  # type: ignore[attr-defined]
    assert conn.protocolLevel == (4 if version == "mqttv311" else 5)

    local = clients("local")
    local.subscribe("out/#", 1)
    local.subscribe("both/#", 1)
    # mosquitto subscribes over the bridge once connected; wait for its subscriptions.
    e2e.wait_until(
        lambda: e2e_broker.call(
            lambda: (
                {"in/#", "both/#"} <= set(e2e_broker.broker.sessions["mosq-bridge"].subscriptions)
            )
        ),
        "the bridge's subscriptions",
    )
    far = e2e.client(remote.port, "far")
    try:
        far.subscribe("in/#", 1)
        far.subscribe("both/#", 1)
        far.publish("out/1", b"to mqttd", qos=1)
        assert [(m.topic, m.payload, m.qos) for m in local.wait_for(1)] == [
            ("out/1", b"to mqttd", 1)
        ]
        local.publish("in/1", b"to mosquitto", qos=1)
        assert [(m.topic, m.payload, m.qos) for m in far.wait_for(1)] == [
            ("in/1", b"to mosquitto", 1)
        ]

        far.publish("both/1", b"once", qos=1)
        assert [m.topic for m in local.wait_for(1)] == ["both/1"]
        # Any echo of both/1 went into the bridge's queue before this message.
        local.publish("both/sentinel", b"", qos=1)
        got = far.wait_for(2)
        assert [m.topic for m in got] == ["both/1", "both/sentinel"], remote.logText()
        assert [m.topic for m in local.wait_for(1)] == ["both/sentinel"]

        local.publish("in/retained", b"kept", qos=1, retain=True)
        assert [(m.topic, m.retain) for m in far.wait_for(1)] == [("in/retained", False)]
        late = e2e.client(remote.port, "late")
        try:
            late.subscribe("in/retained", 1)
            assert [(m.topic, m.payload, m.retain) for m in late.wait_for(1)] == [
                ("in/retained", b"kept", True)
            ]
        finally:
            late.close()
    finally:
        far.close()
