"""
How a message travels between nodes: one bytes value, the same on a node's QoS 0 channel and
in its stream, holding the message and what the receiving node is to do with it.

Layout (big-endian): a version byte, a flags byte (QoS in bits 0-1, RETAIN bit 2, "deliver to
the ordinary subscribers" bit 3, has an expiry bit 4), the sender's incarnation and a sequence
number (so a receiver drops a stream entry written twice across a lost Redis reply), the
expiry deadline as a double when flagged, then length-prefixed fields: topic, payload,
publisher client id (empty for the broker's own), MQTT 5 properties as the stores keep them
(empty for none), the shared subscriptions the receiver serves, NUL-separated (no topic
filter holds a NUL [MQTT-1.5.4-2]), and the recipients a subscriber selector chose that the
sender does not have, as client id and QoS, NUL-separated too.

What a node's channel and stream carry is a batch of such messages (L{packBatch}): the
messages one node sent another within one reactor turn, as one C{PUBLISH} or one stream entry.
Its first byte, L{BATCH}, is no message's version byte; then each message, length-prefixed.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mqttd.message import Message
from mqttd.store import dumpProperties, storedMessage

VERSION = 1
BATCH = 0x81
_HEAD = struct.Struct("!BBQQ")
_EXPIRY = struct.Struct("!d")
_LENGTH = struct.Struct("!I")

_BATCH_HEAD = bytes([BATCH])

_ORDINARY = 0x08
_EXPIRES = 0x10
_RESELECT = 0x20


class WireError(ValueError):
    """A value read from Redis is no message this version of mqttd wrote."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """
    A message as a node received it from another.

    @ivar ordinary: deliver it to the node's ordinary subscriptions that match.
    @ivar groups: the node's shared subscriptions (whole C{$share/} filters) each to deliver
        it to one member of.
    @ivar origin: the sending node's incarnation, and C{sequence} its number among the
        messages that incarnation sent to this node's stream.
    @ivar selected: recipients (client id to QoS) a subscriber selector chose on the
        sending node, to deliver to if their sessions are here.
    @ivar reselect: a subscriber selector on the sending node chose among that node's own
        sessions (L{mqttd.router.Router.selectElsewhere}): the selectors choose again here,
        among this node's.
    """

    message: Message
    ordinary: bool
    groups: tuple[str, ...]
    origin: int
    sequence: int
    selected: Mapping[str, int] = field(default_factory=dict)
    reselect: bool = False


def packBatch(messages: Sequence[bytes]) -> bytes:
    """One value holding C{messages} (each as L{encode} wrote it), for L{unpackBatch}."""
    length = _LENGTH.pack
    parts = [_BATCH_HEAD]
    for data in messages:
        parts.append(length(len(data)))
        parts.append(data)
    return b"".join(parts)


def unpackBatch(data: bytes) -> list[bytes]:
    """
    The messages L{packBatch} packed, in order.

    @raise WireError: C{data} is no batch L{packBatch} wrote.
    """
    if data[:1] != _BATCH_HEAD:
        raise WireError("not a batch of messages")
    messages = []
    offset = 1
    end = len(data)
    unpack = _LENGTH.unpack_from
    while offset < end:
        if end - offset < _LENGTH.size:
            raise WireError("truncated batch")
        (length,) = unpack(data, offset)
        offset += _LENGTH.size
        if end - offset < length:
            raise WireError("truncated batch")
        messages.append(data[offset : offset + length])
        offset += length
    return messages


def encode(
    message: Message,
    ordinary: bool,
    groups: tuple[str, ...],
    origin: int,
    sequence: int,
    selected: Mapping[str, int] | None = None,
    reselect: bool = False,
) -> bytes:
    """The bytes that L{decode} turns back into a L{Forwarded}."""
    flags = message.qos | (message.retain << 2) | (_ORDINARY if ordinary else 0)
    if reselect:
        flags |= _RESELECT
    expiresAt = message.expiresAt
    parts = []
    if expiresAt is not None:
        flags |= _EXPIRES
        parts.append(_EXPIRY.pack(expiresAt))
    properties = dumpProperties(message.properties)
    for part in (
        message.topic.encode(),
        message.payload,
        (message.publisherId or "").encode(),
        b"" if properties is None else properties.encode(),
        "\0".join(groups).encode(),
        "\0".join(f"{c}\0{q}" for c, q in (selected or {}).items()).encode(),
    ):
        parts.append(_LENGTH.pack(len(part)))
        parts.append(part)
    return _HEAD.pack(VERSION, flags, origin, sequence) + b"".join(parts)


def decode(data: bytes) -> Forwarded:
    """
    @raise WireError: C{data} is not a message L{encode} wrote.
    """
    try:
        version, flags, origin, sequence = _HEAD.unpack_from(data)
        if version != VERSION:
            raise WireError(f"message format version {version}, expected {VERSION}")
        offset = _HEAD.size
        expiresAt = None
        if flags & _EXPIRES:
            (expiresAt,) = _EXPIRY.unpack_from(data, offset)
            offset += _EXPIRY.size
        fields = []
        for _ in range(6):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            fields.append(bytes(data[offset : offset + length]))
            offset += length
        if offset != len(data):
            raise WireError("trailing bytes")
        topic, payload, publisherId, properties, groups, chosen = fields
        pairs = chosen.decode().split("\0") if chosen else []
        selected = {pairs[i]: int(pairs[i + 1]) for i in range(0, len(pairs) - 1, 2)}
        message = storedMessage(
            topic.decode(),
            payload,
            flags & 0x03,
            bool(flags & 0x04),
            properties.decode() if properties else None,
            expiresAt,
        )
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise WireError(str(e)) from None
    message.publisherId = publisherId.decode() or None
    return Forwarded(
        message,
        bool(flags & _ORDINARY),
        tuple(groups.decode().split("\0")) if groups else (),
        origin,
        sequence,
        selected,
        bool(flags & _RESELECT),
    )
