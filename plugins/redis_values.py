"""
How the Redis store (L{mqttd.plugins.redis_store}) writes its values and reads back what its
scripts return: messages and wills as a JSON header and the payload, sessions as the claims
return them, virtual groups as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mqttd.codec.packets import Will
from mqttd.groupinbox import dumpSettings, withSettings
from mqttd.interfaces import Group
from mqttd.message import Message
from mqttd.session import SessionState
from mqttd.store import StoredSession, dumpProperties, loadProperties, storedMessage


def encodeMessage(message: Message) -> bytes:
    """
    A message as Redis keeps it: a JSON header (topic, QoS, retain, what L{dumpProperties}
    keeps of its properties, its expiry deadline), a newline (JSON text has none), the payload.
    """
    header = [
        message.topic,
        message.qos,
        message.retain,
        dumpProperties(message.properties),
        message.expiresAt,
    ]
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + message.payload


def decodeMessage(body: bytes) -> Message:
    """The message L{encodeMessage} made C{body} of."""
    header, _, payload = body.partition(b"\n")
    topic, qos, retain, properties, expiresAt = json.loads(header)
    return storedMessage(topic, payload, qos, retain, properties, expiresAt)


def encodeWill(will: Will) -> bytes:
    """A will as Redis keeps it, in L{encodeMessage}'s form."""
    header = [will.topic, will.qos, will.retain, dumpProperties(will.properties)]
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + will.payload


def decodeWill(body: bytes) -> Will:
    """The will L{encodeWill} made C{body} of."""
    header, _, payload = body.partition(b"\n")
    topic, qos, retain, properties = json.loads(header)
    return Will(topic, payload, qos, bool(retain), loadProperties(properties))


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def readMessages(rawBodies: Sequence[bytes]) -> dict[bytes, Message]:
    messages: dict[bytes, Message] = {}
    for j in range(0, len(rawBodies), 2):
        mid = rawBodies[j]
        message = messages[mid] = decodeMessage(rawBodies[j + 1])
        message.storeId = int(mid)
    return messages


def readDeliveries(
    entries: Sequence[bytes], messages: Mapping[bytes, Message]
) -> list[tuple[Message, int, bool]]:
    deliveries = []
    for entry in entries:
        qos, retain, mid = entry.split(b" ", 2)
        deliveries.append((messages[mid], int(qos), retain == b"1"))
    return deliveries


def claimedSessions(rawSessions: Sequence[Any], rawBodies: Sequence[bytes]) -> list[SessionState]:
    """The L{SessionState}s a claim (C{CLAIM}, C{CONNECT}) returned."""
    messages = readMessages(rawBodies)
    states: list[SessionState] = []
    for cid, subs, owner, ei, ea, queue, inflight, awaiting in rawSessions:
        stored = StoredSession(json.loads(subs) if subs else {})
        stored.owner = text(owner)
        stored.expiryInterval = int(ei)
        stored.expiresAt = float(ea) if ea else None
        stored.queue.extend(readDeliveries(queue, messages))
        sent = []
        for j in range(0, len(inflight), 2):
            seq, state, qos, retain, mid = inflight[j + 1].split(b" ", 4)
            sent.append(
                (int(seq), int(inflight[j]), messages[mid], int(qos), retain == b"1", state)
            )
        for _, packetId, message, qos, retain, state in sorted(sent, key=lambda s: s[0]):
            stored.inflight[packetId] = [message, qos, retain, int(state)]
        for j in range(0, len(awaiting), 2):
            stored.awaitingRel[int(awaiting[j])] = float(awaiting[j + 1])
        states.append(stored.state(cid.decode()))
    return states


def dumpGroup(group: Group) -> str:
    """A virtual group as Redis keeps it: JSON."""
    return json.dumps(
        {
            "members": dict(group.members),
            "byUsername": group.byUsername,
            "topic": group.topic,
            "echo": group.echo,
            "settings": dumpSettings(group),
        },
        separators=(",", ":"),
    )


def loadGroup(name: str, text: bytes) -> Group:
    """The group L{dumpGroup} wrote as C{text}."""
    fields = json.loads(text)
    group = Group(name, fields["members"], fields["byUsername"], fields["topic"], fields["echo"])
    return withSettings(group, fields["settings"])


def readWills(reply: Sequence[bytes]) -> dict[str, Will]:
    return {reply[j].decode(): decodeWill(reply[j + 1]) for j in range(0, len(reply), 2)}
